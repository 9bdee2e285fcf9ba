"""The fused Triton kernel computes the right answer with the arithmetic of an sm_90 GPU.

The interpreter computes every tl.dot in full fp32; an H100/H200 truncates TF32 operands. On CPU
machines tests/conftest.py runs every test under :func:`eadaprune_kernels.backends.triton_interpreter.
emulate_sm90_dot`, so these tests see what the GPU computes:

* the emulation itself (TF32 truncation, Triton's 3xTF32 split, exact 16-bit products, bf16 casts);
* the emulation catches plain TF32 products on a bf16 image (the kernel's former precision), which
  the plain interpreter cannot;
* exact low-rank images at energy=1.0 get their rank, decaying spectra with an energy gap >= 1e-3 get
  exact SVD's budget, and the sketched singular values are within 1e-4 of sigma_1 of the reference's,
  for every input dtype;
* production shapes (N=576, D=1024, l=128, q=2, bf16 and fp32) and a ragged batch with an N=2880
  image against the reference (marked slow: about a minute each on a 2-core CPU; CI runs them).
"""

from __future__ import annotations

import inspect
import os

import numpy as np
import pytest
import torch

triton = pytest.importorskip("triton")
tl = triton.language

from eadaprune_kernels import adaptive_prune, exact_budget, exact_svdvals  # noqa: E402
from eadaprune_kernels.backends import triton_kernel as tb  # noqa: E402
from eadaprune_kernels.backends.triton_interpreter import (  # noqa: E402
    emulate_sm90_dot, install_bf16_fix, round_fp32_to_bf16_bits, round_to_tf32, sm90_dot, truncate_to_tf32)

from helpers import assert_keeps_top_leverage, assert_matches_reference, config, make_tokens, run_backend  # noqa: E402

INTERPRETED = tb._interpreting()
cpu_interp = pytest.mark.skipif(not INTERPRETED, reason="needs the Triton interpreter (a machine without CUDA)")
DTYPES = [torch.bfloat16, torch.float16, torch.float32]
DTYPE_IDS = ["bf16", "fp16", "fp32"]


def _cfg(x, **kw):
    """This file's defaults: energy 1.0, l = 16, q = 2, seed 3."""
    return config(x, **{"energy": 1.0, "sketch_size": 16, "power_iters": 2, "seed": 3, **kw})


def _exponential(batch, n, d, dtype, seed, rate=0.25, rank=None, scale=1.0):
    """Images with the spectrum scale * exp(-rate j) (before rounding to dtype) and a mean token of
    N(0, 9) entries. Rounding to bf16 adds noise of ~2^-9 |x| per entry: at N * D ~ 6e5 a ``scale``
    of ~200 keeps that below 1e-4 of the energy."""
    return make_tokens(batch, n, d, "exponential", rate=rate, rank=rank, scale=scale, seed=seed, dtype=dtype)


# ---- the emulation ----------------------------------------------------------------------------


def test_truncate_to_tf32_drops_the_low_13_bits_toward_zero():
    x = np.array([1 + 2**-10, 1 + 2**-11, -(1 + 2**-11 + 2**-12), 3.0, 0.0], dtype=np.float32)
    expected = np.array([1 + 2**-10, 1.0, -1.0, 3.0, 0.0], dtype=np.float32)
    np.testing.assert_array_equal(truncate_to_tf32(x), expected)


def test_round_to_tf32_is_nearest_with_ties_away_from_zero():
    x = np.array([1 + 2**-11, -(1 + 2**-11), 1 + 2**-12, 1 + 3 * 2**-12, np.inf, -np.inf], dtype=np.float32)
    expected = np.array([1 + 2**-10, -(1 + 2**-10), 1.0, 1 + 2**-10, np.inf, -np.inf], dtype=np.float32)
    np.testing.assert_array_equal(round_to_tf32(x), expected)
    assert np.isnan(round_to_tf32(np.array([np.nan], dtype=np.float32))).all()


