"""pytest-benchmark microbenchmarks: every method of bench.methods on a few small shapes.

    pytest bench/ --benchmark-only                       # ~1-2 min on the 2-core CPU
    pytest bench/ --benchmark-only -k "D1024 and B8"     # one shape
    pytest bench/ --benchmark-only --benchmark-group-by=param:shape

Each test checks that the budgets are valid (1 <= k <= max_tokens); none asserts a time. The methods
(project backends found at run time by available_backends, torch.linalg, torch.svd_lowrank,
sklearn) are those of ``python -m bench.run_speed``, which writes the committed tables.
"""

from __future__ import annotations

import pytest
import torch

from bench.methods import all_methods
from bench.run_speed import make_tokens

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
SHAPES = [(576, 1024, 1), (576, 1024, 8)] + ([(576, 4096, 64)] if DEVICE.type == "cuda" else [])
DTYPES = [torch.float32] + ([torch.bfloat16] if DEVICE.type == "cuda" else [])
METHODS = all_methods(DEVICE)


def _sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"N{s[0]}-D{s[1]}-B{s[2]}")
@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.name)
def test_budget_speed(benchmark, method, shape, dtype):
    n, d, b = shape
    sketch_size, power_iters, energy = 128, 2, 0.99
    tokens = make_tokens(b, n, d, dtype, DEVICE)
    benchmark.group = f"N{n}-D{d}-B{b}-{str(dtype).removeprefix('torch.')}"
    benchmark.extra_info.update(n=n, d=d, batch=b, sketch_size=sketch_size, power_iters=power_iters)

    def call():
        out = method.run(tokens, sketch_size, power_iters, energy, sketch_size)
        _sync()
        return out

    budgets = benchmark.pedantic(call, rounds=3 if DEVICE.type == "cpu" else 20, warmup_rounds=1)
    assert budgets.shape == (b,)
    assert int(budgets.min()) >= 1 and int(budgets.max()) <= sketch_size
