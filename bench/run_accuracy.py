"""Budget accuracy of the sketched spectrum against exact SVD (``exact_budget``).

    eadaprune bench --accuracy                # the default run (2-core CPU: ~6 min)
    eadaprune bench --accuracy -- --long      # 32 matrices per family, sketch seeds 0-3 (not timed yet)
    eadaprune bench --accuracy -- --help      # every flag
    python -m bench.run_accuracy [flags]      # the same script, from the repository root

The real-image data set needs scikit-image (in the bench extra): pip install --no-build-isolation -e
".[bench]", or leave it out with --families. It is checked before anything is computed.

For each data set, sketch_size l in {32, 64, 128, 256}, power_iters q in {0, 1, 2} and energy in
{0.9, 0.95, 0.99} it compares per-image budgets with the exact-SVD budget of the same tokens:

* this project: ``spectral_budget(..., backend="reference")`` and the fastest available backend
  (``available_backends(device)[0]``) when that is another one;
* ``torch.svd_lowrank(X_c, q=l, niter=q)`` in float32 with the same threshold rule (exact
  ||X_c||_F^2 in the denominator; saturated when no k <= l reaches it).

Both sides use max_tokens = N (576): a sketched budget that saturates is reported as N (keep every
token), so saturation shows up as a large error instead of being clamped to l, and the exact budget
is never clamped. Writes ``bench/results/accuracy_<device>_<date>.md`` and prints it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/run_accuracy.py` from a checkout
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.methods import energy_budget  # noqa: E402
from bench.run_speed import missing_packages, recorded_command  # noqa: E402
from bench.timing import load_average, machine_header, today  # noqa: E402
from eadaprune_kernels import available_backends, exact_budget, spectral_budget  # noqa: E402
from eadaprune_kernels.images import SAMPLE_IMAGES, patch_tokens, sample_images  # noqa: E402

PROG = "python -m bench.run_accuracy"
SKETCH_SIZES = (32, 64, 128, 256)
POWER_ITERS = (0, 1, 2)
ENERGIES = (0.9, 0.95, 0.99)


# ---------------------------------------------------------------------------------------- data

def _orthonormal_centred(n: int, r: int, g: torch.Generator) -> torch.Tensor:
    """[n, r] orthonormal columns orthogonal to the all-ones vector (so X = U S V^T is centred)."""
    a = torch.randn(n, r, generator=g, dtype=torch.float64)
    return torch.linalg.qr(a - a.mean(0, keepdim=True)).Q


def _orthonormal(n: int, r: int, g: torch.Generator) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(n, r, generator=g, dtype=torch.float64)).Q


def _spectrum(family: str, r: int, g: torch.Generator) -> torch.Tensor:
    j = torch.arange(1, r + 1, dtype=torch.float64)
    u = lambda lo, hi: lo + (hi - lo) * torch.rand((), generator=g, dtype=torch.float64).item()  # noqa: E731
    if family == "exp decay":  # s_j = exp(-j / tau), tau ~ U[5, 40]
        return torch.exp(-j / u(5, 40))
    if family.startswith("power law"):  # s_j = j^-alpha
        return j ** -float(family.split("=")[1])
    if family == "steps":  # 1 up to r1, 0.3 up to r2, 0.01 after; r1 ~ U[5, 60], r2 - r1 ~ U[10, 100]
        r1 = int(u(5, 60))
        r2 = r1 + int(u(10, 100))
        return torch.where(j <= r1, 1.0, torch.where(j <= r2, 0.3, 0.01))
    raise ValueError(family)


FAMILIES = ("exp decay", "power law a=0.5", "power law a=1", "power law a=2", "steps",
            "low rank + noise")


def synthetic(family: str, count: int, n: int, d: int, seed: int) -> torch.Tensor:
    """[count, n, d] float32 tokens X = U diag(s) V^T, U orthonormal and orthogonal to 1 (X is
    already centred, so the spectrum of X_c is s), V orthonormal; both random."""
    g = torch.Generator().manual_seed(seed)
    r = min(n - 1, d)
    out = []
    for _ in range(count):
        if family == "low rank + noise":  # rank ~ U[8, 64] signal, s linear 1 -> 0.3, plus Gaussian noise
            rank = int(torch.randint(8, 65, (), generator=g))
            s = torch.linspace(1.0, 0.3, rank, dtype=torch.float64)
            x = (_orthonormal_centred(n, rank, g) * s) @ _orthonormal(d, rank, g).T
            noise = torch.randn(n, d, generator=g, dtype=torch.float64)
            noise -= noise.mean(0, keepdim=True)
            frac = 0.002 + 0.048 * torch.rand((), generator=g, dtype=torch.float64)  # noise/signal energy
            x += noise * (frac * s.square().sum() / noise.square().sum()).sqrt()
        else:
            s = _spectrum(family, r, g)
            x = (_orthonormal_centred(n, r, g) * s) @ _orthonormal(d, r, g).T
        out.append(x.to(torch.float32))
    return torch.stack(out)


def image_tokens(quadrants: bool) -> tuple[torch.Tensor, int]:
    """[M, 576, 588] float32 patch tokens of the scikit-image photographs (and their 4 quadrants)."""
    tokens = []
    for img in sample_images(SAMPLE_IMAGES).values():
        tokens.append(patch_tokens(img))
        if quadrants:
            h, w = img.shape[0] // 2, img.shape[1] // 2
            for crop in (img[:h, :w], img[:h, w:], img[h:, :w], img[h:, w:]):
                tokens.append(patch_tokens(crop))
    return torch.stack(tokens), len(SAMPLE_IMAGES)


# ------------------------------------------------------------------------------------- methods

def project_budgets(backend: str, tokens, l, q, energy, max_tokens, seed):
    r = spectral_budget(tokens, energy=energy, sketch_size=l, power_iters=q, max_tokens=max_tokens,
                        seed=seed, backend=backend)
    return r.budgets.long(), r.saturated


def lowrank_spectrum(tokens, l, q, seed):
    """torch.svd_lowrank on float32 X_c (its own torch.randn sketch, seeded) -> (sigma, ||X_c||^2)."""
    xc = tokens.float() - tokens.float().mean(1, keepdim=True)
    torch.manual_seed(seed)
    _, s, _ = torch.svd_lowrank(xc, q=min(l, *xc.shape[1:]), niter=q)
    return s, xc.square().sum((1, 2))


# ------------------------------------------------------------------------------------- metrics

def metrics(k, exact, saturated, l):
    err = (k - exact).abs().double()
    fits = exact < l
    return dict(
        match=100.0 * (k == exact).double().mean().item(),
        match_fit=(100.0 * (k[fits] == exact[fits]).double().mean().item()) if fits.any() else None,
        mean=err.mean().item(), max=int(err.max().item()),
        sat=100.0 * saturated.double().mean().item(),
        under=100.0 * (k < exact).double().mean().item(),
        fit_n=int(fits.sum()), fit_hits=int((k[fits] == exact[fits]).sum()),
    )


def evaluate(datasets, methods, seeds, max_tokens, log):
    """rows: dict(dataset, method, l, q, energy, **metrics), exact: {(dataset, energy): budgets}."""
    rows, exact = [], {}
    for name, tokens in datasets.items():
        for energy in ENERGIES:
            exact[name, energy] = exact_budget(tokens, energy=energy, max_tokens=max_tokens)
        for l in SKETCH_SIZES:
            for q in POWER_ITERS:
                start = time.perf_counter()
                for method in methods:
                    ks, sats = {e: [] for e in ENERGIES}, {e: [] for e in ENERGIES}
                    for seed in seeds:
                        if method == "torch.svd_lowrank":
                            s, total = lowrank_spectrum(tokens, l, q, seed)
                        for energy in ENERGIES:
                            if method == "torch.svd_lowrank":
                                k = energy_budget(s, total, energy, max_tokens)
                                sat = torch.cumsum(s.square(), 1)[:, -1] < (energy - 1e-6) * total
                            else:
                                k, sat = project_budgets(method, tokens, l, q, energy, max_tokens, seed)
                            ks[energy].append(k)
                            sats[energy].append(sat)
                    for energy in ENERGIES:
                        ref = exact[name, energy].repeat(len(seeds))
                        rows.append(dict(dataset=name, method=method, l=l, q=q, energy=energy,
                                         **metrics(torch.cat(ks[energy]), ref, torch.cat(sats[energy]), l)))
                log(f"  {name}: l={l} q={q} done in {time.perf_counter() - start:.1f} s")
    return rows, exact


# ------------------------------------------------------------------------------------- report

def _fmt(v, digits=1):
    return "-" if v is None else f"{v:.{digits}f}"


def report(rows, exact, datasets, methods, args, header, wall) -> str:
    out = ["# Accuracy: sketched budgets against exact SVD", ""] + header + [
        f"- load average (1/5/15 min) at end: {load_average()} (affects only the wall time)",
        f"- wall time of this run: {wall:.0f} s; command (from the repository root): "
        f"`{recorded_command(PROG, args.argv)}`", ""]
    out += ["## Setup", "",
            "- Methods: " + ", ".join(f"`{m}`" for m in methods if m != "torch.svd_lowrank")
            + " (this project, `spectral_budget(..., backend=name)`; the reference computes in float64), and "
            "`torch.svd_lowrank` (float32 X_c, q=l, niter=power_iters, its own seeded torch.randn "
            "sketch) with the same threshold rule on its singular values.",
            f"- Settings: sketch_size l in {list(SKETCH_SIZES)}, power_iters q in {list(POWER_ITERS)}, "
            f"energy in {list(ENERGIES)}; project sketch seeds {list(args.seeds)} "
            "(svd_lowrank: torch.manual_seed(seed)). Each row pools every image and every seed.",
            f"- Ground truth: `exact_budget(tokens, energy, max_tokens={args.n})` (float64 SVD of the same "
            "float32 tokens, same threshold rule).",
            f"- max_tokens = N = {args.n} on both sides. A sketch of width l cannot reach the energy when "
            "the exact budget is >= l (and sometimes when it is just below): it saturates, the library "
            f"flags it and returns max_tokens. With max_tokens = N that is {args.n} tokens (keep all), so a "
            "saturation costs N - k_exact tokens in the error columns instead of being hidden. With the "
            "library default max_tokens = l, a saturated image would instead get l tokens, fewer than "
            "exact SVD's budget when k_exact > l.",
            f"- Synthetic data: {args.count} matrices per family, N={args.n}, D={args.d}, float32, "
            "X = U diag(s) V^T with random orthonormal U (orthogonal to the all-ones vector, so X is "
            "already centred and its centred spectrum is exactly s) and V; rank min(N-1, D). Families: "
            "exp decay s_j = exp(-j/tau), tau ~ U[5, 40]; power laws s_j = j^-a; steps (1 up to r1 ~ "
            "U[5, 60], 0.3 for the next U[10, 100], 0.01 after); low rank + noise (rank U[8, 64], "
            "s linear 1 -> 0.3, centred Gaussian noise of 0.2-5 % of the signal energy).",
            f"- Real images: `sample_images()` ({len(SAMPLE_IMAGES)} scikit-image photographs)"
            + (" and their 4 quadrants (each resized back to 336 px)" if args.quadrants else "")
            + f": {datasets['real images'].shape[0] if 'real images' in datasets else 0} token matrices "
            "of N=576, D=588 (`patch_tokens`).",
            "- Columns: `match` % of images whose budget equals the exact one; `match k<l` the same "
            "over images whose exact budget is below l (those a sketch can get right); `mean`/`max` "
            "absolute error in tokens; `sat` % saturated; `under` % with budget below exact (fewer "
            "tokens kept than exact SVD would keep; the float64 reference guarantees 0).", ""]

    out += ["## Exact budgets of the data sets", "", "| data set | images | " +
            " | ".join(f"k_exact at {e} (min / median / max)" for e in ENERGIES) + " |",
            "|---|---|" + "---|" * len(ENERGIES)]
    for name, tokens in datasets.items():
        cells = []
        for e in ENERGIES:
            k = exact[name, e]
            cells.append(f"{int(k.min())} / {int(k.median())} / {int(k.max())}")
        out.append(f"| {name} | {tokens.shape[0]} | " + " | ".join(cells) + " |")
    out.append("")

    # summary: pooled over the data sets, per method / l / q / energy
    out += ["## Summary over all data sets", "",
            "Images pooled over every data set (each data set weighted by its image count).", "",
            "`match k<l` pools only the images whose exact budget is below l (the sketch's own error, "
            "without the images that cannot fit in l columns); the other columns pool every image, so "
            "they include saturations (a saturated image counts N - k_exact tokens of error).", "",
            "| method | l | q | " + " | ".join(f"match % @{e}" for e in ENERGIES) + " | "
            + " | ".join(f"match k<l % @{e}" for e in ENERGIES) + " | "
            + " | ".join(f"mean err @{e}" for e in ENERGIES) + " | sat % @0.99 | under % (any energy) |",
            "|---|---|---|" + "---|" * (3 * len(ENERGIES) + 2)]
    sizes = {name: t.shape[0] for name, t in datasets.items()}
    for method in dict.fromkeys(r["method"] for r in rows):
        for l in SKETCH_SIZES:
            for q in POWER_ITERS:
                sel = {e: [r for r in rows if (r["method"], r["l"], r["q"], r["energy"]) == (method, l, q, e)]
                       for e in ENERGIES}
                wavg = lambda rs, key: sum(r[key] * sizes[r["dataset"]] for r in rs) / sum(sizes[r["dataset"]] for r in rs)  # noqa: E731
                under = max(max(r["under"] for r in rs) for rs in sel.values())
                fit = lambda rs: (100.0 * sum(r["fit_hits"] for r in rs) / sum(r["fit_n"] for r in rs)  # noqa: E731
                                  if sum(r["fit_n"] for r in rs) else None)
                out.append(f"| {method} | {l} | {q} | "
                           + " | ".join(_fmt(wavg(sel[e], "match")) for e in ENERGIES) + " | "
                           + " | ".join(_fmt(fit(sel[e])) for e in ENERGIES) + " | "
                           + " | ".join(_fmt(wavg(sel[e], "mean")) for e in ENERGIES) + " | "
                           + _fmt(wavg(sel[0.99], "sat")) + f" | {_fmt(under)} |")
    out.append("")

    out += ["## Per data set", ""]
    for name in datasets:
        out += [f"### {name}", "",
                "| method | l | q | energy | match % | match k<l % | mean err | max err | sat % | under % |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            if r["dataset"] != name:
                continue
            out.append(f"| {r['method']} | {r['l']} | {r['q']} | {r['energy']} | {_fmt(r['match'])} | "
                       f"{_fmt(r['match_fit'])} | {_fmt(r['mean'], 2)} | {r['max']} | {_fmt(r['sat'])} | "
                       f"{_fmt(r['under'])} |")
        out.append("")
    return "\n".join(out) + "\n"


def main(argv=None, prog: str = PROG) -> int:
    """Runs the report with the command-line arguments ``argv`` (default sys.argv[1:]); ``prog`` is
    the program name the help shows (``eadaprune bench --accuracy --`` through the console script)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--long", action="store_true", help="--count 32 --seeds 0 1 2 3")
    ap.add_argument("--count", type=int, default=8, help="matrices per synthetic family")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="sketch seeds")
    ap.add_argument("--n", type=int, default=576, help="tokens per synthetic matrix")
    ap.add_argument("--d", type=int, default=1024, help="features per synthetic matrix")
    ap.add_argument("--no-quadrants", dest="quadrants", action="store_false",
                    help="real images: the 11 photographs only, not also their quadrants")
    ap.add_argument("--families", nargs="+", default=list(FAMILIES) + ["real images"],
                    choices=list(FAMILIES) + ["real images"], metavar="FAMILY",
                    help="data sets to run (default: all): " + ", ".join(repr(f) for f in FAMILIES)
                    + ", 'real images'")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice); "
                    "1 avoids OpenMP slow-downs when other jobs share the cores")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--tag", help="output file stem (default accuracy_<device>_<date>)")
    args = ap.parse_args(argv)
    args.argv = argv
    if "real images" in args.families:
        missing = missing_packages({"skimage": "scikit-image (the 'real images' data set)"})
        if missing:
            print(f"{prog.removesuffix(' --')}: missing {', '.join(missing)}; install it with "
                  "pip install --no-build-isolation -e \".[bench]\", or choose other data sets with "
                  "--families", file=sys.stderr)
            return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.long:
        args.count, args.seeds = max(args.count, 32), sorted(set(args.seeds) | {0, 1, 2, 3})
    device = torch.device(args.device)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731

    start = time.perf_counter()
    datasets = {}
    for i, family in enumerate(f for f in args.families if f != "real images"):
        datasets[family] = synthetic(family, args.count, args.n, args.d, seed=1000 + i).to(device)
    if "real images" in args.families:
        datasets["real images"] = image_tokens(args.quadrants)[0].to(device)
    methods = ["reference"]
    fastest = available_backends(device)[0]
    if fastest != "reference":
        methods.append(fastest)
    methods.append("torch.svd_lowrank")
    rows, exact = evaluate(datasets, methods, args.seeds, args.n, log)
    wall = time.perf_counter() - start
    text = report(rows, exact, datasets, methods, args, machine_header(device), wall)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = args.out_dir / f"{args.tag or f'accuracy_{device.type}_{today()}'}.md"
    path.write_text(text, encoding="utf-8")
    print(text)
    log(f"wrote {path} ({wall:.0f} s)")
    return 0


if __name__ == "__main__":
    # `eadaprune bench` runs this module in a child process and names itself through the environment.
    sys.exit(main(prog=os.environ.get("EADAPRUNE_BENCH_PROG", PROG)))
