"""The native CUDA backend (csrc/cuda, built as ``eadaprune_kernels._C_cuda``).

Same interface and semantics as :mod:`eadaprune_kernels.reference` for CUDA tensors, with no host
synchronisation: cuBLAS (through ATen) for the big products; the preparation pass, CholeskyQR
factorisations, the Jacobi eigensolver on the l x l Gram (one CTA per image), the threshold, the
selection and the gather are custom kernels on the current stream. Importing this module raises
ImportError when the extension is not built (CPU-only torch, no nvcc, or EADAPRUNE_SKIP_CUDA=1).
"""

from __future__ import annotations

import torch

from ._validation import PipelineConfig
from .results import BudgetResult, PruneResult

try:
    from . import _C_cuda
except ImportError as exc:  # pragma: no cover - depends on the build
    raise ImportError(
        "the native CUDA backend needs the compiled extension eadaprune_kernels._C_cuda, which is not built "
        f"({exc}); it is built by `pip install --no-build-isolation -e .` when torch has CUDA and nvcc is "
        "found (unless EADAPRUNE_SKIP_CUDA=1)"
    ) from exc

__all__ = ["NAME", "adaptive_prune", "spectral_budget"]

NAME = "cuda"


def _config_args(cfg: PipelineConfig) -> tuple:
    return (cfg.energy, cfg.center, cfg.sketch_size, cfg.power_iters, cfg.min_tokens, cfg.max_tokens,
            cfg.seed, cfg.sketch_matrix)


def spectral_budget(tokens: torch.Tensor, cfg: PipelineConfig) -> BudgetResult:
    """Budgets for checked CUDA tokens [B, N, D]; see :func:`eadaprune_kernels.reference.spectral_budget`."""
    budgets, sigma, energy, saturated = _C_cuda.spectral_budget(tokens, *_config_args(cfg))
    return BudgetResult(budgets=budgets, singular_values=sigma, total_energy=energy, saturated=saturated,
                        backend=NAME)


def adaptive_prune(tokens: torch.Tensor, scores: torch.Tensor | None, cfg: PipelineConfig,
                   budgets: torch.Tensor | None = None) -> PruneResult:
    """Budgets, selection and gather for checked CUDA tokens [B, N, D]; see the reference.

    ``budgets`` ([B] int32 in [min_tokens, max_tokens]) replaces the computed budgets, as the reference.
    """
    kept, indices, lengths, mask, sigma, energy, saturated = _C_cuda.adaptive_prune(
        tokens, scores, *_config_args(cfg), budgets)
    return PruneResult(tokens=kept, indices=indices, lengths=lengths, mask=mask, singular_values=sigma,
                       total_energy=energy, saturated=saturated, backend=NAME)
