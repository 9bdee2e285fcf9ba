"""The pure-PyTorch reference backend: the definition of what every backend computes.

Per image X (N x D), in float64 whatever the input dtype (E-AdaPrune, He & Chen, arXiv 2603.05950;
randomized range finder with subspace iteration, Halko-Martinsson-Tropp 2011, Alg. 4.4):

1. X is scaled by a power of two so its largest magnitude lies in [1, 2): exact, and it makes every
   result below scale-invariant (no overflow of ||X||^2 for large inputs). Results are scaled back.
2. X_c = X - 1 mu^T with mu the mean token when ``center``, else X_c = X.
3. E = ||X_c||_F^2, exact. An image with E <= FLAT_RTOL * ||X||_F^2 is *flat* (its tokens are all
   equal to within float32 rounding): E and its spectrum are reported as 0 and budget = min_tokens.
4. l = min(sketch_size, N, D); Omega = gaussian_sketch(D, l, seed) (or ``sketch_matrix``).
5. Q = orth(X_c Omega); then ``power_iters`` times: W = orth(X_c^T Q), Q = orth(X_c W)
   (re-orthonormalised after every product; orth = Householder QR).
6. sigma = singular values of Q^T X_c (l of them, descending) with left singular vectors W_B;
   U = Q W_B estimates the top-l left singular vectors of X_c.
7. k* = smallest j with cumsum(sigma^2)_j >= (energy - ENERGY_SLACK) * E. If none, the image is
   saturated and k* = max_tokens. budget = clamp(k*, min_tokens, max_tokens).
8. Selection scores: ``scores`` if given, else the rank-r leverage sum_{j<r} U_ij^2 with
   r = min(k*, l) (0 for a flat image). The ``budget`` highest are kept, ties to the lower index.
9. The kept rows of the original tokens (input dtype), ascending, padded with zeros to max_tokens.

Under validate=False an image holding NaN/Inf (in tokens or scores) is computed as zeros and then
reported saturated with NaN spectrum and energy, keeping its first max_tokens tokens.

Ragged input (packed tokens [T, D], image b = rows cu_seqlens[b]:cu_seqlens[b + 1]) is *defined* as
running each image alone with its own N_i: l_i = min(L, N_i) with L = min(sketch_size, D) (the first
l_i columns of the same Omega), max_i = min(M, N_i), min_i = min(min_tokens, max_i). The results
are then laid out with the batch-wide widths: singular_values [B, L] (0 past l_i), tokens [B, M, D],
indices [B, M] relative to the image's start (-1 past the budget). The ragged functions below are
that loop: they read cu_seqlens to the host (one synchronisation for a GPU cu_seqlens, which is
then always checked); the reference is the definition, not the fast path.
"""

from __future__ import annotations

import torch

from dataclasses import replace

from ._validation import PipelineConfig, check_tokens, image_bounds, make_config, nonfinite_images
from .results import BudgetResult, PruneResult
from .sketch import gaussian_sketch

__all__ = ["NAME", "SUPPORTS_RAGGED", "ENERGY_SLACK", "FLAT_RTOL", "adaptive_prune", "spectral_budget",
           "adaptive_prune_ragged", "spectral_budget_ragged", "image_config", "exact_svdvals", "exact_budget",
           "budget_from_spectrum"]

NAME = "reference"
SUPPORTS_RAGGED = True

# The threshold is (energy - ENERGY_SLACK) * E, so that energy=1.0 returns the numerical rank when
# the sketch spans the range (cumsum(sigma^2) then equals E up to rounding, which may fall short).
ENERGY_SLACK = 1e-6
# Centred energy at or below this fraction of the raw energy ||X||_F^2 (variation below ~1e-5 of the
# token magnitude) cannot be told apart from float32 rounding of the mean: the image is flat.
FLAT_RTOL = 1e-10


def _power_of_two_scale(x: torch.Tensor) -> torch.Tensor:
    """[B] float64 power of two s with max|x_b| / s in [1, 2) (1 for an all-zero image)."""
    amax = x.abs().flatten(1).amax(1)
    safe = torch.where(amax > 0, amax, torch.ones_like(amax))
    return torch.exp2(torch.floor(torch.log2(safe)))


