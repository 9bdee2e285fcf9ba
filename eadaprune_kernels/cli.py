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
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import run_demo

        try:
            run_demo(energy=args.energy, sketch_size=args.sketch_size, power_iters=args.power_iters,
                     backend=args.backend, png=args.png)
        except (ValueError, TypeError, ImportError, RuntimeError) as exc:
            print(f"eadaprune demo: {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
