"""The one set of test helpers: the input generator, the comparator with its tolerance table, the
padding checker, the ragged checks and the backend parameters. Every suite uses these; a new backend
or dtype is one line in a parametrize list.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
from pathlib import Path

import torch

from eadaprune_kernels import backends
from eadaprune_kernels.contract import ENERGY_SLACK, make_config

FAMILIES = ("exponential", "power0.5", "power1", "power2", "step", "lowrank_noise", "rank1")

# Against the float64 reference on the same inputs and sketch: the largest |sigma - sigma_ref| allowed,
# relative to sigma_1, and the relative error of the total energy, per input dtype.
SIGMA_TOL = {torch.float64: 1e-4, torch.float32: 1e-4, torch.float16: 1e-3, torch.bfloat16: 1e-3}
ENERGY_RTOL = 1e-5
# Budgets may differ where the reference's cumulative energy lies within KNIFE_EDGE * E of the target.
KNIFE_EDGE = 1e-4
FIELDS = ("tokens", "indices", "lengths", "mask", "singular_values", "total_energy", "saturated")


# ---- inputs -----------------------------------------------------------------------------------------


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


def _image(kind: str, i: int, n: int, d: int, g: torch.Generator, *, decay, rate, scale, rank, mean_scale):
    """Image i [n, d] float64 of a batch of ``kind`` (see :func:`make_tokens`)."""
    r = min(n - 1, d)
    if r < 1:
        return torch.randn(n, d, generator=g, dtype=torch.float64) + mean_scale
    if kind == "families":
        s = spectrum(("exponential", "power1", "step", "lowrank_noise")[i % 4] if r >= 4 else "power1", r, g)
    elif kind == "geometric":
        s = decay ** torch.arange(min(rank or r, r), dtype=torch.float64)
    elif kind == "exponential":
        s = torch.exp(-rate * torch.arange(min(rank or r, r), dtype=torch.float64))
    elif kind == "separated":
        s = torch.tensor([8.0, 4.0, 2.0, 1.0, 0.05, 0.04, 0.03, 0.02], dtype=torch.float64)[:r]
    else:
        raise ValueError(f"kind: unknown {kind!r}")
    return matrix_with_spectrum(scale * s, n, d, g, mean_scale=mean_scale)


def make_tokens(batch: int, n: int, d: int, kind: str = "families", *, dtype=torch.float32, seed: int = 0,
                device="cpu", decay: float = 0.6, rate: float = 0.25, scale: float = 1.0, rank: int | None = None,
                mean_scale: float = 3.0) -> torch.Tensor:
    """The input generator: tokens [batch, n, d] whose centred spectrum is known (before rounding to
    ``dtype``), each image with a common mean token of N(0, mean_scale^2) entries:

    * ``"families"``: image i has the spectrum of family ("exponential", "power1", "step",
      "lowrank_noise")[i % 4] (power1 when min(n - 1, d) < 4);
    * ``"geometric"``: sigma_j = scale * decay**j; ``"exponential"``: sigma_j = scale * exp(-rate j)
      (``rank`` values, default min(n - 1, d));
    * ``"separated"``: sigma = 8, 4, 2, 1, 0.05 .. 0.02 (no knife edge at the usual energies);
    * ``"logspace"``: randn * logspace(0, -decay, d) + mean_scale (a smooth geometric decay, no exact
      rank; n may be below d);
    * ``"integer"``: an exact rank-``rank`` (default 5) image of small integers, |x| <= 256 (exact in
      float16 / bfloat16).
    A single token (n = 1) is random.
    """
    g = torch.Generator().manual_seed(seed)
    if kind == "logspace":
        x = torch.randn(batch, n, d, generator=g, dtype=torch.float64)
        x = x * torch.logspace(0, -decay, d, dtype=torch.float64) + mean_scale
    elif kind == "integer":
        k = rank or 5
        u = torch.randint(-3, 4, (batch, n, k), generator=g, dtype=torch.float64)
        v = torch.randint(-3, 4, (batch, k, d), generator=g, dtype=torch.float64)
        x = u @ v + torch.randint(-8, 9, (batch, 1, d), generator=g, dtype=torch.float64)
    else:
        x = torch.stack([_image(kind, i, n, d, g, decay=decay, rate=rate, scale=scale, rank=rank,
                                mean_scale=mean_scale) for i in range(batch)])
    return x.to(dtype).to(device)


def ragged_images(sizes, d, seed, dtype=torch.float32, offset=3.0, device="cpu"):
    """Images [N_i, D] of the "families" kind (image i of family i % 4) with a dominant mean (no ties in
    leverage), for ragged batches."""
    g = torch.Generator().manual_seed(seed)
    return [_image("families", i, n, d, g, decay=0.6, rate=0.25, scale=1.0, rank=None, mean_scale=offset)
            .to(dtype).to(device) for i, n in enumerate(sizes)]


def cu_seqlens_of(sizes, dtype=torch.int64, device="cpu"):
    """cu_seqlens [B + 1] of images with the given token counts: 0, N_0, N_0 + N_1, ..."""
    bounds = [0]
    for n in sizes:
        bounds.append(bounds[-1] + n)
    return torch.tensor(bounds, dtype=dtype, device=device)


# ---- running one backend directly -----------------------------------------------------------------


def config(tokens: torch.Tensor, **kwargs):
    """The checked configuration of dense tokens [B, N, D] (``ragged=True``: packed [T, D]) with the
    public defaults, as the public functions make it."""
    ragged = kwargs.pop("ragged", False)
    args = dict(energy=0.99, center=True, sketch_size=128, power_iters=2, min_tokens=1, max_tokens=None, seed=0,
                sketch_matrix=None)
    args.update(kwargs)
    return make_config(n=None if ragged else tokens.shape[1], d=tokens.shape[-1], device=tokens.device, **args)


def run_backend(name: str, tokens, cfg, scores=None, *, select=True, cu_seqlens=None, budgets=None):
    """The backend ``name``'s entry point, without the public layer's checks (a PruneResult, or a
    BudgetResult when not ``select``)."""
    return backends.run(name, tokens, cu_seqlens, scores, cfg, budgets, select)


# ---- comparisons ---------------------------------------------------------------------------------


def knife_edge(singular_values: torch.Tensor, total_energy: torch.Tensor, energy: float, rtol: float = KNIFE_EDGE):
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


def _on_cpu(result):
    return dataclasses.replace(result, **{
        f.name: getattr(result, f.name).cpu() for f in dataclasses.fields(result)
        if isinstance(getattr(result, f.name), torch.Tensor)})


def _lengths(result) -> torch.Tensor:
    return result.lengths if hasattr(result, "lengths") else result.budgets


def assert_matches_reference(got, ref, energy: float, dtype=torch.float32, *, sigma_tol: float | None = None,
                             same_selection: bool = False) -> torch.Tensor:
    """A backend's result (PruneResult or BudgetResult, any device) against the reference's on the same
    inputs and sketch: singular values within SIGMA_TOL[dtype] (or ``sigma_tol``) of sigma_1, the
    total energy to ENERGY_RTOL, budgets and saturation equal except at knife edges, and with
    ``same_selection`` the kept indices and tokens equal wherever the budgets are. Returns the [B]
    mask of the images off a knife edge."""
    got, ref = _on_cpu(got), _on_cpu(ref)
    tol = SIGMA_TOL[dtype] if sigma_tol is None else sigma_tol
    sigma, ref_sigma = got.singular_values.reshape(-1, got.singular_values.shape[-1]), \
        ref.singular_values.reshape(-1, ref.singular_values.shape[-1])
    scale = ref_sigma.abs().nan_to_num(0.0).amax(1, keepdim=True).clamp_min(1e-30)
    assert_close_verbose(sigma / scale, ref_sigma / scale, atol=tol, rtol=0, what="singular values / sigma_1")
    assert_close_verbose(got.total_energy, ref.total_energy, atol=0, rtol=ENERGY_RTOL, what="total energy")
    edge = knife_edge(ref_sigma.nan_to_num(0.0), ref.total_energy.reshape(-1).nan_to_num(0.0), energy)
    lengths, ref_lengths = _lengths(got).reshape(-1), _lengths(ref).reshape(-1)
    assert bool(((lengths == ref_lengths) | edge).all()), (
        f"budgets differ away from a knife edge: {lengths.tolist()} vs reference {ref_lengths.tolist()}")
    saturated, ref_saturated = got.saturated.reshape(-1), ref.saturated.reshape(-1)
    assert torch.equal(saturated[~edge], ref_saturated[~edge]), (saturated.tolist(), ref_saturated.tolist())
    clear = ~edge & (lengths == ref_lengths)
    if same_selection:
        assert torch.equal(got.indices.reshape(clear.numel(), -1)[clear], ref.indices.reshape(clear.numel(), -1)[clear])
        assert torch.equal(got.tokens.reshape(clear.numel(), *got.tokens.shape[-2:])[clear],
                           ref.tokens.reshape(clear.numel(), *ref.tokens.shape[-2:])[clear])
    return clear


def assert_keeps_top_leverage(got, tokens: torch.Tensor, cfg, images, tol: float = 1e-4) -> None:
    """Leverage selection: for each image in ``images``, the kept tokens are the top-``lengths`` by the
    float64 leverage of the reference's sketched subspace (rank min(k*, l)), up to near-ties within
    ``tol`` of the largest leverage (they may legitimately swap between fp32 and fp64), and the kept
    rows are the input's."""
    from eadaprune_kernels.backends.reference import spectrum as reference_spectrum
    from eadaprune_kernels.contract import budget_from_spectrum

    got = _on_cpu(got)
    tokens = tokens.cpu()
    sigma, energy, flat, u = reference_spectrum(tokens.double(), cfg, want_vectors=True)
    k_star = budget_from_spectrum(sigma, energy, flat, cfg.energy, cfg.min_tokens, cfg.max_tokens)[0]
    for b in images:
        lev = u[b, :, : min(int(k_star[b]), cfg.sketch_size)].square().sum(1)
        k = int(got.lengths[b])
        cut = torch.sort(lev, descending=True).values[k - 1]
        kept = got.indices[b, :k]
        assert bool((lev[kept] >= cut - tol * lev.max()).all()), (b, lev[kept].min().item(), cut.item())
        assert torch.equal(got.tokens[b, :k], tokens[b, kept])


