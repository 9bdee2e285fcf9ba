"""Budget policies: exact batch totals and calibrated energies."""

from __future__ import annotations

import pytest
import torch

from eadaprune_kernels import adaptive_prune, spectral_budget
from eadaprune_kernels.policy import allocate_budgets, calibrate_energy

from helpers import backend_params, check_result_invariants, matrix_with_spectrum, spectrum


@pytest.mark.parametrize("seed", range(8))
def test_allocate_budgets_hits_the_total_within_bounds(seed):
    g = torch.Generator().manual_seed(seed)
    b = int(torch.randint(1, 40, (), generator=g))
    budgets = torch.randint(1, 200, (b,), generator=g, dtype=torch.int32)
    lo, hi = int(torch.randint(1, 10, (), generator=g)), int(torch.randint(20, 120, (), generator=g))
    total = int(torch.randint(b * lo, b * hi + 1, (), generator=g))
    shares = allocate_budgets(budgets, total, lo, hi)
    assert shares.dtype == torch.int32 and shares.shape == (b,)
    assert int(shares.sum()) == total
    assert bool(((shares >= lo) & (shares <= hi)).all())
    # proportional to need where the bounds do not bind: a larger need never gets fewer tokens
    order = torch.argsort(budgets.to(torch.int64) * 1000 + torch.arange(b))
    assert bool((shares[order][1:] >= shares[order][:-1]).all())


def test_allocate_budgets_largest_remainder_and_ties():
    # needs 1:1:1 sharing 10 tokens: 3.33 each, the extra token goes to the lowest index
    assert allocate_budgets(torch.tensor([5, 5, 5]), 10, 1, 10).tolist() == [4, 3, 3]
    # exact proportional shares need no rounding
    assert allocate_budgets(torch.tensor([10, 20, 30]), 12, 1, 100).tolist() == [2, 4, 6]
    # bounds bind: the capped image's surplus is shared by the others
    assert allocate_budgets(torch.tensor([1, 1, 100]), 30, 2, 12).tolist() == [9, 9, 12]
    # the extreme totals
    assert allocate_budgets(torch.tensor([3, 9]), 2, 1, 5).tolist() == [1, 1]
    assert allocate_budgets(torch.tensor([3, 9]), 10, 1, 5).tolist() == [5, 5]
    # float needs, and needs below 1 count as 1
    assert allocate_budgets(torch.tensor([0.0, 1.0, 2.0]), 8, 1, 8).tolist() == [2, 2, 4]