def test_bf16_rounding_matches_torch():
    x = torch.randn(50_000) * torch.logspace(-20, 20, 50_000)
    expected = x.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(round_fp32_to_bf16_bits(x.numpy()), expected)


@triton.jit
def _cast_to_bf16(X, Y, N: tl.constexpr, BLOCK: tl.constexpr):
    o = tl.arange(0, BLOCK)
    tl.store(Y + o, tl.load(X + o, mask=o < N).to(tl.bfloat16), mask=o < N)


def _interpreted_bf16_cast(x: torch.Tensor) -> torch.Tensor:
    y = torch.empty(x.shape[0], dtype=torch.bfloat16)
    _cast_to_bf16[(1,)](x, y, N=x.shape[0], BLOCK=triton.next_power_of_2(x.shape[0]))
    return y


@cpu_interp
def test_the_backends_interpreter_fix_rounds_bf16_casts_to_nearest_even(monkeypatch):
    """The plain interpreter truncates fp32 -> bf16 casts; install_bf16_fix (every interpreted launch
    installs it) rounds them to nearest even as cvt.rn.bf16.f32 does: the kernel splits its fp32
    operands into bf16 parts with such casts, and truncated parts would bias every product low."""
    from triton.runtime.interpreter import InterpreterBuilder

    monkeypatch.setattr(InterpreterBuilder, "create_fp_trunc", inspect.unwrap(InterpreterBuilder.create_fp_trunc))
    # 1 + 3/4 ulp (up), 1 + 1/2 ulp (a tie: to even), just above a tie (up), a negative, an exact value
    x = torch.tensor([1 + 3 * 2**-9, 1 + 2**-8, 1 + 2**-8 + 2**-20, -(1 + 3 * 2**-9), 3.0], dtype=torch.float32)
    nearest = x.to(torch.bfloat16)
    assert nearest.float().tolist() == [1 + 2**-7, 1.0, 1 + 2**-7, -(1 + 2**-7), 3.0]
    plain = _interpreted_bf16_cast(x)
    assert plain.float().tolist() == [1.0, 1.0, 1.0, -1.0, 3.0], "the plain interpreter truncates"
    install_bf16_fix()
    assert torch.equal(_interpreted_bf16_cast(x), nearest)


def test_sm90_dot_rounds_operands_per_precision():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(64, 256, generator=g).numpy() + 0.5  # positive: truncation biases every product low
    b = torch.rand(256, 32, generator=g).numpy() + 0.5
    exact = a.astype(np.float64) @ b.astype(np.float64)
    zero = np.zeros((64, 32), dtype=np.float32)

    def rel(precision):
        got = sm90_dot(a, tl.float32, b, tl.float32, zero, precision).astype(np.float64)
        return (got - exact) / np.abs(exact)

    tf32 = rel("tf32")
    assert tf32.max() < 0 and -3e-3 < tf32.mean() < -2e-4, (tf32.min(), tf32.mean())  # biased low
    assert np.abs(rel("tf32x3")).max() < 1e-6
    assert np.abs(rel("ieee")).max() < 1e-6
    # 16-bit operands: exact products, fp32 sums
    a16, b16 = torch.from_numpy(a).to(torch.bfloat16), torch.from_numpy(b).to(torch.bfloat16)
    got = sm90_dot(a16.view(torch.int16).numpy().view(np.uint16), tl.bfloat16,
                   b16.view(torch.int16).numpy().view(np.uint16), tl.bfloat16, zero, "tf32")
    exact16 = a16.double().numpy() @ b16.double().numpy()
    assert np.abs(got - exact16).max() / np.abs(exact16).max() < 1e-6


@cpu_interp
def test_every_test_runs_under_the_emulation():
    from triton.runtime.interpreter import InterpreterBuilder

    if os.environ.get("EADAPRUNE_EMULATE_SM90", "1") == "0":
        pytest.skip("EADAPRUNE_EMULATE_SM90=0: the plain interpreter was asked for")
    assert getattr(InterpreterBuilder.create_dot, "emulates_sm90", False)


