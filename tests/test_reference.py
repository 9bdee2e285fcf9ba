"""The reference backend against exact answers: the semantics every backend is held to."""

from __future__ import annotations

import pytest
import torch

from eadaprune_kernels import (
    adaptive_prune,
    exact_budget,
    exact_svdvals,
    gaussian_sketch,
    randomized_svdvals,
    spectral_budget,
)
from eadaprune_kernels.contract import ENERGY_SLACK

from helpers import FAMILIES, check_result_invariants, matrix_with_spectrum, spectrum

REF = dict(backend="reference")


def _budget_from_known_spectrum(s: torch.Tensor, energy: float) -> int:
    cum = torch.cumsum(s.square(), 0)
    return int((cum >= (energy - ENERGY_SLACK) * cum[-1]).nonzero()[0]) + 1


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("energy", [0.9, 0.99])
def test_exact_budget_matches_the_chosen_spectrum(family, energy):
    g = torch.Generator().manual_seed(hash((family, energy)) % 2**31)
    n, d, r = 120, 80, 60
    s = spectrum(family, r, g)
    x = torch.stack([matrix_with_spectrum(s, n, d, g) for _ in range(2)])
    expected = _budget_from_known_spectrum(s, energy)
    assert exact_budget(x, energy=energy).tolist() == [expected, expected]
    torch.testing.assert_close(exact_svdvals(x)[:, :r], s.expand(2, r), atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("power_iters", [1, 2])
@pytest.mark.parametrize("sketch_size", [32, 64])
def test_sketched_budget_equals_exact_when_not_at_a_knife_edge(family, power_iters, sketch_size):
    """Budgets equal exact SVD's whenever the exact cumulative energy at k* clears tau by more
    than 1% of E on both sides and k* <= 0.75 l (the issue's acceptance rule)."""
    g = torch.Generator().manual_seed(1000 + power_iters * 7 + sketch_size)
    n, d = 200, 130
    checked = 0
    for trial in range(6):
        s = spectrum(family, 96, g)
        x = matrix_with_spectrum(s, n, d, g)[None].to(torch.float32)
        exact = exact_svdvals(x)[0]
        cum = torch.cumsum(exact.square(), 0) / exact.square().sum()
        # put tau midway between consecutive cumulative energies, at ranks up to 0.75 l
        for k in range(1, int(0.75 * sketch_size) + 1, 3):
            below = float(cum[k - 2]) if k >= 2 else 0.0
            above = float(cum[k - 1])
            energy = (below + above) / 2
            if above - below <= 0.02 or energy >= 1.0:  # must clear tau by more than 1% of E each side
                continue
            assert int(exact_budget(x, energy=energy, max_tokens=n)[0]) == k
            got = spectral_budget(x, energy=energy, sketch_size=sketch_size, power_iters=power_iters,
                                  seed=trial, **REF)
            assert int(got.budgets[0]) == k, (family, energy, trial, k, got.budgets)
            assert not bool(got.saturated[0])
            checked += 1
    if family != "rank1":  # rank 1 sits on the threshold only at k=1, which always clears
        assert checked > 0, "no case met the acceptance rule: the test checked nothing"


@pytest.mark.parametrize("family", FAMILIES)
def test_sketched_singular_values_are_lower_bounds(family):
    g = torch.Generator().manual_seed(7)
    s = spectrum(family, 64, g)
    x = torch.stack([matrix_with_spectrum(s, 150, 100, g) for _ in range(3)])
    for q in (0, 1, 2):
        sketched = randomized_svdvals(x, sketch_size=24, power_iters=q, **REF).to(torch.float64)
        exact = exact_svdvals(x)[:, :24]
        assert bool((sketched <= exact * (1 + 1e-5) + 1e-7).all()), (q, (sketched - exact).max())
    # with power iterations the leading values are nearly exact
    sketched = randomized_svdvals(x, sketch_size=24, power_iters=2, **REF).to(torch.float64)
    torch.testing.assert_close(sketched[:, :4], exact_svdvals(x)[:, :4], rtol=2e-2, atol=1e-6)


def test_total_energy_is_exact_and_centred():
    g = torch.Generator().manual_seed(3)
    x = 5.0 + torch.randn(4, 33, 17, generator=g, dtype=torch.float64)
    result = spectral_budget(x, **REF)
    xc = x - x.mean(1, keepdim=True)
    torch.testing.assert_close(result.total_energy, xc.square().sum((1, 2)).float())
    uncentred = spectral_budget(x, center=False, **REF)
    torch.testing.assert_close(uncentred.total_energy, x.square().sum((1, 2)).float())
    torch.testing.assert_close(
        randomized_svdvals(x, center=False, sketch_size=17, **REF).double(),
        torch.linalg.svdvals(x), rtol=1e-5, atol=1e-5,
    )


def test_energy_one_returns_the_numerical_rank():
    g = torch.Generator().manual_seed(11)
    for rank in (1, 3, 10):
        s = torch.linspace(1.0, 0.2, rank, dtype=torch.float64)
        x = torch.stack([matrix_with_spectrum(s, 90, 60, g) for _ in range(2)]).float()
        got = spectral_budget(x, energy=1.0, sketch_size=20, power_iters=1, **REF)
        assert got.budgets.tolist() == [rank, rank]
        assert not bool(got.saturated.any())


def test_white_noise_saturates_to_max_tokens():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 100, 100, generator=g)
    got = spectral_budget(x, energy=0.99, sketch_size=16, **REF)
    assert got.saturated.tolist() == [True, True]
    assert got.budgets.tolist() == [16, 16]
    got = spectral_budget(x, energy=0.99, sketch_size=16, max_tokens=40, **REF)
    assert got.budgets.tolist() == [40, 40]


