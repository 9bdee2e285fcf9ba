"""Compiles the fused Triton kernel ahead of time for an NVIDIA GPU, without a GPU, and reports what
the compiled kernel asks of the hardware.

Triton lowers the kernel to PTX with the launcher's own compile-time settings
(``triton_kernel.kernel_settings``); this tool then runs the ptxas of the triton wheel on that PTX,
as triton does (``-lineinfo -v --regAllocOptLevel=2 --gpu-name=sm_90a``), and prints one JSON line
per variant:

  config        dtype, lp (padded sketch width), scores (given scores, else leverage), ragged
                (packed tokens with cu_seqlens, else dense), sketch, budgets, arch, num_warps
  specialised   what the compile knows of the runtime parameters, as triton's JIT derives it from a
                launch of a benchmark-shaped call (contiguous, 16-byte aligned tensors): the
                parameters divisible by 16 (aligned pointers, strides) and those that became
                constants (the unit stride of the tokens): the same specialisation a GPU launch
                compiles, so that loads vectorise as they will there
  ok, error     whether it compiled, and why not
  registers     per thread (ptxas), barriers, stack (bytes per thread), spill_stores, spill_loads
                (bytes per thread, static counts of the spill code)
  shared        dynamic shared memory per block in bytes (triton's metadata; ptxas reports the
                static part, ``static_shared``, which Triton kernels do not use)
  threads       32 * num_warps
  blocks_per_sm how many programs of this kernel one SM holds, and which resource limits it
                (``occupancy_limit``: registers, shared, warps or blocks)
  grid_b64, grid_b1, programs_per_image, sms_busy_b64, sms_busy_b64_narrowest_stage
                the launcher's grid for the benchmark shape (N=576, D=1024) at B=64 and B=1
                (``triton_kernel.launch_grid``: one program per task), the programs that work on one
                image at once (its widest stage), and how many of the 132 SMs of an H100/H200 the
                widest and the narrowest stage of a B=64 call keep busy (the block scheduler fills
                idle SMs first: min(tasks of the stage, 132))
  seconds       compile time on this machine

    python tools/aot_compile_triton.py                        # the default variants (quick)
    python tools/aot_compile_triton.py --all --jobs 2         # every production variant, 2 at a time
    python tools/aot_compile_triton.py --dtype bf16 --lp 128 --ragged --sass k.sass
                                                              # one variant, and its SASS with line info

The limits used for blocks_per_sm are those of sm_90 (H100 and H200): 65536 registers, 2048 threads
(64 warps) and 32 blocks per SM; registers are allocated per warp in units of 256; 228 KB of shared
memory per SM of which one block may use 227 KB, plus 1 KB the runtime reserves per block.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # compile, do not interpret
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.backends.nvidia.compiler import get_ptxas  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.compiler.compiler import make_backend  # noqa: E402
from triton.runtime.jit import create_function_from_signature  # noqa: E402

from eadaprune_kernels.backends import triton_kernel as triton_backend  # noqa: E402

TORCH_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, "fp64": torch.float64}
PRODUCTION_DTYPES = ("fp16", "bf16", "fp32")
PRODUCTION_LPS = (16, 32, 64, 128, 256)
DEFAULTS = [
    dict(dtype="bf16", lp=16, scores=True),
    dict(dtype="fp16", lp=128),
]

# sm_90 (H100 / H200) resources per SM, from the CUDA occupancy rules.
SM90 = dict(registers=65536, register_unit=256, max_threads=2048, max_blocks=32, shared=228 * 1024,
            shared_per_block=227 * 1024, reserved_shared_per_block=1024, sms=132)
# The benchmark shape the grid is reported for (LLaVA-1.5: N=576 tokens of D=1024).
BENCH_N, BENCH_D = 576, 1024


def production_variants(arch: int = 90) -> list[dict]:
    """Every variant a production call can compile: fp16 / bf16 / fp32 tokens, LP 16..256, leverage or
    given scores, dense or ragged."""
    return [dict(dtype=dtype, lp=lp, scores=scores, ragged=ragged, arch=arch)
            for dtype, lp, scores, ragged in itertools.product(PRODUCTION_DTYPES, PRODUCTION_LPS, (False, True),
                                                              (False, True))]


def _jit_function():
    kernel = triton_backend._eadaprune_kernel
    return getattr(kernel, "fn", kernel)  # under @triton.heuristics


class _LaunchCaptured(Exception):
    """Raised by the recorder that stands in for the kernel: the launcher's arguments are captured."""

    def __init__(self, args, kwargs):
        super().__init__("launch captured")
        self.args, self.kwargs = args, kwargs


