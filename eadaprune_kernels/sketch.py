"""The Gaussian sketch Omega shared by every backend.

Omega is a D x l matrix of standard normal samples fixed by ``seed``. Element (i, j) is
Triton's ``tl.randn(seed, offset)`` with ``offset = j * D + i`` (the column-major position of the
element), so:

* the fused Triton kernel regenerates any tile of Omega in registers and never reads it from memory;
* the first l columns of Omega do not depend on l (a larger sketch only adds columns);
* every image of a call, and every backend, uses the same matrix for the same ``seed``.

``tl.randn`` is Philox4x32-10 keyed by ``(seed_lo, seed_hi)`` on the counter
``(offset, 0, 0, 0)``, followed by one Box-Muller transform of the first two output words. This
module reproduces the integer part bit for bit with int64 arithmetic (32-bit products split into
16-bit halves, so nothing overflows) and the float part with the same float32 operations, which
agree with the GPU to within a few float32 ulps (libm's ``log``/``cos`` are not bit-identical
across devices).
"""

from __future__ import annotations

import torch

__all__ = ["gaussian_sketch", "philox_randn", "MAX_SKETCH_ELEMENTS", "MAX_SEED"]

# Philox4x32 constants (Salmon et al., SC'11), as in triton/language/random.py.
PHILOX_KEY_A = 0x9E3779B9
PHILOX_KEY_B = 0xBB67AE85
PHILOX_ROUND_A = 0xD2511F53
PHILOX_ROUND_B = 0xCD9E8D57
PHILOX_ROUNDS = 10

# Offsets are int32 in the kernels: the sketch may hold at most 2**31 - 1 elements.
MAX_SKETCH_ELEMENTS = 2**31 - 1
MAX_SEED = 2**63 - 1

_MASK32 = 0xFFFFFFFF
_MASK16 = 0xFFFF


def _mul_hi_lo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32-bit words of the 64-bit product of the constant ``a`` and uint32 values ``b``.

    ``b`` is held in an int64 tensor with values in [0, 2**32). Splitting both factors into 16-bit
    halves keeps every partial product below 2**50, so the int64 arithmetic is exact.
    """
    a_hi, a_lo = a >> 16, a & _MASK16
    b_hi, b_lo = b >> 16, b & _MASK16
    middle = a_hi * b_lo + a_lo * b_hi  # < 2**33
    low_full = (middle & _MASK16) * 65536 + a_lo * b_lo  # < 2**49
    hi = a_hi * b_hi + (middle >> 16) + (low_full >> 32)
    return hi & _MASK32, low_full & _MASK32


def _uint32_to_uniform(x: torch.Tensor) -> torch.Tensor:
    """triton.language.random.uint_to_uniform_float for 32-bit words, in float32."""
    signed = torch.where(x >= 2**31, x - 2**32, x)  # bitcast uint32 -> int32
    folded = torch.where(signed < 0, -signed - 1, signed)
    return folded.to(torch.float32) * torch.tensor(4.6566127342e-10, dtype=torch.float32)


def philox_randn(seed: int, offsets: torch.Tensor) -> torch.Tensor:
    """``tl.randn(seed, offsets)`` for int32 ``offsets`` (any shape), as float32 on their device."""
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed: expected an int in [0, 2**63 - 1], got {seed!r}")
    c0 = offsets.to(torch.int64) & _MASK32
    c1 = torch.zeros_like(c0)
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    k0 = seed & _MASK32
    k1 = (seed >> 32) & _MASK32
    for _ in range(PHILOX_ROUNDS):
        hi_b, lo_b = _mul_hi_lo(PHILOX_ROUND_B, c2)
        hi_a, lo_a = _mul_hi_lo(PHILOX_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + PHILOX_KEY_A) & _MASK32
        k1 = (k1 + PHILOX_KEY_B) & _MASK32
    u1 = torch.clamp_min(_uint32_to_uniform(c0), 1.0e-7)
    u2 = _uint32_to_uniform(c1)
    theta = torch.tensor(6.283185307179586, dtype=torch.float32) * u2
    radius = torch.sqrt(torch.tensor(-2.0, dtype=torch.float32) * torch.log(u1))
    return radius * torch.cos(theta)


def gaussian_sketch(
    num_features: int,
    sketch_size: int,
    seed: int = 0,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The D x l Gaussian sketch Omega that every backend uses for ``seed``.

    Args:
        num_features: D, the number of rows (token features).
        sketch_size: l, the number of columns.
        seed: an int in [0, 2**63 - 1].
        device: where to build it (default: CPU).
        dtype: floating dtype of the result; samples are generated in float32.

    Returns:
        Tensor [num_features, sketch_size]; element (i, j) is ``tl.randn(seed, j * D + i)``.
    """
    for name, value in (("num_features", num_features), ("sketch_size", sketch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}: expected a positive int, got {value!r}")
    if num_features * sketch_size > MAX_SKETCH_ELEMENTS:
        raise ValueError(
            f"num_features * sketch_size: expected at most 2**31 - 1 elements (int32 offsets), "
            f"got {num_features} * {sketch_size} = {num_features * sketch_size}"
        )
    rows = torch.arange(num_features, device=device, dtype=torch.int64)
    cols = torch.arange(sketch_size, device=device, dtype=torch.int64)
    offsets = cols[None, :] * num_features + rows[:, None]
    return philox_randn(seed, offsets).to(dtype)
