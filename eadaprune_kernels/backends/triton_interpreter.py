"""What the Triton interpreter computes for ``tl.dot``, and what an sm_90 GPU computes instead.

The interpreter (``TRITON_INTERPRET=1``) runs kernels with numpy on the CPU. For ``tl.dot`` it has
two gaps that matter to this project:

1. **bfloat16 is wrong twice.** The interpreter stores bf16 tensors as their uint16 bit patterns and
   multiplies those integers in ``tl.dot``, and it truncates fp32 -> bf16 casts toward zero where the
   GPU rounds to nearest even (``cvt.rn.bf16.f32``; triton 3.6 and 3.8). :func:`install_bf16_fix`
   decodes bf16 operands before the product and rounds the casts; the Triton backend installs it
   whenever it runs interpreted (the kernel splits fp32 operands into bf16 parts with such casts: a
   truncated split would bias every product low).
2. **``input_precision`` is ignored**: every fp32 product is computed in full fp32. On sm_90 (H100,
   H200) a ``wgmma`` with TF32 inputs reads the fp32 registers and drops their low 13 mantissa bits
   (rounding toward zero: a relative error up to 2^-10 per operand, biased low), so a kernel that
   passes in the interpreter can be wrong on the GPU. :func:`emulate_sm90_dot` makes the interpreter
   round the operands as the hardware does, per input precision:

   ============  =====================================================================================
   precision     operands of a product of fp32 tensors, as sm_90 sees them
   ============  =====================================================================================
   ``"tf32"``    each operand truncated to TF32 (low 13 mantissa bits cleared), products summed in fp32
   ``"tf32x3"``  Triton's 3xTF32 split: big = cvt.rna.tf32(a) (round to nearest, ties away),
                 small = a - big; dot(small_a, big_b) + dot(big_a, small_b) (NaN -> 0), then
                 + dot(big_a, big_b), each dot with truncated TF32 operands (triton/lib/Dialect/
                 TritonGPU/Transforms/F32DotTC.cpp; the same decomposition in triton 3.6 and 3.8)
   ``"ieee"``    exact fp32 operands (the FMA path), fp32 sums
   ============  =====================================================================================

   float16 / bfloat16 operands are exact on the tensor cores whatever the precision (products of
   11-bit or 8-bit significands are exact in fp32); float64 operands are exact.

   Its fp32 -> bf16 casts round to nearest even, as the GPU does, like :func:`install_bf16_fix`'s.

What the emulation cannot show (the GPU may still differ from the interpreter in these):

* the order and grouping of the fp32 accumulation inside and between MMA instructions (numpy's
  sgemm sums in its own order);
* approximate arithmetic: ``/`` lowers to ``div.full.f32`` (2 ulp), ``tl.sqrt`` to
  ``sqrt.approx.ftz.f32``, ``tl.exp``/``tl.log`` to approximate instructions; the interpreter rounds
  them correctly;
* FMA contraction of ``a * b + c`` (one rounding on the GPU, two in numpy), and subnormals flushed
  to zero by ``.ftz`` instructions;
* scheduling: races between warps, missing barriers, shared-memory limits, register spills. Those
  need a GPU (``tools/gpu_check.sh``) or ptxas (``tools/aot_compile_triton.py``).
"""

from __future__ import annotations

import contextlib
import functools

import numpy as np

__all__ = ["install_bf16_fix", "install_device_call_fast_path", "emulate_sm90_dot", "sm90_dot", "truncate_to_tf32", "round_to_tf32",
           "round_fp32_to_bf16_bits"]

_TF32_DROPPED_BITS = 13
_TF32_KEEP_MASK = np.uint32(0xFFFFFFFF ^ ((1 << _TF32_DROPPED_BITS) - 1))
_TF32_HALF_ULP = np.uint32(1 << (_TF32_DROPPED_BITS - 1))
_EXPONENT_MASK = np.uint32(0x7F800000)