@pytest.mark.parametrize("kwargs,exc,pattern", [
    (dict(budgets=[1, 2], total=3, min_tokens=1, max_tokens=4), TypeError, r"budgets: expected a torch.Tensor"),
    (dict(budgets=torch.ones(2, 2), total=3, min_tokens=1, max_tokens=4), ValueError, r"budgets: expected shape \[B\]"),
    (dict(budgets=torch.ones(2), total=9, min_tokens=1, max_tokens=4), ValueError,
     r"total: expected between B \* min_tokens = 2 and B \* max_tokens = 8 for B = 2, got 9"),
    (dict(budgets=torch.ones(2), total=1, min_tokens=1, max_tokens=4), ValueError, r"total: .*got 1"),
    (dict(budgets=torch.ones(2), total=3.0, min_tokens=1, max_tokens=4), TypeError, r"total: expected an int"),
    (dict(budgets=torch.ones(2), total=4, min_tokens=3, max_tokens=2), ValueError, r"min_tokens: expected at most"),
    (dict(budgets=torch.ones(2), total=4, min_tokens=0, max_tokens=2), ValueError, r"min_tokens: expected an int >= 1"),
])
def test_allocate_budgets_rejects_bad_arguments(kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        allocate_budgets(**kwargs)


def _calibration_set():
    g = torch.Generator().manual_seed(21)
    # families with random parameters, so no two images share a step of the mean budget
    families = ("exponential", "lowrank_noise", "exponential", "exponential", "lowrank_noise", "exponential")
    return [torch.stack([matrix_with_spectrum(spectrum(f, 40, g), 60, 48, g) for f in families]).float()
            for _ in range(2)]


def test_calibrate_energy_reaches_the_target_mean():
    batches = _calibration_set()
    kwargs = dict(sketch_size=32, power_iters=1)
    for target in (3.0, 8.0, 15.5):
        energy = calibrate_energy(batches, target, **kwargs)
        assert 0.0 < energy <= 1.0
        means = [spectral_budget(b, energy=float(energy), **kwargs).budgets.double().mean() for b in batches]
        achieved = float(sum(means) / len(means))
        assert achieved == pytest.approx(energy.mean_tokens)
        assert achieved >= target
        # the smallest such mean: energies below the plateau fall short
        start, end = energy.plateau
        assert start < float(energy) < end
        lower = start * (1 - 1e-3)
        means = [spectral_budget(b, energy=lower, **kwargs).budgets.double().mean() for b in batches]
        assert float(sum(means) / len(means)) < target


def test_calibrate_energy_rejects_unreachable_targets():
    batches = _calibration_set()
    with pytest.raises(ValueError, match=r"target_mean_tokens: expected a mean budget in the reachable range"):
        calibrate_energy(batches, 40.0, sketch_size=32)  # above l = 32
    with pytest.raises(ValueError, match=r"target_mean_tokens: .*got 0.5"):
        calibrate_energy(batches, 0.5, sketch_size=32)
    with pytest.raises(TypeError, match="energy"):
        calibrate_energy(batches, 5.0, energy=0.9)
    with pytest.raises(ValueError, match="batches: expected at least one image"):
        calibrate_energy([], 5.0)


@pytest.mark.parametrize("backend,device", backend_params(include_reference=True))
def test_total_budget_keeps_exactly_the_total_shared_by_need(backend, device):
    x = torch.cat(_calibration_set())[:, :40].to(device)  # 12 images, N = 40
    kwargs = dict(sketch_size=16, energy=0.95, min_tokens=2, max_tokens=20, backend=backend)
    plain = adaptive_prune(x, **kwargs)
    for total in (24, 100, 240):
        result = adaptive_prune(x, total_budget=total, **kwargs)
        assert int(result.lengths.sum()) == total
        expected = allocate_budgets(plain.lengths, total, 2, 20)
        assert torch.equal(result.lengths.cpu(), expected.cpu())
        check_result_invariants(result, x, 2, 20)
        # the spectrum is the image's own, whatever its share
        assert torch.equal(result.singular_values.cpu(), plain.singular_values.cpu())
    # when the total equals the sum of the needs, nothing changes
    same = adaptive_prune(x, total_budget=int(plain.lengths.sum()), **kwargs)
    assert torch.equal(same.indices.cpu(), plain.indices.cpu())


def test_total_budget_is_checked():
    x = torch.randn(3, 10, 6)
    with pytest.raises(ValueError, match=r"total_budget: expected between B \* min_tokens = 3 and B \* max_tokens = 18"):
        adaptive_prune(x, total_budget=19)
    with pytest.raises(TypeError, match="total_budget: expected an int or None, got float"):
        adaptive_prune(x, total_budget=9.0)
    assert adaptive_prune(x[:0], total_budget=0).lengths.shape == (0,)


def test_calibrate_energy_on_ragged_batches_uses_each_images_bounds():
    """Images smaller than max_tokens saturate at their own max_i = N_i: the calibrated mean must be the
    mean of the budgets a ragged call really gives (list input and packed input with cu_seqlens)."""
    g = torch.Generator().manual_seed(23)
    images = [torch.randn(n, 24, generator=g) @ torch.randn(24, 24, generator=g) for n in (5, 9, 40, 60, 3)]
    kwargs = dict(sketch_size=16, power_iters=1, max_tokens=12, min_tokens=4)
    for target in (4.5, 6.0, 7.5):
        energy = calibrate_energy([images], target, **kwargs)
        achieved = float(spectral_budget(images, energy=float(energy), **kwargs).budgets.double().mean())
        assert achieved == pytest.approx(energy.mean_tokens) and achieved >= target
    packed = torch.cat(images)
    cu = torch.tensor([0, 5, 14, 54, 114, 117])
    energy = calibrate_energy(packed, 7.0, cu_seqlens=cu, **kwargs)
    achieved = float(spectral_budget(packed, cu_seqlens=cu, energy=float(energy), **kwargs).budgets.double().mean())
    assert achieved == pytest.approx(energy.mean_tokens)
    # the reachable range follows each image's bounds: energy -> 0 keeps min_i = min(4, N_i) =
    # (4, 4, 4, 4, 3); energy = 1 keeps the numerical rank of the centred image (N_i - 1, 24 at most),
    # capped by max_i = min(12, N_i) and raised to min_i: (4, 8, 12, 12, 3) -> [3.8, 7.8], not [4, 12]
    with pytest.raises(ValueError, match=r"reachable range \[3\.800, 7\.800\]"):
        calibrate_energy([images], 7.9, **kwargs)
