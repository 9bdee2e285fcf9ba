"""The native CUDA backend (eadaprune_kernels._C_cuda) against the float64 reference.

Needs a CUDA device and the built extension; skipped otherwise (the CPU CI checks that the extension
compiles and links with tools/check_cuda_build.sh instead).
"""

from __future__ import annotations

import pytest
import torch

import eadaprune_kernels as ek
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
            target = (energy - 1e-6) * ref.total_energy[b].double()
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
