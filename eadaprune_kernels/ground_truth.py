"""The ground truth without a sketch: exact singular values and the budget exact SVD gives.

Both compute in float64 with a full SVD (slow: for tests, accuracy reports and calibration, not for
serving). :func:`exact_budget` applies the same threshold rule as every backend
(:func:`eadaprune_kernels.contract.budget_from_spectrum`) to the exact spectrum.
"""

from __future__ import annotations

import torch

from .backends.reference import power_of_two_scale
from .contract import FLAT_RTOL, budget_from_spectrum

__all__ = ["exact_svdvals", "exact_budget"]


def exact_svdvals(tokens: torch.Tensor, center: bool = True) -> torch.Tensor:
    """Ground truth: all min(N, D) singular values of X_c per image, float64, descending."""
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
    """Ground truth: the budget exact SVD gives (same threshold rule, no sketch), [B] int64.

    ``max_tokens`` defaults to min(N, D), the full rank; tokens are [B, N, D].
    """
    n, d = tokens.shape[-2:]
    x = tokens.to(torch.float64)
    x = x / power_of_two_scale(x)[:, None, None]
    raw_energy = x.square().sum((1, 2))
    xc = x - x.mean(1, keepdim=True) if center else x
    sigma = torch.linalg.svdvals(xc)
    total = xc.square().sum((1, 2))
    flat = total <= FLAT_RTOL * raw_energy
    top = min(n, d) if max_tokens is None else max_tokens
    return budget_from_spectrum(sigma, total, flat, energy, min_tokens, top)[1]
