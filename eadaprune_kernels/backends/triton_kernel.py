"""The fused Triton backend: the whole E-AdaPrune pipeline in ONE kernel launch per call.

Same contract as :mod:`eadaprune_kernels.backends.reference` (read its docstring for the semantics): budgets,
sketched spectrum, exact centred energy, flat / saturated / non-finite images, leverage or given
scores, selection with ties to the lower index and the padded gather. One program per image
(grid = (B,)); every output element is written by the kernel, outputs and scratch come from
``torch.empty``; the launcher reads no tensor data (no host synchronisation, CUDA-graph capturable).

On CPU tensors the backend runs only under the Triton interpreter: ``TRITON_INTERPRET=1`` must be
set before :mod:`triton` is first imported. The interpreter is not the GPU (it computes ``tl.dot`` in
full fp32 and mishandles bf16): see :mod:`eadaprune_kernels.backends.triton_interpreter`, whose bf16 fix is
installed before every interpreted launch and whose sm_90 emulation the tests run under.

Dtypes: the spectrum is computed in fp32 for every dtype; the gathered tokens are copied bit-exactly
in the input dtype; float64 scores are compared in fp64, other scores in fp32. The products with X
(:func:`kernel_settings`): float16 / bfloat16 tokens stay exact in their dtype and the fp32 operand
is split into 16-bit parts (the mean enters as a rank-1 correction); float32 tokens, and float64
tokens scaled by their power of two in fp64 and rounded, are centred in fp32 registers and multiplied
in 3xTF32. Never plain TF32, which truncates fp32 operands on sm_90 (every sigma ~7e-4 low).

Workspace (``torch.empty``, fp32, per image): Q [N, LP], W [D, LP] (first holds the generated
sketch), mu [D], leverage [N], with LP = max(16, next_pow2(l)). Per call that is
B * 4 * (N + D) * (LP + 1) bytes: 39 MB at B=64, N=576, D=1024, l=128.

Ragged input (packed tokens [T, D], cu_seqlens [B + 1]) runs in the same single launch: program b
loads its rows [cu_seqlens[b], cu_seqlens[b + 1]) (clamped to [0, T]; no host read of cu_seqlens), and
its Q and leverage scratch are the same rows of [T, LP] and [T], so the scratch is
4 * (T * (LP + 1) + B * D * (LP + 1)) bytes, sized from the shapes alone. An image of N_i tokens
uses l_i = min(L, N_i) columns of the same Omega and budget bounds [min(min_tokens, max_i), max_i],
max_i = min(M, N_i); its cost is that of a dense image of N_i tokens.

Numerics (why these choices):
* Orthonormalisation is shifted CholeskyQR3: each pass forms the Gram G of the current matrix,
  factors G + s I (s = 1e-6 max diag G, pivots floored at s) and applies L^-T. The shift keeps the
  fp32 Cholesky defined for rank-deficient inputs (rank < l happens whenever l = N, since centring
  removes one rank, and for low-rank images) and makes Q = Y L^-T an exact contraction
  (Q^T Q = I - s L^-1 L^-T <= I), so sigma_j(Q^T X_c) <= sigma_j(X_c) still holds. One pass leaves
  cond(Q) <~ s^-1/2 = 1e3, the second brings Q to ~u cond^2, the third to working precision: the
  u^-1/2 ~ 4e3 limit of CholeskyQR2 (arXiv 1809.11085) is lifted to any condition number; directions
  below ~u ||Y|| are noise in any fp32 method. Householder would need l dependent sweeps over the
  [N, l] matrix; Newton-Schulz needs ~log(cond) iterations to lift weak directions.
* Small SVD: two-sided Jacobi on H = Z^T Z (Z = X_c^T Q, accumulated in the same pass) with the
  parallel XOR ordering (round m pairs i with i^m), all rotations of a round applied with gathers;
  both rows of a pair use the lower row's angle so J stays orthogonal. sigma_j = ||Z v_j|| rather
  than sqrt(eig_j): the eigenvalues of an fp32 Gram carry an absolute error u sigma_1^2, which
  would put a sqrt(u) sigma_1 ~ 2.4e-4 sigma_1 floor under small singular values.
* The budget uses sigma^2 in the descending order of sigma (rank by counting, ties to the lower
  column) and the exact centred energy accumulated as sum (x - mu)^2 after the mean is known, its
  tile sums added in fp64 (as the sum of sigma_j^2): the kernel's shortfall of an exactly spanned
  energy is the CholeskyQR shift (~CHOL_SHIFT) plus ~1e-6 of rounding, well inside ENERGY_SLACK.

Cost per image (one program): the tokens are read 2q + 5 times (max scan, mean, centred energy, the
1 + 2q + 1 products) plus the kept rows; Omega costs D * LP Philox draws; each of the 1 + 2q
orthonormalisations is 3 x (read R x LP twice, write once, and an LP-step in-register Cholesky /
inverse of O(LP^2) per step), R = N or D; Jacobi is at most MAX_SWEEPS sweeps of LP - 1 rounds of
O(LP^2) register work; the selection is O(N^2) comparisons (8.3 M at N = 2880). The l x l work is
what grows fastest: LP = 256 holds several 256 x 256 fp32 matrices per program and spills
registers (correct, slow). Not measured on a GPU yet (tools/gpu_check.sh). Under the interpreter
with the sm_90 emulation (2 shared CPU cores): ~0.5 s per image at N=64, D=96, l=16, q=2, ~45-65 s at
N=576, D=1024, l=128, q=2.
"""

from __future__ import annotations

import contextlib
import threading

try:
    import triton
    import triton.language as tl
except ImportError as exc:  # optional dependency
    raise ImportError(f"the 'triton' backend needs the triton package, which is not installed ({exc})") from exc

import torch

from ..contract import ENERGY_SLACK, FLAT_RTOL, PipelineConfig
from ..results import BudgetResult, PruneResult
from .triton_interpreter import install_bf16_dot_fix

__all__ = ["NAME", "MAX_SKETCH_SIZE", "run", "kernel_settings", "kernel_flags", "kernel_signature", "launch_grid",
           "programs_per_image"]

NAME = "triton"
# The l x l blocks (LP x LP fp32, LP = next power of two >= l) go through shared memory for layout
# conversions: compiled ahead of time for sm_90 (tests/test_triton_compile.py), LP = 128 needs 176 KB
# of the 227 KB an H100/H200 block may use, LP = 256 needs 560 KB and cannot launch. Larger sketches go
# to another backend ("auto" skips this one; naming it raises BackendUnavailable).
MAX_SKETCH_SIZE = 128
MAX_SKETCH_SIZE_REASON = "its l x l blocks must fit the 227 KB of shared memory of an H100/H200 block"

