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
indices [B, M] relative to the image's start (-1 past the budget). :func:`run` is that loop for
ragged input: it reads cu_seqlens to the host (one synchronisation for a GPU cu_seqlens, which is
then always checked); the reference is the definition, not the fast path.

The threshold rule and its constants (step 7, FLAT_RTOL of step 3) are the shared contract:
:mod:`eadaprune_kernels.contract`. The ground truth without a sketch (exact SVD) is
:mod:`eadaprune_kernels.ground_truth`.
"""

from __future__ import annotations

import torch

from ..contract import FLAT_RTOL, PipelineConfig, budget_from_spectrum, image_config
from ..inputs import check_bounds_values
from ..results import BudgetResult, PruneResult
from ..sketch import gaussian_sketch

__all__ = ["NAME", "run", "power_of_two_scale", "spectrum"]

NAME = "reference"


def power_of_two_scale(x: torch.Tensor) -> torch.Tensor:
    """[B] float64 power of two s with max|x_b| / s in [1, 2) (1 for an all-zero image)."""
    amax = x.abs().flatten(1).amax(1)
    safe = torch.where(amax > 0, amax, torch.ones_like(amax))
    return torch.exp2(torch.floor(torch.log2(safe)))


def spectrum(x: torch.Tensor, cfg: PipelineConfig, want_vectors: bool):
    """Steps 1-6 on finite float64 tokens [B, N, D].

    Returns (sigma [B, l], E [B], flat [B], U [B, N, l] or None), in the input's scale.
    """
    scale = power_of_two_scale(x)
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
    bad = ~torch.isfinite(tokens).flatten(1).all(1)
    if scores is not None:
        bad |= ~torch.isfinite(scores).all(1)
    x = tokens.to(torch.float64)
    x = torch.where(bad[:, None, None], torch.zeros((), dtype=x.dtype, device=x.device), x)
    return x, bad


def _dense(tokens: torch.Tensor, scores: torch.Tensor | None, cfg: PipelineConfig,
           budget_override: torch.Tensor | None, select: bool) -> PruneResult | BudgetResult:
    """Steps 1-9 for tokens [B, N, D] and scores [B, N] or None (steps 1-7 unless ``select``).

    ``budget_override`` ([B] integers, e.g. shares of a fixed batch total) replaces the computed budgets;
    the leverage rank r = min(k*, l) stays each image's own. Under validate=False a non-finite image is
    reported saturated, NaN spectrum and energy, and keeps its first max_tokens tokens.
    """
    batch, n, d = tokens.shape
    x, bad = _finite_float64(tokens, scores if select else None)
    sigma, energy, flat, u = spectrum(x, cfg, want_vectors=select and scores is None)
    k_star, budgets, saturated = budget_from_spectrum(sigma, energy, flat, cfg.energy, cfg.min_tokens, cfg.max_tokens)
    nan = torch.tensor(float("nan"), dtype=sigma.dtype, device=sigma.device)
    sigma = torch.where(bad[:, None], nan, sigma)
    energy = torch.where(bad, nan, energy)
    saturated = saturated | bad
    budgets = torch.where(bad, torch.full_like(budgets, cfg.max_tokens), budgets)
    if not select:
        return BudgetResult(budgets=budgets.to(torch.int32), singular_values=sigma.to(torch.float32),
                            total_energy=energy.to(torch.float32), saturated=saturated, backend=NAME)
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
    return PruneResult(tokens=kept, indices=indices, lengths=budgets.to(torch.int32), mask=mask,
                       singular_values=sigma.to(torch.float32), total_energy=energy.to(torch.float32),
                       saturated=saturated, backend=NAME)


def _ragged(tokens: torch.Tensor, cu_seqlens: torch.Tensor, scores: torch.Tensor | None, cfg: PipelineConfig,
            budgets: torch.Tensor | None, select: bool) -> PruneResult | BudgetResult:
    """Packed tokens [T, D], image by image with its own configuration (see the module docstring)."""
    bounds = [int(v) for v in cu_seqlens.tolist()]  # one synchronisation for a GPU cu_seqlens
    check_bounds_values(bounds, tokens.shape[0])
    batch, m, d, dev = len(bounds) - 1, cfg.max_tokens, tokens.shape[1], tokens.device
    sigma = torch.zeros(batch, cfg.sketch_size, dtype=torch.float32, device=dev)
    energy = torch.zeros(batch, dtype=torch.float32, device=dev)
    lengths = torch.zeros(batch, dtype=torch.int32, device=dev)
    saturated = torch.zeros(batch, dtype=torch.bool, device=dev)
    if select:
        kept = torch.zeros(batch, m, d, dtype=tokens.dtype, device=dev)
        indices = torch.full((batch, m), -1, dtype=torch.int64, device=dev)
        mask = torch.zeros(batch, m, dtype=torch.bool, device=dev)
    for b in range(batch):
        start, end = bounds[b], bounds[b + 1]
        one = image_config(cfg, end - start)
        r = _dense(tokens[start:end][None], None if scores is None else scores[start:end][None], one,
                   None if budgets is None else budgets[b: b + 1], select)
        sigma[b, : one.sketch_size] = r.singular_values[0]
        energy[b], saturated[b] = r.total_energy[0], r.saturated[0]
        if select:
            w = one.max_tokens
            kept[b, :w], indices[b, :w], mask[b, :w] = r.tokens[0], r.indices[0], r.mask[0]
            lengths[b] = r.lengths[0]
        else:
            lengths[b] = r.budgets[0]
    if not select:
        return BudgetResult(budgets=lengths, singular_values=sigma, total_energy=energy, saturated=saturated,
                            backend=NAME)
    return PruneResult(tokens=kept, indices=indices, lengths=lengths, mask=mask, singular_values=sigma,
                       total_energy=energy, saturated=saturated, backend=NAME)


def run(tokens: torch.Tensor, cu_seqlens: torch.Tensor | None, scores: torch.Tensor | None, cfg: PipelineConfig,
        budgets: torch.Tensor | None, select: bool) -> PruneResult | BudgetResult:
    """The backend entry point (see :mod:`eadaprune_kernels.backends`): dense tokens [B, N, D] with
    cu_seqlens None, or packed tokens [T, D] with cu_seqlens [B + 1]."""
    if cu_seqlens is None:
        return _dense(tokens, scores, cfg, budgets, select)
    return _ragged(tokens, cu_seqlens, scores, cfg, budgets, select)
