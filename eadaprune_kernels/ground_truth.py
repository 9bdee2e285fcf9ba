"""The ground truth without a sketch: exact singular values and the budget exact SVD gives.

Both compute in float64 with a full SVD (slow: for tests, accuracy reports and calibration, not for
serving). :func:`exact_budget` applies the same threshold rule as every backend
(:func:`eadaprune_kernels.contract.budget_from_spectrum`) to the exact spectrum.
"""

from __future__ import annotations

import torch

from .backends.reference import power_of_two_scale
from .contract import FLAT_RTOL, budget_from_spectrum, make_config
from .inputs import check_tokens

__all__ = ["exact_svdvals", "exact_budget"]


def exact_svdvals(tokens: torch.Tensor, center: bool = True) -> torch.Tensor:
    """Ground truth: all min(N, D) singular values of X_c per image, float64, descending.

    ``tokens`` is [B, N, D] (result [B, min(N, D)]) or one image [N, D] (result [min(N, D)]). Raises
    ValueError naming the images that hold NaN or Inf.
    """
    check_tokens(tokens)
    if not isinstance(center, bool):
        raise TypeError(f"center: expected a bool, got {type(center).__name__} {center!r}")
    x = tokens.to(torch.float64)
    _raise_if_nonfinite(x)
    if center:
        x = x - x.mean(-2, keepdim=True)
    return torch.linalg.svdvals(x)


def _raise_if_nonfinite(x: torch.Tensor) -> None:
    """ValueError naming the images of x ([B, N, D] or one image [N, D]) that hold NaN or Inf."""
    batch = x if x.dim() == 3 else x[None]
    bad = ~torch.isfinite(batch).flatten(1).all(1)
    if bool(bad.any()):
        where = "the image" if x.dim() == 2 else f"images {bad.nonzero().squeeze(1).tolist()}"
        raise ValueError(f"tokens: expected finite values, got NaN or Inf in {where}")


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
    cfg = make_config(n=n, d=d, device=tokens.device, energy=energy, center=center, sketch_size=1, power_iters=0,
                      min_tokens=min_tokens, max_tokens=min(n, d) if max_tokens is None else max_tokens, seed=0,
                      sketch_matrix=None)
    single = tokens.dim() == 2
    x = tokens.to(torch.float64)
    if single:
        x = x[None]
    _raise_if_nonfinite(tokens)
    x = x / power_of_two_scale(x)[:, None, None]
    raw_energy = x.square().sum((1, 2))
    xc = x - x.mean(1, keepdim=True) if center else x
    sigma = torch.linalg.svdvals(xc)
    total = xc.square().sum((1, 2))
    flat = total <= FLAT_RTOL * raw_energy
    budgets = budget_from_spectrum(sigma, total, flat, cfg.energy, cfg.min_tokens, cfg.max_tokens)[1]
    return budgets[0] if single else budgets
