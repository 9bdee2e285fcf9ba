"""Compiles the fused Triton kernel ahead of time for an NVIDIA GPU, without a GPU.

Triton lowers the kernel to PTX and runs the ptxas shipped in its wheel, so whether the kernel compiles
for sm_90 (H100/H200), and how much shared memory it asks for, can be checked on any machine. Prints
one JSON line per configuration: the configuration, ok, the seconds it took, the shared memory in bytes
(dynamic, per block) and the error when it failed.

    python tools/aot_compile_triton.py                       # the default configurations
    python tools/aot_compile_triton.py --lp 256 --dtype fp32 # one configuration
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # compile, do not interpret
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from eadaprune_kernels.backends import triton_kernel as triton_backend  # noqa: E402

POINTERS = ("X", "CU", "SC", "OM", "QWS", "WWS", "MUWS", "LEVWS", "SIG", "ENERGY", "BUDGET", "SAT", "BIN",
            "OTOK", "OIDX", "OMASK")
INT32 = ("sxb", "sxn", "sxd", "scb", "scn", "som_d", "som_l", "sotb", "sotm", "sotd", "N", "D", "L", "M",
         "POWER_ITERS", "MIN_TOKENS")
TORCH_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, "fp64": torch.float64}
DEFAULTS = [
    dict(dtype="bf16", lp=16, scores=True),
    dict(dtype="fp16", lp=128),
]


def _signature(params, dtype, lp, scores, sketch, budgets, ragged):
    token = {"fp16": "*fp16", "bf16": "*bf16", "fp32": "*fp32", "fp64": "*fp64"}[dtype]
    pointers = dict(X=token, CU="*i64" if ragged else None, SC="*fp32" if scores else None, OM="*fp32",
                    QWS="*fp32", WWS="*fp32", MUWS="*fp32", LEVWS="*fp32", SIG="*fp32", ENERGY="*fp32",
                    BUDGET="*i32", SAT="*u8", BIN="*i32" if budgets else None, OTOK=token, OIDX="*i64",
                    OMASK="*u8")
    signature, constants = {}, {}
    for name in params:
        if name in POINTERS:
            signature[name] = pointers[name] or "constexpr"
            if pointers[name] is None:
                constants[name] = None
        elif name in INT32:
            signature[name] = "i32"
        elif name == "SEED":
            signature[name] = "i64"
        elif name in ("THRESH", "FLAT_RTOL"):
            signature[name] = "fp32"
        else:
            signature[name] = "constexpr"
    settings = triton_backend.kernel_settings(TORCH_DTYPES[dtype], lp)  # the launcher's own settings
    num_warps = settings.pop("num_warps")
    constants.update(
        CENTER=True, IS_F64=dtype == "fp64", SC_F64=False, SELECT=True,
        HAS_SKETCH=sketch, HAS_SCORES=scores, HAS_BUDGETS=budgets, RAGGED=ragged, **settings,
    )
    return signature, constants, num_warps


def compile_config(dtype="fp16", lp=128, scores=False, sketch=False, budgets=False, ragged=False, arch=90):
    """Compiles one configuration; returns a dict with ok, seconds, shared (bytes) and error."""
    kernel = triton_backend._eadaprune_kernel
    jit = getattr(kernel, "fn", kernel)  # under @triton.heuristics
    params = [p.name for p in jit.params]
    signature, constants, num_warps = _signature(params, dtype, lp, scores, sketch, budgets, ragged)
    source = ASTSource(fn=jit, signature=signature,
                       constexprs={(params.index(k),): v for k, v in constants.items()})
    config = dict(dtype=dtype, lp=lp, scores=scores, sketch=sketch, budgets=budgets, ragged=ragged,
                  arch=arch, num_warps=num_warps)
    start = time.perf_counter()
    try:
        compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=dict(num_warps=num_warps))
    except Exception as exc:  # reported, not raised: the caller decides
        return dict(config, ok=False, seconds=time.perf_counter() - start, shared=None,
                    error=f"{type(exc).__name__}: {str(exc)[:2000]}")
    return dict(config, ok=True, seconds=time.perf_counter() - start, shared=compiled.metadata.shared, error=None)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", choices=["fp16", "bf16", "fp32", "fp64"])
    ap.add_argument("--lp", type=int, help="padded sketch width: 16, 32, 64, 128 or 256")
    ap.add_argument("--scores", action="store_true")
    ap.add_argument("--sketch", action="store_true")
    ap.add_argument("--budgets", action="store_true")
    ap.add_argument("--ragged", action="store_true")
    ap.add_argument("--arch", type=int, default=90)
    args = ap.parse_args(argv)
    if args.dtype is None and args.lp is None:
        configs = [dict(c, arch=args.arch) for c in DEFAULTS]
    else:
        configs = [dict(dtype=args.dtype or "fp16", lp=args.lp or 128, scores=args.scores, sketch=args.sketch,
                        budgets=args.budgets, ragged=args.ragged, arch=args.arch)]
    ok = True
    for config in configs:
        result = compile_config(**config)
        print(json.dumps(result), flush=True)
        ok &= result["ok"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
