"""Cost model of the fused Triton kernel on an H200, from the kernel's own tiling and its SASS.

A prediction, not a measurement: no GPU has run the kernel. For one variant (default: bf16 tokens,
l = 128, q = 2, leverage selection) the model

1. compiles the kernel for sm_90 exactly as tools/aot_compile_triton.py does (the launcher's
   ``kernel_settings``) and disassembles it (the wheel's nvdisasm, with source lines);
2. finds the innermost loops of the SASS and attributes each to the kernel source by a marker
   statement (:data:`LOOP_MARKERS`: the loops holding the most instructions of that statement), and
   counts per loop iteration and per warp: instructions,
   shared-memory bytes, barriers, shuffles, special-function ops, tensor-core FLOPs, local-memory
   (spill) bytes and global loads;
3. turns every count into cycles per iteration with the sm_90 rates of :data:`H200` (each one stated
   and justified there): t_iter = max(issue, shared + local (spill) memory, shuffles, MUFU, fp64,
   tensor cores) + barriers x (barrier + shared-memory latency) + the exposed latency of global loads
   that are not software-pipelined (one program alone on an SM has no other work to hide them);
4. describes the kernel as stages (:func:`present_stages`): per image, how many iterations of which
   loop run one after the other on one program, plus the bytes each stage moves (HBM: the tokens;
   L2: the fp32 scratch), its tensor-core FLOPs and its CUDA-core FLOPs, all from the tiling
   (LP, BT, BS, num_warps of ``kernel_settings``) and the shape;
5. bounds each stage by max(serial SASS time, HBM bytes / bandwidth share, L2 bytes / L2 share,
   tensor FLOPs / tensor share) and sums the stages of one image; a batch of B images runs
   B programs at once (the present design: one program per image), so the batch takes about one
   image's time while B <= 132 and the per-image figure is that divided by B.

    python tools/cost_model.py                                   # the benchmark shapes, a markdown table
    python tools/cost_model.py --dtype fp32 --d 4096 --json      # one variant, rows as JSON lines

Shapes: B in {1, 64}, N = 576, D in {1024, 4096}, l = 128, q = 2 (the issue's benchmark shapes).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import inspect
import json
import math
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aot_compile_triton as aot  # noqa: E402  (also sets up the compile-only environment)

from eadaprune_kernels.backends import triton_kernel as kernel_module  # noqa: E402

# ---- the machine ---------------------------------------------------------------------------------

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
)
# Tensor-core FLOPs per SM and clock: the peak rates divided over 132 SMs at 1.98 GHz.
TC16_PER_CLK = H200["tc16_flops_per_s"] / H200["sms"] / H200["clock_hz"]
TF32_PER_CLK = H200["tf32_flops_per_s"] / H200["sms"] / H200["clock_hz"]

# ---- SASS --------------------------------------------------------------------------------------------

_LINE = re.compile(r'\s*//## File "([^"]+)", line (\d+)')
_INSTR = re.compile(r"\s*/\*([0-9a-f]+)\*/\s+(.*?)\s*;")
_LABEL = re.compile(r"^(\.L_x_\d+):")


@dataclasses.dataclass
class Instr:
    addr: int
    opcode: str  # full opcode with modifiers, e.g. LDS.U.128
    text: str
    lines: frozenset  # the lines of the source file in its inlining chain (deepest first in nvdisasm's output)


@dataclasses.dataclass
class Loop:
    start: int
    end: int
    body: list


def parse_sass(text: str, source_file: str) -> list[Instr]:
    """Instructions of ``nvdisasm -c -gi`` output, each with the lines of ``source_file`` (a path suffix,
    e.g. eadaprune_kernels/backends/triton_kernel.py: triton's cache may hold a build from another
    checkout of the same source) it comes from:
    the statement and every call site it is inlined through (nvdisasm prints the chain before each
    instruction group)."""
    instrs, labels, pending, chain, fresh = [], {}, [], [], True
    for raw in text.splitlines():
        m = _LINE.match(raw)
        if m:
            if fresh:
                chain, fresh = [], False
            chain.append((m.group(1), int(m.group(2))))
            continue
        m = _LABEL.match(raw)
        if m:
            pending.append(m.group(1))
            continue
        m = _INSTR.match(raw)
        if not m:
            continue
        fresh = True
        body = re.sub(r"^@!?U?P\w+\s+", "", m.group(2).strip())
        opcode = body.split()[0] if body else ""
        lines = frozenset(ln for path, ln in chain if path.endswith(source_file))
        instr = Instr(int(m.group(1), 16), opcode, body, lines)
        for label in pending:
            labels[label] = instr.addr
        pending = []
        instrs.append(instr)
    for instr in instrs:  # resolve branch targets
        m = re.search(r"\((\.L_x_\d+)\)", instr.text)
        instr.target = labels.get(m.group(1)) if (m and instr.opcode.startswith("BRA")) else None
    return instrs


def innermost_loops(instrs: list[Instr]) -> list[Loop]:
    """Loops = backward branches; the innermost ones contain no other loop."""
    spans = sorted({(i.target, i.addr) for i in instrs if i.target is not None and i.target <= i.addr})
    inner = [s for s in spans if not any(o != s and s[0] <= o[0] and o[1] <= s[1] for o in spans)]
    return [Loop(a, b, [i for i in instrs if a <= i.addr <= b]) for a, b in inner]


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


def loop_counts(loop: Loop) -> dict:
    """Per iteration and per warp: instruction classes of one loop body."""
    c = collections.Counter()
    for ins in loop.body:
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


def iteration_cycles(counts: dict, warps: int, global_latency: int) -> tuple[float, str]:
    """Cycles of one iteration of a loop run by ``warps`` warps of one program alone on an SM, and the
    term that bounds it (see the module docstring, step 3)."""
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
    cycles = terms[bound]
    cycles += counts.get("barriers", 0) * (H200["barrier_latency"] + H200["smem_latency"])
    if counts.get("global_loads", 0) and not counts.get("async_loads", 0):
        cycles += global_latency  # the loads of an iteration are waited for before its arithmetic
    return cycles, bound


# ---- which loop is which ----------------------------------------------------------------------

# A statement that occurs only inside the loop named: the loop is the innermost SASS loop holding an
# instruction of that source line. Each entry: loop name -> (function, marker text).
LOOP_MARKERS = {
    "scan": ("_eadaprune_kernel", "nonfinite |= ((b_x - b_x) != 0.0)"),
    "column sums": ("_eadaprune_kernel", "colsum += tl.sum(b_x, 0)"),
    "centred energy": ("_eadaprune_kernel", "energy += tl.sum(tl.sum(b_c * b_c, 1), 0)"),
    "sketch": ("_eadaprune_kernel", "b_om = tl.randn(SEED, offs)"),
    "X @ tile": ("_x_times", "acc = _dot_x(b_x, b_s, acc, SPLIT16, 2, XPREC)"),
    "X^T @ tile": ("_xt_times", "acc = _dot_x(tl.trans(b_x), b_q, acc, SPLIT16, PARTS, XPREC)"),
    "Gram tile": ("_orthonormalise", "G += tl.dot(tl.trans(b_y), b_y, input_precision=SPREC)"),
    "apply L^-T tile": ("_orthonormalise", "tl.store(p_y, tl.dot(b_y, tl.trans(M), input_precision=SPREC)"),
    "Cholesky step": ("_chol_inverse", "A = A - b_l * tl.trans(b_l)"),
    "Jacobi round": ("_jacobi_eigh", "V = c_t * V + sp_t * tl.gather(V, idx_cols, 1)"),
    "Z V tile": ("_eadaprune_kernel", "b_zv = tl.dot(b_z, V, input_precision=SPREC)"),
    "leverage tile": ("_eadaprune_kernel", "b_u = tl.dot(b_q, V_sel, input_precision=SPREC)"),
    "rank count": ("_eadaprune_kernel", "rank_i += tl.sum((wins & m_j[None, :]).to(tl.int32), 1)"),
    "gather row tile": ("_eadaprune_kernel", "tl.store(out_tok + slot[:, None] * sotm + o_d[None, :] * sotd, b_row,"),
}


def _marker_lines(function: str, marker: str) -> set[int]:
    fn = getattr(kernel_module, function)
    fn = getattr(fn, "fn", fn)
    fn = getattr(fn, "fn", fn)
    lines, first = inspect.getsourcelines(fn)
    found = {first + i for i, text in enumerate(lines) if marker in text}
    if not found:
        raise LookupError(f"cost_model: marker {marker!r} not found in {function}: update LOOP_MARKERS")
    return found


def attribute_loops(loops: list[Loop]) -> dict[str, dict]:
    """Loop name -> counts per iteration (the largest of its copies: inlining duplicates loops)."""
    named = {}
    for name, (function, marker) in LOOP_MARKERS.items():
        lines = _marker_lines(function, marker)
        hits = [sum(1 for i in loop.body if i.lines & lines) for loop in loops]
        if not any(hits):
            raise LookupError(f"cost_model: no SASS loop holds the marker of {name!r} ({function}: {marker!r})")
        # the loops where the marker statement is (one of) the work: at least half as many of its
        # instructions as in the loop that has the most (the scheduler may hoist a few elsewhere)
        best = max(hits)
        copies = [loop for loop, h in zip(loops, hits) if 2 * h >= best]
        counts = [loop_counts(loop) for loop in copies]
        named[name] = dict(max(counts, key=lambda c: c.get("instructions", 0)), copies=len(copies))
    return named


# ---- the kernel as stages ---------------------------------------------------------------------------


@dataclasses.dataclass
class Stage:
    name: str
    loop: str | None  # the SASS loop that runs ``iterations`` times, one after the other
    iterations: float
    hbm_bytes: float = 0.0  # of the tokens (when the batch does not fit the L2)
    l2_bytes: float = 0.0  # scratch and re-reads
    tc16_flops: float = 0.0
    tf32_flops: float = 0.0
    cuda_flops: float = 0.0
    global_latency: str = "l2"  # where the non-pipelined loads of an iteration come from
    programs: int = 1  # programs of one image that share the stage
    first_pass: bool = False  # the first pass over the tokens of a call (always from HBM)
    note: str = ""


def present_stages(n: int, d: int, l: int, q: int, elt: int, settings: dict, sweeps: float,
                   kept: int) -> list[Stage]:
    """The present kernel (one program per image) as stages, from its loops and its tiling."""
    lp, bt, bs = settings["LP"], settings["BT"], settings["BS"]
    split16 = settings["SPLIT16"]
    ceil = lambda a, b: -(-a // b)  # noqa: E731
    tiles_n, tiles_d = ceil(n, bt), ceil(d, bt)
    x_bytes = n * d * elt

    def product(name, loop, parts, src_rows, tiles_out, tiles_red):
        # one pass over X; the fp32 operand tile [BT, LP] is re-read for every output tile
        flops = 2.0 * n * d * lp
        return Stage(name, loop, tiles_out * tiles_red, hbm_bytes=x_bytes,
                     l2_bytes=tiles_out * src_rows * lp * 4 + tiles_out * bt * lp * 4,
                     tc16_flops=flops * parts if split16 else 0.0, tf32_flops=0.0 if split16 else 3 * flops,
                     global_latency="hbm", note=f"operand re-read {tiles_out}x")

    def orth(name, rows, passes):
        out = []
        for p in range(passes):
            g = 2.0 * rows * lp * lp
            out.append(Stage(f"{name} Gram {p + 1}", "Gram tile", ceil(rows, bt), l2_bytes=rows * lp * 4,
                             tf32_flops=3 * g))
            out.append(Stage(f"{name} Cholesky {p + 1}", "Cholesky step", lp, cuda_flops=4.0 * lp ** 3))
            out.append(Stage(f"{name} apply {p + 1}", "apply L^-T tile", ceil(rows, bt), l2_bytes=2 * rows * lp * 4,
                             tf32_flops=3 * g))
        return out

    stages = [
        Stage("scan (max, NaN/Inf)", "scan", tiles_n * tiles_d, hbm_bytes=x_bytes, global_latency="hbm",
              first_pass=True),
        Stage("column sums", "column sums", tiles_n * tiles_d, hbm_bytes=x_bytes, global_latency="hbm"),
        Stage("centred energy", "centred energy", tiles_n * tiles_d, l2_bytes=x_bytes, cuda_flops=3.0 * n * d),
        Stage("sketch (Philox)", "sketch", tiles_d, l2_bytes=d * lp * 4),
        product("Y = X_c Omega", "X @ tile", 2, d, tiles_n, tiles_d),
    ]
    stages += orth("orth(Y)", n, 3)
    for it in range(q):
        stages.append(product(f"W = X_c^T Q ({it + 1})", "X^T @ tile", 2, n, tiles_d, tiles_n))
        stages += orth(f"orth(W) ({it + 1})", d, 3)
        stages.append(product(f"Q = X_c W ({it + 1})", "X @ tile", 2, d, tiles_n, tiles_d))
        stages += orth(f"orth(Q) ({it + 1})", n, 3)
    stages.append(product("Z = X_c^T Q, H = Z^T Z", "X^T @ tile", 3, n, tiles_d, tiles_n))
    stages.append(Stage("Jacobi", "Jacobi round", sweeps * (lp - 1), cuda_flops=sweeps * (lp - 1) * 9.0 * lp * lp,
                        note=f"{sweeps:g} sweeps assumed"))
    stages.append(Stage("sigma = ||Z v_j||", "Z V tile", tiles_d, l2_bytes=d * lp * 4, tf32_flops=3 * 2.0 * d * lp * lp))
    stages.append(Stage("leverage = rows of Q V", "leverage tile", tiles_n, l2_bytes=n * lp * 4,
                        tf32_flops=3 * 2.0 * n * lp * lp))
    stages.append(Stage("selection (rank count)", "rank count", ceil(n, bs) ** 2, l2_bytes=ceil(n, bs) * n * 4,
                        cuda_flops=3.0 * n * n))
    stages.append(Stage("gather", "gather row tile", ceil(n, bs) * tiles_d, hbm_bytes=2 * kept * d * elt,
                        global_latency="hbm"))
    return stages


# ---- bounds ------------------------------------------------------------------------------------------


def stage_time(stage: Stage, loops: dict, warps: int, batch: int, tokens_fit_l2: bool) -> dict:
    """Seconds the stage takes for the whole batch, and the bound that sets it.

    The batch runs ``batch * stage.programs`` programs side by side on min(that, 132) SMs. The stage
    takes the largest of: the serial time of one program's share of the iterations (SASS cycles per
    iteration; a second wave when the programs outnumber the SMs), the batch's HBM bytes over 4.8 TB/s,
    its L2 bytes over the L2 bandwidth, its tensor-core and CUDA-core FLOPs over the rate of the SMs it
    can use. Token passes after the first one of a call come from the L2 when the batch's tokens fit
    it (50 MB), from HBM otherwise.
    """
    programs = batch * stage.programs
    sms = min(H200["sms"], programs)
    waves = math.ceil(programs / H200["sms"])
    latency = H200["hbm_latency"] if stage.global_latency == "hbm" else H200["l2_latency"]
    token_bytes_in_l2 = stage.hbm_bytes if (tokens_fit_l2 and not stage.first_pass) else 0.0
    hbm = batch * (stage.hbm_bytes - token_bytes_in_l2)
    l2 = batch * (stage.l2_bytes + token_bytes_in_l2)
    if token_bytes_in_l2 and stage.global_latency == "hbm":
        latency = H200["l2_latency"]
    terms = {}
    if stage.loop is not None:
        per_iter, within = iteration_cycles(loops[stage.loop], warps, latency)
        terms[f"serial ({within})"] = waves * stage.iterations / stage.programs * per_iter / H200["clock_hz"]
    terms["HBM"] = hbm / H200["hbm_bytes_per_s"]
    terms["L2"] = l2 / H200["l2_bytes_per_s"]
    used = sms / H200["sms"]
    terms["tensor cores"] = batch * (stage.tc16_flops / H200["tc16_flops_per_s"]
                                     + stage.tf32_flops / H200["tf32_flops_per_s"]) / used
    terms["CUDA cores"] = batch * stage.cuda_flops / H200["fp32_flops_per_s"] / used
    bound = max(terms, key=terms.get)
    return dict(stage=stage.name, seconds=terms[bound], bound=bound, hbm_bytes=hbm / batch, l2_bytes=l2 / batch,
                tc16_flops=stage.tc16_flops, tf32_flops=stage.tf32_flops, cuda_flops=stage.cuda_flops,
                serial_steps=stage.iterations / stage.programs, programs=stage.programs, note=stage.note)


def analyse_variant(dtype: str, lp: int) -> tuple[dict, int]:
    """(named loop counts, warps) of the compiled variant's SASS."""
    compiled, config = aot.compile_variant(dtype=dtype, lp=lp)
    text = aot.sass(compiled.asm["cubin"])
    source = "/".join(Path(inspect.getsourcefile(kernel_module)).resolve().parts[-3:])
    return attribute_loops(innermost_loops(parse_sass(text, source))), config["num_warps"]


