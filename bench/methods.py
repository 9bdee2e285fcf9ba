"""The methods the benchmarks compare, all on the same [B, N, D] tokens and returning budgets [B].

Every method computes per-image budgets with the library's threshold rule (smallest k with
cumsum(sigma^2)_k >= (energy - ENERGY_SLACK) * ||X_c||_F^2, saturated -> max_tokens):

* ``eadaprune[<backend>].spectral_budget`` / ``.adaptive_prune``: the project, one entry per backend
  that :func:`eadaprune_kernels.available_backends` lists at run time (none is hard-coded).
* ``torch.linalg.svdvals``: exact singular values of X_c (float32).
* ``torch.linalg.eigvalsh(Gram)``: exact, through the smaller Gram matrix: X_c X_c^T (N x N) when
  N <= D, else X_c^T X_c (D x D) (float32); both have the squared singular values of X_c.
* ``torch.svd_lowrank``: q=sketch_size, niter=power_iters on X_c (float32), what a user writes by hand.
* ``sklearn.randomized_svd`` (CPU only; needs scikit-learn, the bench extra): one image at a time, n_components=sketch_size,
  n_oversamples=0, n_iter=power_iters, power_iteration_normalizer="QR" (same sketch width and
  re-orthonormalisation as the reference algorithm; sklearn's own defaults would add 10 columns and
  skip re-orthonormalisation for n_iter <= 2).

The baselines upcast float16/bfloat16 tokens to float32 (torch.linalg and sklearn have no half
precision SVD/QR); the upcast is part of their timed call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from eadaprune_kernels import adaptive_prune, available_backends, spectral_budget
from eadaprune_kernels.contract import ENERGY_SLACK

__all__ = ["Method", "energy_budget", "project_methods", "baseline_methods", "all_methods",
           "LOWRANK", "SKETCHED_BASELINES"]

LOWRANK = "torch.svd_lowrank"
SKETCHED_BASELINES = (LOWRANK, "sklearn.randomized_svd")


@dataclass(frozen=True)
class Method:
    """``run(tokens, sketch_size, power_iters, energy, max_tokens) -> budgets [B]``."""

    name: str
    run: Callable[..., torch.Tensor]
    sketched: bool  # depends on sketch_size / power_iters
    devices: frozenset[str]


def energy_budget(sigma: torch.Tensor, total: torch.Tensor, energy: float, max_tokens: int,
                  min_tokens: int = 1) -> torch.Tensor:
    """The library's threshold rule on singular values [B, l] and exact energies [B] -> budgets [B] int64.

    A user writing it by hand: cumsum of sigma^2 is nondecreasing, so the first index reaching the
    target is the number of indices that do not reach it.
    """
    cumulative = torch.cumsum(sigma.square(), dim=1)
    reached = cumulative >= (energy - ENERGY_SLACK) * total[:, None]
    k = (~reached).sum(1) + 1
    k = torch.where(reached[:, -1], k, torch.full_like(k, max_tokens))
    return k.clamp(min_tokens, max_tokens)


def _centred_float(tokens: torch.Tensor) -> torch.Tensor:
    x = tokens if tokens.dtype in (torch.float32, torch.float64) else tokens.float()
    return x - x.mean(1, keepdim=True)


def _svdvals(tokens, sketch_size, power_iters, energy, max_tokens):
    xc = _centred_float(tokens)
    return energy_budget(torch.linalg.svdvals(xc), xc.square().sum((1, 2)), energy, max_tokens)


def _eigvalsh_gram(tokens, sketch_size, power_iters, energy, max_tokens):
    xc = _centred_float(tokens)
    gram = xc @ xc.mT if xc.shape[1] <= xc.shape[2] else xc.mT @ xc  # the smaller of N x N and D x D
    eig = torch.linalg.eigvalsh(gram).flip(1).clamp_min(0)
    return energy_budget(eig.sqrt(), xc.square().sum((1, 2)), energy, max_tokens)


def _svd_lowrank(tokens, sketch_size, power_iters, energy, max_tokens):
    xc = _centred_float(tokens)
    l = min(sketch_size, *xc.shape[1:])
    _, s, _ = torch.svd_lowrank(xc, q=l, niter=power_iters)
    return energy_budget(s, xc.square().sum((1, 2)), energy, max_tokens)


def _sklearn(tokens, sketch_size, power_iters, energy, max_tokens):
    try:
        from sklearn.utils.extmath import randomized_svd
    except ImportError as error:
        raise ImportError("the sklearn.randomized_svd baseline needs scikit-learn: install the bench extra "
                          "(pip install --no-build-isolation -e \".[bench]\")") from error

    xc = _centred_float(tokens)
    l = min(sketch_size, *xc.shape[1:])
    sigmas = []
    for image in xc.numpy():
        _, s, _ = randomized_svd(image, n_components=l, n_oversamples=0, n_iter=power_iters,
                                 power_iteration_normalizer="QR", random_state=0)
        sigmas.append(torch.from_numpy(s))
    return energy_budget(torch.stack(sigmas), xc.square().sum((1, 2)), energy, max_tokens)


def project_methods(device: torch.device | str, prune: bool = True) -> list[Method]:
    """One budget method (and, with ``prune``, one prune method) per available backend."""
    methods = []
    for name in available_backends(device):
        def budget(tokens, sketch_size, power_iters, energy, max_tokens, _name=name):
            return spectral_budget(tokens, energy=energy, sketch_size=sketch_size,
                                   power_iters=power_iters, max_tokens=max_tokens,
                                   backend=_name).budgets

        def prune_(tokens, sketch_size, power_iters, energy, max_tokens, _name=name):
            return adaptive_prune(tokens, energy=energy, sketch_size=sketch_size,
                                  power_iters=power_iters, max_tokens=max_tokens,
                                  backend=_name).lengths

        everywhere = frozenset({"cpu", "cuda"})
        methods.append(Method(f"eadaprune[{name}].spectral_budget", budget, True, everywhere))
        if prune:
            methods.append(Method(f"eadaprune[{name}].adaptive_prune", prune_, True, everywhere))
    return methods


def baseline_methods(device: torch.device | str) -> list[Method]:
    everywhere = frozenset({"cpu", "cuda"})
    methods = [
        Method("torch.linalg.svdvals", _svdvals, False, everywhere),
        Method("torch.linalg.eigvalsh(Gram)", _eigvalsh_gram, False, everywhere),
        Method(LOWRANK, _svd_lowrank, True, everywhere),
        # Listed whether or not scikit-learn is installed (the bench extra requires it): calling it
        # without scikit-learn raises ImportError rather than the benchmark quietly leaving it out.
        Method("sklearn.randomized_svd", _sklearn, True, frozenset({"cpu"})),
    ]
    device_type = torch.device(device).type
    return [m for m in methods if device_type in m.devices]


def all_methods(device: torch.device | str, prune: bool = True) -> list[Method]:
    return project_methods(device, prune) + baseline_methods(device)
