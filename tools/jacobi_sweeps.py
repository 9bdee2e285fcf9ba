"""How many sweeps the Triton kernel's Jacobi eigensolver runs on sketched Grams (tools/cost_model.py
assumes 5; MAX_SWEEPS = 20 caps it).

For images with a chosen spectrum (N x D tokens, singular values exp(-rate i) times a 10% jitter, a mean
of 3, random singular vectors; and a Gaussian matrix) it forms the Gram the kernel diagonalises,
H = Z^T Z with Z = X_c^T Q and Q from l columns of subspace iteration (q power iterations, QR, float64),
rounds it to fp32 and runs the kernel's own ``jacobi_eigenvectors`` on it under the Triton interpreter
with the sm_90 emulation, printing the sweeps per image. CPU only (sets TRITON_INTERPRET=1).

    python tools/jacobi_sweeps.py                  # N=576, D=1024, l=128, q=2, 3 images per spectrum
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from eadaprune_kernels.backends.triton_interpreter import emulate_sm90_dot  # noqa: E402
from eadaprune_kernels.backends.triton_kernel import jacobi_alone  # noqa: E402


def sketched_gram(x: torch.Tensor, l: int, q: int, gen: torch.Generator) -> torch.Tensor:
    xc = x - x.mean(0)
    q_mat, _ = torch.linalg.qr(xc @ torch.randn(x.shape[1], l, generator=gen, dtype=x.dtype))
    for _ in range(q):
        w, _ = torch.linalg.qr(xc.T @ q_mat)
        q_mat, _ = torch.linalg.qr(xc @ w)
    z = xc.T @ q_mat
    return (z.T @ z).to(torch.float32)


def image(n: int, d: int, rate: float, gen: torch.Generator) -> torch.Tensor:
    k = min(n, d)
    sv = torch.exp(-rate * torch.arange(k, dtype=torch.float64)) * (1 + 0.1 * torch.rand(k, generator=gen, dtype=torch.float64))
    u, _ = torch.linalg.qr(torch.randn(n, k, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(d, k, generator=gen, dtype=torch.float64))
    return (u * sv) @ v.T + 3.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=576)
    ap.add_argument("--d", type=int, default=1024)
    ap.add_argument("--l", type=int, default=128, help="sketch size: a power of two (the kernel's LP)")
    ap.add_argument("--q", type=int, default=2)
    ap.add_argument("--images", type=int, default=3, help="images per spectrum")
    ap.add_argument("--rates", type=float, nargs="+", default=[0.002, 0.01, 0.03, 0.1, 0.3])
    args = ap.parse_args(argv)
    gen = torch.Generator().manual_seed(0)
    print(f"| spectrum (N={args.n}, D={args.d}, l={args.l}, q={args.q}) | sweeps per image |")
    print("|---|---|")
    with emulate_sm90_dot():
        for rate in args.rates:
            sweeps = [jacobi_alone(sketched_gram(image(args.n, args.d, rate, gen), args.l, args.q, gen))[1]
                      for _ in range(args.images)]
            print(f"| sigma_i = exp(-{rate:g} i) | {', '.join(map(str, sweeps))} |", flush=True)
        sweeps = [jacobi_alone(sketched_gram(torch.randn(args.n, args.d, generator=gen, dtype=torch.float64), args.l,
                                             args.q, gen))[1] for _ in range(args.images)]
        print(f"| Gaussian matrix | {', '.join(map(str, sweeps))} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
