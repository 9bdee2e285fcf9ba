"""The pipeline as two torch.library custom ops, with fake (meta) implementations, and the one place
where the input's data is checked.

``eadaprune_kernels::adaptive_prune`` (budgets, selection, gather) and
``eadaprune_kernels::spectral_budget`` (budgets only) take dense tokens [B, N, D] (B may be 0) with
``cu_seqlens=None``, or packed tokens [T, D] with ``cu_seqlens`` [B + 1]; arguments already checked
(:mod:`eadaprune_kernels.inputs`, :func:`eadaprune_kernels.contract.make_config`), ``sketch_size``
already resolved (l, or L for ragged input) and the name of a resolved backend. Output shapes depend
only on B (from the shapes), D, l and max_tokens, never on the data, so ``torch.compile(fullgraph=True)``
traces the public functions without graph breaks; the real implementation runs eagerly inside the op.

The data checks run here, once per op, with at most one host synchronisation: under ``validate`` the
NaN/Inf scan of tokens, scores and sketch_matrix (naming the images), and the values of ``cu_seqlens``
(always when it is a CPU tensor: host data; under ``validate`` on a GPU), with ``total_budget`` also
sum(min_i) <= total_budget <= sum(max_i).
"""

from __future__ import annotations

from typing import Optional

import torch

from . import backends
from .contract import PipelineConfig, image_bounds
from .inputs import check_bounds_values

__all__ = ["prune_op", "budget_op"]

Tensor = torch.Tensor


def _nonfinite_images(values: Tensor, cu_seqlens: Tensor | None) -> Tensor:
    """[B] bool: images whose values (tokens [B, N, D] / [T, D], or scores [B, N] / [T]) hold NaN or Inf.

    Dense: one min/max reduction per image (NaN propagates through aminmax, an infinity is an
    extreme): no [B, ...] bool temporary. Ragged: per-row flags summed per image. No synchronisation.
    """
    if cu_seqlens is None:
        low, high = torch.aminmax(values.flatten(1), dim=1)
        return ~(torch.isfinite(low) & torch.isfinite(high))
    rows = ~torch.isfinite(values.reshape(values.shape[0], -1)).all(1)
    total = values.shape[0]
    positions = torch.arange(total, device=cu_seqlens.device, dtype=cu_seqlens.dtype)
    image = torch.searchsorted(cu_seqlens[1:].contiguous(), positions, right=True).clamp(max=cu_seqlens.shape[0] - 2)
    counts = torch.zeros(cu_seqlens.shape[0] - 1, dtype=torch.int64, device=values.device)
    return counts.index_add_(0, image, rows.to(torch.int64)) > 0


def _check_data(tokens, cu_seqlens, scores, sketch_matrix, validate, total_budget=None, min_tokens=1,
                max_tokens=1) -> None:
    """The data checks of one op call (see the module docstring): at most one host synchronisation."""
    check_values = cu_seqlens is not None and (validate or cu_seqlens.device.type == "cpu")
    if not (check_values or validate):
        return
    batch = tokens.shape[0] if cu_seqlens is None else cu_seqlens.shape[0] - 1
    parts = [cu_seqlens.to(torch.int64)] if check_values else []
    if validate:
        parts.append(_nonfinite_images(tokens, cu_seqlens).to(torch.int64))
        if scores is not None:
            parts.append(_nonfinite_images(scores, cu_seqlens).to(torch.int64))
        if sketch_matrix is not None:
            parts.append((~torch.isfinite(sketch_matrix).all()).to(torch.int64).reshape(1))
    host = torch.cat(parts).tolist()  # the one synchronisation
    if check_values:
        bounds, host = host[: batch + 1], host[batch + 1:]
        check_bounds_values(bounds, tokens.shape[0])
        if total_budget is not None:
            sizes = torch.tensor(bounds[1:]) - torch.tensor(bounds[:-1])
            low, high = (int(v.sum()) for v in image_bounds(sizes, min_tokens, max_tokens))
            if not low <= total_budget <= high:
                raise ValueError(
                    f"total_budget: expected between sum(min_i) = {low} and sum(max_i) = {high} for these images "
                    f"(max_i = min(max_tokens, N_i), min_i = min(min_tokens, max_i)), got {total_budget}"
                )
    if not validate:
        return
    for name in ("tokens", "scores"):
        if name == "scores" and scores is None:
            continue
        bad, host = host[:batch], host[batch:]
        images = [b for b in range(batch) if bad[b]]
        if images:
            raise ValueError(f"{name}: expected finite values, got NaN or Inf in image(s) {images[:20]}")
    if sketch_matrix is not None and host[0]:
        raise ValueError("sketch_matrix: expected finite values, got NaN or Inf")


