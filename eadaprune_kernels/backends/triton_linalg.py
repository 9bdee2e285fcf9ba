"""The l x l work of the fused Triton kernel: Gram partials, the shifted Cholesky factorisation, Jacobi and the
budget, all on [LP, LP] fp32 matrices in global scratch (L2), one tile at a time.

No routine holds an [LP, LP] matrix in registers: LP = 256 is 256 KB, more than a block's registers or
shared memory. Matrices are row-major [LP, LP] fp32 in scratch; blocks are CB x CB with CB = min(LP, 64);
Jacobi works on row panels of PB rows. Every load of scratch that another program (or another thread
of this one) wrote uses ``cache_modifier=".cg"`` (L2, not a possibly stale L1 line); stores and loads
inside one program are separated by ``tl.debug_barrier()``.

Numerics (why these choices):
* Shifted CholeskyQR: each pass factors G + s I, s = CHOL_SHIFT * max diag G, pivots floored at s.
  The shift keeps the fp32 Cholesky defined for rank-deficient inputs (rank < l whenever l = N, since
  centring removes one rank, and for low-rank images) and makes Q = Y L^-T an exact contraction
  (Q^T Q = I - s L^-1 L^-T <= I), so sigma_j(Q^T X_c) <= sigma_j(X_c) still holds. One pass leaves
  cond(Q) <~ s^-1/2 = 1e3 (enough for an intermediate basis, whose span is all that matters); the
  final basis takes three passes (working precision).
* Blocked right-looking Cholesky: CB x CB diagonal blocks factor in registers by CB rank-1 steps that
  read the pivot column and row with masked reductions (no gather of the whole block); panels and trailing
  updates are fp32 block products (not 3xTF32: see cholesky_factor); Q = Y L^-T is then a block forward
  substitution with L (each row tile on its own), the inverses of L's diagonal blocks formed by the
  factorisation.
* Jacobi: two-sided, the parallel XOR ordering (round m pairs index i with i XOR m: a perfect matching;
  over a sweep every pair meets once), both indices of a pair use the angle computed from the lower
  one's row (J stays orthogonal). A round rotates whole rows only (contiguous loads): R = J^T H is
  stored transposed, J^T R^T = (J^T H J)^T replaces H, and V is kept as V^T (V^T <- J^T V^T).
  sigma_j = ||Z v_j|| afterwards (not sqrt(eig_j): an fp32 Gram's eigenvalues carry an absolute error
  u sigma_1^2, a sqrt(u) sigma_1 ~ 2.4e-4 sigma_1 floor under small singular values).
"""

from __future__ import annotations

import triton
import triton.language as tl

# Shift of the CholeskyQR passes, relative to the largest diagonal entry of the Gram matrix. Each pass
# makes the columns contract by lambda / (lambda + shift): the passes of one orthonormalisation
# under-estimate a dominant singular value by at most ~1.5e-6 relative (the lower-bound guarantee of
# the sketch is kept: Q is always a contraction), and directions weaker than ~1e-3 of the strongest
# are normalised by the later passes.
CHOL_SHIFT = tl.constexpr(1e-6)
# Smallest pivot: keeps an all-zero Gram (zero image, padded columns) finite: its Q columns stay 0.
PIVOT_FLOOR = tl.constexpr(1e-30)
FP32_UNIT_ROUNDOFF = tl.constexpr(2.0**-24)
# The Cholesky's block products: plain fp32 on the CUDA cores (why not 3xTF32: cholesky_factor).
CHOL_PREC = tl.constexpr("ieee")


@triton.jit
def count_done(done):
    """The task is done: every thread's stores come first (barrier), then one release increment of its
    stage's counter (the waiting side acquires it)."""
    tl.debug_barrier()
    tl.atomic_add(done, 1, sem="release")


@triton.jit
def wait_for(cnt, target, CNT, MAX_WAITS: tl.constexpr):
    """Spins until the counter ``cnt`` reaches ``target`` (acquire). MAX_WAITS > 0 (the interpreter,
    where a wait can never end): polls once and, if the target is not reached, records it in
    CNT[2] (the launcher raises)."""
    seen = tl.atomic_add(cnt, 0, sem="acquire")
    if MAX_WAITS > 0:
        if seen < target:
            tl.atomic_add(CNT + 2, 1)
    else:
        while seen < target:
            seen = tl.atomic_add(cnt, 0, sem="acquire")
    tl.debug_barrier()


@triton.jit(noinline=True)
def programs_barrier(ctr, k, nprog, CNT, MAX_WAITS: tl.constexpr):
    """The k-th barrier (k = 1, 2, ...) of the ``nprog`` programs that share the counter ``ctr``
    (zeroed by the launcher): every program's stores come first, then each adds one (release) and
    waits until all nprog x k have arrived (acquire). The programs must all be resident: see
    jacobi_eigenvectors for why they are."""
    count_done(ctr)
    wait_for(ctr, k * nprog, CNT, MAX_WAITS)


