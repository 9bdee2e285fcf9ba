"""The one normalisation of the public functions' token input, and its metadata checks.

Every public function calls :func:`normalise` once. It accepts a batch [B, N, D], one image [N, D],
packed ragged tokens [T, D] with ``cu_seqlens`` [B + 1] (image b is rows cu_seqlens[b]:cu_seqlens[b + 1],
the flash-attention convention), or a Python list of [N_i, D] tensors (packed once with torch.cat,
cu_seqlens built on the host from the shapes: no synchronisation), and returns a :class:`Batch`: dense
tokens [B, N, D] (every image has N tokens, known from the shapes) or packed tokens [T, D] with
cu_seqlens. The checks read only metadata and never synchronise; each raises ValueError or TypeError
naming the argument, what was expected and what was given. The checks that read data (NaN/Inf, the
values of cu_seqlens) run once, inside the custom op (:mod:`eadaprune_kernels.ops`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .contract import FLOAT_DTYPES

__all__ = ["Batch", "normalise", "check_tokens", "check_bounds_values"]

INDEX_DTYPES = (torch.int32, torch.int64)


@dataclass(frozen=True)
class Batch:
    """Normalised token input: dense ``tokens`` [B, N, D] with ``scores`` [B, N] and no cu_seqlens, or
    packed ``tokens`` [T, D] with ``scores`` [T] and ``cu_seqlens`` [B + 1]. ``single``: the caller
    passed one image [N, D] (results drop the batch dimension)."""

    tokens: torch.Tensor
    scores: torch.Tensor | None
    cu_seqlens: torch.Tensor | None
    single: bool = False

    @property
    def size(self) -> int:
        """B, from the shapes alone."""
        return self.tokens.shape[0] if self.cu_seqlens is None else self.cu_seqlens.shape[0] - 1

    @property
    def tokens_per_image(self) -> int | None:
        """N of a dense batch; None for a ragged one."""
        return self.tokens.shape[1] if self.cu_seqlens is None else None


def _describe(t: torch.Tensor) -> str:
    return f"tensor of shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device}"


def normalise(tokens, scores, cu_seqlens) -> Batch:
    """The checked :class:`Batch` of a public call's ``tokens``, ``scores`` and ``cu_seqlens``."""
    if isinstance(tokens, (list, tuple)):
        if cu_seqlens is not None:
            raise TypeError("cu_seqlens: expected None when tokens is a list of images (it is built from their shapes)")
        return _pack_images(tokens, scores)
    if cu_seqlens is not None:
        _check_packed(tokens, cu_seqlens)
        _check_packed_scores(scores, tokens)
        return Batch(tokens, scores, cu_seqlens)
    check_tokens(tokens)
    _check_scores(scores, tokens)
    if tokens.dim() == 2:
        return Batch(tokens[None], None if scores is None else scores[None], None, single=True)
    return Batch(tokens, scores, None)


def check_tokens(tokens) -> None:
    """A dense batch [B, N, D] or one image [N, D] of a floating dtype with N, D >= 1 (metadata only)."""
    if not isinstance(tokens, torch.Tensor):
        raise TypeError(f"tokens: expected a torch.Tensor [B, N, D] or [N, D], got {type(tokens).__name__}")
    if tokens.dtype not in FLOAT_DTYPES:
        raise TypeError(f"tokens: expected dtype float16, bfloat16, float32 or float64, got {tokens.dtype}")
    if tokens.dim() not in (2, 3):
        raise ValueError(f"tokens: expected rank 3 [B, N, D] or rank 2 [N, D], got {_describe(tokens)}")
    n, d = tokens.shape[-2:]
    if n == 0 or d == 0:
        raise ValueError(f"tokens: expected N >= 1 tokens of D >= 1 features, got {_describe(tokens)}")


def _check_score_tensor(scores, what: str) -> None:
    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"scores: expected {what}, got {type(scores).__name__}")
    if scores.dtype not in FLOAT_DTYPES:
        raise TypeError(f"scores: expected a floating dtype, got {scores.dtype}")


def _check_scores(scores, tokens: torch.Tensor) -> None:
    if scores is None:
        return
    _check_score_tensor(scores, "a torch.Tensor or None")
    expected = tuple(tokens.shape[:-1])
    if tuple(scores.shape) != expected:
        raise ValueError(f"scores: expected shape {expected} (tokens without D), got {_describe(scores)}")
    if scores.device != tokens.device:
        raise ValueError(f"scores: expected device {tokens.device} (that of tokens), got {scores.device}")


def _check_packed(tokens, cu_seqlens) -> None:
    """Metadata of packed tokens [T, D] and cu_seqlens [B + 1]; reads no data."""
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


def _check_packed_scores(scores, tokens: torch.Tensor) -> None:
    """Scores of packed tokens: [T] floating, on the tokens' device."""
    if scores is None:
        return
    _check_score_tensor(scores, "a torch.Tensor [T] (packed like tokens) or None")
    if tuple(scores.shape) != (tokens.shape[0],):
        raise ValueError(f"scores: expected shape ({tokens.shape[0]},) (packed like tokens), got {_describe(scores)}")
    if scores.device != tokens.device:
        raise ValueError(f"scores: expected device {tokens.device} (that of tokens), got {scores.device}")


def _pack_images(images, scores) -> Batch:
    """A list of [N_i, D] tensors (and optional scores: a list of [N_i], or packed [T]) packed once with
    torch.cat; cu_seqlens [B + 1] int64 is built on the host from the shapes and copied to the tokens'
    device. Every image must hold N_i >= 1 tokens."""
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
    else:
        _check_packed_scores(scores, tokens)
    return Batch(tokens, scores, cu_seqlens)


def check_bounds_values(bounds: list[int], total_tokens: int) -> None:
    """The value rule of cu_seqlens, on host integers: starts at 0, ends at T, strictly increasing."""
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
