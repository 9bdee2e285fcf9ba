"""What differs between model families: the :class:`FamilySpec` the adapter core reads.

Every supported model merges images the same way (``get_image_features`` -> per-entry features,
one placeholder token per feature row in ``input_ids``, ``masked_scatter`` in row-major order), so
the core (:mod:`.adapter`) does the work and a family is described only by what differs:

* how its feature rows split into **views** (tiles, or the overview and the high-resolution grid)
  and which **image** each view belongs to (:class:`Layout`, from the entry sizes and the lengths of
  the placeholder runs in ``input_ids``);
* feature lists that must be pruned with the same rows (Qwen3-VL's deepstack features);
* how positions are built for the pruned prompt (Qwen's M-RoPE), when the default (positions follow
  the pruned attention mask) is not right.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

__all__ = ["FamilySpec", "Layout", "PromptEdit", "one_view_per_entry", "runs_within_entries",
           "entries_within_runs", "shift_positions", "default_positions"]


@dataclass(frozen=True)
class Layout:
    """How the image features of one call split, in placeholder (row-major) order.

    view_sizes: feature rows of each view; a view never crosses a ``pooler_output`` entry.
    view_image: for each view, the index of the image it belongs to (non-decreasing, from 0).
    """

    view_sizes: list[int]
    view_image: list[int]


def one_view_per_entry(config, entry_sizes: list[int], runs: list[int]) -> Layout:
    """Each ``pooler_output`` entry is one image made of one view (LLaVA, Qwen-VL, Gemma 3, PaliGemma)."""
    return Layout(list(entry_sizes), list(range(len(entry_sizes))))


def _mismatch(entry_sizes: list[int], runs: list[int], what: str) -> ValueError:
    return ValueError(
        f"input_ids: the image placeholder runs (lengths {runs}) do not line up with the image features "
        f"(entries of {entry_sizes} rows): {what}"
    )


def runs_within_entries(entry_sizes: list[int], runs: list[int]) -> list[int]:
    """The runs as views, checking that each entry is covered by whole runs (Idefics3: an entry holds
    all tiles of one prompt, each tile is one run)."""
    run_ends = set(torch.tensor(runs, dtype=torch.long).cumsum(0).tolist())
    entry_ends = torch.tensor(entry_sizes, dtype=torch.long).cumsum(0).tolist()
    for size, end in zip(entry_sizes, entry_ends):
        if size and end not in run_ends:
            raise _mismatch(entry_sizes, runs, "a run crosses the end of an entry")
    return list(runs)


def entries_within_runs(entry_sizes: list[int], runs: list[int]) -> list[int]:
    """The image (run) index of every entry, checking that each run is covered by whole entries
    (InternVL: an entry is one tile, an image is one run of tiles)."""
    run_ends = torch.tensor(runs, dtype=torch.long).cumsum(0).tolist()
    images, run, position = [], 0, 0
    for size in entry_sizes:
        if run >= len(run_ends):
            raise _mismatch(entry_sizes, runs, "more features than placeholders")
        images.append(run)
        position += size
        if position > run_ends[run]:
            raise _mismatch(entry_sizes, runs, "an entry crosses the end of a run")
        if position == run_ends[run]:
            run += 1
    return images


def shift_positions(position_ids: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """[B, L] positions with each kept token moved down by the tokens removed before it *in its own
    sequence*: a sequence starts wherever the position does not continue the previous one by 1 (the
    rule transformers uses for padding-free packed rows), so packed rows never get negative positions.
    Removed tokens keep their value (they are dropped by the caller)."""
    removed = (~keep).long()
    through = torch.cumsum(removed, 1)                     # removed up to and including t
    starts = torch.ones_like(keep)
    starts[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    # removed before the start of t's sequence: the latest start's exclusive count (non-decreasing)
    before_start = torch.cummax(torch.where(starts, through - removed, 0), 1).values
    return position_ids - (through - before_start)


@dataclass(frozen=True)
class PromptEdit:
    """One call's prompt before and after pruning, as :attr:`FamilySpec.positions` sees it.

    input_ids:          [B, L] the caller's prompt.
    attention_mask:     [B, L] the caller's mask, or None when the call had none.
    position_ids:       the caller's position_ids, or None.
    keep:               [B, L] bool, True where a token stays.
    new_attention_mask: [B, L'] the mask of the pruned prompt.
    repack:             ``repack(t, fill)`` moves a [B, L] tensor's kept entries to the pruned layout
                        [B, L'] (padding filled with ``fill``).
    inputs:             the call's other keyword arguments, the image encoder's inputs included
                        (``image_grid_thw``, ``mm_token_type_ids``, ...).
    for_generate:       True when the pruned call goes to ``generate`` (else to ``forward``).
    padding_side:       "left" or "right", where the new padding went.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    position_ids: torch.Tensor | None
    keep: torch.Tensor
    new_attention_mask: torch.Tensor
    repack: Callable[[torch.Tensor, int], torch.Tensor]
    inputs: dict
    for_generate: bool
    padding_side: str


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor of shape {tuple(value.shape)}, dtype {value.dtype}"
    return type(value).__name__


def default_positions(model, edit: PromptEdit) -> torch.Tensor | None:
    """The caller's [B, L] (or [1, L]) position_ids, shifted down with :func:`shift_positions` and
    re-packed; None when the call had none (the model then numbers the shorter prompt itself)."""
    position_ids = edit.position_ids
    if position_ids is None:
        return None
    batch, length = edit.input_ids.shape
    if (
        not isinstance(position_ids, torch.Tensor)
        or position_ids.dim() != 2
        or position_ids.shape[1] != length
        or position_ids.shape[0] not in (1, batch)
    ):
        raise ValueError(
            f"position_ids: expected a [B, L] or [1, L] tensor with L = {length}, got {_describe(position_ids)}"
        )
    position_ids = position_ids.expand(batch, length)
    shifted = shift_positions(position_ids, edit.keep)
    if edit.attention_mask is not None:
        shifted = torch.where(edit.attention_mask != 0, shifted, position_ids)
    return edit.repack(shifted, 0)


@dataclass(frozen=True)
class FamilySpec:
    """What the adapter core needs to know about one model family.

    name:              shown in errors and in ``handle.last``.
    classes:           transformers class names (``...ForConditionalGeneration``) of the family.
    units:             the pruning units offered, default first: "image" prunes all views of an image
                       as one token matrix, "view" each view (tile) on its own.
    layout:            ``(config, entry_sizes, runs) -> Layout``; ``runs`` are the lengths of the
                       placeholder runs of ``input_ids`` in row-major order.
    per_entry_features: attributes of the encoder output that hold, per layer, one tensor per entry
                       whose rows follow the features' rows (pruned with the same rows).
    positions:         ``(model, PromptEdit) -> position_ids or None`` for the pruned call; the
                       default keeps the model's own numbering of the shorter prompt (or shifts the
                       caller's position_ids down); Qwen's M-RoPE needs its own (:mod:`.qwen_vl`).
    fixed_num_tokens:  ``config -> N`` when every unit has N rows known from the config (the
                       keywords are then checked against it at enable time), else None.
    min_transformers:  the lowest transformers version whose model merges images as the core
                       expects, when it is above the adapter's own minimum; the reason in ``why``.
    """

    name: str
    classes: tuple[str, ...]
    units: tuple[str, ...] = ("image", "view")
    layout: Callable[..., Layout] = one_view_per_entry
    per_entry_features: tuple[str, ...] = ()
    positions: Callable[..., torch.Tensor | None] = default_positions
    fixed_num_tokens: Callable[..., int | None] = field(default=lambda config: None)
    min_transformers: str | None = None
    why: str = ""
