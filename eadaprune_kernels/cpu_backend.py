"""The native C++ CPU backend (csrc/cpu, built as ``eadaprune_kernels._C``).

Same interface and semantics as :mod:`eadaprune_kernels.reference` for CPU tensors: the whole
pipeline (Philox sketch, centring, power iterations with CholeskyQR, Jacobi eigensolver on the
l x l Gram, threshold, selection, gather) runs in C++, parallel over images with ATen's
``at::parallel_for`` and BLAS for the big products. Importing this module raises ImportError when
the extension is not built.
"""

from __future__ import annotations

import torch

from ._validation import PipelineConfig
from .results import BudgetResult, PruneResult

try:
    from . import _C
except ImportError as exc:  # pragma: no cover - depends on the build
    raise ImportError(
        "the native CPU backend needs the compiled extension eadaprune_kernels._C, which is not built "
        f"({exc}); build it with `pip install --no-build-isolation -e .` (needs a C++17 compiler and the "
        "installed torch)"
    ) from exc

__all__ = ["NAME", "adaptive_prune", "spectral_budget"]

NAME = "cpu"


def _config_args(cfg: PipelineConfig) -> tuple:
    return (cfg.energy, cfg.center, cfg.sketch_size, cfg.power_iters, cfg.min_tokens, cfg.max_tokens,
            cfg.seed, cfg.sketch_matrix)


def spectral_budget(tokens: torch.Tensor, cfg: PipelineConfig) -> BudgetResult:
    """Budgets for checked CPU tokens [B, N, D]; see :func:`eadaprune_kernels.reference.spectral_budget`."""
    budgets, sigma, energy, saturated = _C.spectral_budget(tokens, *_config_args(cfg))
    return BudgetResult(budgets=budgets, singular_values=sigma, total_energy=energy, saturated=saturated,
                        backend=NAME)


def adaptive_prune(tokens: torch.Tensor, scores: torch.Tensor | None, cfg: PipelineConfig,
                   budgets: torch.Tensor | None = None) -> PruneResult:
    """Budgets, selection and gather for checked CPU tokens [B, N, D]; see the reference.

    ``budgets`` ([B] int32 in [min_tokens, max_tokens]) replaces the computed budgets, as the reference.
    """
    kept, indices, lengths, mask, sigma, energy, saturated = _C.adaptive_prune(
        tokens, scores, *_config_args(cfg), budgets)
    return PruneResult(tokens=kept, indices=indices, lengths=lengths, mask=mask, singular_values=sigma,
                       total_energy=energy, saturated=saturated, backend=NAME)