@triton.jit
def _load_block(mat, bi, bj, LP: tl.constexpr, CB: tl.constexpr):
    """Block (bi, bj) [CB, CB] of the row-major [LP, LP] fp32 matrix ``mat``."""
    o = tl.arange(0, CB)
    return tl.load(mat + (bi * CB + o)[:, None] * LP + bj * CB + o[None, :], cache_modifier=".cg")


@triton.jit
def _summed_rows(part, nparts, r0, ncols, LP: tl.constexpr, NR: tl.constexpr):
    """Rows [r0, r0 + NR), columns [0, ncols) of the sum of the ``nparts`` partial Grams [LP, LP]
    stored one after the other from ``part`` ([NR, LP], 0 from column ncols on), added in a fixed
    order (p = 0, 1, ...: deterministic) with four partials' loads in flight."""
    o_l = tl.arange(0, LP)
    cols = (o_l < ncols)[None, :]
    rows = part + (r0 + tl.arange(0, NR))[:, None] * LP + o_l[None, :]
    acc = tl.zeros([NR, LP], dtype=tl.float32)
    for p0 in tl.range(0, nparts, 4, num_stages=2):  # absent partials load as 0
        g0 = tl.load(rows + p0 * LP * LP, mask=cols, other=0.0, cache_modifier=".cg")
        g1 = tl.load(rows + (p0 + 1) * LP * LP, mask=cols & (p0 + 1 < nparts), other=0.0, cache_modifier=".cg")
        g2 = tl.load(rows + (p0 + 2) * LP * LP, mask=cols & (p0 + 2 < nparts), other=0.0, cache_modifier=".cg")
        g3 = tl.load(rows + (p0 + 3) * LP * LP, mask=cols & (p0 + 3 < nparts), other=0.0, cache_modifier=".cg")
        acc = (((acc + g0) + g1) + g2) + g3
    return acc


@triton.jit
def _store_block(mat, bi, bj, val, LP: tl.constexpr, CB: tl.constexpr):
    o = tl.arange(0, CB)
    tl.store(mat + (bi * CB + o)[:, None] * LP + bj * CB + o[None, :], val)


@triton.jit
def gram_partial(ws, row0, row1, part, LP: tl.constexpr, CB: tl.constexpr, BR: tl.constexpr,
                 SPREC: tl.constexpr):
    """Lower blocks of part [LP, LP] = Y^T Y for rows [row0, row1) of the contiguous fp32 ws [*, LP],
    BR rows at a time."""
    NB: tl.constexpr = LP // CB
    o_r = tl.arange(0, BR)
    o_c = tl.arange(0, CB)
    tl.debug_barrier()  # the rows were just written by this program
    for i in range(NB):
        for j in range(i + 1):
            acc = tl.zeros([CB, CB], dtype=tl.float32)
            for r0 in range(row0, row1, BR):
                rows = r0 + o_r
                m = (rows < row1)[:, None]
                y_i = tl.load(ws + rows[:, None] * LP + i * CB + o_c[None, :], mask=m, other=0.0,
                              cache_modifier=".cg")  # [BR, CB]
                if i == j:
                    y_j = y_i
                else:
                    y_j = tl.load(ws + rows[:, None] * LP + j * CB + o_c[None, :], mask=m, other=0.0,
                                  cache_modifier=".cg")
                acc = tl.dot(tl.trans(y_i), y_j, acc, input_precision=SPREC)
            _store_block(part, i, j, acc, LP, CB)


@triton.jit
def store_parts(ptrs, pstride, x, nparts, mask):
    """x (fp32) as ``nparts`` 16-bit parts (the element type of ``ptrs``: the tokens' dtype) at ptrs +
    p * pstride: part p is the remainder x - (parts 0 .. p - 1) rounded to nearest even by the cast
    (cvt.rn on the GPU; the backend's interpreter fix rounds bf16 casts the same way). Two parts carry
    ~2^-17 of x relative, three ~2^-25 (bfloat16). A 16-bit product with X then takes the parts as
    they are: the split is made once, where the operand is produced, not by every task that reads it.
    Returns the value the parts stand for, x - the last remainder (the remainders are exact)."""
    rest = x
    for p in range(nparts):
        part = rest.to(ptrs.dtype.element_ty)
        tl.store(ptrs + p * pstride, part, mask=mask)
        rest = rest - part.to(tl.float32)
    return x - rest


