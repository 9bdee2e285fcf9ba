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

__all__ = ["PipelineConfig", "check_tokens", "check_scores", "make_config", "nonfinite_images",
           "pack_images", "check_ragged", "check_ragged_scores", "image_bounds", "ragged_nonfinite_images",
           "raise_if_invalid_ragged"]

INDEX_DTYPES = (torch.int32, torch.int64)

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
    ragged: bool = False,
) -> PipelineConfig:
    """Checks the keyword arguments against ``tokens`` (already checked) and resolves defaults.

    ``ragged``: tokens are packed [T, D] images of different N_i. The config then holds the batch-wide
    widths: ``sketch_size`` = L = min(sketch_size, D) and ``max_tokens`` = M (default L, not checked
    against any N_i); each image uses l_i = min(L, N_i), max_i = min(M, N_i), min_i = min(min_tokens, max_i).
    """
    if ragged:
        n, d = None, tokens.shape[-1]
    else:
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
    l = min(sketch_size, d) if ragged else min(sketch_size, n, d)
    if max_tokens is None:
        max_tokens = l
    else:
        max_tokens = _int_arg("max_tokens", max_tokens, 1)
        if not ragged and max_tokens > n:
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
            what = "(D, min(sketch_size, D)) for ragged input" if ragged else "(D, min(sketch_size, N, D))"
            raise ValueError(f"sketch_matrix: expected shape ({d}, {l}) = {what}, got {_describe(sketch_matrix)}")
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


def nonfinite_rows(t: torch.Tensor) -> torch.Tensor:
    """[B] bool: rows of t (flattened after the first dimension) that hold NaN or +-Inf.

    One min/max reduction pass (NaN propagates through aminmax, an infinity is an extreme), about
    twice as fast as isfinite(t).all(): no [B, ...] bool temporary. No host synchronisation.
    """
    low, high = torch.aminmax(t.flatten(1), dim=1)
    return ~(torch.isfinite(low) & torch.isfinite(high))


def nonfinite_images(tokens: torch.Tensor, scores: torch.Tensor | None) -> torch.Tensor:
    """[B] bool: images whose tokens (or scores) hold NaN or Inf. No host synchronisation."""
    bad = nonfinite_rows(tokens)
    if scores is not None:
        bad |= nonfinite_rows(scores)
    return bad


def raise_if_nonfinite(tokens: torch.Tensor, scores: torch.Tensor | None, sketch_matrix) -> None:
    """The validate=True data scan; one host synchronisation."""
    bad_tokens = nonfinite_rows(tokens)
    bad_scores = None if scores is None else nonfinite_rows(scores)
    bad_sketch = None if sketch_matrix is None else nonfinite_rows(sketch_matrix[None])[0]
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


# ---- ragged input: packed tokens [T, D] with cu_seqlens [B + 1] ------------------------------------


def pack_images(images, scores):
    """A Python list of [N_i, D] tensors (and optional scores: a list of [N_i], or packed [T]) packed
    once with torch.cat: (tokens [T, D], scores [T] or None, cu_seqlens [B + 1] int64).

    cu_seqlens is built on the host from the shapes (no device synchronisation) and copied to the
    tokens' device. Every image must hold N_i >= 1 tokens.
    """
    if len(images) == 0:
        raise ValueError("tokens: expected a non-empty list of [N_i, D] tensors, got an empty list")
    for i, image in enumerate(images):
        if not isinstance(image, torch.Tensor):
            raise TypeError(
                f"tokens: expected a torch.Tensor [B, N, D] or [N, D], or a list of [N_i, D] tensors, "
                f"got list (element {i} is {type(image).__name__})"
            )
    first = images[0]
    if first.dtype not in FLOAT_DTYPES:
        raise TypeError(f"tokens: expected dtype float16, bfloat16, float32 or float64, got {first.dtype} (image 0)")
    for i, image in enumerate(images):
        if image.dim() != 2:
            raise ValueError(f"tokens: expected every image of the list as [N_i, D], got image {i} as {_describe(image)}")
        if image.dtype != first.dtype or image.device != first.device:
            raise ValueError(
                f"tokens: expected every image with dtype {first.dtype} on {first.device} (those of image 0), "
                f"got image {i} as {_describe(image)}"
            )
        if image.shape[1] != first.shape[1]:
            raise ValueError(
                f"tokens: expected every image with D = {first.shape[1]} features (that of image 0), "
                f"got image {i} as {_describe(image)}"
            )
        if image.shape[0] == 0:
            raise ValueError(f"tokens: image {i} is empty (N_i = 0); every image needs at least one token")
    bounds = [0]
    for image in images:
        bounds.append(bounds[-1] + image.shape[0])
    cu_seqlens = torch.tensor(bounds, dtype=torch.int64).to(first.device)
    tokens = torch.cat(list(images), 0)
    if isinstance(scores, (list, tuple)):
        if len(scores) != len(images):
            raise ValueError(f"scores: expected a list of {len(images)} tensors (one per image), got {len(scores)}")
        for i, (s, image) in enumerate(zip(scores, images)):
            if not isinstance(s, torch.Tensor):
                raise TypeError(f"scores: expected a list of tensors [N_i], got element {i} of type {type(s).__name__}")
            if tuple(s.shape) != (image.shape[0],):
                raise ValueError(f"scores: expected image {i}'s scores of shape ({image.shape[0]},), got {_describe(s)}")
            if s.dtype not in FLOAT_DTYPES:
                raise TypeError(f"scores: expected a floating dtype, got {s.dtype} (image {i})")
            if s.device != first.device:
                raise ValueError(f"scores: expected device {first.device} (that of tokens), got {s.device} (image {i})")
        dtypes = {s.dtype for s in scores}
        if len(dtypes) != 1:
            raise TypeError(f"scores: expected one dtype for every image, got {sorted(map(str, dtypes))}")
        scores = torch.cat(list(scores), 0)
    return tokens, scores, cu_seqlens