def truncate_to_tf32(x: np.ndarray) -> np.ndarray:
    """fp32 values with their low 13 mantissa bits cleared (toward zero): what a TF32 MMA reads."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return (bits & _TF32_KEEP_MASK).view(np.float32)


def round_to_tf32(x: np.ndarray) -> np.ndarray:
    """``cvt.rna.tf32.f32``: fp32 values rounded to TF32, to nearest with ties away from zero.

    Adding half a TF32 ulp to the magnitude bits and truncating rounds the magnitude half away from
    zero (a carry into the exponent is the correct result); infinities and NaNs pass unchanged.
    """
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    special = (bits & _EXPONENT_MASK) == _EXPONENT_MASK
    rounded = ((bits + _TF32_HALF_ULP) & _TF32_KEEP_MASK).astype(np.uint32)
    return np.where(special, bits, rounded).view(np.float32)


def _decode(data: np.ndarray, dtype) -> np.ndarray:
    """Operand values as numpy floats: bf16 bit patterns (uint16) widened to fp32, others as they are."""
    import triton.language as tl

    if dtype == tl.bfloat16 and data.dtype == np.uint16:
        return (data.astype(np.uint32) << np.uint32(16)).view(np.float32)
    return data


def sm90_dot(a: np.ndarray, a_dtype, b: np.ndarray, b_dtype, acc: np.ndarray, precision: str) -> np.ndarray:
    """acc + a @ b as an sm_90 tensor core computes it for triton dtypes a_dtype / b_dtype and the
    input precision ``precision`` ("tf32", "tf32x3" or "ieee"); see the module docstring."""
    import triton.language as tl

    a, b = _decode(a, a_dtype), _decode(b, b_dtype)
    out = acc.dtype
    if a_dtype == tl.float32 and b_dtype == tl.float32:
        if precision == "tf32":
            return acc + np.matmul(truncate_to_tf32(a), truncate_to_tf32(b), dtype=np.float32).astype(out)
        if precision == "tf32x3":
            a_big, b_big = round_to_tf32(a), round_to_tf32(b)
            a_small, b_small = (a - a_big).astype(np.float32), (b - b_big).astype(np.float32)
            part = np.matmul(truncate_to_tf32(a_small), b_big, dtype=np.float32)
            part = part + np.matmul(a_big, truncate_to_tf32(b_small), dtype=np.float32)
            part = np.where(np.isnan(part), np.float32(0), part)
            part = part + np.matmul(a_big, b_big, dtype=np.float32)
            return acc + part.astype(out)
        if precision != "ieee":
            raise ValueError(f"precision: expected 'tf32', 'tf32x3' or 'ieee', got {precision!r}")
    if a.dtype == np.float64 or b.dtype == np.float64:
        return acc + np.matmul(a, b, dtype=np.float64).astype(out)
    # fp16 / bf16 (exact products) and ieee fp32
    return acc + np.matmul(a.astype(np.float32), b.astype(np.float32), dtype=np.float32).astype(out)


def _precision_name(input_precision) -> str:
    name = getattr(input_precision, "name", str(input_precision)).lower()
    return name.rsplit(".", 1)[-1]


def _builder_class():
    from triton.runtime.interpreter import InterpreterBuilder

    return InterpreterBuilder


def _rounding_bf16_trunc(plain):
    """``create_fp_trunc`` whose fp32 -> bf16 casts round to nearest even (``cvt.rn.bf16.f32``), the
    other casts left to ``plain``."""
    import triton.language as tl
    from triton.runtime.interpreter import TensorHandle

    @functools.wraps(plain)
    def create_fp_trunc(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            return TensorHandle(round_fp32_to_bf16_bits(src.data), tl.bfloat16)
        return plain(self, src, dst_type)

    create_fp_trunc.rounds_bf16 = True
    return create_fp_trunc


def install_bf16_fix() -> None:
    """Makes the interpreter's bfloat16 arithmetic the GPU's (idempotent; interpreter only): ``tl.dot``
    decodes bf16 operands (the interpreter multiplies their uint16 bit patterns) and fp32 -> bf16
    casts round to nearest even (the interpreter truncates them). The wrapped ``create_dot`` keeps the
    interpreter's own arithmetic otherwise (full fp32 for every precision).
    """
    from triton.runtime.interpreter import TensorHandle

    cls = _builder_class()
    if not getattr(cls.create_fp_trunc, "rounds_bf16", False):
        cls.create_fp_trunc = _rounding_bf16_trunc(cls.create_fp_trunc)
    current = cls.create_dot
    if getattr(current, "decodes_bf16", False):
        return

    @functools.wraps(current)
    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        import triton.language as tl

        if a.dtype == tl.bfloat16:
            a = TensorHandle(_decode(a.data, a.dtype), tl.float32)
        if b.dtype == tl.bfloat16:
            b = TensorHandle(_decode(b.data, b.dtype), tl.float32)
        return current(self, a, b, d, input_precision, max_num_imprecise_acc)

    create_dot.decodes_bf16 = True
    cls.create_dot = create_dot


def _language_modules(fn) -> frozenset:
    """The triton.language modules a function's globals hold (what the interpreter patches for it)."""
    import triton.language as tl

    return frozenset(id(v) for v in fn.__globals__.values() if v is tl or v is tl.core)


