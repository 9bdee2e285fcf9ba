"""Adapters that plug :func:`eadaprune_kernels.adaptive_prune` into model libraries.

* :mod:`eadaprune_kernels.integrations.llava`: Hugging Face transformers LLaVA / LLaVA-NeXT
  (``pip install "eadaprune_kernels[hf]"``). transformers is imported only when a model is enabled.
"""

from .llava import PrunedInputs, TokenPruningHandle, enable_token_pruning

__all__ = ["enable_token_pruning", "TokenPruningHandle", "PrunedInputs"]