# Shift of the CholeskyQR passes, relative to the largest diagonal entry of the Gram matrix. Each pass
# makes the columns contract by lambda / (lambda + shift): the three passes of one orthonormalisation
# under-estimate a dominant singular value by at most ~1.5e-6 relative (the lower-bound guarantee of
# the sketch is kept: Q is always a contraction), and directions weaker than ~1e-3 of the strongest
# are normalised by the second and third passes.
CHOL_SHIFT = tl.constexpr(1e-6)
# Smallest pivot: keeps an all-zero Gram (zero image, padded columns) finite: its Q columns stay 0.
PIVOT_FLOOR = tl.constexpr(1e-30)
# Jacobi sweeps on the l x l Gram: quadratic convergence needs 5-10 for l <= 256; stops earlier when
# the off-diagonal mass is below (2 LP u)^2 ||H||_F^2.
MAX_SWEEPS = 20
FP32_UNIT_ROUNDOFF = tl.constexpr(2.0**-24)


@triton.jit
def _pow2_inverse_scale(amax, IS_F64: tl.constexpr):
    """(1/s, s) with s a power of two, max|x|/s in [1, 2); clamped at the ends of the exponent range.

    Read straight from the exponent bits, so s is exactly equivariant: X -> 2^m X gives s -> 2^m s.
    A zero (or all-subnormal) image gets 1/s = 2^126 (2^1022 in fp64): its values become normal.
    """
    if IS_F64:
        e = (amax.to(tl.int64, bitcast=True) >> 52) & 0x7FF
        e = tl.minimum(tl.maximum(e, 1), 2045)
        inv = ((2046 - e) << 52).to(tl.float64, bitcast=True)
        scale = (e << 52).to(tl.float64, bitcast=True)
    else:
        e = (amax.to(tl.int32, bitcast=True) >> 23) & 0xFF
        e = tl.minimum(tl.maximum(e, 1), 253)
        inv = ((254 - e) << 23).to(tl.float32, bitcast=True)
        scale = (e << 23).to(tl.float32, bitcast=True)
    return inv, scale


@triton.jit
def _load_x(x_img, sxn, sxd, mu_img, n0, d0, N, D, inv, bad,
            CENTER: tl.constexpr, IS_F64: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr):
    """Tile [BN, BD] of the scaled (and centred) image in fp32; zero outside N x D or if bad.

    Centring is done in registers on the way to the dot (X_c is never written): the same as
    X Omega - 1 (mu^T Omega) and X^T Q - mu (1^T Q), without their cancellation when the mean
    dominates the tokens.
    """
    o_n = n0 + tl.arange(0, BN)
    o_d = d0 + tl.arange(0, BD)
    m_x = (o_n[:, None] < N) & (o_d[None, :] < D)
    b_x = tl.load(x_img + o_n[:, None] * sxn + o_d[None, :] * sxd, mask=m_x, other=0.0)
    if IS_F64:
        b_x = (b_x * inv).to(tl.float32)
    else:
        b_x = b_x.to(tl.float32) * inv
    if CENTER:
        b_mu = tl.load(mu_img + o_d, mask=o_d < D, other=0.0)
        b_x = b_x - b_mu[None, :]
    return tl.where(m_x & (bad == 0), b_x, 0.0)  # [BN, BD]


@triton.jit
def _x_operand(x_img, sxn, sxd, mu_img, n0, d0, N, D, inv, bad,
               CENTER: tl.constexpr, IS_F64: tl.constexpr, SPLIT16: tl.constexpr, PRESCALE16: tl.constexpr,
               BN: tl.constexpr, BD: tl.constexpr):
    """Tile [BN, BD] of X as the big products take it; zero outside N x D or if bad.

    SPLIT16 (float16 / bfloat16 tokens): the tile in its own dtype, exact, un-centred (the products
    subtract the mean as a rank-1 correction); bfloat16 is pre-scaled by the power of two (exact:
    bf16 has fp32's exponent range), float16 is not (its values cannot overflow an fp32 product,
    while scaling could push small ones into fp16 subnormals: the products are scaled instead).
    Otherwise the scaled, centred fp32 tile of :func:`_load_x`.
    """
    if SPLIT16:
        o_n = n0 + tl.arange(0, BN)
        o_d = d0 + tl.arange(0, BD)
        m_x = (o_n[:, None] < N) & (o_d[None, :] < D)
        b_x = tl.load(x_img + o_n[:, None] * sxn + o_d[None, :] * sxd, mask=m_x, other=0.0)
        if PRESCALE16:
            b_x = (b_x.to(tl.float32) * inv).to(b_x.dtype)
        return tl.where(m_x & (bad == 0), b_x, tl.zeros_like(b_x))
    else:
        return _load_x(x_img, sxn, sxd, mu_img, n0, d0, N, D, inv, bad, CENTER, IS_F64, BN, BD)


