"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL: M-RoPE positions, and Qwen3-VL's deepstack features.

One ``get_image_features`` entry per image (dynamic resolution, no tiles), pruned as one matrix.

Positions. The language model rotates queries and keys by 3-D positions (temporal, height, width)
that ``get_rope_index`` builds from ``mm_token_type_ids`` and ``image_grid_thw``: an image's tokens
get their grid coordinates, and text after an image continues from the largest position used. On a
prompt with placeholders removed that function fails (the grid no longer matches the run) or,
worse, numbers the kept tokens as if they were the first ones of the grid. So the adapter computes
the positions of the *un-pruned* prompt with the model's own ``get_rope_index`` and keeps the
columns of the kept tokens: every kept image token keeps its grid coordinates and the text keeps
its positions, exactly as without pruning. They are passed as ``position_ids`` ([3, B, L'] to
``forward``, [4, B, L'] with the text row first to ``generate``, as the model builds them itself),
and ``model.model.rope_deltas`` (next position minus sequence length, which decoding by hand from a
cache uses) is set for the pruned prompt. Caller-given position_ids ([4, B, L] or [3, B, L]) are
treated the same way (the text row, when present, shifted down per packed sequence); [B, L] ones as
for other models. ``mm_token_type_ids`` is built from the image/video token ids when the call has
none.

Qwen3-VL adds ``deepstack_features`` to the encoder output (per layer, one tensor per image, rows
aligned with the image's features); they are pruned with the same rows.
"""

from __future__ import annotations

import inspect

import torch

from .spec import FamilySpec, PromptEdit, default_positions, shift_positions

__all__ = ["QWEN_VL", "mrope_positions"]


def _mm_token_type_ids(config, input_ids: torch.Tensor) -> torch.Tensor:
    """Text 0, image 1, video 2, as the Qwen processors return them."""
    types = torch.zeros_like(input_ids, dtype=torch.int32)
    types[input_ids == config.image_token_id] = 1
    video_token_id = getattr(config, "video_token_id", None)
    if video_token_id is not None:
        types[input_ids == video_token_id] = 2
    return types


def _unpruned_positions(model, edit: PromptEdit) -> torch.Tensor:
    """[3, B, L] M-RoPE positions of the caller's prompt, from the model's own get_rope_index."""
    base = model.base_model
    mm_token_type_ids = edit.inputs.get("mm_token_type_ids")
    if mm_token_type_ids is None:
        mm_token_type_ids = _mm_token_type_ids(model.config, edit.input_ids)
    parameters = inspect.signature(base.get_rope_index).parameters
    extra = {
        key: value
        for key, value in edit.inputs.items()
        if key in parameters and key not in ("input_ids", "mm_token_type_ids", "attention_mask")
    }
    positions, _ = base.get_rope_index(
        edit.input_ids, mm_token_type_ids=mm_token_type_ids, attention_mask=edit.attention_mask, **extra
    )
    return positions


def mrope_positions(model, edit: PromptEdit) -> torch.Tensor:
    """position_ids of the pruned prompt: the kept tokens' columns of the un-pruned M-RoPE positions."""
    position_ids = edit.position_ids
    batch, length = edit.input_ids.shape
    text = None
    if position_ids is None:
        spatial = _unpruned_positions(model, edit)
        if edit.for_generate:
            # generate() numbers the text row from the mask of the (pruned) prompt
            text = edit.new_attention_mask.long().cumsum(-1) - 1
            text = text.masked_fill(edit.new_attention_mask == 0, 0)
    elif isinstance(position_ids, torch.Tensor) and position_ids.dim() == 2:
        return default_positions(model, edit)
    elif (
        isinstance(position_ids, torch.Tensor)
        and position_ids.dim() == 3
        and position_ids.shape[0] in (3, 4)
        and position_ids.shape[1:] == (batch, length)
    ):
        spatial = position_ids[-3:]
        if position_ids.shape[0] == 4:
            text = shift_positions(position_ids[0], edit.keep)
            if edit.attention_mask is not None:
                text = torch.where(edit.attention_mask != 0, text, position_ids[0])
            text = edit.repack(text, 0)
    else:
        shape = tuple(position_ids.shape) if isinstance(position_ids, torch.Tensor) else type(position_ids).__name__
        raise ValueError(
            f"position_ids: expected [B, L], [3, B, L] or [4, B, L] with B = {batch}, L = {length}, got {shape}"
        )
    kept = torch.stack([edit.repack(row, 0) for row in spatial])
    real = edit.new_attention_mask != 0
    # rope_deltas: the next position minus the number of tokens, per row (what decoding from a cache adds)
    largest = torch.where(real[None], kept, torch.iinfo(kept.dtype).min).amax(dim=(0, 2))
    model.base_model.rope_deltas = (largest + 1 - real.sum(1)).unsqueeze(1)
    return kept if text is None else torch.cat([text[None].to(kept.dtype), kept])


QWEN_VL = FamilySpec(
    name="Qwen2-VL / Qwen2.5-VL / Qwen3-VL",
    classes=(
        "Qwen2VLForConditionalGeneration",
        "Qwen2_5_VLForConditionalGeneration",
        "Qwen3VLForConditionalGeneration",
    ),
    per_entry_features=("deepstack_features",),
    positions=mrope_positions,
)
