"""The ``eadaprune`` console script: ``eadaprune demo``, ``eadaprune bench``, ``eadaprune --version``."""

from __future__ import annotations

import argparse
import platform
import sys


class _VersionAction(argparse.Action):
    """``--version``: the package, torch and Python versions (torch is imported only when asked)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        import torch

        from . import __version__

        print(f"eadaprune_kernels {__version__} (torch {torch.__version__}, Python {platform.python_version()})")
        parser.exit()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="eadaprune", description="E-AdaPrune visual-token pruning kernels")
    parser.add_argument("--version", action=_VersionAction, help="print the versions and exit")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="prune the bundled sample photographs and print each budget",
        description="Prunes scikit-image's sample photographs (576 patch tokens each) and prints each "
                    "one's budget. Needs the 'demo' extra.")
    demo.add_argument("--energy", type=float, default=0.99, help="energy fraction in (0, 1] (default 0.99)")
    demo.add_argument("--sketch-size", type=int, default=128,
                      help="sketch columns l (default 128); raise it when a budget saturates")
    demo.add_argument("--power-iters", type=int, default=2, help="power iterations q (default 2)")
    demo.add_argument("--backend", default="auto", help="backend name or 'auto' (default)")
    demo.add_argument("--png", default=None, help="also write a picture of the kept patches to this PNG")
    bench = commands.add_parser(
        "bench", help="run the speed (default) or accuracy benchmark of a source checkout (bench/)",
        description="Runs the speed benchmark (python -m bench.run_speed), or the accuracy report "
                    "(python -m bench.run_accuracy) with --accuracy; every other argument goes to it, "
                    "with or without a -- before it (`eadaprune bench -- --help` and "
                    "`eadaprune bench --accuracy -- --help` list them). "
                    "Needs the source checkout the package was installed from (pip install -e) and the "
                    "'bench' extra; it says what is missing before it starts.")
    bench.add_argument("--accuracy", action="store_true", help="run the accuracy report instead of the speed one")
    bench.add_argument("args", nargs=argparse.REMAINDER,
                       help="arguments for the benchmark script (e.g. --full), optionally after --")
    args = parser.parse_args(_bench_arguments_after_separator(sys.argv[1:] if argv is None else list(argv)))
    if args.command == "bench":
        passed_on = args.args[1:] if args.args[:1] == ["--"] else args.args
        return _run_bench(args.accuracy, passed_on)
    if args.command == "demo":
        from .demo import run_demo

        try:
            run_demo(energy=args.energy, sketch_size=args.sketch_size, power_iters=args.power_iters,
                     backend=args.backend, png=args.png)
        except (ValueError, TypeError, ImportError, RuntimeError) as exc:
            print(f"eadaprune demo: {exc}", file=sys.stderr)
            return 2
    return 0


def _bench_arguments_after_separator(argv: list[str]) -> list[str]:
    """``bench`` owns only --accuracy and -h/--help: move every other argument before the first -- after
    it, so that ``eadaprune bench --full`` means ``eadaprune bench -- --full`` (argparse would reject
    an option it does not know, and REMAINDER alone does not start at an option)."""
    if argv[:1] != ["bench"]:
        return argv
    rest = argv[1:]
    split = rest.index("--") if "--" in rest else len(rest)
    own = [a for a in rest[:split] if a in ("--accuracy", "-h", "--help")]
    passed_on = [a for a in rest[:split] if a not in own] + rest[split + 1:]
    return ["bench", *own, "--", *passed_on]


def _run_bench(accuracy: bool, argv: list[str]) -> int:
    """Runs a benchmark script of the source checkout this package was installed from, in a child
    process (the checkout's root on its PYTHONPATH; this process's sys.path is left alone)."""
    import os
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    module = "bench.run_accuracy" if accuracy else "bench.run_speed"
    if not (root / "bench" / f"{module.split('.')[1]}.py").is_file():
        print(f"eadaprune bench: the benchmarks live in the source checkout, and there is no bench/ folder next to "
              f"the installed package ({root}); clone the repository and install it with "
              "`pip install --no-build-isolation -e '.[bench]'`", file=sys.stderr)
        return 2
    env = dict(os.environ, EADAPRUNE_BENCH_PROG="eadaprune bench --accuracy --" if accuracy else "eadaprune bench --")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    return subprocess.call([sys.executable, "-m", module, *argv], env=env)


if __name__ == "__main__":
    sys.exit(main())
