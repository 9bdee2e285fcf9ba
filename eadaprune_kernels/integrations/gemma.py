"""Gemma 3 and PaliGemma.

``get_image_features`` returns ``pooler_output`` as one [I, N, D] tensor (N = ``mm_tokens_per_image``,
256 for the released models), one entry per image, and ``forward`` reads it as a tensor (the core
stacks the pruned images at the model boundary, see :mod:`.adapter`).

``token_type_ids`` (and ``mm_token_type_ids``) follow the kept tokens like ``attention_mask``. Gemma 3
marks image tokens with 1 and lets each contiguous run attend to itself bidirectionally: a pruned
image is a shorter run, still one block. PaliGemma marks the prefix (image and prompt) with 0 and
the suffix with 1; the prefix stays one bidirectional block. Gemma 3's pan-and-scan crops are
separate images (each with its own run), so each crop is pruned on its own.
"""

from __future__ import annotations

from .spec import FamilySpec

__all__ = ["GEMMA3", "PALIGEMMA"]

GEMMA3 = FamilySpec(
    name="Gemma 3",
    classes=("Gemma3ForConditionalGeneration",),
)

PALIGEMMA = FamilySpec(
    name="PaliGemma",
    classes=("PaliGemmaForConditionalGeneration",),
)
