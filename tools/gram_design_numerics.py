"""What the Gram design of the Triton-speed issue would change numerically, before anyone builds it.

The issue proposes, for N <= D, one pass over the tokens that forms G = X_c X_c^T (N x N, fp32
accumulation of exact bf16 products) beside X_c Omega, then power iterations Q <- orth(G Q) on G and
sigma^2 = eig(Q^T G Q): the same subspace iteration as the reference in exact arithmetic (X_c W spans
G Q), with 1-2 passes over X instead of 2q + 3. This script emulates that arithmetic in PyTorch on the
CPU (fp32 where the kernel would be fp32; the small eigenproblems exact, as an accurate fp32
eigensolver would be to within its own rounding) and compares it with the reference (float64, the
semantics) and with the exact SVD, on bf16 images of chosen spectra:

- ``fp32 passes``: the present design's arithmetic (fp32 products with X_c, fp32 QR, sigma from
  Q^T X_c), the baseline;
- ``Gram, rank-1 centring``: G = X X^T - r 1^T - 1 r^T + (mu^T mu) 1 1^T with r = X mu, all fp32 (X stays
  exact bf16, as the kernel's 16-bit products keep it);
- ``Gram, centred``: G = X_c X_c^T with X_c = X - mu rounded to fp32 (what a split product of the
  centred tokens gives);
- ``Gram + Z pass``: the centred Gram, with sigma_j = ||X_c^T Q v_j|| from one more pass (v_j the
  eigenvectors of Q^T G Q), as the present kernel computes sigma.

Per image it prints the budget beside the reference's, the largest error of sigma relative to sigma_1,
the largest relative error among sigma_j >= 1e-2 sigma_1, the largest error of the cumulative energy
sum_{i<=k} sigma_i^2 relative to E (the threshold rule's input: ENERGY_SLACK is 1e-5), and how many
sigma_j exceed the exact sigma_j (the sketch's lower-bound property; 1e-6 relative slack); then a
summary per method.

    python tools/gram_design_numerics.py     # N=576, D=1024, l=128, q=2, 2 images per spectrum and mean
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from eadaprune_kernels.backends.reference import spectrum  # noqa: E402
from eadaprune_kernels.contract import PipelineConfig, budget_from_spectrum  # noqa: E402
from eadaprune_kernels.sketch import gaussian_sketch  # noqa: E402

METHODS = ("fp32 passes", "Gram, rank-1 centring", "Gram, centred", "Gram + Z pass")


def bf16_image(n: int, d: int, rate: float, mean_ratio: float, gen: torch.Generator) -> torch.Tensor:
    """bf16 tokens [n, d]: singular values exp(-rate i) (10% jitter) on random singular vectors, scaled
    to entries of rms 1, plus a mean token of rms ``mean_ratio`` (visual encoders' tokens share a large
    mean direction)."""
    k = min(n, d)
    jitter = 1 + 0.1 * torch.rand(k, generator=gen, dtype=torch.float64)
    sv = torch.exp(-rate * torch.arange(k, dtype=torch.float64)) * jitter
    u, _ = torch.linalg.qr(torch.randn(n, k, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(d, k, generator=gen, dtype=torch.float64))
    x = (u * (sv * (n * d) ** 0.5 / sv.norm())) @ v.T
    return (x + mean_ratio * torch.randn(d, generator=gen, dtype=torch.float64)).to(torch.bfloat16)


def _orth(a: torch.Tensor) -> torch.Tensor:
    return torch.linalg.qr(a).Q


def fp32_spectra(x: torch.Tensor, omega: torch.Tensor, q: int) -> dict:
    """sigma (descending, float64) of each method of the module docstring, from bf16 tokens x [N, D]."""
    xf = x.float()  # exact
    mu = x.double().mean(0).float()
    xc = xf - mu
    om = omega.float()
    out = {}
    # the present design: every product with X_c, fp32
    qm = _orth(xc @ om)
    for _ in range(q):
        qm = _orth(xc @ _orth(xc.T @ qm))
    out["fp32 passes"] = torch.linalg.svdvals((qm.T @ xc).double())
    # the Gram design
    r = xf @ mu
    grams = {"Gram, rank-1 centring": xf @ xf.T - r[:, None] - r[None, :] + mu.dot(mu),
             "Gram, centred": xc @ xc.T}
    for name, g in grams.items():
        qm = _orth(xc @ om)
        for _ in range(q):
            qm = _orth(g @ qm)
        h = qm.T @ (g @ qm)
        lam, vec = torch.linalg.eigh(((h + h.T) / 2).double())
        out[name] = lam.flip(0).clamp(min=0).sqrt()
        if name == "Gram, centred":
            z = xc.T @ qm  # one more pass over the tokens
            sig = (z @ vec.flip(1).float()).double().norm(dim=0)
            out["Gram + Z pass"] = sig.sort(descending=True).values
    return out


def compare(x: torch.Tensor, l: int, q: int, energy: float) -> list[dict]:
    """One row per method for bf16 tokens x [N, D] (see the module docstring)."""
    n, d = x.shape
    cfg = PipelineConfig(energy=energy, center=True, sketch_size=l, power_iters=q, min_tokens=1, max_tokens=n,
                         seed=0, sketch_matrix=None)
    sig_ref, e_ref, flat, _ = spectrum(x.double()[None], cfg, want_vectors=False)
    exact = torch.linalg.svdvals(x.double() - x.double().mean(0))[:l]

    def budget(sig):
        return int(budget_from_spectrum(sig[None], e_ref, flat, energy, 1, n)[1][0])

    def cum(sig):  # cumulative energy as a fraction of E
        return torch.cumsum(sig.square(), 0) / e_ref[0]

    ref = sig_ref[0]
    rows = [dict(method="reference (float64)", budget=budget(ref), err_s1=0.0, err_big=0.0, err_e=0.0,
                 above=int((ref > exact * (1 + 1e-6)).sum()))]
    big = ref >= 1e-2 * ref[0]
    for name, sig in fp32_spectra(x, gaussian_sketch(d, l, 0, dtype=torch.float64), q).items():
        rows.append(dict(method=name, budget=budget(sig), err_s1=float(((sig - ref).abs() / ref[0]).max()),
                         err_big=float(((sig - ref).abs() / ref)[big].max()),
                         err_e=float((cum(sig) - cum(ref)).abs().max()),
                         above=int((sig > exact * (1 + 1e-6)).sum())))
    return rows


def main(argv=None) -> dict:
    """Prints the per-image table and the summary; returns the summary (per method: images, budgets
    unlike the reference's, the largest errors, the most sigma_j above the exact ones in one image)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=576)
    ap.add_argument("--d", type=int, default=1024)
    ap.add_argument("--l", type=int, default=128)
    ap.add_argument("--q", type=int, default=2)
    ap.add_argument("--energy", type=float, default=0.99)
    ap.add_argument("--images", type=int, default=2, help="images per spectrum")
    ap.add_argument("--rates", type=float, nargs="+", default=[0.01, 0.03, 0.1, 0.3])
    ap.add_argument("--mean-ratios", type=float, nargs="+", default=[0.0, 3.0])
    args = ap.parse_args(argv)
    gen = torch.Generator().manual_seed(0)
    print(f"N={args.n}, D={args.d}, l={args.l}, q={args.q}, energy={args.energy}; bf16 tokens. Errors of sigma are "
          "against the reference's (the semantics); 'above exact' counts sigma_j > exact sigma_j (1 + 1e-6).\n")
    print("| spectrum | mean / rms | image | method | budget | max abs error / sigma_1 "
          "| max rel error, sigma >= 1e-2 sigma_1 | max cumulative energy error / E | above exact |")
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|")
    summary = {}
    for rate in args.rates:
        for ratio in args.mean_ratios:
            for i in range(args.images):
                x = bf16_image(args.n, args.d, rate, ratio, gen)
                rows = compare(x, args.l, args.q, args.energy)
                for row in rows:
                    print(f"| exp(-{rate:g} i) | {ratio:g} | {i} | {row['method']} | {row['budget']} | "
                          f"{row['err_s1']:.1e} | {row['err_big']:.1e} | {row['err_e']:.1e} | {row['above']} |",
                          flush=True)
                    s = summary.setdefault(row["method"], dict(images=0, budgets_off=0, err_s1=0.0, err_big=0.0,
                                                               err_e=0.0, above=0))
                    s["images"] += 1
                    s["budgets_off"] += int(row["budget"] != rows[0]["budget"])
                    for key in ("err_s1", "err_big", "err_e", "above"):
                        s[key] = max(s[key], row[key])
    print("\n| method | images | budgets unlike the reference's | max abs error / sigma_1 "
          "| max rel error, sigma >= 1e-2 sigma_1 | max cumulative energy error / E "
          "| most sigma_j above exact in one image |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, s in summary.items():
        print(f"| {name} | {s['images']} | {s['budgets_off']} | {s['err_s1']:.1e} | {s['err_big']:.1e} "
              f"| {s['err_e']:.1e} | {s['above']} |")
    return summary


if __name__ == "__main__":
    main()