def test_budget_is_clamped_to_min_and_max_tokens():
    g = torch.Generator().manual_seed(2)
    s = spectrum("exponential", 40, g)
    x = matrix_with_spectrum(s, 100, 50, g)[None]
    k = int(spectral_budget(x, energy=0.9, sketch_size=48, **REF).budgets[0])
    assert 2 < k < 40
    assert int(spectral_budget(x, energy=0.9, sketch_size=48, min_tokens=k + 3, max_tokens=k + 5,
                               **REF).budgets[0]) == k + 3
    assert int(spectral_budget(x, energy=0.9, sketch_size=48, max_tokens=k - 2, **REF).budgets[0]) == k - 2


@pytest.mark.parametrize("min_tokens", [1, 4])
def test_flat_image_keeps_its_first_min_tokens(min_tokens):
    row = torch.randn(1, 1, 24)
    x = torch.cat([row.expand(1, 30, 24), torch.randn(1, 30, 24)]).contiguous()
    result = adaptive_prune(x, min_tokens=min_tokens, **REF)
    assert int(result.lengths[0]) == min_tokens and not bool(result.saturated[0])
    assert result.indices[0, :min_tokens].tolist() == list(range(min_tokens))
    assert float(result.total_energy[0]) == 0.0 and bool((result.singular_values[0] == 0).all())
    # the other image is unaffected by its flat neighbour
    alone = adaptive_prune(x[1:], min_tokens=min_tokens, **REF)
    assert torch.equal(alone.indices[0], result.indices[1])


def test_scores_select_the_highest_with_ties_to_the_lower_index():
    g = torch.Generator().manual_seed(9)
    s = spectrum("exponential", 30, g)
    x = matrix_with_spectrum(s, 40, 32, g)[None].float()
    k = int(spectral_budget(x, energy=0.9, sketch_size=32, **REF).budgets[0])
    scores = torch.zeros(1, 40)
    scores[0, [39, 5, 20]] = torch.tensor([3.0, 2.0, 2.0])  # the rest tie at 0
    result = adaptive_prune(x, scores, energy=0.9, sketch_size=32, **REF)
    expected = sorted(([39, 5, 20] + [i for i in range(40) if i not in (39, 5, 20)])[:k])
    assert result.indices[0, :k].tolist() == expected
    check_result_invariants(result, x, 1, 32)


def test_leverage_selection_matches_exact_leverage_on_low_rank_input():
    g = torch.Generator().manual_seed(4)
    n, d, r = 64, 48, 5
    s = torch.tensor([3.0, 2.0, 1.5, 1.0, 0.5], dtype=torch.float64)
    x = matrix_with_spectrum(s, n, d, g)
    result = adaptive_prune(x[None], energy=1.0, sketch_size=16, min_tokens=12, max_tokens=12, **REF)
    u = torch.linalg.svd(x - x.mean(0), full_matrices=False).U[:, :r]
    leverage = u.square().sum(1)
    expected = torch.sort(torch.topk(leverage, 12).indices).values
    assert result.indices[0].tolist() == expected.tolist()


