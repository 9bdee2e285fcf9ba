"""InternVL.

An image is cut into tiles (plus a thumbnail) of the same size; each tile's vision tokens are
pixel-shuffled and projected, so ``get_image_features`` returns one [T, D] row block per tile, as one
stacked [tiles, T, D] tensor. The prompt holds one run of ``<IMG_CONTEXT>`` placeholders per image
(between ``<img>`` and ``</img>``), T per tile, so the runs tell which tiles form an image.
``unit="image"`` (default) prunes all tiles of an image as one matrix; ``unit="view"`` prunes each
tile on its own. Like Gemma 3, ``forward`` reads ``pooler_output`` as a tensor (stacked at the model
boundary, see :mod:`.adapter`).
"""

from __future__ import annotations

from .spec import FamilySpec, Layout, entries_within_runs

__all__ = ["INTERNVL"]


def tiles_layout(config, entry_sizes: list[int], runs: list[int]) -> Layout:
    """Each entry (tile) is a view; the placeholder run it falls in is its image."""
    return Layout(list(entry_sizes), entries_within_runs(entry_sizes, runs))


INTERNVL = FamilySpec(
    name="InternVL",
    classes=("InternVLForConditionalGeneration",),
    layout=tiles_layout,
)
