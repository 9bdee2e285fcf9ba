"""Shared test set-up.

* Without a CUDA device, Triton kernels run under the interpreter: TRITON_INTERPRET=1 must be set
  before triton is first imported, so it is set here, before any test module imports it.
* On those machines every test runs with the interpreter computing as an sm_90 GPU does
  (:func:`eadaprune_kernels.backends.triton_interpreter.emulate_sm90_dot`: tl.dot rounds its operands per
  input precision, e.g. plain TF32 truncates fp32 operands; fp32 -> bf16 casts round to nearest), so
  a precision choice that is wrong on the GPU fails here too. ``EADAPRUNE_EMULATE_SM90=0`` runs the
  plain interpreter instead (full fp32 for every tl.dot), to compare.
* Every torch.empty / torch.empty_like made while a test runs is filled with poison (NaN for floating
  dtypes, a sentinel for integers, True for bool), so an output element that a backend never wrote
  shows up instead of passing by luck (the habit of flash-linear-attention's test suite).
"""

import importlib.util
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

INT_POISON = -7777

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1" and importlib.util.find_spec("triton") is not None
EMULATE_SM90 = INTERPRETING and os.environ.get("EADAPRUNE_EMULATE_SM90", "1") != "0"


@pytest.fixture(autouse=True)
def gpu_faithful_interpreter():
    """The Triton interpreter rounds as sm_90 does for the whole test (see the module docstring)."""
    if not EMULATE_SM90:
        yield
        return
    from eadaprune_kernels.backends.triton_interpreter import emulate_sm90_dot

    with emulate_sm90_dot():
        yield


def _poison(t: torch.Tensor) -> torch.Tensor:
    if t.dtype.is_floating_point or t.dtype.is_complex:
        return t.fill_(float("nan"))
    if t.dtype == torch.bool:
        return t.fill_(True)
    return t.fill_(INT_POISON)


@pytest.fixture(autouse=True)
def poison_uninitialised_memory(monkeypatch):
    real_empty, real_empty_like = torch.empty, torch.empty_like

    def empty(*args, **kwargs):
        return _poison(real_empty(*args, **kwargs))

    def empty_like(*args, **kwargs):
        return _poison(real_empty_like(*args, **kwargs))

    monkeypatch.setattr(torch, "empty", empty)
    monkeypatch.setattr(torch, "empty_like", empty_like)
    yield