def assert_same_result(a, b, fields=FIELDS) -> None:
    """Two results equal bit for bit, field by field (NaN where the other has NaN)."""
    for field in fields:
        x, y = getattr(a, field).cpu(), getattr(b, field).cpu()
        assert torch.equal(x, y) or (x.is_floating_point() and torch.equal(x.isnan(), y.isnan())
                                     and torch.equal(x.nan_to_num(), y.nan_to_num())), field


def check_result_invariants(result, tokens: torch.Tensor, min_tokens: int, max_tokens: int) -> None:
    """The padding checker: the structural guarantees of a PruneResult for batched tokens [B, N, D]
    (dtypes, shapes, devices, lengths in bounds, mask, -1 / zero padding, ascending indices, the kept
    rows equal to the input rows)."""
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
    result = _on_cpu(result)
    tokens = tokens.cpu()
    lengths = result.lengths.to(torch.int64)
    assert bool(((lengths >= min_tokens) & (lengths <= max_tokens)).all()), lengths
    slots = torch.arange(m)
    assert torch.equal(result.mask, slots[None, :] < lengths[:, None])
    assert bool((result.indices[~result.mask] == -1).all())
    assert bool((result.tokens[~result.mask] == 0).all()) and not bool(result.tokens[~result.mask].isnan().any())
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


