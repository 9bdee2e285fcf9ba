"""Cost model of the fused Triton kernel (the persistent-task design) on an H200, from the kernel's own
tiling and its SASS. A PREDICTION, not a measurement: no GPU has run the kernel.

For one variant (default: bf16 tokens, l = 128, q = 2, leverage selection) the model

1. compiles the kernel for sm_90 exactly as tools/aot_compile_triton.py does (the launcher's
   ``kernel_settings``), reads its occupancy (ptxas registers and shared memory -> blocks per SM) and
   disassembles it (the wheel's nvdisasm, with source lines). Every task is a
   ``@triton.jit(noinline=True)`` function: a SASS function of its own (``.type ...@function``,
   called with CALL.REL.NOINC from the scheduler), whose mangled name carries the constexprs it was
   specialised with (xt_times_q appears twice: PARTS = 2 and 3);
2. finds the loops of each task's SASS function (backward branches; a loop's own body excludes the
   loops nested in it) and attributes them to the source by a marker statement
   (:data:`LOOP_MARKERS`: the function that holds the statement, looked up in the module that defines
   it, and the statement; the loop is the innermost one whose own body holds the most instructions
   that line generated itself: the innermost entry of their inlining chain, since the call-site
   entries are imprecise). It counts per loop iteration and per warp: instructions, shared-memory
   bytes, barriers, shuffles, special-function ops, tensor-core FLOPs (HMMA / HGMMA), local-memory
   (spill) bytes and global loads. A marker that is not in the source, whose loop is not in the SASS
   of the task, or that picks the loop another name of the same task picked, raises LookupError;
3. turns every count into cycles per iteration with the sm_90 rates of :data:`H200` (each stated and
   justified there): throughput T = max(issue, shared + local memory, shuffles, MUFU, fp64, tensor
   cores), latency = barriers x (barrier + shared-memory latency) + the exposed latency of global loads
   that are not software-pipelined; alone on an SM t_iter = T + latency (one program has little other
   work to hide it), and with r programs of a stage sharing an SM t_iter = max(r T, T + latency)
   (they share the SM's throughput and hide each other's latency). Which SMs a stage's programs land
   on is the hardware's choice, so the model takes it as an assumption (``--placement``): "spread"
   (the default) puts them on distinct SMs while any is idle, as the block distributor does with the
   blocks of a launch; "packed" fills every SM to its blocks per SM first, the pessimistic bound for
   programs that claim their tickets where earlier tasks left a slot free;
4. describes the kernel as its stages, from ``launch_plan`` / ``stage_list`` (the real task counts:
   GR / GD rows / features per group, NG / DG groups per image): for every stage kind, the work of ONE
   task from its row or feature range and the tiling (BR, BD, BK, CB, FB, LP, JB, RB, BS and the section's
   own constexprs): iterations of which SASS loop, bytes (HBM: tokens and outputs; L2: the fp32
   scratch), tensor-core FLOPs (16-bit and tf32; 3xTF32 counts 3 products) and CUDA-core FLOPs. The rest
   of a task's SASS function (code outside the loops named for it) is counted once per task;
5. schedules: in a stage, the batch's T tasks run on C = min(T, 132 x blocks_per_sm) programs at once,
   in ceil(T / C) waves; the stage takes max(waves x (serial time of the largest task + the per-task
   scheduler overhead), HBM bytes / HBM share, L2 bytes / L2 share, tensor FLOPs / tensor share,
   CUDA-core FLOPs / CUDA-core share) + one hand-off (see H200["handoff_cycles"]), the shares being
   those of the SMs the stage keeps busy. The call is the SUM of its stages: an upper (conservative)
   estimate, since in the kernel the stages of different images overlap (tickets are stage-major, but a
   program waits only for its own image's previous stage);
6. simulates the overlap with the same task times (``ticket_schedule``: the kernel's stage-major
   tickets, or tickets staggered by image; ``ready_queue_schedule``: an ideal dependency-aware
   scheduler, the bound on what overlapping the images' stages can give) and prints the three;
7. prints the pivot chain: the time every image spends in loops whose iterations depend on each other
   (:data:`PIVOT_LOOPS`: the Cholesky's pivots, the Jacobi's pairs of rounds), iterations x cycles summed over
   the stages: a part of the chain that more programs per image cannot shorten, only fewer or cheaper
   steps;
8. prints the design's floors (:func:`design_floors`): the call's bytes and FLOPs at the whole GPU's
   peak rates and one image's dependent steps, the times below which no tiling or schedule of the same
   work can go, and, for the issue's benchmark shape, which of them lie above its targets (:data:`TARGETS`).

    python tools/cost_model.py                                   # the benchmark shapes, a markdown table
    python tools/cost_model.py --dtype fp32 --d 4096 --json      # one variant, rows as JSON lines

Shapes: B in {1, 64}, N = 576, D in {1024, 4096}, l = 128, q = 2 (the issue's benchmark shapes).
"""

from __future__ import annotations

import argparse
import collections
import heapq
import dataclasses
import inspect
import json
import math
import os
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aot_compile_triton as aot  # noqa: E402  (also sets up the compile-only environment)

from eadaprune_kernels.backends import triton_kernel as kernel_module  # noqa: E402
from eadaprune_kernels.backends import triton_linalg as linalg_module  # noqa: E402
from eadaprune_kernels.backends import triton_tasks as tasks_module  # noqa: E402

K = kernel_module  # stage kinds K.K_STATS, ...

# ---- the machine ---------------------------------------------------------------------------------

PLACEMENTS = ("spread", "packed")  # where a stage's concurrent programs land (step 3 of the docstring)

H200 = dict(
    sms=132,
    # Peak rates the issue gives for the H200 (NVIDIA's data sheet, dense): HBM3e 4.8 TB/s,
    # 990 TFLOP/s bf16 / fp16 tensor cores, 495 TFLOP/s TF32, ~67 TFLOP/s fp32 on the CUDA cores.
    hbm_bytes_per_s=4.8e12,
    tc16_flops_per_s=990e12,
    tf32_flops_per_s=495e12,
    fp32_flops_per_s=67e12,
    # 1.98 GHz boost clock: 67 TFLOP/s = 132 SMs x 128 FMA/clk x 2 x 1.98e9.
    clock_hz=1.98e9,
    # L2: 50 MB (NUMERICS.md); its bandwidth is taken as 2.5x HBM (about 12 TB/s, the usual ratio on
    # H100-class parts; an assumption, not a data-sheet figure).
    l2_bytes=50e6,
    l2_bytes_per_s=12e12,
    # Per SM and clock (CUDA C programming guide, arithmetic-instruction throughput table, compute
    # capability 9.0): 4 schedulers issue one warp instruction each (128 thread-ops); shuffles 32
    # results, special functions (MUFU: rsqrt, sqrt, lg2, ex2, sin, cos, rcp) 16, fp64 64; shared
    # memory delivers 128 bytes.
    issue_per_clk=4,
    shfl_per_clk=32,
    mufu_per_clk=16,
    fp64_per_clk=64,
    smem_bytes_per_clk=128,
    # Latencies in cycles, from published Hopper microbenchmarks (Luo et al., "Benchmarking and
    # Dissecting the Nvidia Hopper GPU Architecture", arXiv 2402.13499, and chipsandcheese's H100
    # article): shared-memory load ~30, L2 hit ~270, HBM ~800 (about 400 ns at 1.98 GHz); a barrier
    # among the warps of one block ~24 once all have arrived. A shared-memory round trip behind a
    # barrier (store, bar.sync, load) is therefore ~55 cycles of latency that one program alone on
    # an SM cannot hide.
    smem_latency=30,
    l2_latency=270,
    hbm_latency=800,
    barrier_latency=24,
    # Hand-off between two stages of one image, on its critical path: the last task's release
    # (count_done: a barrier, then atom.add.release, whose fence waits until the task's stores have
    # reached L2 and whose atomic is one more L2 round trip) and the next task's acquire poll
    # (wait_for: every poll is an L2 atomic round trip; the poll that sees the count returns about
    # one round trip after it landed). About 3 L2 round trips: 3 x 270 = 810 cycles (0.41 us).
    handoff_cycles=3 * 270,
    # Per task (every program runs one task and exits: the grid is one program per ticket): the
    # ticket atomic on one global counter (one L2 round trip; contention among the <= 132 programs
    # starting at once is not modelled) plus the scheduler's own SASS outside its poll loops (stage
    # decoding), counted from the SASS. The CTA launch itself is not modelled (unknown without a GPU).
    ticket_cycles=270,
)


def tensor_core_seconds(tc16_flops: float, tf32_flops: float) -> float:
    """The whole GPU's tensor cores at peak on 16-bit and tf32 products: they share the units, so
    the times add."""
    return tc16_flops / H200["tc16_flops_per_s"] + tf32_flops / H200["tf32_flops_per_s"]


