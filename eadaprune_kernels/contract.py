"""The contract every backend computes: the per-call configuration, its per-image bounds, the
threshold rule and its constants.

The reference backend (:mod:`eadaprune_kernels.backends.reference`) defines the pipeline step by step;
this module holds the parts that every backend, the policies and the integrations share, so that none
of them needs the reference. The C++ backends read the same constants from csrc/common/numerics.h
(tests/test_native_constants.py holds the two equal).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, replace

import torch

from .sketch import MAX_SEED, MAX_SKETCH_ELEMENTS

__all__ = ["ENERGY_SLACK", "FLAT_RTOL", "FLOAT_DTYPES", "PipelineConfig", "make_config", "image_config",
           "image_bounds", "budget_from_spectrum"]

# The threshold is (energy - ENERGY_SLACK) * E, so that energy=1.0 returns the numerical rank when
# the sketch spans the range: cumsum(sigma^2) then equals E up to the arithmetic of the backend, which
# may fall short. The fp32 Triton kernel loses up to ~CHOL_SHIFT = 1e-6 relative to the contraction
# of its shifted CholeskyQR and ~1e-6 to fp32 rounding (tile sums are added in fp64); measured under
# the sm_90 emulation on exact low-rank images of every dtype: at most 1.2e-6 short. 1e-5 covers that
# ten times and stays two orders below the energy gaps at which budgets are held equal to exact SVD's
# (1e-3). The float64 backends (reference, cpu, cuda) lose ~1e-12.
ENERGY_SLACK = 1e-5
# Centred energy at or below this fraction of the raw energy ||X||_F^2 (variation below ~1e-5 of the
# token magnitude) cannot be told apart from float32 rounding of the mean: the image is flat.
FLAT_RTOL = 1e-10

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class PipelineConfig:
    """Everything a backend needs besides the tensors, resolved and checked.

    Dense batches [B, N, D]: ``sketch_size`` is l = min(sketch_size, N, D) and ``max_tokens`` M <= N.
    Ragged batches (packed [T, D] with cu_seqlens): the batch-wide widths L = min(sketch_size, D) and
    M; image i uses :func:`image_config` (l_i = min(L, N_i), max_i = min(M, N_i), min_i =
    min(min_tokens, max_i), the first l_i columns of the sketch).
    """

    energy: float
    center: bool
    sketch_size: int
    power_iters: int
    min_tokens: int
    max_tokens: int
    seed: int
    sketch_matrix: torch.Tensor | None


def _describe(t: torch.Tensor) -> str:
    return f"tensor of shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device}"


def _int_arg(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    return int(value)


def make_config(
    *,
    n: int | None,
    d: int,
    device: torch.device,
    energy,
    center,
    sketch_size,
    power_iters,
    min_tokens,
    max_tokens,
    seed,
    sketch_matrix,
) -> PipelineConfig:
    """Checks the keyword arguments of a call and resolves its defaults.

    ``n`` is the token count of every image of a dense batch, or None for a ragged batch (then the
    config holds the batch-wide widths L = min(sketch_size, D) and M, default L, not checked against
    any N_i); ``d`` the feature count and ``device`` that of the tokens. Raises ValueError / TypeError
    naming the argument, what was expected and what was given.
    """
    ragged = n is None
    if isinstance(energy, bool) or not isinstance(energy, numbers.Real):
        raise TypeError(f"energy: expected a float in (0, 1], got {type(energy).__name__} {energy!r}")
    energy = float(energy)
    if not 0.0 < energy <= 1.0:  # also rejects NaN
        raise ValueError(f"energy: expected a float in (0, 1], got {energy}")
    if not isinstance(center, bool):
        raise TypeError(f"center: expected a bool, got {type(center).__name__} {center!r}")
    sketch_size = _int_arg("sketch_size", sketch_size, 1)
    power_iters = _int_arg("power_iters", power_iters, 0)
    min_tokens = _int_arg("min_tokens", min_tokens, 1)
    seed = _int_arg("seed", seed, 0)
    if seed > MAX_SEED:
        raise ValueError(f"seed: expected an int in [0, 2**63 - 1], got {seed}")
    l = min(sketch_size, d) if ragged else min(sketch_size, n, d)
    if max_tokens is None:
        max_tokens = l
    else:
        max_tokens = _int_arg("max_tokens", max_tokens, 1)
        if not ragged and max_tokens > n:
            raise ValueError(f"max_tokens: expected at most N = {n} (tokens per image), got {max_tokens}")
    if min_tokens > max_tokens:
        raise ValueError(f"min_tokens: expected at most max_tokens = {max_tokens}, got {min_tokens}")
    if sketch_matrix is not None:
        if not isinstance(sketch_matrix, torch.Tensor):
            raise TypeError(
                f"sketch_matrix: expected a torch.Tensor [D, l] or None, got {type(sketch_matrix).__name__}"
            )
        if sketch_matrix.dtype not in FLOAT_DTYPES:
            raise TypeError(f"sketch_matrix: expected a floating dtype, got {sketch_matrix.dtype}")
        if tuple(sketch_matrix.shape) != (d, l):
            what = "(D, min(sketch_size, D)) for ragged input" if ragged else "(D, min(sketch_size, N, D))"
            raise ValueError(f"sketch_matrix: expected shape ({d}, {l}) = {what}, got {_describe(sketch_matrix)}")
        if sketch_matrix.device != device:
            raise ValueError(f"sketch_matrix: expected device {device} (that of tokens), got {sketch_matrix.device}")
    elif d * l > MAX_SKETCH_ELEMENTS:
        raise ValueError(
            f"sketch_size: D * l must be below 2**31 for the generated sketch, got D={d}, l={l}; "
            f"pass a smaller sketch_size or an explicit sketch_matrix"
        )
    return PipelineConfig(energy=energy, center=center, sketch_size=l, power_iters=power_iters,
                          min_tokens=min_tokens, max_tokens=max_tokens, seed=seed, sketch_matrix=sketch_matrix)


def image_config(cfg: PipelineConfig, n: int) -> PipelineConfig:
    """The configuration of one image of N = n tokens in a ragged call whose ``cfg`` holds the batch-wide
    L and M: l = min(L, n), max = min(M, n), min = min(min_tokens, max), the first l sketch columns."""
    l = min(cfg.sketch_size, n)
    top = min(cfg.max_tokens, n)
    sketch = None if cfg.sketch_matrix is None else cfg.sketch_matrix[:, :l]
    return replace(cfg, sketch_size=l, max_tokens=top, min_tokens=min(cfg.min_tokens, top), sketch_matrix=sketch)


def image_bounds(sizes: torch.Tensor, min_tokens: int, max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(min_i, max_i) of images of ``sizes`` tokens (any integer tensor): max_i = min(M, N_i) and
    min_i = min(min_tokens, max_i), the bounds :func:`image_config` gives each image. No host read."""
    high = sizes.clamp(max=max_tokens)
    return high.clamp(max=min_tokens), high


