"""The supported model families, in the order the README lists them."""

from __future__ import annotations

from .gemma import GEMMA3, PALIGEMMA
from .idefics import IDEFICS3, SMOLVLM
from .internvl import INTERNVL
from .llava import LLAVA, LLAVA_ANYRES
from .qwen_vl import QWEN_VL

__all__ = ["FAMILIES", "SUPPORTED_MODELS", "find_family"]

FAMILIES = (LLAVA, LLAVA_ANYRES, QWEN_VL, GEMMA3, PALIGEMMA, INTERNVL, IDEFICS3, SMOLVLM)

SUPPORTED_MODELS = tuple(name for family in FAMILIES for name in family.classes)


def find_family(model):
    """The FamilySpec of ``model``: a transformers class of the family along its MRO, else None."""
    names = {cls.__name__ for cls in type(model).__mro__ if cls.__module__.startswith("transformers.")}
    for family in FAMILIES:
        if names.intersection(family.classes):
            return family
    return None
