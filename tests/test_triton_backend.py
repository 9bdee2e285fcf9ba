"""Triton-specific tests of the fused one-launch backend (eadaprune_kernels/backends/triton_kernel.py).

Without CUDA the kernel runs under the Triton interpreter: this module sets TRITON_INTERPRET=1 before
the backend (and so ``triton.jit``) is first imported. If another module imported the backend
earlier without the interpreter, the CPU tests are skipped with that reason (a tests/conftest.py
that sets TRITON_INTERPRET=1 on machines without CUDA removes the ordering dependence).
Interpreted shapes are small; the GPU tests (N=576, D up to 4096, B up to 64) need CUDA.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

from eadaprune_kernels import api  # noqa: E402
from eadaprune_kernels.backends import triton_kernel as tb  # noqa: E402
from eadaprune_kernels.backends.triton_kernel import _stage_info  # noqa: E402
from eadaprune_kernels.ground_truth import exact_svdvals  # noqa: E402

from helpers import (assert_keeps_top_leverage, assert_matches_reference, check_result_invariants,  # noqa: E402
                     config, make_tokens, run_backend)

INTERPRETED = tb._interpreting()
cpu_interp = pytest.mark.skipif(
    not INTERPRETED, reason="the Triton backend module was loaded without TRITON_INTERPRET=1"
)
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
CPU = torch.device("cpu")


def _cfg(x, **kw):
    """This file's defaults: energy 0.9, l = 16, q = 1."""
    return config(x, **{"energy": 0.9, "sketch_size": 16, "power_iters": 1, **kw})


def _decaying(batch, n, d, decay=2.0, offset=3.0, seed=0, dtype=torch.float32, device=CPU):
    """Tokens with a geometric spectrum (sigma_j ~ 10^(-decay j / D)) and a dominant mean."""
    return make_tokens(batch, n, d, "logspace", decay=decay, mean_scale=offset, seed=seed, dtype=dtype,
                       device=device)


def _check_against_reference(got, ref, cfg):
    """Spectrum to 1e-4 of sigma_1, energy, budgets (outside knife edges), flags; the images off a knife edge."""
    return assert_matches_reference(got, ref, cfg.energy, sigma_tol=1e-4)


def _check_padding(res, x, cfg):
    check_result_invariants(res, x, min(cfg.min_tokens, cfg.max_tokens), cfg.max_tokens)


SHAPES = [  # (B, N, D, sketch_size, power_iters, energy)
    pytest.param(1, 7, 5, 4, 1, 0.9, id="B1-N7-D5-l4"),
    pytest.param(3, 64, 96, 16, 1, 0.9, id="B3-N64-D96-l16"),
    pytest.param(3, 7, 96, 16, 2, 0.99, id="B3-N7-D96-l7-rankdeficient"),
    pytest.param(1, 200, 130, 32, 2, 0.8, id="B1-N200-D130-l32"),
    pytest.param(1, 64, 5, 16, 0, 0.95, id="B1-N64-D5-l5-q0"),
]


@cpu_interp
@pytest.mark.parametrize("batch,n,d,l,q,energy", SHAPES)
def test_scores_given_matches_reference(batch, n, d, l, q, energy):
    x = _decaying(batch, n, d, seed=n + d)
    scores = torch.randn(batch, n, generator=torch.Generator().manual_seed(1))
    scores[:, ::3] = 0.5  # ties: the lower index must win
    cfg = _cfg(x, sketch_size=l, power_iters=q, energy=energy, seed=7)
    got = run_backend("triton", x, cfg, scores)
    ref = run_backend("reference", x, cfg, scores)
    assert got.backend == "triton"
    ok = _check_against_reference(got, ref, cfg)
    _check_padding(got, x, cfg)
    assert torch.equal(got.indices[ok], ref.indices[ok])
    assert torch.equal(got.tokens[ok], ref.tokens[ok])