# Tensor-core FLOPs per SM and clock: the peak rates divided over 132 SMs at 1.98 GHz.
TC16_PER_CLK = H200["tc16_flops_per_s"] / H200["sms"] / H200["clock_hz"]
TF32_PER_CLK = H200["tf32_flops_per_s"] / H200["sms"] / H200["clock_hz"]

# ---- SASS --------------------------------------------------------------------------------------------

_LINE = re.compile(r'\s*//## File "([^"]+)", line (\d+)(?: inlined at "([^"]+)", line (\d+))?')
_INSTR = re.compile(r"\s*/\*([0-9a-f]+)\*/\s+(.*?)\s*;")
_LABEL = re.compile(r"^(\.L_x_\d+):")
_FUNCTION = re.compile(r"^(\S+):\s*$")
# $_eadaprune_kernel$eadaprune_kernels_$_backends_$_triton_tasks_$_x_times_w__<constexprs and types>
_MANGLED = re.compile(r"_\$_backends_\$_(\w+?)_\$_(\w+?)__(\w*)$")


@dataclasses.dataclass
class Instr:
    addr: int
    opcode: str  # full opcode with modifiers, e.g. LDS.U.128
    text: str
    chain: tuple  # (path, line) of the statement and of every call site it is inlined through
    target: int | None = None


@dataclasses.dataclass
class Loop:
    start: int
    end: int
    own: list  # the instructions of its body outside the loops nested in it


@dataclasses.dataclass
class Section:
    """One SASS function: the scheduler (the kernel itself) or a noinline task."""
    symbol: str
    function: str
    module: str  # triton_tasks / triton_linalg / triton_kernel
    constexprs: dict
    instrs: list
    loops: list = dataclasses.field(default_factory=list)


def _mangled_args(function: str, module: str, suffix: str) -> dict:
    """The parameters of ``function`` with their specialisation in the mangled name (one token per
    parameter: Pbf16 / i32 / cTrue / c128 / c_sq_tf32x3_sq_ / cNone ...); constexprs as Python values."""
    fn = getattr({"triton_tasks": tasks_module, "triton_linalg": linalg_module}.get(module, kernel_module),
                 function, None)
    params = [p.name for p in getattr(fn, "params", [])]
    tokens = re.findall(r"c_sq_.*?_sq_|[^_]+", suffix)
    out = {}
    for name, tok in zip(params, tokens):
        if tok.startswith("c_sq_"):
            out[name] = tok[5:-4]
        elif tok.startswith("c"):
            v = tok[1:]
            out[name] = {"True": True, "False": False, "None": None}.get(v, int(v) if v.lstrip("-").isdigit() else v)
    return out


def parse_sections(text: str) -> list[Section]:
    """The SASS functions of ``nvdisasm -c -gi`` output, each with its instructions (and their inlining
    chains of source lines) and its loops."""
    sections, labels, pending, chain, fresh, cur = [], {}, [], [], True, None
    for raw in text.splitlines():
        m = _LINE.match(raw)
        if m:
            if fresh:
                chain, fresh = [], False
            chain.append((m.group(1), int(m.group(2))))
            if m.group(3):
                chain.append((m.group(3), int(m.group(4))))
            continue
        m = _LABEL.match(raw)
        if m:
            pending.append(m.group(1))
            continue
        m = _FUNCTION.match(raw)
        if m:
            sym = m.group(1)
            mm = _MANGLED.search(sym)
            if mm:
                cur = Section(sym, mm.group(2), mm.group(1), _mangled_args(mm.group(2), mm.group(1), mm.group(3)), [])
            else:
                name = sym.replace(".text.", "")
                cur = Section(sym, name, "triton_kernel" if name == "_eadaprune_kernel" else "", {}, [])
            sections.append(cur)
            continue
        m = _INSTR.match(raw)
        if not m or cur is None:
            continue
        fresh = True
        body = re.sub(r"^@!?U?P\w+\s+", "", m.group(2).strip())
        opcode = body.split()[0] if body else ""
        instr = Instr(int(m.group(1), 16), opcode, body, tuple(chain))
        for label in pending:
            labels[label] = instr.addr
        pending = []
        cur.instrs.append(instr)
    sections = [s for s in sections if s.instrs]
    for sec in sections:
        for instr in sec.instrs:  # resolve branch targets
            m = re.search(r"\((\.L_x_\d+)\)", instr.text)
            instr.target = labels.get(m.group(1)) if (m and instr.opcode.startswith("BRA")) else None
        # backward branches after the function's last return are not loops of the task: ptxas lays the
        # reductions' divergent-warp paths out there (never run by converged warps)
        end = max((i.addr for i in sec.instrs if i.opcode.startswith(("RET", "EXIT"))), default=sec.instrs[-1].addr)
        spans = sorted({(i.target, i.addr) for i in sec.instrs
                        if i.target is not None and i.target <= i.addr and i.addr <= end})
        for a, b in spans:
            kids = [o for o in spans if o != (a, b) and a <= o[0] and o[1] <= b]
            own = [i for i in sec.instrs if a <= i.addr <= b and not any(k[0] <= i.addr <= k[1] for k in kids)]
            sec.loops.append(Loop(a, b, own))
    return sections


def _mma_flops(opcode: str) -> tuple[float, float]:
    """(16-bit, tf32) tensor-core FLOPs of one warp-level MMA instruction (per warp; HGMMA per warp of
    its warpgroup)."""
    m = re.match(r"HMMA\.(\d+)(\d)(\d+)\.F32\.(\w+)", opcode)
    if m:  # e.g. HMMA.16816.F32.BF16: m16 n8 k16
        shape = opcode.split(".")[1]
        mnk = {"16816": (16, 8, 16), "1688": (16, 8, 8), "1684": (16, 8, 4)}.get(shape)
        if mnk is None:
            return 0.0, 0.0
        flops = 2.0 * mnk[0] * mnk[1] * mnk[2]
        return (0.0, flops) if "TF32" in opcode else (flops, 0.0)
    m = re.match(r"HGMMA\.64x(\d+)x(\d+)", opcode)
    if m:  # per warpgroup of 4 warps
        flops = 2.0 * 64 * int(m.group(1)) * int(m.group(2)) / 4
        return (0.0, flops) if "TF32" in opcode else (flops, 0.0)
    return 0.0, 0.0


def _access_bytes(opcode: str) -> int:
    """Bytes per thread of a load / store instruction (LDS.128 -> 16; default 4)."""
    m = re.search(r"\.(8|16|32|64|128)(?:\.|$)", opcode.replace(".U.", "."))
    if m:
        return int(m.group(1)) // 8
    return 4


def loop_counts(instrs: list) -> dict:
    """Per iteration and per warp: instruction classes of one loop body (or any list of instructions)."""
    c = collections.Counter()
    for ins in instrs:
        op = ins.opcode
        head = op.split(".")[0]
        c["instructions"] += 1
        if head in ("LDS", "STS"):
            c["smem_bytes"] += 32 * _access_bytes(op)
        elif head in ("LDSM", "STSM"):  # ldmatrix / stmatrix: .M88.k moves k 8x8 matrices of 16-bit values
            m = re.search(r"\.M88\.(\d)", op)
            c["smem_bytes"] += 128 * (int(m.group(1)) if m else 1)
        elif head in ("LDL", "STL"):
            c["local_bytes"] += 32 * _access_bytes(op)
        elif head == "BAR":
            c["barriers"] += 1
        elif head == "SHFL":
            c["shuffles"] += 1
        elif head == "MUFU":
            c["mufu"] += 1
        elif head in ("DFMA", "DADD", "DMUL"):
            c["fp64"] += 1
        elif head == "LDG":
            c["global_loads"] += 1
        elif head in ("LDGSTS", "UTMALDG", "UBLKCP"):
            c["async_loads"] += 1
        tc16, tf32 = _mma_flops(op)
        c["tc16_flops"] += tc16
        c["tf32_flops"] += tf32
    return dict(c)


def iteration_cycles(counts: dict, warps: int, global_latency: int, resident: int = 1) -> tuple[float, str]:
    """Cycles of one iteration of a loop run by ``warps`` warps of one program, and the term that bounds
    it (see the module docstring, step 3). ``resident`` programs share the SM (all running such loops):
    they share its issue slots and its shared-memory, shuffle, MUFU, fp64 and tensor-core throughput,
    and each hides its latencies (barriers, global loads) behind the others' work: an iteration takes
    max(resident x throughput term, throughput term + latencies)."""
    terms = {
        "issue": counts.get("instructions", 0) * warps / H200["issue_per_clk"],
        # shared memory and local memory (register spills) share the SM's L1 data path
        "shared + local memory": (counts.get("smem_bytes", 0) + counts.get("local_bytes", 0)) * warps
        / H200["smem_bytes_per_clk"],
        "shuffles": counts.get("shuffles", 0) * warps * 32 / H200["shfl_per_clk"],
        "MUFU": counts.get("mufu", 0) * warps * 32 / H200["mufu_per_clk"],
        "fp64": counts.get("fp64", 0) * warps * 32 / H200["fp64_per_clk"],
        "tensor cores": (counts.get("tc16_flops", 0) * warps / TC16_PER_CLK
                         + counts.get("tf32_flops", 0) * warps / TF32_PER_CLK),
    }
    bound = max(terms, key=terms.get)
    latency = counts.get("barriers", 0) * (H200["barrier_latency"] + H200["smem_latency"])
    if counts.get("global_loads", 0) and not counts.get("async_loads", 0):
        latency += global_latency  # the loads of an iteration are waited for before its arithmetic
    if resident * terms[bound] > terms[bound] + latency:
        return resident * terms[bound], f"{bound}, shared by {resident} programs"
    return terms[bound] + latency, bound




