"""The custom ops: opcheck, and torch.compile(fullgraph=True) through the public functions."""

from __future__ import annotations

import pytest
import torch

from eadaprune_kernels import adaptive_prune, spectral_budget
from eadaprune_kernels.ops import budget_op, prune_op


@pytest.mark.parametrize("with_scores", [False, True])
@pytest.mark.parametrize("with_sketch", [False, True])
def test_prune_op_passes_opcheck(with_scores, with_sketch):
    x = torch.randn(2, 16, 8)
    scores = torch.randn(2, 16) if with_scores else None
    omega = torch.randn(8, 4) if with_sketch else None
    torch.library.opcheck(prune_op, (x, None, scores, omega, 0.9, True, 4, 2, 1, 6, 0, "reference", True))


def test_budget_op_passes_opcheck():
    x = torch.randn(3, 10, 12, dtype=torch.float64)
    torch.library.opcheck(budget_op, (x, None, None, 0.95, False, 5, 1, 2, 5, 7, "reference", False))


def test_empty_batch_through_the_ops():
    torch.library.opcheck(prune_op, (torch.randn(0, 16, 8), None, None, None, 0.9, True, 4, 2, 1, 4, 0, "reference",
                                     True))


def test_torch_compile_fullgraph_traces_adaptive_prune():
    def pipeline(x, scores):
        result = adaptive_prune(x, scores, sketch_size=4, energy=0.9, max_tokens=6)
        budgets = spectral_budget(x, sketch_size=4, energy=0.9, max_tokens=6).budgets
        return result.tokens.sum(-1), result.indices, result.lengths, result.mask, budgets

    x, scores = torch.randn(3, 16, 8), torch.randn(3, 16)
    compiled = torch.compile(pipeline, fullgraph=True, backend="aot_eager")
    for got, expected in zip(compiled(x, scores), pipeline(x, scores)):
        assert torch.equal(got, expected)
    # another batch of the same shape reuses the graph and gives its own answer
    x2 = torch.randn(3, 16, 8)
    for got, expected in zip(compiled(x2, None), pipeline(x2, None)):
        assert torch.equal(got, expected)


def test_torch_compile_keeps_validation():
    x = torch.randn(2, 16, 8)
    x[1, 0, 0] = float("nan")
    compiled = torch.compile(lambda t: adaptive_prune(t, sketch_size=4).lengths, fullgraph=True, backend="aot_eager")
    with pytest.raises(ValueError, match=r"tokens: .*image\(s\) \[1\]"):
        compiled(x)