def predict(dtype: str, n: int, d: int, l: int, q: int, batches=(1, 64), sweeps: float = 5.0,
            analysed=None) -> dict:
    """Per-stage rows and totals per batch for one variant (``analysed``: reuse a loop analysis)."""
    import torch

    elt = torch.empty((), dtype=aot.TORCH_DTYPES[dtype]).element_size()
    settings = kernel_module.kernel_settings(aot.TORCH_DTYPES[dtype], l)
    loops, warps = analysed or analyse_variant(dtype, settings["LP"])
    stages = present_stages(n, d, l, q, elt, settings, sweeps, kept=l)
    out = dict(dtype=dtype, n=n, d=d, l=l, q=q, lp=settings["LP"], warps=warps, sweeps=sweeps, loops=loops,
               batches={})
    for batch in batches:
        fits = batch * n * d * elt <= H200["l2_bytes"]
        rows = [stage_time(s, loops, warps, batch, fits) for s in stages]
        per_call = sum(r["seconds"] for r in rows)
        out["batches"][batch] = dict(rows=rows, seconds_per_call=per_call, seconds_per_image=per_call / batch)
    return out


# ---- report ------------------------------------------------------------------------------------------


def _group(rows: list[dict]) -> list[dict]:
    """Rows of the same kind (e.g. the 15 Cholesky factorisations) summed into one line."""
    groups = collections.OrderedDict()
    for r in rows:
        key = re.sub(r" \(\d+\)| \d+$", "", r["stage"]).replace("orth(W)", "orth(W)").strip()
        key = re.sub(r"orth\((Y|Q)\)", "orth(Q)", key)
        g = groups.setdefault(key, dict(stage=key, count=0, seconds=0.0, hbm_bytes=0.0, l2_bytes=0.0,
                                        tc16_flops=0.0, tf32_flops=0.0, cuda_flops=0.0, serial_steps=0.0,
                                        bounds=collections.Counter()))
        g["count"] += 1
        for k in ("seconds", "hbm_bytes", "l2_bytes", "tc16_flops", "tf32_flops", "cuda_flops", "serial_steps"):
            g[k] += r[k]
        g["bounds"][r["bound"]] += r["seconds"]
    for g in groups.values():
        g["bound"] = g["bounds"].most_common(1)[0][0]
    return list(groups.values())