# ---- which loop is which ----------------------------------------------------------------------

# Loop name -> (function that holds the marker statement, marker text). The function is looked up in
# the module that defines it (triton_tasks / triton_linalg); the loop is found in the SASS function of
# the TASK that runs it (an inlined helper such as gram_partial has a copy in every task that calls it).
LOOP_MARKERS = {
    # statistics + Y~ = X Omega (stats_and_sketch)
    "stats: scan chunk": ("stats_and_sketch", "b_x = tl.load(x_img + rows[:, None] * sxn + (d0 + o_d)[None, :] * sxd"),
    "stats: sums + X Omega chunk": ("stats_and_sketch", "ss += tl.sum(tl.sum(b_c * b_c, 1), 0).to(tl.float64)"),
    "stats: row tile": ("stats_and_sketch", "tl.store(TSCAL + t * 4 + 1, ss)"),
    # reduce (reduce_features)
    # (its two loops over the tiles' scalars run once per REDUCE_TILES tiles: counted with the task's
    # rest; ptxas lays the function's tail out between its loops, which the loop finder takes for
    # loops too, so the markers are statements that only the real loops hold)
    "reduce: tile sums": ("reduce_features", "b_s = tl.load(TSUM + t[:, None] * D + cols[None, :], mask=m_d[None, :]"),
    "reduce: tile deviations": ("reduce_features",
                                "b_m = tl.load(TSUM + t[:, None] * D + cols[None, :], mask=m_d[None, :], other=0.0,"),
    "reduce: column chunk": ("reduce_features", "b_mu = total / tl.maximum(n_img, 1)"),
    # fix Y (fix_sketch)
    "fix Y: row tile": ("fix_sketch", "tl.store(q_img + rows[:, None] * LP + o_l[None, :], y, mask=m_r[:, None])"),
    # Gram partial (gram_partial, inlined into fix_sketch, x_times_w, xt_times_q, apply_task)
    "Gram: row chunk": ("gram_partial", "acc = tl.dot(tl.trans(y_i), y_j, acc, input_precision=SPREC)"),
    "Gram: block": ("gram_partial", "for r0 in range(row0, row1, BR):"),
    # Cholesky (cholesky_factor, _chol_small)
    "Cholesky: partial sums": ("_summed_rows", "acc = (((acc + g0) + g1) + g2) + g3"),
    "Cholesky: step": ("_chol_small", "A = A - low_r[:, None] * low_c[None, :]"),
    "Cholesky: block column": ("cholesky_factor", "tl.store(col, l_col, mask=below)"),
    "Cholesky: trailing window": ("cholesky_factor", "a_w = a_w - tl.dot(l_ik, tl.trans(l_jk), input_precision=CHOL_PREC)"),
    "Cholesky: diagonal inverse": ("cholesky_factor",
                                   "acc = tl.dot(_load_block(amat, i, k, LP, FB), _load_block(mmat, k, j, LP, FB), acc,"),
    # solve with L^T (solve_transpose in apply_task)
    "apply: block product": ("solve_transpose",
                             "acc = tl.dot(x, tl.trans(-_load_block(lmat, jb, kb, LP, AB)), acc, input_precision=SPREC)"),
    "apply: column block": ("solve_transpose",
                            "x = tl.dot(acc, tl.trans(_load_block(mmat, jb, jb, LP, AB)), input_precision=SPREC)"),
    # the last pass's 16-bit parts and column sums (product_operand, store_parts in apply_task)
    "apply: split rows": ("product_operand",
                          "y = tl.load(ws + rows[:, None] * LP + o_l[None, :], mask=m, other=0.0, cache_modifier=\".cg\")"),
    "apply: split part": ("store_parts", "tl.store(ptrs + p * pstride, part, mask=mask)"),
    # products with X
    "X W: chunk": ("x_times_w", "acc = _dot_operand(b_x, w_img + w_offs, w16 + w_offs, wstride, (cols < D)[:, None]"),
    "X W: row tile": ("x_times_w", "tl.store(q_img + rows[:, None] * LP + o_l[None, :], acc, mask=(rows < row1)[:, None])"),
    "X^T Q: chunk": ("xt_times_q", "acc = _dot_operand(tl.trans(b_x), q_img + q_offs, q16 + q_offs, qstride,"),
    "X^T Q: feature tile": ("xt_times_q",
                            "tl.store(w_img + cols[:, None] * LP + o_l[None, :], acc, mask=(cols < col1)[:, None])"),
    # Jacobi (eigen_task: _symmetric_sum, jacobi_eigenvectors)
    "H: partial sums": ("_summed_rows", "acc = (((acc + g0) + g1) + g2) + g3"),
    "Jacobi: group": ("jacobi_eigenvectors", "sub = tl.load(h + idx[:, :, None] * LP + idx[:, None, :], cache_modifier=\".cg\")"),
    "Jacobi: round pair": ("_jacobi_round_pair", "u = c[:, None, :] * u + s[:, None, :] * tl.gather(u, cols, 2)"),
    "Jacobi: apply set": ("jacobi_eigenvectors",
                          "tl.store(t + o[None, :] * LP + rows[:, None], tl.dot(u_t, h_rows, input_precision=SPREC))"),
    "Jacobi: apply back set": ("jacobi_eigenvectors",
                               "tl.store(h + rows[:, None] * LP + o[None, :], tl.dot(u_t, t_rows, input_precision=SPREC))"),
    "Jacobi: off-diagonal rows": ("_off_diagonal", "off += tl.sum(tl.where(rows[:, None] == o[None, :], 0.0, sq), 1)"),
    # sigma partials (sigma_partial)
    "sigma: Z V chunk": ("sigma_partial", "b_zv = tl.dot(b_z, b_v, b_zv, input_precision=SPREC)"),
    "sigma: feature tile": ("sigma_partial", "acc += tl.sum(b_zv * b_zv, 0).to(tl.float64)"),
    # budget (budget_task)
    "budget: partial sums": ("_summed_partials", "acc += tl.load(rows + p * LP + o_l, cache_modifier=\".cg\")"),
    "budget: ranks": ("budget_task", "tl.store(rank_img + rows, tl.sum(beats.to(tl.int32), 1))"),
    "budget: cumulative energy": ("budget_task", "n_reached += tl.sum(reached.to(tl.int32), 0)"),
    "budget: padding chunk": ("budget_task", "tl.store(out_tok + o_p[:, None] * sotm + cols[None, :] * sotd, zeros,"),
    # leverage (leverage_rows)
    "leverage: Q V chunk": ("leverage_rows",
                            "b_u = tl.dot(b_q, tl.where(keep[None, :], b_v, 0.0), b_u, input_precision=SPREC)"),
    "leverage: column block": ("leverage_rows", "lev += tl.sum(b_u * b_u, 1)"),
    # selection (select_rows), gather (gather_rows)
    "selection: rank count": ("select_rows", "rank_i += tl.sum((wins & m_j[None, :]).to(tl.int32), 1)"),
    "selection: row block": ("select_rows", "tl.store(kept_img + o_i, kept.to(tl.int32), mask=m_i)"),
    "gather: kept counts": ("gather_rows", "kept_before += tl.load(kcnt_img + g, cache_modifier=\".cg\")"),
    "gather: row chunk": ("gather_rows", "tl.store(out_tok + slot[:, None] * sotm + cols[None, :] * sotd, b_row, mask=m)"),
    "gather: row block": ("gather_rows", "tl.store(OIDX + b * M + slot, o_i.to(tl.int64), mask=kept)"),
    # the scheduler's poll loop (wait_for): excluded from the per-task overhead (the hand-off covers it)
    "scheduler: poll": ("wait_for", "seen = tl.atomic_add(cnt, 0, sem=\"acquire\")"),
}

_MODULES = (tasks_module, linalg_module, kernel_module)


def _defining_module(function: str):
    for module in _MODULES:
        fn = module.__dict__.get(function)
        if fn is not None and getattr(getattr(fn, "fn", fn), "__module__", module.__name__) == module.__name__:
            return module
    raise LookupError(f"cost_model: no function {function!r} in triton_tasks / triton_linalg / triton_kernel: "
                      f"update LOOP_MARKERS")


def _source_suffix(module) -> str:
    return "/".join(Path(inspect.getsourcefile(module)).resolve().parts[-3:])


