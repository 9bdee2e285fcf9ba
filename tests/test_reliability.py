"""Reliability on every backend: strided inputs, numerical extremes, determinism, threads, memory."""

from __future__ import annotations

import gc
import resource
import threading

import pytest
import torch

from eadaprune_kernels import adaptive_prune, spectral_budget

from helpers import assert_same_result, backend_params, check_result_invariants, make_tokens

BACKENDS = backend_params(include_reference=True)


def _spectral_input(b, n, d, seed, dtype=torch.float32):
    """Well-separated spectra (no knife edges at the energies used below)."""
    return make_tokens(b, n, d, "separated", seed=seed, dtype=dtype)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_strided_views_give_the_contiguous_result(backend, device):
    x = _spectral_input(3, 40, 24, seed=1).to(device)
    scores = torch.randn(3, 40).to(device)
    transposed = x.transpose(1, 2).contiguous().transpose(1, 2)  # same values, column-major strides
    wide = torch.zeros(3, 80, 48, device=device)
    wide[:, ::2, ::2] = x
    sliced = wide[:, ::2, ::2]  # non-unit strides in N and D
    strided_scores = torch.stack([scores, scores], -1)[..., 0]
    for kwargs in (dict(), dict(scores=scores), dict(scores=strided_scores)):
        expected = adaptive_prune(x, sketch_size=8, backend=backend, **kwargs)
        for view in (transposed, sliced):
            assert not view.is_contiguous()
            assert_same_result(adaptive_prune(view, sketch_size=8, backend=backend, **kwargs), expected)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_numerical_extremes_give_defined_results(backend, device):
    g = torch.Generator().manual_seed(2)
    base = torch.randn(30, 12, generator=g)
    cases = {
        "one-distinct-token": torch.cat([base[:1].expand(29, 12), base[1:2]]),
        "exact-rank-2": torch.randn(30, 2, generator=g) @ torch.randn(2, 12, generator=g),
        "duplicated-tokens": base[torch.arange(30) % 3],
        "dominant-mean": 1e3 + 1e-1 * base,
        "rank-below-l": torch.randn(30, 3, generator=g) @ torch.randn(3, 12, generator=g) + 5.0,
    }
    for name, image in cases.items():
        result = adaptive_prune(image[None].to(device), sketch_size=10, backend=backend, validate=False)
        for field in ("tokens", "singular_values", "total_energy"):
            assert bool(torch.isfinite(getattr(result, field)).all()), (name, field)
        check_result_invariants(result, image[None].to(device), 1, 10)
    assert int(adaptive_prune(cases["one-distinct-token"][None].to(device), sketch_size=10, energy=1.0,
                              backend=backend).lengths[0]) == 1
    assert int(adaptive_prune(cases["exact-rank-2"][None].to(device), sketch_size=10, energy=1.0, center=False,
                              backend=backend).lengths[0]) == 2
    for shape in ((1, 1, 1), (2, 1, 7), (2, 9, 1)):  # N = 1, D = 1
        x = torch.randn(*shape, generator=g).to(device)
        result = adaptive_prune(x, backend=backend)
        assert result.tokens.shape == (shape[0], 1, shape[2])
        assert bool(torch.isfinite(result.singular_values).all()) and result.lengths.tolist() == [1] * shape[0]


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("scale", [1e-20, 1e-10, 3.7, 1e10, 1e20])
def test_budgets_are_scale_invariant_in_float32(backend, device, scale):
    x = _spectral_input(2, 50, 30, seed=3).to(device)
    for energy in (0.9, 0.999):
        base = spectral_budget(x, sketch_size=12, energy=energy, backend=backend)
        scaled = spectral_budget(x * scale, sketch_size=12, energy=energy, backend=backend)
        assert torch.equal(scaled.budgets.cpu(), base.budgets.cpu()), (energy, scaled.budgets, base.budgets)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_budgets_are_scale_invariant_across_the_float16_range(backend, device):
    x = _spectral_input(2, 50, 30, seed=4)
    x = x / x.abs().amax()  # largest magnitude 1
    base = spectral_budget(x.half().to(device), sketch_size=12, energy=0.95, backend=backend)
    for exponent in (-12, -6, 6, 15):  # the scaled input stays exactly representable: subnormals excluded
        scaled = (x * 2.0 ** exponent).half().to(device)
        if exponent == -12:
            scaled = torch.where(scaled.abs() < 2.0 ** -14, 0.0, scaled)  # avoid subnormal rounding
            base_cmp = spectral_budget((scaled.float() * 2.0 ** 12).half(), sketch_size=12, energy=0.95,
                                       backend=backend)
        else:
            base_cmp = base
        got = spectral_budget(scaled, sketch_size=12, energy=0.95, backend=backend)
        assert torch.equal(got.budgets.cpu(), base_cmp.budgets.cpu()), exponent


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_bitwise_deterministic_and_thread_safe(backend, device):
    x = _spectral_input(4, 40, 20, seed=5).to(device) + 0.3 * torch.randn(4, 40, 20).to(device)
    serial = [adaptive_prune(x[i:i + 2], sketch_size=8, seed=9, backend=backend) for i in range(3)]
    again = [adaptive_prune(x[i:i + 2], sketch_size=8, seed=9, backend=backend) for i in range(3)]
    for a, b in zip(serial, again):
        assert_same_result(a, b)
    results, errors = {}, []

    def work(t):
        try:
            results[t] = adaptive_prune(x[t % 3:t % 3 + 2], sketch_size=8, seed=9, backend=backend)
        except Exception as exc:  # reported below; a thread cannot raise into pytest
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for t, result in results.items():
        assert_same_result(result, serial[t % 3])


@pytest.mark.parametrize("backend,device", [p for p in BACKENDS if p.values[1] == "cpu"])
def test_ten_thousand_calls_do_not_grow_memory(backend, device):
    if backend == "triton":
        pytest.skip("interpreted Triton on the CPU is too slow for 10,000 calls; run this on a GPU")
    x = torch.randn(1, 8, 6)

    def calls(count):
        for _ in range(count):
            adaptive_prune(x, sketch_size=4, power_iters=1, backend=backend, validate=False)
        gc.collect()
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux

    calls(1000)  # warm-up: allocator pools and caches settle
    before = calls(1)
    after = calls(10_000)
    assert after - before < 8 * 1024, f"peak RSS grew by {(after - before) / 1024:.1f} MiB over 10,000 calls"
