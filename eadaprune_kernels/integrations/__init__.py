"""Adapters that plug :func:`eadaprune_kernels.adaptive_prune` into model libraries.

* Hugging Face transformers vision-language models (``pip install "eadaprune_kernels[hf]"``):
  :func:`enable_token_pruning` for the classes of :data:`SUPPORTED_MODELS` (LLaVA, LLaVA-NeXT,
  LLaVA-OneVision, Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Gemma 3, PaliGemma, InternVL, Idefics3, SmolVLM).
  The core is :mod:`.adapter`; each family is a small spec (:mod:`.spec`, :mod:`.families`).
  transformers is imported only when a model is enabled.
"""

from .adapter import MIN_TRANSFORMERS, PrunedInputs, TokenPruningHandle, enable_token_pruning
from .families import FAMILIES, SUPPORTED_MODELS

__all__ = ["enable_token_pruning", "TokenPruningHandle", "PrunedInputs", "SUPPORTED_MODELS", "FAMILIES",
           "MIN_TRANSFORMERS"]
