"""The native CUDA backend (eadaprune_kernels._C_cuda) against the float64 reference.

Needs a CUDA device and the built extension; skipped otherwise (the CPU CI checks that the extension
compiles and links with tools/check_cuda_build.sh instead).
"""

from __future__ import annotations

import pytest
import torch

import eadaprune_kernels as ek
from eadaprune_kernels.sketch import gaussian_sketch

from helpers import assert_matches_reference, make_tokens

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture(scope="module")
def cuda_ext():
    return pytest.importorskip("eadaprune_kernels._C_cuda", reason="CUDA extension not built")


def tokens(batch, n, d, *, decay=0.6, dtype=torch.float32, seed=0):
    return make_tokens(batch, n, d, "geometric", decay=decay, dtype=dtype, seed=seed)


def compare(out, ref, energy):
    assert_matches_reference(out, ref, energy)


def direct(ext, x, *, cu_seqlens=None, scores=None, sketch_size, max_tokens, budgets=None, select=True, energy=0.9,
           power_iters=1, min_tokens=1, seed=0, sketch_matrix=None):
    """The extension's one entry point (resolved sketch_size and max_tokens)."""
    return ext.run(x, cu_seqlens, scores, sketch_matrix, budgets, energy, True, sketch_size, power_iters, min_tokens,
                   max_tokens, seed, select)


def test_sketch_matches_python_stream(cuda_ext):
    torch.testing.assert_close(cuda_ext.gaussian_sketch(1024, 16, 7).cpu(), gaussian_sketch(1024, 16, 7),
                               rtol=4e-7, atol=4e-7)


@pytest.mark.parametrize("shape", [(1, 1, 5, 4), (3, 7, 5, 4), (3, 64, 96, 32), (1, 577, 130, 128), (3, 200, 1, 1)],
                         ids=str)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64], ids=str)
def test_matches_reference(cuda_ext, shape, dtype):
    b, n, d, l = shape
    x = tokens(b, n, d, dtype=dtype, seed=n + d)
    scores = torch.randn(b, n, generator=torch.Generator().manual_seed(3))
    for sc in (None, scores):
        kw = dict(energy=0.9, sketch_size=l)
        ref = ek.adaptive_prune(x, sc, backend="reference", **kw)
        out = ek.adaptive_prune(x.cuda(), None if sc is None else sc.cuda(), backend="cuda", **kw)
        assert out.backend == "cuda" and out.tokens.dtype == dtype
        compare(out, ref, 0.9)
        if sc is not None and torch.equal(out.lengths.cpu(), ref.lengths):
            assert torch.equal(out.indices.cpu(), ref.indices)
        mask = out.mask.cpu()
        assert torch.equal(mask, torch.arange(mask.shape[1])[None] < out.lengths.cpu()[:, None].long())
        assert torch.all(out.indices.cpu()[~mask] == -1) and torch.all(out.tokens.cpu()[~mask] == 0)


def test_flat_nonfinite_and_override(cuda_ext):
    x = tokens(4, 64, 96, seed=1)
    x[0] = x[0, :1]
    x[1, 2, 3] = float("nan")
    omega = torch.randn(96, 8, dtype=torch.float64)
    kw = dict(energy=0.9, sketch_size=8, max_tokens=12, validate=False, sketch_matrix=omega)
    ref = ek.adaptive_prune(x, backend="reference", **kw)
    kw["sketch_matrix"] = omega.cuda()
    out = ek.adaptive_prune(x.cuda(), backend="cuda", **kw)
    compare(out, ref, 0.9)
    assert torch.equal(out.indices.cpu()[:2], ref.indices[:2]) and bool(out.saturated[1])


def test_cpp_boundary(cuda_ext):
    with pytest.raises(ValueError, match="tokens: expected a cuda tensor"):
        direct(cuda_ext, torch.zeros(2, 4, 3), sketch_size=2, max_tokens=2)
    x = torch.zeros(2, 4, 3, device="cuda")
    with pytest.raises(ValueError, match="scores: expected device"):
        direct(cuda_ext, x, scores=torch.zeros(2, 4), sketch_size=2, max_tokens=2)
    with pytest.raises(TypeError, match="energy"):
        cuda_ext.run(x, None, None, None, None, "0.9", True, 2, 1, 1, 2, 0, False)
    with pytest.raises(ValueError, match="max_tokens"):
        direct(cuda_ext, x, sketch_size=2, max_tokens=5, select=False)
    with pytest.raises(ValueError, match=r"cu_seqlens: expected cu_seqlens\[-1\] = 8"):
        direct(cuda_ext, x.reshape(8, 3), cu_seqlens=torch.tensor([0, 3, 7], device="cuda"), sketch_size=2,
               max_tokens=2)


