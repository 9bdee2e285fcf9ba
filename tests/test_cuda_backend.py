"""The native CUDA backend (eadaprune_kernels._C_cuda) against the float64 reference.

Needs a CUDA device and the built extension; skipped otherwise (the CPU CI checks that the extension
compiles and links with tools/check_cuda_build.sh instead).
"""

from __future__ import annotations

import pytest
import torch

import eadaprune_kernels as ek
from eadaprune_kernels.reference import ENERGY_SLACK
from eadaprune_kernels.sketch import gaussian_sketch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture(scope="module")
def cuda_ext():
    module = pytest.importorskip("eadaprune_kernels.cuda_backend", reason="CUDA extension not built")
    return module._C_cuda


def tokens(batch, n, d, *, decay=0.6, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = min(n, d)
    u = torch.linalg.qr(torch.randn(batch, n, r, generator=g, dtype=torch.float64)).Q
    v = torch.linalg.qr(torch.randn(batch, d, r, generator=g, dtype=torch.float64)).Q
    s = decay ** torch.arange(r, dtype=torch.float64)
    x = (u * s) @ v.mT + 3.0 * torch.randn(batch, 1, d, generator=g, dtype=torch.float64)
    return x.to(dtype)


def compare(out, ref, energy):
    scale = ref.singular_values.abs().amax(-1, keepdim=True).clamp_min(1e-30)
    err = ((out.singular_values.cpu() - ref.singular_values).abs() / scale).nan_to_num(0.0)
    assert err.max().item() <= 1e-4
    torch.testing.assert_close(out.total_energy.cpu(), ref.total_energy, rtol=1e-5, atol=0, equal_nan=True)
    for b in range(ref.lengths.numel()):
        if int(out.lengths[b]) != int(ref.lengths[b]):
            cumulative = torch.cumsum(ref.singular_values[b].double().square(), 0)
            target = (energy - ENERGY_SLACK) * ref.total_energy[b].double()
            lo, hi = sorted((int(out.lengths[b]), int(ref.lengths[b])))
            assert ((cumulative[max(lo - 1, 0):hi] - target).abs() <= 1e-4 * ref.total_energy[b]).any()


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
        cuda_ext.adaptive_prune(torch.zeros(2, 4, 3), None, 0.9, True, 2, 1, 1, None, 0, None)
    x = torch.zeros(2, 4, 3, device="cuda")
    with pytest.raises(ValueError, match="scores: expected device"):
        cuda_ext.adaptive_prune(x, torch.zeros(2, 4), 0.9, True, 2, 1, 1, None, 0, None)
    with pytest.raises(TypeError, match="energy"):
        cuda_ext.spectral_budget(x, "0.9", True, 2, 1, 1, None, 0, None)
    with pytest.raises(ValueError, match="max_tokens"):
        cuda_ext.spectral_budget(x, 0.9, True, 2, 1, 1, 5, 0, None)


def test_empty_batch_through_the_extension(cuda_ext):
    """B = 0 used to launch kernels with an empty grid ("invalid configuration argument")."""
    x = torch.zeros(0, 6, 4, device="cuda")
    budgets, sigma, energy, saturated = cuda_ext.spectral_budget(x, 0.9, True, 4, 1, 1, None, 0, None)
    assert budgets.shape == (0,) and sigma.shape == (0, 4) and energy.shape == (0,) and saturated.shape == (0,)
    kept, indices, lengths, mask, *_ = cuda_ext.adaptive_prune(x, None, 0.9, True, 4, 1, 1, None, 0, None, None)
    assert kept.shape == (0, 4, 4) and indices.shape == (0, 4) and lengths.shape == (0,) and mask.shape == (0, 4)


def test_budgets_outside_their_range_are_clamped_on_the_device(cuda_ext):
    """A direct caller's budgets are not read on the host (no sync): each is clamped to [0, M] on the
    device, so the selection never writes past an image's M slots."""
    x = tokens(3, 64, 96, seed=4).cuda()
    budgets = torch.tensor([-5, 7, 1000], dtype=torch.int32, device="cuda")
    kept, indices, lengths, mask, *_ = cuda_ext.adaptive_prune(x, None, 0.9, True, 16, 1, 1, 12, 0, None, budgets)
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
    cuda_ext.adaptive_prune(x, None, 0.9, True, 8, 1, 1, 12, 0, None, shares)
    y = x.clone()
    y[2, 0, 0] = float("nan")
    ek.adaptive_prune(y, backend="cuda", sketch_size=8, validate=False)
    images = [tokens(1, n, 24, seed=n)[0].cuda() for n in (7, 40, 40, 3)]
    out = ek.adaptive_prune(images, backend="cuda", sketch_size=8)
    assert out.lengths.shape == (4,)
    cuda_ext.spectral_budget(torch.zeros(0, 5, 4, device="cuda"), 0.9, True, 4, 1, 1, None, 0, None)
    torch.cuda.synchronize()