# ---- model adapters ------------------------------------------------------------------------------


def pad_token_rows(rows, side: str, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists padded to one batch on ``side`` ("left" or "right"): (input_ids [B, L],
    attention_mask [B, L])."""
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for b, row in enumerate(rows):
        cols = slice(length - len(row), length) if side == "left" else slice(0, len(row))
        ids[b, cols] = torch.tensor(row)
        mask[b, cols] = 1
    return ids, mask


# ---- ragged --------------------------------------------------------------------------------------


def check_ragged_padding(result, images, max_tokens: int, poison: int) -> None:
    """The padding checker of a ragged PruneResult: nothing left unwritten (no NaN, no ``poison``
    integer), mask, -1 / zero padding, every image's length within min(M, N_i), indices within the
    image, the kept rows equal to the image's rows."""
    sizes = torch.tensor([x.shape[0] for x in images])
    r = _on_cpu(result)
    assert not bool(r.tokens.isnan().any()) and not bool(r.singular_values.isnan().any())
    assert not bool(r.total_energy.isnan().any())
    assert not bool((r.indices == poison).any()) and not bool((r.lengths == poison).any())
    slots = torch.arange(max_tokens)
    assert torch.equal(r.mask, slots[None, :] < r.lengths[:, None].to(torch.int64))
    assert bool((r.indices[~r.mask] == -1).all()) and bool((r.tokens[~r.mask] == 0).all())
    assert bool((r.lengths <= sizes.clamp(max=max_tokens)).all()) and bool((r.indices < sizes[:, None]).all())
    for b, x in enumerate(images):
        k = int(r.lengths[b])
        assert torch.equal(r.tokens[b, :k], x.cpu()[r.indices[b, :k]])


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


TOOLS = Path(__file__).resolve().parent.parent / "tools"


def import_tool(name: str):
    """The module tools/<name>.py (the tools are scripts, not a package: imported with tools/ on the
    path for the import only)."""
    sys.path.insert(0, str(TOOLS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(TOOLS))