def test_empty_batch_through_the_extension(cuda_ext):
    """B = 0 used to launch kernels with an empty grid ("invalid configuration argument")."""
    x = torch.zeros(0, 6, 4, device="cuda")
    budgets, sigma, energy, saturated = direct(cuda_ext, x, sketch_size=4, max_tokens=4, select=False)
    assert budgets.shape == (0,) and sigma.shape == (0, 4) and energy.shape == (0,) and saturated.shape == (0,)
    kept, indices, lengths, mask, *_ = direct(cuda_ext, x, sketch_size=4, max_tokens=4)
    assert kept.shape == (0, 4, 4) and indices.shape == (0, 4) and lengths.shape == (0,) and mask.shape == (0, 4)


def test_budgets_outside_their_range_are_clamped_on_the_device(cuda_ext):
    """A direct caller's budgets are not read on the host (no sync): each is clamped to [0, M] on the
    device, so the selection never writes past an image's M slots."""
    x = tokens(3, 64, 96, seed=4).cuda()
    budgets = torch.tensor([-5, 7, 1000], dtype=torch.int32, device="cuda")
    kept, indices, lengths, mask, *_ = direct(cuda_ext, x, sketch_size=16, max_tokens=12, budgets=budgets)
    torch.cuda.synchronize()
    assert lengths.cpu().tolist() == [0, 7, 12]
    assert mask.cpu().sum(1).tolist() == [0, 7, 12]
    assert bool((indices.cpu()[0] == -1).all()) and bool((indices.cpu()[2] >= 0).all())


@pytest.mark.parametrize("setting", ["allow_tf32", "high", "medium"])
def test_results_do_not_depend_on_the_tf32_setting(cuda_ext, setting):
    """The fp32 GEMMs run in IEEE fp32 whatever the process-wide TF32 setting (csrc/common/precision_guard.h)."""
    x = tokens(4, 576, 1024, decay=0.97, seed=6).cuda()
    base = ek.adaptive_prune(x, backend="cuda", energy=0.99)
    before_flag, before_precision = torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision()
    try:
        if setting == "allow_tf32":
            torch.backends.cuda.matmul.allow_tf32 = True
        else:
            torch.set_float32_matmul_precision(setting)
        got = ek.adaptive_prune(x, backend="cuda", energy=0.99)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before_flag
        torch.set_float32_matmul_precision(before_precision)
    for name in ("singular_values", "total_energy", "lengths", "indices"):
        assert torch.equal(getattr(got, name), getattr(base, name)), name


@pytest.mark.parametrize("d", [1024, 4096])
@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_production_shapes_match_reference(cuda_ext, d, batch, dtype):
    x = tokens(batch, 576, d, decay=0.97, dtype=dtype, seed=d + batch)
    ref = ek.adaptive_prune(x, backend="reference", energy=0.99, max_tokens=256)
    out = ek.adaptive_prune(x.cuda(), backend="cuda", energy=0.99, max_tokens=256)
    compare(out, ref, 0.99)


def test_small_shapes_for_the_sanitizer(cuda_ext):
    """Every kernel of the CUDA backend on small shapes (tools/gpu_check.sh runs this test under
    compute-sanitizer memcheck, racecheck and synccheck): dense with leverage and with scores, a budget
    override, flat and non-finite images, ragged input, an empty batch."""
    x = tokens(3, 40, 24, seed=8).cuda()
    x[1] = x[1, :1]  # flat
    scores = torch.randn(3, 40, device="cuda")
    for sc in (None, scores):
        out = ek.adaptive_prune(x, sc, backend="cuda", sketch_size=8, max_tokens=12)
        assert out.lengths.shape == (3,)
    shares = torch.tensor([3, 12, 5], dtype=torch.int32, device="cuda")
    direct(cuda_ext, x, sketch_size=8, max_tokens=12, budgets=shares)
    y = x.clone()
    y[2, 0, 0] = float("nan")
    ek.adaptive_prune(y, backend="cuda", sketch_size=8, validate=False)
    images = [tokens(1, n, 24, seed=n)[0].cuda() for n in (7, 40, 40, 3)]
    out = ek.adaptive_prune(images, backend="cuda", sketch_size=8)
    assert out.lengths.shape == (4,)
    direct(cuda_ext, torch.zeros(0, 5, 4, device="cuda"), sketch_size=4, max_tokens=4, select=False)
    torch.cuda.synchronize()