@triton.jit
def _round_to_bf16(v):
    """fp32 v rounded to the nearest bfloat16 (ties to even), still as fp32 (finite v).

    Done on the bits so that the result is the same on the GPU and in the interpreter, whose
    fp32 -> bf16 cast truncates (triton 3.6 / 3.8): a truncated split would bias every product low.
    The cast of the result to bf16 is then exact.
    """
    bits = v.to(tl.int32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _dot_x(b_x, b_f, acc, SPLIT16: tl.constexpr, PARTS: tl.constexpr, XPREC: tl.constexpr):
    """acc + b_x @ b_f for a tile of X (or its transpose) and an fp32 tile (Omega, Q or W).

    SPLIT16: b_x is exact in float16 / bfloat16 and b_f is split into PARTS (2 or 3) parts of that
    dtype, each rounded to nearest (hi = round(b_f), lo = round(b_f - hi), ...): PARTS 16-bit MMAs
    with exact products and fp32 sums. Two parts leave b_f's residual at ~2^-17 (bf16) / 2^-22 (fp16)
    of |b_f|, unbiased: enough for the range finder, whose errors reach the spectrum only at second
    order. The product that gives the spectrum, Z = X_c^T Q, takes three (~2^-25): its error enters
    sigma_j^2 at first order (~2^-17 / sqrt(N) of E with two bf16 parts, above the energy slack for
    small N). Plain TF32 would truncate every operand toward zero, biasing sigma low by up to 2^-10.
    Otherwise XPREC ("tf32x3": Triton's 3xTF32 split, about fp32 accuracy) on fp32 tiles.
    """
    if SPLIT16:
        rest = b_f
        for _ in tl.static_range(PARTS):
            if b_x.dtype == tl.bfloat16:
                part = _round_to_bf16(rest)
            else:
                part = rest.to(tl.float16).to(tl.float32)
            acc = tl.dot(b_x, part.to(b_x.dtype), acc)
            rest = rest - part
    else:
        acc = tl.dot(b_x, b_f, acc, input_precision=XPREC)
    return acc


@triton.jit
def _x_times(x_img, sxn, sxd, mu_img, n_img, D, inv, bad, out_scale, src, s_src_d, s_src_l, l_img, dst,
             CENTER: tl.constexpr, IS_F64: tl.constexpr, SPLIT16: tl.constexpr, PRESCALE16: tl.constexpr,
             XPREC: tl.constexpr, LP: tl.constexpr, BT: tl.constexpr):
    """dst [N, LP] (fp32, contiguous) = X_c @ src[:, :l_img] for src [D, >= l_img] (Omega or W).

    SPLIT16 computes out_scale * (X src) - 1 (mu^T src): X stays exact and un-centred, the rank-1
    correction is an fp32 sum on the CUDA cores.
    """
    o_t = tl.arange(0, BT)
    o_l = tl.arange(0, LP)
    CORRECT: tl.constexpr = SPLIT16 and CENTER
    if CORRECT:
        mu_src = tl.zeros([LP], dtype=tl.float32)  # mu^T src
        for d0 in range(0, D, BT):
            o_d = d0 + o_t
            b_s = tl.load(src + o_d[:, None] * s_src_d + o_l[None, :] * s_src_l,
                          mask=(o_d[:, None] < D) & (o_l[None, :] < l_img), other=0.0).to(tl.float32)
            b_mu = tl.load(mu_img + o_d, mask=o_d < D, other=0.0)
            mu_src += tl.sum(b_mu[:, None] * b_s, 0)
    for n0 in range(0, n_img, BT):
        acc = tl.zeros([BT, LP], dtype=tl.float32)
        for d0 in range(0, D, BT):
            b_x = _x_operand(x_img, sxn, sxd, mu_img, n0, d0, n_img, D, inv, bad,
                             CENTER, IS_F64, SPLIT16, PRESCALE16, BT, BT)
            o_d = d0 + o_t
            b_s = tl.load(src + o_d[:, None] * s_src_d + o_l[None, :] * s_src_l,
                          mask=(o_d[:, None] < D) & (o_l[None, :] < l_img), other=0.0).to(tl.float32)
            acc = _dot_x(b_x, b_s, acc, SPLIT16, 2, XPREC)
        acc = acc * out_scale
        if CORRECT:
            acc = acc - mu_src[None, :]
        tl.store(dst + (n0 + o_t)[:, None] * LP + o_l[None, :], acc, mask=(n0 + o_t)[:, None] < n_img)
    tl.debug_barrier()


@triton.jit
def _xt_times(x_img, sxn, sxd, mu_img, n_img, D, inv, bad, out_scale, q, dst,
              CENTER: tl.constexpr, IS_F64: tl.constexpr, SPLIT16: tl.constexpr, PRESCALE16: tl.constexpr,
              PARTS: tl.constexpr, XPREC: tl.constexpr, SPREC: tl.constexpr, LP: tl.constexpr, BT: tl.constexpr):
    """dst [D, LP] (fp32, contiguous) = X_c^T @ q for q [N, LP]; returns H = dst^T dst [LP, LP].

    SPLIT16 computes out_scale * (X^T q) - mu (1^T q); see :func:`_dot_x` for PARTS.
    """
    o_t = tl.arange(0, BT)
    o_l = tl.arange(0, LP)
    CORRECT: tl.constexpr = SPLIT16 and CENTER
    if CORRECT:
        q_sum = tl.zeros([LP], dtype=tl.float32)  # 1^T q
        for n0 in range(0, n_img, BT):
            b_q = tl.load(q + (n0 + o_t)[:, None] * LP + o_l[None, :], mask=(n0 + o_t)[:, None] < n_img, other=0.0)
            q_sum += tl.sum(b_q, 0)
    H = tl.zeros([LP, LP], dtype=tl.float32)
    for d0 in range(0, D, BT):
        acc = tl.zeros([BT, LP], dtype=tl.float32)
        for n0 in range(0, n_img, BT):
            b_x = _x_operand(x_img, sxn, sxd, mu_img, n0, d0, n_img, D, inv, bad,
                             CENTER, IS_F64, SPLIT16, PRESCALE16, BT, BT)
            b_q = tl.load(q + (n0 + o_t)[:, None] * LP + o_l[None, :], mask=(n0 + o_t)[:, None] < n_img, other=0.0)
            acc = _dot_x(tl.trans(b_x), b_q, acc, SPLIT16, PARTS, XPREC)
        acc = acc * out_scale
        if CORRECT:
            o_d = d0 + o_t
            b_mu = tl.load(mu_img + o_d, mask=o_d < D, other=0.0)
            acc = acc - b_mu[:, None] * q_sum[None, :]
        tl.store(dst + (d0 + o_t)[:, None] * LP + o_l[None, :], acc, mask=(d0 + o_t)[:, None] < D)
        H += tl.dot(tl.trans(acc), acc, input_precision=SPREC)
    tl.debug_barrier()
    return H


@triton.jit
def _chol_inverse(G, shift, LP: tl.constexpr):
    """M = L^-1 with L L^T = G + shift I (pivots floored at shift): Q <- Y M^T is one CholeskyQR pass.

    Right-looking Cholesky that never forms L: L = L_0 L_1 ... L_{LP-1} with L_j the identity whose
    column j is replaced by the j-th Cholesky column l_j, so M is built as L_j^-1 ... L_0^-1 I (row j
    divided by the pivot, then eliminated from the rows below). Columns and pivots are read with
    tl.gather (no reductions): LP steps of O(LP^2) register work.
    """
    o_1 = tl.arange(0, LP)
    o_r = o_1[:, None]  # [LP, 1]
    A = G
    M = tl.where(o_r == o_1[None, :], 1.0, 0.0)  # [LP, LP]
    for j in range(LP):
        j_col = tl.full([LP, 1], j, tl.int32)
        b_col = tl.gather(A, j_col, 1)  # [LP, 1] = A[:, j]
        b_piv = tl.gather(b_col, tl.full([1, 1], j, tl.int32), 0)  # [1, 1] = A[j, j]
        b_d = tl.sqrt(tl.maximum(b_piv + shift, shift))
        b_l = tl.where(o_r > j, b_col / b_d, 0.0)  # [LP, 1], below the pivot
        A = A - b_l * tl.trans(b_l)
        b_m = tl.gather(M, tl.full([1, LP], j, tl.int32), 0) / b_d  # [1, LP] = new M[j, :]
        M = tl.where(o_r == j, b_m, M - b_l * b_m)
    return M


@triton.jit
def _orthonormalise(ws, R, LP: tl.constexpr, BR: tl.constexpr, SPREC: tl.constexpr):
    """Shifted CholeskyQR3, in place, on the contiguous fp32 matrix ws [R, LP] (R runtime rows).

    Each pass recomputes the Gram of the current matrix (so rounding in the previous pass is
    corrected, unlike one Cholesky of the first Gram), shifts it by s = CHOL_SHIFT * max diag
    (pivots floored at s) and applies M^T = L^-T tile by tile. Every pass needs the shift: the
    columns of a rank-deficient input (l > rank, padded columns) stay numerically dependent after the
    first two passes, and an unshifted Cholesky of their Gram (eigenvalues down to -u ||G||) grows
    without bound (seen under the sm_90 emulation with bf16 tokens). The price is the contraction
    Q^T Q = I - s L^-1 L^-T: a column of norm ~1 ends with squared norm ~1 - CHOL_SHIFT, so the
    energy captured by an exactly spanned image falls short of E by ~CHOL_SHIFT relative, which the
    energy slack covers (contract.ENERGY_SLACK).
    """
    o_1 = tl.arange(0, LP)
    o_b = tl.arange(0, BR)
    for _ in tl.static_range(3):
        G = tl.zeros([LP, LP], dtype=tl.float32)
        for r0 in range(0, R, BR):
            p_y = ws + (r0 + o_b)[:, None] * LP + o_1[None, :]
            b_y = tl.load(p_y, mask=(r0 + o_b)[:, None] < R, other=0.0)  # [BR, LP]
            G += tl.dot(tl.trans(b_y), b_y, input_precision=SPREC)
        b_dmax = tl.max(tl.sum(tl.where(o_1[:, None] == o_1[None, :], G, 0.0), 1), 0)
        shift = tl.maximum(b_dmax * CHOL_SHIFT, PIVOT_FLOOR)
        M = _chol_inverse(G, shift, LP)
        for r0 in range(0, R, BR):
            p_y = ws + (r0 + o_b)[:, None] * LP + o_1[None, :]
            m_y = (r0 + o_b)[:, None] < R
            b_y = tl.load(p_y, mask=m_y, other=0.0)
            tl.store(p_y, tl.dot(b_y, tl.trans(M), input_precision=SPREC), mask=m_y)
        tl.debug_barrier()


@triton.jit
def _jacobi_eigh(H, LP: tl.constexpr, MAX_SWEEPS: tl.constexpr):
    """Eigenvectors V (columns) of the symmetric H [LP, LP], by parallel two-sided Jacobi.

    Round m = 1 .. LP-1 pairs index i with i XOR m: a perfect matching, and over a sweep every pair
    (p, q) is met exactly once (m = p XOR q). All LP/2 rotations of a round are applied at once
    with two row/column gathers: O(LP^2) per round, O(LP^3) per sweep.
    """
    o_1 = tl.arange(0, LP)
    o_r = o_1[:, None]
    o_c = o_1[None, :]
    eye = o_r == o_c
    V = tl.where(eye, 1.0, 0.0)
    h_norm = tl.sum(tl.sum(H * H, 1), 0)
    tol = (2.0 * LP * FP32_UNIT_ROUNDOFF) * (2.0 * LP * FP32_UNIT_ROUNDOFF) * h_norm
    off = tl.sum(tl.sum(tl.where(eye, 0.0, H * H), 1), 0)
    sweep = 0
    while (sweep < MAX_SWEEPS) & (off > tol):
        for m in range(1, LP):
            partner = o_r ^ m  # [LP, 1]
            b_diag = tl.gather(H, o_r, 1)  # [LP, 1] = H[i, i]
            b_pdiag = tl.gather(b_diag, partner, 0)  # H[p(i), p(i)]
            b_apq = tl.gather(H, partner, 1)  # H[i, p(i)]
            lower = o_r < partner
            diff = tl.where(lower, b_pdiag - b_diag, b_diag - b_pdiag)  # a_qq - a_pp
            sgn = tl.where(diff >= 0.0, 1.0, -1.0)
            den = tl.abs(diff) + tl.sqrt(diff * diff + 4.0 * b_apq * b_apq)
            t = tl.where(den > 0.0, sgn * 2.0 * b_apq / tl.where(den > 0.0, den, 1.0), 0.0)
            # Both rows of a pair must use the same angle, or J is not orthogonal: rounding leaves
            # H[p, q] != H[q, p], and near-equal eigenvalues turn that into t = +1 vs -1.
            t = tl.where(lower, t, tl.gather(t, partner, 0))
            c = 1.0 / tl.sqrt(1.0 + t * t)  # [LP, 1]
            sp = tl.where(lower, -t * c, t * c)  # coefficient of the partner row / column
            c_t = tl.trans(c)
            sp_t = tl.trans(sp)
            idx_cols = tl.trans(tl.broadcast_to(partner, (LP, LP)))  # [i, j] -> p(j)
            H = c * H + sp * tl.gather(H, tl.broadcast_to(partner, (LP, LP)), 0)
            H = c_t * H + sp_t * tl.gather(H, idx_cols, 1)
            V = c_t * V + sp_t * tl.gather(V, idx_cols, 1)
        off = tl.sum(tl.sum(tl.where(eye, 0.0, H * H), 1), 0)
        sweep += 1
    return V


@triton.jit
def _selection_scores(sc_img, scn, lev_img, o, m, flat, bad, HAS_SCORES: tl.constexpr, SC_F64: tl.constexpr):
    """The selection score of tokens ``o``: the given scores (fp64 kept as fp64) or the leverage (0 for
    a flat image); 0 for a non-finite image (its first tokens are kept), NaN ranked last."""
    if HAS_SCORES:
        s = tl.load(sc_img + o * scn, mask=m, other=0.0)
        if not SC_F64:
            s = s.to(tl.float32)
    else:
        s = tl.load(lev_img + o, mask=m, other=0.0)
        s = tl.where(flat, 0.0, s)
    s = tl.where(bad, 0.0, s)
    return tl.where(s == s, s, float("-inf"))


@triton.heuristics({
    "HAS_SKETCH": lambda a: a["OM"] is not a["WWS"],
    "HAS_SCORES": lambda a: a["SC"] is not None,
    "HAS_BUDGETS": lambda a: a["BIN"] is not None,
    "RAGGED": lambda a: a["CU"] is not None,
})
@triton.jit(do_not_specialize=["N", "D", "L", "M", "POWER_ITERS", "SEED", "MIN_TOKENS", "THRESH"])
def _eadaprune_kernel(
    X, sxb, sxn, sxd,  # tokens [B, N, D], or packed [T, D] (RAGGED: sxb unused, N = T)
    CU,  # cu_seqlens [B + 1] int32/int64 (RAGGED), or None
    SC, scb, scn,  # scores [B, N] (or packed [T]) or None
    OM, som_d, som_l,  # sketch [D, l] (cfg.sketch_matrix, or WWS which the kernel fills)
    QWS, WWS, MUWS, LEVWS,  # fp32 scratch [B, N, LP] ([T, LP] ragged), [B, D, LP], [B, D], [B, N] ([T])
    SIG, ENERGY, BUDGET, SAT,  # [B, L] f32, [B] f32, [B] i32, [B] u8 (bool)
    BIN,  # [B] i32 budgets that replace the computed ones (total_budget), or None
    OTOK, sotb, sotm, sotd, OIDX, OMASK,  # [B, M, D], [B, M] i64, [B, M] u8 (bool)
    N, D, L, M, POWER_ITERS, SEED, MIN_TOKENS, THRESH, FLAT_RTOL,
    LP: tl.constexpr, BT: tl.constexpr, BS: tl.constexpr,
    CENTER: tl.constexpr, IS_F64: tl.constexpr, SC_F64: tl.constexpr, SELECT: tl.constexpr,
    SPLIT16: tl.constexpr, PRESCALE16: tl.constexpr, XPREC: tl.constexpr, SPREC: tl.constexpr,
    MAX_SWEEPS: tl.constexpr,
    HAS_SKETCH: tl.constexpr, HAS_SCORES: tl.constexpr, HAS_BUDGETS: tl.constexpr, RAGGED: tl.constexpr,
):
    """One program per image b: E-AdaPrune steps 1-9 of backends/reference.py, see the module docstring.

    Phases (each a loop over tiles of the image; scratch is per image and written between barriers):
      A  max|x| and the NaN/Inf scan (tokens, scores) -> power-of-two scale 1/s, ``bad``
      B  per D tile: mean mu (scratch) then the centred sum of squares -> exact E, raw energy, flat
      C  Omega tile by tile into W (tl.randn(seed, j*D + i)) unless a sketch matrix is given;
         Y = X_c Omega into Q; orth(Q)
      D  power_iters times: W = orth(X_c^T Q), Q = orth(X_c W)
      E  Z = X_c^T Q into W and H = Z^T Z (fused in the same pass); Jacobi H = V diag V^T;
         sigma_j = ||Z v_j|| (column norms, not sqrt(eig): no sqrt(u) floor on small sigma)
      F  rank of sigma (descending, ties to lower index), cumulative energy, k*, budget, flags
      G  (SELECT) leverage sum_{rank_j < min(k*, l)} (Q V)_ij^2 or the scores; rank of each token
         by counting (greater, or equal with a lower index): kept iff rank < budget, output slot =
         running count of kept tokens with a lower index; scatter indices and rows; padding.
    orth = shifted CholeskyQR3 (see _orthonormalise); all Gram and l x l work in fp32.

    RAGGED: image b is rows [start, end) of the packed tokens, read from CU (clamped to [0, T], so
    invalid cu_seqlens cannot send a program out of bounds); it has n_img = end - start tokens,
    l_img = min(L, n_img) sketch columns (the first ones of the same Omega) and budget bounds
    [min(MIN_TOKENS, m_img), m_img] with m_img = min(M, n_img). Its Q and leverage scratch are rows
    [start, end) of [T, LP] and [T]; the outputs keep the batch-wide widths L and M.
    """
    i_b = tl.program_id(0).to(tl.int64)
    if RAGGED:
        start = tl.load(CU + i_b).to(tl.int64)
        end = tl.load(CU + i_b + 1).to(tl.int64)
        start = tl.minimum(tl.maximum(start, 0), N)
        end = tl.minimum(tl.maximum(end, start), N)
        n_img = (end - start).to(tl.int32)
        x_img = X + start * sxn
        q_img = QWS + start * LP
        lev_img = LEVWS + start
        sc_img = SC + start * scn if HAS_SCORES else SC
        l_img = tl.minimum(L, n_img)
        m_img = tl.minimum(M, n_img)
    else:
        n_img = N
        x_img = X + i_b * sxb
        q_img = QWS + i_b * N * LP
        lev_img = LEVWS + i_b * N
        sc_img = SC + i_b * scb if HAS_SCORES else SC
        l_img = L
        m_img = M
    min_img = tl.minimum(MIN_TOKENS, m_img)
    w_img = WWS + i_b * D * LP
    mu_img = MUWS + i_b * D
    o_t = tl.arange(0, BT)
    o_l = tl.arange(0, LP)
    o_s = tl.arange(0, BS)

    # ---- A: scale and non-finite scan --------------------------------------------------------
    if IS_F64:
        amax = tl.zeros([BT, BT], dtype=tl.float64)
    else:
        amax = tl.zeros([BT, BT], dtype=tl.float32)
    nonfinite = tl.zeros([BT, BT], dtype=tl.int32)
    for n0 in range(0, n_img, BT):
        for d0 in range(0, D, BT):
            o_n = n0 + o_t
            o_d = d0 + o_t
            m_x = (o_n[:, None] < n_img) & (o_d[None, :] < D)
            b_x = tl.load(x_img + o_n[:, None] * sxn + o_d[None, :] * sxd, mask=m_x, other=0.0)
            if IS_F64:
                b_x = b_x.to(tl.float64)
            else:
                b_x = b_x.to(tl.float32)
            nonfinite |= ((b_x - b_x) != 0.0).to(tl.int32)
            amax = tl.maximum(amax, tl.abs(b_x))
    bad = tl.max(tl.max(nonfinite, 1), 0) != 0
    if HAS_SCORES:
        for n0 in range(0, n_img, BS):
            b_sc = tl.load(sc_img + (n0 + o_s) * scn, mask=(n0 + o_s) < n_img, other=0.0)
            bad = bad | (tl.max(((b_sc - b_sc) != 0.0).to(tl.int32), 0) != 0)
    inv, scale = _pow2_inverse_scale(tl.max(tl.max(amax, 1), 0), IS_F64)

    # ---- B: mean, exact centred energy --------------------------------------------------------
    # Tile sums (<= BT * BT terms, tree-reduced) are added in fp64: a long fp32 running sum over
    # N * D / BT^2 tiles would put ~sqrt(tiles) * u of error into E, the threshold's denominator.
    raw = tl.cast(0.0, tl.float64)
    energy = tl.cast(0.0, tl.float64)
    for d0 in range(0, D, BT):
        o_d = d0 + o_t
        colsum = tl.zeros([BT], dtype=tl.float32)
        for n0 in range(0, n_img, BT):
            b_x = _load_x(x_img, sxn, sxd, mu_img, n0, d0, n_img, D, inv, bad, False, IS_F64, BT, BT)
            colsum += tl.sum(b_x, 0)
        b_mu = colsum / tl.maximum(n_img, 1)
        if CENTER:
            tl.store(mu_img + o_d, b_mu, mask=o_d < D)
        for n0 in range(0, n_img, BT):
            b_x = _load_x(x_img, sxn, sxd, mu_img, n0, d0, n_img, D, inv, bad, False, IS_F64, BT, BT)
            raw += tl.sum(tl.sum(b_x * b_x, 1), 0).to(tl.float64)
            if CENTER:
                m_n = (n0 + o_t) < n_img
                b_c = tl.where(m_n[:, None], b_x - b_mu[None, :], 0.0)
                energy += tl.sum(tl.sum(b_c * b_c, 1), 0).to(tl.float64)
    if not CENTER:
        energy = raw
    tl.debug_barrier()  # mu visible to every thread of the program
    flat = energy <= FLAT_RTOL * raw
    energy = energy.to(tl.float32)

    # ---- C: sketch and range finder -----------------------------------------------------------
    if not HAS_SKETCH:  # OM is w_img's buffer: fill this image's copy of Omega
        for d0 in range(0, D, BT):
            o_d = d0 + o_t
            offs = o_l[None, :] * D + o_d[:, None]  # int32 j*D + i
            b_om = tl.randn(SEED, offs)
            b_om = tl.where((o_l[None, :] < l_img) & (o_d[:, None] < D), b_om, 0.0)
            tl.store(w_img + o_d[:, None] * LP + o_l[None, :], b_om, mask=o_d[:, None] < D)
        tl.debug_barrier()
        om_img = w_img
        som_d_ = LP
        som_l_ = 1
    else:
        om_img = OM
        som_d_ = som_d
        som_l_ = som_l
    # float16 products use the unscaled tokens (see _x_operand): their results are scaled instead.
    if SPLIT16 and not PRESCALE16:
        out_scale = inv
    else:
        out_scale = 1.0
    _x_times(x_img, sxn, sxd, mu_img, n_img, D, inv, bad, out_scale, om_img, som_d_, som_l_, l_img, q_img,
             CENTER, IS_F64, SPLIT16, PRESCALE16, XPREC, LP, BT)
    _orthonormalise(q_img, n_img, LP, BT, SPREC)

    # ---- D: power iterations; E: Z = X_c^T Q with H = Z^T Z -----------------------------------
    for it in range(POWER_ITERS):
        _xt_times(x_img, sxn, sxd, mu_img, n_img, D, inv, bad, out_scale, q_img, w_img,
                  CENTER, IS_F64, SPLIT16, PRESCALE16, 2, XPREC, SPREC, LP, BT)
        _orthonormalise(w_img, D, LP, BT, SPREC)
        _x_times(x_img, sxn, sxd, mu_img, n_img, D, inv, bad, out_scale, w_img, LP, 1, l_img, q_img,
                 CENTER, IS_F64, SPLIT16, PRESCALE16, XPREC, LP, BT)
        _orthonormalise(q_img, n_img, LP, BT, SPREC)
    H = _xt_times(x_img, sxn, sxd, mu_img, n_img, D, inv, bad, out_scale, q_img, w_img,
                  CENTER, IS_F64, SPLIT16, PRESCALE16, 3, XPREC, SPREC, LP, BT)

    V = _jacobi_eigh(H, LP, MAX_SWEEPS)
    sig2 = tl.zeros([LP], dtype=tl.float64)  # fp64 sum of the tile sums, as E
    for d0 in range(0, D, BT):
        b_z = tl.load(w_img + (d0 + o_t)[:, None] * LP + o_l[None, :], mask=(d0 + o_t)[:, None] < D, other=0.0)
        b_zv = tl.dot(b_z, V, input_precision=SPREC)  # [BT, LP]
        sig2 += tl.sum(b_zv * b_zv, 0).to(tl.float64)
    sig2 = tl.where((o_l < l_img) & (flat == 0), sig2.to(tl.float32), 0.0)

    # ---- F: order, cumulative energy, budget ---------------------------------------------------
    # Columns past l_img rank last (key -1, ties by index): ranks [l_img, L) hold sigma = 0.
    key = tl.where(o_l < l_img, sig2, -1.0)
    o_r = o_l[:, None]
    o_c = o_l[None, :]
    beats = (key[None, :] > key[:, None]) | ((key[None, :] == key[:, None]) & (o_c < o_r))  # [i, j]
    rank = tl.sum(beats.to(tl.int32), 1)  # position of column i in descending order
    cum = tl.sum(tl.where((rank[None, :] <= rank[:, None]) & (o_c < l_img), sig2[None, :], 0.0), 1)
    reached = (cum >= THRESH * energy) & (o_l < l_img)
    n_reached = tl.sum(reached.to(tl.int32), 0)
    first = tl.min(tl.where(reached, rank + 1, LP + 1), 0)
    saturated = (n_reached == 0) & (flat == 0)
    k_star = tl.where(saturated, m_img, first)
    k_star = tl.where(flat, min_img, k_star)
    budget = tl.minimum(tl.maximum(k_star, min_img), m_img)
    budget = tl.where(bad, m_img, budget)
    if HAS_BUDGETS:  # shares of a fixed batch total; k* (the leverage rank) stays the image's own
        # clamped so that no share can make the gather write past the image's M slots
        budget = tl.minimum(tl.maximum(tl.load(BIN + i_b), 0), m_img)

    sigma = tl.sqrt(sig2)
    if IS_F64:
        sigma = (sigma.to(tl.float64) * scale).to(tl.float32)
        e_out = (energy.to(tl.float64) * scale * scale).to(tl.float32)
    else:
        sigma = sigma * scale
        e_out = energy * scale * scale
    e_out = tl.where(flat, 0.0, e_out)
    sigma = tl.where(bad & (rank < l_img), float("nan"), sigma)
    e_out = tl.where(bad, float("nan"), e_out)
    tl.store(SIG + i_b * L + rank, sigma, mask=o_l < L)
    tl.store(ENERGY + i_b, e_out)
    tl.store(BUDGET + i_b, budget.to(tl.int32))
    tl.store(SAT + i_b, (saturated | bad).to(tl.uint8))

    # ---- G: selection, gather, padding ---------------------------------------------------------
    if SELECT:
        if not HAS_SCORES:
            r = tl.minimum(k_star, l_img)
            V_sel = tl.where((rank < r)[None, :], V, 0.0)
            for n0 in range(0, n_img, BT):
                b_q = tl.load(q_img + (n0 + o_t)[:, None] * LP + o_l[None, :],
                              mask=(n0 + o_t)[:, None] < n_img, other=0.0)
                b_u = tl.dot(b_q, V_sel, input_precision=SPREC)
                tl.store(lev_img + n0 + o_t, tl.sum(b_u * b_u, 1), mask=(n0 + o_t) < n_img)
            tl.debug_barrier()
        out_tok = OTOK + i_b * sotb
        kept_before = 0
        for i0 in range(0, n_img, BS):
            o_i = i0 + o_s
            m_i = o_i < n_img
            s_i = _selection_scores(sc_img, scn, lev_img, o_i, m_i, flat, bad, HAS_SCORES, SC_F64)
            rank_i = tl.zeros([BS], dtype=tl.int32)
            for j0 in range(0, n_img, BS):
                o_j = j0 + o_s
                m_j = o_j < n_img
                s_j = _selection_scores(sc_img, scn, lev_img, o_j, m_j, flat, bad, HAS_SCORES, SC_F64)
                wins = (s_j[None, :] > s_i[:, None]) | ((s_j[None, :] == s_i[:, None]) & (o_j[None, :] < o_i[:, None]))
                rank_i += tl.sum((wins & m_j[None, :]).to(tl.int32), 1)
            kept = (rank_i < budget) & m_i
            k32 = kept.to(tl.int32)
            slot = kept_before + tl.cumsum(k32, 0) - k32
            kept_before += tl.sum(k32, 0)
            tl.store(OIDX + i_b * M + slot, o_i.to(tl.int64), mask=kept)
            for d0 in range(0, D, BT):
                o_d = d0 + o_t
                m_d = o_d < D
                b_row = tl.load(x_img + o_i[:, None] * sxn + o_d[None, :] * sxd,
                                mask=kept[:, None] & m_d[None, :], other=0.0)
                tl.store(out_tok + slot[:, None] * sotm + o_d[None, :] * sotd, b_row,
                         mask=kept[:, None] & m_d[None, :])
        for p0 in range(0, M, BS):
            o_p = p0 + o_s
            m_p = o_p < M
            pad = m_p & (o_p >= budget)
            tl.store(OMASK + i_b * M + o_p, (o_p < budget).to(tl.uint8), mask=m_p)
            tl.store(OIDX + i_b * M + o_p, tl.full([BS], -1, tl.int64), mask=pad)
            for d0 in range(0, D, BT):
                o_d = d0 + o_t
                m_d = o_d < D
                zeros = tl.zeros([BS, BT], dtype=OTOK.dtype.element_ty)
                tl.store(out_tok + o_p[:, None] * sotm + o_d[None, :] * sotd, zeros,
                         mask=pad[:, None] & m_d[None, :])


_INTERPRETER_LOCK = threading.Lock()


def _next_pow2(v: int) -> int:
    return 1 << max(0, (v - 1).bit_length())


def kernel_settings(dtype: torch.dtype, sketch_size: int) -> dict:
    """The compile-time settings of a launch for tokens of ``dtype`` and l = ``sketch_size``: tile
    sizes, warps and the arithmetic of every product (also used by tools/aot_compile_triton.py).

    Products with X: float16 / bfloat16 tokens stay exact and the fp32 operand is split into two
    16-bit parts (SPLIT16, two 16-bit MMAs); float32 / float64 tokens are centred in fp32 and
    multiplied in 3xTF32 (XPREC). The l x l work (Grams, L^-T, Z V, U = Q V) is 3xTF32 (SPREC).
    Never plain TF32: sm_90 truncates TF32 operands toward zero, which puts every singular value
    ~7e-4 low (tests/test_triton_numerics.py shows it under the GPU emulation).
    """
    lp = max(16, _next_pow2(sketch_size))
    sixteen_bit = dtype in (torch.float16, torch.bfloat16)
    return dict(
        LP=lp, BT=max(16, min(64, 4096 // lp)), BS=64,
        SPLIT16=sixteen_bit, PRESCALE16=dtype == torch.bfloat16, XPREC="tf32x3", SPREC="tf32x3",
        MAX_SWEEPS=MAX_SWEEPS, num_warps=4 if lp <= 32 else (8 if lp <= 64 else 16),
    )


def kernel_flags(*, dtype: torch.dtype, scores: bool, sketch: bool, budgets: bool, ragged: bool, center: bool,
                 select: bool, scores_f64: bool = False) -> dict:
    """The flag constexprs of a launch (the launcher passes some, the heuristics derive the others):
    what tools/aot_compile_triton.py needs besides :func:`kernel_settings` to compile a variant."""
    return dict(CENTER=center, IS_F64=dtype == torch.float64, SC_F64=scores_f64, SELECT=select,
                HAS_SKETCH=sketch, HAS_SCORES=scores, HAS_BUDGETS=budgets, RAGGED=ragged)


def kernel_signature(*, dtype: torch.dtype, scores: bool, sketch: bool, budgets: bool, ragged: bool) -> dict:
    """Triton type of every runtime parameter of the kernel for one variant: "tokens" for the token
    pointers (typed by the tokens' dtype), None for an optional pointer that is absent."""
    del dtype, sketch  # the sketch is always a fp32 pointer (given, or the scratch the kernel fills)
    ints = ("sxb", "sxn", "sxd", "scb", "scn", "som_d", "som_l", "sotb", "sotm", "sotd", "N", "D", "L", "M",
            "POWER_ITERS", "MIN_TOKENS")
    spec = dict.fromkeys(ints, "i32")
    spec.update(X="tokens", CU="*i64" if ragged else None, SC="*fp32" if scores else None, OM="*fp32",
                QWS="*fp32", WWS="*fp32", MUWS="*fp32", LEVWS="*fp32", SIG="*fp32", ENERGY="*fp32",
                BUDGET="*i32", SAT="*u8", BIN="*i32" if budgets else None, OTOK="tokens", OIDX="*i64",
                OMASK="*u8", SEED="i64", THRESH="fp32", FLAT_RTOL="fp32")
    return spec


def launch_grid(*, batch: int, n: int, d: int, lp: int, settings: dict, ragged: bool, sm_count: int,
                blocks_per_sm: int) -> tuple[int]:
    """The grid of a launch: one program per image (the present design ignores the machine)."""
    del n, d, lp, settings, ragged, sm_count, blocks_per_sm
    return (batch,)


def programs_per_image(*, batch: int, n: int, d: int, lp: int, settings: dict, ragged: bool, sm_count: int,
                       blocks_per_sm: int) -> int:
    """How many programs work on one image of a launch: one."""
    del batch, n, d, lp, settings, ragged, sm_count, blocks_per_sm
    return 1


def _interpreting() -> bool:
    return type(_eadaprune_kernel).__name__ == "InterpretedFunction" or (
        hasattr(_eadaprune_kernel, "fn") and type(_eadaprune_kernel.fn).__name__ == "InterpretedFunction"
    )


def _check_device(tokens: torch.Tensor) -> None:
    if tokens.device.type == "cuda":
        return
    if tokens.device.type == "cpu":
        if _interpreting():
            return
        raise RuntimeError(
            "backend 'triton': CPU tensors run only under the Triton interpreter; set "
            "TRITON_INTERPRET=1 before triton is first imported, or pass CUDA tensors"
        )
    raise RuntimeError(f"backend 'triton': expected CUDA (or interpreted CPU) tensors, got {tokens.device}")


def _launch(tokens: torch.Tensor, scores: torch.Tensor | None, cfg: PipelineConfig, select: bool,
            budgets_in: torch.Tensor | None = None, cu_seqlens: torch.Tensor | None = None):
    """One launch for dense tokens [B, N, D], or packed tokens [T, D] with cu_seqlens [B + 1]
    (ragged: scratch rows are sized by T, an upper bound read from the shape, never from the data)."""
    _check_device(tokens)
    dev = tokens.device
    if cu_seqlens is None:
        batch, n, d = tokens.shape
        rows = (batch, n)  # Q and leverage scratch rows: per image
        x_strides = tokens.stride()
    else:
        n, d = tokens.shape  # N = T: the clamp bound of every image's rows
        batch = cu_seqlens.shape[0] - 1
        rows = (n,)  # Q and leverage scratch rows: the packed rows of every image
        x_strides = (0, *tokens.stride())
    l, m = cfg.sketch_size, cfg.max_tokens
    settings = kernel_settings(tokens.dtype, l)
    lp = settings["LP"]

    q_ws = torch.empty(*rows, lp, device=dev, dtype=torch.float32)
    w_ws = torch.empty(batch, d, lp, device=dev, dtype=torch.float32)
    mu_ws = torch.empty(batch, d, device=dev, dtype=torch.float32)
    if select and scores is None:
        lev_ws = torch.empty(*rows, device=dev, dtype=torch.float32)
    else:
        lev_ws = torch.empty(1, device=dev, dtype=torch.float32)
    sigma = torch.empty(batch, l, device=dev, dtype=torch.float32)
    energy = torch.empty(batch, device=dev, dtype=torch.float32)
    budgets = torch.empty(batch, device=dev, dtype=torch.int32)
    saturated = torch.empty(batch, device=dev, dtype=torch.bool)
    if select:
        out_tokens = torch.empty(batch, m, d, device=dev, dtype=tokens.dtype)
        out_indices = torch.empty(batch, m, device=dev, dtype=torch.int64)
        out_mask = torch.empty(batch, m, device=dev, dtype=torch.bool)
    else:  # never touched (SELECT=False): one-element placeholders
        out_tokens = torch.empty(1, 1, 1, device=dev, dtype=tokens.dtype)
        out_indices = torch.empty(1, 1, device=dev, dtype=torch.int64)
        out_mask = torch.empty(1, 1, device=dev, dtype=torch.bool)

    if cfg.sketch_matrix is not None:
        om, som = cfg.sketch_matrix, cfg.sketch_matrix.stride()
    else:
        om, som = w_ws, (lp, 1)
    if scores is not None:
        sc, ssc = scores, (scores.stride() if cu_seqlens is None else (0, *scores.stride()))
    else:
        sc, ssc = None, (0, 0)

    # The interpreter swaps module-level hooks while it runs a kernel: it is not thread-safe, so
    # interpreted launches are serialised (compiled GPU launches are not affected).
    interpreting = _interpreting()
    if interpreting:  # the interpreter multiplies bf16 bit patterns in tl.dot unless told otherwise
        install_bf16_dot_fix()
    with _INTERPRETER_LOCK if interpreting else contextlib.nullcontext():
        grid = launch_grid(batch=batch, n=n, d=d, lp=lp, settings=settings, ragged=cu_seqlens is not None,
                           sm_count=0, blocks_per_sm=0)
        _eadaprune_kernel[grid](
            tokens, *x_strides,
            cu_seqlens,
            sc, *ssc,
            om, *som,
            q_ws, w_ws, mu_ws, lev_ws,
            sigma, energy, budgets, saturated.view(torch.uint8),
            budgets_in,
            out_tokens, *out_tokens.stride(), out_indices, out_mask.view(torch.uint8),
            n, d, l, m, cfg.power_iters, cfg.seed, cfg.min_tokens, cfg.energy - ENERGY_SLACK, FLAT_RTOL,
            CENTER=cfg.center, IS_F64=tokens.dtype == torch.float64,
            SC_F64=scores is not None and scores.dtype == torch.float64, SELECT=select,
            **settings,
        )
    return sigma, energy, budgets, saturated, out_tokens, out_indices, out_mask


def run(tokens: torch.Tensor, cu_seqlens: torch.Tensor | None, scores: torch.Tensor | None, cfg: PipelineConfig,
        budgets: torch.Tensor | None, select: bool) -> PruneResult | BudgetResult:
    """The backend entry point (see :mod:`eadaprune_kernels.backends`): ONE kernel launch for dense
    tokens [B, N, D] or packed tokens [T, D] with cu_seqlens [B + 1] (no host read of it); ``budgets``
    [B] (each in the image's bounds) replaces the computed budgets. Indices of ragged input are
    relative to each image's start."""
    sigma, energy, lengths, saturated, kept, indices, mask = _launch(tokens, scores, cfg, select, budgets, cu_seqlens)
    if not select:
        return BudgetResult(budgets=lengths, singular_values=sigma, total_energy=energy, saturated=saturated,
                            backend=NAME)
    return PruneResult(tokens=kept, indices=indices, lengths=lengths, mask=mask, singular_values=sigma,
                       total_energy=energy, saturated=saturated, backend=NAME)
