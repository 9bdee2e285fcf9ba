"""The native CUDA backend (csrc/cuda, built as ``eadaprune_kernels._C_cuda``).

Same interface and semantics as :mod:`eadaprune_kernels.reference` for CUDA tensors, with no host
synchronisation: cuBLAS (through ATen) for the big products; the preparation pass, CholeskyQR
factorisations, the Jacobi eigensolver on the l x l Gram (one CTA per image), the threshold, the
selection and the gather are custom kernels on the current stream. Ragged input (``SUPPORTS_RAGGED``)
is the exception: it costs one host synchronisation, reading cu_seqlens to the host (the Triton backend
is the synchronisation-free ragged path). Importing this module raises
ImportError when the extension is not built (CPU-only torch, no nvcc, or EADAPRUNE_SKIP_CUDA=1).
"""

from __future__ import annotations

from ._native import NativeBackend

try:
    from . import _C_cuda
except ImportError as exc:  # pragma: no cover - depends on the build
    raise ImportError(
        "the native CUDA backend needs the compiled extension eadaprune_kernels._C_cuda, which is not built "
        f"({exc}); it is built by `pip install --no-build-isolation -e .` when torch has CUDA and nvcc is "
        "found (unless EADAPRUNE_SKIP_CUDA=1)"
    ) from exc

__all__ = ["NAME", "SUPPORTS_RAGGED", "adaptive_prune", "spectral_budget", "adaptive_prune_ragged",
           "spectral_budget_ragged"]

NAME = "cuda"
SUPPORTS_RAGGED = True


_BACKEND = NativeBackend(_C_cuda, NAME)
spectral_budget = _BACKEND.spectral_budget
adaptive_prune = _BACKEND.adaptive_prune
spectral_budget_ragged = _BACKEND.spectral_budget_ragged
adaptive_prune_ragged = _BACKEND.adaptive_prune_ragged