class _Recorder:
    """Stands in for ``_eadaprune_kernel``: ``kernel[grid](*args, **kwargs)`` raises _LaunchCaptured."""

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            raise _LaunchCaptured(args, kwargs)
        return launch


def launch_arguments(dtype="fp16", lp=128, scores=False, sketch=False, budgets=False, ragged=False) -> tuple:
    """(args, kwargs) the launcher passes to the kernel for a benchmark-shaped call (N=576, D=1024, l=lp,
    contiguous CPU tensors of the variant's dtypes, as torch allocates them: 16-byte aligned), the
    heuristics' flags included. Captured from ``triton_kernel._launch`` itself, so that the compile
    below specialises exactly as a GPU launch of such a call does."""
    from eadaprune_kernels.contract import PipelineConfig

    batch = 2
    tokens = torch.randn(batch * BENCH_N if ragged else batch, *(() if ragged else (BENCH_N,)), BENCH_D).to(
        TORCH_DTYPES[dtype])
    cu = torch.arange(batch + 1, dtype=torch.int64) * BENCH_N if ragged else None
    sc = torch.rand(*tokens.shape[:-1]) if scores else None
    cfg = PipelineConfig(energy=0.9, center=True, sketch_size=lp, power_iters=2, min_tokens=1,
                         max_tokens=BENCH_N // 4, seed=0,
                         sketch_matrix=torch.randn(BENCH_D, lp) if sketch else None)
    budgets_in = torch.full((batch,), 8, dtype=torch.int32) if budgets else None
    kernel, check = triton_backend._eadaprune_kernel, triton_backend._check_device
    triton_backend._eadaprune_kernel, triton_backend._check_device = _Recorder(), lambda tokens: None
    try:
        triton_backend._launch(tokens, sc, cfg, True, budgets_in, cu)
    except _LaunchCaptured as launch:
        args, kwargs = launch.args, dict(launch.kwargs)
    else:
        raise RuntimeError("aot_compile_triton: the launcher returned without launching the kernel")
    finally:
        triton_backend._eadaprune_kernel, triton_backend._check_device = kernel, check
    for name, heuristic in getattr(kernel, "values", {}).items():  # what @triton.heuristics adds
        kwargs[name] = heuristic({**dict(zip(kernel.arg_names, args)), **kwargs})
    return args, kwargs