@triton.jit
def product_operand(ws, row0, row1, parts, pstride, nparts, wts, weighted, csum, SUMS: tl.constexpr,
                    LP: tl.constexpr, BR: tl.constexpr):
    """Rows [row0, row1) of ws [*, LP] (fp32, just written by this program) as the next product with
    16-bit tokens takes them: ``nparts`` 16-bit parts into parts [nparts][*, LP] (part stride
    ``pstride``, :func:`store_parts`), and with SUMS the rows' column sums into csum [LP], each row
    weighted by wts[row] when ``weighted`` (else 1): the partial of the product's rank-1 mean
    correction (1^T Q or mu^T W), which the product task sums over the groups in order. The sums are
    of the value the parts stand for, not of the fp32 rows: the product (X^T Q~) and its correction
    (mu 1^T Q~) then take the same operand and their difference is X_c^T Q~ up to fp32 sums; with the
    fp32 rows' sums it carried mu 1^T (Q~ - Q), the parts' rounding times the mean (with a mean of 8-9
    sigma_1, up to 2.1e-4 sigma_1 on the smallest singular values: tests/test_triton_numerics.py,
    test_large_mean_keeps_small_singular_values)."""
    o_r = tl.arange(0, BR)
    o_l = tl.arange(0, LP)
    tl.debug_barrier()  # the rows were just written by this program
    acc = tl.zeros([BR, LP], dtype=tl.float32)  # per row of the tile: one reduction over rows at the end
    for r0 in range(row0, row1, BR):
        rows = r0 + o_r
        m = (rows < row1)[:, None]
        y = tl.load(ws + rows[:, None] * LP + o_l[None, :], mask=m, other=0.0, cache_modifier=".cg")
        y = store_parts(parts + rows[:, None] * LP + o_l[None, :], pstride, y, nparts, m)
        if SUMS:
            w = tl.load(wts + rows, mask=(rows < row1) & (weighted != 0), other=1.0, cache_modifier=".cg")
            acc += w[:, None] * y
    if SUMS:
        tl.store(csum + o_l, tl.sum(acc, 0))


@triton.jit
def _chol_small(A, shift, CB: tl.constexpr):
    """M = L^-1 with L L^T = A + shift I (pivots floored at shift), A [CB, CB] in registers (its lower
    triangle is read).

    Right-looking: step j takes column j of the trailing matrix, divides it by the pivot and subtracts
    its outer product; M is built alongside as L_j^-1 ... L_0^-1 I. A is made symmetric from its lower
    triangle first and stays bitwise symmetric (each step subtracts low_r low_c, with low_r and low_c
    the same numbers), so row j equals column j: the step reduces over columns for column j (inside a
    warp: the warps split the rows) and over rows, in one reduction of A and M joined, for row j of A
    and of M (the one exchange between warps per step: cost model 207 cycles a step, 2 barriers, where
    taking the pivot from the column and moving it between the two layouts took 403, 6 barriers).
    """
    o = tl.arange(0, CB)
    o_r = o[:, None]
    o_c = o[None, :]
    A = tl.where(o_r >= o_c, A, tl.trans(A))
    M = tl.where(o_r == o_c, 1.0, 0.0)
    for j in range(CB):
        col = tl.sum(tl.where(o_c == j, A, 0.0), 1)  # [CB] = A[:, j], over the rows
        a_row, m_row = tl.split(tl.sum(tl.where((o_r == j)[:, :, None], tl.join(A, M), 0.0), 0))
        piv = tl.sum(tl.where(o == j, a_row, 0.0), 0)
        d = tl.sqrt(tl.maximum(piv + shift, shift))
        low_r = tl.where(o > j, col / d, 0.0)  # the Cholesky column below the pivot, over the rows
        low_c = tl.where(o > j, a_row / d, 0.0)  # the same numbers over the columns
        A = A - low_r[:, None] * low_c[None, :]
        row = m_row / d  # [CB] = new M[j, :]
        M = tl.where(o_r == j, row[None, :], M - low_r[:, None] * row[None, :])
    return M


