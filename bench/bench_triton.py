"""GPU benchmark of the fused Triton backend against torch.svd_lowrank (needs CUDA).

    python bench/bench_triton.py [--quick]

For N=576 tokens, D in {1024, 4096}, B in {1, 8, 64}, bf16 and fp32, sketch_size l=128, power_iters
q=2, it times (triton.testing.do_bench, median and 20/80 % quantiles, ms):
  * triton:      eadaprune_kernels.triton_backend.adaptive_prune (one launch: budgets, leverage
                 selection, gather);
  * svd_lowrank: torch.svd_lowrank(X_c, q=l, niter=q) on the centred fp32 tokens: the spectrum only,
                 the baseline a user would otherwise reach for.
Bytes: ``floor`` is the (2q+2) passes over the tokens a fused subspace iteration must make (HBM
floor, NUMERICS.md); ``kernel`` is what this kernel reads from the tokens ((2q+5) passes: max scan,
two statistics passes, 1 + 2q + 1 products). ``floor %`` = floor bytes / measured copy bandwidth /
median time. Writes bench/results/triton_<gpu>_<date>.md and prints it.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _copy_bandwidth() -> float:
    """Achievable HBM bandwidth in bytes/s: device-to-device copy of 1 GiB (read + write)."""
    from triton.testing import do_bench

    src = torch.empty(2**28, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src))
    return 2 * src.numel() * 4 / (ms * 1e-3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only B=8, D=1024")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_triton.py needs a CUDA GPU")

    import triton
    from triton.testing import do_bench

    from eadaprune_kernels import triton_backend as tb
    from eadaprune_kernels._validation import make_config

    gpu = torch.cuda.get_device_name()
    bandwidth = _copy_bandwidth()
    n, l, q = 576, 128, 2
    lines = [
        f"# Triton backend benchmark, {datetime.date.today().isoformat()}",
        "",
        f"GPU {gpu}; CUDA {torch.version.cuda}; torch {torch.__version__}; triton {triton.__version__}; "
        f"measured copy bandwidth {bandwidth / 1e12:.2f} TB/s",
        f"N={n}, l={l}, q={q}, energy=0.99, scores=None (leverage); times in ms (median [p20, p80]).",
        "",
        "| dtype | D | B | triton ms | svd_lowrank ms | speed-up | floor MB | kernel MB | floor % |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    dims = [1024] if args.quick else [1024, 4096]
    batches = [8] if args.quick else [1, 8, 64]
    for dtype in (torch.bfloat16, torch.float32):
        for d in dims:
            for b in batches:
                g = torch.Generator(device="cuda").manual_seed(0)
                x = torch.randn(b, n, d, device="cuda", generator=g)
                x = (x * torch.logspace(0, -2, d, device="cuda") + 1.0).to(dtype)
                cfg = make_config(x, energy=0.99, center=True, sketch_size=l, power_iters=q, min_tokens=1,
                                  max_tokens=None, seed=0, sketch_matrix=None)
                ms, lo, hi = do_bench(lambda: tb.adaptive_prune(x, None, cfg), quantiles=[0.5, 0.2, 0.8])
                xc = x.float() - x.float().mean(1, keepdim=True)
                base = do_bench(lambda: torch.svd_lowrank(xc, q=l, niter=q), quantiles=[0.5])
                base = base[0] if isinstance(base, (list, tuple)) else base
                size = x.numel() * x.element_size()
                floor, kernel = (2 * q + 2) * size, (2 * q + 5) * size
                pct = 100 * floor / bandwidth / (ms * 1e-3)
                lines.append(
                    f"| {str(dtype).removeprefix('torch.')} | {d} | {b} | {ms:.3f} [{lo:.3f}, {hi:.3f}] | "
                    f"{base:.3f} | {base / ms:.1f}x | {floor / 1e6:.1f} | {kernel / 1e6:.1f} | {pct:.1f} |"
                )
                print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    out_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    os.makedirs(out_dir, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-")
    path = os.path.join(out_dir, f"triton_{slug}_{datetime.date.today().isoformat()}.md")
    with open(path, "w") as f:
        f.write(text)
    print(text)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
