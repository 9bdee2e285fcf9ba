"""The fused Triton kernel compiles for sm_90 (H100/H200), and what ptxas and the cost model say about
it, without a GPU.

tools/aot_compile_triton.py lowers the kernel to PTX and runs the ptxas of the triton wheel; it runs in
a subprocess because this test process interprets Triton kernels (TRITON_INTERPRET=1 on CPU machines).
tools/cost_model.py turns the kernel's tiling and its SASS into a predicted time per stage.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("triton")

import torch  # noqa: E402

from eadaprune_kernels.backends import triton_kernel as triton_backend  # noqa: E402
from helpers import TOOLS, import_tool  # noqa: E402

TOOL = TOOLS / "aot_compile_triton.py"
COST_MODEL = TOOLS / "cost_model.py"
# Dynamic shared memory one block may opt into on sm_90 (H100 and H200): 227 KB.
SM90_MAX_SHARED = 227 * 1024
FIELDS = ("registers", "stack", "spill_stores", "spill_loads", "shared", "num_warps", "blocks_per_sm",
          "programs_per_image", "grid_b64", "sms_busy_b64")


def _rows(*args, timeout=1800):
    out = subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True, timeout=timeout)
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert rows, f"no result from {TOOL.name}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return rows


def _tool_module():
    return import_tool("aot_compile_triton")


def test_every_production_variant_compiles_for_sm90_without_spills_and_fills_the_gpu():
    """Every production variant (fp16 / bf16 / fp32, LP 16-256, leverage and scores, dense and ragged),
    compiled by tools/aot_compile_triton.py for sm_90 with the specialisation a GPU launch gets (aligned
    pointers, unit strides as constants): no spill stores or loads, shared memory within 227 KB, at
    least one block per SM, l = 256 among them, and a B=64 call at N=576 gives work to every one of the
    132 SMs (its widest stage has at least 132 tasks)."""
    rows = _rows("--all", "--jobs", "2")
    assert len(rows) == 3 * 5 * 2 * 2, f"expected 60 production variants, got {len(rows)}"
    for row in rows:
        assert row["ok"], f"the kernel does not compile for sm_90 in {row}"
        missing = [f for f in FIELDS if f not in row]
        assert not missing, f"{TOOL.name} does not report {missing}: {row}"
        assert row["spill_stores"] == 0 and row["spill_loads"] == 0, f"ptxas reports spills: {row}"
        assert row["shared"] <= SM90_MAX_SHARED, (
            f"{row} asks for {row['shared']} bytes of shared memory, more than sm_90's {SM90_MAX_SHARED}")
        assert 16 <= row["registers"] <= 255 and row["threads"] == 32 * row["num_warps"], row
        assert row["stack"] >= 0 and row["blocks_per_sm"] >= 1, row
        assert row["grid_b1"] >= 1 and row["programs_per_image"] >= 1, row
        assert row["sms_busy_b64"] == 132, f"a B=64 call leaves SMs idle in every stage: {row}"
        # compiled as a GPU launch specialises it: aligned pointers, the tokens' unit stride a constant
        spec = row["specialised"]
        assert {"X", "OMS", "QWS", "WWS", "PART", "LWS", "OTOK"} <= set(spec["divisible_by_16"]), row
        assert spec["constants"].get("sxd") == 1 and spec["constants"].get("sotd") == 1, row
        assert row["grid_b64"] >= 132, row
    # the largest sketch the backend accepts is among the compiled configurations
    assert max(row["lp"] for row in rows) == triton_backend.MAX_SKETCH_SIZE == 256


@pytest.mark.parametrize("registers, shared, warps, expected", [
    (255, 32768, 4, (2, "registers")),  # 255 regs round to 256 per thread: 32K registers per block
    (128, 180224, 16, (1, "registers")),
    (64, 100 * 1024, 4, (2, "shared")),  # 2 x (100 KB + 1 KB reserved) of 228 KB
    (16, 0, 4, (16, "warps")),  # 2048 threads per SM
    (40, 0, 1, (32, "blocks")),
    (32, 228 * 1024, 4, (0, "shared")),  # more than one block may use: cannot launch
])
def test_occupancy_follows_the_sm90_limits(registers, shared, warps, expected):
    assert _tool_module().occupancy(registers, shared, warps) == expected


def test_cost_model_attributes_every_loop_and_adds_up():
    """tools/cost_model.py finds every loop it names in the SASS of the task that runs it (it raises
    LookupError otherwise), models every stage of launch_plan, its totals are the sums of its stage
    rows, and its floors (the call's bytes and FLOPs at peak rates, one image's dependent steps) follow
    from those rows and lie below the prediction."""
    cost_model = import_tool("cost_model")
    out = subprocess.run([sys.executable, str(COST_MODEL), "--json", "--d", "1024"], capture_output=True,
                         text=True, timeout=1800)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert rows and all(r["prediction"] for r in rows)
    settings = triton_backend.kernel_settings(torch.bfloat16, 128)
    for batch in (1, 64):
        stages = [r for r in rows if r["batch"] == batch and "stage" in r]
        total = [r for r in rows if r["batch"] == batch and "total_us_per_call" in r]
        assert stages and len(total) == 1
        plan = triton_backend.launch_plan(batch=batch, n=576, d=1024, settings=settings, ragged=False,
                                          power_iters=2, leverage=True, select=True)
        assert [r["tasks"] for r in stages] == plan["counts"]  # the real task counts, stage by stage
        assert all(r["seconds"] > 0 for r in stages), [r for r in stages if r["seconds"] <= 0]
        assert sum(r["seconds"] for r in stages) * 1e6 == pytest.approx(total[0]["total_us_per_call"], rel=1e-9)
        assert total[0]["total_us_per_image"] == pytest.approx(total[0]["total_us_per_call"] / batch, rel=1e-9)
        # every pass over the tokens is counted: token bytes (HBM or L2) >= (2q + 2) passes x N x D x 2 (bf16)
        assert sum(r["token_bytes"] for r in stages) >= (2 * 2 + 2) * 576 * 1024 * 2
        moved = sum(r["hbm_bytes"] + r["l2_bytes"] for r in stages)
        assert moved >= (2 * 2 + 2) * 576 * 1024 * 2
        # the pivot chain counts the kernel's dependent steps: LP pivots per Cholesky factorisation, LP / 2
        # pairs of Jacobi rounds per sweep (LP - 1 rounds and group 0's identity round; 5 sweeps assumed by
        # default), each a positive time
        chol = [r for r in stages if r["kind"] == triton_backend.K_CHOL]
        assert len(chol) == 7 and all(r["loops"]["Cholesky: step"][0] == settings["LP"] for r in chol)
        (eig,) = [r for r in stages if r["kind"] == triton_backend.K_EIG]
        assert eig["loops"]["Jacobi: round pair"][0] == 5 * settings["LP"] // 2
        assert all(r["loops"]["Cholesky: step"][1] > 0 for r in chol) and eig["loops"]["Jacobi: round pair"][1] > 0
        # the design's floors: its bytes and FLOPs at the peak rates, one image's dependent steps; the
        # summed prediction is never below one of them
        floors, rates = total[0]["floors_us_per_call"], cost_model.H200
        per_call = {k: batch * sum(r[k] for r in stages) for k in ("hbm_bytes", "l2_bytes", "tc16_flops", "tf32_flops",
                                                                   "cuda_flops")}
        expected = {"HBM": per_call["hbm_bytes"] / rates["hbm_bytes_per_s"],
                    "L2 traffic": per_call["l2_bytes"] / rates["l2_bytes_per_s"],
                    "tensor cores": per_call["tc16_flops"] / rates["tc16_flops_per_s"]
                    + per_call["tf32_flops"] / rates["tf32_flops_per_s"],
                    "CUDA cores": per_call["cuda_flops"] / rates["fp32_flops_per_s"],
                    "dependent l x l steps": sum(r["loops"][name][1] / r["waves"] for r in stages
                                                 for name in cost_model.PIVOT_LOOPS if name in r["loops"])}
        assert floors.keys() == expected.keys()
        for name, seconds in expected.items():
            assert floors[name] == pytest.approx(seconds * 1e6, rel=1e-9), name
            assert 0 < floors[name] <= total[0]["total_us_per_call"] * (1 + 1e-9), (name, floors, total[0])


def test_cost_model_placements_bound_each_other():
    """The cost model's two placements of a stage's programs (spread over idle SMs first, or packed to
    the blocks per SM first): both model the same stages, packing never makes a stage faster and makes
    some slower at 2 blocks per SM; an unknown placement is refused, naming the choices."""
    runs = {}
    for placement in ("spread", "packed"):
        out = subprocess.run([sys.executable, str(COST_MODEL), "--json", "--d", "1024", "--placement", placement],
                             capture_output=True, text=True, timeout=1800)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        runs[placement] = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
        assert runs[placement] and all(r["placement"] == placement for r in runs[placement])
    spread = [r for r in runs["spread"] if "stage" in r]
    packed = [r for r in runs["packed"] if "stage" in r]
    assert [(r["batch"], r["stage"], r["tasks"]) for r in spread] == [(r["batch"], r["stage"], r["tasks"]) for r in packed]
    assert all(b["seconds"] >= a["seconds"] * (1 - 1e-12) for a, b in zip(spread, packed))
    if triton_backend.kernel_settings(torch.bfloat16, 128)["num_warps"] <= 4:  # 2 blocks per SM
        assert any(b["seconds"] > a["seconds"] * (1 + 1e-6) for a, b in zip(spread, packed))
    bad = subprocess.run([sys.executable, str(COST_MODEL), "--placement", "scattered"], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode != 0 and "placement" in bad.stderr and "spread" in bad.stderr


def test_jacobi_sweep_counter_runs_the_kernels_routine():
    """tools/jacobi_sweeps.py (the calibration of the cost model's sweeps) runs the kernel's Jacobi on
    sketched Grams and reports a sweep count per image within [1, MAX_SWEEPS); a steep spectrum needs
    fewer sweeps than a Gaussian matrix."""
    out = subprocess.run([sys.executable, str(TOOLS / "jacobi_sweeps.py"), "--n", "96", "--d", "128", "--l", "32",
                          "--images", "1", "--rates", "0.5"], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = {line.split("|")[1].strip(): int(line.split("|")[2]) for line in out.stdout.splitlines()
            if line.startswith("| sigma") or line.startswith("| Gaussian")}
    assert set(rows) == {"sigma_i = exp(-0.5 i)", "Gaussian matrix"}, out.stdout
    assert all(1 <= s < triton_backend.MAX_SWEEPS for s in rows.values()), rows
    assert rows["sigma_i = exp(-0.5 i)"] < rows["Gaussian matrix"], rows


def test_schedule_simulations_respect_work_and_critical_path_bounds():
    """tools/cost_model.py's ticket-order and ready-queue simulations (no compilation: synthetic stages)
    run every task once: each makespan is at least the work per program and at least one image's chain
    of stages; with one image and enough programs both are exactly that chain; the ready queue never
    loses to the stage-major tickets here."""
    cost_model = import_tool("cost_model")
    K = triton_backend
    handoff = cost_model.H200["handoff_cycles"] / cost_model.H200["clock_hz"]

    def rows(batch, programs):
        spec = [(K.K_GLOBAL, 32, 1e-6), (K.K_STATS, 8 * batch, 2e-6), (K.K_EIG, batch, 40e-6), (K.K_XW, 8 * batch, 3e-6)]
        out = []
        for kind, tasks, dur in spec:
            waves = -(-tasks // programs)
            out.append(dict(kind=kind, tasks=tasks, waves=waves, seconds=waves * dur + handoff, dur=dur))
        return out

    for batch, programs in ((1, 132), (64, 132), (5, 7)):
        r = rows(batch, programs)
        chain = sum(x["dur"] for x in r) + (len(r) - 1) * handoff
        work = sum(x["tasks"] * x["dur"] for x in r) / programs
        tickets = cost_model.ticket_schedule(r, batch, programs)
        ready = cost_model.ready_queue_schedule(r, batch, programs)
        staggered = cost_model.ticket_schedule(r, batch, programs, skew=1)
        for t in (tickets, ready, staggered):
            assert t >= max(chain, work) * (1 - 1e-12), (batch, programs, t, chain, work)
        if batch == 1:
            assert tickets == pytest.approx(chain) and ready == pytest.approx(chain)
        assert ready <= tickets * (1 + 1e-12), (batch, programs, ready, tickets)
