"""Peak memory of one large call per CPU backend: B=4, N=2880 (LLaVA-NeXT), D=4096, float32.

Each backend runs in its own subprocess so that its peak resident set size (ru_maxrss) is its own;
the table also gives the input size and the wall time of the call. Writes
bench/results/memory_cpu_<date>.md.

    python bench/bench_memory.py [--batch 4 --tokens 2880 --features 4096]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, resource, sys, time, torch
sys.path.insert(0, {root!r})
from eadaprune_kernels import adaptive_prune
b, n, d, backend = {b}, {n}, {d}, {backend!r}
g = torch.Generator().manual_seed(0)
# built image by image so that making the input does not set the high-water mark of the process
basis = torch.randn(64, d, generator=g)
x = torch.empty(b, n, d)
for i in range(b):
    torch.matmul(torch.randn(n, 64, generator=g), basis, out=x[i])
    x[i].add_(torch.randn(n, d, generator=g), alpha=0.05)
del basis
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
r = adaptive_prune(x, backend=backend, max_tokens=n)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps(dict(backend=r.backend, seconds=seconds, before_kib=base, peak_kib=peak,
                      budgets=r.lengths.tolist(), saturated=r.saturated.tolist())))
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=2880)
    ap.add_argument("--features", type=int, default=4096)
    ap.add_argument("--backends", nargs="+", default=None, help="default: every available CPU backend")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import torch

    from eadaprune_kernels import available_backends

    backends = args.backends or available_backends("cpu")
    b, n, d = args.batch, args.tokens, args.features
    input_mib = b * n * d * 4 / 2**20
    rows = []
    for backend in backends:
        code = CHILD.format(root=str(ROOT), b=b, n=n, d=d, backend=backend)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
        if out.returncode != 0:
            print(out.stderr, file=sys.stderr)
            raise SystemExit(f"backend {backend} failed (exit {out.returncode})")
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{backend}: {row['seconds']:.2f} s, peak RSS {row['peak_kib'] / 1024:.0f} MiB "
              f"(before the call {row['before_kib'] / 1024:.0f} MiB), budgets {row['budgets']}")
    date = datetime.date.today().isoformat()
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    lines = [
        f"# Peak memory: one adaptive_prune call, B={b}, N={n}, D={d}, float32",
        "",
        f"- date: {date}; machine: {cpu}, {torch.get_num_threads()} torch threads; torch {torch.__version__}",
        f"- command: `python bench/bench_memory.py --batch {b} --tokens {n} --features {d}`",
        f"- input: {input_mib:.0f} MiB (rank-64 signal + 5% noise, max_tokens=N, other arguments default);"
        " each backend runs in its own process: peak RSS includes the Python interpreter, torch and the input;"
        " 'peak - before' is what the call added to the high-water mark",
        "",
        "| backend | wall s | RSS before the call (MiB) | peak RSS (MiB) | peak - before (MiB) | budgets |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        lines.append(f"| {row['backend']} | {row['seconds']:.2f} | {row['before_kib'] / 1024:.0f} | "
                     f"{row['peak_kib'] / 1024:.0f} | {(row['peak_kib'] - row['before_kib']) / 1024:.0f} | "
                     f"{row['budgets']} |")
    path = ROOT / "bench" / "results" / f"memory_cpu_{date}.md"
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
