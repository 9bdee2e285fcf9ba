"""The fused Triton backend: the whole E-AdaPrune pipeline in ONE kernel launch per call.

Same contract as :mod:`eadaprune_kernels.backends.reference` (read its docstring for the semantics): budgets,
sketched spectrum, exact centred energy, flat / saturated / non-finite images, leverage or given
scores, selection with ties to the lower index and the padded gather. Every output element is written
by the kernel; outputs and scratch come from ``torch.empty`` (the task counters from ``torch.zeros``);
the launcher reads no tensor data (no host synchronisation, CUDA-graph capturable).

**Design: a persistent grid of programs that claim tasks in one global order.** Each image is a
sequence of stages (:func:`stage_list`); a stage is a set of tasks (a group of row tiles, a group of
feature tiles, the whole image, or one of the JP programs of the image's Jacobi, which cooperate; the
statistics stage groups its row tiles by the batch's size, :data:`STATS_TASKS`, the stages with Gram
partials by PSLOTS only, so that no sum's order depends on the batch). The
tasks of all stages of all images are numbered in one global order, stage-major: every task of stage s
(of every image) comes before every task of stage s + 1; before them all, the call-wide stage: the
tiles of Omega (shared by every image) and, for packed input, the plan (which group and which
statistics group belongs to which image). A program claims the next number with an atomic add on a
counter, waits until every task of the previous stage of its image is done (``CNT[b, s - 1]``
reaches that stage's task count), runs the task, then adds one to ``CNT[b, s]`` (release; the
waiting side acquires, and scratch is read through L2).

*Why it cannot deadlock.* A task waits only on tasks of an earlier stage, which have smaller numbers.
Numbers are handed out in increasing order, so every task a claimed task waits on has been claimed
already, by a program that is running (it made the claim). Take the smallest number that is claimed
and not finished: everything it waits on is smaller, hence finished, so it runs to completion. By
induction every claimed task finishes and the loop ends. A grid larger than the machine only queues.
The one exception: the JP programs of an image's Jacobi (consecutive numbers of one stage) meet at
barriers, which needs them resident together; the same order guarantees it whenever the GPU holds JP
(<= 4) programs at once (the argument: ``triton_linalg.jacobi_eigenvectors``). Run one program at a
time, as the Triton interpreter does, program 0 claims every task in order and never waits (the
launcher gives the interpreter JP = 1, and checks it: under the interpreter a wait is recorded and
raises).

Per image (stage kinds, see :data:`STAGE_KINDS`): statistics + Y~ = X Omega (one pass over the tokens,
each row tile scaled by its own power of two) -> reduce (per group of features: scale, flags, mean,
and the partials of the exact centred energy and of mu^T Omega, which later tasks add in order) ->
fix Y -> orth(Y) -> q x [W = X_c^T Q, orth(W), Q = X_c W, orth(Q)] -> Z = X_c^T Q with H = Z^T Z ->
Jacobi -> sigma_j = ||Z v_j|| (partials) -> budget -> leverage -> selection -> gather. orth is shifted
CholeskyQR: one pass for intermediate bases (their span is what matters), three for the final Q
(``MID_PASSES`` / ``FIN_PASSES`` of :func:`kernel_settings`); each pass is a Gram (fused into the task
that wrote the rows), a Cholesky task and a solve task. The tokens are read 2q + 3 times
(each row tile twice by the statistics task: its max / NaN scan, then its sums with the sketch
product; 2q power products; Z) plus the kept rows.

On CPU tensors the backend runs only under the Triton interpreter: ``TRITON_INTERPRET=1`` must be
set before :mod:`triton` is first imported. The interpreter is not the GPU (it computes ``tl.dot`` in
full fp32 and mishandles bf16): see :mod:`eadaprune_kernels.backends.triton_interpreter`, whose bf16 fix is
installed before every interpreted launch and whose sm_90 emulation the tests run under.

Dtypes and products: see :mod:`eadaprune_kernels.backends.triton_tasks` (16-bit tokens exact with the
fp32 operand split into 16-bit parts; fp32 / fp64 tokens centred in fp32 and multiplied in 3xTF32; never
plain TF32). The l x l work (Grams, Cholesky, Jacobi, Z V, Q V) is 3xTF32 / fp32 through global
scratch: :mod:`eadaprune_kernels.backends.triton_linalg`.

Ragged input (packed tokens [T, D], cu_seqlens [B + 1]) runs in the same launch: image b is rows
[cu_seqlens[b], cu_seqlens[b + 1]) clamped to [0, T] (read on the device only); it has
l_b = min(L, N_b) sketch columns (the first of the same Omega) and budget bounds
[min(min_tokens, max_b), max_b], max_b = min(M, N_b).
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
from .triton_interpreter import install_bf16_fix, install_device_call_fast_path
from .triton_linalg import apply_task, cholesky_factor, eigen_task, jacobi_eigenvectors, wait_for
from .triton_tasks import (IMAGE_SCALARS, budget_task, fix_sketch, gather_rows, leverage_rows, ragged_plan,
                           reduce_features, select_rows, sigma_partial, sketch_tile, stats_and_sketch, x_times_w,
                           xt_times_q)

__all__ = ["NAME", "MAX_SKETCH_SIZE", "run", "kernel_settings", "kernel_flags", "launch_grid",
           "programs_per_image", "stage_list", "launch_plan", "STAGE_KINDS"]

NAME = "triton"
# l x l matrices live in global scratch and are worked on tile by tile (triton_linalg): no register or
# shared-memory limit ties l to the block, so the kernel takes every l up to 256 (LP = 256), which
# tests/test_triton_compile.py compiles for sm_90 without spills within 227 KB of shared memory.
MAX_SKETCH_SIZE = 256
MAX_SKETCH_SIZE_REASON = "its tiles are compiled (and checked by ptxas) for padded sketch widths up to 256"
# Jacobi sweeps on the l x l Gram: quadratic convergence needs 5-10 for l <= 256; stops earlier when
# the off-diagonal mass is below (2 LP u)^2 ||H||_F^2.
MAX_SWEEPS = 20

# Stage kinds. Each stage is (kind, side, gram): side 0 = the image's rows (N), 1 = its features (D);
# gram: the task also writes the Gram partial of the rows it produced (the next Cholesky sums them).
K_GLOBAL, K_STATS, K_REDUCE, K_FIXY, K_CHOL, K_APPLY, K_XTQ, K_XW, K_Z, K_EIG, K_SIGMA, K_BUDGET, K_LEV, \
    K_SELECT, K_GATHER = range(15)
STAGE_KINDS = {
    K_GLOBAL: "sketch tiles (and the ragged plan)", K_STATS: "statistics + Y~ = X Omega", K_REDUCE: "reduce",
    K_FIXY: "fix Y + Gram", K_CHOL: "Cholesky", K_APPLY: "solve with L^T", K_XTQ: "W = X_c^T Q + Gram",
    K_XW: "Q = X_c W + Gram", K_Z: "Z = X_c^T Q + H", K_EIG: "Jacobi", K_SIGMA: "sigma partials",
    K_BUDGET: "budget", K_LEV: "leverage", K_SELECT: "selection", K_GATHER: "gather",
}
_ROW_KINDS = (K_FIXY, K_XW, K_LEV, K_SELECT, K_GATHER)  # and K_STATS, whose groups are its own (STATS_TASKS)
_FEATURE_KINDS = (K_REDUCE, K_XTQ, K_Z, K_SIGMA)
_IMAGE_KINDS = (K_CHOL, K_EIG, K_BUDGET)
# The statistics stage's tasks per call, at most: its outputs are per row tile, so how many tiles a task
# takes changes no bit, and each takes ceil(tiles / STATS_TASKS) of them (one at B = 1, N = 576: 18
# programs instead of the 6 of the other row stages' groups, whose Gram partials fix their grouping);
# 264 = the programs an H100 / H200 holds at once (132 SMs x 2).
STATS_TASKS = 264
# Layout of the int32 counters: [ticket, call-wide stage done, interpreter waits, CNT[b, s]...].
_C_TICKET, _C_GLOBAL, _C_WAITS, _C_IMAGES = 0, 1, 2, 3


def _next_pow2(v: int) -> int:
    return 1 << max(0, (v - 1).bit_length())


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def kernel_settings(dtype: torch.dtype, sketch_size: int, interpreted: bool = False) -> dict:
    """The compile-time settings of a launch for tokens of ``dtype`` and l = ``sketch_size``: tile
    sizes, warps, passes and the arithmetic of every product (also used by tools/aot_compile_triton.py
    and tools/cost_model.py).

    LP = the padded sketch width; BR / BD rows / features per tile (a [BR, LP] fp32 accumulator is
    32 KB); CB the l x l block (FB = 16 the Cholesky's, smaller: its diagonal blocks factor by FB
    dependent steps, each cheaper on a smaller block; AB = 32 the blocks of L that a CholeskyQR
    pass solves with, what 4 warps hold without spilling); AR = 64 the rows (or features) a solve
    takes at a time (with 4 warps a 32-row tile left half of every MMA idle: the cost model's block
    product 632 cycles for 32 rows, 492 for 64; 128 rows: 759 and 255 registers); XT the rows of
    X W and the features of X^T Q that a product task forms at a time, min(64, 8192 / LP): every
    such tile reads the whole fp32 operand W or Q (or its 16-bit parts) from L2, so 64 instead of
    BR = 32 at LP = 128 halves those reads (bf16 D = 1024: 127 -> 98 MB of L2 traffic per image in the
    cost model; 0 spills at 249-250 registers, 52 KB shared); the groups of rows and features are
    multiples of XT (D = 1024: 8 groups of 128 features instead of 11 of 96); TW the columns of
    the Cholesky's trailing update taken at a time (LP / 2, at least FB: a block row's update spans
    (i - k) FB columns, at LP = 128 one 64-wide window for i - k <= 4 and two beyond, 504 cycles a
    window against 996 a whole row); JB the rows of a Jacobi block (subproblems of 2 JB); JP the
    programs that share an image's Jacobi (its LP / 2 JB sets split between them, at most 4:
    triton_linalg.jacobi_eigenvectors; 1 when ``interpreted``: the interpreter runs one program at a
    time, and a barrier between two of them would never open); RB rows of the budget panels;
    PSLOTS the Gram partials (and groups) per image side: 12 up to LP = 128 (N = 576: 9 groups of 64
    rows, D = 1024: 8 of 128 features; with 32-wide product tiles the cost model put 12 at 894 us
    against 963 with 8 at B = 1, bf16, one task's rows being the serial time of a stage, and about even
    at B = 64; with XT = 64, 16 slots (16 feature groups of 64) give 698 against 725 us at B = 1 but
    20.8 against 20.2 us per image at B = 64), 4 at LP = 256 (a partial is 256 KB there).
    4 warps per program up to LP = 128: two programs share an SM (registers), which the cost model puts
    ~8% ahead of 8 warps at B=64 and ~2% behind at B=1 (LP = 128, bf16); 8 at LP = 256.
    Products with X: float16 / bfloat16 tokens stay exact and the fp32 operand is split into 16-bit
    parts (SPLIT16); float32 / float64 tokens are centred in fp32 and multiplied in 3xTF32 (XPREC).
    The l x l work is 3xTF32 (SPREC). Never plain TF32: sm_90 truncates TF32 operands toward zero,
    which puts every singular value ~7e-4 low.
    """
    lp = max(16, _next_pow2(sketch_size))
    tile = max(16, min(64, 4096 // lp))
    sixteen_bit = dtype in (torch.float16, torch.bfloat16)
    # 4 warps (2 programs per SM) up to LP 128; at LP 256 four warps spill 112-120 B, eight do not
    warps = 4 if lp <= 128 else 8
    # BK: doubled from 16 (up to 64) while BK (LP + tile) <= 768 x warps for 16-bit tokens, 384 x warps
    # for fp32 / fp64 ones, whose products split both operands (ptxas, tools/aot_compile_triton.py: at
    # LP 128 and 4 warps BK 32 fits in 242 registers for bf16 tokens, BK 64 spills 116 B)
    chunk = 16
    while chunk < 64 and chunk * (lp + tile) <= (768 if sixteen_bit else 384) * warps:
        chunk *= 2
    # JB: the Jacobi subproblems [LP, 2 JB] hold at most 4096 elements (LP = 64 with JB = 32 spilled);
    # JB >= 8 makes the group products' K = 2 JB >= 16, what tl.dot needs
    jb = max(8, min(lp // 4, 2048 // lp))
    fb = 16
    return dict(
        LP=lp, BR=tile, BD=tile, BK=chunk, BS=64, CB=min(lp, 64 if lp <= 128 else 32), AB=min(lp, 32), AR=64,
        XT=min(64, 8192 // lp), FB=fb,
        TW=max(fb, lp // 2),
        JB=jb, JP=1 if interpreted else min(4, lp // (2 * jb)),
        RB=max(1, min(lp, 4096 // lp)), PSLOTS=12 if lp <= 128 else 4, MID_PASSES=1, FIN_PASSES=3,
        SPLIT16=sixteen_bit, PRESCALE16=dtype == torch.bfloat16, XPREC="tf32x3", SPREC="tf32x3",
        MAX_SWEEPS=MAX_SWEEPS, num_warps=warps, num_stages=2,
    )


def stage_list(power_iters: int, mid_passes: int, fin_passes: int, leverage: bool, select: bool) -> list:
    """The stages of one image, in order: (kind, side, gram) (see the module docstring). The kernel
    decodes the same sequence arithmetically (``_stage_info``); tests compare the two."""
    stages = [(K_GLOBAL, 0, 0), (K_STATS, 0, 0), (K_REDUCE, 1, 0), (K_FIXY, 0, 1)]

    def orth(side, passes):
        out = []
        for p in range(passes):
            out += [(K_CHOL, side, 0), (K_APPLY, side, int(p < passes - 1))]
        return out

    stages += orth(0, fin_passes if power_iters == 0 else mid_passes)
    for i in range(power_iters):
        stages += [(K_XTQ, 1, 1)] + orth(1, mid_passes) + [(K_XW, 0, 1)]
        stages += orth(0, fin_passes if i == power_iters - 1 else mid_passes)
    stages += [(K_Z, 1, 1), (K_EIG, 1, 0), (K_SIGMA, 1, 0), (K_BUDGET, 0, 0)]
    if select and leverage:
        stages.append((K_LEV, 0, 0))
    if select:
        stages += [(K_SELECT, 0, 0), (K_GATHER, 0, 0)]
    return stages


def launch_plan(*, batch: int, n: int, d: int, settings: dict, ragged: bool, power_iters: int, leverage: bool,
                select: bool) -> dict:
    """Task counts of a launch, from the shapes alone (``n`` is N, or T for packed input): groups of
    row tiles (GR rows) and of feature tiles (GD features) per image, the statistics stage's groups of
    row tiles (SR rows, NS per image; at most about STATS_TASKS in the call), the tasks of every stage
    (upper bounds for packed input, whose groups per image the kernel reads from cu_seqlens), their
    total. The Jacobi stage has JP tasks per image."""
    br, bd, xt, slots = settings["BR"], settings["BD"], settings["XT"], settings["PSLOTS"]
    gr = xt * _cdiv(_cdiv(max(n, 1), xt), slots)
    gd = xt * _cdiv(_cdiv(max(d, 1), xt), slots)
    ng = _cdiv(n, gr)  # groups per image (dense) / of the largest possible image (packed)
    dg = _cdiv(d, gd)
    row_tasks = ng + batch if ragged else batch * ng
    sr = br * _cdiv(_cdiv(max(n, 1), br) * (1 if ragged else batch), STATS_TASKS)
    ns = _cdiv(n, sr)
    stats_tasks = ns + batch if ragged else batch * ns
    tiles = (_cdiv(n, br) + batch) if ragged else batch * _cdiv(n, br)
    om_tiles = _cdiv(d, bd)
    stages = stage_list(power_iters, settings["MID_PASSES"], settings["FIN_PASSES"], leverage, select)
    counts = []
    for kind, side, _gram in stages:
        if kind == K_GLOBAL:
            counts.append(om_tiles + int(ragged))
        elif kind == K_STATS:
            counts.append(stats_tasks)
        elif kind in _ROW_KINDS or (kind == K_APPLY and side == 0):
            counts.append(row_tasks)
        elif kind in _FEATURE_KINDS or (kind == K_APPLY and side == 1):
            counts.append(batch * dg)
        elif kind == K_EIG:
            counts.append(batch * settings["JP"])
        else:
            counts.append(batch)
    return dict(GR=gr, GD=gd, NG=ng, DG=dg, NG_TOTAL=row_tasks, SR=sr, NS=ns, NS_TOTAL=stats_tasks, TILES=tiles,
                OM_TILES=om_tiles, stages=stages, counts=counts, total=sum(counts), widest=max(counts))


def launch_grid(*, batch: int, n: int, d: int, settings: dict, ragged: bool, power_iters: int = 2,
                leverage: bool = True, select: bool = True) -> tuple[int]:
    """The grid: one program per task (``launch_plan``'s total). Programs claim their task in the global
    order whatever order the hardware starts them in, so the grid does not depend on the machine: a
    program waits only for tasks that programs already running have claimed."""
    plan = launch_plan(batch=batch, n=n, d=d, settings=settings, ragged=ragged, power_iters=power_iters,
                       leverage=leverage, select=select)
    return _grid(plan)


def _grid(plan: dict) -> tuple[int]:
    """One program per task of ``plan`` (at least one)."""
    return (max(1, plan["total"]),)


def programs_per_image(*, n: int, d: int, settings: dict, ragged: bool) -> int:
    """How many programs can work on one image at once (alone in its call): the tasks of its widest
    stage."""
    plan = launch_plan(batch=1, n=n, d=d, settings=settings, ragged=ragged, power_iters=2, leverage=True,
                       select=True)
    return max(plan["NS"], plan["NG"], plan["DG"], settings["JP"])


def kernel_flags(*, dtype: torch.dtype, scores: bool, sketch: bool, budgets: bool, ragged: bool, center: bool,
                 select: bool, scores_f64: bool = False, power_iters: int = 2, interpreted: bool = False) -> dict:
    """The flag constexprs of a launch (the launcher passes some, the heuristics derive the others;
    tools/aot_compile_triton.py compiles with the launcher's own arguments, captured). SMAX
    bounds the stages of an image (a power of two, from ``power_iters``); MAX_WAITS = 1 under the
    interpreter (see ``triton_linalg.wait_for``)."""
    settings = kernel_settings(dtype, 16)
    stages = stage_list(power_iters, settings["MID_PASSES"], settings["FIN_PASSES"], select and not scores, select)
    return dict(CENTER=center, IS_F64=dtype == torch.float64, SC_F64=scores_f64, SELECT=select,
                HAS_SKETCH=sketch, HAS_SCORES=scores, HAS_BUDGETS=budgets, RAGGED=ragged,
                MAX_WAITS=1 if interpreted else 0, SMAX=_next_pow2(len(stages)))


# ---- the scheduler ---------------------------------------------------------------------------------


@triton.jit
def _stage_info(s, q, MID: tl.constexpr, FIN: tl.constexpr, LEVERAGE: tl.constexpr):
    """(kind, side, gram) of stage s of an image with q power iterations: :func:`stage_list` decoded
    arithmetically (K_* values as in the Python module)."""
    # prefix: GLOBAL, STATS, REDUCE (over the features), FIXY (+ Gram)
    kind = s
    side = (s == 2).to(tl.int32)
    gram = (s == 3).to(tl.int32)
    u = s - 4
    py = tl.where(q == 0, FIN, MID)
    # orth(Y): py x (CHOL, APPLY)
    in_y = (u >= 0) & (u < 2 * py)
    kind = tl.where(in_y, 4 + u % 2, kind)
    gram = tl.where(in_y, ((u % 2 == 1) & (u // 2 < py - 1)).to(tl.int32), gram)
    u = u - 2 * py
    ITER: tl.constexpr = 2 + 4 * MID
    LAST: tl.constexpr = 2 + 2 * MID + 2 * FIN
    span = tl.where(q > 0, (q - 1) * ITER + LAST, 0)
    in_it = (u >= 0) & (u < span)
    i = tl.minimum(tl.maximum(u, 0) // ITER, tl.maximum(q - 1, 0))
    v = u - i * ITER
    pq = tl.where(i == q - 1, FIN, MID)
    w_d = v - 1  # position in orth(W)
    w_q = v - 2 - 2 * MID  # position in orth(Q)
    it_kind = tl.where(v == 0, 6, tl.where(v < 1 + 2 * MID, 4 + w_d % 2, tl.where(v == 1 + 2 * MID, 7, 4 + w_q % 2)))
    it_side = tl.where((v == 0) | (v < 1 + 2 * MID), 1, 0)
    it_gram = tl.where(v == 0, 1, tl.where(v < 1 + 2 * MID, ((w_d % 2 == 1) & (w_d // 2 < MID - 1)).to(tl.int32),
                                           tl.where(v == 1 + 2 * MID, 1,
                                                    ((w_q % 2 == 1) & (w_q // 2 < pq - 1)).to(tl.int32))))
    kind = tl.where(in_it, it_kind, kind)
    side = tl.where(in_it, it_side, side)
    gram = tl.where(in_it, it_gram, gram)
    u = u - span
    in_tail = u >= 0
    if LEVERAGE:
        tail_kind = tl.where(u == 0, 8, tl.where(u == 1, 9, tl.where(u == 2, 10, tl.where(u == 3, 11, 12 + (u - 4)))))
    else:
        tail_kind = tl.where(u == 0, 8, tl.where(u == 1, 9, tl.where(u == 2, 10, tl.where(u == 3, 11, 13 + (u - 4)))))
    kind = tl.where(in_tail, tail_kind, kind)
    side = tl.where(in_tail, (u <= 2).to(tl.int32), side)
    gram = tl.where(in_tail, (u == 0).to(tl.int32), gram)
    return kind, side, gram


@triton.jit
def _task_axis(kind, side):
    """Whether a stage of kind ``kind`` has a task per statistics group (K_STATS), per group of rows,
    per group of features, or per Jacobi program (JP per image; else one per image): _ROW_KINDS /
    _FEATURE_KINDS, the side of an apply stage, K_EIG."""
    # (K_* values as in the Python module: a jitted function reads no non-constexpr globals)
    rows = (kind == 3) | (kind == 7) | (kind >= 12) | ((kind == 5) & (side == 0))
    feats = (kind == 2) | (kind == 6) | (kind == 8) | (kind == 10) | ((kind == 5) & (side == 1))
    return kind == 1, rows, feats, kind == 9


@triton.jit
def _stage_tickets(kind, side, B, OM_TILES, NS_TOTAL, NG_TOTAL, DG, JP, RAGGED: tl.constexpr):
    """Tickets of a stage of kind ``kind`` over the whole batch (see ``launch_plan``)."""
    stats, rows, feats, eig = _task_axis(kind, side)
    n = tl.where(stats, NS_TOTAL, tl.where(rows, NG_TOTAL, tl.where(feats, B * DG, tl.where(eig, B * JP, B))))
    if RAGGED:
        n = tl.where(kind == 0, OM_TILES + 1, n)
    else:
        n = tl.where(kind == 0, OM_TILES, n)
    return n


@triton.jit
def _image_tasks(kind, side, ns_img, ng_img, DG, JP):
    """Tasks of image b in a stage of kind ``kind`` (it has ns_img statistics groups, ng_img row
    groups)."""
    stats, rows, feats, eig = _task_axis(kind, side)
    return tl.where(stats, ns_img, tl.where(rows, ng_img, tl.where(feats, DG, tl.where(eig, JP, 1))))


@triton.jit
def _planned_group(base, image, i):
    """(image, group within it) of group i of packed input, from the ragged plan's map ``image``
    (-1: past the last group) and the images' first groups ``base``."""
    b = tl.load(image + i, cache_modifier=".cg")
    return b, i - tl.load(base + tl.maximum(b, 0), cache_modifier=".cg")


@triton.jit
def _image_rows(b, CU, N, GR, RAGGED: tl.constexpr):
    """(first packed row, rows) of image b (ragged: cu_seqlens clamped to [0, T]; N = T)."""
    if RAGGED:
        start = tl.load(CU + b).to(tl.int64)
        end = tl.load(CU + b + 1).to(tl.int64)
        start = tl.minimum(tl.maximum(start, 0), N)
        end = tl.minimum(tl.maximum(end, start), N)
        n_img = (end - start).to(tl.int32)
    else:
        start = b.to(tl.int64) * N
        n_img = N
    return start, n_img


@triton.jit
def _image_task(
    stage, i, kind, side, gram, k_prev, s_prev, k_next,
    X, sxb, sxn, sxd,  # tokens [B, N, D], or packed [T, D] (RAGGED: sxb unused, N = T)
    CU,  # cu_seqlens [B + 1] int32/int64 (RAGGED), or None
    SC, scb, scn,  # scores [B, N] (or packed [T]) or None
    OM, som_d, som_l,  # a given sketch [D, l], or OMS (then the kernel draws Omega)
    OMS, QWS, WWS, PART, LWS,  # fp32 scratch: Omega [D, LP], Q [B*N | T, LP], W [B, D, LP], Grams, l x l
    P16, CSUM,  # 16-bit parts of Omega, Q and W (SPLIT16; the tokens' dtype), column-sum partials [B, PSLOTS, LP]
    TSUM, TSCAL, IMGF, MU,  # tile column sums [tiles, D], tile scalars, image scalars + energy partials (fp64), mu
    SIGP, SIG2, RANKS, IMGI,  # sigma partials (fp64), sigma^2, ranks, (k*, budget, r) per image
    LEV, KEPT, KCNT, PLAN, CNT,  # leverage, kept flags, kept counts per group, ragged plan, counters (zeroed)
    SIG, ENERGY, BUDGET, SAT,  # [B, L] f32, [B] f32, [B] i32, [B] u8 (bool)
    BIN,  # [B] i32 budgets that replace the computed ones (total_budget), or None
    OTOK, sotb, sotm, sotd, OIDX, OMASK,  # [B, M, D], [B, M] i64, [B, M] u8 (bool)
    N, D, L, M, B, POWER_ITERS, SEED, MIN_TOKENS, THRESH, FLAT_RTOL,
    GR, GD, NG, DG, NG_TOTAL, SR, NS, NS_TOTAL, OM_TILES, NSTAGES, TOTAL,
    LP: tl.constexpr, BR: tl.constexpr, BD: tl.constexpr, BK: tl.constexpr, BS: tl.constexpr, CB: tl.constexpr,
    AB: tl.constexpr, AR: tl.constexpr, XT: tl.constexpr, FB: tl.constexpr, TW: tl.constexpr, JB: tl.constexpr,
    JP: tl.constexpr, RB: tl.constexpr, PSLOTS: tl.constexpr, MID_PASSES: tl.constexpr, FIN_PASSES: tl.constexpr,
    CENTER: tl.constexpr, IS_F64: tl.constexpr, SC_F64: tl.constexpr, SELECT: tl.constexpr,
    SPLIT16: tl.constexpr, PRESCALE16: tl.constexpr, XPREC: tl.constexpr, SPREC: tl.constexpr,
    MAX_SWEEPS: tl.constexpr, MAX_WAITS: tl.constexpr,
    HAS_SKETCH: tl.constexpr, HAS_SCORES: tl.constexpr, HAS_BUDGETS: tl.constexpr, RAGGED: tl.constexpr,
):
    """Ticket i of stage ``stage`` >= 1 (kind, side, gram; the previous stage's kind and side, the next
    stage's kind): decode
    the image b and its group g (the Jacobi: its program g of JP), wait for the image's previous
    stage, run the task (which counts itself done)."""
    LL = LP * LP
    stats_kind, rows_kind, feats_kind, eig_kind = _task_axis(kind, side)
    if RAGGED:  # the plan maps groups to images
        wait_for(CNT + 1, OM_TILES + 1, CNT, MAX_WAITS)
    if stats_kind:
        if RAGGED:  # the plan's STATS_BASE and STATS_IMAGE (triton_tasks.ragged_plan)
            b, g = _planned_group(PLAN + 2 * (B + 1) + NG_TOTAL, PLAN + 3 * (B + 1) + NG_TOTAL, i)
        else:
            b = i // NS
            g = i % NS
    elif rows_kind:
        if RAGGED:  # the plan's GROUP_BASE and GROUP_IMAGE
            b, g = _planned_group(PLAN, PLAN + 2 * (B + 1), i)
        else:
            b = i // NG
            g = i % NG
    elif feats_kind:
        b = i // DG
        g = i % DG
    elif eig_kind:
        b = i // JP
        g = i % JP
    else:
        b = i
        g = i * 0
    if b >= 0:
        start, n_img = _image_rows(b, CU, N, GR, RAGGED)
        if RAGGED:
            ng_img = (n_img + GR - 1) // GR
            ns_img = (n_img + SR - 1) // SR
            tile0 = tl.load(PLAN + (B + 1) + b, cache_modifier=".cg")
        else:
            ng_img = NG
            ns_img = NS
            tile0 = b * ((N + BR - 1) // BR)
        # wait for the image's previous stage (the first image stage waits for the call-wide one)
        if stage == 1:
            if RAGGED:
                wait_for(CNT + 1, OM_TILES + 1, CNT, MAX_WAITS)
            else:
                wait_for(CNT + 1, OM_TILES, CNT, MAX_WAITS)
        else:
            wait_for(CNT + 3 + b * NSTAGES + stage - 1, _image_tasks(k_prev, s_prev, ns_img, ng_img, DG, JP), CNT,
                      MAX_WAITS)
        l_img = tl.minimum(L, n_img)
        m_img = tl.minimum(M, n_img)
        min_img = tl.minimum(MIN_TOKENS, m_img)
        if RAGGED:
            x_img = X + start * sxn
            sc_img = SC + start * scn if HAS_SCORES else SC
        else:
            x_img = X + b.to(tl.int64) * sxb
            sc_img = SC + b.to(tl.int64) * scb if HAS_SCORES else SC
        b64 = b.to(tl.int64)
        q_img = QWS + start * LP
        w_img = WWS + b64 * D * LP
        # the 16-bit parts (P16): Omega's [2][D, LP], Q's [3][rows, LP], W's [2][B, D, LP]
        if RAGGED:
            q_rows = N.to(tl.int64)
        else:
            q_rows = N.to(tl.int64) * B
        q_stride = q_rows * LP
        w_stride = B.to(tl.int64) * D * LP
        q16_img = P16 + 2 * D * LP + start * LP
        w16_img = P16 + 2 * D * LP + 3 * q_stride + b64 * D * LP
        csum_img = CSUM + b64 * PSLOTS * LP
        part_img = PART + b64 * PSLOTS * LL
        a_mat = LWS + b64 * 2 * LL
        m_mat = a_mat + LL
        img_f64 = IMGF + b64 * (IMAGE_SCALARS + PSLOTS)
        imgi = IMGI + b64 * 4
        mu_img = MU + b64 * D
        rows_per_group = tl.where(stats_kind, SR, GR)
        row0 = g * rows_per_group
        row1 = tl.minimum(row0 + rows_per_group, n_img)
        col0 = g * GD
        col1 = tl.minimum(col0 + GD, D)
        part_g = part_img + g.to(tl.int64) * LL
        tile_g = tile0 + g * (rows_per_group // BR)
        done = CNT + 3 + b * NSTAGES + stage  # counted by the task when it is finished
        # exactly one (not inlined) call per kind: nothing of this function stays live across it
        if kind == 1:
            stats_and_sketch(x_img, sxn, sxd, sc_img, scn, n_img, D, l_img, row0, row1, tile_g, OMS, P16, TSUM,
                             TSCAL, q_img, done, HAS_SCORES, CENTER, IS_F64, SPLIT16, PRESCALE16, XPREC, LP, BR, BK)
        elif kind == 2:
            reduce_features(TSUM, TSCAL, tile0, (n_img + BR - 1) // BR, n_img, D, col0, col1, l_img, OMS, P16,
                            mu_img, csum_img + g * LP, img_f64, g, FLAT_RTOL, done, CENTER, IS_F64, SPLIT16, LP, BR,
                            BD)
        elif kind == 3:
            fix_sketch(q_img, row0, row1, TSCAL, TSUM, tile_g, n_img, D, l_img, OMS, mu_img, img_f64, csum_img, DG,
                       part_g, done, CENTER, IS_F64, SPLIT16, PRESCALE16, LP, BR, CB, BK, SPREC)
        elif kind == 4:
            cholesky_factor(part_img, tl.where(side == 0, ng_img, DG), a_mat, m_mat, done, LP, FB, AB, TW)
        elif kind == 5:
            # the last pass leaves Q as the parts its product takes (3 for Z = X_c^T Q, 2 for W = X_c^T Q) and
            # their column sums, or W as 2 parts and their column sums weighted (side = 1) by mu (runtime
            # values: one specialisation of the task for both sides)
            nparts = tl.where(k_next == 8, 3, 2)
            tl.static_assert(BR == BD, "apply_task tiles rows (side 0) and features (side 1) alike")
            if side == 0:  # Q's rows of the group
                basis, first, last, basis16, stride16 = q_img, row0, row1, q16_img, q_stride
            else:  # W's features of the group
                basis, first, last, basis16, stride16 = w_img, col0, col1, w16_img, w_stride
            apply_task(basis, first, last, a_mat, m_mat, part_g, gram, done, basis16, stride16, nparts, mu_img, side,
                       csum_img + g * LP, LP, AB, AR, CB, BR, BK, SPREC, SPLIT16, CENTER)
        elif kind == 6:
            xt_times_q(x_img, sxn, sxd, mu_img, n_img, D, col0, col1, q_img, q16_img, q_stride, csum_img, ng_img,
                       w_img, img_f64, part_g, done, CENTER, IS_F64, SPLIT16, PRESCALE16, 2, XPREC, LP, XT, BK, CB,
                       SPREC)
        elif kind == 7:
            x_times_w(x_img, sxn, sxd, mu_img, n_img, D, row0, row1, w_img, w16_img, w_stride, csum_img, DG, q_img,
                      img_f64, part_g, done, CENTER, IS_F64, SPLIT16, PRESCALE16, XPREC, LP, XT, BK, CB, SPREC)
        elif kind == 8:
            xt_times_q(x_img, sxn, sxd, mu_img, n_img, D, col0, col1, q_img, q16_img, q_stride, csum_img, ng_img,
                       w_img, img_f64, part_g, done, CENTER, IS_F64, SPLIT16, PRESCALE16, 3, XPREC, LP, XT, BK, CB,
                       SPREC)
        elif kind == 9:
            eigen_task(part_img, DG, a_mat, m_mat, done, g, CNT + 3 + B * NSTAGES + b, CNT, LP, CB, JB, JP,
                       MAX_SWEEPS, MAX_WAITS, SPREC)
        elif kind == 10:
            sigma_partial(w_img, col0, col1, m_mat, SIGP + (b64 * PSLOTS + g) * LP, done, LP, CB, BD, SPREC)
        elif kind == 11:
            budget_task(b64, SIGP + b64 * PSLOTS * LP, DG, img_f64, SIG2 + b64 * LP, RANKS + b64 * LP, imgi,
                        BIN, SIG, ENERGY, BUDGET, SAT, OTOK, sotb, sotm, sotd, OIDX, OMASK, L, M, D, l_img,
                        m_img, min_img, THRESH, done, IS_F64, HAS_BUDGETS, SELECT, LP, RB, BS, BD)
        elif kind == 12:
            leverage_rows(q_img, row0, row1, m_mat, RANKS + b64 * LP, imgi, LEV + start, done, LP, CB, BR, SPREC)
        elif kind == 13:
            select_rows(sc_img, scn, LEV + start, KEPT + start, n_img, row0, row1, img_f64, DG, imgi,
                        KCNT + b64 * PSLOTS + g, done, HAS_SCORES, SC_F64, BS)
        else:
            gather_rows(b64, x_img, sxn, sxd, KEPT + start, KCNT + b64 * PSLOTS, g, row0, row1, OTOK, sotb,
                        sotm, sotd, OIDX, M, D, done, BS, BD)


@triton.heuristics({
    "HAS_SKETCH": lambda a: a["OM"] is not a["OMS"],
    "HAS_SCORES": lambda a: a["SC"] is not None,
    "HAS_BUDGETS": lambda a: a["BIN"] is not None,
    "RAGGED": lambda a: a["CU"] is not None,
})
@triton.jit(do_not_specialize=["N", "D", "L", "M", "B", "POWER_ITERS", "SEED", "MIN_TOKENS", "THRESH", "GR", "GD",
                               "NG", "DG", "NG_TOTAL", "SR", "NS", "NS_TOTAL", "OM_TILES",
                               "NSTAGES", "TOTAL"])
def _eadaprune_kernel(
    X, sxb, sxn, sxd,  # tokens [B, N, D], or packed [T, D] (RAGGED: sxb unused, N = T)
    CU,  # cu_seqlens [B + 1] int32/int64 (RAGGED), or None
    SC, scb, scn,  # scores [B, N] (or packed [T]) or None
    OM, som_d, som_l,  # a given sketch [D, l], or OMS (then the kernel draws Omega)
    OMS, QWS, WWS, PART, LWS,  # fp32 scratch: Omega [D, LP], Q [B*N | T, LP], W [B, D, LP], Grams, l x l
    P16, CSUM,  # 16-bit parts of Omega, Q and W (SPLIT16; the tokens' dtype), column-sum partials [B, PSLOTS, LP]
    TSUM, TSCAL, IMGF, MU,  # tile column sums [tiles, D], tile scalars, image scalars + energy partials (fp64), mu
    SIGP, SIG2, RANKS, IMGI,  # sigma partials (fp64), sigma^2, ranks, (k*, budget, r) per image
    LEV, KEPT, KCNT, PLAN, CNT,  # leverage, kept flags, kept counts per group, ragged plan, counters (zeroed)
    SIG, ENERGY, BUDGET, SAT,  # [B, L] f32, [B] f32, [B] i32, [B] u8 (bool)
    BIN,  # [B] i32 budgets that replace the computed ones (total_budget), or None
    OTOK, sotb, sotm, sotd, OIDX, OMASK,  # [B, M, D], [B, M] i64, [B, M] u8 (bool)
    N, D, L, M, B, POWER_ITERS, SEED, MIN_TOKENS, THRESH, FLAT_RTOL,
    GR, GD, NG, DG, NG_TOTAL, SR, NS, NS_TOTAL, OM_TILES, NSTAGES, TOTAL,
    LP: tl.constexpr, BR: tl.constexpr, BD: tl.constexpr, BK: tl.constexpr, BS: tl.constexpr, CB: tl.constexpr,
    AB: tl.constexpr, AR: tl.constexpr, XT: tl.constexpr, FB: tl.constexpr, TW: tl.constexpr, JB: tl.constexpr,
    JP: tl.constexpr, RB: tl.constexpr, PSLOTS: tl.constexpr, MID_PASSES: tl.constexpr, FIN_PASSES: tl.constexpr,
    CENTER: tl.constexpr, IS_F64: tl.constexpr, SC_F64: tl.constexpr, SELECT: tl.constexpr,
    SPLIT16: tl.constexpr, PRESCALE16: tl.constexpr, XPREC: tl.constexpr, SPREC: tl.constexpr,
    MAX_SWEEPS: tl.constexpr, MAX_WAITS: tl.constexpr, SMAX: tl.constexpr,
    HAS_SKETCH: tl.constexpr, HAS_SCORES: tl.constexpr, HAS_BUDGETS: tl.constexpr, RAGGED: tl.constexpr,
):
    """The persistent scheduler: claim a ticket, decode (stage, image, group), wait for the image's
    previous stage, run the task, count it done (see the module docstring)."""
    LEVERAGE: tl.constexpr = SELECT and not HAS_SCORES
    t = tl.atomic_add(CNT + 0, 1)  # this program's ticket: claimed in order, whatever order programs start in
    # its stage: the number of stages whose tickets all come before t (stage-major order)
    # (int64: the interpreter checks every int32 operation for overflow, slowly)
    o_s = tl.arange(0, SMAX).to(tl.int64)
    kinds, sides, grams = _stage_info(o_s, POWER_ITERS, MID_PASSES, FIN_PASSES, LEVERAGE)
    counts = tl.where(o_s < NSTAGES, _stage_tickets(kinds, sides, B, OM_TILES, NS_TOTAL, NG_TOTAL, DG, JP, RAGGED), 0)
    stage = tl.sum((tl.cumsum(counts, 0) <= t).to(tl.int64), 0)
    i = (t - tl.sum(tl.where(o_s < stage, counts, 0), 0)).to(tl.int32)
    kind = tl.sum(tl.where(o_s == stage, kinds, 0), 0).to(tl.int32)
    side = tl.sum(tl.where(o_s == stage, sides, 0), 0).to(tl.int32)
    gram = tl.sum(tl.where(o_s == stage, grams, 0), 0).to(tl.int32)
    k_prev = tl.sum(tl.where(o_s == stage - 1, kinds, 0), 0).to(tl.int32)
    k_next = tl.sum(tl.where(o_s == stage + 1, kinds, 0), 0).to(tl.int32)
    s_prev = tl.sum(tl.where(o_s == stage - 1, sides, 0), 0).to(tl.int32)
    stage = stage.to(tl.int32)
    if t < TOTAL:
        if stage == 0:  # ---- the call-wide stage: Omega tiles, the plan --------------------------------
            if i < OM_TILES:
                sketch_tile(i, OM, som_d, som_l, OMS, P16, D, L, SEED, CNT, HAS_SKETCH, SPLIT16, LP, BD)
            elif RAGGED:
                ragged_plan(CU, B, N, GR, SR, BR, NG_TOTAL, NS_TOTAL, PLAN, CNT, 128, 32)
        else:
            _image_task(
                stage, i, kind, side, gram, k_prev, s_prev, k_next,
                X, sxb, sxn, sxd, CU, SC, scb, scn, OM, som_d, som_l,
                OMS, QWS, WWS, PART, LWS, P16, CSUM, TSUM, TSCAL, IMGF, MU, SIGP, SIG2, RANKS, IMGI,
                LEV, KEPT, KCNT, PLAN, CNT, SIG, ENERGY, BUDGET, SAT, BIN,
                OTOK, sotb, sotm, sotd, OIDX, OMASK,
                N, D, L, M, B, POWER_ITERS, SEED, MIN_TOKENS, THRESH, FLAT_RTOL,
                GR, GD, NG, DG, NG_TOTAL, SR, NS, NS_TOTAL, OM_TILES, NSTAGES, TOTAL,
                LP, BR, BD, BK, BS, CB, AB, AR, XT, FB, TW, JB, JP, RB, PSLOTS, MID_PASSES, FIN_PASSES,
                CENTER, IS_F64, SC_F64, SELECT, SPLIT16, PRESCALE16, XPREC, SPREC, MAX_SWEEPS, MAX_WAITS,
                HAS_SKETCH, HAS_SCORES, HAS_BUDGETS, RAGGED,
            )


# ---- the launcher ------------------------------------------------------------------------------------

_INTERPRETER_LOCK = threading.Lock()


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


def plan_entries(batch: int, plan: dict) -> int:
    """int32 entries of the ragged plan (triton_tasks.ragged_plan): the first group, tile and
    statistics task of every image and the image of every group and statistics task."""
    return 3 * (batch + 1) + plan["NG_TOTAL"] + plan["NS_TOTAL"]


def _parts16_elements(dtype: torch.dtype, *, batch: int, rows: int, d: int, lp: int) -> int:
    """Elements of the 16-bit parts buffer: Omega's two parts [D, LP], Q's three [rows, LP], W's two
    [B, D, LP] (16-bit tokens only; 0 for the others)."""
    if dtype not in (torch.float16, torch.bfloat16):
        return 0
    return (2 * d + 3 * rows + 2 * batch * d) * lp


def workspace_bytes(*, batch: int, n: int, d: int, settings: dict, plan: dict, ragged: bool,
                    dtype: torch.dtype = torch.float32) -> int:
    """Bytes of scratch one launch allocates besides its outputs (``n`` is N, or T for packed input;
    ``dtype`` the tokens'): the buffers ``_launch`` makes, each at least one element."""
    lp, slots = settings["LP"], settings["PSLOTS"]
    rows = n if ragged else batch * n
    elt = torch.empty((), dtype=dtype).element_size()
    parts16 = elt * max(1, _parts16_elements(dtype, batch=batch, rows=rows, d=d, lp=lp))
    f32 = (d * lp + rows * lp + batch * d * lp + batch * slots * lp * lp + batch * 2 * lp * lp
           + batch * slots * lp + plan["TILES"] * d + batch * d + batch * lp + rows)
    f64 = plan["TILES"] * 4 + batch * (IMAGE_SCALARS.value + slots) + batch * slots * lp
    # ranks, (k*, budget, r), kept flags, kept counts, the ragged plan, the counters
    i32 = batch * lp + 4 * batch + rows + batch * slots + plan_entries(batch, plan) + _C_IMAGES \
        + batch * len(plan["stages"]) + batch
    return 4 * f32 + 8 * f64 + 4 * i32 + parts16


def _launch_flags(flags: dict) -> dict:
    """The flags the launcher passes (the heuristics derive HAS_SKETCH, HAS_SCORES, HAS_BUDGETS, RAGGED
    from the arguments themselves)."""
    return {k: v for k, v in flags.items() if k not in ("HAS_SKETCH", "HAS_SCORES", "HAS_BUDGETS", "RAGGED")}


def _launch(tokens: torch.Tensor, scores: torch.Tensor | None, cfg: PipelineConfig, select: bool,
            budgets_in: torch.Tensor | None = None, cu_seqlens: torch.Tensor | None = None):
    """One launch for dense tokens [B, N, D], or packed tokens [T, D] with cu_seqlens [B + 1]
    (ragged: scratch is sized by T, an upper bound read from the shape, never from the data)."""
    _check_device(tokens)
    dev = tokens.device
    ragged = cu_seqlens is not None
    if not ragged:
        batch, n, d = tokens.shape
        x_strides = tokens.stride()
        rows = batch * n
    else:
        n, d = tokens.shape  # N = T: the clamp bound of every image's rows
        batch = cu_seqlens.shape[0] - 1
        x_strides = (0, *tokens.stride())
        rows = n
    l, m = cfg.sketch_size, cfg.max_tokens
    interpreting = _interpreting()
    settings = kernel_settings(tokens.dtype, l, interpreted=interpreting)
    lp, slots = settings["LP"], settings["PSLOTS"]
    leverage = select and scores is None
    plan = launch_plan(batch=batch, n=n, d=d, settings=settings, ragged=ragged, power_iters=cfg.power_iters,
                       leverage=leverage, select=select)
    f32, f64, i32 = torch.float32, torch.float64, torch.int32

    def scratch(*shape, dtype=f32):
        return torch.empty(*shape, device=dev, dtype=dtype)

    oms = scratch(max(d, 1), lp)
    q_ws = scratch(max(rows, 1), lp)
    w_ws = scratch(batch, d, lp)
    part = scratch(batch, slots, lp, lp)
    lws = scratch(batch, 2, lp, lp)
    # 16-bit parts of Omega (2), Q (3) and W (2) for the products of 16-bit tokens; one element otherwise
    p16 = scratch(max(1, _parts16_elements(tokens.dtype, batch=batch, rows=rows, d=d, lp=lp)), dtype=tokens.dtype)
    csum = scratch(batch, slots, lp)
    tsum = scratch(max(plan["TILES"], 1), d)
    tscal = scratch(max(plan["TILES"], 1), 4, dtype=f64)
    imgf = scratch(batch, IMAGE_SCALARS.value + slots, dtype=f64)
    mu = scratch(batch, d)
    sigp = scratch(batch, slots, lp, dtype=f64)
    sig2 = scratch(batch, lp)
    ranks = scratch(batch, lp, dtype=i32)
    imgi = scratch(batch, 4, dtype=i32)
    lev = scratch(max(rows, 1))
    kept = scratch(max(rows, 1), dtype=i32)
    kcnt = scratch(batch, slots, dtype=i32)
    plan_ws = scratch(plan_entries(batch, plan), dtype=i32)
    # [ticket, call-wide stage done, interpreter waits, CNT[b, s]..., the Jacobi barrier of image b...]
    counters = torch.zeros(_C_IMAGES + batch * len(plan["stages"]) + batch, device=dev, dtype=i32)
    grid = _grid(plan)
    sigma = scratch(batch, l)
    energy = scratch(batch)
    budgets = scratch(batch, dtype=i32)
    saturated = torch.empty(batch, device=dev, dtype=torch.bool)
    if select:
        out_tokens = torch.empty(batch, m, d, device=dev, dtype=tokens.dtype)
        out_indices = torch.empty(batch, m, device=dev, dtype=torch.int64)
        out_mask = torch.empty(batch, m, device=dev, dtype=torch.bool)
    else:  # never touched (SELECT=False): one-element placeholders
        out_tokens = torch.empty(1, 1, 1, device=dev, dtype=tokens.dtype)
        out_indices = torch.empty(1, 1, device=dev, dtype=torch.int64)
        out_mask = torch.empty(1, 1, device=dev, dtype=torch.bool)
    if batch == 0:
        return sigma, energy, budgets, saturated, out_tokens, out_indices, out_mask

    if cfg.sketch_matrix is not None:
        om, som = cfg.sketch_matrix, cfg.sketch_matrix.stride()
    else:
        om, som = oms, (lp, 1)
    if scores is not None:
        sc, ssc = scores, (scores.stride() if not ragged else (0, *scores.stride()))
    else:
        sc, ssc = None, (0, 0)

    # The interpreter swaps module-level hooks while it runs a kernel: it is not thread-safe, so
    # interpreted launches are serialised (compiled GPU launches are not affected).
    if interpreting:  # the interpreter multiplies bf16 bit patterns and truncates bf16 casts otherwise
        install_bf16_fix()
        install_device_call_fast_path()
    with _INTERPRETER_LOCK if interpreting else contextlib.nullcontext():
        _eadaprune_kernel[grid](
            tokens, *x_strides,
            cu_seqlens,
            sc, *ssc,
            om, *som,
            oms, q_ws, w_ws, part, lws, p16, csum,
            tsum, tscal, imgf, mu,
            sigp, sig2, ranks, imgi,
            lev, kept, kcnt, plan_ws, counters,
            sigma, energy, budgets, saturated.view(torch.uint8),
            budgets_in,
            out_tokens, *out_tokens.stride(), out_indices, out_mask.view(torch.uint8),
            n, d, l, m, batch, cfg.power_iters, cfg.seed, cfg.min_tokens, cfg.energy - ENERGY_SLACK, FLAT_RTOL,
            plan["GR"], plan["GD"], plan["NG"], plan["DG"], plan["NG_TOTAL"], plan["SR"], plan["NS"], plan["NS_TOTAL"],
            plan["OM_TILES"], len(plan["stages"]),
            plan["total"],
            **_launch_flags(kernel_flags(dtype=tokens.dtype, scores=scores is not None,
                                         sketch=cfg.sketch_matrix is not None, budgets=budgets_in is not None,
                                         ragged=ragged, center=cfg.center, select=select,
                                         scores_f64=scores is not None and scores.dtype == torch.float64,
                                         power_iters=cfg.power_iters, interpreted=interpreting)),
            **settings,
        )
    if interpreting and int(counters[_C_WAITS]) != 0:
        raise RuntimeError(
            f"backend 'triton': {int(counters[_C_WAITS])} task(s) had to wait when the programs ran one at a "
            f"time: the global task order is not a topological order (a bug in the scheduler)"
        )
    return sigma, energy, budgets, saturated, out_tokens, out_indices, out_mask


@triton.jit
def _jacobi_alone(H, WORK, V, SWEEPS, CNT, LP: tl.constexpr, JB: tl.constexpr, JP: tl.constexpr,
                  MAX_SWEEPS: tl.constexpr, MAX_WAITS: tl.constexpr, SPREC: tl.constexpr, REVERSE: tl.constexpr):
    LL = LP * LP
    sweeps = jacobi_eigenvectors(H, WORK, WORK + LL, WORK + 2 * LL, WORK + 3 * LL, V, 0, CNT + 3, CNT, LP, JB, JP,
                                 JP, MAX_SWEEPS, MAX_WAITS, SPREC, REVERSE)
    tl.store(SWEEPS, sweeps)


def jacobi_alone(h: torch.Tensor, *, parts: int | None = None, reverse: bool = False) -> tuple[torch.Tensor, int]:
    """(eigenvectors as columns, sweeps run) of the symmetric fp32 matrix h [LP, LP] (LP a padded sketch
    width, 16 .. 256) by the kernel's own Jacobi routine with the launcher's settings, in one program on
    h's device (CPU: under the interpreter) that runs the routine's ``parts`` parts (default: JP, as
    many as the GPU launch has programs) in sequence, in reverse order with ``reverse``: for
    tests/test_triton_linalg.py and tools/jacobi_sweeps.py. The work buffers and the output start as
    NaN, so an unwritten entry shows."""
    lp = h.shape[0]
    if h.shape != (lp, lp) or h.dtype != torch.float32 or lp != max(16, _next_pow2(lp)) or lp > MAX_SKETCH_SIZE:
        raise ValueError(f"h: expected a square float32 matrix of side 16, 32, ..., {MAX_SKETCH_SIZE}, got "
                         f"shape {tuple(h.shape)}, dtype {h.dtype}")
    settings = kernel_settings(torch.float32, lp)
    parts = settings["JP"] if parts is None else parts
    if parts not in [1 << i for i in range(settings["JP"].bit_length())]:
        raise ValueError(f"parts: expected a power of two up to {settings['JP']} (JP at LP = {lp}), got {parts!r}")
    work = torch.full((4, lp, lp), float("nan"), device=h.device)
    v = torch.full((lp, lp), float("nan"), device=h.device)
    sweeps = torch.full((1,), -1, dtype=torch.int32, device=h.device)
    counters = torch.zeros(4, dtype=torch.int32, device=h.device)  # [.., .., waits, the barrier]
    _jacobi_alone[(1,)](h.clone(), work, v, sweeps, counters, LP=lp, JB=settings["JB"], JP=parts,
                        MAX_SWEEPS=MAX_SWEEPS, MAX_WAITS=int(h.device.type == "cpu"), SPREC=settings["SPREC"],
                        REVERSE=reverse, num_warps=settings["num_warps"])
    if int(counters[_C_WAITS]) != 0:
        raise RuntimeError("jacobi_alone: the routine's barrier waited with one program (a bug)")
    return v, int(sweeps)


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

