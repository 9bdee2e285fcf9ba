"""The public functions: one normalisation of the input, one check of the arguments, the backend's
name, and the call of the custom op (:mod:`eadaprune_kernels.ops`) that checks the data and runs it.

The path of the tokens: :func:`adaptive_prune` -> :func:`eadaprune_kernels.inputs.normalise` (one image,
a list, packed with cu_seqlens or a dense batch, checked once) -> the custom op (the data checks, one
host synchronisation at most) -> :func:`eadaprune_kernels.backends.run` -> the backend's kernel. The
arguments are checked by :func:`eadaprune_kernels.contract.make_config`.
"""

from __future__ import annotations

import numbers
from dataclasses import fields, replace

import torch

from .allocation import allocate_budgets
from .backends import resolve_backend_name
from .contract import PipelineConfig, image_bounds, make_config
from .inputs import Batch, normalise
from .ops import budget_op, prune_op
from .results import BudgetResult, PruneResult

__all__ = ["adaptive_prune", "spectral_budget", "randomized_svdvals"]


def _unbatch(result):
    """Drops the leading batch dimension of every tensor field of a B=1 result."""
    return replace(result, **{
        f.name: getattr(result, f.name)[0]
        for f in fields(result)
        if isinstance(getattr(result, f.name), torch.Tensor)
    })


def _prepare(batch: Batch, backend, validate, **kwargs) -> tuple[PipelineConfig, str]:
    """The checked configuration of a call and the name of the backend that runs it."""
    tokens = batch.tokens
    cfg = make_config(n=batch.tokens_per_image, d=tokens.shape[-1], device=tokens.device, **kwargs)
    if not isinstance(validate, bool):
        raise TypeError(f"validate: expected a bool, got {type(validate).__name__} {validate!r}")
    name = resolve_backend_name(backend, tokens.device.type, batch.cu_seqlens is not None, cfg.sketch_size)
    return cfg, name


def _budget_fields(batch: Batch, cfg: PipelineConfig, name: str, validate: bool, total_budget=None):
    return budget_op(batch.tokens, batch.cu_seqlens, cfg.sketch_matrix, cfg.energy, cfg.center, cfg.sketch_size,
                     cfg.power_iters, cfg.min_tokens, cfg.max_tokens, cfg.seed, name, validate, total_budget)


def _shares(batch: Batch, cfg: PipelineConfig, name: str, validate: bool, total_budget) -> torch.Tensor | None:
    """The per-image budgets of ``adaptive_prune(..., total_budget=T)``: the budget pass, then
    :func:`allocate_budgets` within each image's bounds (no host synchronisation)."""
    if isinstance(total_budget, bool) or not isinstance(total_budget, numbers.Integral):
        raise TypeError(f"total_budget: expected an int or None, got {type(total_budget).__name__} {total_budget!r}")
    b, m = batch.size, cfg.max_tokens
    if batch.cu_seqlens is None:
        low, high, what = b * cfg.min_tokens, b * m, (f"B * min_tokens = {b * cfg.min_tokens} and "
                                                      f"B * max_tokens = {b * m}")
    else:  # the exact bounds, sum(min_i) and sum(max_i), need N_i: checked inside the op with cu_seqlens
        low, high, what = b, b * m, f"B = {b} and B * max_tokens = {b * m}"
    if not low <= total_budget <= high:
        raise ValueError(f"total_budget: expected between {what} for B = {b}, got {total_budget}")
    if b == 0:
        return None
    needs = _budget_fields(batch, cfg, name, validate, int(total_budget))[0]
    if batch.cu_seqlens is None:
        return allocate_budgets(needs, int(total_budget), cfg.min_tokens, m)
    sizes = (batch.cu_seqlens[1:] - batch.cu_seqlens[:-1]).clamp_min(0)
    return allocate_budgets(needs, int(total_budget), *image_bounds(sizes, cfg.min_tokens, m))


