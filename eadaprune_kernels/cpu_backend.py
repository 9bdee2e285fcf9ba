"""The native C++ CPU backend (csrc/cpu, built as ``eadaprune_kernels._C``).

Same interface and semantics as :mod:`eadaprune_kernels.reference` for CPU tensors: the whole
pipeline (Philox sketch, centring, power iterations with CholeskyQR, Jacobi eigensolver on the
l x l Gram, threshold, selection, gather) runs in C++, parallel over images with ATen's
``at::parallel_for`` and BLAS for the big products. Ragged input (``SUPPORTS_RAGGED``) runs each
image on its own rows, images spread over the threads. Importing this module raises ImportError when
the extension is not built.
"""

from __future__ import annotations

from ._native import NativeBackend

try:
    from . import _C
except ImportError as exc:  # pragma: no cover - depends on the build
    raise ImportError(
        "the native CPU backend needs the compiled extension eadaprune_kernels._C, which is not built "
        f"({exc}); build it with `pip install --no-build-isolation -e .` (needs a C++17 compiler and the "
        "installed torch)"
    ) from exc

__all__ = ["NAME", "SUPPORTS_RAGGED", "adaptive_prune", "spectral_budget", "adaptive_prune_ragged",
           "spectral_budget_ragged"]

NAME = "cpu"
SUPPORTS_RAGGED = True


_BACKEND = NativeBackend(_C, NAME)
spectral_budget = _BACKEND.spectral_budget
adaptive_prune = _BACKEND.adaptive_prune
spectral_budget_ragged = _BACKEND.spectral_budget_ragged
adaptive_prune_ragged = _BACKEND.adaptive_prune_ragged