def budget_from_spectrum(
    singular_values: torch.Tensor,
    total_energy: torch.Tensor,
    flat: torch.Tensor,
    energy: float,
    min_tokens: int | torch.Tensor,
    max_tokens: int | torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The threshold rule: (k_star [B] int64, budgets [B] int64, saturated [B] bool).

    k* = the smallest k with cumsum(sigma^2)_k >= (energy - ENERGY_SLACK) * E; an image where no k
    reaches it is saturated (k* = max_tokens), a flat image gets k* = min_tokens. budget = clamp(k*,
    min_tokens, max_tokens). ``min_tokens`` / ``max_tokens``: ints, or [B] per-image bounds.
    """
    cumulative = torch.cumsum(singular_values.square(), dim=1)
    target = (energy - ENERGY_SLACK) * total_energy
    reached = cumulative >= target[:, None]
    saturated = ~reached[:, -1] & ~flat
    first = torch.argmax(reached.to(torch.int8), dim=1) + 1
    low = torch.as_tensor(min_tokens, device=first.device).expand_as(first)
    high = torch.as_tensor(max_tokens, device=first.device).expand_as(first)
    k_star = torch.where(saturated, high, first)
    k_star = torch.where(flat, low, k_star)
    budgets = torch.maximum(torch.minimum(k_star, high), low)
    return k_star, budgets, saturated