def check_ragged(tokens, cu_seqlens) -> None:
    """Metadata checks of packed tokens [T, D] and cu_seqlens [B + 1]; reads no data."""
    if not isinstance(tokens, torch.Tensor):
        raise TypeError(f"tokens: expected packed tokens as a torch.Tensor [T, D] with cu_seqlens, got {type(tokens).__name__}")
    if tokens.dtype not in FLOAT_DTYPES:
        raise TypeError(f"tokens: expected dtype float16, bfloat16, float32 or float64, got {tokens.dtype}")
    if tokens.dim() != 2:
        raise ValueError(f"tokens: expected packed tokens [T, D] (rank 2) with cu_seqlens, got {_describe(tokens)}")
    if tokens.shape[0] == 0 or tokens.shape[1] == 0:
        raise ValueError(f"tokens: expected T >= 1 tokens of D >= 1 features, got {_describe(tokens)}")
    if not isinstance(cu_seqlens, torch.Tensor):
        raise TypeError(f"cu_seqlens: expected a torch.Tensor [B + 1] of int32 or int64, got {type(cu_seqlens).__name__}")
    if cu_seqlens.dtype not in INDEX_DTYPES:
        raise TypeError(f"cu_seqlens: expected dtype int32 or int64, got {cu_seqlens.dtype}")
    if cu_seqlens.dim() != 1 or cu_seqlens.shape[0] < 2:
        raise ValueError(
            f"cu_seqlens: expected a 1-D tensor [B + 1] with B >= 1 (image b is rows cu_seqlens[b]:cu_seqlens[b + 1]), "
            f"got {_describe(cu_seqlens)}"
        )
    if cu_seqlens.device != tokens.device:
        raise ValueError(f"cu_seqlens: expected device {tokens.device} (that of tokens), got {cu_seqlens.device}")


def check_ragged_scores(scores, tokens: torch.Tensor) -> None:
    """Scores of packed tokens: [T] floating, on the tokens' device."""
    if scores is None:
        return
    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"scores: expected a torch.Tensor [T] (packed like tokens) or None, got {type(scores).__name__}")
    if scores.dtype not in FLOAT_DTYPES:
        raise TypeError(f"scores: expected a floating dtype, got {scores.dtype}")
    if tuple(scores.shape) != (tokens.shape[0],):
        raise ValueError(f"scores: expected shape ({tokens.shape[0]},) (packed like tokens), got {_describe(scores)}")
    if scores.device != tokens.device:
        raise ValueError(f"scores: expected device {tokens.device} (that of tokens), got {scores.device}")


def check_bounds_values(bounds: list[int], total_tokens: int) -> None:
    """The value checks of cu_seqlens, on host integers: starts at 0, ends at T, strictly increasing."""
    if bounds[0] != 0:
        raise ValueError(f"cu_seqlens: expected cu_seqlens[0] = 0, got {bounds[0]}")
    for b in range(len(bounds) - 1):
        if bounds[b + 1] == bounds[b]:
            raise ValueError(
                f"cu_seqlens: image {b} is empty (cu_seqlens[{b}] = cu_seqlens[{b + 1}] = {bounds[b]}); "
                f"every image needs at least one token"
            )
        if bounds[b + 1] < bounds[b]:
            raise ValueError(
                f"cu_seqlens: expected strictly increasing values, got cu_seqlens[{b}] = {bounds[b]} > "
                f"cu_seqlens[{b + 1}] = {bounds[b + 1]}"
            )
    if bounds[-1] != total_tokens:
        raise ValueError(
            f"cu_seqlens: expected cu_seqlens[-1] = {total_tokens} (the total token count T), got {bounds[-1]}"
        )


