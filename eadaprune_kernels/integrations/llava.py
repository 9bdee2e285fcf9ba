"""LLaVA, LLaVA-NeXT and LLaVA-OneVision.

* LLaVA: ``get_image_features`` gives one [N, D] entry per image (N fixed by the CLIP/SigLIP tower),
  pruned as one matrix.
* LLaVA-NeXT / LLaVA-OneVision (anyres): one entry per image holding the overview (base) view, N_0 =
  (image_size / patch_size)^2 rows, followed by the high-resolution grid: all tiles merged, unpadded
  (OneVision: possibly downscaled), with an ``image_newline`` row after each grid row. The tiles are
  no longer separable after unpadding, so the views are the base view and the grid. ``unit="image"``
  (default, the LLaVA-NeXT behaviour) prunes the whole entry as one matrix, newline rows included;
  ``unit="view"`` prunes the base view and the grid separately. A single-view entry (an image without
  tiles, e.g. OneVision's multi-image prompts: base view plus one newline row) is one view.
"""

from __future__ import annotations

from .spec import FamilySpec, Layout

__all__ = ["LLAVA", "LLAVA_ANYRES"]


def _clip_llava_num_tokens(config) -> int | None:
    """N for a LLaVA with a CLIP vision tower; None where it is not fixed or not known."""
    vision = config.vision_config
    if getattr(vision, "model_type", None) != "clip_vision_model":
        return None
    side = vision.image_size // vision.patch_size
    return side * side + (0 if config.vision_feature_select_strategy == "default" else 1)


def anyres_layout(config, entry_sizes: list[int], runs: list[int]) -> Layout:
    """Views of each anyres entry: [base view, high-resolution grid], or the whole entry when it has no grid."""
    side = config.vision_config.image_size // config.vision_config.patch_size
    base = side * side
    sizes, images = [], []
    for image, n in enumerate(entry_sizes):
        views = [base, n - base] if n > base + 1 else [n]
        sizes += views
        images += [image] * len(views)
    return Layout(sizes, images)


LLAVA = FamilySpec(
    name="LLaVA",
    classes=("LlavaForConditionalGeneration",),
    fixed_num_tokens=_clip_llava_num_tokens,
)

LLAVA_ANYRES = FamilySpec(
    name="LLaVA-NeXT / LLaVA-OneVision",
    classes=("LlavaNextForConditionalGeneration", "LlavaOnevisionForConditionalGeneration"),
    layout=anyres_layout,
)
