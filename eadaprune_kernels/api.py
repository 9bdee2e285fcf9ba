"""The public functions: argument checks, batching of a single image, and the call of the custom op
(:mod:`eadaprune_kernels.ops`) that runs the resolved backend."""

from __future__ import annotations

import numbers
from dataclasses import fields, replace

import torch

from ._validation import check_scores, check_tokens, make_config
from .backends import resolve_backend_name
from .ops import budget_op, prune_op
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


def adaptive_prune(
    tokens: torch.Tensor,
    scores: torch.Tensor | None = None,
    *,
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
        tokens: [B, N, D] (or one image [N, D]) float16 / bfloat16 / float32 / float64.
        scores: optional [B, N] (or [N]) importance of each token, higher is kept first; without it
            tokens are ranked by their leverage in the estimated top-k* singular subspace.
        energy: fraction tau in (0, 1] of ||X_c||_F^2 the kept rank must capture.
        center: subtract each image's mean token before the spectrum is taken.
        sketch_size: columns of the Gaussian sketch; l = min(sketch_size, N, D).
        power_iters: subspace iterations q (each re-orthonormalised).
        min_tokens, max_tokens: bounds of the budget; max_tokens defaults to l and is at most N.
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

    Returns:
        :class:`PruneResult`, padded to max_tokens; ``result.backend`` names the backend that ran.
    """
    check_tokens(tokens)
    check_scores(scores, tokens)
    cfg = make_config(
        tokens, energy=energy, center=center, sketch_size=sketch_size, power_iters=power_iters,
        min_tokens=min_tokens, max_tokens=max_tokens, seed=seed, sketch_matrix=sketch_matrix,
    )
    if not isinstance(validate, bool):
        raise TypeError(f"validate: expected a bool, got {type(validate).__name__} {validate!r}")
    name = resolve_backend_name(backend, tokens.device.type)
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
    tokens: torch.Tensor,
    *,
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

    Same arguments as :func:`adaptive_prune` minus ``scores``; returns :class:`BudgetResult`.
    """
    check_tokens(tokens)
    cfg = make_config(
        tokens, energy=energy, center=center, sketch_size=sketch_size, power_iters=power_iters,
        min_tokens=min_tokens, max_tokens=max_tokens, seed=seed, sketch_matrix=sketch_matrix,
    )
    if not isinstance(validate, bool):
        raise TypeError(f"validate: expected a bool, got {type(validate).__name__} {validate!r}")
    name = resolve_backend_name(backend, tokens.device.type)
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
    tokens: torch.Tensor,
    *,
    sketch_size: int = 128,
    power_iters: int = 2,
    center: bool = True,
    seed: int = 0,
    sketch_matrix: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """The l = min(sketch_size, N, D) sketched singular values of each image, [B, l] float32.

    Each is a lower bound on the exact singular value of the (centred) tokens. NaN/Inf in tokens
    raise ValueError (one host synchronisation).
    """
    return spectral_budget(
        tokens, sketch_size=sketch_size, power_iters=power_iters, center=center, seed=seed,
        sketch_matrix=sketch_matrix, backend=backend,
    ).singular_values
