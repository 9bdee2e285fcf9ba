"""The tasks of the fused Triton kernel that touch the tokens or one image's rows: the sketch, the
statistics pass, the products with X, the spectrum's column norms, the budget, the leverage, the
selection and the gather. The scheduler that runs them is ``triton_kernel._eadaprune_kernel``; the
l x l work is in :mod:`eadaprune_kernels.backends.triton_linalg`.

Every task works on one image: a group of row tiles (BR rows each) or of feature tiles (BD columns
each), or the whole image for the per-image steps. Scratch written by one task and read by another
goes through global memory (L2) and is read with ``cache_modifier=".cg"``.

The products with X (see :func:`_dot_operand`): float16 / bfloat16 tokens stay exact in their dtype and
the fp32 operand is taken as 16-bit parts, each rounded to nearest (two MMAs, ~2^-17 relative; three
for Z = X_c^T Q, which gives the spectrum: ~2^-25), split once by the task that produced it (Omega:
:func:`sketch_tile`; Q and W: the last CholeskyQR pass, ``triton_linalg.product_operand``), not by
every task that reads it; the mean enters as a rank-1 correction whose column sums (1^T Q, mu^T W)
the same pass leaves per group. float32 tokens (and float64 ones, scaled in fp64 and rounded) are
centred in fp32 registers and multiplied in 3xTF32. Never plain TF32, which truncates fp32 operands on
sm_90 (every sigma ~7e-4 low).
The first product, Y = X Omega, is formed in the statistics pass before the mean and the scale are
known: each tile is scaled by its own power of two (exact) and Y = Y~ * (s_tile / s) - 1 (mu^T Omega)
is fixed afterwards (:func:`fix_sketch`), for every dtype.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .triton_linalg import count_done, gram_partial, store_parts

# Row tiles the reduce task reads at once (one L2 round trip per 32 tiles, not per tile).
REDUCE_TILES = tl.constexpr(32)


@triton.jit
def pow2_inverse_scale(amax, IS_F64: tl.constexpr):
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
def _tile_to_image_ratio(TSCAL, t, inv, IS_F64: tl.constexpr):
    """s_t / s = inv / inv_t: the exact power of two that takes tile t's values, scaled by its own
    1/s_t in the statistics pass, to the image's scale 1/s = ``inv`` (s_t from the tile's max |x|,
    TSCAL[t, 0])."""
    a_t = tl.load(TSCAL + t * 4 + 0, cache_modifier=".cg")
    if IS_F64:
        inv_t, _s = pow2_inverse_scale(a_t, IS_F64)
    else:
        inv_t, _s = pow2_inverse_scale(a_t.to(tl.float32), IS_F64)
    return inv / inv_t


@triton.jit
def _tile_block(tile0, k0, ntiles, KT: tl.constexpr):
    """(mask, tile indices) of the image's tiles k0 .. k0 + KT - 1: the indices of tiles past the last
    are clamped to it (in bounds; callers zero what the mask drops)."""
    k = k0 + tl.arange(0, KT)
    return k < ntiles, tile0 + tl.minimum(k, ntiles - 1)


@triton.jit
def _dot_operand(b_x, f32_ptrs, p16_ptrs, pstride, mask, acc, SPLIT16: tl.constexpr, PARTS: tl.constexpr,
                 XPREC: tl.constexpr):
    """acc + b_x @ F for a tile of X (or its transpose) and a tile F of Omega, Q or W (rows masked by
    ``mask``). SPLIT16: b_x is exact in its 16-bit dtype and F is read as its first PARTS 16-bit parts
    at p16_ptrs + p * pstride (``triton_linalg.store_parts``): PARTS 16-bit MMAs with exact products
    and fp32 sums. Otherwise F is read in fp32 at f32_ptrs and multiplied in XPREC ("tf32x3": about
    fp32 accuracy)."""
    if SPLIT16:
        for p in tl.static_range(PARTS):
            acc = tl.dot(b_x, tl.load(p16_ptrs + p * pstride, mask=mask, other=0.0, cache_modifier=".cg"), acc)
    else:
        acc = tl.dot(b_x, tl.load(f32_ptrs, mask=mask, other=0.0, cache_modifier=".cg"), acc, input_precision=XPREC)
    return acc


@triton.jit
def _summed_partials(acc, rows, nsums, LP: tl.constexpr):
    """acc [LP] plus the ``nsums`` rows of rows [nsums, LP], added one row after the other in row order
    (the same bits whatever the batch or the schedule), in acc's dtype: every sum of per-task partials
    (column sums, sigma^2, energy) goes through here."""
    o_l = tl.arange(0, LP)
    for p in range(nsums):
        acc += tl.load(rows + p * LP + o_l, cache_modifier=".cg")
    return acc


@triton.jit
def _x_operand(x_img, sxn, sxd, mu_img, r0, d0, n_img, D, inv, bad,
               CENTER: tl.constexpr, IS_F64: tl.constexpr, SPLIT16: tl.constexpr, PRESCALE16: tl.constexpr,
               BN: tl.constexpr, BD: tl.constexpr):
    """Tile [BN, BD] of X as the products take it (the image scale 1/s = ``inv`` known); zero outside
    the image or if it is ``bad``.

    SPLIT16: the tile in its own dtype, exact, un-centred (the product subtracts the mean as a rank-1
    correction); bfloat16 is pre-scaled by the power of two (exact: bf16 has fp32's exponent range),
    float16 is not (its values cannot overflow an fp32 product; the products are scaled instead).
    Otherwise the scaled tile in fp32, centred in registers.
    """
    o_n = r0 + tl.arange(0, BN)
    o_d = d0 + tl.arange(0, BD)
    m_x = (o_n[:, None] < n_img) & (o_d[None, :] < D) & (bad == 0)
    b_x = tl.load(x_img + o_n[:, None] * sxn + o_d[None, :] * sxd, mask=m_x, other=0.0)
    if SPLIT16:
        if PRESCALE16:
            b_x = (b_x.to(tl.float32) * inv).to(b_x.dtype)
        return tl.where(m_x, b_x, tl.zeros_like(b_x))
    else:
        if IS_F64:
            b_x = (b_x * inv).to(tl.float32)
        else:
            b_x = b_x.to(tl.float32) * inv
        if CENTER:
            b_mu = tl.load(mu_img + o_d, mask=o_d < D, other=0.0, cache_modifier=".cg")
            b_x = b_x - b_mu[None, :]
        return tl.where(m_x, b_x, 0.0)


# The image's fp64 scalars (IMGF [B, IMAGE_SCALARS + PSLOTS]), written by the reduce tasks (task 0 the
# first six, task g its partial of the centred energy at IMAGE_SCALARS + g):
# (1/s, s, E without the partials, raw energy, FLAT_RTOL x raw energy, bad, -, -, partials...).
IMAGE_SCALARS = tl.constexpr(8)


@triton.jit
def _image_scalars(img_f64):
    """(1/s, s, bad) of an image (fp64 1/s and s)."""
    inv = tl.load(img_f64 + 0, cache_modifier=".cg")
    scale = tl.load(img_f64 + 1, cache_modifier=".cg")
    # flags are stored as 0.0 / 1.0; compared as ints (the interpreter cannot AND an fp64 comparison)
    bad = tl.load(img_f64 + 5, cache_modifier=".cg").to(tl.int32) != 0
    return inv, scale, bad


@triton.jit
def _image_energy(img_f64, nparts):
    """(E, raw energy, flat) of an image (fp64 energies): E = the stored part plus the ``nparts``
    reduce tasks' partials of sum_t n_t ||m_t - mu||^2 (their features), added in task order; flat:
    E <= FLAT_RTOL x raw."""
    stored = tl.load(img_f64 + 2 + tl.arange(0, 1), cache_modifier=".cg")  # [1]: the partials are rows of 1
    energy = tl.sum(_summed_partials(stored, img_f64 + IMAGE_SCALARS, nparts, 1), 0)
    raw = tl.load(img_f64 + 3, cache_modifier=".cg")
    # as an int comparison (the interpreter cannot AND an fp64 comparison)
    flat = (energy <= tl.load(img_f64 + 4, cache_modifier=".cg")).to(tl.int32) != 0
    return energy, raw, flat


@triton.jit
def product_scales(img_f64, IS_F64: tl.constexpr, SPLIT16: tl.constexpr, PRESCALE16: tl.constexpr):
    """(inv, out_scale, bad) for the products: float16 products use the unscaled tokens and scale
    their results by 1/s instead (out_scale); the others take the scaled tokens (out_scale 1)."""
    inv, scale, bad = _image_scalars(img_f64)
    if IS_F64:
        inv_x = inv
    else:
        inv_x = inv.to(tl.float32)
    if SPLIT16 and not PRESCALE16:
        out_scale = inv.to(tl.float32)
    else:
        out_scale = tl.cast(1.0, tl.float32)
    return inv_x, out_scale, bad.to(tl.int32)


# ---- the sketch and the plan (the call-wide stage) -----------------------------------------------


@triton.jit(noinline=True)
def sketch_tile(i, OM, som_d, som_l, OMS, om16, D, L, SEED, CNT, HAS_SKETCH: tl.constexpr, SPLIT16: tl.constexpr,
                LP: tl.constexpr, BD: tl.constexpr):
    """Rows [i BD, (i + 1) BD) of Omega [D, LP] (fp32 scratch, columns >= L zero): element (d, j) is
    tl.randn(seed, j * D + d), or the given sketch matrix; SPLIT16: also its two 16-bit parts
    [2][D, LP] at om16 (the statistics pass's product takes them). Counts the call-wide stage's
    CNT[1]."""
    o_d = i * BD + tl.arange(0, BD)
    o_l = tl.arange(0, LP)
    m = (o_d[:, None] < D) & (o_l[None, :] < L)
    if HAS_SKETCH:
        b_om = tl.load(OM + o_d[:, None] * som_d + o_l[None, :] * som_l, mask=m, other=0.0).to(tl.float32)
    else:
        b_om = tl.randn(SEED, o_l[None, :] * D + o_d[:, None])  # int32 j*D + d
    b_om = tl.where(m, b_om, 0.0)
    tl.store(OMS + o_d[:, None] * LP + o_l[None, :], b_om, mask=o_d[:, None] < D)
    if SPLIT16:
        store_parts(om16 + o_d[:, None] * LP + o_l[None, :], D * LP, b_om, 2, o_d[:, None] < D)
    count_done(CNT + 1)


@triton.jit
def _group_images(BASE, IMAGE, total, count, B, SEARCH: tl.constexpr):
    """IMAGE[k] for k < count: the image of group k (-1 from ``total`` on), from BASE [B + 1], the
    first group of every image (non-decreasing)."""
    o_k = tl.arange(0, SEARCH)
    for k0 in range(0, count, SEARCH):
        ok = k0 + o_k
        image = tl.zeros([SEARCH], dtype=tl.int32)  # images whose groups all come before group ok
        for b0 in range(0, B, SEARCH):
            ob = b0 + o_k
            nxt = tl.load(BASE + ob + 1, mask=ob < B, other=2147483647, cache_modifier=".cg")
            image += tl.sum((nxt[None, :] <= ok[:, None]).to(tl.int32), 1)
        tl.store(IMAGE + ok, tl.where(ok < total, image, -1), mask=ok < count)


@triton.jit(noinline=True)
def ragged_plan(CU, B, T, GR, SR, BR, NG_TOTAL, NS_TOTAL, PLAN, CNT, BLOCK: tl.constexpr, SEARCH: tl.constexpr):
    """For packed input, into PLAN: the first group and tile of every image (prefix sums of
    ceil(N_i / GR) and ceil(N_i / BR), N_i from cu_seqlens clamped to [0, T]: GROUP_BASE [B + 1],
    TILE_BASE [B + 1]), for every group index below NG_TOTAL its image (GROUP_IMAGE, -1 past the last
    group), and the same for the statistics stage's groups of SR rows (STATS_BASE [B + 1], STATS_IMAGE
    [NS_TOTAL]). Counts the call-wide stage's CNT[1]."""
    GROUP_BASE = PLAN
    TILE_BASE = PLAN + (B + 1)
    GROUP_IMAGE = PLAN + 2 * (B + 1)
    STATS_BASE = GROUP_IMAGE + NG_TOTAL
    STATS_IMAGE = STATS_BASE + (B + 1)
    o = tl.arange(0, BLOCK)
    total_g = 0
    total_t = 0
    total_s = 0
    for b0 in range(0, B, BLOCK):
        ob = b0 + o
        mb = ob < B
        start = tl.load(CU + ob, mask=mb, other=0).to(tl.int64)
        end = tl.load(CU + ob + 1, mask=mb, other=0).to(tl.int64)
        start = tl.minimum(tl.maximum(start, 0), T)
        end = tl.minimum(tl.maximum(end, start), T)
        n = tl.where(mb, end - start, 0).to(tl.int32)
        ng = (n + GR - 1) // GR
        nt = (n + BR - 1) // BR
        ns = (n + SR - 1) // SR
        tl.store(GROUP_BASE + ob, total_g + tl.cumsum(ng, 0) - ng, mask=mb)
        tl.store(TILE_BASE + ob, total_t + tl.cumsum(nt, 0) - nt, mask=mb)
        tl.store(STATS_BASE + ob, total_s + tl.cumsum(ns, 0) - ns, mask=mb)
        total_g += tl.sum(ng, 0)
        total_t += tl.sum(nt, 0)
        total_s += tl.sum(ns, 0)
    tl.store(GROUP_BASE + B, total_g)
    tl.store(TILE_BASE + B, total_t)
    tl.store(STATS_BASE + B, total_s)
    tl.debug_barrier()
    _group_images(GROUP_BASE, GROUP_IMAGE, total_g, NG_TOTAL, B, SEARCH)
    _group_images(STATS_BASE, STATS_IMAGE, total_s, NS_TOTAL, B, SEARCH)
    count_done(CNT + 1)


# ---- statistics and the sketch product -------------------------------------------------------------


@triton.jit(noinline=True)
def stats_and_sketch(x_img, sxn, sxd, sc_img, scn, n_img, D, l_img, row0, row1, tile0, OMS, om16, TSUM, TSCAL,
                     q_img, done, HAS_SCORES: tl.constexpr, CENTER: tl.constexpr, IS_F64: tl.constexpr,
                     SPLIT16: tl.constexpr,
                     PRESCALE16: tl.constexpr, XPREC: tl.constexpr, LP: tl.constexpr, BR: tl.constexpr,
                     BD: tl.constexpr):
    # BD here is the reduction chunk (the launcher passes BK)
    """One pass over rows [row0, row1) of an image, tile by tile (BR rows; tile index tile0 + k):

    * max |x| and non-finite entries (tokens and scores) -> the tile's power of two s_t;
    * per BD-column chunk of the tile scaled by 1/s_t: its column sums (TSUM[t]), the sum of squares
      around the tile's own column means and the raw sum of squares (TSCAL[t], fp64 sums of fp32 chunk
      sums): Chan's pairwise form of the centred energy, combined over tiles by the reduce task;
    * Y~_t = X_t Omega with the tile scaled by 1/s_t (float16: unscaled), into the image's Q rows;
      float32 / float64 tokens (centred products) take the tile centred on its own column means,
      (X_t - 1 m_t^T) Omega: the image's mean is not known yet, and subtracting 1 (mu^T Omega) from
      an un-centred product afterwards cancels (a mean 300x the spread cost ~8 bits of Y, enough to
      move the least converged Ritz values by 1e-4 sigma_1); fix_sketch adds 1 ((m_t - mu)^T Omega).
    TSCAL[t] = (max |x|, centred sum of squares, raw sum of squares, non-finite flag), fp64.
    """
    o_r = tl.arange(0, BR)
    o_d = tl.arange(0, BD)
    o_l = tl.arange(0, LP)
    for r0 in range(row0, row1, BR):
        t = tile0 + (r0 - row0) // BR
        rows = r0 + o_r
        m_r = rows < row1
        n_t = tl.minimum(row1 - r0, BR)
        if IS_F64:
            amax = tl.zeros([BR, BD], dtype=tl.float64)
        else:
            amax = tl.zeros([BR, BD], dtype=tl.float32)
        nonfinite = tl.zeros([BR, BD], dtype=tl.int32)
        for d0 in range(0, D, BD):
            m_x = m_r[:, None] & ((d0 + o_d)[None, :] < D)
            b_x = tl.load(x_img + rows[:, None] * sxn + (d0 + o_d)[None, :] * sxd, mask=m_x, other=0.0)
            if IS_F64:
                b_x = b_x.to(tl.float64)
            else:
                b_x = b_x.to(tl.float32)
            nonfinite |= ((b_x - b_x) != 0.0).to(tl.int32)
            amax = tl.maximum(amax, tl.abs(b_x))
        bad = tl.max(tl.max(nonfinite, 1), 0)
        if HAS_SCORES:
            b_sc = tl.load(sc_img + rows * scn, mask=m_r, other=0.0)
            bad = bad | tl.max(((b_sc - b_sc) != 0.0).to(tl.int32), 0)
        amax_t = tl.max(tl.max(amax, 1), 0)
        inv_t, scale_t = pow2_inverse_scale(amax_t, IS_F64)
        ss = tl.cast(0.0, tl.float64)
        raw = tl.cast(0.0, tl.float64)
        acc = tl.zeros([BR, LP], dtype=tl.float32)
        for d0 in range(0, D, BD):
            cols = d0 + o_d
            m_x = m_r[:, None] & (cols[None, :] < D) & (bad == 0)
            b_raw = tl.load(x_img + rows[:, None] * sxn + cols[None, :] * sxd, mask=m_x, other=0.0)
            if IS_F64:
                b_x = (b_raw * inv_t).to(tl.float32)
            else:
                b_x = b_raw.to(tl.float32) * inv_t
            b_x = tl.where(m_x, b_x, 0.0)
            colsum = tl.sum(b_x, 0)  # [BD]
            tl.store(TSUM + t * D + cols, colsum, mask=cols < D)
            b_c = tl.where(m_x, b_x - (colsum / n_t)[None, :], 0.0)
            ss += tl.sum(tl.sum(b_c * b_c, 1), 0).to(tl.float64)
            raw += tl.sum(tl.sum(b_x * b_x, 1), 0).to(tl.float64)
            # whole rows of Omega (vector loads); its columns from l_img on are zeroed in Y below
            if SPLIT16:
                if PRESCALE16:
                    b_op = (b_raw.to(tl.float32) * inv_t).to(b_raw.dtype)
                else:
                    b_op = b_raw
                b_op = tl.where(m_x, b_op, tl.zeros_like(b_op))
            elif CENTER:
                b_op = b_c
            else:
                b_op = b_x
            om_offs = cols[:, None] * LP + o_l[None, :]
            acc = _dot_operand(b_op, OMS + om_offs, om16 + om_offs, D * LP, (cols < D)[:, None], acc, SPLIT16, 2,
                               XPREC)
        # column j of Y~ is X Omega[:, j]: the image's l_img columns, exact zeros past them
        acc = tl.where(o_l[None, :] < l_img, acc, 0.0)
        tl.store(q_img + rows[:, None] * LP + o_l[None, :], acc, mask=m_r[:, None])
        tl.store(TSCAL + t * 4 + 0, amax_t.to(tl.float64))
        tl.store(TSCAL + t * 4 + 1, ss)
        tl.store(TSCAL + t * 4 + 2, raw)
        tl.store(TSCAL + t * 4 + 3, bad.to(tl.float64))
    count_done(done)


@triton.jit(noinline=True)
def reduce_features(TSUM, TSCAL, tile0, ntiles, n_img, D, col0, col1, l_img, OMS, om16, mu_img, csum, img_f64, g,
                    FLAT_RTOL, done, CENTER: tl.constexpr, IS_F64: tl.constexpr, SPLIT16: tl.constexpr,
                    LP: tl.constexpr, BR: tl.constexpr, BD: tl.constexpr):
    """Task g of an image's reduce stage, features [col0, col1): the image's power of two s (from the
    tiles' max |x|) and whether it holds NaN/Inf (``bad``), its mean mu (scaled by 1/s) on these
    features, and their share of the exact centred energy E = sum_t [SS_t + n_t ||m_t - mu||^2]
    (Chan et al.; the tiles' statistics rescaled by s_t / s, exact powers of two) and of
    c = mu^T Omega (the rank-1 correction of the sketch product; SPLIT16: of the Omega its two 16-bit
    parts stand for, the operand the product took: see triton_linalg.product_operand).

    Every task computes s, bad, sum_t SS_t and the raw energy from the tiles' scalars (the same numbers
    in each); task 0 stores them (img_f64, see IMAGE_SCALARS), task g its energy partial at
    img_f64[IMAGE_SCALARS + g] and its c partial at csum [LP] (summed in task order by _image_energy
    and fix_sketch). A bad image gets mu = 0 (its products are zero; its outputs are NaN-marked by the
    budget task). Without centring E is the raw energy and c = 0."""
    KT: tl.constexpr = REDUCE_TILES
    o_t = tl.arange(0, KT)
    o_d = tl.arange(0, BD)
    o_l = tl.arange(0, LP)
    if IS_F64:
        amax = tl.zeros([KT], dtype=tl.float64)
    else:
        amax = tl.zeros([KT], dtype=tl.float32)
    bad = tl.zeros([KT], dtype=tl.float64)
    for k0 in range(0, ntiles, KT):
        m_t, t = _tile_block(tile0, k0, ntiles, KT)
        a_t = tl.load(TSCAL + t * 4 + 0, mask=m_t, other=0.0, cache_modifier=".cg")
        if IS_F64:
            amax = tl.maximum(amax, a_t)
        else:
            amax = tl.maximum(amax, a_t.to(tl.float32))
        bad = tl.maximum(bad, tl.load(TSCAL + t * 4 + 3, mask=m_t, other=0.0, cache_modifier=".cg"))
    inv, scale = pow2_inverse_scale(tl.max(amax, 0), IS_F64)
    bad = tl.max(bad, 0)
    ss = tl.zeros([KT], dtype=tl.float64)
    raw = tl.zeros([KT], dtype=tl.float64)
    for k0 in range(0, ntiles, KT):
        m_t, t = _tile_block(tile0, k0, ntiles, KT)
        ratio = tl.where(m_t, _tile_to_image_ratio(TSCAL, t, inv, IS_F64).to(tl.float64), 0.0)
        ss += tl.load(TSCAL + t * 4 + 1, cache_modifier=".cg") * ratio * ratio
        raw += tl.load(TSCAL + t * 4 + 2, cache_modifier=".cg") * ratio * ratio
    ss = tl.sum(ss, 0)
    raw = tl.sum(raw, 0)
    cross = tl.cast(0.0, tl.float64)
    c_om = tl.zeros([LP], dtype=tl.float32)
    for d0 in range(col0, col1, BD):
        cols = d0 + o_d
        m_d = cols < col1
        total = tl.zeros([BD], dtype=tl.float32)
        for k0 in range(0, ntiles, KT):
            m_t, t = _tile_block(tile0, k0, ntiles, KT)
            ratio = tl.where(m_t, _tile_to_image_ratio(TSCAL, t, inv, IS_F64).to(tl.float32), 0.0)
            b_s = tl.load(TSUM + t[:, None] * D + cols[None, :], mask=m_d[None, :], other=0.0, cache_modifier=".cg")
            total += tl.sum(b_s * ratio[:, None], 0)
        b_mu = total / tl.maximum(n_img, 1)
        b_mu = tl.where(bad != 0.0, 0.0, b_mu)
        tl.store(mu_img + cols, b_mu, mask=m_d)
        for k0 in range(0, ntiles, KT):
            m_t, t = _tile_block(tile0, k0, ntiles, KT)
            ratio = _tile_to_image_ratio(TSCAL, t, inv, IS_F64).to(tl.float32)
            n_k = tl.maximum(tl.minimum(n_img - (k0 + o_t) * BR, BR), 1)
            b_m = tl.load(TSUM + t[:, None] * D + cols[None, :], mask=m_d[None, :], other=0.0,
                          cache_modifier=".cg") * ratio[:, None] / n_k[:, None]
            b_dev = tl.where(m_t[:, None] & m_d[None, :], b_m - b_mu[None, :], 0.0)
            cross += tl.sum((n_k * tl.sum(b_dev * b_dev, 1)).to(tl.float64), 0)
        om_offs = cols[:, None] * LP + o_l[None, :]
        m_om = m_d[:, None] & (o_l[None, :] < l_img)
        if SPLIT16:  # the two parts' sum is exact in fp32
            b_om = (tl.load(om16 + om_offs, mask=m_om, other=0.0, cache_modifier=".cg").to(tl.float32)
                    + tl.load(om16 + D * LP + om_offs, mask=m_om, other=0.0, cache_modifier=".cg").to(tl.float32))
        else:
            b_om = tl.load(OMS + om_offs, mask=m_om, other=0.0, cache_modifier=".cg")
        c_om += tl.sum(b_mu[:, None] * b_om, 0)
    if CENTER:
        energy = ss
    else:
        energy = raw
        cross = tl.cast(0.0, tl.float64)
        c_om = tl.zeros([LP], dtype=tl.float32)
    tl.store(csum + o_l, c_om)
    tl.store(img_f64 + IMAGE_SCALARS + g, cross)
    if g == 0:
        tl.store(img_f64 + 0, inv.to(tl.float64))
        tl.store(img_f64 + 1, scale.to(tl.float64))
        tl.store(img_f64 + 2, energy)
        tl.store(img_f64 + 3, raw)
        tl.store(img_f64 + 4, FLAT_RTOL * raw)
        tl.store(img_f64 + 5, bad)
    count_done(done)


@triton.jit(noinline=True)
def fix_sketch(q_img, row0, row1, TSCAL, TSUM, tile0, n_img, D, l_img, OMS, mu_img, img_f64, csum, nsums, part,
               done,
               CENTER: tl.constexpr, IS_F64: tl.constexpr, SPLIT16: tl.constexpr, PRESCALE16: tl.constexpr,
               LP: tl.constexpr, BR: tl.constexpr, CB: tl.constexpr, BK: tl.constexpr, SPREC: tl.constexpr):
    """Y = Y~_t * f_t - 1 c_t^T for the rows [row0, row1): f_t = s_t / s (the tile's scale to the
    image's; float16: 1/s, its Y~ used the unscaled tokens); c_t = mu^T Omega for the 16-bit products
    (un-centred), c_t = (mu - f_t m_t)^T Omega for the others (their Y~ is centred on the tile's own
    mean m_t, see stats_and_sketch; the 16-bit c is the sum of the ``nsums`` reduce tasks' partials
    at csum [nsums, LP], in task order); zero for a bad image. Then the rows' Gram partial (the first
    CholeskyQR pass)."""
    o_r = tl.arange(0, BR)
    o_l = tl.arange(0, LP)
    o_k = tl.arange(0, BK)
    inv, scale, bad = _image_scalars(img_f64)
    if SPLIT16 and CENTER:
        c_om = _summed_partials(tl.zeros([LP], dtype=tl.float32), csum, nsums, LP)
    for r0 in range(row0, row1, BR):
        t = tile0 + (r0 - row0) // BR
        rows = r0 + o_r
        m_r = rows < row1
        if SPLIT16 and not PRESCALE16:
            factor = inv.to(tl.float32)
        else:
            factor = _tile_to_image_ratio(TSCAL, t, inv, IS_F64).to(tl.float32)
        y = tl.load(q_img + rows[:, None] * LP + o_l[None, :], mask=m_r[:, None], other=0.0, cache_modifier=".cg")
        y = y * factor
        if CENTER:
            if SPLIT16:
                y = y - c_om[None, :]
            else:
                n_t = tl.minimum(n_img - r0, BR)
                c_t = tl.zeros([LP], dtype=tl.float32)
                for d0 in range(0, D, BK):
                    cols = d0 + o_k
                    m_d = cols < D
                    b_m = tl.load(TSUM + t * D + cols, mask=m_d, other=0.0, cache_modifier=".cg") * (factor / n_t)
                    b_mu = tl.load(mu_img + cols, mask=m_d, other=0.0, cache_modifier=".cg")
                    b_om = tl.load(OMS + cols[:, None] * LP + o_l[None, :], mask=m_d[:, None] & (o_l[None, :] < l_img),
                                   other=0.0, cache_modifier=".cg")
                    c_t += tl.sum((b_mu - b_m)[:, None] * b_om, 0)
                y = y - c_t[None, :]
        y = tl.where(m_r[:, None] & (bad == 0), y, 0.0)
        tl.store(q_img + rows[:, None] * LP + o_l[None, :], y, mask=m_r[:, None])
    gram_partial(q_img, row0, row1, part, LP, CB, BK, SPREC)
    count_done(done)


# ---- products with X ------------------------------------------------------------------------------------


@triton.jit(noinline=True)
def x_times_w(x_img, sxn, sxd, mu_img, n_img, D, row0, row1, w_img, w16, wstride, csum, nsums, q_img, img_f64,
              part, done,
              CENTER: tl.constexpr, IS_F64: tl.constexpr, SPLIT16: tl.constexpr, PRESCALE16: tl.constexpr,
              XPREC: tl.constexpr, LP: tl.constexpr, XT: tl.constexpr, BK: tl.constexpr, CB: tl.constexpr,
              SPREC: tl.constexpr):
    """Q rows [row0, row1) = X_c W (W [D, LP] fp32 scratch), each tile of XT rows reduced over all of D
    in chunks of BK. SPLIT16: out_scale * (X W) - 1 (mu^T W), W read as its two 16-bit parts (w16, part
    stride ``wstride``), mu^T W the sum of the ``nsums`` group partials at csum [nsums, LP] in group
    order (both left by the last CholeskyQR pass of W). Then the Gram partial of those rows.

    W's columns from the image's l_img on are exactly 0, as Q's are (xt_times_q reads whole rows too):
    Y's are (stats_and_sketch zeroes Y~'s, fix_sketch masks Omega's), and a product or a CholeskyQR
    pass keeps a zero column exactly zero (its Gram row and column are 0, its pivot the shift, its
    L^-T row and column 0 off the diagonal). So W is read in whole rows: no per-column mask, vector
    loads."""
    inv, out_scale, bad = product_scales(img_f64, IS_F64, SPLIT16, PRESCALE16)
    o_k = tl.arange(0, BK)
    o_l = tl.arange(0, LP)
    o_r = tl.arange(0, XT)
    CORRECT: tl.constexpr = SPLIT16 and CENTER
    if CORRECT:
        mu_w = _summed_partials(tl.zeros([LP], dtype=tl.float32), csum, nsums, LP)
    for r0 in range(row0, row1, XT):
        acc = tl.zeros([XT, LP], dtype=tl.float32)
        for d0 in range(0, D, BK):
            cols = d0 + o_k
            b_x = _x_operand(x_img, sxn, sxd, mu_img, r0, d0, row1, D, inv, bad, CENTER, IS_F64, SPLIT16,
                             PRESCALE16, XT, BK)
            w_offs = cols[:, None] * LP + o_l[None, :]
            acc = _dot_operand(b_x, w_img + w_offs, w16 + w_offs, wstride, (cols < D)[:, None], acc, SPLIT16, 2, XPREC)
        acc = acc * out_scale
        if CORRECT:
            acc = acc - mu_w[None, :]
        rows = r0 + o_r
        tl.store(q_img + rows[:, None] * LP + o_l[None, :], acc, mask=(rows < row1)[:, None])
    gram_partial(q_img, row0, row1, part, LP, CB, BK, SPREC)
    count_done(done)


@triton.jit(noinline=True)
def xt_times_q(x_img, sxn, sxd, mu_img, n_img, D, col0, col1, q_img, q16, qstride, csum, nsums, w_img, img_f64,
               part, done,
               CENTER: tl.constexpr, IS_F64: tl.constexpr, SPLIT16: tl.constexpr, PRESCALE16: tl.constexpr,
               PARTS: tl.constexpr, XPREC: tl.constexpr, LP: tl.constexpr, XT: tl.constexpr, BK: tl.constexpr,
               CB: tl.constexpr, SPREC: tl.constexpr):
    """W rows [col0, col1) = X_c^T Q (Q [n_img, LP] fp32 scratch), each tile of XT features reduced over
    all of the image's rows in chunks of BK. SPLIT16: out_scale * (X^T Q) - mu (1^T Q), Q read as its
    first PARTS 16-bit parts (q16, part stride ``qstride``; :func:`_dot_operand`), 1^T Q the sum of the
    ``nsums`` group partials at csum [nsums, LP] in group order (both left by the last CholeskyQR pass
    of Q). Then the Gram partial of those rows (Z's: H = Z^T Z)."""
    inv, out_scale, bad = product_scales(img_f64, IS_F64, SPLIT16, PRESCALE16)
    o_d = tl.arange(0, XT)
    o_l = tl.arange(0, LP)
    o_k = tl.arange(0, BK)
    CORRECT: tl.constexpr = SPLIT16 and CENTER
    if CORRECT:
        q_sum = _summed_partials(tl.zeros([LP], dtype=tl.float32), csum, nsums, LP)
    for d0 in range(col0, col1, XT):
        acc = tl.zeros([XT, LP], dtype=tl.float32)
        for r0 in range(0, n_img, BK):
            rows = r0 + o_k
            b_x = _x_operand(x_img, sxn, sxd, mu_img, r0, d0, n_img, col1, inv, bad, CENTER, IS_F64, SPLIT16,
                             PRESCALE16, BK, XT)
            q_offs = rows[:, None] * LP + o_l[None, :]
            acc = _dot_operand(tl.trans(b_x), q_img + q_offs, q16 + q_offs, qstride, (rows < n_img)[:, None], acc,
                               SPLIT16, PARTS, XPREC)
        acc = acc * out_scale
        cols = d0 + o_d
        if CORRECT:
            b_mu = tl.load(mu_img + cols, mask=cols < col1, other=0.0, cache_modifier=".cg")
            acc = acc - b_mu[:, None] * q_sum[None, :]
        tl.store(w_img + cols[:, None] * LP + o_l[None, :], acc, mask=(cols < col1)[:, None])
    gram_partial(w_img, col0, col1, part, LP, CB, BK, SPREC)
    count_done(done)


# ---- spectrum, budget, leverage, selection, gather ----------------------------------------------------


@triton.jit(noinline=True)
def sigma_partial(w_img, col0, col1, vmat, sigp, done, LP: tl.constexpr, CB: tl.constexpr, BD: tl.constexpr,
                  SPREC: tl.constexpr):
    """sigp[j] = sum over rows [col0, col1) of Z of (Z V)_{:, j}^2, fp64 sums of fp32 tile sums; Z V a
    CB x CB block of V at a time."""
    NB: tl.constexpr = LP // CB
    KB: tl.constexpr = 32 if CB > 32 else CB  # the reduction in chunks of KB: smaller operands
    o_d = tl.arange(0, BD)
    o_c = tl.arange(0, CB)
    o_k = tl.arange(0, KB)
    for jb in range(NB):
        acc = tl.zeros([CB], dtype=tl.float64)
        for d0 in range(col0, col1, BD):
            cols = d0 + o_d
            b_zv = tl.zeros([BD, CB], dtype=tl.float32)
            for k0 in range(0, LP, KB):
                b_z = tl.load(w_img + cols[:, None] * LP + k0 + o_k[None, :], mask=(cols < col1)[:, None],
                              other=0.0, cache_modifier=".cg")
                b_v = tl.load(vmat + (k0 + o_k)[:, None] * LP + jb * CB + o_c[None, :], cache_modifier=".cg")
                b_zv = tl.dot(b_z, b_v, b_zv, input_precision=SPREC)
            acc += tl.sum(b_zv * b_zv, 0).to(tl.float64)
        tl.store(sigp + jb * CB + o_c, acc)
    count_done(done)


@triton.jit(noinline=True)
def budget_task(b, sigp_img, nparts, img_f64, sig2_img, rank_img, imgi, BIN, SIG, ENERGY, BUDGET, SAT,
                OTOK, sotb, sotm, sotd, OIDX, OMASK, L, M, D, l_img, m_img, min_img, THRESH, done,
                IS_F64: tl.constexpr, HAS_BUDGETS: tl.constexpr, SELECT: tl.constexpr, LP: tl.constexpr,
                RB: tl.constexpr, BS: tl.constexpr, BD: tl.constexpr):
    """sigma^2 (the partial sums of the sigma tasks, fp64), the descending order of sigma (rank by
    counting, ties to the lower column; columns past l_img last), cumulative energy, k*, the budget,
    flat / saturated / non-finite handling, the outputs SIG, ENERGY, BUDGET, SAT; imgi = (k*, budget,
    r = min(k*, l_img)). With SELECT it also writes the mask and the padding (slots >= budget: index -1,
    zero rows). Rows of RB of the [LP, LP] comparisons at a time."""
    o = tl.arange(0, LP)
    inv, scale, bad = _image_scalars(img_f64)
    energy64, raw, flat = _image_energy(img_f64, nparts)
    s2 = _summed_partials(tl.zeros([LP], dtype=tl.float64), sigp_img, nparts, LP)
    sig2 = tl.where((o < l_img) & (flat == 0), s2.to(tl.float32), 0.0)
    tl.store(sig2_img + o, sig2)
    energy = energy64.to(tl.float32)
    tl.debug_barrier()
    key = tl.where(o < l_img, sig2, -1.0)
    o_i = tl.arange(0, RB)
    for i0 in range(0, LP, RB):
        rows = i0 + o_i
        s_i = tl.load(sig2_img + rows, cache_modifier=".cg")
        k_i = tl.where(rows < l_img, s_i, -1.0)
        beats = (key[None, :] > k_i[:, None]) | ((key[None, :] == k_i[:, None]) & (o[None, :] < rows[:, None]))
        tl.store(rank_img + rows, tl.sum(beats.to(tl.int32), 1))
    tl.debug_barrier()
    rank = tl.load(rank_img + o, cache_modifier=".cg")
    n_reached = 0
    first = LP + 1
    for i0 in range(0, LP, RB):
        rows = i0 + o_i
        r_i = tl.load(rank_img + rows, cache_modifier=".cg")
        cum = tl.sum(tl.where((rank[None, :] <= r_i[:, None]) & (o[None, :] < l_img), sig2[None, :], 0.0), 1)
        reached = (cum >= THRESH * energy) & (rows < l_img)
        n_reached += tl.sum(reached.to(tl.int32), 0)
        first = tl.minimum(first, tl.min(tl.where(reached, r_i + 1, LP + 1), 0))
    saturated = (n_reached == 0) & (flat == 0)
    k_star = tl.where(saturated, m_img, first)
    k_star = tl.where(flat, min_img, k_star)
    budget = tl.minimum(tl.maximum(k_star, min_img), m_img)
    budget = tl.where(bad, m_img, budget)
    if HAS_BUDGETS:  # shares of a fixed batch total; k* (the leverage rank) stays the image's own
        budget = tl.minimum(tl.maximum(tl.load(BIN + b), 0), m_img)
    sigma = tl.sqrt(sig2)
    if IS_F64:
        sigma = (sigma.to(tl.float64) * scale).to(tl.float32)
        e_out = (energy.to(tl.float64) * scale * scale).to(tl.float32)
    else:
        scale32 = scale.to(tl.float32)
        sigma = sigma * scale32
        e_out = energy * scale32 * scale32
    e_out = tl.where(flat, 0.0, e_out)
    sigma = tl.where(bad & (rank < l_img), float("nan"), sigma)
    e_out = tl.where(bad, float("nan"), e_out)
    tl.store(SIG + b * L + rank, sigma, mask=o < L)
    tl.store(ENERGY + b, e_out)
    tl.store(BUDGET + b, budget.to(tl.int32))
    tl.store(SAT + b, (saturated | bad).to(tl.uint8))
    tl.store(imgi + 0, k_star)
    tl.store(imgi + 1, budget)
    tl.store(imgi + 2, tl.minimum(k_star, l_img))
    if SELECT:
        o_s = tl.arange(0, BS)
        o_d = tl.arange(0, BD)
        out_tok = OTOK + b * sotb
        for p0 in range(0, M, BS):
            o_p = p0 + o_s
            m_p = o_p < M
            pad = m_p & (o_p >= budget)
            tl.store(OMASK + b * M + o_p, (o_p < budget).to(tl.uint8), mask=m_p)
            tl.store(OIDX + b * M + o_p, tl.full([BS], -1, tl.int64), mask=pad)
            for d0 in range(0, D, BD):
                cols = d0 + o_d
                zeros = tl.zeros([BS, BD], dtype=OTOK.dtype.element_ty)
                tl.store(out_tok + o_p[:, None] * sotm + cols[None, :] * sotd, zeros,
                         mask=pad[:, None] & (cols < D)[None, :])
    count_done(done)


@triton.jit(noinline=True)
def leverage_rows(q_img, row0, row1, vmat, rank_img, imgi, lev_img, done, LP: tl.constexpr, CB: tl.constexpr,
                  BR: tl.constexpr, SPREC: tl.constexpr):
    """lev[i] = sum_{j: rank_j < r} (Q V)_ij^2 for rows [row0, row1), r = min(k*, l) (all l columns when
    saturated): the rank-r leverage of the estimated left singular vectors U = Q V, a CB x CB block of
    V at a time."""
    NB: tl.constexpr = LP // CB
    KB: tl.constexpr = 32 if CB > 32 else CB  # the reduction in chunks of KB: smaller operands
    o_r = tl.arange(0, BR)
    o_c = tl.arange(0, CB)
    o_k = tl.arange(0, KB)
    r = tl.load(imgi + 2, cache_modifier=".cg")
    for r0 in range(row0, row1, BR):
        rows = r0 + o_r
        m_r = rows < row1
        lev = tl.zeros([BR], dtype=tl.float32)
        for jb in range(NB):
            keep = tl.load(rank_img + jb * CB + o_c, cache_modifier=".cg") < r
            b_u = tl.zeros([BR, CB], dtype=tl.float32)
            for k0 in range(0, LP, KB):
                b_q = tl.load(q_img + rows[:, None] * LP + k0 + o_k[None, :], mask=m_r[:, None], other=0.0,
                              cache_modifier=".cg")
                b_v = tl.load(vmat + (k0 + o_k)[:, None] * LP + jb * CB + o_c[None, :], cache_modifier=".cg")
                b_u = tl.dot(b_q, tl.where(keep[None, :], b_v, 0.0), b_u, input_precision=SPREC)
            lev += tl.sum(b_u * b_u, 1)
        tl.store(lev_img + rows, lev, mask=m_r)
    count_done(done)


@triton.jit
def _selection_scores(sc_img, scn, lev_img, o, m, flat, bad, HAS_SCORES: tl.constexpr, SC_F64: tl.constexpr):
    """The selection score of tokens ``o``: the given scores (fp64 kept as fp64) or the leverage (0 for
    a flat image); 0 for a non-finite image (its first tokens are kept), NaN ranked last."""
    if HAS_SCORES:
        s = tl.load(sc_img + o * scn, mask=m, other=0.0)
        if not SC_F64:
            s = s.to(tl.float32)
    else:
        s = tl.load(lev_img + o, mask=m, other=0.0, cache_modifier=".cg")
        s = tl.where(flat, 0.0, s)
    s = tl.where(bad, 0.0, s)
    return tl.where(s == s, s, float("-inf"))


@triton.jit(noinline=True)
def select_rows(sc_img, scn, lev_img, kept_img, n_img, row0, row1, img_f64, nparts, imgi, kcnt, done,
                HAS_SCORES: tl.constexpr, SC_F64: tl.constexpr, BS: tl.constexpr):
    """Tokens [row0, row1) of the image: kept iff fewer than ``budget`` tokens of the whole image beat
    it (a greater score, or an equal one at a lower index); kept flags into kept_img, their count
    into kcnt."""
    inv, scale, bad = _image_scalars(img_f64)
    energy, raw, flat = _image_energy(img_f64, nparts)
    budget = tl.load(imgi + 1, cache_modifier=".cg")
    o_s = tl.arange(0, BS)
    count = 0
    for i0 in range(row0, row1, BS):
        o_i = i0 + o_s
        m_i = o_i < row1
        s_i = _selection_scores(sc_img, scn, lev_img, o_i, m_i, flat, bad, HAS_SCORES, SC_F64)
        rank_i = tl.zeros([BS], dtype=tl.int32)
        for j0 in range(0, n_img, BS):
            o_j = j0 + o_s
            m_j = o_j < n_img
            s_j = _selection_scores(sc_img, scn, lev_img, o_j, m_j, flat, bad, HAS_SCORES, SC_F64)
            wins = (s_j[None, :] > s_i[:, None]) | ((s_j[None, :] == s_i[:, None]) & (o_j[None, :] < o_i[:, None]))
            rank_i += tl.sum((wins & m_j[None, :]).to(tl.int32), 1)
        kept = (rank_i < budget) & m_i
        tl.store(kept_img + o_i, kept.to(tl.int32), mask=m_i)
        count += tl.sum(kept.to(tl.int32), 0)
    tl.store(kcnt, count)
    count_done(done)


@triton.jit(noinline=True)
def gather_rows(b, x_img, sxn, sxd, kept_img, kcnt_img, group, row0, row1, OTOK, sotb, sotm, sotd, OIDX, M, D, done,
                BS: tl.constexpr, BD: tl.constexpr):
    """The kept tokens of rows [row0, row1), in ascending order, into the output slots after those of
    the image's earlier groups: their indices and their rows (bit-exact copies)."""
    kept_before = 0
    for g in range(group):
        kept_before += tl.load(kcnt_img + g, cache_modifier=".cg")
    o_s = tl.arange(0, BS)
    o_d = tl.arange(0, BD)
    out_tok = OTOK + b * sotb
    for i0 in range(row0, row1, BS):
        o_i = i0 + o_s
        m_i = o_i < row1
        kept = tl.load(kept_img + o_i, mask=m_i, other=0, cache_modifier=".cg") != 0
        k32 = kept.to(tl.int32)
        slot = kept_before + tl.cumsum(k32, 0) - k32
        kept_before += tl.sum(k32, 0)
        tl.store(OIDX + b * M + slot, o_i.to(tl.int64), mask=kept)
        for d0 in range(0, D, BD):
            cols = d0 + o_d
            m = kept[:, None] & (cols < D)[None, :]
            b_row = tl.load(x_img + o_i[:, None] * sxn + cols[None, :] * sxd, mask=m, other=0.0)
            tl.store(out_tok + slot[:, None] * sotm + cols[None, :] * sotd, b_row, mask=m)
    count_done(done)
