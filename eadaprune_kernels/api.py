"""The public functions: argument checks, batching of a single image, packing of ragged input, and
the call of the custom op (:mod:`eadaprune_kernels.ops`) that runs the resolved backend.

Ragged input (images of different token counts N_i in one call) comes either as packed tokens
[T, D] with ``cu_seqlens`` [B + 1] (image b is rows cu_seqlens[b]:cu_seqlens[b + 1], the
flash-attention convention) and packed scores [T], or as a Python list of [N_i, D] tensors (and
scores as a list of [N_i] or packed [T]), which is packed once with torch.cat (cu_seqlens built on
the host from the shapes: no synchronisation)."""

from __future__ import annotations

import numbers
from dataclasses import fields, replace

import torch

from ._validation import (check_ragged, check_ragged_scores, check_scores, check_tokens, make_config,
                          pack_images)
from .backends import resolve_backend_name
from .ops import budget_op, prune_op, ragged_budget_op, ragged_prune_op
from .policy import allocate_budgets
from .results import BudgetResult, PruneResult

__all__ = ["adaptive_prune", "spectral_budget", "randomized_svdvals"]


def _unbatch(result):
    """Drops the leading batch dimension of every tensor field of a B=1 result."""
    return replace(result, **{
        f.name: getattr(result, f.name)[0]
        for f in fields(result)
        if isinstance(getattr(result, f.name), torch.Tensor)
    })


def _ragged_inputs(tokens, scores, cu_seqlens):
    """(tokens, scores, cu_seqlens, ragged): packs a list of images, checks packed input's metadata."""
    if isinstance(tokens, (list, tuple)):
        if cu_seqlens is not None:
            raise TypeError("cu_seqlens: expected None when tokens is a list of images (it is built from their shapes)")
        tokens, scores, cu_seqlens = pack_images(tokens, scores)
        return tokens, scores, cu_seqlens, True
    if cu_seqlens is None:
        return tokens, scores, None, False
    check_ragged(tokens, cu_seqlens)
    return tokens, scores, cu_seqlens, True


def _check_validate(validate) -> None:
    if not isinstance(validate, bool):
        raise TypeError(f"validate: expected a bool, got {type(validate).__name__} {validate!r}")


def _check_total_budget(total_budget, batch: int, low: int, high: int, what: str) -> int:
    if isinstance(total_budget, bool) or not isinstance(total_budget, numbers.Integral):
        raise TypeError(f"total_budget: expected an int or None, got {type(total_budget).__name__} {total_budget!r}")
    if not batch * low <= total_budget <= batch * high:
        raise ValueError(f"total_budget: expected between {what} for B = {batch}, got {total_budget}")
    return int(total_budget)