# ---- what the emulation catches -----------------------------------------------------------------


@cpu_interp
def test_plain_tf32_products_fail_under_the_emulation_only(monkeypatch):
    """The kernel's former choice for 16-bit tokens (centred fp32 X times fp32 operands in plain TF32)
    loses ~7e-4 of every singular value on sm_90: an exact rank-5 bf16 image at energy=1.0 saturates.
    The plain interpreter computes it in full fp32 and cannot see it; the shipped settings pass."""
    x = make_tokens(1, 64, 96, "integer", rank=5, seed=11, dtype=torch.bfloat16)
    cfg = _cfg(x)
    ref = run_backend("reference", x, cfg, select=False)
    assert int(ref.budgets) == 5
    shipped = tb.kernel_settings

    def plain_tf32(dtype, sketch_size, interpreted=False):
        return dict(shipped(dtype, sketch_size, interpreted), SPLIT16=False, PRESCALE16=False, XPREC="tf32")

    with emulate_sm90_dot(True):
        good = run_backend("triton", x, cfg, select=False)
    monkeypatch.setattr(tb, "kernel_settings", plain_tf32)
    with emulate_sm90_dot(True):
        wrong = run_backend("triton", x, cfg, select=False)
    with emulate_sm90_dot(False):
        blind = run_backend("triton", x, cfg, select=False)
    sigma_1 = ref.singular_values.max()
    assert int(good.budgets) == 5 and not bool(good.saturated)
    assert int(blind.budgets) == 5, "the plain interpreter computes plain TF32 in full fp32"
    assert bool(wrong.saturated) and int(wrong.budgets) == cfg.max_tokens
    low = (ref.singular_values - wrong.singular_values)[0, :5] / sigma_1
    assert bool((low > 1e-4).all()), f"TF32 truncation should put sigma low by ~7e-4: {low.tolist()}"


# ---- correctness under the emulation --------------------------------------------------------------


@cpu_interp
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("rank", [1, 3, 8])
def test_exact_low_rank_images_get_their_rank_at_energy_one(dtype, rank):
    x = make_tokens(3, 64, 96, "integer", rank=rank, seed=rank * 7 + 1, dtype=dtype)
    cfg = _cfg(x)
    got = run_backend("triton", x, cfg, select=False)
    exact = exact_budget(x, energy=1.0)
    assert exact.tolist() == [rank] * 3
    assert got.budgets.tolist() == [rank] * 3, (got.budgets.tolist(), got.saturated.tolist())
    assert not bool(got.saturated.any())


@cpu_interp
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_budgets_equal_exact_svd_where_the_energy_gap_is_at_least_1e_3(dtype):
    x = _exponential(2, 128, 96, dtype, seed=5)
    exact_sigma = exact_svdvals(x)  # of the dtype-rounded tokens
    total = exact_sigma.square().sum(1)
    cum = torch.cumsum(exact_sigma.square(), 1) / total[:, None]
    checked = 0
    for k in (2, 4, 7, 10):  # budgets well inside l = 32 (q = 2 converges there)
        gap = cum[:, k] - cum[:, k - 1]
        if not bool((gap >= 1e-3).all()):
            continue
        energy = float(((cum[:, k - 1] + cum[:, k]) / 2).min())
        if not bool(((cum[:, k - 1] < energy) & (energy < cum[:, k])).all()):
            continue
        cfg = _cfg(x, energy=energy, sketch_size=32)
        got = run_backend("triton", x, cfg, select=False)
        expected = exact_budget(x, energy=energy)
        assert torch.equal(got.budgets.long(), expected), (energy, got.budgets.tolist(), expected.tolist())
        checked += 1
    assert checked >= 2, "no budget with an energy gap >= 1e-3 was checked"


