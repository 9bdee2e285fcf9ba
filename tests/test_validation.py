"""Every argument check: the right exception type, naming the argument, the expected and the given."""

from __future__ import annotations

import pytest
import torch

from eadaprune_kernels import adaptive_prune, randomized_svdvals, spectral_budget
from eadaprune_kernels.backends import BackendUnavailable

from helpers import backend_params

X = torch.randn(2, 12, 8)

CASES = [
    # (id, call kwargs, exception, regex that must appear in the message)
    ("tokens-not-tensor", dict(tokens=[[1.0]]), TypeError, r"tokens: expected a torch.Tensor.*got list"),
    ("tokens-rank1", dict(tokens=torch.randn(5)), ValueError, r"tokens: expected rank 3.*shape \(5,\)"),
    ("tokens-rank4", dict(tokens=torch.randn(1, 2, 3, 4)), ValueError, r"tokens: expected rank 3.*\(1, 2, 3, 4\)"),
    ("tokens-int", dict(tokens=torch.ones(2, 3, 4, dtype=torch.int32)), TypeError, r"tokens: .*got torch.int32"),
    ("tokens-bool", dict(tokens=torch.ones(2, 3, 4, dtype=torch.bool)), TypeError, r"tokens: .*got torch.bool"),
    ("tokens-complex", dict(tokens=torch.ones(2, 3, 4, dtype=torch.complex64)), TypeError, r"tokens: .*complex64"),
    ("tokens-N0", dict(tokens=torch.randn(2, 0, 4)), ValueError, r"tokens: expected N >= 1.*\(2, 0, 4\)"),
    ("tokens-D0", dict(tokens=torch.randn(2, 3, 0)), ValueError, r"tokens: expected N >= 1.*\(2, 3, 0\)"),
    ("energy-zero", dict(energy=0.0), ValueError, r"energy: expected a float in \(0, 1\], got 0.0"),
    ("energy-above-one", dict(energy=1.5), ValueError, r"energy: .*got 1.5"),
    ("energy-nan", dict(energy=float("nan")), ValueError, r"energy: .*got nan"),
    ("energy-str", dict(energy="0.9"), TypeError, r"energy: .*got str"),
    ("energy-tensor", dict(energy=torch.tensor(0.9)), TypeError, r"energy: .*got Tensor"),
    ("center-int", dict(center=1), TypeError, r"center: expected a bool, got int"),
    ("sketch-size-zero", dict(sketch_size=0), ValueError, r"sketch_size: expected an int >= 1, got 0"),
    ("sketch-size-float", dict(sketch_size=8.0), TypeError, r"sketch_size: expected an int, got float"),
    ("power-iters-negative", dict(power_iters=-1), ValueError, r"power_iters: expected an int >= 0, got -1"),
    ("min-tokens-zero", dict(min_tokens=0), ValueError, r"min_tokens: expected an int >= 1, got 0"),
    ("min-above-max", dict(min_tokens=5, max_tokens=4), ValueError, r"min_tokens: expected at most max_tokens = 4, got 5"),
    ("min-above-default-max", dict(min_tokens=9), ValueError, r"min_tokens: expected at most max_tokens = 8, got 9"),
    ("max-tokens-above-N", dict(max_tokens=13), ValueError, r"max_tokens: expected at most N = 12.*got 13"),
    ("max-tokens-zero", dict(max_tokens=0), ValueError, r"max_tokens: expected an int >= 1, got 0"),
    ("seed-negative", dict(seed=-1), ValueError, r"seed: expected an int >= 0, got -1"),
    ("seed-too-large", dict(seed=2**63), ValueError, r"seed: expected an int in \[0, 2\*\*63 - 1\]"),
    ("sketch-matrix-shape", dict(sketch_matrix=torch.randn(8, 5)), ValueError,
     r"sketch_matrix: expected shape \(8, 8\).*got tensor of shape \(8, 5\)"),
    ("sketch-matrix-dtype", dict(sketch_matrix=torch.ones(8, 8, dtype=torch.int64)), TypeError,
     r"sketch_matrix: expected a floating dtype, got torch.int64"),
    ("sketch-matrix-type", dict(sketch_matrix="omega"), TypeError, r"sketch_matrix: .*got str"),
    ("sketch-matrix-nonfinite", dict(sketch_matrix=torch.full((8, 8), float("nan"))), ValueError,
     r"sketch_matrix: expected finite values"),
    ("backend-unknown", dict(backend="magic"), ValueError, r"backend: expected 'auto' or one of .*got 'magic'"),
    ("backend-type", dict(backend=3), TypeError, r"backend: expected a str, got int"),
    ("validate-type", dict(validate="yes"), TypeError, r"validate: expected a bool, got str"),
]

