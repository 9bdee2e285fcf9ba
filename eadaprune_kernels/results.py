"""Result types returned by the public functions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

__all__ = ["PruneResult", "BudgetResult", "PackedTokens"]

_PREVIEW = 8  # budgets shown by a result's repr before "..."


def _shape(t: torch.Tensor) -> str:
    """``[8, 128, 1024] float32`` (and the device when it is not the CPU)."""
    where = "" if t.device.type == "cpu" else f" on {t.device}"
    return f"{list(t.shape)} {str(t.dtype).removeprefix('torch.')}{where}"


def _budget_summary(name: str, budgets: torch.Tensor, saturated: torch.Tensor) -> str:
    """``name=[...]``: the first budgets, their mean and which images saturated, in one line.

    Reads the values to the host (one synchronisation on a GPU); a meta tensor shows its shape only.
    """
    if budgets.device.type == "meta":
        return f"{name} {_shape(budgets)}"
    if budgets.dim() == 0:
        return f"{name}={int(budgets)}, saturated={bool(saturated)}"
    values = budgets.tolist()
    count = len(values)
    shown = ", ".join(str(v) for v in values[:_PREVIEW]) + (", ..." if count > _PREVIEW else "")
    mean = f" (mean {sum(values) / count:.1f})" if count > 1 else ""
    hit = saturated.nonzero().squeeze(1).tolist()
    which = ""
    if 0 < len(hit) < count:
        which = " (images " + ", ".join(str(i) for i in hit[:_PREVIEW]) + (", ..." if len(hit) > _PREVIEW else "") + ")"
    return f"{name}=[{shown}]{mean}, saturated {len(hit)} of {count}{which}"


class PackedTokens(NamedTuple):
    """The kept tokens of a :class:`PruneResult` without padding (flash-attention layout).

    tokens:      [K, D] in the input dtype, K = sum(lengths); image b's rows are cu_seqlens[b]:cu_seqlens[b + 1].
    cu_seqlens:  [B + 1] int32, cu_seqlens[0] = 0, cu_seqlens[b + 1] - cu_seqlens[b] = lengths[b].
    indices:     [K] int64, each kept token's position relative to its own image's start (ascending
                 within an image); add the input's cu_seqlens[b] for the position in packed input.
    """

    tokens: torch.Tensor
    cu_seqlens: torch.Tensor
    indices: torch.Tensor

    def __repr__(self) -> str:
        return (f"PackedTokens(tokens {_shape(self.tokens)}, cu_seqlens {_shape(self.cu_seqlens)}, "
                f"indices {_shape(self.indices)})")


@dataclass(frozen=True, repr=False)
class BudgetResult:
    """Per-image token budgets and the spectrum they came from.

    For a batched input [B, N, D]:
        budgets:          [B] int32, tokens each image keeps (min_tokens <= budget <= max_tokens).
        singular_values:  [B, l] float32, sketched singular values of the centred tokens, descending;
                          each is a lower bound on the exact one.
        total_energy:     [B] float32, exact ||X_c||_F^2 (the denominator of the threshold).
        saturated:        [B] bool, True when no k <= l reached the energy target (or the image held
                          a non-finite value under validate=False); such an image gets max_tokens.
        backend:          name of the backend that computed it.
    A single image [N, D] gives the same fields without the leading B dimension.
    Ragged input: singular_values is [B, min(sketch_size, D)], 0 past each image's l_i, and a
    saturated image gets its own max_i = min(max_tokens, N_i).

    A saturated budget is a cap, not a measurement: the image needs more than l singular values to
    reach the energy (raise ``sketch_size``). ``repr`` shows the first budgets and counts them.
    """

    budgets: torch.Tensor
    singular_values: torch.Tensor
    total_energy: torch.Tensor
    saturated: torch.Tensor
    backend: str

    def __repr__(self) -> str:
        return (f"BudgetResult(backend={self.backend!r}, {_budget_summary('budgets', self.budgets, self.saturated)}, "
                f"singular_values {_shape(self.singular_values)})")


@dataclass(frozen=True, repr=False)
class PruneResult:
    """The kept tokens of every image, padded to a common length M = max_tokens.

    For a batched input [B, N, D]:
        tokens:           [B, M, D] in the input dtype; row p < lengths[b] is a kept token, rows past
                          it are exactly zero.
        indices:          [B, M] int64, the kept tokens' positions in the input, ascending; -1 in padding.
                          For ragged input, positions relative to each image's start (0 <= index < N_i).
        lengths:          [B] int32, the budget of each image.
        mask:             [B, M] bool, ``arange(M) < lengths[:, None]``.
        singular_values:  [B, l] float32, as in :class:`BudgetResult`.
        total_energy:     [B] float32, as in :class:`BudgetResult`.
        saturated:        [B] bool, as in :class:`BudgetResult`.
        backend:          name of the backend that computed it.
    A single image [N, D] gives the same fields without the leading B dimension.

    Ragged input (packed [T, D] with cu_seqlens [B + 1], or a list of [N_i, D]): the same fields, with
    M = max_tokens if given, else min(sketch_size, D) (never data-dependent); lengths[b] <= min(M, N_i)
    and singular_values [B, min(sketch_size, D)] with the entries past l_i = min(sketch_size, N_i, D)
    equal to 0. :meth:`packed_with_indices` gives the packed layout.

    ``repr`` is one line: the backend, the first budgets, the saturated images and the shapes (print
    a field to see its values).
    """

    tokens: torch.Tensor
    indices: torch.Tensor
    lengths: torch.Tensor
    mask: torch.Tensor
    singular_values: torch.Tensor
    total_energy: torch.Tensor
    saturated: torch.Tensor
    backend: str

    def __repr__(self) -> str:
        return (f"PruneResult(backend={self.backend!r}, {_budget_summary('lengths', self.lengths, self.saturated)}, "
                f"tokens {_shape(self.tokens)}, singular_values {_shape(self.singular_values)})")

    def packed(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The kept tokens without padding: (tokens [sum(lengths), D], cu_seqlens [B + 1] int32).

        Image b's tokens are rows ``cu_seqlens[b]:cu_seqlens[b + 1]``. The total length decides the
        output shape, so this costs one host synchronisation on a GPU.
        """
        tokens, mask, lengths = self.tokens, self.mask, self.lengths
        if tokens.dim() == 2:  # unbatched result
            tokens, mask, lengths = tokens[None], mask[None], lengths.reshape(1)
        cu_seqlens = torch.zeros(lengths.numel() + 1, dtype=torch.int32, device=lengths.device)
        cu_seqlens[1:] = torch.cumsum(lengths, 0, dtype=torch.int32)
        return tokens[mask], cu_seqlens

    def packed_with_indices(self) -> PackedTokens:
        """:meth:`packed` plus the kept indices: ``PackedTokens(tokens [K, D], cu_seqlens [B + 1] int32,
        indices [K] int64)`` with K = sum(lengths) and indices relative to each image's start.

        K decides the output shapes, so this costs one host synchronisation on a GPU (a single boolean
        mask is used for both gathers).
        """
        tokens, mask, lengths, indices = self.tokens, self.mask, self.lengths, self.indices
        if tokens.dim() == 2:  # unbatched result
            tokens, mask, lengths, indices = tokens[None], mask[None], lengths.reshape(1), indices[None]
        cu_seqlens = torch.zeros(lengths.numel() + 1, dtype=torch.int32, device=lengths.device)
        cu_seqlens[1:] = torch.cumsum(lengths, 0, dtype=torch.int32)
        rows = mask.reshape(-1).nonzero().squeeze(1)  # the one sync
        return PackedTokens(tokens.reshape(-1, tokens.shape[-1])[rows], cu_seqlens, indices.reshape(-1)[rows])
