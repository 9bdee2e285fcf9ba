"""The pipeline as torch.library custom ops, with fake (meta) implementations.

``torch.compile`` sees each call as one opaque op whose output shapes depend only on B, N, D, l and
max_tokens, never on the data, so ``torch.compile(fullgraph=True)`` traces :func:`adaptive_prune`
without graph breaks; the real implementation (which may scan for NaN and raise) runs eagerly inside
the op. Both ops take batched tokens [B, N, D] (B may be 0), arguments already checked, ``sketch_size``
already resolved to l, and the name of a resolved backend.

Ragged input has its own pair, ``eadaprune_kernels::adaptive_prune_ragged`` and
``eadaprune_kernels::spectral_budget_ragged``: packed tokens [T, D] and cu_seqlens [B + 1], whose fake
output shapes depend only on B (from cu_seqlens' length), D, L = min(sketch_size, D) and M. The data
checks of cu_seqlens run inside the op: always when it is a CPU tensor (host data), under
``validate`` (one synchronisation, shared with the NaN/Inf scan) when it is on a GPU. The dispatch
refuses backends whose module lacks ``SUPPORTS_RAGGED``.
"""

from __future__ import annotations

from typing import Optional

import torch

from ._validation import PipelineConfig, raise_if_invalid_ragged, raise_if_nonfinite
from .backends import resolve_backend

__all__ = ["prune_op", "budget_op", "ragged_prune_op", "ragged_budget_op"]

Tensor = torch.Tensor


def _config(energy, center, sketch_size, power_iters, min_tokens, max_tokens, seed, sketch_matrix):
    return PipelineConfig(energy=energy, center=center, sketch_size=sketch_size, power_iters=power_iters,
                          min_tokens=min_tokens, max_tokens=max_tokens, seed=seed, sketch_matrix=sketch_matrix)


def _empty_budget_fields(tokens: Tensor, l: int):
    """The four budget fields of an empty batch (B = 0)."""
    return (
        tokens.new_zeros((0,), dtype=torch.int32),
        tokens.new_zeros((0, l), dtype=torch.float32),
        tokens.new_zeros((0,), dtype=torch.float32),
        tokens.new_zeros((0,), dtype=torch.bool),
    )


def _fake_budget_fields(tokens: Tensor, b: int, l: int):
    """Fake (meta) budget fields: budgets [B] int32, singular values [B, l], energy [B], saturated [B]."""
    return (
        tokens.new_empty((b,), dtype=torch.int32),
        tokens.new_empty((b, l), dtype=torch.float32),
        tokens.new_empty((b,), dtype=torch.float32),
        tokens.new_empty((b,), dtype=torch.bool),
    )


def _fake_prune_fields(tokens: Tensor, b: int, m: int, d: int, l: int):
    """Fake (meta) prune fields: tokens [B, M, D], indices [B, M], lengths [B], mask [B, M], then the
    budget fields."""
    budgets, sigma, energy, saturated = _fake_budget_fields(tokens, b, l)
    return (
        tokens.new_empty((b, m, d)),
        tokens.new_empty((b, m), dtype=torch.int64),
        budgets,
        tokens.new_empty((b, m), dtype=torch.bool),
        sigma,
        energy,
        saturated,
    )