@triton.jit(noinline=True)
def cholesky_factor(part, nparts, amat, mmat, done, LP: tl.constexpr, FB: tl.constexpr, AB: tl.constexpr,
                    TW: tl.constexpr):
    """L L^T = G + s I, G = the sum of the ``nparts`` partial Grams (lower blocks, [LP, LP] each,
    consecutive from ``part``), s = CHOL_SHIFT * max diag G (at least PIVOT_FLOOR): ``amat`` (the work
    matrix) ends holding L's FB x FB blocks below the diagonal, ``mmat`` the inverses M_JJ = L_JJ^-1 of
    L's AB x AB diagonal blocks (zero above the diagonal inside them), what solve_transpose needs. A
    task: counts ``done`` when finished.

    Blocked right-looking on FB x FB blocks (FB divides the partial Grams' block CB, so their lower CB
    blocks hold every lower FB block; a diagonal block's FB dependent rank-1 steps are cheaper on
    smaller blocks: the cost model's step was 566 cycles at FB = 16, 690 at 32, before _chol_small's
    single exchange between warps per step): factor the diagonal block in registers (_chol_small gives
    its inverse M_kk directly), then the column panel below it at once, L_ik = A_ik M_kk^T for all
    i > k, and the trailing update one block row at a time, A_ij -= L_ik L_jk^T for k < j <= i; then,
    inside each AB diagonal block, M_ij = -M_ii sum_{k=j}^{i-1} L_ik M_kj. The whole of L^-1 is not
    formed: the apply stages solve with L by block substitution (the same products as multiplying by
    L^-T; forming L^-1 was 28 dependent block-row iterations here, ~13 us a factorisation in the cost
    model). Partials are summed in a fixed order (deterministic).

    The block products are plain fp32 (CHOL_PREC = ``ieee``, CUDA cores), like the rank-1 steps: 3xTF32
    truncates its small parts on sm_90, a bias of ~5e-7 of the entries, too close to the shift (1e-6 of
    the largest): it halved a singular value of 3e-4 sigma_1 that sits below the shift, seen when the
    blocks were 32 wide (three such trailing updates; 16-wide blocks have more of them)
    (tests/test_triton_numerics.py, the N = 2880 batch).
    """
    NB: tl.constexpr = LP // FB
    # the trailing update takes TW columns at a time (kernel_settings: at LP = 128, 34 windows of 64
    # instead of 28 rows of 128)
    tl.static_assert(TW % FB == 0, "the trailing update's window holds whole FB blocks")
    o = tl.arange(0, FB)
    o_l = tl.arange(0, LP)
    o_w = tl.arange(0, TW)
    dmax = tl.zeros([FB], dtype=tl.float32)
    for i in range(NB):  # block row i of G (its lower blocks), the partials summed
        rows = i * FB + o
        lower = (o_l < i * FB + FB)[None, :]
        acc = _summed_rows(part, nparts, i * FB, i * FB + FB, LP, FB)
        tl.store(amat + rows[:, None] * LP + o_l[None, :], acc, mask=lower)
        dmax = tl.maximum(dmax, tl.sum(tl.where(rows[:, None] == o_l[None, :], acc, 0.0), 1))
    shift = tl.maximum(tl.max(dmax, 0) * CHOL_SHIFT, PIVOT_FLOOR)
    tl.debug_barrier()
    for k in range(NB):
        m_kk = _chol_small(_load_block(amat, k, k, LP, FB), shift, FB)
        _store_block(mmat, k, k, m_kk, LP, FB)
        below = (o_l >= k * FB + FB)[:, None]  # the blocks below the diagonal block, as one column panel
        col = amat + o_l[:, None] * LP + k * FB + o[None, :]
        l_col = tl.dot(tl.load(col, mask=below, other=0.0, cache_modifier=".cg"), tl.trans(m_kk),
                       input_precision=CHOL_PREC)  # [LP, FB]: L_ik = A_ik M_kk^T (0 for i <= k)
        tl.debug_barrier()
        tl.store(col, l_col, mask=below)  # L_ik replaces A_ik
        tl.debug_barrier()
        for i in range(k + 1, NB):  # block row i of the trailing update: A_ij -= L_ik L_jk^T, k < j <= i
            rows = i * FB + o
            l_ik = tl.load(amat + rows[:, None] * LP + k * FB + o[None, :], cache_modifier=".cg")  # [FB, FB]
            for c0 in range(k * FB + FB, i * FB + FB, TW):  # its columns, TW at a time (not all LP)
                cols = c0 + o_w
                m_c = cols < i * FB + FB
                l_jk = tl.load(amat + cols[:, None] * LP + k * FB + o[None, :], mask=m_c[:, None], other=0.0,
                               cache_modifier=".cg")  # [TW, FB]: L_jk for the window's rows j of the panel
                a_w = tl.load(amat + rows[:, None] * LP + cols[None, :], mask=m_c[None, :], other=0.0,
                              cache_modifier=".cg")
                a_w = a_w - tl.dot(l_ik, tl.trans(l_jk), input_precision=CHOL_PREC)
                tl.store(amat + rows[:, None] * LP + cols[None, :], a_w, mask=m_c[None, :])
        tl.debug_barrier()
    R: tl.constexpr = AB // FB  # FB blocks per side of an AB x AB diagonal block
    for i in range(NB):  # M_ij = -M_ii sum_{k=j}^{i-1} L_ik M_kj inside the AB diagonal blocks, 0 above them
        for j in range(i - i % R, i):
            acc = tl.zeros([FB, FB], dtype=tl.float32)
            for k in range(j, i):
                acc = tl.dot(_load_block(amat, i, k, LP, FB), _load_block(mmat, k, j, LP, FB), acc,
                             input_precision=CHOL_PREC)
            _store_block(mmat, i, j, -tl.dot(_load_block(mmat, i, i, LP, FB), acc, input_precision=CHOL_PREC),
                         LP, FB)
        for j in range(i + 1, i - i % R + R):
            _store_block(mmat, i, j, tl.zeros([FB, FB], dtype=tl.float32), LP, FB)
        tl.debug_barrier()
    count_done(done)


