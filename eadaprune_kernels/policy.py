"""Budget policies on top of the per-image budgets: a calibrated energy and a fixed batch total.

* :func:`calibrate_energy` finds the energy that gives a requested mean budget over a calibration
  set, so E-AdaPrune can be compared with fixed-budget pruning "under matched average token budgets"
  (He & Chen, arXiv 2603.05950).
* :func:`allocate_budgets` (:mod:`eadaprune_kernels.allocation`) rescales per-image budgets to an
  exact total for the batch (largest remainder), so a serving system can plan memory per batch and
  still share tokens by need.
"""

from __future__ import annotations

import numbers

import torch

from .allocation import allocate_budgets
from .api import spectral_budget
from .contract import budget_from_spectrum, image_bounds

__all__ = ["allocate_budgets", "calibrate_energy", "CalibratedEnergy"]

_BISECTION_STEPS = 64  # halves a float64 bracket down to its last bit


class CalibratedEnergy(float):
    """The calibrated energy (a float), with the mean budget it gives as ``mean_tokens`` and the
    interval ``plateau`` = (start, end) of energies that all give that mean."""

    mean_tokens: float
    plateau: tuple[float, float]

    def __new__(cls, energy: float, mean_tokens: float, plateau: tuple[float, float]):
        value = super().__new__(cls, energy)
        value.mean_tokens = mean_tokens
        value.plateau = plateau
        return value

    def __repr__(self) -> str:
        return f"CalibratedEnergy({float(self)!r}, mean_tokens={self.mean_tokens!r}, plateau={self.plateau!r})"


def _image_bounds(batch, width: int, prune_kwargs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """[B] int64 (min_i, max_i) of the images of one calibration batch, as the pipeline bounds them.

    ``width`` is the number of singular values per image (l for a dense batch, L = min(sketch_size, D)
    for a ragged one). Ragged images (a list, or packed with cu_seqlens) get their own bounds
    (:func:`eadaprune_kernels.contract.image_bounds`); a dense batch has one N >= max_tokens for every image.
    """
    top = prune_kwargs.get("max_tokens") or width
    cu_seqlens = prune_kwargs.get("cu_seqlens")
    if isinstance(batch, (list, tuple)):
        sizes = torch.tensor([t.shape[0] for t in batch], dtype=torch.int64)
    elif cu_seqlens is not None:
        sizes = (cu_seqlens[1:] - cu_seqlens[:-1]).to(device="cpu", dtype=torch.int64)
    else:
        count = batch.shape[0] if batch.dim() == 3 else 1
        sizes = torch.full((count,), batch.shape[-2], dtype=torch.int64)
    return image_bounds(sizes, prune_kwargs.get("min_tokens", 1), top)


def calibrate_energy(batches, target_mean_tokens: float, **prune_kwargs) -> CalibratedEnergy:
    """An energy that gives the smallest reachable mean budget >= ``target_mean_tokens`` over ``batches``.

    The spectrum of every image is computed once (with ``prune_kwargs``: sketch_size, power_iters,
    min_tokens, max_tokens, seed, backend, ...); the mean budget is a non-decreasing step function of
    the energy, which is then bisected without recomputing any spectrum. Since it is a step function,
    the achieved mean (``result.mean_tokens``) may exceed the target, and a whole interval of energies
    (``result.plateau``) gives it; the middle of that interval is returned, so float rounding of a
    backend's spectrum cannot tip an image over a step.

    Args:
        batches: a token tensor [B, N, D] or an iterable of batches: tensors [B, N, D] or [N, D], or
            ragged batches (a list of [N_i, D] tensors, or packed tensors with ``cu_seqlens`` in
            ``prune_kwargs``); every image's budget follows its own N_i, l_i and bounds.
        target_mean_tokens: the mean number of kept tokens per image to reach.
        **prune_kwargs: keyword arguments of :func:`spectral_budget` except ``energy``.

    Raises:
        ValueError: the target lies outside the reachable range [mean at energy -> 0, mean at energy=1].
    """
    if "energy" in prune_kwargs:
        raise TypeError("energy: calibrate_energy chooses the energy; do not pass it in prune_kwargs")
    if isinstance(target_mean_tokens, bool) or not isinstance(target_mean_tokens, numbers.Real):
        raise TypeError(f"target_mean_tokens: expected a number, got {type(target_mean_tokens).__name__}")
    if isinstance(batches, torch.Tensor):
        batches = [batches]
    spectra = []
    for batch in batches:
        result = spectral_budget(batch, energy=1.0, **prune_kwargs)
        sigma = result.singular_values.reshape(-1, result.singular_values.shape[-1]).to(torch.float64)
        energy_total = result.total_energy.reshape(-1).to(torch.float64)
        low, high = _image_bounds(batch, sigma.shape[1], prune_kwargs)
        spectra.append((sigma, energy_total, low.to(sigma.device), high.to(sigma.device)))
    if not spectra or all(s[0].shape[0] == 0 for s in spectra):
        raise ValueError("batches: expected at least one image to calibrate on, got none")

    def mean_budget(energy: float) -> float:
        total, count = 0.0, 0
        for sigma, energy_total, low, high in spectra:
            flat = energy_total == 0
            _, budgets, _ = budget_from_spectrum(sigma, energy_total, flat, energy, low, high)
            budgets = torch.where(energy_total.isnan(), high, budgets)  # non-finite images keep max_i
            total += float(budgets.sum())
            count += budgets.numel()
        return total / count

    low_mean, high_mean = mean_budget(1e-12), mean_budget(1.0)
    target = float(target_mean_tokens)
    if not low_mean <= target <= high_mean:
        raise ValueError(
            f"target_mean_tokens: expected a mean budget in the reachable range [{low_mean:.3f}, "
            f"{high_mean:.3f}] for these images and settings (raise sketch_size or max_tokens to reach "
            f"more), got {target}"
        )
    def first_energy_reaching(mean: float) -> float:
        """The smallest energy (to float64 bisection) whose mean budget is >= ``mean``."""
        low, high = 0.0, 1.0  # mean_budget(low) < mean <= mean_budget(high)
        for _ in range(_BISECTION_STEPS):
            mid = (low + high) / 2
            if mid in (low, high):
                break
            if mean_budget(mid) >= mean:
                high = mid
            else:
                low = mid
        return high

    start = 0.0 if low_mean >= target else first_energy_reaching(target)
    achieved = mean_budget(start) if start > 0 else low_mean
    end = 1.0 if achieved >= high_mean else first_energy_reaching(achieved + 0.5 / sum(s[0].shape[0] for s in spectra))
    return CalibratedEnergy((start + end) / 2, achieved, (start, end))