def test_results_are_deterministic_and_independent_of_batch_neighbours():
    g = torch.Generator().manual_seed(8)
    x = torch.randn(5, 50, 40, generator=g) @ torch.randn(40, 40, generator=g).tril()
    a = adaptive_prune(x, sketch_size=16, seed=3, **REF)
    b = adaptive_prune(x, sketch_size=16, seed=3, **REF)
    for field in ("tokens", "indices", "lengths", "singular_values", "total_energy"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    for i in (0, 3):
        alone = adaptive_prune(x[i:i + 1], sketch_size=16, seed=3, **REF)
        assert torch.equal(alone.indices[0], a.indices[i])
        torch.testing.assert_close(alone.singular_values[0], a.singular_values[i], rtol=1e-6, atol=0)
    other_seed = randomized_svdvals(x, sketch_size=16, power_iters=0, seed=4, **REF)
    assert not torch.equal(other_seed, a.singular_values)


def test_sketch_matrix_overrides_the_generated_sketch():
    g = torch.Generator().manual_seed(12)
    x = torch.randn(2, 30, 20, generator=g)
    generated = randomized_svdvals(x, sketch_size=8, power_iters=0, seed=5, **REF)
    explicit = randomized_svdvals(x, sketch_size=8, power_iters=0, seed=999,
                                  sketch_matrix=gaussian_sketch(20, 8, seed=5), **REF)
    torch.testing.assert_close(explicit, generated, rtol=1e-6, atol=1e-6)
    other = randomized_svdvals(x, sketch_size=8, power_iters=0, sketch_matrix=torch.randn(20, 8, generator=g), **REF)
    assert not torch.allclose(other, generated)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_result_invariants_on_random_inputs(dtype):
    g = torch.Generator().manual_seed(13)
    for n, d, sketch in ((1, 5, 4), (7, 5, 4), (64, 96, 16), (200, 130, 32)):
        x = (torch.randn(3, n, d, generator=g) * torch.rand(3, 1, 1, generator=g) * 4).to(dtype)
        result = adaptive_prune(x, sketch_size=sketch, energy=0.9, **REF)
        l = min(sketch, n, d)
        check_result_invariants(result, x, 1, l)
        assert result.singular_values.shape == (3, l)
        assert result.backend == "reference"
        scores = torch.randn(3, n, generator=g).to(dtype)
        with_scores = adaptive_prune(x, scores, sketch_size=sketch, max_tokens=n, **REF)
        check_result_invariants(with_scores, x, 1, n)


def test_single_image_returns_unbatched_fields():
    x = torch.randn(40, 24)
    single = adaptive_prune(x, sketch_size=8, **REF)
    batched = adaptive_prune(x[None], sketch_size=8, **REF)
    assert single.tokens.shape == (8, 24) and single.lengths.shape == ()
    assert torch.equal(single.indices, batched.indices[0])
    assert torch.equal(single.tokens, batched.tokens[0])
    budget = spectral_budget(x, sketch_size=8, **REF)
    assert budget.budgets.shape == () and budget.singular_values.shape == (8,)
    assert randomized_svdvals(x, sketch_size=8, **REF).shape == (8,)
    packed, cu = single.packed()
    assert cu.tolist() == [0, int(single.lengths)] and torch.equal(packed, x[single.indices[: int(single.lengths)]])


def test_empty_batch_returns_an_empty_result():
    x = torch.randn(0, 10, 6)
    result = adaptive_prune(x, sketch_size=4, **REF)
    assert result.tokens.shape == (0, 4, 6) and result.indices.shape == (0, 4)
    assert result.singular_values.shape == (0, 4) and result.lengths.shape == (0,)
    assert spectral_budget(x, **REF).budgets.shape == (0,)


def test_packed_concatenates_the_kept_tokens():
    g = torch.Generator().manual_seed(14)
    x = torch.randn(3, 20, 6, generator=g) * torch.tensor([0.1, 1.0, 10.0])[:, None, None]
    x[0] = x[0, :1] + 1e-3 * torch.randn(20, 6, generator=g)
    result = adaptive_prune(x, sketch_size=6, energy=0.9, **REF)
    tokens, cu = result.packed()
    lengths = result.lengths.tolist()
    assert cu.dtype == torch.int32 and cu.tolist() == [0, lengths[0], lengths[0] + lengths[1], sum(lengths)]
    for i in range(3):
        assert torch.equal(tokens[cu[i]:cu[i + 1]], x[i, result.indices[i, : lengths[i]]])


@pytest.mark.parametrize("scale", [1e-20, 1e-8, 1.0, 1e8, 1e20])
def test_budgets_are_scale_invariant(scale):
    g = torch.Generator().manual_seed(15)
    s = spectrum("power1", 40, g)
    x = torch.stack([matrix_with_spectrum(s, 80, 60, g) for _ in range(2)]).float()
    base = adaptive_prune(x, sketch_size=32, energy=0.9, **REF)
    scaled = adaptive_prune(x * scale, sketch_size=32, energy=0.9, **REF)
    assert torch.equal(scaled.lengths, base.lengths)
    assert torch.equal(scaled.indices, base.indices)


def test_nonfinite_images_raise_or_fall_back():
    g = torch.Generator().manual_seed(16)
    x = torch.randn(4, 30, 12, generator=g)
    x[1, 3, 2] = float("nan")
    x[3, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"tokens: .*image\(s\) \[1, 3\]"):
        adaptive_prune(x, sketch_size=8)
    scores = torch.randn(4, 30, generator=g)
    scores[2, 5] = float("nan")
    with pytest.raises(ValueError, match=r"scores: .*image\(s\) \[2\]"):
        adaptive_prune(torch.nan_to_num(x), scores, sketch_size=8)

    result = adaptive_prune(x, sketch_size=8, max_tokens=10, validate=False, **REF)
    assert result.saturated[[1, 3]].tolist() == [True, True]
    assert result.lengths[[1, 3]].tolist() == [10, 10]
    assert result.indices[1].tolist() == list(range(10))
    assert bool(result.singular_values[[1, 3]].isnan().all()) and bool(result.total_energy[[1, 3]].isnan().all())
    clean = adaptive_prune(x[[0, 2]], sketch_size=8, max_tokens=10, **REF)
    assert torch.equal(result.indices[[0, 2]], clean.indices)
    assert bool(torch.isfinite(result.singular_values[[0, 2]]).all())

    with_scores = adaptive_prune(torch.nan_to_num(x), scores, sketch_size=8, max_tokens=10, validate=False, **REF)
    assert bool(with_scores.saturated[2]) and with_scores.indices[2].tolist() == list(range(10))


def test_gaussian_sketch_is_standard_normal_nested_and_seeded():
    omega = gaussian_sketch(512, 64, seed=1)
    assert omega.shape == (512, 64) and omega.dtype == torch.float32
    assert abs(float(omega.mean())) < 0.02 and abs(float(omega.std()) - 1.0) < 0.02
    assert torch.equal(gaussian_sketch(512, 16, seed=1), omega[:, :16])
    assert torch.equal(gaussian_sketch(512, 64, seed=1), omega)
    assert not torch.equal(gaussian_sketch(512, 64, seed=2), omega)
    assert gaussian_sketch(4, 3, dtype=torch.float64).dtype == torch.float64


def test_gaussian_sketch_reproduces_triton_randn():
    """The integer part of tl.randn is reproduced bit for bit; the float part to float32 rounding."""
    triton = pytest.importorskip("triton")
    import triton.language as tl

    @triton.jit
    def randn_kernel(out_ptr, seed, D, L, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr):
        rows = tl.arange(0, BLOCK_D)[:, None]
        cols = tl.arange(0, BLOCK_L)[None, :]
        mask = (rows < D) & (cols < L)
        tl.store(out_ptr + rows * L + cols, tl.randn(seed, cols * D + rows), mask=mask)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    for seed in (0, 1, 2**32 + 7, 2**63 - 1):
        d, l = 37, 11
        out = torch.zeros(d, l, device=device)
        randn_kernel[(1,)](out, seed, d, l, BLOCK_D=64, BLOCK_L=16)
        torch.testing.assert_close(out.cpu(), gaussian_sketch(d, l, seed), rtol=1e-5, atol=1e-5)