def budget_from_spectrum(
    singular_values: torch.Tensor,
    total_energy: torch.Tensor,
    flat: torch.Tensor,
    cfg: PipelineConfig,
    min_tokens: int | torch.Tensor | None = None,
    max_tokens: int | torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Steps 7 of the pipeline: (k_star [B] int64, budgets [B] int64, saturated [B] bool).

    ``min_tokens`` / ``max_tokens`` (an int or [B] per-image bounds, e.g. min_i / max_i of a ragged
    batch) replace cfg's bounds when given.
    """
    cumulative = torch.cumsum(singular_values.square(), dim=1)
    target = (cfg.energy - ENERGY_SLACK) * total_energy
    reached = cumulative >= target[:, None]
    saturated = ~reached[:, -1] & ~flat
    first = torch.argmax(reached.to(torch.int8), dim=1) + 1
    low = torch.as_tensor(cfg.min_tokens if min_tokens is None else min_tokens, device=first.device).expand_as(first)
    high = torch.as_tensor(cfg.max_tokens if max_tokens is None else max_tokens, device=first.device).expand_as(first)
    k_star = torch.where(saturated, high, first)
    k_star = torch.where(flat, low, k_star)
    budgets = torch.maximum(torch.minimum(k_star, high), low)
    return k_star, budgets, saturated


def _spectrum(x: torch.Tensor, cfg: PipelineConfig, want_vectors: bool):
    """Steps 1-6 on finite float64 tokens [B, N, D].

    Returns (sigma [B, l], E [B], flat [B], U [B, N, l] or None), in the input's scale.
    """
    scale = _power_of_two_scale(x)
    x = x / scale[:, None, None]
    raw_energy = x.square().sum((1, 2))
    xc = x - x.mean(1, keepdim=True) if cfg.center else x
    energy = xc.square().sum((1, 2))
    flat = energy <= FLAT_RTOL * raw_energy

    d, l = x.shape[2], cfg.sketch_size
    if cfg.sketch_matrix is not None:
        omega = cfg.sketch_matrix.to(device=x.device, dtype=torch.float64)
    else:
        omega = gaussian_sketch(d, l, cfg.seed, device=x.device, dtype=torch.float64)
    q = torch.linalg.qr(xc @ omega).Q  # [B, N, l]
    for _ in range(cfg.power_iters):
        w = torch.linalg.qr(xc.mT @ q).Q  # [B, D, l]
        q = torch.linalg.qr(xc @ w).Q  # [B, N, l]
    small = q.mT @ xc  # [B, l, D]
    if want_vectors:
        w_small, sigma, _ = torch.linalg.svd(small, full_matrices=False)
        u = q @ w_small  # [B, N, l]
    else:
        sigma, u = torch.linalg.svdvals(small), None

    keep = ~flat
    sigma = sigma * keep[:, None] * scale[:, None]
    energy = energy * keep * scale.square()
    return sigma, energy, flat, u


def _finite_float64(tokens: torch.Tensor, scores: torch.Tensor | None):
    """Tokens as float64 with non-finite images zeroed, and the [B] mask of those images."""
    bad = nonfinite_images(tokens, scores)
    x = tokens.to(torch.float64)
    x = torch.where(bad[:, None, None], torch.zeros((), dtype=x.dtype, device=x.device), x)
    return x, bad


def _report_nonfinite(sigma, energy, saturated, budgets, bad, cfg):
    nan = torch.tensor(float("nan"), dtype=sigma.dtype, device=sigma.device)
    sigma = torch.where(bad[:, None], nan, sigma)
    energy = torch.where(bad, nan, energy)
    saturated = saturated | bad
    budgets = torch.where(bad, torch.full_like(budgets, cfg.max_tokens), budgets)
    return sigma, energy, saturated, budgets


def spectral_budget(tokens: torch.Tensor, cfg: PipelineConfig) -> BudgetResult:
    """Budgets for checked tokens [B, N, D]; see the module docstring."""
    x, bad = _finite_float64(tokens, None)
    sigma, energy, flat, _ = _spectrum(x, cfg, want_vectors=False)
    _, budgets, saturated = budget_from_spectrum(sigma, energy, flat, cfg)
    sigma, energy, saturated, budgets = _report_nonfinite(sigma, energy, saturated, budgets, bad, cfg)
    return BudgetResult(
        budgets=budgets.to(torch.int32),
        singular_values=sigma.to(torch.float32),
        total_energy=energy.to(torch.float32),
        saturated=saturated,
        backend=NAME,
    )


def adaptive_prune(
    tokens: torch.Tensor,
    scores: torch.Tensor | None,
    cfg: PipelineConfig,
    budgets: torch.Tensor | None = None,
) -> PruneResult:
    """Budgets, selection and gather for checked tokens [B, N, D] and scores [B, N] or None.

    ``budgets`` ([B] integers in [min_tokens, max_tokens], e.g. shares of a fixed batch total)
    replaces the computed budgets; the leverage rank r = min(k*, l) stays each image's own.
    """
    budget_override = budgets
    batch, n, d = tokens.shape
    x, bad = _finite_float64(tokens, scores)
    sigma, energy, flat, u = _spectrum(x, cfg, want_vectors=scores is None)
    k_star, budgets, saturated = budget_from_spectrum(sigma, energy, flat, cfg)
    sigma, energy, saturated, budgets = _report_nonfinite(sigma, energy, saturated, budgets, bad, cfg)
    if budget_override is not None:
        budgets = budget_override.to(device=budgets.device, dtype=budgets.dtype)

    if scores is None:
        rank = k_star.clamp(max=cfg.sketch_size)
        columns = torch.arange(cfg.sketch_size, device=x.device)
        in_rank = columns[None, :] < rank[:, None]  # [B, l]
        selection = (u.square() * in_rank[:, None, :]).sum(2)  # [B, N]
        selection = torch.where(flat[:, None], torch.zeros_like(selection), selection)
    else:
        selection = scores.to(torch.float64)
    # A non-finite image keeps its first max_tokens tokens: all-equal scores, ties to the lower index.
    selection = torch.where(bad[:, None], torch.zeros_like(selection), selection)

    m = cfg.max_tokens
    order = torch.sort(selection, dim=1, descending=True, stable=True).indices[:, :m]  # [B, M]
    slots = torch.arange(m, device=x.device)
    mask = slots[None, :] < budgets[:, None]
    indices = torch.sort(torch.where(mask, order, torch.full_like(order, n)), dim=1).values
    indices = torch.where(mask, indices, torch.full_like(indices, -1))
    kept = torch.gather(tokens, 1, indices.clamp(min=0)[:, :, None].expand(batch, m, d))
    kept = torch.where(mask[:, :, None], kept, torch.zeros((), dtype=tokens.dtype, device=tokens.device))
    return PruneResult(
        tokens=kept,
        indices=indices,
        lengths=budgets.to(torch.int32),
        mask=mask,
        singular_values=sigma.to(torch.float32),
        total_energy=energy.to(torch.float32),
        saturated=saturated,
        backend=NAME,
    )


def image_config(cfg: PipelineConfig, n: int) -> PipelineConfig:
    """The configuration of one image of N = n tokens in a ragged call whose ``cfg`` holds the batch-wide
    L and M: l = min(L, n), max = min(M, n), min = min(min_tokens, max), the first l sketch columns."""
    l = min(cfg.sketch_size, n)
    top = min(cfg.max_tokens, n)
    sketch = None if cfg.sketch_matrix is None else cfg.sketch_matrix[:, :l]
    return replace(cfg, sketch_size=l, max_tokens=top, min_tokens=min(cfg.min_tokens, top), sketch_matrix=sketch)


def spectral_budget_ragged(tokens: torch.Tensor, cu_seqlens: torch.Tensor, cfg: PipelineConfig) -> BudgetResult:
    """Budgets of packed tokens [T, D], image by image; see the module docstring (ragged input)."""
    bounds = image_bounds(cu_seqlens, tokens.shape[0])
    batch = len(bounds) - 1
    sigma = torch.zeros(batch, cfg.sketch_size, dtype=torch.float32, device=tokens.device)
    energy = torch.zeros(batch, dtype=torch.float32, device=tokens.device)
    budgets = torch.zeros(batch, dtype=torch.int32, device=tokens.device)
    saturated = torch.zeros(batch, dtype=torch.bool, device=tokens.device)
    for b in range(batch):
        start, end = bounds[b], bounds[b + 1]
        one = image_config(cfg, end - start)
        r = spectral_budget(tokens[start:end][None], one)
        sigma[b, : one.sketch_size] = r.singular_values[0]
        energy[b], budgets[b], saturated[b] = r.total_energy[0], r.budgets[0], r.saturated[0]
    return BudgetResult(budgets=budgets, singular_values=sigma, total_energy=energy, saturated=saturated,
                        backend=NAME)


def adaptive_prune_ragged(
    tokens: torch.Tensor,
    cu_seqlens: torch.Tensor,
    scores: torch.Tensor | None,
    cfg: PipelineConfig,
    budgets: torch.Tensor | None = None,
) -> PruneResult:
    """Budgets, selection and padded gather of packed tokens [T, D] (scores [T] or None), image by
    image; ``budgets`` [B] (each in [min_i, max_i]) replaces the computed ones. Indices are relative
    to each image's start."""
    bounds = image_bounds(cu_seqlens, tokens.shape[0])
    batch, m, d = len(bounds) - 1, cfg.max_tokens, tokens.shape[1]
    dev = tokens.device
    kept = torch.zeros(batch, m, d, dtype=tokens.dtype, device=dev)
    indices = torch.full((batch, m), -1, dtype=torch.int64, device=dev)
    lengths = torch.zeros(batch, dtype=torch.int32, device=dev)
    mask = torch.zeros(batch, m, dtype=torch.bool, device=dev)
    sigma = torch.zeros(batch, cfg.sketch_size, dtype=torch.float32, device=dev)
    energy = torch.zeros(batch, dtype=torch.float32, device=dev)
    saturated = torch.zeros(batch, dtype=torch.bool, device=dev)
    for b in range(batch):
        start, end = bounds[b], bounds[b + 1]
        one = image_config(cfg, end - start)
        r = adaptive_prune(
            tokens[start:end][None], None if scores is None else scores[start:end][None], one,
            None if budgets is None else budgets[b: b + 1],
        )
        w = one.max_tokens
        kept[b, :w], indices[b, :w], mask[b, :w] = r.tokens[0], r.indices[0], r.mask[0]
        sigma[b, : one.sketch_size] = r.singular_values[0]
        lengths[b], energy[b], saturated[b] = r.lengths[0], r.total_energy[0], r.saturated[0]
    return PruneResult(tokens=kept, indices=indices, lengths=lengths, mask=mask, singular_values=sigma,
                       total_energy=energy, saturated=saturated, backend=NAME)


def exact_svdvals(tokens: torch.Tensor, center: bool = True) -> torch.Tensor:
    """Ground truth: all min(N, D) singular values of X_c per image, float64, descending.

    ``tokens`` is [B, N, D] (result [B, min(N, D)]) or one image [N, D] (result [min(N, D)]).
    """
    check_tokens(tokens)
    if not isinstance(center, bool):
        raise TypeError(f"center: expected a bool, got {type(center).__name__} {center!r}")
    x = tokens.to(torch.float64)
    if center:
        x = x - x.mean(-2, keepdim=True)
    return torch.linalg.svdvals(x)


def exact_budget(
    tokens: torch.Tensor,
    *,
    energy: float = 0.99,
    center: bool = True,
    min_tokens: int = 1,
    max_tokens: int | None = None,
) -> torch.Tensor:
    """Ground truth: the budget exact SVD gives (same threshold rule, no sketch), int64.

    ``tokens`` is [B, N, D] (result [B]) or one image [N, D] (a 0-dim result), as for
    :func:`eadaprune_kernels.spectral_budget`. ``max_tokens`` defaults to min(N, D), the full rank,
    and is at most N. Raises ValueError naming the images that hold NaN or Inf.
    """
    check_tokens(tokens)
    n, d = tokens.shape[-2:]
    # The checks of the pipeline's arguments; the sketch-only ones (sketch_size, seed) do not apply.
    cfg = make_config(
        tokens, energy=energy, center=center, sketch_size=1, power_iters=0, min_tokens=min_tokens,
        max_tokens=min(n, d) if max_tokens is None else max_tokens, seed=0, sketch_matrix=None,
    )
    single = tokens.dim() == 2
    x = tokens.to(torch.float64)
    if single:
        x = x[None]
    bad = nonfinite_images(x, None)
    if bool(bad.any()):
        images = bad.nonzero().squeeze(1).tolist()
        where = "the image" if single else f"images {images}"
        raise ValueError(f"tokens: expected finite values, got NaN or Inf in {where}")
    x = x / _power_of_two_scale(x)[:, None, None]
    raw_energy = x.square().sum((1, 2))
    xc = x - x.mean(1, keepdim=True) if center else x
    sigma = torch.linalg.svdvals(xc)
    total = xc.square().sum((1, 2))
    flat = total <= FLAT_RTOL * raw_energy
    budgets = budget_from_spectrum(sigma, total, flat, cfg)[1]
    return budgets[0] if single else budgets