def _adaptive_prune_ragged(tokens, scores, cu_seqlens, cfg, name, validate, total_budget) -> PruneResult:
    """The ragged path of :func:`adaptive_prune`: packed tokens [T, D], cu_seqlens [B + 1] (checked)."""
    check_ragged_scores(scores, tokens)
    batch = cu_seqlens.shape[0] - 1
    shares = None
    if total_budget is not None:
        # Necessary bounds from metadata (every max_i is in [1, M]); the exact ones, sum(min_i) and
        # sum(max_i), need N_i and are checked inside the budget op with cu_seqlens.
        total = _check_total_budget(total_budget, batch, 1, cfg.max_tokens,
                                    f"B = {batch} and B * max_tokens = {batch * cfg.max_tokens}")
        needs = ragged_budget_op(
            tokens, cu_seqlens, cfg.sketch_matrix, cfg.energy, cfg.center, cfg.sketch_size, cfg.power_iters,
            cfg.min_tokens, cfg.max_tokens, cfg.seed, name, validate, total,
        )[0]
        sizes = (cu_seqlens[1:] - cu_seqlens[:-1]).clamp_min(0)
        top = sizes.clamp(max=cfg.max_tokens)
        shares = allocate_budgets(needs, total, top.clamp(max=cfg.min_tokens), top)
        validate = False  # the budget pass has scanned the data
    fields = ragged_prune_op(
        tokens, cu_seqlens, scores, cfg.sketch_matrix, cfg.energy, cfg.center, cfg.sketch_size, cfg.power_iters,
        cfg.min_tokens, cfg.max_tokens, cfg.seed, name, validate, shares,
    )
    return PruneResult(*fields, backend=name)


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

    Raises:
        RaggedUnsupported (a NotImplementedError and RuntimeError): ragged input on a backend whose
        module does not set ``SUPPORTS_RAGGED`` (today: the native "cpu" and "cuda" backends).
    """
    tokens, scores, cu_seqlens, ragged = _ragged_inputs(tokens, scores, cu_seqlens)
    if ragged:
        cfg = make_config(
            tokens, energy=energy, center=center, sketch_size=sketch_size, power_iters=power_iters,
            min_tokens=min_tokens, max_tokens=max_tokens, seed=seed, sketch_matrix=sketch_matrix, ragged=True,
        )
        _check_validate(validate)
        name = resolve_backend_name(backend, tokens.device.type, True, cfg.sketch_size)
        return _adaptive_prune_ragged(tokens, scores, cu_seqlens, cfg, name, validate, total_budget)
    check_tokens(tokens)
    check_scores(scores, tokens)
    cfg = make_config(
        tokens, energy=energy, center=center, sketch_size=sketch_size, power_iters=power_iters,
        min_tokens=min_tokens, max_tokens=max_tokens, seed=seed, sketch_matrix=sketch_matrix,
    )
    if not isinstance(validate, bool):
        raise TypeError(f"validate: expected a bool, got {type(validate).__name__} {validate!r}")
    name = resolve_backend_name(backend, tokens.device.type, False, cfg.sketch_size)
    single = tokens.dim() == 2
    if single:
        tokens = tokens[None]
        scores = None if scores is None else scores[None]
    shares = None
    if total_budget is not None:
        batch = tokens.shape[0]
        if isinstance(total_budget, bool) or not isinstance(total_budget, numbers.Integral):
            raise TypeError(f"total_budget: expected an int or None, got {type(total_budget).__name__} {total_budget!r}")
        if not batch * cfg.min_tokens <= total_budget <= batch * cfg.max_tokens:
            raise ValueError(
                f"total_budget: expected between B * min_tokens = {batch * cfg.min_tokens} and "
                f"B * max_tokens = {batch * cfg.max_tokens} for B = {batch}, got {total_budget}"
            )
        if batch > 0:
            needs = budget_op(
                tokens, cfg.sketch_matrix, cfg.energy, cfg.center, cfg.sketch_size, cfg.power_iters,
                cfg.min_tokens, cfg.max_tokens, cfg.seed, name, validate,
            )[0]
            shares = allocate_budgets(needs, int(total_budget), cfg.min_tokens, cfg.max_tokens)
            validate = False  # the budget pass has scanned the data
    fields = prune_op(
        tokens, scores, cfg.sketch_matrix, cfg.energy, cfg.center, cfg.sketch_size, cfg.power_iters,
        cfg.min_tokens, cfg.max_tokens, cfg.seed, name, validate, shares,
    )
    result = PruneResult(*fields, backend=name)
    return _unbatch(result) if single else result


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
    tokens, _, cu_seqlens, ragged = _ragged_inputs(tokens, None, cu_seqlens)
    if ragged:
        cfg = make_config(
            tokens, energy=energy, center=center, sketch_size=sketch_size, power_iters=power_iters,
            min_tokens=min_tokens, max_tokens=max_tokens, seed=seed, sketch_matrix=sketch_matrix, ragged=True,
        )
        _check_validate(validate)
        name = resolve_backend_name(backend, tokens.device.type, True, cfg.sketch_size)
        fields = ragged_budget_op(
            tokens, cu_seqlens, cfg.sketch_matrix, cfg.energy, cfg.center, cfg.sketch_size, cfg.power_iters,
            cfg.min_tokens, cfg.max_tokens, cfg.seed, name, validate,
        )
        return BudgetResult(*fields, backend=name)
    check_tokens(tokens)
    cfg = make_config(
        tokens, energy=energy, center=center, sketch_size=sketch_size, power_iters=power_iters,
        min_tokens=min_tokens, max_tokens=max_tokens, seed=seed, sketch_matrix=sketch_matrix,
    )
    if not isinstance(validate, bool):
        raise TypeError(f"validate: expected a bool, got {type(validate).__name__} {validate!r}")
    name = resolve_backend_name(backend, tokens.device.type, False, cfg.sketch_size)
    single = tokens.dim() == 2
    if single:
        tokens = tokens[None]
    fields = budget_op(
        tokens, cfg.sketch_matrix, cfg.energy, cfg.center, cfg.sketch_size, cfg.power_iters,
        cfg.min_tokens, cfg.max_tokens, cfg.seed, name, validate,
    )
    result = BudgetResult(*fields, backend=name)
    return _unbatch(result) if single else result


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
