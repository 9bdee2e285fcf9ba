"""The ``eadaprune`` console script."""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="eadaprune", description="E-AdaPrune visual-token pruning kernels")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="prune the bundled sample photographs and print each budget")
    demo.add_argument("--energy", type=float, default=0.99, help="energy fraction tau (default 0.99)")
    demo.add_argument("--sketch-size", type=int, default=128, help="sketch columns l (default 128)")
    demo.add_argument("--power-iters", type=int, default=2, help="power iterations q (default 2)")
    demo.add_argument("--backend", default="auto", help="backend name or 'auto' (default)")
    demo.add_argument("--png", default=None, help="also write a picture of the kept patches to this PNG")
    bench = commands.add_parser(
        "bench", help="run the speed (default) or accuracy benchmark of a source checkout (bench/)",
        description="Runs bench/run_speed.py, or bench/run_accuracy.py with --accuracy; every other "
                    "argument is passed on (see `eadaprune bench -- --help`). Needs the source checkout "
                    "the package was installed from (pip install -e) and the 'bench' extra.")
    bench.add_argument("--accuracy", action="store_true", help="run the accuracy report instead of the speed one")
    bench.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the benchmark script")
    args = parser.parse_args(argv)
    if args.command == "bench":
        return _run_bench(args.accuracy, [a for a in args.args if a != "--"])
    if args.command == "demo":
        from .demo import run_demo

        try:
            run_demo(energy=args.energy, sketch_size=args.sketch_size, power_iters=args.power_iters,
                     backend=args.backend, png=args.png)
        except (ValueError, TypeError, ImportError, RuntimeError) as exc:
            print(f"eadaprune demo: {exc}", file=sys.stderr)
            return 2
    return 0


def _run_bench(accuracy: bool, argv: list[str]) -> int:
    """Runs a benchmark script of the checkout this package lives in."""
    import importlib
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    if not (root / "bench" / "run_speed.py").is_file():
        print(f"eadaprune bench: no bench/ folder next to the package at {root}; the benchmarks live in the "
              "source checkout: clone it and install with `pip install --no-build-isolation -e '.[bench]'`",
              file=sys.stderr)
        return 2
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        module = importlib.import_module("bench.run_accuracy" if accuracy else "bench.run_speed")
    except ImportError as exc:
        print(f"eadaprune bench: {exc}; install the extra: pip install 'eadaprune_kernels[bench]'", file=sys.stderr)
        return 2
    return int(module.main(argv) or 0)


if __name__ == "__main__":
    sys.exit(main())