SCORE_CASES = [
    ("scores-shape", torch.randn(2, 11), ValueError, r"scores: expected shape \(2, 12\).*\(2, 11\)"),
    ("scores-rank", torch.randn(24), ValueError, r"scores: expected shape \(2, 12\)"),
    ("scores-int", torch.ones(2, 12, dtype=torch.int64), TypeError, r"scores: expected a floating dtype, got torch.int64"),
    ("scores-type", [0.0] * 24, TypeError, r"scores: expected a torch.Tensor or None, got list"),
    ("scores-device", torch.randn(2, 12, device="meta"), ValueError, r"scores: expected device cpu.*got meta"),
]


@pytest.mark.parametrize("backend,device", backend_params(include_reference=True))
@pytest.mark.parametrize("case_id,kwargs,exc,pattern", CASES, ids=[c[0] for c in CASES])
def test_adaptive_prune_rejects_bad_arguments(case_id, kwargs, exc, pattern, backend, device):
    """Every row of the bad-input table, on every backend (the same type and wording everywhere)."""
    kwargs = dict(kwargs)
    kwargs.setdefault("backend", backend)
    tokens = kwargs.pop("tokens", X)
    with pytest.raises(exc, match=pattern):
        adaptive_prune(tokens, **kwargs)


@pytest.mark.parametrize("case_id,kwargs,exc,pattern", CASES, ids=[c[0] for c in CASES])
def test_spectral_budget_rejects_bad_arguments(case_id, kwargs, exc, pattern):
    kwargs = dict(kwargs)
    tokens = kwargs.pop("tokens", X)
    with pytest.raises(exc, match=pattern):
        spectral_budget(tokens, **kwargs)


@pytest.mark.parametrize("backend,device", backend_params(include_reference=True))
@pytest.mark.parametrize("case_id,scores,exc,pattern", SCORE_CASES, ids=[c[0] for c in SCORE_CASES])
def test_adaptive_prune_rejects_bad_scores(case_id, scores, exc, pattern, backend, device):
    with pytest.raises(exc, match=pattern):
        adaptive_prune(X, scores, backend=backend)


def test_randomized_svdvals_checks_its_arguments():
    with pytest.raises(ValueError, match="power_iters"):
        randomized_svdvals(X, power_iters=-2)
    with pytest.raises(TypeError, match="tokens"):
        randomized_svdvals(X.to(torch.int8))


def test_sketch_matrix_must_match_the_resolved_sketch_size():
    # l = min(sketch_size, N, D): a sketch sized for sketch_size alone is rejected with the expected shape
    with pytest.raises(ValueError, match=r"sketch_matrix: expected shape \(8, 8\)"):
        adaptive_prune(X, sketch_size=128, sketch_matrix=torch.randn(8, 128))
    assert adaptive_prune(X, sketch_matrix=torch.randn(8, 8)).singular_values.shape == (2, 8)


def test_named_backend_on_unsupported_device_raises_runtime_error():
    with pytest.raises(BackendUnavailable, match="backend 'reference'.*meta"):
        adaptive_prune(torch.randn(1, 4, 4, device="meta"), backend="reference")
    assert issubclass(BackendUnavailable, RuntimeError)


def test_environment_variable_forces_the_auto_backend(monkeypatch):
    monkeypatch.setenv("EADAPRUNE_BACKEND", "nonexistent")
    with pytest.raises(ValueError, match=r"backend \(from \$EADAPRUNE_BACKEND\)"):
        adaptive_prune(X)
    # an explicit backend argument wins over the variable
    assert adaptive_prune(X, backend="reference").backend == "reference"
    monkeypatch.setenv("EADAPRUNE_BACKEND", "reference")
    assert adaptive_prune(X).backend == "reference"