@cpu_interp
@pytest.mark.parametrize("batch,n,d,l,q,energy", SHAPES[1:4])
def test_leverage_selection_keeps_top_leverage(batch, n, d, l, q, energy):
    """Without scores: budgets as the reference; the kept tokens are the top-budget by the float64
    leverage up to 1e-4 (near-ties may legitimately swap between fp32 and fp64)."""
    x = _decaying(batch, n, d, seed=3 * n + d)
    cfg = _cfg(x, sketch_size=l, power_iters=q, energy=energy, seed=11, max_tokens=min(n, l + 3))
    got = run_backend("triton", x, cfg, None)
    ref = run_backend("reference", x, cfg, None)
    ok = _check_against_reference(got, ref, cfg)
    _check_padding(got, x, cfg)
    assert_keeps_top_leverage(got, x, cfg, torch.nonzero(ok).flatten().tolist())


@cpu_interp
def test_budget_only_matches_reference_and_is_one_launch(monkeypatch):
    launches = []
    cls = type(tb._eadaprune_kernel)
    real_run = cls.run

    def counting_run(self, *args, **kwargs):
        launches.append(self)
        return real_run(self, *args, **kwargs)

    monkeypatch.setattr(cls, "run", counting_run)
    x = _decaying(3, 64, 96, seed=5)
    cfg = _cfg(x, sketch_size=16, power_iters=2, energy=0.95)
    got = run_backend("triton", x, cfg, select=False)
    assert len(launches) == 1
    ref = run_backend("reference", x, cfg, select=False)
    _check_against_reference(got, ref, cfg)
    assert got.budgets.dtype == torch.int32 and got.saturated.dtype == torch.bool
    run_backend("triton", x, cfg, None)
    run_backend("triton", x, cfg, torch.randn(3, 64))
    assert len(launches) == 3


@cpu_interp
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64], ids=str)
def test_dtypes(dtype):
    x = _decaying(3, 64, 96, seed=9, dtype=dtype)
    scores = torch.randn(3, 64, dtype=dtype, generator=None)
    cfg = _cfg(x, sketch_size=16, power_iters=1, energy=0.9, max_tokens=20)
    got = run_backend("triton", x, cfg, scores)
    ref = run_backend("reference", x, cfg, scores)
    ok = _check_against_reference(got, ref, cfg)
    _check_padding(got, x, cfg)
    assert got.tokens.dtype == dtype
    assert torch.equal(got.indices[ok], ref.indices[ok])
    assert torch.equal(got.tokens[ok], ref.tokens[ok])  # bit-exact copy of the input rows


@cpu_interp
def test_power_of_two_scale_invariance_and_no_overflow():
    x = _decaying(2, 64, 96, seed=13, decay=1.0)
    cfg = _cfg(x, sketch_size=16, power_iters=1, energy=0.8)
    base = run_backend("triton", x, cfg, select=False)
    for k in (-100, 60, 120):  # 2^120 * x: ||X||_F^2 would overflow fp32 without the scaling
        y = x * 2.0**k
        got = run_backend("triton", y, cfg, select=False)
        assert torch.equal(got.budgets, base.budgets)
        assert torch.equal(got.saturated, base.saturated)
        torch.testing.assert_close(got.singular_values, base.singular_values * 2.0**k, rtol=0, atol=0)
    y = x * 1e30  # not a power of two: same budgets as the reference
    cfg_y = _cfg(y, sketch_size=16, power_iters=1, energy=0.8)
    got, ref = run_backend("triton", y, cfg_y, select=False), run_backend("reference", y, cfg_y, select=False)
    _check_against_reference(got, ref, cfg_y)
    assert torch.all(torch.isfinite(got.singular_values))  # E itself exceeds float32, as in the reference
    assert torch.equal(got.total_energy, ref.total_energy)


@cpu_interp
def test_flat_zero_and_low_rank_images():
    n, d = 64, 96
    x = torch.empty(4, n, d)
    x[0] = torch.randn(d)  # every token equal: flat
    x[1] = 0.0  # zero image: flat
    x[2] = torch.randn(n, 5) @ torch.randn(5, d)  # rank 5, uncentred rank 5
    x[3] = torch.randn(n, d)
    cfg = _cfg(x, sketch_size=16, power_iters=2, energy=1.0, min_tokens=2, center=False)
    got = run_backend("triton", x, cfg, select=False)
    ref = run_backend("reference", x, cfg, select=False)
    _check_against_reference(got, ref, cfg)
    assert got.budgets[2] == 5 and ref.budgets[2] == 5  # energy=1.0: the numerical rank
    cfg = _cfg(x, sketch_size=16, power_iters=2, energy=0.9, min_tokens=2, max_tokens=40)
    got = run_backend("triton", x, cfg, None)
    ref = run_backend("reference", x, cfg, None)
    assert got.lengths[:2].tolist() == [2, 2] and not got.saturated[:2].any()
    assert torch.all(got.singular_values[:2] == 0) and torch.all(got.total_energy[:2] == 0)
    assert torch.equal(got.indices[:2], ref.indices[:2])  # flat: leverage 0, first tokens kept
    _check_padding(got, x, cfg)