@triton.jit
def solve_transpose(ws, row0, row1, lmat, mmat, LP: tl.constexpr, AB: tl.constexpr, BR: tl.constexpr,
                    SPREC: tl.constexpr):
    """ws[rows] <- ws[rows] L^-T for rows [row0, row1), by block forward substitution on [AB, AB]
    blocks: X_J = (Y_J - sum_{K<J} X_K L_JK^T) M_JJ^T with L's blocks below the diagonal in ``lmat``
    and M_JJ = L_JJ^-1 in ``mmat`` (cholesky_factor). J runs upwards and X_J replaces Y_J in place:
    the sum reads only blocks K < J, already final."""
    NB: tl.constexpr = LP // AB
    o_r = tl.arange(0, BR)
    o_c = tl.arange(0, AB)
    for r0 in range(row0, row1, BR):
        rows = r0 + o_r
        m = (rows < row1)[:, None]
        for jb in range(NB):
            acc = tl.load(ws + rows[:, None] * LP + jb * AB + o_c[None, :], mask=m, other=0.0, cache_modifier=".cg")
            for kb in range(jb):
                x = tl.load(ws + rows[:, None] * LP + kb * AB + o_c[None, :], mask=m, other=0.0,
                            cache_modifier=".cg")
                acc = tl.dot(x, tl.trans(-_load_block(lmat, jb, kb, LP, AB)), acc, input_precision=SPREC)
            x = tl.dot(acc, tl.trans(_load_block(mmat, jb, jb, LP, AB)), input_precision=SPREC)
            tl.debug_barrier()  # every thread has read Y_J
            tl.store(ws + rows[:, None] * LP + jb * AB + o_c[None, :], x, mask=m)
            tl.debug_barrier()  # X_J is read by the next blocks' sums


@triton.jit
def _rotation(a_ll, a_hh, a_lh, lower):
    """(c, s, t) of the Jacobi rotation that annihilates a_lh of the pair (lo, hi) with diagonal a_ll,
    a_hh (t = tan of its angle); s is the coefficient of the partner row / column (-t c for the lower
    index, t c for the upper)."""
    diff = a_hh - a_ll
    sgn = tl.where(diff >= 0.0, 1.0, -1.0)
    den = tl.abs(diff) + tl.sqrt(diff * diff + 4.0 * a_lh * a_lh)
    t = tl.where(den > 0.0, sgn * 2.0 * a_lh / tl.where(den > 0.0, den, 1.0), 0.0)
    c = 1.0 / tl.sqrt(1.0 + t * t)
    return c, tl.where(lower, -t * c, t * c), t


@triton.jit
def _entries(sub, idx, AXIS: tl.constexpr):
    """[NS, S2]: one entry of sub [NS, S2, S2] per row (AXIS = 2: sub[s, i, idx[s, i, 0]]) or per
    column (AXIS = 1: sub[s, idx[s, 0, j], j]): a gather along AXIS, no reduction over the matrix."""
    return tl.sum(tl.gather(sub, idx, AXIS), AXIS)


@triton.jit
def _round_rotation(e, d, ml, NS: tl.constexpr, S2: tl.constexpr):
    """(c, s, d') of the Jacobi round pairing local index a with a XOR ml on NS subproblems [NS, S2]:
    e holds each index's entry with its partner (either triangle's), d the diagonal, which follows the
    rotation exactly (a_ll - t a_lh, a_hh + t a_lh, as in Rutishauser's Jacobi) instead of being read
    back. Both indices of a pair take a_lh from the lower index's e (the same angle on both sides). ml
    = 0 pairs every index with itself: the identity (t = 0, c = 1, s = 0 exactly)."""
    a = tl.arange(0, S2)
    partner = tl.broadcast_to((a ^ ml)[None, :], [NS, S2])
    d_p = tl.gather(d, partner, 1)
    lower = a[None, :] < (a ^ ml)[None, :]
    paired = a[None, :] != (a ^ ml)[None, :]
    a_lh = tl.where(paired, tl.where(lower, e, tl.gather(e, partner, 1)), 0.0)
    c, s, t = _rotation(tl.where(lower, d, d_p), tl.where(lower, d_p, d), a_lh, lower)
    return c, s, d + tl.where(lower, -t, t) * a_lh


@triton.jit
def _jacobi_round_pair(sub, u, d, ml, NS: tl.constexpr, S2: tl.constexpr):
    """Rounds ml and ml + 1 on the NS independent symmetric subproblems sub [NS, S2, S2] with diagonal
    d [NS, S2], in registers: sub <- J^T sub J, u <- u J (u accumulates the rotations) for each.

    A rotation mixes rows (J^T .) and columns (. J); one of the two directions crosses the program's
    warps whatever the layout, and J^T (S J) = (J^T S) J lets the rounds take turns: round ml mixes
    columns first, then rows; round ml + 1 rows first, then columns. Each mix takes both of its terms
    from gathers along its own axis (the identity and the partner), so the matrix changes layout once
    per round (to the rows-in-a-warp layout and back), not twice: the cost model's pair of rounds 768
    cycles against 2 x 632 (sm_90 SASS of the bf16 LP = 128 kernel). The pivots: round ml reads
    sub[i, i ^ ml] along rows, round ml + 1 sub[i ^ (ml + 1), i] along columns (its symmetric
    counterpart), each where the matrix is at the time."""
    a = tl.arange(0, S2)
    a_r = a[None, :, None]  # row index
    a_c = a[None, None, :]  # column index
    # round ml: S J, then J^T (S J)
    e = _entries(sub, tl.broadcast_to(a_r ^ ml, [NS, S2, 1]), 2)  # sub[i, i ^ ml]
    c, s, d = _round_rotation(e, d, ml, NS, S2)
    cols = tl.broadcast_to(a_c ^ ml, [NS, S2, S2])
    mixed = c[:, None, :] * sub + s[:, None, :] * tl.gather(sub, cols, 2)
    u = c[:, None, :] * u + s[:, None, :] * tl.gather(u, cols, 2)
    sub = (c[:, :, None] * tl.gather(mixed, tl.broadcast_to(a_r, [NS, S2, S2]), 1)
           + s[:, :, None] * tl.gather(mixed, tl.broadcast_to(a_r ^ ml, [NS, S2, S2]), 1))
    # round ml + 1: J^T S, then (J^T S) J
    m2 = ml + 1
    e = _entries(sub, tl.broadcast_to(a_c ^ m2, [NS, 1, S2]), 1)  # sub[i ^ m2, i]
    c, s, d = _round_rotation(e, d, m2, NS, S2)
    mixed = c[:, :, None] * sub + s[:, :, None] * tl.gather(sub, tl.broadcast_to(a_r ^ m2, [NS, S2, S2]), 1)
    cols = tl.broadcast_to(a_c ^ m2, [NS, S2, S2])
    sub = (c[:, None, :] * tl.gather(mixed, tl.broadcast_to(a_c, [NS, S2, S2]), 2)
           + s[:, None, :] * tl.gather(mixed, cols, 2))
    u = c[:, None, :] * u + s[:, None, :] * tl.gather(u, cols, 2)
    return sub, u, d


