"""Argument checks shared by the public functions, and the resolved per-call configuration.

Every check raises ValueError or TypeError naming the argument, what was expected and what was
given. Shape, dtype and range checks read only metadata and never synchronise with the device; the
scan for non-finite values (``validate=True``) is the one check that reads the data.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch

from .sketch import MAX_SEED, MAX_SKETCH_ELEMENTS

__all__ = ["PipelineConfig", "check_tokens", "check_scores", "make_config", "nonfinite_images"]

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class PipelineConfig:
    """Everything a backend needs besides the tensors. ``sketch_size`` is the resolved l."""

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


def check_tokens(tokens) -> None:
    if not isinstance(tokens, torch.Tensor):
        raise TypeError(f"tokens: expected a torch.Tensor [B, N, D] or [N, D], got {type(tokens).__name__}")
    if tokens.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"tokens: expected dtype float16, bfloat16, float32 or float64, got {tokens.dtype}"
        )
    if tokens.dim() not in (2, 3):
        raise ValueError(f"tokens: expected rank 3 [B, N, D] or rank 2 [N, D], got {_describe(tokens)}")
    n, d = tokens.shape[-2:]
    if n == 0 or d == 0:
        raise ValueError(f"tokens: expected N >= 1 tokens of D >= 1 features, got {_describe(tokens)}")


def check_scores(scores, tokens: torch.Tensor) -> None:
    if scores is None:
        return
    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"scores: expected a torch.Tensor or None, got {type(scores).__name__}")
    if scores.dtype not in FLOAT_DTYPES:
        raise TypeError(f"scores: expected a floating dtype, got {scores.dtype}")
    expected = tuple(tokens.shape[:-1])
    if tuple(scores.shape) != expected:
        raise ValueError(f"scores: expected shape {expected} (tokens without D), got {_describe(scores)}")
    if scores.device != tokens.device:
        raise ValueError(
            f"scores: expected device {tokens.device} (that of tokens), got {scores.device}"
        )


def _int_arg(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    return int(value)


def make_config(
    tokens: torch.Tensor,
    *,
    energy,
    center,
    sketch_size,
    power_iters,
    min_tokens,
    max_tokens,
    seed,
    sketch_matrix,
) -> PipelineConfig:
    """Checks the keyword arguments against ``tokens`` (already checked) and resolves defaults."""
    n, d = tokens.shape[-2:]
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
    l = min(sketch_size, n, d)
    if max_tokens is None:
        max_tokens = l
    else:
        max_tokens = _int_arg("max_tokens", max_tokens, 1)
        if max_tokens > n:
            raise ValueError(f"max_tokens: expected at most N = {n} (tokens per image), got {max_tokens}")
    if min_tokens > max_tokens:
        raise ValueError(
            f"min_tokens: expected at most max_tokens = {max_tokens}, got {min_tokens}"
        )
    if sketch_matrix is not None:
        if not isinstance(sketch_matrix, torch.Tensor):
            raise TypeError(
                f"sketch_matrix: expected a torch.Tensor [D, l] or None, got {type(sketch_matrix).__name__}"
            )
        if sketch_matrix.dtype not in FLOAT_DTYPES:
            raise TypeError(f"sketch_matrix: expected a floating dtype, got {sketch_matrix.dtype}")
        if tuple(sketch_matrix.shape) != (d, l):
            raise ValueError(
                f"sketch_matrix: expected shape ({d}, {l}) = (D, min(sketch_size, N, D)), "
                f"got {_describe(sketch_matrix)}"
            )
        if sketch_matrix.device != tokens.device:
            raise ValueError(
                f"sketch_matrix: expected device {tokens.device} (that of tokens), got {sketch_matrix.device}"
            )
    elif d * l > MAX_SKETCH_ELEMENTS:
        raise ValueError(
            f"sketch_size: D * l must be below 2**31 for the generated sketch, got D={d}, l={l}; "
            f"pass a smaller sketch_size or an explicit sketch_matrix"
        )
    return PipelineConfig(
        energy=energy,
        center=center,
        sketch_size=l,
        power_iters=power_iters,
        min_tokens=min_tokens,
        max_tokens=max_tokens,
        seed=seed,
        sketch_matrix=sketch_matrix,
    )


def nonfinite_images(tokens: torch.Tensor, scores: torch.Tensor | None) -> torch.Tensor:
    """[B] bool: images whose tokens (or scores) hold NaN or Inf. No host synchronisation."""
    bad = ~torch.isfinite(tokens).flatten(1).all(1)
    if scores is not None:
        bad |= ~torch.isfinite(scores).all(1)
    return bad


def raise_if_nonfinite(tokens: torch.Tensor, scores: torch.Tensor | None, sketch_matrix) -> None:
    """The validate=True data scan; one host synchronisation."""
    bad_tokens = ~torch.isfinite(tokens).flatten(1).all(1)
    bad_scores = None if scores is None else ~torch.isfinite(scores).all(1)
    bad_sketch = None if sketch_matrix is None else ~torch.isfinite(sketch_matrix).all()
    flags = [bad_tokens.any()]
    if bad_scores is not None:
        flags.append(bad_scores.any())
    if bad_sketch is not None:
        flags.append(bad_sketch)
    if not bool(torch.stack(flags).any()):  # the one sync
        return
    if bool(bad_tokens.any()):
        images = bad_tokens.nonzero().flatten().tolist()
        raise ValueError(f"tokens: expected finite values, got NaN or Inf in image(s) {images[:20]}")
    if bad_scores is not None and bool(bad_scores.any()):
        images = bad_scores.nonzero().flatten().tolist()
        raise ValueError(f"scores: expected finite values, got NaN or Inf in image(s) {images[:20]}")
    raise ValueError("sketch_matrix: expected finite values, got NaN or Inf")
