"""The one timing harness of the benchmarks (run_speed, bench_triton, the pytest-benchmark suite's
header): the machine header, CPU timing by repeated wall/CPU clocks, GPU timing by
``triton.testing.do_bench`` (event timing, warm-up, L2 flush)."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time

import torch

__all__ = ["time_call", "gpu_milliseconds", "machine_header", "cpu_model", "hbm_peak_bytes_per_s", "today",
           "load_average"]

# HBM peaks of the cards this project is lent (bytes/s).
HBM_PEAK = {"H100": 3.35e12, "H200": 4.8e12}


def today() -> str:
    return datetime.date.today().isoformat()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load_average() -> str:
    """The 1/5/15-minute load averages (other jobs on a shared machine inflate CPU timings)."""
    try:
        return " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def hbm_peak_bytes_per_s(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peak in HBM_PEAK.items():
        if key in name:
            return peak
    return None


def machine_header(device: torch.device) -> list[str]:
    """Lines naming the machine, device and versions."""
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    lines = [
        f"- date: {today()}",
        f"- machine: {cpu_model()}, {os.cpu_count()} logical cores; torch threads used: {torch.get_num_threads()}",
    ]
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        lines.append(f"- device: {props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}")
    else:
        lines.append("- device: CPU (no GPU on this machine)")
    lines.append(f"- torch {torch.__version__}, triton {triton_version}, CUDA {torch.version.cuda}, "
                 f"python {platform.python_version()}")
    return lines


def gpu_milliseconds(fn, quantiles=(0.5, 0.2, 0.8)) -> list[float]:
    """Milliseconds per call of ``fn`` on the GPU at ``quantiles`` (median, 20 %, 80 % by default):
    ``triton.testing.do_bench`` (CUDA events; it warms up and flushes L2 between calls)."""
    import triton.testing

    result = triton.testing.do_bench(fn, warmup=25, rep=100, quantiles=list(quantiles))
    return list(result) if isinstance(result, (list, tuple)) else [result]


def time_call(fn, device: torch.device, repeats: int = 5, max_seconds: float = 20.0):
    """(median wall seconds per call, median process CPU seconds per call or None, timed calls).

    CUDA: ``triton.testing.do_bench`` median (it warms up and flushes L2 itself). CPU: one warm-up
    call, then up to ``repeats`` timed calls, fewer when a call is so slow that ``repeats`` of them
    would exceed ``max_seconds`` (at least one); the median of the timed calls. The CPU time (all
    threads of this process) is less sensitive than the wall time to other jobs on a shared machine.
    """
    if device.type == "cuda":
        return gpu_milliseconds(fn, quantiles=(0.5,))[0] / 1e3, None, 0
    start = time.perf_counter()
    fn()
    warm = time.perf_counter() - start
    n = max(1, min(repeats, int(max_seconds / max(warm, 1e-9))))
    walls, cpus = [], []
    for _ in range(n):
        cpu_start, start = time.process_time(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu_start)
    return statistics.median(walls), statistics.median(cpus), n
