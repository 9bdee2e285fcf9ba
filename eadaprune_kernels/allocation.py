"""A fixed token total for a batch, shared by need: :func:`allocate_budgets`.

A serving system can plan memory per batch and still give each image tokens by its spectrum:
``adaptive_prune(tokens, total_budget=T)`` computes the per-image budgets, rescales them with
:func:`allocate_budgets` to exactly T within each image's bounds (largest remainder), then selects.
"""

from __future__ import annotations

import numbers

import torch

__all__ = ["allocate_budgets"]

_BISECTION_STEPS = 64  # halves a float64 bracket down to its last bit


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name}: expected an int >= 1, got {value}")
    return int(value)


def _bound(name: str, value, b: int, device) -> torch.Tensor | int:
    """An int bound (checked >= 1) or a [B] integer tensor of per-image bounds on the budgets' device."""
    if isinstance(value, torch.Tensor):
        if value.dtype.is_floating_point or value.dtype == torch.bool or value.is_complex():
            raise TypeError(f"{name}: expected an int or a [B] integer tensor, got dtype {value.dtype}")
        if tuple(value.shape) != (b,):
            raise ValueError(f"{name}: expected an int or a tensor of shape ({b},) (one bound per image), "
                             f"got shape {tuple(value.shape)}")
        if value.device != device:
            raise ValueError(f"{name}: expected device {device} (that of budgets), got {value.device}")
        return value
    return _positive_int(name, value)


def allocate_budgets(budgets: torch.Tensor, total: int, min_tokens, max_tokens) -> torch.Tensor:
    """Scales per-image budgets [B] to integers in [min_tokens, max_tokens] that sum to exactly ``total``.

    The continuous share of image i is clamp(s * budgets[i], min_i, max_i) with the scale s that
    makes the shares sum to ``total`` (found by bisection on the device); shares are rounded by the
    largest-remainder method, ties to the lower index. Budgets below 1 count as 1 (an image always
    has some need). Runs on the budgets' device without a host synchronisation.

    Args:
        budgets: [B] integer or floating tensor, the per-image needs (e.g. ``spectral_budget(...).budgets``).
        total: the exact number of tokens the batch keeps.
        min_tokens, max_tokens: bounds of every image's share: ints (then B * min_tokens <= total
            <= B * max_tokens is checked), or [B] integer tensors of per-image bounds (ragged images,
            max_i = min(max_tokens, N_i)) on the budgets' device. Tensor bounds are not read on the
            host (that would synchronise): the caller guarantees min_i <= max_i and
            sum(min_i) <= total <= sum(max_i); outside that range the shares stop at the bounds and do
            not sum to ``total``.

    Returns:
        [B] int32 on the budgets' device.
    """
    if not isinstance(budgets, torch.Tensor):
        raise TypeError(f"budgets: expected a torch.Tensor [B], got {type(budgets).__name__}")
    if budgets.dim() != 1:
        raise ValueError(f"budgets: expected shape [B], got {tuple(budgets.shape)}")
    if budgets.dtype == torch.bool or budgets.is_complex():
        raise TypeError(f"budgets: expected an integer or floating dtype, got {budgets.dtype}")
    total = _positive_int("total", total)
    b = budgets.numel()
    min_tokens = _bound("min_tokens", min_tokens, b, budgets.device)
    max_tokens = _bound("max_tokens", max_tokens, b, budgets.device)
    per_image = isinstance(min_tokens, torch.Tensor) or isinstance(max_tokens, torch.Tensor)
    if not per_image:
        if min_tokens > max_tokens:
            raise ValueError(f"min_tokens: expected at most max_tokens = {max_tokens}, got {min_tokens}")
        if not b * min_tokens <= total <= b * max_tokens:
            raise ValueError(
                f"total: expected between B * min_tokens = {b * min_tokens} and B * max_tokens = "
                f"{b * max_tokens} for B = {b}, got {total}"
            )
        low_bound, high_bound = min_tokens, max_tokens
        high_scale = float(max_tokens)
    else:
        def as_f64(v):
            if isinstance(v, torch.Tensor):
                return v.to(torch.float64)
            return torch.full((b,), float(v), dtype=torch.float64, device=budgets.device)
        low_bound, high_bound = as_f64(min_tokens), as_f64(max_tokens)
        if b == 0:
            return torch.zeros(0, dtype=torch.int32, device=budgets.device)
        high_scale = high_bound.amax().clamp_min(1.0)
    need = budgets.to(torch.float64).clamp_min(1.0)

    def shares(scale: torch.Tensor) -> torch.Tensor:
        return (scale * need).clamp(low_bound, high_bound)

    # f(s) = sum(shares(s)) rises from sum(min) (s=0) to sum(max) (s=max of max_tokens, as need >= 1).
    low = torch.zeros((), dtype=torch.float64, device=budgets.device)
    high = torch.full((), 1.0, dtype=torch.float64, device=budgets.device) * high_scale
    for _ in range(_BISECTION_STEPS):
        mid = (low + high) / 2
        over = shares(mid).sum() >= total
        high = torch.where(over, mid, high)
        low = torch.where(over, low, mid)
    continuous = shares(high)  # sums to >= total by less than one token
    floors = continuous.floor()
    remainder = continuous - floors
    missing = total - floors.sum()  # 0 <= missing <= number of images with a fractional share
    order = torch.sort(remainder, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(b, device=budgets.device)
    result = floors + (rank < missing).to(torch.float64)
    if per_image:  # an infeasible total (not checked, see above) must not push a share past its bound
        result = torch.minimum(result, high_bound.floor())
    return result.to(torch.int32)