def _marker_lines(function: str, marker: str) -> tuple[str, set[int]]:
    """(source file suffix, line numbers) of ``marker`` in ``function``."""
    module = _defining_module(function)
    fn = module.__dict__[function]
    fn = getattr(fn, "fn", fn)
    fn = getattr(fn, "fn", fn)
    lines, first = inspect.getsourcelines(fn)
    found = {first + i for i, text in enumerate(lines) if marker in text}
    if not found:
        raise LookupError(f"cost_model: marker {marker!r} not found in {function}: update LOOP_MARKERS")
    return _source_suffix(module), found


def _hits(instrs: list, suffix: str, lines: set[int], alias: str | None, innermost: bool = True) -> int:
    """Instructions generated by one of ``lines`` of the file ``suffix``: by the statement itself (the
    innermost entry of the inlining chain), or with ``innermost=False`` by anything inlined through it.
    ``alias``: a file name that stands for it (triton 3.8's line records of noinline functions from
    triton_linalg name the kernel's file, triton_kernel.py, with the right line numbers: seen in the
    SASS). The outer entries (call sites) are imprecise: the call of gram_partial at the end of
    xt_times_q is recorded on the line before it, a statement of the task's own loop."""
    n = 0
    for ins in instrs:
        chain = ins.chain[:1] if innermost else ins.chain
        if any(ln in lines and (path.endswith(suffix) or (alias and path.endswith(alias))) for path, ln in chain):
            n += 1
    return n


def attribute_loop(section: Section, name: str) -> dict:
    """Counts per iteration of the loop ``name`` in ``section``, with ``unroll`` (source iterations per
    SASS iteration: LLVM unrolls some small loops, leaving a remainder loop: the ratio of the marker's
    instructions in the largest and the smallest copy) and the loop itself (``_loop``)."""
    function, marker = LOOP_MARKERS[name]
    suffix, lines = _marker_lines(function, marker)
    # the alias is for statements of triton_linalg only: a statement of triton_tasks would match the
    # kernel file's lines of the same numbers (the call sites every task's instructions carry)
    alias = _source_suffix(kernel_module) if _defining_module(function) is linalg_module else None
    hits = [_hits(loop.own, suffix, lines, alias) for loop in section.loops]
    if not any(hits):  # a marker whose own instructions are all inlined helpers' (a call statement)
        hits = [_hits(loop.own, suffix, lines, alias, innermost=False) for loop in section.loops]
    if not any(hits):
        raise LookupError(f"cost_model: no SASS loop of {section.function} holds the marker of {name!r} "
                          f"({function}: {marker!r})")
    best = max(hits)
    # ties (a statement software-pipelined into a loop's prologue): the innermost (shortest) loop
    loop = min((lp for lp, h in zip(section.loops, hits) if h == best), key=lambda lp: lp.end - lp.start)
    # copies: loops beside it (not around or inside it) holding the statement too: an unrolled body and
    # its remainder loop
    copies = [h for lp, h in zip(section.loops, hits) if h > 0 and 8 * h >= best
              and (lp is loop or lp.end < loop.start or loop.end < lp.start)]
    unroll = max(1, min(8, round(best / min(copies)))) if len(copies) > 1 else 1
    return dict(loop_counts(loop.own), copies=len(copies), unroll=unroll, _loop=loop)


def section_rest(section: Section, named: list[dict]) -> dict:
    """Counts of the section's instructions outside the named loops' own bodies (run once per task)."""
    inside = {id(i) for c in named for i in c["_loop"].own}
    return loop_counts([i for i in section.instrs if id(i) not in inside])


# ---- the kernel's stages: the work of one task -------------------------------------------------------

# The SASS function (and the constexprs that pick its specialisation) of every stage kind.
SECTIONS = {
    K.K_GLOBAL: ("sketch_tile", {}), K.K_STATS: ("stats_and_sketch", {}), K.K_REDUCE: ("reduce_features", {}),
    K.K_FIXY: ("fix_sketch", {}), K.K_CHOL: ("cholesky_factor", {}), K.K_APPLY: ("apply_task", {}),
    K.K_XTQ: ("xt_times_q", {"PARTS": 2}), K.K_XW: ("x_times_w", {}), K.K_Z: ("xt_times_q", {"PARTS": 3}),
    K.K_EIG: ("eigen_task", {}), K.K_SIGMA: ("sigma_partial", {}), K.K_BUDGET: ("budget_task", {}),
    K.K_LEV: ("leverage_rows", {}), K.K_SELECT: ("select_rows", {}), K.K_GATHER: ("gather_rows", {}),
}


def find_section(sections: list[Section], function: str, constexprs: dict) -> Section:
    found = [s for s in sections if s.function == function
             and all(s.constexprs.get(k) == v for k, v in constexprs.items())]
    if len(found) != 1:
        raise LookupError(f"cost_model: {len(found)} SASS functions for {function} {constexprs} "
                          f"(expected one): the kernel's tasks changed")
    return found[0]


@dataclasses.dataclass
class Work:
    """What one task (or a sum of tasks) does."""
    loops: list = dataclasses.field(default_factory=list)  # (loop name, source iterations)
    token_bytes: float = 0.0  # reads of X (HBM, or L2 when the batch's tokens stay there)
    token_rereads: float = 0.0  # reads of X that hit L2 in any case (re-read inside one task)
    out_bytes: float = 0.0  # output tokens written (HBM)
    l2_bytes: float = 0.0  # fp32 / fp64 scratch read and written
    tc16_flops: float = 0.0
    tf32_flops: float = 0.0
    cuda_flops: float = 0.0
    waits: float = 0.0  # barriers between the programs of one image (each a hand-off: H200["handoff_cycles"])

    def add(self, other: "Work") -> "Work":
        self.loops += other.loops
        for f in ("token_bytes", "token_rereads", "out_bytes", "l2_bytes", "tc16_flops", "tf32_flops", "cuda_flops",
                  "waits"):
            setattr(self, f, getattr(self, f) + getattr(other, f))
        return self