def _config(energy, center, sketch_size, power_iters, min_tokens, max_tokens, seed, sketch_matrix):
    return PipelineConfig(energy=energy, center=center, sketch_size=sketch_size, power_iters=power_iters,
                          min_tokens=min_tokens, max_tokens=max_tokens, seed=seed, sketch_matrix=sketch_matrix)


def _budget_fields(tokens: Tensor, b: int, l: int, make):
    """budgets [B] int32, singular values [B, l] float32, energy [B] float32, saturated [B] bool."""
    return (make(tokens, (b,), torch.int32), make(tokens, (b, l), torch.float32),
            make(tokens, (b,), torch.float32), make(tokens, (b,), torch.bool))


def _prune_fields(tokens: Tensor, b: int, m: int, l: int, make):
    """tokens [B, M, D], indices [B, M] int64, lengths [B] int32, mask [B, M] bool, then the budget fields."""
    budgets, sigma, energy, saturated = _budget_fields(tokens, b, l, make)
    return (make(tokens, (b, m, tokens.shape[-1]), tokens.dtype), make(tokens, (b, m), torch.int64), budgets,
            make(tokens, (b, m), torch.bool), sigma, energy, saturated)


def _empty(t: Tensor, shape, dtype) -> Tensor:
    return t.new_empty(shape, dtype=dtype)


def _zeros(t: Tensor, shape, dtype) -> Tensor:
    return t.new_zeros(shape, dtype=dtype)


def _images(tokens: Tensor, cu_seqlens: Tensor | None) -> int:
    return tokens.shape[0] if cu_seqlens is None else cu_seqlens.shape[0] - 1


@torch.library.custom_op("eadaprune_kernels::adaptive_prune", mutates_args=())
def prune_op(
    tokens: Tensor, cu_seqlens: Optional[Tensor], scores: Optional[Tensor], sketch_matrix: Optional[Tensor],
    energy: float, center: bool, sketch_size: int, power_iters: int, min_tokens: int, max_tokens: int, seed: int,
    backend: str, validate: bool, budgets: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(tokens [B,M,D], indices [B,M] int64, lengths [B] int32, mask [B,M] bool, singular_values [B,l]
    float32, total_energy [B] float32, saturated [B] bool). ``budgets`` ([B] int32), when given, replaces
    the computed budgets (a fixed batch total)."""
    if _images(tokens, cu_seqlens) == 0:
        return _prune_fields(tokens, 0, max_tokens, sketch_size, _zeros)
    _check_data(tokens, cu_seqlens, scores, sketch_matrix, validate)
    cfg = _config(energy, center, sketch_size, power_iters, min_tokens, max_tokens, seed, sketch_matrix)
    r = backends.run(backend, tokens, cu_seqlens, scores, cfg, budgets, select=True)
    return r.tokens, r.indices, r.lengths, r.mask, r.singular_values, r.total_energy, r.saturated


@prune_op.register_fake
def _(tokens, cu_seqlens, scores, sketch_matrix, energy, center, sketch_size, power_iters, min_tokens, max_tokens,
      seed, backend, validate, budgets=None):
    return _prune_fields(tokens, _images(tokens, cu_seqlens), max_tokens, sketch_size, _empty)


@torch.library.custom_op("eadaprune_kernels::spectral_budget", mutates_args=())
def budget_op(
    tokens: Tensor, cu_seqlens: Optional[Tensor], sketch_matrix: Optional[Tensor], energy: float, center: bool,
    sketch_size: int, power_iters: int, min_tokens: int, max_tokens: int, seed: int, backend: str, validate: bool,
    total_budget: Optional[int] = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(budgets [B] int32, singular_values [B,l] float32, total_energy [B] float32, saturated [B] bool).

    ``total_budget`` (the first pass of adaptive_prune(..., total_budget=)) is checked against the
    images' bounds together with cu_seqlens."""
    if _images(tokens, cu_seqlens) == 0:
        return _budget_fields(tokens, 0, sketch_size, _zeros)
    _check_data(tokens, cu_seqlens, None, sketch_matrix, validate, total_budget, min_tokens, max_tokens)
    cfg = _config(energy, center, sketch_size, power_iters, min_tokens, max_tokens, seed, sketch_matrix)
    r = backends.run(backend, tokens, cu_seqlens, None, cfg, None, select=False)
    return r.budgets, r.singular_values, r.total_energy, r.saturated


@budget_op.register_fake
def _(tokens, cu_seqlens, sketch_matrix, energy, center, sketch_size, power_iters, min_tokens, max_tokens, seed,
      backend, validate, total_budget=None):
    return _budget_fields(tokens, _images(tokens, cu_seqlens), sketch_size, _empty)