@triton.jit
def _set_indices(sets, a, g, half, JB: tl.constexpr):
    """Global indices of local index ``a`` of the sets ``sets`` in group g: set s joins block P_s (the
    s-th block whose bit ``half`` is 0; ``half`` = the highest power of two <= max(g, 1)) with block
    P_s XOR max(g, 1); local indices [0, JB) are P_s's rows, [JB, 2 JB) the partner block's."""
    low = sets % half
    block = (sets - low) * 2 + low
    block = block ^ tl.where(a >= JB, tl.maximum(g, 1), 0)
    return block * JB + a % JB


@triton.jit
def _set_rotation(uset, st, g, half, JB: tl.constexpr):
    """(global indices [2 JB], U^T [2 JB, 2 JB]) of set ``st`` of group g: the rows its accumulated
    rotation U (stored at uset by the group's rounds) mixes, and U^T."""
    S2: tl.constexpr = 2 * JB
    a = tl.arange(0, S2)
    u = tl.load(uset + st * (S2 * S2) + a[:, None] * S2 + a[None, :], cache_modifier=".cg")
    return _set_indices(st, a, g, half, JB), tl.trans(u)


@triton.jit
def _virtual_program(p, vi, JSEQ: tl.constexpr, REVERSE: tl.constexpr):
    """The vi-th of the JSEQ virtual programs real program p runs (in reverse order with REVERSE)."""
    if REVERSE:
        return p * JSEQ + JSEQ - 1 - vi
    else:
        return p * JSEQ + vi


@triton.jit
def _off_diagonal(h, LP: tl.constexpr, PB: tl.constexpr):
    """(sum of squared off-diagonal entries, sum of all squared entries) of h [LP, LP]."""
    o = tl.arange(0, LP)
    o_p = tl.arange(0, PB)
    off = tl.zeros([PB], dtype=tl.float32)
    full = tl.zeros([PB], dtype=tl.float32)
    for r0 in range(0, LP, PB):
        rows = r0 + o_p
        b_h = tl.load(h + rows[:, None] * LP + o[None, :], cache_modifier=".cg")
        sq = b_h * b_h
        full += tl.sum(sq, 1)
        off += tl.sum(tl.where(rows[:, None] == o[None, :], 0.0, sq), 1)
    return tl.sum(off, 0), tl.sum(full, 0)


