"""Every registered backend against the reference, on the same inputs and the same Gaussian sketch.

A backend that cannot run here (not built, no GPU, no triton) is reported as skipped with the reason.
Shapes are small so that interpreted Triton kernels stay quick on the CPU.
"""

from __future__ import annotations

import pytest
import torch

from eadaprune_kernels import adaptive_prune, gaussian_sketch, spectral_budget

from helpers import SIGMA_TOL, assert_matches_reference, backend_params, check_result_invariants, make_tokens

BACKEND_PARAMS = backend_params()
SHAPES = [(1, 7, 5, 4), (3, 64, 96, 16), (2, 200, 130, 32)]  # (B, N, D, sketch_size)
SHAPE_IDS = [f"B{b}-N{n}-D{d}-l{s}" for b, n, d, s in SHAPES]


def _inputs(b, n, d, dtype, seed, device):
    return make_tokens(b, n, d, "families", dtype=dtype, seed=seed, device=device)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64],
                         ids=lambda t: str(t).removeprefix("torch."))
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("backend,device", BACKEND_PARAMS)
def test_matches_reference_with_scores(backend, device, shape, dtype):
    b, n, d, sketch = shape
    x = _inputs(b, n, d, dtype, seed=n + d, device=device)
    scores = torch.randn(b, n, generator=torch.Generator().manual_seed(1)).to(dtype).to(device)
    kwargs = dict(energy=0.9, sketch_size=sketch, power_iters=2, seed=17, max_tokens=min(n, 2 * sketch))
    got = adaptive_prune(x, scores, backend=backend, **kwargs)
    ref = adaptive_prune(x, scores, backend="reference", **kwargs)
    assert got.backend == backend
    check_result_invariants(got, x, 1, kwargs["max_tokens"])
    assert_matches_reference(got, ref, 0.9, dtype, same_selection=True)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("backend,device", BACKEND_PARAMS)
def test_matches_reference_with_leverage_selection(backend, device, shape):
    b, n, d, sketch = shape
    x = _inputs(b, n, d, torch.float32, seed=3 * n + d, device=device)
    kwargs = dict(energy=0.95, sketch_size=sketch, power_iters=1, seed=5)
    got = adaptive_prune(x, backend=backend, **kwargs)
    ref = adaptive_prune(x, backend="reference", **kwargs)
    assert_matches_reference(got, ref, 0.95)
    l = min(sketch, n, d)
    check_result_invariants(got, x, 1, l)


@pytest.mark.parametrize("backend,device", BACKEND_PARAMS)
def test_budget_only_matches_reference_and_sketch_override(backend, device):
    x = _inputs(3, 64, 96, torch.float32, seed=21, device=device)
    omega = gaussian_sketch(96, 16, seed=99, device=device) * 0.5 + 0.1  # not the generated one
    for kwargs in (dict(seed=4), dict(sketch_matrix=omega), dict(center=False), dict(energy=1.0)):
        got = spectral_budget(x, sketch_size=16, backend=backend, **kwargs)
        ref = spectral_budget(x, sketch_size=16, backend="reference", **kwargs)
        assert got.backend == backend and got.budgets.dtype == torch.int32
        assert_matches_reference(got, ref, kwargs.get("energy", 0.99), sigma_tol=SIGMA_TOL[torch.float32])


@pytest.mark.parametrize("backend,device", BACKEND_PARAMS)
def test_flat_and_nonfinite_images_match_reference(backend, device):
    g = torch.Generator().manual_seed(6)
    x = torch.randn(4, 30, 12, generator=g)
    x[0] = x[0, :1]  # all tokens equal: flat
    x[2, 4, 5] = float("nan")
    x[3, 0, 0] = float("-inf")
    x = x.to(device)
    for scores in (None, torch.randn(4, 30, generator=g).to(device)):
        got = adaptive_prune(x, scores, sketch_size=8, min_tokens=2, max_tokens=10, validate=False, backend=backend)
        ref = adaptive_prune(x, scores, sketch_size=8, min_tokens=2, max_tokens=10, validate=False, backend="reference")
        assert torch.equal(got.lengths.cpu(), ref.lengths.cpu())
        assert torch.equal(got.saturated.cpu(), ref.saturated.cpu())
        assert torch.equal(got.indices.cpu()[[0, 2, 3]], ref.indices.cpu()[[0, 2, 3]])
        assert bool(got.singular_values[[2, 3]].isnan().all()) and bool(got.total_energy[[2, 3]].isnan().all())
        assert float(got.total_energy[0]) == 0.0 and bool((got.singular_values[0] == 0).all())
        assert bool(torch.isfinite(got.singular_values[1]).all())


@pytest.mark.parametrize("backend,device", BACKEND_PARAMS)
def test_single_image_and_empty_batch(backend, device):
    x = torch.randn(20, 9, device=device)
    got = adaptive_prune(x, sketch_size=4, backend=backend)
    ref = adaptive_prune(x, sketch_size=4, backend="reference")
    assert got.tokens.shape == (4, 9) and got.lengths.shape == ()
    assert int(got.lengths) == int(ref.lengths)
    empty = adaptive_prune(torch.randn(0, 20, 9, device=device), sketch_size=4, backend=backend)
    assert empty.tokens.shape == (0, 4, 9) and empty.backend == backend