@cpu_interp
def test_nonfinite_images_under_validate_false():
    x = _decaying(4, 64, 96, seed=17)
    scores = torch.randn(4, 64)
    x[1, 5, 7] = float("nan")
    x[2, 0, 0] = float("inf")
    scores[3, 9] = float("-inf")
    for s in (scores, None):
        got = api.adaptive_prune(x, s, sketch_size=16, power_iters=1, max_tokens=24, backend="triton",
                                 validate=False)
        ref = api.adaptive_prune(x, s, sketch_size=16, power_iters=1, max_tokens=24, backend="reference",
                                 validate=False)
        assert got.backend == "triton"
        bad = [1, 2, 3] if s is not None else [1, 2]
        assert got.saturated[bad].all() and torch.all(got.lengths[bad] == 24)
        assert torch.isnan(got.singular_values[bad]).all() and torch.isnan(got.total_energy[bad]).all()
        assert torch.equal(got.indices[bad], torch.arange(24).expand(len(bad), 24))
        assert torch.equal(got.indices[bad], ref.indices[bad])
        torch.testing.assert_close(got.tokens[bad], ref.tokens[bad], equal_nan=True, rtol=0, atol=0)
        assert torch.all(torch.isfinite(got.singular_values[0]))


def _poisoned_empty(real_empty):
    def empty(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        if t.dtype.is_floating_point:
            t.fill_(float("nan"))
        elif t.dtype == torch.bool:
            t.fill_(True)
        else:
            t.fill_(-12345)
        return t
    return empty


@cpu_interp
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("with_scores", [True, False], ids=["scores", "leverage"])
def test_every_output_element_is_written(monkeypatch, with_scores, dtype):
    """torch.empty (outputs and scratch) returns NaN / True / -12345: nothing may survive (bf16: the
    products read Omega, Q and W as 16-bit parts, from scratch of their own)."""
    x = _decaying(3, 64, 96, seed=19).to(dtype)
    x[0] = 1.0  # flat image: budget = min_tokens, much padding
    scores = torch.randn(3, 64) if with_scores else None
    cfg = _cfg(x, sketch_size=16, power_iters=1, energy=0.5, max_tokens=40)
    ref = run_backend("reference", x, cfg, scores)
    with monkeypatch.context() as patch:  # independent of any poisoning a conftest may add
        patch.setattr(torch, "empty", _poisoned_empty(torch.empty))
        got = run_backend("triton", x, cfg, scores)
    for name in ("tokens", "singular_values", "total_energy"):
        assert not torch.isnan(getattr(got, name)).any(), name
    assert not torch.any(got.indices == -12345) and not torch.any(got.lengths == -12345)
    ok = _check_against_reference(got, ref, cfg)
    _check_padding(got, x, cfg)
    assert torch.equal(got.saturated, ref.saturated)
    if with_scores:
        assert torch.equal(got.indices[ok], ref.indices[ok])


@cpu_interp
def test_sketch_matrix_center_false_and_strided_inputs():
    base = _decaying(2, 96, 64, seed=23)
    x = base.transpose(1, 2).contiguous().transpose(1, 2)  # same values, strides (N*D, 1, N)
    assert not x.is_contiguous()
    omega = torch.rand(16, 64).T  # not Gaussian, and a transposed view
    scores = torch.randn(2, 96)
    for center in (True, False):
        cfg = _cfg(x, sketch_size=16, power_iters=1, energy=0.9, sketch_matrix=omega, center=center)
        got = run_backend("triton", x, cfg, scores[:, :])
        ref = run_backend("reference", x, cfg, scores)
        ok = _check_against_reference(got, ref, cfg)
        assert torch.equal(got.indices[ok], ref.indices[ok])
        assert torch.equal(got.tokens[ok], ref.tokens[ok])


@cpu_interp
def test_budget_clamping_and_max_tokens_beyond_l():
    x = _decaying(2, 64, 96, seed=29, decay=4.0)
    cfg = _cfg(x, sketch_size=8, power_iters=2, energy=0.3, min_tokens=12, max_tokens=64)
    got = run_backend("triton", x, cfg, torch.arange(64.0).flip(0).expand(2, 64))
    assert torch.all(got.lengths == 12)
    assert torch.equal(got.indices[:, :12], torch.arange(12).expand(2, 12))
    _check_padding(got, x, cfg)
    cfg = _cfg(x, sketch_size=8, power_iters=2, energy=0.999, max_tokens=64)  # saturates at l=8
    got = run_backend("triton", x, cfg, select=False)
    assert got.saturated.all() and torch.all(got.budgets == 64)


def test_cpu_without_interpreter_and_without_triton_raise():
    """Subprocesses: CPU tensors without TRITON_INTERPRET -> RuntimeError; no triton -> ImportError."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    code = (
        "import torch\n"
        "from eadaprune_kernels.backends import triton_kernel as tb\n"
        "from eadaprune_kernels.contract import make_config\n"
        "x = torch.randn(1, 8, 8)\n"
        "cfg = make_config(n=8, d=8, device=x.device, energy=0.9, center=True, sketch_size=4, power_iters=1,"
        " min_tokens=1, max_tokens=None, seed=0, sketch_matrix=None)\n"
        "try:\n"
        "    tb.run(x, None, None, cfg, None, False)\n"
        "except RuntimeError as e:\n"
        "    assert 'TRITON_INTERPRET=1' in str(e), e\n"
        "    print('RUNTIME_OK')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert "RUNTIME_OK" in out.stdout, out.stdout + out.stderr
    code = (
        "import sys\n"
        "sys.modules['triton'] = None\n"
        "try:\n"
        "    import eadaprune_kernels.backends.triton_kernel\n"
        "except ImportError as e:\n"
        "    assert 'triton' in str(e), e\n"
        "    print('IMPORT_OK')\n"
        "from eadaprune_kernels.backends import available_backends\n"
        "assert 'triton' not in available_backends('cuda')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert "IMPORT_OK" in out.stdout and out.returncode == 0, out.stdout + out.stderr


# ---------------------------------------------------------------------------------------- GPU ---

# No TF32 anywhere (kernel_settings): the GPU is held to the same 1e-4 of sigma_1 as the emulation.
GPU_TOL = {torch.float32: 1e-4, torch.float16: 1e-4, torch.bfloat16: 1e-4}


@gpu
@pytest.mark.parametrize("d", [1024, 4096])
@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_gpu_matches_reference(d, batch, dtype):
    x = _decaying(batch, 576, d, seed=d + batch, device="cuda", dtype=dtype)
    scores = torch.randn(batch, 576, device="cuda")
    cfg = _cfg(x, sketch_size=128, power_iters=2, energy=0.99, max_tokens=256)
    got = run_backend("triton", x, cfg, scores)
    ref = run_backend("reference", x, cfg, scores)
    assert_matches_reference(got, ref, cfg.energy, dtype, sigma_tol=GPU_TOL[dtype], same_selection=True)
    check_result_invariants(got, x, cfg.min_tokens, cfg.max_tokens)


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_gpu_exact_low_rank_gets_its_rank_at_energy_one(dtype):
    """On the tensor cores as in the emulation (tests/test_triton_numerics.py): integer rank-5 images,
    exact in every dtype, at energy=1.0 keep exactly 5 tokens (plain TF32 saturated them)."""
    x = make_tokens(4, 576, 1024, "integer", rank=5, seed=5, dtype=dtype, device="cuda")
    cfg = _cfg(x, sketch_size=128, power_iters=2, energy=1.0)
    got = run_backend("triton", x, cfg, select=False)
    assert got.budgets.tolist() == [5] * 4 and not bool(got.saturated.any()), got.budgets.tolist()


@gpu
def test_gpu_cuda_graph_and_no_sync():
    x = _decaying(8, 576, 1024, seed=1, device="cuda", dtype=torch.bfloat16)
    cfg = _cfg(x, sketch_size=128, power_iters=2, energy=0.99)
    eager = run_backend("triton", x, cfg, None)  # compiles outside the capture
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        run_backend("triton", x, cfg, None)
        api.adaptive_prune(x, backend="triton", validate=False, sketch_size=128)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    static_x = x.clone()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = run_backend("triton", static_x, cfg, None)
    static_x.copy_(x.flip(1))
    graph.replay()
    torch.cuda.synchronize()
    direct = run_backend("triton", x.flip(1), cfg)
    assert torch.equal(out.lengths, direct.lengths)
    assert torch.equal(out.indices, direct.indices)
    assert torch.equal(out.singular_values, direct.singular_values)
    assert eager.lengths.shape == (8,)


@cpu_interp
def test_repeated_singular_values_stay_lower_bounds():
    """A step spectrum (five equal sigma, then a plateau): the parallel Jacobi must use one angle per
    pair (regression: rounding asymmetry of H gave t = +1 / -1 and sigma_1 = 1.42 for 1.0), and
    every sketched sigma_j is a lower bound of the exact one."""
    g = torch.Generator().manual_seed(31)
    n, d, r = 64, 96, 40
    u = torch.linalg.qr(torch.randn(n, r, generator=g, dtype=torch.float64)).Q
    u = u - u.mean(0, keepdim=True)  # centred columns: the spectrum survives centring
    u = torch.linalg.qr(u).Q
    v = torch.linalg.qr(torch.randn(d, r, generator=g, dtype=torch.float64)).Q
    sig = torch.cat([torch.ones(5), torch.full((20,), 0.1), torch.full((15,), 0.003)]).double()
    x = ((u * sig) @ v.T + 0.25)[None].float().repeat(2, 1, 1)
    cfg = _cfg(x, sketch_size=16, power_iters=2, energy=0.99)
    got = run_backend("triton", x, cfg, select=False)
    ref = run_backend("reference", x, cfg, select=False)
    _check_against_reference(got, ref, cfg)
    exact = exact_svdvals(x)[:, :16].float()
    assert torch.all(got.singular_values <= exact * (1 + 1e-5) + 1e-6), (got.singular_values - exact).max()


@cpu_interp
def test_sketch_sizes_above_the_limit_go_to_another_backend(monkeypatch):
    """l > MAX_SKETCH_SIZE (256) is not compiled: named -> error, auto -> next backend."""
    from eadaprune_kernels import backends
    from eadaprune_kernels.backends import BackendUnavailable

    assert tb.MAX_SKETCH_SIZE == 256
    x = torch.randn(1, 300, 280)
    with pytest.raises(BackendUnavailable, match=r"backend 'triton' takes l = .* up to 256 .*got l = 257"):
        api.adaptive_prune(x, sketch_size=257, backend="triton")
    monkeypatch.setitem(backends.AUTO_ORDER, "cpu", ("triton", "reference"))
    assert api.spectral_budget(x, sketch_size=257).backend == "reference"
    assert api.spectral_budget(x[:, :20, :12], sketch_size=8).backend == "triton"
    assert backends.available_backends("cpu", sketch_size=257) == ["reference"]


@cpu_interp
def test_sketch_of_256_columns_matches_reference():
    """l = 256 (LP = 256: the l x l work through global scratch) against the reference."""
    x = _decaying(1, 300, 280, seed=11)
    scores = torch.randn(1, 300, generator=torch.Generator().manual_seed(2))
    cfg = _cfg(x, sketch_size=256, power_iters=1, energy=0.99, max_tokens=280)
    assert tb.kernel_settings(x.dtype, 256)["LP"] == 256
    got = run_backend("triton", x, cfg, scores)
    ref = run_backend("reference", x, cfg, scores)
    ok = _check_against_reference(got, ref, cfg)
    _check_padding(got, x, cfg)
    assert torch.equal(got.indices[ok], ref.indices[ok])


@triton.jit
def _decode_stages(OUT, q, MID: tl.constexpr, FIN: tl.constexpr, LEVERAGE: tl.constexpr, SMAX: tl.constexpr):
    o = tl.arange(0, SMAX)
    kind, side, gram = _stage_info(o, q, MID, FIN, LEVERAGE)
    tl.store(OUT + 3 * o, kind)
    tl.store(OUT + 3 * o + 1, side)
    tl.store(OUT + 3 * o + 2, gram)


@cpu_interp
@pytest.mark.parametrize("q", [0, 1, 2, 3])
@pytest.mark.parametrize("leverage, select", [(True, True), (False, True), (False, False)])
def test_the_kernels_stage_decoder_is_the_launchers_stage_list(q, leverage, select):
    """The kernel decodes an image's stages arithmetically (_stage_info); the launcher sizes the
    counters and the grid from stage_list: the two must be the same sequence."""
    settings = tb.kernel_settings(torch.float32, 16)
    for mid, fin in ((settings["MID_PASSES"], settings["FIN_PASSES"]), (1, 1), (2, 3)):
        stages = tb.stage_list(q, mid, fin, leverage, select)
        smax = 1 << (len(stages) - 1).bit_length()
        out = torch.full((3 * smax,), -1, dtype=torch.int32)
        _decode_stages[(1,)](out, q, MID=mid, FIN=fin, LEVERAGE=leverage, SMAX=smax)
        decoded = [tuple(out[3 * s:3 * s + 3].tolist()) for s in range(len(stages))]
        assert decoded == stages, (q, mid, fin, leverage, select)


@triton.jit
def _wait_never_satisfied(cnt, target, CNT, MAX_WAITS: tl.constexpr):
    tl.atomic_add(CNT + 2, 1)  # CNT[_C_WAITS]: as wait_for records a wait that cannot end


@cpu_interp
def test_programs_run_in_ticket_order_never_wait_and_a_wait_is_reported(monkeypatch):
    """Run one program at a time (the interpreter), every task finds the stage it depends on done:
    the launcher checks the recorded waits after every interpreted launch (dense and ragged here,
    with a one-token image); a scheduler that has to wait is reported, not silently wrong."""
    assert tb._C_WAITS == 2
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 40, 24, generator=g)
    cfg = _cfg(x, sketch_size=8, power_iters=2)
    run_backend("triton", x, cfg)  # raises if a task waited
    packed = torch.randn(70, 24, generator=g)
    cu = torch.tensor([0, 30, 31, 70])
    api.adaptive_prune(packed, cu_seqlens=cu, sketch_size=8, backend="triton")
    monkeypatch.setattr(tb, "wait_for", _wait_never_satisfied)
    with pytest.raises(RuntimeError, match=r"had to wait when the programs ran one at a time"):
        run_backend("triton", x, cfg)


@cpu_interp
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("ragged", [False, True], ids=["dense", "ragged"])
def test_workspace_bytes_is_what_a_launch_allocates(monkeypatch, ragged, dtype):
    """workspace_bytes (what the README's scratch figures come from) counts every scratch buffer the
    launcher makes: all it allocates minus its outputs (16-bit tokens add the products' 16-bit parts)."""
    g = torch.Generator().manual_seed(8)
    x = torch.randn(3, 40, 24, generator=g).to(dtype)
    cfg = _cfg(x, sketch_size=8, power_iters=2, max_tokens=10)
    tokens, cu = (x.reshape(-1, 24), torch.tensor([0, 40, 80, 120])) if ragged else (x, None)
    allocated = []

    def counting(real):
        def make(*args, **kwargs):
            t = real(*args, **kwargs)
            allocated.append(t.numel() * t.element_size())
            return t
        return make

    monkeypatch.setattr(torch, "empty", counting(torch.empty))
    monkeypatch.setattr(torch, "zeros", counting(torch.zeros))
    outputs = tb._launch(tokens, None, cfg, True, None, cu)
    monkeypatch.undo()
    output_bytes = sum(t.numel() * t.element_size() for t in outputs)
    settings = tb.kernel_settings(x.dtype, cfg.sketch_size)
    n = tokens.shape[0] if ragged else 40
    plan = tb.launch_plan(batch=3, n=n, d=24, settings=settings, ragged=ragged, power_iters=2, leverage=True,
                          select=True)
    assert sum(allocated) - output_bytes == tb.workspace_bytes(batch=3, n=n, d=24, settings=settings, plan=plan,
                                                               ragged=ragged, dtype=dtype)