@triton.jit
def jacobi_eigenvectors(h, t, uset, w0, w1, vout, p, bar, CNT, LP: tl.constexpr, JB: tl.constexpr, JP: tl.constexpr,
                        JSEQ: tl.constexpr, MAX_SWEEPS: tl.constexpr, MAX_WAITS: tl.constexpr, SPREC: tl.constexpr,
                        REVERSE: tl.constexpr):
    """Eigenvectors (columns, into ``vout``) of the symmetric h [LP, LP] (overwritten); t [LP, LP],
    uset [LP * 2 JB], w0 and w1 [LP, LP] are work buffers. Parallel two-sided Jacobi in the XOR
    ordering (see the module docstring); stops when the squared off-diagonal mass is below
    (2 LP u)^2 ||H||_F^2 or after MAX_SWEEPS sweeps. Returns the sweeps it ran (tools/jacobi_sweeps.py).

    Blocked, with the same rotations in the same order: the rounds m = g JB .. g JB + JB - 1 (group g;
    group 0's m = 0 is the identity, so that every group runs pairs of rounds: _jacobi_round_pair)
    pair index r with r XOR m, which stays in the union of its JB-row block and the block XOR g (for
    g = 0: the block itself). Those unions are independent 2 JB x 2 JB
    subproblems (sets) for the whole group: they are gathered once, the group's rounds run on them in
    registers (accumulating each subproblem's rotations in U), and then H <- U^T H U and
    W <- U^T W (W = V^T) are applied once as tensor-core products. R = U^T H is stored transposed and
    U^T R^T = (U^T H U)^T, up to rounding symmetric, replaces H. The products are 3xTF32: sm_90
    truncates the small parts' low bits, a bias of ~2^-21 per product that would shrink the
    eigenvectors' norms by ~1e-6 per group (3.7e-5 seen at LP = 128); each eigenvector is normalised
    at the end (the angles between them stay accurate to ~1e-6).

    **Split over JP virtual programs**, each owning LP / (2 JB JP) sets (and LP / JP rows of W and V):
    a group is two phases, (1) the rounds of its own sets, U^T H of their rows into R^T and their rows
    of W', (2) the rows of its own sets of H' = U^T R^T; phase 1 reads only H and W rows of its own
    sets, phase 2 R^T rows that every set wrote. This routine runs JSEQ of the virtual programs one
    after the other (virtual programs p JSEQ .. p JSEQ + JSEQ - 1; in reverse order in every loop when
    REVERSE, which must not change a bit: a test checks that no phase reads what another set writes in
    it), and the
    JP / JSEQ real programs that share the image meet at ``programs_barrier`` (counter ``bar``) after
    every phase. The kernel runs JSEQ = 1: JP programs, one per virtual program (the launcher sets
    JP = 1 under the interpreter, which runs one program at a time); the kernel's own tests run
    JSEQ = JP virtual programs in one program (``jacobi_alone``), whose barriers never wait. Every
    real program computes the off-diagonal mass itself (the same number from the same H) and so
    leaves the sweep loop with the others.

    *Why the barrier cannot deadlock*: the JP / JSEQ programs of an image are consecutive tickets of
    one stage, waiting for the same previous stage. Take the smallest claimed, unfinished ticket: its
    earlier siblings are finished, which they cannot be before it arrives at their barriers, so it is
    the first of its image; its later siblings are running or unclaimed, and while fewer than JP of
    them run, a resident slot is free for the next program to claim the next ticket (the grid has one
    program per ticket). So the siblings all become resident, provided a GPU holds JP programs at
    once (JP <= 4; an H100 / H200 holds 132 x 2)."""
    S2: tl.constexpr = 2 * JB
    NS: tl.constexpr = LP // S2
    SPP: tl.constexpr = NS // JP  # sets per virtual program
    VROWS: tl.constexpr = LP // JP  # rows of W / V per virtual program
    NPROG: tl.constexpr = JP // JSEQ  # real programs per image
    o = tl.arange(0, LP)
    o_b = tl.arange(0, JB)
    a = tl.arange(0, S2)
    own = tl.arange(0, SPP)
    k = 0  # barriers passed
    for vi in range(JSEQ):
        vp = _virtual_program(p, vi, JSEQ, REVERSE)
        for r0 in range(vp * VROWS, vp * VROWS + VROWS, JB):
            rows = r0 + o_b
            tl.store(w0 + rows[:, None] * LP + o[None, :], tl.where(rows[:, None] == o[None, :], 1.0, 0.0))
    k += 1
    programs_barrier(bar, k, NPROG, CNT, MAX_WAITS)
    off, full = _off_diagonal(h, LP, JB)
    tol = (2.0 * LP * FP32_UNIT_ROUNDOFF) * (2.0 * LP * FP32_UNIT_ROUNDOFF) * full
    eye = tl.where(a[None, :, None] == a[None, None, :], 1.0, 0.0) + tl.zeros([SPP, S2, S2], dtype=tl.float32)
    ws = w0
    wd = w1
    sweep = 0
    while (sweep < MAX_SWEEPS) & (off > tol):
        half = 1
        for g in range(LP // JB):
            if g >= 2 * half:
                half *= 2
            across = 1 - 1 // (g + 1)  # 0 for group 0 (pairs within blocks), else 1
            for vi in range(JSEQ):  # phase 1
                vp = _virtual_program(p, vi, JSEQ, REVERSE)
                sets = vp * SPP + own
                idx = _set_indices(sets[:, None], a[None, :], g, half, JB)  # [SPP, S2]
                sub = tl.load(h + idx[:, :, None] * LP + idx[:, None, :], cache_modifier=".cg")
                u = eye
                d = _entries(sub, tl.broadcast_to(a[None, :, None], [SPP, S2, 1]), 2)
                for ml in range(JB * across, JB + JB * across, 2):  # group 0 starts with the identity (m = 0)
                    sub, u, d = _jacobi_round_pair(sub, u, d, ml, SPP, S2)
                tl.store(uset + sets[:, None, None] * (S2 * S2) + a[None, :, None] * S2 + a[None, None, :], u)
                tl.debug_barrier()
                for sj in range(SPP):  # R^T = (U^T H)^T into t, W' = U^T W
                    rows, u_t = _set_rotation(uset, vp * SPP + sj, g, half, JB)
                    h_rows = tl.load(h + rows[:, None] * LP + o[None, :], cache_modifier=".cg")
                    tl.store(t + o[None, :] * LP + rows[:, None], tl.dot(u_t, h_rows, input_precision=SPREC))
                    w_rows = tl.load(ws + rows[:, None] * LP + o[None, :], cache_modifier=".cg")
                    tl.store(wd + rows[:, None] * LP + o[None, :], tl.dot(u_t, w_rows, input_precision=SPREC))
            k += 1
            programs_barrier(bar, k, NPROG, CNT, MAX_WAITS)
            for vi in range(JSEQ):  # phase 2
                vp = _virtual_program(p, vi, JSEQ, REVERSE)
                for sj in range(SPP):  # H' = U^T R^T
                    rows, u_t = _set_rotation(uset, vp * SPP + sj, g, half, JB)
                    t_rows = tl.load(t + rows[:, None] * LP + o[None, :], cache_modifier=".cg")
                    tl.store(h + rows[:, None] * LP + o[None, :], tl.dot(u_t, t_rows, input_precision=SPREC))
            k += 1
            programs_barrier(bar, k, NPROG, CNT, MAX_WAITS)
            ws, wd = wd, ws
        off, full = _off_diagonal(h, LP, JB)
        sweep += 1
    for vi in range(JSEQ):  # V = W^T, each eigenvector normalised (see the docstring)
        vp = _virtual_program(p, vi, JSEQ, REVERSE)
        for r0 in range(vp * VROWS, vp * VROWS + VROWS, JB):
            rows = r0 + o_b
            w_rows = tl.load(ws + rows[:, None] * LP + o[None, :], cache_modifier=".cg")
            norms = tl.sqrt(tl.sum(w_rows * w_rows, 1))
            tl.store(vout + o[None, :] * LP + rows[:, None], w_rows / tl.where(norms > 0.0, norms, 1.0)[:, None])
    tl.debug_barrier()
    return sweep


@triton.jit(noinline=True)
def apply_task(ws, row0, row1, lmat, mmat, part, gram, done, parts, pstride, nparts, wts, weighted, csum,
               LP: tl.constexpr, AB: tl.constexpr, AR: tl.constexpr, CB: tl.constexpr, BR: tl.constexpr,
               BK: tl.constexpr, SPREC: tl.constexpr, SPLIT16: tl.constexpr, SUMS: tl.constexpr):
    """One CholeskyQR pass on rows [row0, row1): ws <- ws L^-T (solve_transpose, on [AB, AB] blocks of L
    and AR rows at a time), then
    (``gram`` != 0) the Gram partial of the new rows for the next pass on [CB, CB] blocks; the last pass
    (``gram`` == 0) leaves the basis for a product with X, which with 16-bit tokens (SPLIT16) takes
    it as ``nparts`` 16-bit parts and its weighted column sums (SUMS): :func:`product_operand`. A
    task: counts ``done``."""
    solve_transpose(ws, row0, row1, lmat, mmat, LP, AB, AR, SPREC)
    if gram != 0:
        gram_partial(ws, row0, row1, part, LP, CB, BK, SPREC)
    elif SPLIT16:
        product_operand(ws, row0, row1, parts, pstride, nparts, wts, weighted, csum, SUMS, LP, BR)
    count_done(done)


@triton.jit
def _symmetric_sum(part, nparts, hmat, LP: tl.constexpr, NR: tl.constexpr):
    """hmat [LP, LP] = the sum of the ``nparts`` partial Grams (lower blocks), both triangles: NR rows
    at a time, their lower blocks (with the diagonal block) stored as rows, the blocks left of the
    diagonal block also as columns."""
    o_r = tl.arange(0, NR)
    o_l = tl.arange(0, LP)
    for r0 in range(0, LP, NR):
        acc = _summed_rows(part, nparts, r0, r0 + NR, LP, NR)
        rows = r0 + o_r
        tl.store(hmat + rows[:, None] * LP + o_l[None, :], acc, mask=(o_l < r0 + NR)[None, :])
        tl.store(hmat + o_l[:, None] * LP + rows[None, :], tl.trans(acc), mask=(o_l < r0)[:, None])
    tl.debug_barrier()


@triton.jit(noinline=True)
def eigen_task(part, nparts, hmat, vmat, done, p, bar, CNT, LP: tl.constexpr, CB: tl.constexpr, JB: tl.constexpr,
               JP: tl.constexpr, MAX_SWEEPS: tl.constexpr, MAX_WAITS: tl.constexpr, SPREC: tl.constexpr):
    """Program p (of JP) of an image's eigen stage: program 0 sums the ``nparts`` partial
    Grams Z^T Z into hmat (the others wait at the Jacobi's first barrier), then all run their part of
    the Jacobi into vmat (the first four partial slots are its work buffers; ``bar`` its barrier
    counter). A task: counts ``done``."""
    LL: tl.constexpr = LP * LP
    if p == 0:
        _symmetric_sum(part, nparts, hmat, LP, JB)
    jacobi_eigenvectors(hmat, part, part + LL, part + 2 * LL, part + 3 * LL, vmat, p, bar, CNT, LP, JB, JP, 1,
                        MAX_SWEEPS, MAX_WAITS, SPREC, False)
    count_done(done)
