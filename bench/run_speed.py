"""Speed of the project's backends against torch.linalg, torch.svd_lowrank and scikit-learn.

    eadaprune bench                           # the default subset for this device (2-core CPU: ~5 min when quiet)
    eadaprune bench -- --full                 # the whole grid, the default on a GPU (2-core CPU: hours)
    eadaprune bench -- --help                 # every flag
    python -m bench.run_speed [flags]         # the same script, from the repository root

Needs the 'bench' extra (matplotlib for the plot, scikit-learn for its randomized_svd baseline):
pip install --no-build-isolation -e ".[bench]". They are checked before anything is timed.

Writes ``bench/results/speed_<device>_<date>.md`` (header, notes, table) and ``.png`` (time per
image against batch size, one line per method, log-log) and prints the markdown.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/run_speed.py` from a checkout
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.methods import LOWRANK, Method, all_methods  # noqa: E402
from bench.timing import hbm_peak_bytes_per_s, load_average, machine_header, time_call, today  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SHORT = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
BASE_L, BASE_Q = 128, 2  # the library defaults
PROG = "python -m bench.run_speed"
BENCH_EXTRA = "pip install --no-build-isolation -e \".[bench]\""


@dataclass(frozen=True)
class Point:
    n: int
    d: int
    b: int
    dtype: torch.dtype
    l: int
    q: int
    sketched_only: bool = False  # a sketch-size sweep point: exact methods do not depend on l, q
    max_loop_batch: int | None = None  # per-image Python loops (sklearn) only up to this batch


def missing_packages(needed: dict[str, str]) -> list[str]:
    """The packages of ``needed`` ({import name: "package (what for)"}) that cannot be imported."""
    missing = []
    for module, what in needed.items():
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(what)
    return missing


def recorded_command(prog: str, argv: list[str]) -> str:
    """The command line that reruns this benchmark from the repository root, as results files record it."""
    return " ".join([prog] + ([shlex.join(argv)] if argv else []))


def make_tokens(b: int, n: int, d: int, dtype: torch.dtype, device: torch.device, seed: int = 0):
    """Tokens with a decaying spectrum (rank-64 signal, exp decay, plus 1% noise), like image tokens."""
    g = torch.Generator().manual_seed(seed)
    rank = 64
    left = torch.randn(b, n, rank, generator=g) * torch.exp(-torch.arange(rank) / 8.0)
    right = torch.randn(b, rank, d, generator=g) / rank**0.5
    x = left @ right + 0.01 * torch.randn(b, n, d, generator=g)
    return x.to(device=device, dtype=dtype)


def default_plan(device: torch.device, full: bool) -> tuple[list[Point], list[str]]:
    """The points to time, and the notes saying what the subset skips."""
    if device.type == "cuda" or full:
        dtypes = (torch.bfloat16, torch.float16, torch.float32)
        points = [Point(576, d, b, dt, BASE_L, BASE_Q)
                  for dt in dtypes for d in (1024, 4096) for b in (1, 8, 64, 256)]
        points += [Point(2880, d, b, dt, BASE_L, BASE_Q)
                   for dt in dtypes for d in (1024, 4096) for b in (1, 8, 64)]
        points += [Point(576, 1024, 64, torch.bfloat16, l, q, True)
                   for l in (64, 128, 256) for q in (1, 2) if (l, q) != (BASE_L, BASE_Q)]
        notes = ["Full grid: N=576 x D in {1024, 4096} x B in {1, 8, 64, 256}, N=2880 x B in {1, 8, 64}, "
                 "all in bf16/fp16/fp32 at sketch_size=128, power_iters=2; sketch sweep "
                 "sketch_size in {64, 128, 256} x power_iters in {1, 2} at N=576, D=1024, B=64, bf16."]
        return points, notes
    f32 = torch.float32
    points = [Point(576, 1024, b, f32, BASE_L, BASE_Q, max_loop_batch=8) for b in (1, 8, 64)]
    points += [Point(576, 4096, b, f32, BASE_L, BASE_Q, max_loop_batch=8) for b in (1, 8)]
    points += [Point(2880, 1024, 1, f32, BASE_L, BASE_Q)]
    points += [Point(576, 1024, 8, dt, BASE_L, BASE_Q) for dt in (torch.bfloat16, torch.float16)]
    points += [Point(576, 1024, 8, f32, l, q, True)
               for l in (64, 128, 256) for q in (1, 2) if (l, q) != (BASE_L, BASE_Q)]
    notes = [
        "CPU default subset (the full grid takes hours on 2 cores; run it with `--full`):",
        "  - fp32 batch sweep N=576: D=1024 at B in {1, 8, 64}; D=4096 at B in {1, 8}. "
        "Skipped: B=256 everywhere and B=64 at D=4096 (exact SVD alone would take minutes per call).",
        "  - sklearn.randomized_svd (a Python loop over images) only up to B=8.",
        "  - N=2880, D=1024 at B=1 only; N=2880 x D=4096 skipped.",
        "  - bf16 and fp16 only at N=576, D=1024, B=8 (baselines upcast to fp32 inside the timed call).",
        "  - sketch sweep sketch_size in {64, 128, 256} x power_iters in {1, 2} at N=576, D=1024, B=8, fp32, "
        "sketched methods only (the exact methods do not depend on them; see the sketch_size=128, "
        "power_iters=2 rows).",
    ]
    return points, notes


def pass_bytes(p: Point) -> int:
    """Bytes of the (2q+2) passes over X the reference-style algorithm makes."""
    return (2 * p.q + 2) * p.b * p.n * p.d * torch.finfo(p.dtype).bits // 8


def run(points, methods: list[Method], device, energy, repeats, max_seconds, log=print):
    rows = []
    for p in points:
        x = make_tokens(p.b, p.n, p.d, p.dtype, device)
        l = min(p.l, p.n, p.d)
        point_rows = []
        for m in methods:
            if p.sketched_only and not m.sketched:
                continue
            if p.max_loop_batch is not None and p.b > p.max_loop_batch and m.name.startswith("sklearn"):
                continue
            fn = lambda m=m, x=x, l=l: m.run(x, p.l, p.q, energy, l)  # noqa: E731
            try:
                budgets = fn()
                seconds, cpu_seconds, n = time_call(fn, device, repeats, max_seconds)
            except (RuntimeError, TypeError, NotImplementedError) as exc:  # e.g. dtype unsupported
                log(f"  {m.name}: skipped ({type(exc).__name__}: {str(exc).splitlines()[0][:100]})")
                continue
            row = dict(point=p, method=m.name, seconds=seconds, cpu_seconds=cpu_seconds, repeats=n,
                       median_k=int(budgets.float().median().item()))
            point_rows.append(row)
            log(f"  N={p.n} D={p.d} B={p.b} {SHORT[p.dtype]} l={p.l} q={p.q} {m.name}: "
                f"{seconds * 1e3:.2f} ms (n={n})")
        base = next((r["seconds"] for r in point_rows if r["method"] == LOWRANK), None)
        for r in point_rows:
            r["ratio"] = None if base is None else r["seconds"] / base
        rows += point_rows
        del x
    return rows


def markdown(rows, header, notes, device, energy) -> str:
    peak = hbm_peak_bytes_per_s(device)
    gpu = device.type == "cuda"
    out = ["# Speed: eadaprune_kernels against torch.linalg / torch.svd_lowrank"
           + ("" if gpu else " / sklearn"), ""]
    out += header
    timing = ("triton.testing.do_bench median" if gpu else
              "one warm-up call, then the median of up to --repeats calls (fewer, at least 1, "
              "when a call is slower than --max-seconds / repeats; column n)")
    out += [f"- timing: {timing}", f"- energy={energy}; tokens: rank-64 exp-decay signal + 1% noise "
            "(`make_tokens`); every method returns per-image budgets with the same threshold rule", ""]
    out += ["## Notes", ""] + [f"{n}" if n.startswith("  ") else f"- {n}" for n in notes]
    if not gpu:
        out += ["- `ms/call`, `ms/image`: median wall time; `CPU ms/call`: median CPU time of this "
                "process over all its threads (less sensitive to other jobs on a shared machine; up to "
                "threads x wall when every thread is busy)."]
    out += ["- `x svd_lowrank`: wall time / wall time of torch.svd_lowrank(q=sketch_size, niter=power_iters) "
            "on the same tokens (< 1 is faster).",
            "- Baselines upcast bf16/fp16 to fp32; the reference backend computes in float64.",
            "- `median k`: median budget over the batch (a cross-check that the methods agree).",
            ""]
    cols = ["N", "D", "B", "dtype", "l", "q", "method", "ms/call", "ms/image", "x svd_lowrank", "median k", "n"]
    if not gpu:
        cols.insert(9, "CPU ms/call")
    if gpu:
        cols += ["GB/s", "HBM floor us", "% of floor"]
    out += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        p = r["point"]
        cells = [p.n, p.d, p.b, SHORT[p.dtype], p.l, p.q, r["method"], f"{r['seconds'] * 1e3:.2f}",
                 f"{r['seconds'] * 1e3 / p.b:.3f}", "-" if r["ratio"] is None else f"{r['ratio']:.2f}",
                 r["median_k"], r["repeats"] or "do_bench"]
        if not gpu:
            cells.insert(9, f"{r['cpu_seconds'] * 1e3:.1f}")
        if gpu:
            nbytes = pass_bytes(p)
            floor = None if peak is None else nbytes / peak
            cells += [f"{nbytes / r['seconds'] / 1e9:.0f}",
                      "-" if floor is None else f"{floor * 1e6:.1f}",
                      "-" if floor is None else f"{100 * floor / r['seconds']:.1f}"]
        out.append("| " + " | ".join(str(c) for c in cells) + " |")
    if gpu:
        out += ["", f"Bytes = (2q+2) passes over X in the input dtype; peak HBM "
                f"{'unknown' if peak is None else f'{peak / 1e12:.2f} TB/s'}."]
    return "\n".join(out) + "\n"


def plot(rows, path: Path, dtype: torch.dtype, title: str) -> bool:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = [r for r in rows if r["point"].dtype == dtype and not r["point"].sketched_only
             and (r["point"].l, r["point"].q) == (BASE_L, BASE_Q)]
    shapes = sorted({(r["point"].n, r["point"].d) for r in sweep})
    if not shapes:
        return False
    fig, axes = plt.subplots(1, len(shapes), figsize=(5.5 * len(shapes), 4.5), squeeze=False)
    for ax, (n, d) in zip(axes[0], shapes):
        here = [r for r in sweep if (r["point"].n, r["point"].d) == (n, d)]
        for method in dict.fromkeys(r["method"] for r in here):
            pts = sorted((r["point"].b, r["seconds"] * 1e3 / r["point"].b) for r in here if r["method"] == method)
            ax.plot([b for b, _ in pts], [t for _, t in pts], marker="o", label=method)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size B")
        ax.set_ylabel("ms per image")
        ax.set_title(f"N={n}, D={d}, {SHORT[dtype]}, l={BASE_L}, q={BASE_Q}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("\n".join(textwrap.wrap(title, 200)), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def rows_from_markdown(path: Path):
    """(rows, header lines) read back from a table written by :func:`markdown` (for --replot)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    header = [ln for ln in lines[:12] if ln.startswith("- ")]
    table = [ln for ln in lines if ln.startswith("| ")]
    cols = [c.strip() for c in table[0].strip("|").split("|")]
    dtypes = {v: k for k, v in SHORT.items()}
    rows = []
    for ln in table[1:]:
        cell = dict(zip(cols, (c.strip() for c in ln.strip("|").split("|"))))
        p = Point(int(cell["N"]), int(cell["D"]), int(cell["B"]), dtypes[cell["dtype"]], int(cell["l"]), int(cell["q"]))
        rows.append(dict(point=p, method=cell["method"], seconds=float(cell["ms/call"]) / 1e3))
    return rows, header


