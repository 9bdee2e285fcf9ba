"""Test helpers: matrices with a chosen spectrum, exact answers, and verbose comparisons."""

from __future__ import annotations

import dataclasses

import torch

from eadaprune_kernels.reference import ENERGY_SLACK

FAMILIES = ("exponential", "power0.5", "power1", "power2", "step", "lowrank_noise", "rank1")


def spectrum(family: str, r: int, generator: torch.Generator) -> torch.Tensor:
    """r singular values (float64, descending, largest 1) of a named family."""
    j = torch.arange(1, r + 1, dtype=torch.float64)
    if family == "exponential":
        rate = 0.05 + 0.3 * torch.rand((), generator=generator, dtype=torch.float64)
        s = torch.exp(-rate * (j - 1))
    elif family.startswith("power"):
        s = j ** -float(family[len("power"):])
    elif family == "step":
        width = int(torch.randint(2, max(3, r // 4), (), generator=generator))
        s = torch.where(j <= width, 1.0, torch.where(j <= 3 * width, 0.1, 0.003))
    elif family == "lowrank_noise":
        rank = int(torch.randint(2, max(3, r // 5), (), generator=generator))
        s = torch.where(j <= rank, 1.0 / j.sqrt(), 1e-3)
    elif family == "rank1":
        s = torch.where(j == 1, 1.0, 0.0)
    else:
        raise ValueError(f"family: unknown {family!r}")
    return s.to(torch.float64)


def _orthonormal_columns(rows: int, cols: int, generator: torch.Generator, avoid_ones: bool) -> torch.Tensor:
    a = torch.randn(rows, cols + int(avoid_ones), generator=generator, dtype=torch.float64)
    if avoid_ones:
        a[:, 0] = 1.0
    q = torch.linalg.qr(a).Q
    return q[:, 1:] if avoid_ones else q


def matrix_with_spectrum(
    s: torch.Tensor, n: int, d: int, generator: torch.Generator, mean_scale: float = 3.0
) -> torch.Tensor:
    """X [n, d] float64 = 1 mu^T + U diag(s) V^T with U orthogonal to the ones vector.

    Centring removes exactly the mean token, so the centred spectrum is s (padded with zeros).
    Needs len(s) <= min(n - 1, d).
    """
    r = s.numel()
    u = _orthonormal_columns(n, r, generator, avoid_ones=True)
    v = _orthonormal_columns(d, r, generator, avoid_ones=False)
    mu = mean_scale * torch.randn(d, generator=generator, dtype=torch.float64)
    return mu[None, :] + (u * s[None, :]) @ v.T


def knife_edge(singular_values: torch.Tensor, total_energy: torch.Tensor, energy: float, rtol: float):
    """[B] bool: images whose cumulative sketched energy lies within rtol * E of the threshold."""
    cum = torch.cumsum(singular_values.to(torch.float64).square(), dim=1)
    target = (energy - ENERGY_SLACK) * total_energy.to(torch.float64)
    return ((cum - target[:, None]).abs() <= rtol * total_energy.to(torch.float64)[:, None]).any(1)


def assert_close_verbose(actual: torch.Tensor, expected: torch.Tensor, *, atol: float, rtol: float, what: str):
    """Like torch.testing.assert_close, naming the first mismatching elements and by how much."""
    actual64, expected64 = actual.to(torch.float64), expected.to(torch.float64)
    bad = ~torch.isclose(actual64, expected64, atol=atol, rtol=rtol, equal_nan=True)
    if bad.any():
        where = bad.nonzero()[:5].tolist()
        lines = [
            f"  at {tuple(i)}: got {actual64[tuple(i)].item():.9g}, expected {expected64[tuple(i)].item():.9g}"
            for i in where
        ]
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.numel()} elements differ (atol={atol}, rtol={rtol}):\n"
            + "\n".join(lines)
        )


def check_result_invariants(result, tokens: torch.Tensor, min_tokens: int, max_tokens: int) -> None:
    """The structural guarantees of a PruneResult for batched tokens [B, N, D]."""
    b, n, d = tokens.shape
    m = max_tokens
    assert result.tokens.shape == (b, m, d) and result.tokens.dtype == tokens.dtype
    assert result.indices.shape == (b, m) and result.indices.dtype == torch.int64
    assert result.lengths.shape == (b,) and result.lengths.dtype == torch.int32
    assert result.mask.shape == (b, m) and result.mask.dtype == torch.bool
    assert result.total_energy.dtype == torch.float32 and result.saturated.dtype == torch.bool
    assert result.singular_values.dtype == torch.float32
    for t in (result.tokens, result.indices, result.lengths, result.mask, result.singular_values):
        assert t.device == tokens.device
    result = dataclasses.replace(result, **{
        f.name: getattr(result, f.name).cpu() for f in dataclasses.fields(result)
        if isinstance(getattr(result, f.name), torch.Tensor)})
    tokens = tokens.cpu()
    lengths = result.lengths.to(torch.int64)
    assert bool(((lengths >= min_tokens) & (lengths <= max_tokens)).all()), lengths
    slots = torch.arange(m)
    assert torch.equal(result.mask, slots[None, :] < lengths[:, None])
    assert bool((result.indices[~result.mask] == -1).all())
    assert bool((result.tokens[~result.mask] == 0).all())
    for i in range(b):
        kept = result.indices[i, : lengths[i]]
        assert bool((kept >= 0).all()) and bool((kept < n).all())
        assert bool((kept[1:] > kept[:-1]).all()), f"image {i}: indices not strictly ascending: {kept}"
        assert torch.equal(result.tokens[i, : lengths[i]], tokens[i, kept])


def backend_params(include_reference: bool = False):
    """pytest params (backend, device) for every registered backend on every device here.

    A backend that cannot run (not built, no GPU, no triton) is kept as a skipped param whose reason
    says why, so the test report shows what was not covered.
    """
    import pytest

    from eadaprune_kernels.backends import BACKENDS, BackendUnavailable, resolve_backend

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    params = []
    for device in devices:
        for name in sorted(BACKENDS):
            if name == "reference" and not include_reference:
                continue
            marks = []
            try:
                resolve_backend(name, torch.device(device))
            except BackendUnavailable as exc:
                marks.append(pytest.mark.skip(reason=str(exc)))
            params.append(pytest.param(name, device, id=f"{name}-{device}", marks=marks))
    if not params:
        params.append(pytest.param(None, "cpu", id="no-other-backend",
                                   marks=pytest.mark.skip(reason="only the reference backend is registered")))
    return params