@torch.library.custom_op("eadaprune_kernels::adaptive_prune", mutates_args=())
def prune_op(
    tokens: Tensor, scores: Optional[Tensor], sketch_matrix: Optional[Tensor], energy: float, center: bool,
    sketch_size: int, power_iters: int, min_tokens: int, max_tokens: int, seed: int, backend: str,
    validate: bool, budgets: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(tokens [B,M,D], indices [B,M] int64, lengths [B] int32, mask [B,M] bool,
    singular_values [B,l] float32, total_energy [B] float32, saturated [B] bool).

    ``budgets`` ([B] int32), when given, replaces the computed budgets (a fixed batch total)."""
    cfg = _config(energy, center, sketch_size, power_iters, min_tokens, max_tokens, seed, sketch_matrix)
    b, _, d = tokens.shape
    if b == 0:
        budgets, sigma, total, saturated = _empty_budget_fields(tokens, sketch_size)
        return (tokens.new_zeros((0, max_tokens, d)), tokens.new_zeros((0, max_tokens), dtype=torch.int64),
                budgets, tokens.new_zeros((0, max_tokens), dtype=torch.bool), sigma, total, saturated)
    if validate:
        raise_if_nonfinite(tokens, scores, sketch_matrix)
    impl = resolve_backend(backend, tokens.device, sketch_size=sketch_size)
    r = impl.adaptive_prune(tokens, scores, cfg, budgets)
    return r.tokens, r.indices, r.lengths, r.mask, r.singular_values, r.total_energy, r.saturated


@prune_op.register_fake
def _(tokens, scores, sketch_matrix, energy, center, sketch_size, power_iters, min_tokens, max_tokens, seed,
      backend, validate, budgets=None):
    b, _, d = tokens.shape
    return _fake_prune_fields(tokens, b, max_tokens, d, sketch_size)


@torch.library.custom_op("eadaprune_kernels::spectral_budget", mutates_args=())
def budget_op(
    tokens: Tensor, sketch_matrix: Optional[Tensor], energy: float, center: bool, sketch_size: int,
    power_iters: int, min_tokens: int, max_tokens: int, seed: int, backend: str, validate: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(budgets [B] int32, singular_values [B,l] float32, total_energy [B] float32, saturated [B] bool)."""
    cfg = _config(energy, center, sketch_size, power_iters, min_tokens, max_tokens, seed, sketch_matrix)
    if tokens.shape[0] == 0:
        return _empty_budget_fields(tokens, sketch_size)
    if validate:
        raise_if_nonfinite(tokens, None, sketch_matrix)
    r = resolve_backend(backend, tokens.device, sketch_size=sketch_size).spectral_budget(tokens, cfg)
    return r.budgets, r.singular_values, r.total_energy, r.saturated


@budget_op.register_fake
def _(tokens, sketch_matrix, energy, center, sketch_size, power_iters, min_tokens, max_tokens, seed, backend,
      validate):
    return _fake_budget_fields(tokens, tokens.shape[0], sketch_size)


def _check_ragged_data(tokens, cu_seqlens, scores, sketch_matrix, validate, total_budget, min_tokens, max_tokens):
    raise_if_invalid_ragged(
        tokens, cu_seqlens, scores, sketch_matrix,
        check_values=validate or cu_seqlens.device.type == "cpu", check_finite=validate,
        total_budget=total_budget, min_tokens=min_tokens, max_tokens=max_tokens,
    )


@torch.library.custom_op("eadaprune_kernels::adaptive_prune_ragged", mutates_args=())
def ragged_prune_op(
    tokens: Tensor, cu_seqlens: Tensor, scores: Optional[Tensor], sketch_matrix: Optional[Tensor], energy: float,
    center: bool, sketch_size: int, power_iters: int, min_tokens: int, max_tokens: int, seed: int, backend: str,
    validate: bool, budgets: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Packed tokens [T, D], cu_seqlens [B + 1] -> the seven fields of prune_op with B images, width
    M = max_tokens and singular values [B, L] (L = sketch_size, already min(sketch_size, D))."""
    cfg = _config(energy, center, sketch_size, power_iters, min_tokens, max_tokens, seed, sketch_matrix)
    _check_ragged_data(tokens, cu_seqlens, scores, sketch_matrix, validate, None, min_tokens, max_tokens)
    impl = resolve_backend(backend, tokens.device, ragged=True, sketch_size=sketch_size)
    r = impl.adaptive_prune_ragged(tokens, cu_seqlens, scores, cfg, budgets)
    return r.tokens, r.indices, r.lengths, r.mask, r.singular_values, r.total_energy, r.saturated


@ragged_prune_op.register_fake
def _(tokens, cu_seqlens, scores, sketch_matrix, energy, center, sketch_size, power_iters, min_tokens, max_tokens,
      seed, backend, validate, budgets=None):
    return _fake_prune_fields(tokens, cu_seqlens.shape[0] - 1, max_tokens, tokens.shape[1], sketch_size)


@torch.library.custom_op("eadaprune_kernels::spectral_budget_ragged", mutates_args=())
def ragged_budget_op(
    tokens: Tensor, cu_seqlens: Tensor, sketch_matrix: Optional[Tensor], energy: float, center: bool,
    sketch_size: int, power_iters: int, min_tokens: int, max_tokens: int, seed: int, backend: str, validate: bool,
    total_budget: Optional[int] = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Packed tokens [T, D], cu_seqlens [B + 1] -> the four fields of budget_op with B images.

    ``total_budget``, when given, is checked against the images' bounds (sum(min_i) <= it <= sum(max_i))
    together with cu_seqlens (it is the first pass of adaptive_prune(..., total_budget=))."""
    cfg = _config(energy, center, sketch_size, power_iters, min_tokens, max_tokens, seed, sketch_matrix)
    _check_ragged_data(tokens, cu_seqlens, None, sketch_matrix, validate, total_budget, min_tokens, max_tokens)
    r = resolve_backend(backend, tokens.device, ragged=True, sketch_size=sketch_size).spectral_budget_ragged(tokens, cu_seqlens, cfg)
    return r.budgets, r.singular_values, r.total_energy, r.saturated


@ragged_budget_op.register_fake
def _(tokens, cu_seqlens, sketch_matrix, energy, center, sketch_size, power_iters, min_tokens, max_tokens, seed,
      backend, validate, total_budget=None):
    return _fake_budget_fields(tokens, cu_seqlens.shape[0] - 1, sketch_size)
