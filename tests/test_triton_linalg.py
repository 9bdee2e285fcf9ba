"""The l x l routines of the Triton kernel on their own: the blocked Jacobi eigensolver against
matrices whose eigen-decomposition is known (float64), under the sm_90 emulation (conftest), at every
padded sketch width the kernel uses."""

import pytest
import torch

from conftest import INTERPRETING

triton = pytest.importorskip("triton")
if not (INTERPRETING or torch.cuda.is_available()):
    pytest.skip("Triton needs a CUDA device or TRITON_INTERPRET=1", allow_module_level=True)

from eadaprune_kernels.backends.triton_kernel import MAX_SWEEPS, jacobi_alone, kernel_settings  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() and not INTERPRETING else "cpu"


def _known(lp: int, eigenvalues: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(lp, lp, generator=g, dtype=torch.float64))
    return (q * eigenvalues) @ q.T


@pytest.mark.parametrize("lp", [16, 32, 64, 128, 256])
def test_jacobi_diagonalises_a_known_spectrum(lp):
    g = torch.Generator().manual_seed(lp)
    lam = torch.rand(lp, generator=g, dtype=torch.float64) ** 4 * 10.0 ** torch.linspace(0, -5, lp, dtype=torch.float64)
    lam[lp // 3: lp // 3 + 4] = lam[lp // 3]  # a repeated eigenvalue
    lam[-lp // 4:] = 0.0  # rank-deficient, as padded sketch columns are
    h64 = _known(lp, lam, seed=lp + 1)
    h = h64.to(torch.float32).to(DEVICE)
    v, sweeps = jacobi_alone(h)
    v = v.double().cpu()
    assert torch.isfinite(v).all(), "unwritten or non-finite eigenvector entries"
    assert 1 <= sweeps < MAX_SWEEPS, sweeps
    eye = torch.eye(lp, dtype=torch.float64)
    assert (v.T @ v - eye).abs().max() < 1e-5
    d = v.T @ h.double().cpu() @ v
    scale = lam.abs().max()
    off = d - torch.diag(torch.diag(d))
    assert off.abs().max() < 2e-5 * scale
    assert torch.allclose(torch.sort(torch.diag(d)).values, torch.sort(lam).values, atol=2e-6 * scale, rtol=0)


def test_jacobi_of_a_diagonal_matrix_returns_a_permutation_free_identity_after_no_sweep():
    lp = 64
    h = torch.diag(torch.linspace(3.0, 1.0, lp)).to(DEVICE)
    v, sweeps = jacobi_alone(h)
    assert torch.equal(v.cpu(), torch.eye(lp))
    assert sweeps == 0


@pytest.mark.parametrize("lp", [32, 128])
def test_jacobi_parts_read_nothing_another_part_writes_in_the_same_phase(lp):
    """On a GPU an image's Jacobi runs as JP programs that meet at a barrier after each phase; here one
    program runs the parts in sequence. Running them in the reverse order gives the same bits only if
    no part reads, within a phase, what another part writes in it (what the barriers rely on); any
    number of parts (one part holding every set is what the launcher runs under the interpreter; two
    at LP = 128 give each part two sets, as LP = 256 does on the GPU) gives the same bits too."""
    g = torch.Generator().manual_seed(7 * lp)
    noise = torch.randn(lp, lp, generator=g, dtype=torch.float64) * 1e-3
    h64 = torch.diag(torch.rand(lp, generator=g, dtype=torch.float64)) + noise + noise.T  # 2-3 sweeps: cheap
    h = h64.to(torch.float32).to(DEVICE)
    v, sweeps = jacobi_alone(h, parts=1)
    assert sweeps >= 1 and torch.isfinite(v).all()
    jp = kernel_settings(torch.float32, lp)["JP"]
    assert jp > 1
    for parts in range(2, jp + 1):
        if parts & (parts - 1) == 0:
            for reverse in (False, True):
                v_p, sweeps_p = jacobi_alone(h, parts=parts, reverse=reverse)
                assert sweeps_p == sweeps, (parts, reverse)
                assert torch.equal(v_p, v), (parts, reverse)
    with pytest.raises(ValueError, match="parts"):
        jacobi_alone(h, parts=3)
