"""The fused Triton kernel compiles for sm_90 (H100/H200) and fits its shared memory, without a GPU.

tools/aot_compile_triton.py lowers the kernel to PTX and runs the ptxas of the triton wheel; it runs in
a subprocess because this test process interprets Triton kernels (TRITON_INTERPRET=1 on CPU machines).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

from eadaprune_kernels.backends import triton_kernel as triton_backend  # noqa: E402

TOOL = Path(__file__).resolve().parent.parent / "tools" / "aot_compile_triton.py"
# Dynamic shared memory one block may opt into on sm_90 (H100 and H200): 227 KB.
SM90_MAX_SHARED = 227 * 1024


def test_kernel_compiles_for_sm90_within_shared_memory():
    out = subprocess.run([sys.executable, str(TOOL)], capture_output=True, text=True, timeout=900)
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert rows, f"no result from {TOOL.name}:\n{out.stdout}\n{out.stderr}"
    for row in rows:
        assert row["ok"], f"the kernel does not compile for sm_90 in {row}"
        assert row["shared"] <= SM90_MAX_SHARED, (
            f"{row} asks for {row['shared']} bytes of shared memory, more than sm_90's {SM90_MAX_SHARED}")
    # the largest sketch the backend accepts is among the compiled configurations
    assert max(row["lp"] for row in rows) >= triton_backend.MAX_SKETCH_SIZE