def markdown(results: list[dict]) -> str:
    lines = []
    for res in results:
        lines.append(f"### {res['dtype']}, N={res['n']}, D={res['d']}, l={res['l']} (LP={res['lp']}), q={res['q']}, "
                     f"{res['warps']} warps, Jacobi {res['sweeps']:g} sweeps")
        lines.append("")
        for batch, b in res["batches"].items():
            lines.append(f"B={batch}: **{b['seconds_per_call'] * 1e6:.0f} us per call, "
                         f"{b['seconds_per_image'] * 1e6:.2f} us per image** (predicted)")
            lines.append("")
            lines.append("| stage (per image) | x | HBM MB | L2 MB | TC GFLOP (16-bit / tf32) | CUDA GFLOP | serial steps | "
                         "us per call | bound |")
            lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---|")
            for g in _group(b["rows"]):
                lines.append(
                    f"| {g['stage']} | {g['count']} | {g['hbm_bytes'] / 1e6:.2f} | {g['l2_bytes'] / 1e6:.2f} | "
                    f"{g['tc16_flops'] / 1e9:.3f} / {g['tf32_flops'] / 1e9:.3f} | {g['cuda_flops'] / 1e9:.3f} | "
                    f"{g['serial_steps']:.0f} | {g['seconds'] * 1e6:.1f} | {g['bound']} |")
            lines.append("")
        lines.append("SASS loops (per iteration, per warp; the largest inlined copy):")
        lines.append("")
        lines.append("| loop | copies | instructions | shared B | barriers | shuffles | MUFU | spill B | tensor FLOP | "
                     "cycles / iteration | bound |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for name, c in res["loops"].items():
            cycles, within = iteration_cycles(c, res["warps"], H200["l2_latency"])
            lines.append(f"| {name} | {c.get('copies', 1)} | {c.get('instructions', 0)} | {c.get('smem_bytes', 0)} | "
                         f"{c.get('barriers', 0)} | {c.get('shuffles', 0)} | {c.get('mufu', 0)} | "
                         f"{c.get('local_bytes', 0)} | {c.get('tc16_flops', 0) + c.get('tf32_flops', 0):.0f} | "
                         f"{cycles:.0f} | {within} |")
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
    ap.add_argument("--json", action="store_true", help="JSON lines instead of markdown")
    args = ap.parse_args(argv)
    settings = kernel_module.kernel_settings(aot.TORCH_DTYPES[args.dtype], args.l)
    analysed = analyse_variant(args.dtype, settings["LP"])
    results = [predict(args.dtype, args.n, d, args.l, args.q, args.batches, args.sweeps, analysed) for d in args.d]
    if args.json:
        for res in results:
            for batch, b in res["batches"].items():
                for row in b["rows"]:
                    print(json.dumps(dict(dtype=res["dtype"], n=res["n"], d=res["d"], l=res["l"], batch=batch, **row)))
                print(json.dumps(dict(dtype=res["dtype"], n=res["n"], d=res["d"], l=res["l"], batch=batch,
                                      total_us_per_call=b["seconds_per_call"] * 1e6,
                                      total_us_per_image=b["seconds_per_image"] * 1e6)))
    else:
        print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
