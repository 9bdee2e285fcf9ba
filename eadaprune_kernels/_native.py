"""The Python side of the native backends: one wrapper over either compiled extension.

``eadaprune_kernels._C`` (CPU) and ``eadaprune_kernels._C_cuda`` (CUDA) expose the same four
functions with the same arguments (see python_bindings/bindings.cpp); :class:`NativeBackend` turns
their tuples into result objects. :mod:`~eadaprune_kernels.cpu_backend` and
:mod:`~eadaprune_kernels.cuda_backend` each bind one extension and document their device's costs.
"""

from __future__ import annotations

from types import ModuleType

import torch

from ._validation import PipelineConfig
from .results import BudgetResult, PruneResult


def _config_args(cfg: PipelineConfig) -> tuple:
    return (cfg.energy, cfg.center, cfg.sketch_size, cfg.power_iters, cfg.min_tokens, cfg.max_tokens,
            cfg.seed, cfg.sketch_matrix)


class NativeBackend:
    """The backend functions over one compiled extension module, reporting ``name`` in results."""

    def __init__(self, extension: ModuleType, name: str):
        self._ext = extension
        self._name = name

    def _budget_result(self, fields) -> BudgetResult:
        budgets, sigma, energy, saturated = fields
        return BudgetResult(budgets=budgets, singular_values=sigma, total_energy=energy, saturated=saturated,
                            backend=self._name)

    def _prune_result(self, fields) -> PruneResult:
        kept, indices, lengths, mask, sigma, energy, saturated = fields
        return PruneResult(tokens=kept, indices=indices, lengths=lengths, mask=mask, singular_values=sigma,
                           total_energy=energy, saturated=saturated, backend=self._name)

    def spectral_budget(self, tokens: torch.Tensor, cfg: PipelineConfig) -> BudgetResult:
        """Budgets for checked tokens [B, N, D]; see :func:`eadaprune_kernels.reference.spectral_budget`."""
        return self._budget_result(self._ext.spectral_budget(tokens, *_config_args(cfg)))

    def adaptive_prune(self, tokens: torch.Tensor, scores: torch.Tensor | None, cfg: PipelineConfig,
                       budgets: torch.Tensor | None = None) -> PruneResult:
        """Budgets, selection and gather for checked tokens [B, N, D]; ``budgets`` ([B] in
        [min_tokens, max_tokens]) replaces the computed budgets, as in the reference."""
        return self._prune_result(self._ext.adaptive_prune(tokens, scores, *_config_args(cfg), budgets))

    def spectral_budget_ragged(self, tokens: torch.Tensor, cu_seqlens: torch.Tensor,
                               cfg: PipelineConfig) -> BudgetResult:
        """Budgets of packed tokens [T, D] (image b = rows cu_seqlens[b]:cu_seqlens[b + 1]); ``cfg``
        holds the batch-wide widths (L = cfg.sketch_size, M = cfg.max_tokens)."""
        return self._budget_result(self._ext.spectral_budget_ragged(tokens, cu_seqlens, *_config_args(cfg)))

    def adaptive_prune_ragged(self, tokens: torch.Tensor, cu_seqlens: torch.Tensor, scores: torch.Tensor | None,
                              cfg: PipelineConfig, budgets: torch.Tensor | None = None) -> PruneResult:
        """Budgets, selection and padded gather of packed tokens [T, D] (scores [T] or None); indices
        are relative to each image's start; ``budgets`` [B] (each in [min_i, max_i]) replaces the
        computed ones."""
        return self._prune_result(
            self._ext.adaptive_prune_ragged(tokens, cu_seqlens, scores, *_config_args(cfg), budgets))
