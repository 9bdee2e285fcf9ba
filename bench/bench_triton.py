"""GPU benchmark of the fused Triton backend against what a user would otherwise run (needs CUDA).

    python bench/bench_triton.py [--batches 1 64] [--dims 1024 4096] [--out DIR]

For N=576 tokens, D in ``--dims``, B in ``--batches``, bf16 and fp32, sketch_size l=128, power_iters
q=2, energy 0.99, it times (bench/timing.py: do_bench, median and 20/80 % quantiles, ms per call):
  * triton:      the fused Triton backend's entry point (one launch: budgets, leverage
                 selection, gather);
  * cuda:        the native CUDA backend's entry point, when the extension is built;
  * svd_lowrank: torch.svd_lowrank(X_c, q=l, niter=q) on the centred fp32 tokens: the spectrum only,
                 the randomized baseline a user would reach for;
  * svdvals:     torch.linalg.svdvals(X_c) in fp32: the exact spectrum.
Bytes: ``floor`` is the (2q+2) passes over the tokens a fused subspace iteration must make (HBM
floor); ``kernel`` is what this kernel reads from the tokens ((2q+3) passes: each row tile's max /
NaN scan and its statistics pass with the sketch product, 2q power products, Z = X_c^T Q). ``floor %`` = floor bytes / measured copy bandwidth
/ median time. Writes triton_<gpu>_<date>.md to ``--out`` (default bench/results) and prints it.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.timing import gpu_milliseconds, machine_header  # noqa: E402


def _copy_bandwidth() -> float:
    """Achievable HBM bandwidth in bytes/s: device-to-device copy of 1 GiB (read + write)."""
    src = torch.empty(2**28, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / (gpu_milliseconds(lambda: dst.copy_(src))[0] * 1e-3)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64], help="batch sizes B (default 1 8 64)")
    parser.add_argument("--dims", type=int, nargs="+", default=[1024, 4096], help="feature sizes D (default 1024 4096)")
    parser.add_argument("--out", default=None, help="folder for the results file (default bench/results)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench_triton.py needs a CUDA GPU")

    from eadaprune_kernels import backends
    from eadaprune_kernels.contract import make_config

    gpu = torch.cuda.get_device_name()
    bandwidth = _copy_bandwidth()
    has_cuda_backend = "cuda" in backends.available_backends("cuda")
    n, l, q = 576, 128, 2
    lines = [
        f"# Triton backend benchmark, {datetime.date.today().isoformat()}",
        "",
        *machine_header(torch.device("cuda")),
        f"- measured copy bandwidth {bandwidth / 1e12:.2f} TB/s",
        "",
        f"N={n}, l={l}, q={q}, energy=0.99, scores=None (leverage); ms per call (median [p20, p80]); "
        "x = speed-up of triton over that column.",
        "",
        "| dtype | D | B | triton ms | us / image | cuda ms | svd_lowrank ms | svdvals ms | floor MB | kernel MB "
        "| floor % |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for dtype in (torch.bfloat16, torch.float32):
        for d in args.dims:
            for b in args.batches:
                g = torch.Generator(device="cuda").manual_seed(0)
                x = torch.randn(b, n, d, device="cuda", generator=g)
                x = (x * torch.logspace(0, -2, d, device="cuda") + 1.0).to(dtype)
                # the backends' entry points (the public functions add their argument checks on the host)
                cfg = make_config(n=n, d=d, device=x.device, energy=0.99, center=True, sketch_size=l, power_iters=q,
                                  min_tokens=1, max_tokens=None, seed=0, sketch_matrix=None)
                ms, lo, hi = gpu_milliseconds(lambda: backends.run("triton", x, None, None, cfg, None, True))
                cuda_cell = "-"
                if has_cuda_backend:
                    native = gpu_milliseconds(lambda: backends.run("cuda", x, None, None, cfg, None, True))[0]
                    cuda_cell = f"{native:.3f} ({native / ms:.1f}x)"
                xc = x.float() - x.float().mean(1, keepdim=True)
                lowrank = gpu_milliseconds(lambda: torch.svd_lowrank(xc, q=l, niter=q))[0]
                exact = gpu_milliseconds(lambda: torch.linalg.svdvals(xc))[0]
                size = x.numel() * x.element_size()
                floor, kernel = (2 * q + 2) * size, (2 * q + 3) * size
                pct = 100 * floor / bandwidth / (ms * 1e-3)
                lines.append(
                    f"| {str(dtype).removeprefix('torch.')} | {d} | {b} | {ms:.3f} [{lo:.3f}, {hi:.3f}] | "
                    f"{1e3 * ms / b:.1f} | {cuda_cell} | {lowrank:.3f} ({lowrank / ms:.1f}x) | "
                    f"{exact:.3f} ({exact / ms:.1f}x) | {floor / 1e6:.1f} | {kernel / 1e6:.1f} | {pct:.1f} |"
                )
                print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    out_dir = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    os.makedirs(out_dir, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-")
    path = os.path.join(out_dir, f"triton_{slug}_{datetime.date.today().isoformat()}.md")
    with open(path, "w") as f:
        f.write(text)
    print(text)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
