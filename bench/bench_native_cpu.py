"""Times the native C++ CPU backend against the reference backend and an eigvalsh-of-Gram baseline.

Same inputs, same run, median of several repeats (after warm-up):

* ``cpu``        eadaprune_kernels.adaptive_prune(tokens, backend="cpu") with the defaults
                 (sketch_size=128, power_iters=2, energy=0.99, leverage selection);
* ``reference``  the same call with backend="reference" (float64 PyTorch);
* ``eigvalsh``   torch.linalg.eigvalsh(X_c X_c^T): the exact spectrum of the N x N Gram, what a
                 user would otherwise compute (no selection, no gather).

Writes a markdown table to bench/results/native_cpu_<date>.md (or --out) and prints it.

    python bench/bench_native_cpu.py [--batch 8 --tokens 576 --features 1024 --repeats 11]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import time
from pathlib import Path

import torch

import eadaprune_kernels as ek


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def median_ms(fn, repeats: int, warmup: int = 2) -> tuple[float, float, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return statistics.median(times), times[0], times[-1]


def tokens_like_patches(batch: int, n: int, d: int, seed: int = 0) -> torch.Tensor:
    """Image-like tokens: a shared mean token plus components with a power-law spectrum."""
    g = torch.Generator().manual_seed(seed)
    rank = min(n, d)
    spectrum = torch.arange(1, rank + 1, dtype=torch.float32) ** -1.2
    left = torch.randn(batch, n, rank, generator=g)
    right = torch.randn(rank, d, generator=g) / d**0.5
    return (left * spectrum) @ right + torch.randn(1, 1, d, generator=g)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=576)
    parser.add_argument("--features", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    x = tokens_like_patches(args.batch, args.tokens, args.features)
    xc = x - x.mean(1, keepdim=True)
    cpu_out = ek.adaptive_prune(x, backend="cpu")
    ref_out = ek.adaptive_prune(x, backend="reference")
    assert cpu_out.backend == "cpu" and ref_out.backend == "reference"
    sigma_err = ((cpu_out.singular_values - ref_out.singular_values).abs().max()
                 / ref_out.singular_values.max()).item()

    load_before = os.getloadavg()[0]
    rows = []
    t_cpu = median_ms(lambda: ek.adaptive_prune(x, backend="cpu"), args.repeats)
    t_ref = median_ms(lambda: ek.adaptive_prune(x, backend="reference"), max(3, args.repeats // 3))
    t_eig = median_ms(lambda: torch.linalg.eigvalsh(xc @ xc.mT), args.repeats)
    t_bud = median_ms(lambda: ek.spectral_budget(x, backend="cpu"), args.repeats)
    load_after = os.getloadavg()[0]
    rows.append(("cpu: adaptive_prune (native C++)", t_cpu))
    rows.append(("cpu: spectral_budget (native C++)", t_bud))
    rows.append(("reference: adaptive_prune (float64 PyTorch)", t_ref))
    rows.append(("baseline: eigvalsh(X_c X_c^T) float32", t_eig))

    today = dt.date.today().isoformat()
    lines = [
        f"# Native CPU backend, B={args.batch}, N={args.tokens}, D={args.features} float32",
        "",
        f"- date: {dt.datetime.now().isoformat(timespec='seconds')}",
        f"- machine: {cpu_model()}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}",
        f"- load average (1 min) before / after timing: {load_before:.2f} / {load_after:.2f}",
        f"- python {platform.python_version()}, torch {torch.__version__}, {platform.platform()}",
        "- settings: sketch_size=128, power_iters=2, energy=0.99, seed=0, leverage selection (no scores)",
        f"- budgets cpu {cpu_out.lengths.tolist()} / reference {ref_out.lengths.tolist()}; "
        f"max |sigma_cpu - sigma_ref| / sigma_max = {sigma_err:.2e}",
        f"- median of {args.repeats} repeats (reference: {max(3, args.repeats // 3)}) after 2 warm-ups",
        "",
        "| what | median ms | min ms | max ms |",
        "| --- | ---: | ---: | ---: |",
    ]
    lines += [f"| {name} | {t[0]:.1f} | {t[1]:.1f} | {t[2]:.1f} |" for name, t in rows]
    lines += [
        "",
        f"- cpu / reference = {t_cpu[0] / t_ref[0]:.3f} (target <= 0.5)",
        f"- cpu / eigvalsh-of-Gram = {t_cpu[0] / t_eig[0]:.3f} (target < 1)",
        "",
    ]
    text = "\n".join(lines)
    out = args.out or Path(__file__).resolve().parent / "results" / f"native_cpu_{today}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