def jit_specialization(target, dtype="fp16", lp=128, scores=False, sketch=False, budgets=False, ragged=False):
    """(options, signature, constexprs, attrs) of one variant for ``target`` (a GPUTarget) as
    ``JITFunction.run`` computes them:
    triton's own binder applied to the launcher's arguments (:func:`launch_arguments`). 16-byte aligned
    pointers and integers divisible by 16 get ``tt.divisibility = 16``; integers equal to 1 (the tokens'
    unit stride) become constants; the parameters the kernel marks do_not_specialize stay plain.
    Without this the compiler can neither vectorise a load nor know a stride, and the SASS would not
    be the one a GPU runs."""
    jit = _jit_function()
    args, kwargs = launch_arguments(dtype, lp, scores, sketch, budgets, ragged)
    backend = make_backend(target)
    binder = create_function_from_signature(jit.signature, jit.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    return jit._pack_args(backend, kwargs, bound, specialization, options)


def specialization_summary(signature: dict, constexprs: dict, attrs: dict) -> dict:
    """The runtime parameters the compile specialised: those known divisible by 16 (pointers: 16-byte
    aligned) and those that became constants (not the kernel's own constexprs)."""
    names = list(signature)
    own = {p.name for p in _jit_function().params if p.is_constexpr}
    divisible = sorted(names[path[0]] for path, attr in attrs.items() if ["tt.divisibility", 16] in attr)
    constants = {names[path[0]]: value for path, value in constexprs.items()
                 if names[path[0]] not in own and value is not None}
    return dict(divisible_by_16=divisible, constants=constants)


def compile_variant(dtype="fp16", lp=128, scores=False, sketch=False, budgets=False, ragged=False, arch=90):
    """Compiles one variant with triton, specialised as a GPU launch of it is
    (:func:`jit_specialization`); returns (compiled kernel, config dict)."""
    jit = _jit_function()
    target = GPUTarget("cuda", arch, 32)
    options, signature, constexprs, attrs = jit_specialization(target, dtype, lp, scores, sketch, budgets, ragged)
    source = ASTSource(fn=jit, signature=signature, constexprs=constexprs, attrs=attrs)
    config = dict(dtype=dtype, lp=lp, scores=scores, sketch=sketch, budgets=budgets, ragged=ragged,
                  arch=arch, num_warps=options.num_warps, num_stages=options.num_stages,
                  specialised=specialization_summary(signature, constexprs, attrs))
    # triton prints the whole PTX to stdout when ptxas fails: keep stdout for the JSON lines
    with contextlib.redirect_stdout(io.StringIO()):
        compiled = triton.compile(source, target=target, options=options.__dict__)
    return compiled, config


_USAGE = {
    "registers": re.compile(r"Used (\d+) registers"),
    "barriers": re.compile(r"used (\d+) barriers"),
    "stack": re.compile(r"(\d+) bytes stack frame"),
    "spill_stores": re.compile(r"(\d+) bytes spill stores"),
    "spill_loads": re.compile(r"(\d+) bytes spill loads"),
    "static_shared": re.compile(r"(\d+) bytes smem"),
}


def ptxas_usage(ptx: str, arch: int = 90) -> dict:
    """Runs the wheel's ptxas -v on ``ptx`` with triton's flags; returns registers, barriers, stack,
    spill_stores, spill_loads and static_shared (0 when ptxas does not print the field)."""
    ptxas = get_ptxas(arch).path
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "kernel.ptx"
        src.write_text(ptx)
        cmd = [ptxas, "-lineinfo", "-v", "--regAllocOptLevel=2", f"--gpu-name=sm_{arch}a", str(src),
               "-o", str(Path(tmp) / "kernel.cubin")]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    log = out.stderr + out.stdout
    usage = {}
    for name, pattern in _USAGE.items():
        found = pattern.findall(log)
        usage[name] = max(int(v) for v in found) if found else 0
    return usage


def occupancy(registers: int, shared: int, num_warps: int) -> tuple[int, str]:
    """(blocks per SM, the limiting resource) of a kernel on sm_90."""
    threads = 32 * num_warps
    regs_per_warp = -(-max(registers, 1) * 32 // SM90["register_unit"]) * SM90["register_unit"]
    limits = {
        "registers": SM90["registers"] // (regs_per_warp * num_warps),
        "shared": (SM90["shared"] // (shared + SM90["reserved_shared_per_block"])
                   if shared <= SM90["shared_per_block"] else 0),
        "warps": SM90["max_threads"] // threads,
        "blocks": SM90["max_blocks"],
    }
    limit = min(limits, key=limits.get)
    return limits[limit], limit


def grid_facts(dtype: str, lp: int, blocks_per_sm: int, ragged: bool) -> dict:
    """The launcher's grid for the benchmark shape (B=64 and B=1, N=576, D=1024) and what it keeps busy."""
    settings = triton_backend.kernel_settings(TORCH_DTYPES[dtype], lp)
    facts = {}
    for batch in (64, 1):
        grid = triton_backend.launch_grid(batch=batch, n=BENCH_N, d=BENCH_D, settings=settings, ragged=ragged)
        facts[f"grid_b{batch}"] = grid[0]
    facts["programs_per_image"] = triton_backend.programs_per_image(n=BENCH_N, d=BENCH_D, settings=settings,
                                                                    ragged=ragged)
    # Every stage of the persistent grid is a set of tasks; at B=64 the SMs busy at once is bounded by the
    # stages' task counts: the widest keeps min(its tasks, 132) SMs busy (the block scheduler places
    # blocks on idle SMs first), the narrowest (one task per image: Cholesky, Jacobi) min(64, 132).
    plan = triton_backend.launch_plan(batch=64, n=BENCH_N, d=BENCH_D, settings=settings, ragged=ragged,
                                      power_iters=2, leverage=True, select=True)
    facts["sms_busy_b64"] = min(SM90["sms"], plan["widest"])
    facts["sms_busy_b64_narrowest_stage"] = min(SM90["sms"], min(plan["counts"][1:]))
    return facts


def compile_config(dtype="fp16", lp=128, scores=False, sketch=False, budgets=False, ragged=False, arch=90,
                   sass_path: str | None = None) -> dict:
    """Compiles one variant and measures it; returns the JSON row (see the module docstring)."""
    start = time.perf_counter()
    config = dict(dtype=dtype, lp=lp, scores=scores, sketch=sketch, budgets=budgets, ragged=ragged, arch=arch)
    try:
        compiled, config = compile_variant(dtype, lp, scores, sketch, budgets, ragged, arch)
        usage = ptxas_usage(compiled.asm["ptx"], arch)
    except Exception as exc:  # reported, not raised: the caller decides
        return dict(config, ok=False, seconds=time.perf_counter() - start, shared=None,
                    error=f"{type(exc).__name__}: {str(exc)[:2000]}")
    shared = int(compiled.metadata.shared)
    blocks, limit = occupancy(usage["registers"], shared, config["num_warps"])
    row = dict(config, ok=True, seconds=round(time.perf_counter() - start, 2), **usage, shared=shared,
               threads=32 * config["num_warps"], blocks_per_sm=blocks, occupancy_limit=limit,
               **grid_facts(dtype, lp, blocks, ragged), error=None)
    if sass_path:
        Path(sass_path).write_text(sass(compiled.asm["cubin"]))
    return row


def sass(cubin: bytes) -> str:
    """The SASS of a cubin with source-line comments (``nvdisasm -c -gi``, the wheel's nvdisasm)."""
    nvdisasm = Path(get_ptxas(90).path).with_name("nvdisasm")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        out = subprocess.run([str(nvdisasm), "-c", "-gi", str(path)], capture_output=True, text=True, check=True)
    return out.stdout


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--all", action="store_true", help="every production variant (fp16/bf16/fp32, LP 16-256, "
                                                       "leverage and scores, dense and ragged)")
    ap.add_argument("--dtype", choices=sorted(TORCH_DTYPES))
    ap.add_argument("--lp", type=int, choices=PRODUCTION_LPS, help="padded sketch width")
    ap.add_argument("--scores", action="store_true", help="given scores (default: leverage selection)")
    ap.add_argument("--sketch", action="store_true", help="a given sketch_matrix")
    ap.add_argument("--budgets", action="store_true", help="given budgets (total_budget)")
    ap.add_argument("--ragged", action="store_true", help="packed tokens with cu_seqlens")
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--sass", metavar="FILE", help="write the SASS of the (single) variant to FILE")
    ap.add_argument("--jobs", type=int, default=1, help="compile this many variants at once (processes)")
    args = ap.parse_args(argv)
    if args.jobs < 1:
        ap.error(f"--jobs: expected a positive number of processes, got {args.jobs}")
    if args.all:
        if args.sass:
            ap.error("--sass takes one variant, not --all")
        configs = production_variants(args.arch)
    elif args.dtype is None and args.lp is None:
        configs = [dict(dict(scores=False, ragged=False), **c, arch=args.arch) for c in DEFAULTS]
    else:
        configs = [dict(dtype=args.dtype or "fp16", lp=args.lp or 128, scores=args.scores, sketch=args.sketch,
                        budgets=args.budgets, ragged=args.ragged, arch=args.arch)]
    if args.sass and len(configs) != 1:
        ap.error("--sass takes one variant (give --dtype / --lp)")
    ok = True
    if args.jobs == 1 or len(configs) == 1:
        results = (compile_config(**config, sass_path=args.sass) for config in configs)
    else:  # the variants are independent compiles; rows come back in the order of ``configs``
        import concurrent.futures

        pool = concurrent.futures.ProcessPoolExecutor(max_workers=args.jobs)
        results = pool.map(_compile_config_kwargs, configs)
    for result in results:
        print(json.dumps(result), flush=True)
        ok &= result["ok"]
    return 0 if ok else 1


def _compile_config_kwargs(config: dict) -> dict:
    return compile_config(**config)


if __name__ == "__main__":
    sys.exit(main())
