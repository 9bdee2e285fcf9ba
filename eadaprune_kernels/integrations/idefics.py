"""Idefics3 and SmolVLM.

An image is split into tiles plus a downscaled global image; the prompt gives each tile its own
run of ``<image>`` placeholders, separated by text tokens (``<fake_token_around_image>``,
``<row_i_col_j>``, ``<global-img>``, newlines). ``get_image_features`` returns one entry per prompt
(all its tiles, concatenated). The runs are the views; they are pruned one by one and the separator
tokens are kept, so every tile keeps its label in front of it. Which runs form one image cannot be
told from the model's inputs (two images can follow each other with only separator tokens between
them), so "view" (per tile) is the only unit.
"""

from __future__ import annotations

from .spec import FamilySpec, Layout, runs_within_entries

__all__ = ["IDEFICS3"]


def tile_runs_layout(config, entry_sizes: list[int], runs: list[int]) -> Layout:
    """Each placeholder run (one tile) is a view of its own."""
    views = runs_within_entries(entry_sizes, runs)
    return Layout(views, list(range(len(views))))


IDEFICS3 = FamilySpec(
    name="Idefics3 / SmolVLM",
    classes=("Idefics3ForConditionalGeneration", "SmolVLMForConditionalGeneration"),
    units=("view",),
    layout=tile_runs_layout,
)
