"""Result types returned by the public functions."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["PruneResult", "BudgetResult"]


@dataclass(frozen=True)
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
    """

    budgets: torch.Tensor
    singular_values: torch.Tensor
    total_energy: torch.Tensor
    saturated: torch.Tensor
    backend: str


@dataclass(frozen=True)
class PruneResult:
    """The kept tokens of every image, padded to a common length M = max_tokens.

    For a batched input [B, N, D]:
        tokens:           [B, M, D] in the input dtype; row p < lengths[b] is a kept token, rows past
                          it are exactly zero.
        indices:          [B, M] int64, the kept tokens' positions in the input, ascending; -1 in padding.
        lengths:          [B] int32, the budget of each image.
        mask:             [B, M] bool, ``arange(M) < lengths[:, None]``.
        singular_values:  [B, l] float32, as in :class:`BudgetResult`.
        total_energy:     [B] float32, as in :class:`BudgetResult`.
        saturated:        [B] bool, as in :class:`BudgetResult`.
        backend:          name of the backend that computed it.
    A single image [N, D] gives the same fields without the leading B dimension.
    """

    tokens: torch.Tensor
    indices: torch.Tensor
    lengths: torch.Tensor
    mask: torch.Tensor
    singular_values: torch.Tensor
    total_energy: torch.Tensor
    saturated: torch.Tensor
    backend: str

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