def install_device_call_fast_path() -> None:
    """Makes the interpreter's device-function calls skip re-patching triton.language (idempotent).

    The interpreter patches ``triton.language`` when a launch starts (and restores it when it ends),
    then again on EVERY call of a jitted device function: an ``inspect.getmembers`` over the language
    modules each time, a third of the time of the fused kernel's many small tasks. Inside a launch the
    modules are already patched, identically: the re-patch is skipped when the device function sees no
    language module that the launch (or an earlier device call of it) has not patched. Nothing else changes (the function is run as the
    interpreter runs it: rewritten, errors wrapped in InterpreterError).
    """
    from triton.runtime import interpreter

    executor, function = interpreter.GridExecutor, interpreter.InterpretedFunction
    if getattr(function.__call__, "skips_repatching", False):
        return
    launch_call, device_call = executor.__call__, function.__call__
    patched: list[set] = []  # the language modules patched by the launches in progress (innermost last)

    @functools.wraps(launch_call)
    def launch(self, *args, **kwargs):
        patched.append(set(_language_modules(self.fn)))
        try:
            return launch_call(self, *args, **kwargs)
        finally:
            patched.pop()

    @functools.wraps(device_call)
    def call(self, *args, **kwargs):
        if not patched:
            return device_call(self, *args, **kwargs)
        modules = _language_modules(self.fn)
        if not modules <= patched[-1]:  # e.g. tl.sum, whose module holds tl.core: patched by this call,
            patched[-1] |= modules  # and the interpreter never undoes a device call's patches
            return device_call(self, *args, **kwargs)
        fn = self.rewrite()
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            raise interpreter.InterpreterError(repr(e)) from e

    call.skips_repatching = True
    executor.__call__ = launch
    function.__call__ = call


def round_fp32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """fp32 values rounded to bfloat16, to nearest with ties to even (``cvt.rn.bf16.f32``), as the
    uint16 bit patterns the interpreter stores bf16 in; NaN stays NaN."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    nan = np.isnan(x)
    return np.where(nan, (bits >> np.uint32(16)) | np.uint32(0x40), rounded).astype(np.uint16)


@contextlib.contextmanager
def emulate_sm90_dot(enabled: bool = True):
    """Within the block the interpreter computes as sm_90 does: ``tl.dot`` rounds its operands per
    input precision (see :func:`sm90_dot`), and fp32 -> bf16 casts round to nearest even, as
    ``cvt.rn.bf16.f32`` does. The previous methods are restored on exit.

    ``enabled=False`` installs what the backend's interpreter computes without the emulation (every
    fp32 ``tl.dot`` in full fp32 whatever its input precision; bf16 operands decoded and casts
    rounded, as :func:`install_bf16_fix` makes them): what a test without the emulation would see.
    """
    from triton.runtime.interpreter import TensorHandle

    cls = _builder_class()
    previous_dot, previous_trunc = cls.create_dot, cls.create_fp_trunc

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        precision = _precision_name(input_precision) if enabled else "ieee"
        return TensorHandle(sm90_dot(a.data, a.dtype, b.data, b.dtype, d.data, precision), d.dtype.scalar)

    create_dot.decodes_bf16 = True
    create_dot.emulates_sm90 = enabled
    cls.create_dot = create_dot
    if not getattr(previous_trunc, "rounds_bf16", False):
        cls.create_fp_trunc = _rounding_bf16_trunc(previous_trunc)
    try:
        yield
    finally:
        cls.create_dot, cls.create_fp_trunc = previous_dot, previous_trunc