def _cdiv(a, b):
    return -(-int(a) // int(b))


def task_work(kind: int, side: int, gram: int, span: int, shape: dict, s: dict, sec: Section, sweeps: float,
              next_kind: int | None = None) -> Work:
    """The work of one task of a stage of ``kind`` over ``span`` rows (side 0) or features (side 1) of an
    image (per-image kinds: span unused), from the tiling ``s`` (kernel_settings and launch_plan) and
    the task's SASS specialisation ``sec`` (its constexprs); ``next_kind`` the image's next stage (the last
    CholeskyQR pass leaves its basis as the parts that stage's product takes)."""
    n, d, elt, kept, m_out = shape["n"], shape["d"], shape["elt"], shape["kept"], shape["m"]
    lp, cb, br, bd, bk = s["LP"], s["CB"], s["BR"], s["BD"], s["BK"]
    nb = lp // cb
    pairs = nb * (nb + 1) // 2
    c = sec.constexprs
    split16 = s["SPLIT16"]
    w = Work()

    def gram_part(rows):
        bkg = c.get("BK", bk)
        return Work([("Gram: row chunk", pairs * _cdiv(rows, bkg)), ("Gram: block", pairs)],
                    l2_bytes=nb * nb * rows * cb * 4 + pairs * cb * cb * 4, tf32_flops=3 * 2.0 * rows * cb * cb * pairs)

    def x_product(m, k, nn, parts):  # an X product [m, k] x [k, nn]: tensor FLOPs
        if split16:
            return dict(tc16_flops=parts * 2.0 * m * k * nn)
        return dict(tf32_flops=3 * 2.0 * m * k * nn)

    if kind == K.K_GLOBAL:  # BD rows of Omega (Philox + Box-Muller; 16-bit tokens: its 2 parts): straight-line code
        w = Work([], l2_bytes=c.get("BD", bd) * lp * (8 if split16 else 4), cuda_flops=c.get("BD", bd) * lp * 40.0)
    elif kind == K.K_STATS:
        chunk = c["BD"]  # the launcher passes BK as the statistics' column chunk
        tiles, chunks = _cdiv(span, br), _cdiv(d, chunk)
        w = Work([("stats: scan chunk", tiles * chunks), ("stats: sums + X Omega chunk", tiles * chunks),
                  ("stats: row tile", tiles)],
                 token_bytes=span * d * elt, token_rereads=span * d * elt,
                 l2_bytes=tiles * d * lp * 4 + span * lp * 4 + tiles * d * 4, cuda_flops=8.0 * span * d,
                 **x_product(span, d, lp, 2))
    elif kind == K.K_REDUCE:  # a group of ``span`` features (every task also reads the tiles' scalars)
        ntiles, chunks = _cdiv(n, br), _cdiv(span, c["BD"])
        blocks = _cdiv(ntiles, tasks_module.REDUCE_TILES.value)  # tiles read REDUCE_TILES at a time
        w = Work([("reduce: tile sums", chunks * blocks), ("reduce: tile deviations", chunks * blocks),
                  ("reduce: column chunk", chunks)],
                 l2_bytes=2 * ntiles * span * 4 + span * lp * 4 + span * 4 + lp * 4,
                 cuda_flops=2.0 * span * lp + 6.0 * ntiles * span)
    elif kind == K.K_FIXY:
        tiles = _cdiv(span, br)
        w = Work([("fix Y: row tile", tiles)], l2_bytes=2 * span * lp * 4, cuda_flops=2.0 * span * lp)
        w.add(gram_part(span))
    elif kind == K.K_CHOL:  # on FB x FB blocks
        nparts = shape["NG"] if side == 0 else shape["DG"]
        cb = s["FB"]
        nb = lp // cb
        r = s["AB"] // cb  # FB blocks per side of the AB diagonal blocks whose inverses are formed
        pairs = nb * (nb + 1) // 2
        panels = nb * (nb - 1) // 2
        trailing = sum((nb - k - 1) * (nb - k) // 2 for k in range(nb))
        m_terms = sum(i - j for i in range(nb) for j in range(i - i % r, i))  # M_ij inside the diagonal blocks
        blocks = (nparts + 1) * pairs  # the partials read, G written
        blocks += sum(2 + 2 * (nb - k - 1) + sum(2 * (i - k) + 1 for i in range(k + 1, nb)) for k in range(nb))
        blocks += 3 * m_terms + nb * (r - 1)  # M's blocks inside the diagonal blocks, the zeros above them
        tw = s["TW"]  # the trailing update's column window
        windows = sum(_cdiv((i - k) * cb, tw) for k in range(nb) for i in range(k + 1, nb))
        w = Work([("Cholesky: partial sums", nb * _cdiv(nparts, 4)),
                  ("Cholesky: step", nb * cb), ("Cholesky: block column", nb),
                  ("Cholesky: trailing window", windows),
                  ("Cholesky: diagonal inverse", m_terms)],
                 l2_bytes=blocks * cb * cb * 4,  # block products in fp32 on the CUDA cores, like the steps
                 cuda_flops=2.0 * cb ** 3 * (panels + trailing + 2 * m_terms) + 4.0 * cb ** 3 * nb)
    elif kind == K.K_APPLY:
        tile = s["AR"]  # the solve's rows (or features) at a time
        tiles = _cdiv(span, tile)
        ab = s["AB"]  # solve_transpose works on [AB, AB] blocks of L and of the diagonal blocks' inverses
        anb = lp // ab
        apairs = anb * (anb + 1) // 2
        w = Work([("apply: block product", tiles * (apairs - anb)), ("apply: column block", tiles * anb)],
                 l2_bytes=tiles * apairs * (tile * ab + ab * ab) * 4 + tiles * anb * tile * ab * 4 + span * lp * 4,
                 tf32_flops=3 * 2.0 * span * ab * ab * apairs)
        if gram:
            w.add(gram_part(span))
        elif split16:  # the last pass: the basis' 16-bit parts (3 before Z = X_c^T Q, else 2) and column sums
            nparts = 3 if next_kind == K.K_Z else 2
            stiles = _cdiv(span, c.get("BR", br))
            w.add(Work([("apply: split rows", stiles), ("apply: split part", stiles * nparts)],
                       l2_bytes=span * lp * (4 + 2 * nparts) + span * 4 + lp * 4,
                       cuda_flops=span * lp * (3.0 * nparts + 2.0)))
    elif kind in (K.K_XTQ, K.K_Z):
        ftiles, chunks = _cdiv(span, c["XT"]), _cdiv(n, c["BK"])
        # Q read by every feature tile: as 16-bit parts (1^T Q from the groups' partials), or fp32 (whose
        # column sums the fp32 path does not need)
        q_bytes = 2 * c["PARTS"] if split16 else 4
        w = Work([("X^T Q: chunk", ftiles * chunks), ("X^T Q: feature tile", ftiles)],
                 token_bytes=n * span * elt,
                 l2_bytes=ftiles * n * lp * q_bytes + span * lp * 4 + span * 4 + shape["NG"] * lp * 4,
                 cuda_flops=2.0 * span * lp, **x_product(span, n, lp, c["PARTS"]))
        w.add(gram_part(span))
    elif kind == K.K_XW:
        tiles, chunks = _cdiv(span, c["XT"]), _cdiv(d, c["BK"])
        w = Work([("X W: chunk", tiles * chunks), ("X W: row tile", tiles)],  # W as 2 parts, or fp32
                 token_bytes=span * d * elt, l2_bytes=tiles * d * lp * 4 + span * lp * 4 + shape["DG"] * lp * 4,
                 cuda_flops=2.0 * span * lp, **x_product(span, d, lp, 2))
        w.add(gram_part(span))
    elif kind == K.K_EIG:  # program ``span`` of the image's JP (program 0 also sums the partial Grams)
        jp = s["JP"]
        rounds = sweeps * lp  # LP - 1 rounds a sweep and the identity round that pairs group 0's rounds
        s2 = 2 * s["JB"]
        groups = sweeps * (lp // s["JB"])
        spp = lp // s2 // jp  # this program's sets per group: with one, the set loops are not loops (their
        sets = groups * spp  # instructions are the group loop's own)
        set_loops = [("Jacobi: apply set", sets), ("Jacobi: apply back set", sets)] if spp > 1 else []
        h_sums = (lp // s["JB"]) * _cdiv(shape["DG"], 4) if span == 0 else 0  # _symmetric_sum's row panels
        w = Work([("H: partial sums", h_sums), ("Jacobi: group", groups), ("Jacobi: round pair", rounds / 2), *set_loops,
                  ("Jacobi: off-diagonal rows", (sweeps + 1) * (lp // s["JB"]))],  # before and after each sweep
                 # W = I written, V = W^T read and written; per group: the subproblems gathered, U
                 # stored and read twice, H and W read and written (R^T, W'), R^T read, H written; per
                 # sweep the off-diagonal mass (H read once, by each program): this program's share
                 l2_bytes=(shape["DG"] * pairs * cb * cb * 4 if span == 0 else 0) + 3 * lp * lp * 4 / jp
                 + groups * (4 * lp * s2 + 6 * lp * lp) * 4 / jp + sweeps * lp * lp * 4,
                 tf32_flops=groups * 3 * 6.0 * s2 * lp * lp / jp,
                 cuda_flops=(rounds * (9.0 * lp * s2 + 40.0 * lp)) / jp + sweeps * 3.0 * lp * lp,
                 # the programs meet after W = I and after both phases of every group
                 waits=(1 + 2 * groups) if jp > 1 else 0)
    elif kind == K.K_SIGMA:
        kb = 32 if cb > 32 else cb
        ftiles = _cdiv(span, c["BD"])
        w = Work([("sigma: Z V chunk", nb * ftiles * (lp // kb)), ("sigma: feature tile", nb * ftiles)],
                 l2_bytes=nb * span * lp * 4 + nb * ftiles * lp * cb * 4 + lp * 8,
                 tf32_flops=3 * 2.0 * span * lp * lp, cuda_flops=2.0 * span * lp)
    elif kind == K.K_BUDGET:
        rb, bs, bdb = c["RB"], c["BS"], c["BD"]
        w = Work([("budget: partial sums", shape["DG"]), ("budget: ranks", _cdiv(lp, rb)),
                  ("budget: cumulative energy", _cdiv(lp, rb)), ("budget: padding chunk", _cdiv(m_out, bs) * _cdiv(d, bdb))],
                 # padding: slots past the budget get zero rows; the model assumes budget = M (the
                 # gather writes every slot), so no padding bytes
                 l2_bytes=shape["DG"] * lp * 8 + 4 * lp * 4, cuda_flops=4.0 * lp * lp)
    elif kind == K.K_LEV:
        kb = 32 if cb > 32 else cb
        tiles = _cdiv(span, c["BR"])
        w = Work([("leverage: Q V chunk", tiles * nb * (lp // kb)), ("leverage: column block", tiles * nb)],
                 l2_bytes=tiles * nb * (c["BR"] * lp + lp * cb) * 4 + span * 4,
                 tf32_flops=3 * 2.0 * span * lp * lp, cuda_flops=2.0 * span * lp)
    elif kind == K.K_SELECT:
        bs = c["BS"]
        iblocks, jblocks = _cdiv(span, bs), _cdiv(n, bs)
        w = Work([("selection: rank count", iblocks * jblocks), ("selection: row block", iblocks)],
                 l2_bytes=iblocks * n * 4 + 2 * span * 4, cuda_flops=4.0 * span * n)
    elif kind == K.K_GATHER:
        bs, bdg = c["BS"], c["BD"]
        iblocks = _cdiv(span, bs)
        share = kept / n  # the kept rows are spread over the groups (an average)
        w = Work([("gather: kept counts", shape["NG"] - 1), ("gather: row block", iblocks),
                  ("gather: row chunk", iblocks * _cdiv(d, bdg))],
                 token_bytes=share * span * d * elt, out_bytes=share * span * d * elt + share * span * 9,
                 l2_bytes=span * 4)
    else:
        raise LookupError(f"cost_model: unknown stage kind {kind}")
    return w


# ---- the compiled variant -----------------------------------------------------------------------------


@dataclasses.dataclass
class Variant:
    dtype: str
    lp: int
    warps: int
    blocks_per_sm: int
    occupancy_limit: str
    usage: dict  # ptxas: registers, stack, spill bytes
    shared: int
    sections: list
    loops: dict = dataclasses.field(default_factory=dict)  # (section function, constexprs, loop) -> counts
    overhead_cycles: float = 0.0  # the scheduler's SASS outside its poll loops, per task


def analyse_variant(dtype: str, lp: int) -> Variant:
    """Compiles the variant (the launcher's settings), its occupancy and its SASS functions.

    In a fresh triton cache: triton keys its cache by the functions' source text, so a build cached
    before lines were added above a function would carry stale line numbers (and break the markers)."""
    previous = os.environ.get("TRITON_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="cost_model_triton_cache_") as cache:
        os.environ["TRITON_CACHE_DIR"] = cache
        try:
            compiled, config = aot.compile_variant(dtype=dtype, lp=lp)
        finally:
            if previous is None:
                os.environ.pop("TRITON_CACHE_DIR", None)
            else:
                os.environ["TRITON_CACHE_DIR"] = previous
    usage = aot.ptxas_usage(compiled.asm["ptx"])
    shared = int(compiled.metadata.shared)
    blocks, limit = aot.occupancy(usage["registers"], shared, config["num_warps"])
    sections = parse_sections(aot.sass(compiled.asm["cubin"]))
    var = Variant(dtype, lp, config["num_warps"], blocks, limit, usage, shared, sections)
    main = [s for s in sections if s.function == "_eadaprune_kernel"]
    if len(main) != 1:
        raise LookupError("cost_model: the scheduler's SASS function (_eadaprune_kernel) is not in the SASS")
    poll = attribute_loop(main[0], "scheduler: poll")
    rest = section_rest(main[0], [poll])
    var.overhead_cycles = (iteration_cycles(rest, var.warps, 0)[0] + H200["ticket_cycles"])
    var.loops[("_eadaprune_kernel", "", "scheduler: poll")] = poll
    return var


def loop_info(var: Variant, sec: Section, name: str) -> dict:
    key = (sec.function, json.dumps(sec.constexprs.get("PARTS")), name)
    if key not in var.loops:
        var.loops[key] = attribute_loop(sec, name)
    return var.loops[key]


def task_cycles(var: Variant, sec: Section, work: Work, token_latency: int,
                resident: int = 1) -> tuple[float, float, str, dict]:
    """(cycles, serial steps, the term bounding the loop that takes longest, cycles per named loop) of
    one task on an SM that ``resident`` programs share."""
    named, loops, seen = [], [], {}
    for name, trips in work.loops:
        info = loop_info(var, sec, name)
        if id(info["_loop"]) in seen:  # counting it once would silently drop the other loop's work
            raise LookupError(f"cost_model: {sec.function}: the markers of {name!r} and "
                              f"{seen[id(info['_loop'])]!r} pick the same SASS loop: update LOOP_MARKERS")
        seen[id(info["_loop"])] = name
        named.append(info)
        loops.append((name, trips))
    total, steps, worst, worst_name = 0.0, 0.0, -1.0, "issue"
    by_loop = {}
    for (name, trips), info in zip(loops, named):
        reads_tokens = name.split(":")[0] in ("stats", "X W", "X^T Q", "gather")
        latency = token_latency if reads_tokens else H200["l2_latency"]
        per_iter, within = iteration_cycles(info, var.warps, latency, resident)
        iters = math.ceil(trips / info["unroll"])
        total += iters * per_iter
        by_loop[name] = (trips, iters * per_iter)  # source iterations, their cycles
        steps += iters
        if iters * per_iter > worst:
            worst, worst_name = iters * per_iter, within
    rest = section_rest(sec, named)
    total += iteration_cycles(rest, var.warps, 0, resident)[0]
    total += work.waits * H200["handoff_cycles"]  # barriers with the image's other programs
    steps += work.waits
    return total, steps, worst_name, by_loop


def stage_rows(var: Variant, n: int, d: int, l: int, q: int, batch: int, sweeps: float,
               placement: str = "spread") -> list[dict]:
    """One row per stage of the call (launch_plan's stages and task counts); ``placement`` (spread or
    packed: see the module docstring, step 3) puts a stage's concurrent programs on the SMs."""
    if placement not in PLACEMENTS:
        raise ValueError(f"placement: expected one of {PLACEMENTS}, got {placement!r}")
    import torch

    tdtype = aot.TORCH_DTYPES[var.dtype]
    elt = torch.empty((), dtype=tdtype).element_size()
    s = K.kernel_settings(tdtype, l)
    plan = K.launch_plan(batch=batch, n=n, d=d, settings=s, ragged=False, power_iters=q, leverage=True, select=True)
    m_out = min(l, n)  # max_tokens defaults to l (contract.PipelineConfig)
    shape = dict(n=n, d=d, elt=elt, kept=m_out, m=m_out, NG=plan["NG"], DG=plan["DG"])
    tokens_fit_l2 = batch * n * d * elt <= H200["l2_bytes"]
    token_passes = 0
    rows = []
    next_kinds = [stage[0] for stage in plan["stages"][1:]] + [None]
    for (kind, side, gram), count, next_kind in zip(plan["stages"], plan["counts"], next_kinds):
        fn, filt = SECTIONS[kind]
        sec = find_section(var.sections, fn, filt)
        # the tasks of ONE image (the call-wide stage: all its tasks, shared by the batch)
        if kind == K.K_GLOBAL:
            spans = [None] * count
        elif kind == K.K_EIG:  # JP programs per image: the span is the program's index
            spans = list(range(s["JP"]))
        elif count == batch:  # one task per image
            spans = [None]
        elif kind == K.K_STATS:  # groups of its own: SR rows
            spans = [min(plan["SR"], n - g * plan["SR"]) for g in range(plan["NS"])]
        elif side == 0:
            spans = [min(plan["GR"], n - g * plan["GR"]) for g in range(plan["NG"])]
        else:
            spans = [min(plan["GD"], d - g * plan["GD"]) for g in range(plan["DG"])]
        works = [task_work(kind, side, gram, sp, shape, s, sec, sweeps, next_kind) for sp in spans]
        image = Work()
        for w in works:
            image.add(dataclasses.replace(w, loops=[]))
        if kind == K.K_GLOBAL:  # per call; shown per image
            image = Work(l2_bytes=image.l2_bytes / batch, cuda_flops=image.cuda_flops / batch)
        reads_tokens = image.token_bytes > 0 and kind != K.K_GATHER
        from_l2 = tokens_fit_l2 and token_passes > 0
        token_latency = H200["l2_latency"] if from_l2 else H200["hbm_latency"]
        tasks = count
        concurrent = min(tasks, H200["sms"] * var.blocks_per_sm)
        waves = math.ceil(tasks / concurrent)
        if placement == "spread":  # idle SMs first
            sms = min(H200["sms"], concurrent)
        else:  # every SM filled to its blocks per SM first
            sms = min(H200["sms"], math.ceil(concurrent / var.blocks_per_sm))
        resident = math.ceil(concurrent / sms)  # programs sharing a busy SM
        # the largest task sets the serial time
        per_task = [task_cycles(var, sec, w, token_latency, resident) for w in works]
        cycles, steps, within, by_loop = max(per_task, key=lambda t: t[0])
        used = sms / H200["sms"]
        hbm = image.token_bytes * (0 if from_l2 else 1) + image.out_bytes
        l2 = image.l2_bytes + image.token_rereads + (image.token_bytes if from_l2 else 0)
        if reads_tokens:
            token_passes += 1
        terms = {
            f"serial ({within})": waves * (cycles + var.overhead_cycles) / H200["clock_hz"],
            "HBM": batch * hbm / (H200["hbm_bytes_per_s"] * used),
            "L2": batch * l2 / (H200["l2_bytes_per_s"] * used),
            "tensor cores": tensor_core_seconds(batch * image.tc16_flops, batch * image.tf32_flops) / used,
            "CUDA cores": batch * image.cuda_flops / H200["fp32_flops_per_s"] / used,
        }
        bound = max(terms, key=terms.get)
        seconds = terms[bound] + H200["handoff_cycles"] / H200["clock_hz"]
        rows.append(dict(stage=K.STAGE_KINDS[kind] + ("" if kind in (K.K_GLOBAL,) else
                                                        f" ({'rows' if side == 0 else 'features'})"
                                                        if kind in (K.K_CHOL, K.K_APPLY) else ""),
                         kind=kind, side=side, gram=gram, tasks=tasks, waves=waves, sms=sms, seconds=seconds,
                         bound=bound, task_us=cycles / H200["clock_hz"] * 1e6, serial_steps=waves * steps,
                         # per named loop of the longest task: (source iterations, seconds), every wave
                         loops={name: (waves * it, waves * cyc / H200["clock_hz"]) for name, (it, cyc) in by_loop.items()},
                         hbm_bytes=hbm, l2_bytes=l2, token_bytes=image.token_bytes + image.token_rereads,
                         tc16_flops=image.tc16_flops, tf32_flops=image.tf32_flops, cuda_flops=image.cuda_flops))
    return rows


def predict(dtype: str, n: int, d: int, l: int, q: int, batches=(1, 64), sweeps: float = 5.0,
            analysed: Variant | None = None, placement: str = "spread") -> dict:
    """Per-stage rows and totals per batch for one variant (``analysed``: reuse a compiled variant)."""
    settings = K.kernel_settings(aot.TORCH_DTYPES[dtype], l)
    var = analysed or analyse_variant(dtype, settings["LP"])
    out = dict(dtype=dtype, n=n, d=d, l=l, q=q, lp=settings["LP"], warps=var.warps, sweeps=sweeps, placement=placement,
               blocks_per_sm=var.blocks_per_sm, occupancy_limit=var.occupancy_limit, usage=var.usage,
               shared=var.shared, overhead_cycles=var.overhead_cycles, batches={}, variant=var)
    for batch in batches:
        rows = stage_rows(var, n, d, l, q, batch, sweeps, placement)
        per_call = sum(r["seconds"] for r in rows)
        programs = H200["sms"] * var.blocks_per_sm
        schedule = dict(tickets=ticket_schedule(rows, batch, programs), staggered=ticket_schedule(rows, batch, programs, 1),
                        ready_queue=ready_queue_schedule(rows, batch, programs))
        out["batches"][batch] = dict(rows=rows, seconds_per_call=per_call, seconds_per_image=per_call / batch,
                                     schedule=schedule)
    return out


def _task_seconds(row: dict) -> float:
    """One task of a stage row in the schedule simulations: the stage's time per wave, without its
    hand-off (the simulations add the hand-offs where a stage waits for the previous one)."""
    return max(row["seconds"] - H200["handoff_cycles"] / H200["clock_hz"], 0.0) / row["waves"]


def ticket_schedule(rows: list[dict], batch: int, programs: int, skew: int = 0) -> float:
    """Seconds per call when ``programs`` co-resident programs claim the call's tasks in ticket order
    (image, stage, group) sorted by (stage + skew * image, image, group) and a task starts once its
    image's previous stage is done plus a hand-off. skew = 0 is the kernel's stage-major order; skew > 0
    staggers the images so that one image's single-task stages (Jacobi, Cholesky) overlap other images'
    wide stages (any order that keeps each image's stages in order is deadlock-free by the kernel's
    argument: a task only waits on smaller tickets). A program holds its SM from claiming a ticket to
    finishing it (waiting included). Each task takes its stage's time per wave, bandwidth and FLOP bounds
    included as in the summed rows: shares of bandwidth between overlapping stages are not re-divided,
    so this is an estimate of the overlap, not of the contention."""
    handoff = H200["handoff_cycles"] / H200["clock_hz"]
    tickets = []
    for st, r in enumerate(rows):
        dur = _task_seconds(r)
        if r["kind"] == K.K_GLOBAL:  # call-wide: every image's next stage waits for all of it
            tickets += [((st, -1, g), st, -1, dur) for g in range(r["tasks"])]
        else:
            per_image = r["tasks"] // batch
            tickets += [((st + skew * b, b, g), st, b, dur) for b in range(batch) for g in range(per_image)]
    tickets.sort(key=lambda t: t[0])
    free = [0.0] * programs
    heapq.heapify(free)
    ends: dict = {}
    claim = 0.0
    for _key, st, b, dur in tickets:
        claim = max(claim, heapq.heappop(free))  # tickets are claimed in order
        prev = ends.get((b, st - 1), ends.get((-1, st - 1))) if st > 0 else None
        start = max(claim, prev + handoff) if prev is not None else claim
        end = start + dur
        ends[(b, st)] = max(ends.get((b, st), 0.0), end)
        heapq.heappush(free, end)
    return max(ends.values())


def ready_queue_schedule(rows: list[dict], batch: int, programs: int) -> float:
    """Seconds per call if a free program took the first READY task (stage-major priority) instead of
    the next ticket: a dependency-aware scheduler the kernel does not have (programs never hold an SM
    while waiting), with the same task times as ticket_schedule. The bound on what overlapping the
    images' stages can give."""
    handoff = H200["handoff_cycles"] / H200["clock_hz"]
    stages = []  # per stage: (duration, tasks per group, groups: image indices)
    for r in rows:
        dur = _task_seconds(r)
        if r["kind"] == K.K_GLOBAL:
            stages.append((dur, r["tasks"], [-1]))
        else:
            stages.append((dur, r["tasks"] // batch, list(range(batch))))
    left = {}  # (image, stage) -> tasks not yet finished
    pending = [(0.0, 0, -1, stages[0][1])]  # heap of (ready time, stage, image, tasks to hand out)
    avail = []  # heap of (stage, image, ready time, tasks): those whose ready time has come

    def release(now):  # pending -> avail up to ``now``
        while pending and pending[0][0] <= now:
            rt, st, b, n_tasks = heapq.heappop(pending)
            heapq.heappush(avail, (st, b, rt, n_tasks))

    free = [0.0] * programs
    heapq.heapify(free)
    finish = 0.0
    running = []  # heap of (end, stage, image)
    while pending or avail or running:
        t = heapq.heappop(free)
        # retire the tasks ended by t; with nothing ready, wait for the next one to end
        while running and (running[0][0] <= t or not (pending or avail)):
            end, st, b = heapq.heappop(running)
            t = max(t, end)
            left[(b, st)] -= 1
            if left[(b, st)] == 0 and st + 1 < len(stages):
                nxt = [b] if b >= 0 else stages[st + 1][2]
                for nb in nxt:
                    heapq.heappush(pending, (end + handoff, st + 1, nb, stages[st + 1][1]))
        if not (pending or avail):
            heapq.heappush(free, t)
            continue
        release(t)
        if not avail:  # nothing ready yet: wait for the earliest
            t = pending[0][0]
            release(t)
        st, b, rt, n_tasks = heapq.heappop(avail)  # the first ready task in stage-major order
        left.setdefault((b, st), stages[st][1])
        end = max(t, rt) + stages[st][0]
        heapq.heappush(running, (end, st, b))
        if n_tasks > 1:
            heapq.heappush(avail, (st, b, rt, n_tasks - 1))
        heapq.heappush(free, end)
        finish = max(finish, end)
    return finish


# ---- report ------------------------------------------------------------------------------------------

_SUMS = ("seconds", "hbm_bytes", "l2_bytes", "tc16_flops", "tf32_flops", "cuda_flops", "serial_steps")


def _group(rows: list[dict]) -> list[dict]:
    """Stages of the same kind and side (e.g. the 7 Cholesky factorisations) summed into one line."""
    groups = collections.OrderedDict()
    for r in rows:
        g = groups.setdefault(r["stage"], dict(stage=r["stage"], count=0, tasks=r["tasks"], waves=r["waves"],
                                               bounds=collections.Counter(), **dict.fromkeys(_SUMS, 0.0)))
        g["count"] += 1
        for k in _SUMS:
            g[k] += r[k]
        g["bounds"][r["bound"]] += r["seconds"]
    for g in groups.values():
        g["bound"] = g["bounds"].most_common(1)[0][0]
    return list(groups.values())


# The loops whose iterations depend on each other one after the other in every image, whatever the
# number of programs: a Cholesky pivot (one column of a diagonal block), a Jacobi round.
PIVOT_LOOPS = ("Cholesky: step", "Jacobi: round pair")


def chain_steps(batch_result: dict) -> dict:
    """Per PIVOT_LOOPS name: (steps, seconds) of ONE image's chain, summed over the stages (a stage of
    several waves runs each image's task in one of them)."""
    chain = {}
    for name in PIVOT_LOOPS:
        steps = sum(r["loops"].get(name, (0, 0.0))[0] / r["waves"] for r in batch_result["rows"])
        seconds = sum(r["loops"].get(name, (0, 0.0))[1] / r["waves"] for r in batch_result["rows"])
        if steps:
            chain[name] = (steps, seconds)
    return chain


def pivot_chain(batch_result: dict) -> str:
    """One line: the time of every image's chain spent in PIVOT_LOOPS (steps x cycles per step, summed
    over the stages), what no split of the work over more programs shortens."""
    chain = chain_steps(batch_result)
    parts = [f"{name} {steps:.0f} x {seconds / steps * H200['clock_hz']:.0f} cycles = {seconds * 1e6:.0f} us"
             for name, (steps, seconds) in chain.items()]
    total = sum(seconds for _steps, seconds in chain.values())
    return (f"Dependent steps of the l x l work on each image's chain (no split over programs shortens them): "
            f"{'; '.join(parts)}; together {total * 1e6:.0f} us "
            f"({100 * total / batch_result['seconds_per_call']:.0f}% of the call).")


# The issue's speed targets (seconds per image on an H200) and the one shape they are set for.
TARGET_SHAPE = dict(dtype="bf16", n=576, d=1024, l=128, q=2)
TARGETS = {1: 50e-6, 64: 2e-6}


def design_floors(res: dict, batch: int) -> dict:
    """Seconds per call below which no tiling, placement or schedule of THIS design's work can go: its
    bytes and FLOPs at the whole GPU's peak rates (every SM busy, nothing else in the way; the
    tensor-core floor adds the 16-bit and the tf32 products, which share the tensor cores), and one
    image's dependent l x l steps (:func:`chain_steps`) at the cycles the SASS gives them. The summed
    prediction is never below any of them (each stage takes at least its share of every bound); only
    other work (fewer passes, fewer or cheaper dependent steps, fewer operand re-reads) lowers them."""
    rows = res["batches"][batch]["rows"]
    total = {k: batch * sum(r[k] for r in rows) for k in _SUMS}
    return {"L2 traffic": total["l2_bytes"] / H200["l2_bytes_per_s"],
            "tensor cores": tensor_core_seconds(total["tc16_flops"], total["tf32_flops"]),
            "dependent l x l steps": sum(s for _n, s in chain_steps(res["batches"][batch]).values()),
            "HBM": total["hbm_bytes"] / H200["hbm_bytes_per_s"],
            "CUDA cores": total["cuda_flops"] / H200["fp32_flops_per_s"]}


def floors_line(res: dict, batch: int) -> str:
    """The floors of :func:`design_floors`, highest first, and where the issue's target lies among them."""
    floors = sorted(design_floors(res, batch).items(), key=lambda kv: -kv[1])
    text = (f"Floors of this design at B={batch} (its bytes and FLOPs at the whole GPU's peak, L2 at the assumed "
            f"{H200['l2_bytes_per_s'] / 1e12:g} TB/s; one image's dependent steps; no tiling or schedule of the same "
            f"work goes below them): "
            + ", ".join(f"{name} {sec * 1e6:.0f} us ({sec * 1e6 / batch:.2f} per image)" for name, sec in floors) + ".")
    if all(res[k] == v for k, v in TARGET_SHAPE.items()) and batch in TARGETS:
        budget = TARGETS[batch] * batch
        above = [name for name, sec in floors if sec > budget]
        text += (f" The issue's target, {TARGETS[batch] * 1e6:g} us per image = {budget * 1e6:.0f} us per call, is below "
                 f"{len(above)} of them" + (f" ({', '.join(above)})" if above else "") + ".")
    return text


def markdown(results: list[dict]) -> str:
    lines = ["**A prediction from ptxas and the SASS (tools/cost_model.py), not a measurement: no GPU ran it.** "
             "Stage times add up (an upper estimate: the kernel overlaps the stages of different images).", ""]
    for res in results:
        u = res["usage"]
        lines.append(f"### {res['dtype']}, N={res['n']}, D={res['d']}, l={res['l']} (LP={res['lp']}), q={res['q']}: "
                     f"{res['warps']} warps, {u['registers']} registers, {u['spill_stores']} B spill stores, "
                     f"{res['shared'] // 1024} KB shared, {res['blocks_per_sm']} block(s) per SM "
                     f"({res['occupancy_limit']}), Jacobi {res['sweeps']:g} sweeps assumed, programs {res['placement']}")
        lines.append("")
        for batch, b in res["batches"].items():
            lines.append(f"B={batch}: **{b['seconds_per_call'] * 1e6:.0f} us per call, "
                         f"{b['seconds_per_image'] * 1e6:.2f} us per image** (predicted)")
            lines.append("")
            lines.append("| stage | x | tasks (waves) | HBM MB / image | L2 MB / image | TC GFLOP / image (16-bit / tf32) | "
                         "CUDA GFLOP / image | serial steps | us per call | share | bound |")
            lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
            for g in _group(b["rows"]):
                lines.append(
                    f"| {g['stage']} | {g['count']} | {g['tasks']} ({g['waves']}) | {g['hbm_bytes'] / 1e6:.2f} | "
                    f"{g['l2_bytes'] / 1e6:.2f} | {g['tc16_flops'] / 1e9:.3f} / {g['tf32_flops'] / 1e9:.3f} | "
                    f"{g['cuda_flops'] / 1e9:.3f} | {g['serial_steps']:.0f} | {g['seconds'] * 1e6:.1f} | "
                    f"{100 * g['seconds'] / b['seconds_per_call']:.0f}% | {g['bound']} |")
            tot = {k: sum(r[k] for r in b["rows"]) for k in _SUMS}
            lines.append(f"| **total** | {len(b['rows'])} | | {tot['hbm_bytes'] / 1e6:.2f} | {tot['l2_bytes'] / 1e6:.2f} | "
                         f"{tot['tc16_flops'] / 1e9:.3f} / {tot['tf32_flops'] / 1e9:.3f} | {tot['cuda_flops'] / 1e9:.3f} | "
                         f"{tot['serial_steps']:.0f} | **{b['seconds_per_call'] * 1e6:.1f}** | | |")
            lines.append("")
            lines.append(pivot_chain(b))
            lines.append("")
            lines.append(floors_line(res, batch))
            lines.append("")
            sched = b["schedule"]
            lines.append(f"Schedule simulation (the same task times on {H200['sms'] * res['blocks_per_sm']} "
                         f"programs, stages of different images overlapping where the order lets them): the "
                         f"kernel's stage-major tickets {sched['tickets'] * 1e6:.0f} us per call; a ready-queue "
                         f"scheduler (the bound on overlapping images) {sched['ready_queue'] * 1e6:.0f} us; tickets "
                         f"staggered by one stage per image {sched['staggered'] * 1e6:.0f} us (programs waiting "
                         f"on their image hold their SM).")
            lines.append("")
        lines.append(f"SASS loops (per iteration, per warp; own body, without nested loops). Per task also: the "
                     f"scheduler's {res['overhead_cycles']:.0f} cycles, a hand-off of {H200['handoff_cycles']} cycles "
                     f"per stage.")
        lines.append("")
        lines.append("| task function | loop | copies | unroll | instructions | shared B | barriers | shuffles | MUFU | "
                     "spill B | global loads | tensor FLOP | cycles / iteration (L2 latency) | bound |")
        lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for (fn, parts, name), c in res["variant"].loops.items():
            cycles, within = iteration_cycles(c, res["warps"], H200["l2_latency"])
            fname = fn + (f" (PARTS={parts})" if parts != "null" and parts else "")
            lines.append(f"| {fname} | {name} | {c.get('copies', 1)} | {c.get('unroll', 1)} | {c.get('instructions', 0)} | "
                         f"{c.get('smem_bytes', 0)} | {c.get('barriers', 0)} | {c.get('shuffles', 0)} | {c.get('mufu', 0)} | "
                         f"{c.get('local_bytes', 0)} | {c.get('global_loads', 0)} | "
                         f"{c.get('tc16_flops', 0) + c.get('tf32_flops', 0):.0f} | {cycles:.0f} | {within} |")
        lines.append("")
    return "\n".join(lines)


SHAPES = [dict(n=576, d=1024), dict(n=576, d=4096)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", default="bf16", choices=["fp16", "bf16", "fp32"])
    ap.add_argument("--n", type=int, default=576)
    ap.add_argument("--d", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--l", type=int, default=128)
    ap.add_argument("--q", type=int, default=2)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--sweeps", type=float, default=5.0, help="Jacobi sweeps assumed (the issue saw 2.5-5.5)")
    ap.add_argument("--placement", default="spread", choices=PLACEMENTS,
                    help="a stage's programs on distinct SMs while any is idle (spread), or packed to the "
                         "blocks per SM first (the pessimistic bound); see step 3 of the docstring")
    ap.add_argument("--json", action="store_true", help="JSON lines instead of markdown")
    args = ap.parse_args(argv)
    settings = K.kernel_settings(aot.TORCH_DTYPES[args.dtype], args.l)
    analysed = analyse_variant(args.dtype, settings["LP"])
    results = [predict(args.dtype, args.n, d, args.l, args.q, args.batches, args.sweeps, analysed, args.placement)
               for d in args.d]
    if args.json:
        for res in results:
            head = dict(prediction=True, dtype=res["dtype"], n=res["n"], d=res["d"], l=res["l"], q=res["q"],
                        placement=res["placement"])
            for batch, b in res["batches"].items():
                for row in b["rows"]:
                    print(json.dumps(dict(head, batch=batch, **row)))
                floors = {name: sec * 1e6 for name, sec in design_floors(res, batch).items()}
                print(json.dumps(dict(head, batch=batch, total_us_per_call=b["seconds_per_call"] * 1e6,
                                      total_us_per_image=b["seconds_per_image"] * 1e6, floors_us_per_call=floors)))
    else:
        print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