@cpu_interp
@pytest.mark.parametrize("dtype", DTYPES + [torch.float64], ids=DTYPE_IDS + ["fp64"])
def test_sketched_singular_values_within_1e_4_of_the_reference(dtype):
    x = _exponential(3, 96, 130, dtype, seed=17, rate=0.1)
    cfg = _cfg(x, energy=0.99, sketch_size=32)
    got = run_backend("triton", x, cfg, select=False)
    ref = run_backend("reference", x, cfg, select=False)
    assert_matches_reference(got, ref, cfg.energy, sigma_tol=1e-4)


# ---- production shapes ------------------------------------------------------------------------------


@cpu_interp
@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_production_shape_576x1024_l128_q2(dtype):
    """One LLaVA-1.5 image (N=576, D=1024) with the defaults l=128, q=2: leverage selection for bf16,
    given scores for fp32 (both selection paths at full size)."""
    x = _exponential(1, 576, 1024, dtype, seed=576, rate=0.06, rank=300, scale=200.0)
    scores = None if dtype == torch.bfloat16 else torch.randn(1, 576, generator=torch.Generator().manual_seed(1))
    cfg = _cfg(x, energy=0.95, sketch_size=128, power_iters=2)
    got = run_backend("triton", x, cfg, scores)
    ref = run_backend("reference", x, cfg, scores)
    ok = assert_matches_reference(got, ref, cfg.energy, sigma_tol=1e-4)
    k = int(got.lengths[0])
    assert 10 < k < 128 and not bool(got.saturated[0])
    if scores is not None:
        assert torch.equal(got.indices[ok], ref.indices[ok]) and torch.equal(got.tokens[ok], ref.tokens[ok])
    else:  # leverage: the kept tokens are the top-k by the float64 leverage, up to near-ties (1e-4)
        assert_keeps_top_leverage(got, x, cfg, [0])


@cpu_interp
@pytest.mark.parametrize("data_seed, sketch_seed", [(302, 4), (303, 4)])
def test_large_mean_keeps_small_singular_values(data_seed, sketch_seed):
    """bf16, a mean of 8-9 sigma_1 (|mu| sqrt(N) / sigma_1), l = 128 > D = 64: the smallest singular
    values (~3e-4 sigma_1, the bf16 rounding's floor) within 5e-5 sigma_1 of the reference. The 16-bit
    products take Q and W as 16-bit parts; when the rank-1 mean correction summed the fp32 rows instead
    of what the parts stand for, the difference mu 1^T (Q~ - Q) put 1.3e-4 and 2.1e-4 sigma_1 errors on
    them at these seeds (now 7e-7 and 2.3e-5, interpreter; triton_linalg.product_operand)."""
    x = _exponential(1, 300, 64, torch.bfloat16, seed=data_seed, rate=0.3, scale=50.0)
    kwargs = dict(energy=0.97, sketch_size=128, power_iters=2, seed=sketch_seed)
    got = adaptive_prune(x, backend="triton", **kwargs)
    ref = adaptive_prune(x, backend="reference", **kwargs)
    assert_matches_reference(got, ref, kwargs["energy"], sigma_tol=5e-5)


@cpu_interp
@pytest.mark.slow
def test_ragged_batch_with_an_n2880_image():
    """A LLaVA-NeXT-sized view group (N=2880) beside a small image, bf16, in one ragged launch."""
    images = [_exponential(1, 2880, 64, torch.bfloat16, seed=2880, rate=0.12, scale=200.0)[0],
              _exponential(1, 300, 64, torch.bfloat16, seed=300, rate=0.3, scale=50.0)[0]]
    kwargs = dict(energy=0.97, sketch_size=128, power_iters=2, seed=3)
    got = adaptive_prune(images, backend="triton", **kwargs)
    ref = adaptive_prune(images, backend="reference", **kwargs)
    assert_matches_reference(got, ref, kwargs["energy"], sigma_tol=1e-4)
    assert got.backend == "triton" and not bool(got.saturated.any()), got.lengths.tolist()