def adaptive_prune(
    tokens: torch.Tensor | list[torch.Tensor],
    scores: torch.Tensor | list[torch.Tensor] | None = None,
    *,
    cu_seqlens: torch.Tensor | None = None,
    energy: float = 0.99,
    center: bool = True,
    sketch_size: int = 128,
    power_iters: int = 2,
    min_tokens: int = 1,
    max_tokens: int | None = None,
    seed: int = 0,
    sketch_matrix: torch.Tensor | None = None,
    backend: str = "auto",
    validate: bool = True,
    total_budget: int | None = None,
) -> PruneResult:
    """Keeps, per image, as many tokens as its spectrum needs to hold ``energy`` of its energy.

    Args:
        tokens: [B, N, D] (or one image [N, D]) float16 / bfloat16 / float32 / float64; or ragged
            images: packed [T, D] with ``cu_seqlens``, or a list of [N_i, D] tensors.
        scores: optional [B, N] (or [N]) importance of each token, higher is kept first; without it
            tokens are ranked by their leverage in the estimated top-k* singular subspace. Ragged:
            packed [T] (or, with a list of images, a list of [N_i]).
        cu_seqlens: [B + 1] int32/int64 on the tokens' device, for packed ragged tokens [T, D]:
            image b is rows cu_seqlens[b]:cu_seqlens[b + 1]; starts at 0, ends at T, strictly
            increasing. Each image gets its own l_i = min(sketch_size, N_i, D),
            max_i = min(max_tokens, N_i) and min_i = min(min_tokens, max_i). The values are checked
            on the host for a CPU cu_seqlens, and under ``validate`` (one synchronisation, shared
            with the NaN/Inf scan) for a GPU one; with validate=False a GPU cu_seqlens is trusted:
            invalid values give unspecified results for the images concerned but no crash and no
            out-of-bounds access (the Triton kernel clamps each image to [0, T]).
        energy: fraction tau in (0, 1] of ||X_c||_F^2 the kept rank must capture.
        center: subtract each image's mean token before the spectrum is taken.
        sketch_size: columns of the Gaussian sketch; l = min(sketch_size, N, D).
        power_iters: subspace iterations q (each re-orthonormalised).
        min_tokens, max_tokens: bounds of the budget; max_tokens defaults to l and is at most N.
            Ragged: M = max_tokens if given (not checked against the N_i), else min(sketch_size, D).
        seed: fixes the Gaussian sketch (see :func:`eadaprune_kernels.gaussian_sketch`).
        sketch_matrix: optional explicit sketch [D, l] that replaces the generated one.
        backend: "auto", or a name from :data:`eadaprune_kernels.backends.BACKENDS`.
        validate: scan tokens and scores for NaN/Inf and raise ValueError naming the images
            (one host synchronisation). With False nothing synchronises, and a non-finite image is
            returned saturated with its first max_tokens tokens.
        total_budget: keep exactly this many tokens over the whole batch, shared by need: the
            per-image budgets are rescaled with :func:`eadaprune_kernels.allocate_budgets` (within
            [min_tokens, max_tokens]) before the tokens are selected. Costs a second pass of the
            pipeline (budgets first, then selection with the shares); no host synchronisation.
            Ragged: each image's share lies in [min_i, max_i]; sum(min_i) <= total_budget <=
            sum(max_i) is checked with cu_seqlens (see there; a GPU cu_seqlens under validate=False
            is not checked, and an infeasible total then gives shares stopped at the bounds).

    Returns:
        :class:`PruneResult`, padded to max_tokens; ``result.backend`` names the backend that ran.
        Ragged: batched [B, ...] fields, indices relative to each image's start, singular values
        [B, min(sketch_size, D)] with 0 past l_i; ``result.packed_with_indices()`` unpads them.
    """
    batch = normalise(tokens, scores, cu_seqlens)
    cfg, name = _prepare(batch, backend, validate, energy=energy, center=center, sketch_size=sketch_size,
                         power_iters=power_iters, min_tokens=min_tokens, max_tokens=max_tokens, seed=seed,
                         sketch_matrix=sketch_matrix)
    shares = None
    if total_budget is not None:
        shares = _shares(batch, cfg, name, validate, total_budget)
        validate = False  # the budget pass has scanned the data
    result = PruneResult(*prune_op(
        batch.tokens, batch.cu_seqlens, batch.scores, cfg.sketch_matrix, cfg.energy, cfg.center, cfg.sketch_size,
        cfg.power_iters, cfg.min_tokens, cfg.max_tokens, cfg.seed, name, validate, shares,
    ), backend=name)
    return _unbatch(result) if batch.single else result


def spectral_budget(
    tokens: torch.Tensor | list[torch.Tensor],
    *,
    cu_seqlens: torch.Tensor | None = None,
    energy: float = 0.99,
    center: bool = True,
    sketch_size: int = 128,
    power_iters: int = 2,
    min_tokens: int = 1,
    max_tokens: int | None = None,
    seed: int = 0,
    sketch_matrix: torch.Tensor | None = None,
    backend: str = "auto",
    validate: bool = True,
) -> BudgetResult:
    """The budgets :func:`adaptive_prune` would give, without selecting or gathering tokens.

    Same arguments as :func:`adaptive_prune` minus ``scores`` (ragged input included); returns
    :class:`BudgetResult` (ragged: singular_values [B, min(sketch_size, D)], 0 past each l_i).
    """
    batch = normalise(tokens, None, cu_seqlens)
    cfg, name = _prepare(batch, backend, validate, energy=energy, center=center, sketch_size=sketch_size,
                         power_iters=power_iters, min_tokens=min_tokens, max_tokens=max_tokens, seed=seed,
                         sketch_matrix=sketch_matrix)
    result = BudgetResult(*_budget_fields(batch, cfg, name, validate), backend=name)
    return _unbatch(result) if batch.single else result


def randomized_svdvals(
    tokens: torch.Tensor | list[torch.Tensor],
    *,
    cu_seqlens: torch.Tensor | None = None,
    sketch_size: int = 128,
    power_iters: int = 2,
    center: bool = True,
    seed: int = 0,
    sketch_matrix: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """The l = min(sketch_size, N, D) sketched singular values of each image, [B, l] float32.

    Each is a lower bound on the exact singular value of the (centred) tokens. NaN/Inf in tokens
    raise ValueError (one host synchronisation). Ragged input (packed [T, D] with ``cu_seqlens``, or a
    list of [N_i, D]): [B, min(sketch_size, D)], with 0 past each image's l_i = min(sketch_size, N_i, D).
    """
    return spectral_budget(
        tokens, cu_seqlens=cu_seqlens, sketch_size=sketch_size, power_iters=power_iters, center=center, seed=seed,
        sketch_matrix=sketch_matrix, backend=backend,
    ).singular_values
