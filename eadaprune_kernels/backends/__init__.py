"""The one place that picks and runs a backend.

A backend is an object (a module, or the native wrapper) with ``NAME`` and one entry point::

    run(tokens, cu_seqlens, scores, cfg, budgets, select) -> PruneResult (select) or BudgetResult

for checked tokens: dense [B, N, D] with ``cu_seqlens=None`` and scores [B, N], or packed [T, D] with
cu_seqlens [B + 1] and scores [T]; a :class:`~eadaprune_kernels.contract.PipelineConfig`; ``budgets``
[B] replacing the computed budgets (or None). Ragged input is the general case: every shipped backend
takes both layouts (a backend may declare ``SUPPORTS_RAGGED = False``; "auto" then skips it for ragged
calls and naming it raises :class:`RaggedUnsupported`). A backend may declare ``MAX_SKETCH_SIZE``
(with ``MAX_SKETCH_SIZE_REASON``): larger sketches skip it under "auto" and raise when it is named.

Backends load lazily, once. ``backend="auto"`` takes the first available backend of ``AUTO_ORDER``
for the tensor's device type; the environment variable ``EADAPRUNE_BACKEND`` replaces "auto" by a
fixed name (an explicit ``backend=`` argument still wins). A backend that is named and cannot run
raises :class:`BackendUnavailable` (a RuntimeError) with the reason: there is no silent fallback.
Every result carries the name of the backend that ran.

Layout: ``reference`` (the definition), ``triton_kernel`` (the fused kernel and its launcher),
``triton_interpreter`` (what the Triton interpreter computes and how the GPU differs), ``native``
(the C++ CPU and CUDA extensions).
"""

from __future__ import annotations

import functools
import importlib
import os

import torch

__all__ = ["BACKENDS", "AUTO_ORDER", "ENV_VAR", "BackendUnavailable", "RaggedUnsupported",
           "available_backends", "max_sketch_size", "resolve_backend", "resolve_backend_name", "supports_ragged",
           "run"]

ENV_VAR = "EADAPRUNE_BACKEND"

# name -> (module[:factory], device types it runs on)
BACKENDS: dict[str, tuple[str, frozenset[str]]] = {
    "reference": ("eadaprune_kernels.backends.reference", frozenset({"cpu", "cuda"})),
    "cpu": ("eadaprune_kernels.backends.native:cpu", frozenset({"cpu"})),
    "cuda": ("eadaprune_kernels.backends.native:cuda", frozenset({"cuda"})),
    "triton": ("eadaprune_kernels.backends.triton_kernel", frozenset({"cuda", "cpu"})),
}

# Fastest first, per device type.
AUTO_ORDER: dict[str, tuple[str, ...]] = {
    "cpu": ("cpu", "reference"),
    "cuda": ("triton", "cuda", "reference"),
}


class BackendUnavailable(RuntimeError):
    """A backend that was asked for cannot run here; the message says why."""


class RaggedUnsupported(BackendUnavailable, NotImplementedError):
    """A backend that was asked for does not take ragged input (cu_seqlens / a list of images)."""


@functools.cache
def _load(name: str):
    path, _ = BACKENDS[name]
    module_name, _, factory = path.partition(":")
    try:
        module = importlib.import_module(module_name)
        return getattr(module, factory)() if factory else module
    except ImportError as exc:  # missing optional dependency or unbuilt extension
        raise BackendUnavailable(f"backend {name!r} is unavailable: {exc}") from exc


def _is_available(name: str) -> bool:
    try:
        _load(name)
    except BackendUnavailable:
        return False
    return True


def supports_ragged(name: str) -> bool:
    """Whether the (importable) backend ``name`` takes packed ragged input (``SUPPORTS_RAGGED``, default True)."""
    return bool(getattr(_load(name), "SUPPORTS_RAGGED", True))


def max_sketch_size(name: str) -> int | None:
    """The largest l the (importable) backend ``name`` takes: its ``MAX_SKETCH_SIZE`` (None: no limit)."""
    return getattr(_load(name), "MAX_SKETCH_SIZE", None)