def main(argv=None, prog: str = PROG) -> int:
    """Runs the benchmark with the command-line arguments ``argv`` (default sys.argv[1:]); ``prog`` is
    the program name the help shows (``eadaprune bench --`` when run through the console script)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--full", action="store_true",
                    help="the whole grid: N 576/2880, D 1024/4096, B 1-256, 3 dtypes, sketch sweep (GPU default)")
    ap.add_argument("--n", type=int, nargs="+", help="override: token counts N")
    ap.add_argument("--dims", type=int, nargs="+", help="override: feature sizes D")
    ap.add_argument("--batches", type=int, nargs="+", help="override: batch sizes B")
    ap.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), help="override: dtypes")
    ap.add_argument("--sketch-sizes", type=int, nargs="+", help="override: sketch sizes")
    ap.add_argument("--power-iters", type=int, nargs="+", help="override: power iterations")
    ap.add_argument("--methods", nargs="+", help="keep methods whose name contains one of these")
    ap.add_argument("--no-prune", action="store_true", help="time spectral_budget only, not adaptive_prune")
    ap.add_argument("--energy", type=float, default=0.99)
    ap.add_argument("--repeats", type=int, default=5, help="CPU: timed calls after the warm-up")
    ap.add_argument("--max-seconds", type=float, default=10.0, help="CPU: time cap per (point, method)")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice); "
                    "1 avoids OpenMP slow-downs when other jobs share the cores")
    ap.add_argument("--replot", type=Path, help="only redraw the PNG beside this results .md")
    ap.add_argument("--no-plot", action="store_true", help="write the table only (no matplotlib needed)")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--tag", help="output file stem (default speed_<device>_<date>)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    needed = {}
    if args.replot or not args.no_plot:
        needed["matplotlib"] = "matplotlib (the plot)"
    if device.type == "cpu" and not args.replot and (
            not args.methods or any(m in "sklearn.randomized_svd" for m in args.methods)):
        needed["sklearn.utils.extmath"] = "scikit-learn (the sklearn.randomized_svd baseline)"
    missing = missing_packages(needed)
    if missing:
        hint = "" if args.replot or needed.get("matplotlib") not in missing else \
            " (or pass --no-plot to write the table without the plot)"
        print(f"{prog.removesuffix(' --')}: missing {', '.join(missing)}; install the bench extra: "
              f"{BENCH_EXTRA}{hint}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
        try:  # numpy/scipy BLAS used by sklearn: load them first, or their pools are not limited
            import scipy.linalg  # noqa: F401
            import sklearn.utils.extmath  # noqa: F401
            from threadpoolctl import threadpool_limits
            threadpool_limits(args.threads)
        except ImportError:
            pass

    if args.replot:
        rows, header = rows_from_markdown(args.replot)
        dtype = torch.bfloat16 if any("CUDA" in h and "device: CPU" not in h for h in header[2:3]) else torch.float32
        plot(rows, args.replot.with_suffix(".png"), dtype, " | ".join(h.lstrip("- ") for h in header[:3] + header[4:5]))
        print(f"wrote {args.replot.with_suffix('.png')}", file=sys.stderr)
        return 0
    overrides = [args.n, args.dims, args.batches, args.dtypes, args.sketch_sizes, args.power_iters]
    if any(o is not None for o in overrides):
        dts = [DTYPES[d] for d in (args.dtypes or ["float32"])]
        points = [Point(n, d, b, dt, l, q)
                  for n in (args.n or [576]) for d in (args.dims or [1024]) for b in (args.batches or [8])
                  for dt in dts for l in (args.sketch_sizes or [BASE_L]) for q in (args.power_iters or [BASE_Q])]
        notes = ["Custom grid from the command line: " + shlex.join(argv)]
    else:
        points, notes = default_plan(device, args.full)
    methods = all_methods(device, prune=not args.no_prune)
    if args.methods:
        unmatched = [s for s in args.methods if not any(s in m.name for m in methods)]
        if unmatched:
            print(f"{prog.removesuffix(' --')}: --methods: {', '.join(map(repr, unmatched))} matches none of "
                  f"the methods on {device.type}: {', '.join(m.name for m in methods)}", file=sys.stderr)
            return 2
        methods = [m for m in methods if any(s in m.name for s in args.methods)]
    notes.append("Methods: " + ", ".join(m.name for m in methods) + ".")

    load_start, start = load_average(), time.perf_counter()
    rows = run(points, methods, device, args.energy, args.repeats, args.max_seconds,
               log=lambda s: print(s, file=sys.stderr, flush=True))
    header = machine_header(device) + [
        f"- load average (1/5/15 min) at start {load_start}, at end {load_average()}"
        + (" (the CPU is shared with other jobs: CPU times are inflated when the load exceeds the "
           "core count)" if device.type == "cpu" else ""),
        f"- wall time of this run: {time.perf_counter() - start:.0f} s; command (from the repository "
        f"root): `{recorded_command(PROG, argv)}`"]
    text = markdown(rows, header, notes, device, args.energy)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.tag or f"speed_{device.type}_{today()}"
    md_path, png_path = args.out_dir / f"{stem}.md", args.out_dir / f"{stem}.png"
    plot_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    plotted = not args.no_plot and plot(rows, png_path, plot_dtype,
                                        " | ".join(h.lstrip("- ") for h in header[:3] + header[4:5]))
    if plotted:
        text += f"\n![time per image vs batch size]({png_path.name})\n"
    md_path.write_text(text, encoding="utf-8")
    print(text)
    print(f"wrote {md_path}" + (f" and {png_path}" if plotted else " (no plot: --no-plot)" if args.no_plot
                                else " (no plot: no fp32 batch sweep at l=128, q=2 to draw)"), file=sys.stderr)
    return 0


if __name__ == "__main__":
    # `eadaprune bench` runs this module in a child process and names itself through the environment.
    sys.exit(main(prog=os.environ.get("EADAPRUNE_BENCH_PROG", PROG)))
