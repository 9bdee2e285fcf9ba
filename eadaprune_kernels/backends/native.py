"""The native backends: one wrapper over either compiled extension.

* ``cpu``  (``eadaprune_kernels._C``, csrc/cpu): the whole pipeline in C++ for CPU tensors: Philox
  sketch, centring, power iterations with CholeskyQR, Jacobi eigensolver on the l x l Gram,
  threshold, selection, gather; parallel over images with ATen's ``at::parallel_for`` and BLAS for the
  big products. Ragged input runs each image on its own rows, runs of equal N together, spread over
  the threads; reading cu_seqlens costs nothing.
* ``cuda`` (``eadaprune_kernels._C_cuda``, csrc/cuda): the same pipeline for CUDA tensors with no host
  synchronisation: cuBLAS (through ATen) for the big products, custom kernels for the rest, on the
  current stream. Ragged input is the exception: each call reads cu_seqlens to the host (one
  synchronisation; the Triton backend is the synchronisation-free ragged path).

Both extensions expose one entry point, ``run`` (python_bindings/bindings.cpp), that takes the
request of :func:`NativeBackend.run` with the resolved configuration. Building: ``pip install
--no-build-isolation -e .`` (setup.py says why it skipped CUDA).
"""

from __future__ import annotations

import importlib

import torch

from ..contract import PipelineConfig
from ..results import BudgetResult, PruneResult

__all__ = ["NativeBackend", "cpu", "cuda"]

_BUILD_HINT = {
    "cpu": "build it with `pip install --no-build-isolation -e .` (needs a C++17 compiler and the installed torch)",
    "cuda": "it is built by `pip install --no-build-isolation -e .` when torch has CUDA and nvcc is found (unless "
            "EADAPRUNE_SKIP_CUDA=1)",
}


class NativeBackend:
    """A backend over one compiled extension module, reporting ``name`` in its results."""

    def __init__(self, extension, name: str):
        self.extension = extension
        self.NAME = name

    def run(self, tokens: torch.Tensor, cu_seqlens: torch.Tensor | None, scores: torch.Tensor | None,
            cfg: PipelineConfig, budgets: torch.Tensor | None, select: bool) -> PruneResult | BudgetResult:
        """The backend entry point (see :mod:`eadaprune_kernels.backends`)."""
        fields = self.extension.run(tokens, cu_seqlens, scores, cfg.sketch_matrix, budgets, cfg.energy, cfg.center,
                                    cfg.sketch_size, cfg.power_iters, cfg.min_tokens, cfg.max_tokens, cfg.seed,
                                    select)
        if select:
            return PruneResult(*fields, backend=self.NAME)
        return BudgetResult(*fields, backend=self.NAME)


def _load(name: str, module: str) -> NativeBackend:
    try:
        extension = importlib.import_module(f"eadaprune_kernels.{module}")
    except ImportError as exc:
        raise ImportError(
            f"the native {name} backend needs the compiled extension eadaprune_kernels.{module}, which is not "
            f"built ({exc}); {_BUILD_HINT[name]}"
        ) from exc
    return NativeBackend(extension, name)


def cpu() -> NativeBackend:
    """The ``cpu`` backend (raises ImportError saying how to build it when the extension is missing)."""
    return _load("cpu", "_C")


def cuda() -> NativeBackend:
    """The ``cuda`` backend (raises ImportError saying how to build it when the extension is missing)."""
    return _load("cuda", "_C_cuda")
