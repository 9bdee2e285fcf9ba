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


def ragged_alone_kwargs(n, d, kwargs):
    """(kwargs, l_i, max_i): the arguments that make one image of N = n alone behave as it does inside a
    ragged call with ``kwargs`` (its own l_i and max_i, the first l_i columns of a given sketch)."""
    sketch = kwargs.get("sketch_size", 128)
    l = min(sketch, n, d)
    top = min(kwargs.get("max_tokens") or min(sketch, d), n)
    alone = dict(kwargs, max_tokens=top, min_tokens=min(kwargs.get("min_tokens", 1), top))
    if kwargs.get("sketch_matrix") is not None:
        alone["sketch_matrix"] = kwargs["sketch_matrix"][:, :l]
    return alone, l, top


def assert_ragged_equals_alone(result, images, scores, kwargs, backend, exact=True):
    """Image b of a ragged result is image b run alone with the same seed: shapes, padding and selection
    exactly; the spectrum bit for bit when ``exact``, else to rounding (1e-6 of sigma_1: an image may run
    on one BLAS thread inside the batch and on several alone)."""
    from eadaprune_kernels import adaptive_prune

    d = images[0].shape[1]
    sketch = kwargs.get("sketch_size", 128)
    m = kwargs.get("max_tokens") or min(sketch, d)
    width = min(sketch, d)
    b = len(images)
    assert result.tokens.shape == (b, m, d) and result.indices.shape == (b, m) and result.mask.shape == (b, m)
    assert result.singular_values.shape == (b, width) and result.lengths.shape == (b,)
    assert result.tokens.dtype == images[0].dtype and result.lengths.dtype == torch.int32
    for i, x in enumerate(images):
        alone_kw, l, top = ragged_alone_kwargs(x.shape[0], d, kwargs)
        one = adaptive_prune(x, None if scores is None else scores[i], backend=backend, **alone_kw)
        where = f"image {i} (N_i={x.shape[0]})"
        assert int(result.lengths[i]) == int(one.lengths), f"{where}: {int(result.lengths[i])} vs {int(one.lengths)}"
        assert torch.equal(result.indices[i, :top], one.indices), where
        assert bool((result.indices[i, top:] == -1).all()), where
        assert torch.equal(result.mask[i, :top], one.mask) and not bool(result.mask[i, top:].any()), where
        assert torch.equal(result.tokens[i, :top], one.tokens), where
        assert bool((result.tokens[i, top:] == 0).all()), where
        assert bool(result.saturated[i]) == bool(one.saturated), where
        if exact:
            assert torch.equal(result.singular_values[i, :l], one.singular_values), where
            assert torch.equal(result.total_energy[i], one.total_energy), where
        else:
            scale = one.singular_values.abs().max().clamp_min(1e-30)
            assert_close_verbose(result.singular_values[i, :l] / scale, one.singular_values / scale, atol=1e-6,
                                 rtol=0, what=f"{where}: sigma / sigma_1")
            assert_close_verbose(result.total_energy[i], one.total_energy, atol=0, rtol=1e-6,
                                 what=f"{where}: energy")
        assert bool((result.singular_values[i, l:] == 0).all()), f"{where}: sigma past l_i = {l} must be 0"


def ragged_images(sizes, d, seed, dtype=torch.float32, offset=3.0, device="cpu"):
    """Images [N_i, D] with a decaying spectrum and a dominant mean (no ties in leverage)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, n in enumerate(sizes):
        r = min(n - 1, d)
        if r >= 2:
            family = ("exponential", "power1", "step", "lowrank_noise")[i % 4]
            x = matrix_with_spectrum(spectrum(family, r, g), n, d, g, mean_scale=offset)
        else:
            x = torch.randn(n, d, generator=g, dtype=torch.float64) + offset
        out.append(x.to(dtype).to(device))
    return out


def cu_seqlens_of(sizes, dtype=torch.int64, device="cpu"):
    """cu_seqlens [B + 1] of images with the given token counts: 0, N_0, N_0 + N_1, ..."""
    bounds = [0]
    for n in sizes:
        bounds.append(bounds[-1] + n)
    return torch.tensor(bounds, dtype=dtype, device=device)