def image_bounds(cu_seqlens: torch.Tensor, total_tokens: int) -> list[int]:
    """cu_seqlens as checked host integers: one host synchronisation when it lives on a GPU."""
    bounds = [int(v) for v in cu_seqlens.tolist()]
    check_bounds_values(bounds, total_tokens)
    return bounds


def check_total_budget_feasible(bounds: list[int], total_budget: int, min_tokens: int, max_tokens: int) -> None:
    """sum(min_i) <= total_budget <= sum(max_i) with max_i = min(M, N_i), min_i = min(min_tokens, max_i)."""
    maxes = [min(max_tokens, bounds[b + 1] - bounds[b]) for b in range(len(bounds) - 1)]
    low = sum(min(min_tokens, m) for m in maxes)
    high = sum(maxes)
    if not low <= total_budget <= high:
        raise ValueError(
            f"total_budget: expected between sum(min_i) = {low} and sum(max_i) = {high} for these images "
            f"(max_i = min(max_tokens, N_i), min_i = min(min_tokens, max_i)), got {total_budget}"
        )


def image_of_token(cu_seqlens: torch.Tensor, total_tokens: int) -> torch.Tensor:
    """[T] int64: the image each packed row belongs to (clamped to [0, B - 1]). No synchronisation."""
    rows = torch.arange(total_tokens, device=cu_seqlens.device, dtype=cu_seqlens.dtype)
    image = torch.searchsorted(cu_seqlens[1:].contiguous(), rows, right=True)
    return image.clamp(max=cu_seqlens.shape[0] - 2)


def ragged_nonfinite_images(tokens: torch.Tensor, cu_seqlens: torch.Tensor, scores) -> torch.Tensor:
    """[B] bool: images of packed tokens (or scores) that hold NaN or Inf. No host synchronisation."""
    row_bad = ~torch.isfinite(tokens).all(1)
    if scores is not None:
        row_bad |= ~torch.isfinite(scores)
    batch = cu_seqlens.shape[0] - 1
    counts = torch.zeros(batch, dtype=torch.int64, device=tokens.device)
    counts.index_add_(0, image_of_token(cu_seqlens, tokens.shape[0]), row_bad.to(torch.int64))
    return counts > 0


def raise_if_invalid_ragged(
    tokens: torch.Tensor, cu_seqlens: torch.Tensor, scores, sketch_matrix, *, check_values: bool,
    check_finite: bool, total_budget: int | None = None, min_tokens: int = 1, max_tokens: int = 1,
) -> None:
    """The data checks of a ragged call, with at most one host synchronisation.

    ``check_values``: cu_seqlens starts at 0, ends at T, strictly increasing (and, with
    ``total_budget``, sum(min_i) <= total_budget <= sum(max_i)). ``check_finite``: the NaN/Inf scan
    of tokens, scores and sketch_matrix, naming the images.
    """
    if not (check_values or check_finite):
        return
    parts = [cu_seqlens.to(torch.int64)]
    if check_finite:
        bad_tokens = ragged_nonfinite_images(tokens, cu_seqlens, None)
        bad_scores = None if scores is None else ragged_nonfinite_images(scores[:, None], cu_seqlens, None)
        parts.append(bad_tokens.to(torch.int64))
        if bad_scores is not None:
            parts.append(bad_scores.to(torch.int64))
        if sketch_matrix is not None:
            parts.append((~torch.isfinite(sketch_matrix).all()).to(torch.int64).reshape(1))
    host = torch.cat(parts).tolist()  # the one sync
    batch = cu_seqlens.shape[0] - 1
    bounds = host[: batch + 1]
    if check_values:
        check_bounds_values(bounds, tokens.shape[0])
        if total_budget is not None:
            check_total_budget_feasible(bounds, total_budget, min_tokens, max_tokens)
    if check_finite:
        rest = host[batch + 1:]
        images = [b for b in range(batch) if rest[b]]
        if images:
            raise ValueError(f"tokens: expected finite values, got NaN or Inf in image(s) {images[:20]}")
        rest = rest[batch:]
        if scores is not None:
            images = [b for b in range(batch) if rest[b]]
            if images:
                raise ValueError(f"scores: expected finite values, got NaN or Inf in image(s) {images[:20]}")
            rest = rest[batch:]
        if sketch_matrix is not None and rest[0]:
            raise ValueError("sketch_matrix: expected finite values, got NaN or Inf")
