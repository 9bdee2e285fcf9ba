"""Idefics3 and SmolVLM.

An image is split into tiles plus a downscaled global image; the prompt gives each tile its own
run of ``<image>`` placeholders, separated by text tokens (``<fake_token_around_image>``,
``<row_i_col_j>``, ``<global-img>``, newlines). ``get_image_features`` returns one entry per prompt
(all its tiles, concatenated; before transformers 5.19: one stacked [tiles, T, D] tensor, one entry
per tile, which the same layout reads). The runs are the views; they are pruned one by one and the separator
tokens are kept, so every tile keeps its label in front of it. Which runs form one image cannot be
told from the model's inputs (two images can follow each other with only separator tokens between
them), so "view" (per tile) is the only unit.

SmolVLM needs transformers >= 5.21: before, its ``inputs_merger`` cut the features into blocks of
exactly one tile's token count and required every prompt's placeholder count to be a multiple of it,
so a tile could not lose tokens. (Idefics3 already merged with ``masked_scatter`` in 5.18.)
"""

from __future__ import annotations

from .spec import FamilySpec, Layout, runs_within_entries

__all__ = ["IDEFICS3", "SMOLVLM"]


def tile_runs_layout(config, entry_sizes: list[int], runs: list[int]) -> Layout:
    """Each placeholder run (one tile) is a view of its own."""
    views = runs_within_entries(entry_sizes, runs)
    return Layout(views, list(range(len(views))))


IDEFICS3 = FamilySpec(
    name="Idefics3",
    classes=("Idefics3ForConditionalGeneration",),
    units=("view",),
    layout=tile_runs_layout,
)

SMOLVLM = FamilySpec(
    name="SmolVLM",
    classes=("SmolVLMForConditionalGeneration",),
    units=("view",),
    layout=tile_runs_layout,
    min_transformers="5.21",
    why="its inputs_merger places image features in blocks of one tile's token count, so a tile cannot lose tokens",
)