def _takes(name: str, ragged: bool, sketch_size: int) -> bool:
    limit = max_sketch_size(name)
    return (not ragged or supports_ragged(name)) and (limit is None or sketch_size <= limit)


def available_backends(device: torch.device | str = "cpu", ragged: bool = False, sketch_size: int = 1) -> list[str]:
    """Names of the backends that can run on ``device`` (taking ragged input if asked, and a sketch of
    ``sketch_size`` columns), fastest first."""
    device_type = torch.device(device).type
    return [name for name in AUTO_ORDER.get(device_type, ())
            if _is_available(name) and _takes(name, ragged, sketch_size)]


@torch.compiler.assume_constant_result
def resolve_backend_name(backend: str, device_type: str, ragged: bool = False, sketch_size: int = 1) -> str:
    """The name of the backend that ``backend`` ("auto" or a name) resolves to on ``device_type``.

    With ``ragged`` the backend must take packed ragged input; a backend whose ``MAX_SKETCH_SIZE`` is
    below ``sketch_size`` (the resolved l) is skipped by "auto" and raises :class:`BackendUnavailable`
    when named.

    Marked as a constant for torch.compile: it reads only the arguments, the environment and which
    modules import, so it runs once at trace time and never breaks the graph.
    """
    if not isinstance(backend, str):
        raise TypeError(f"backend: expected a str, got {type(backend).__name__} {backend!r}")
    if backend == "auto":
        backend = os.environ.get(ENV_VAR, "auto") or "auto"
        source = f" (from ${ENV_VAR})" if backend != "auto" else ""
    else:
        source = ""
    if backend == "auto":
        for name in AUTO_ORDER.get(device_type, ()):
            if _is_available(name) and _takes(name, ragged, sketch_size):
                return name
        what = "ragged input" if ragged else "a backend"
        raise BackendUnavailable(
            f"backend 'auto': no backend runs {what} with l = {sketch_size} on device type {device_type!r}"
        )
    if backend not in BACKENDS:
        raise ValueError(f"backend{source}: expected 'auto' or one of {sorted(BACKENDS)}, got {backend!r}")
    _, device_types = BACKENDS[backend]
    if device_type not in device_types:
        raise BackendUnavailable(
            f"backend {backend!r}{source} runs on {sorted(device_types)} tensors, got a {device_type} tensor"
        )
    _load(backend)  # raises BackendUnavailable with the reason
    if ragged and not supports_ragged(backend):
        raise RaggedUnsupported(
            f"backend {backend!r}{source} does not support ragged input (packed tokens with cu_seqlens, or a "
            f"list of images); use another backend, or pad the images to one N yourself"
        )
    limit = max_sketch_size(backend)
    if limit is not None and sketch_size > limit:
        why = getattr(_load(backend), "MAX_SKETCH_SIZE_REASON", "")
        raise BackendUnavailable(
            f"backend {backend!r}{source} takes l = min(sketch_size, N, D) up to {limit}{f' ({why})' if why else ''}, "
            f"got l = {sketch_size}; pass a smaller sketch_size or another backend"
        )
    return backend


def resolve_backend(backend: str, device: torch.device | str, ragged: bool = False, sketch_size: int = 1):
    """The backend object to run for ``backend`` ("auto" or a name) on ``device`` (ragged input and a
    sketch of ``sketch_size`` columns)."""
    return _load(resolve_backend_name(backend, torch.device(device).type, ragged, sketch_size))


def run(name: str, tokens, cu_seqlens, scores, cfg, budgets, select: bool):
    """Runs the backend ``name`` (see the module docstring for the arguments). ``name`` is resolved
    again for these tensors (cached: device type, ragged input and the sketch size checked against the
    backend), so a direct caller of the custom ops gets the same errors as the public functions."""
    name = resolve_backend_name(name, tokens.device.type, cu_seqlens is not None, cfg.sketch_size)
    return _load(name).run(tokens, cu_seqlens, scores, cfg, budgets, select)
