"""E-AdaPrune for vLLM: prune each image's visual tokens before vLLM sees them.

>>> from eadaprune_kernels.integrations.vllm import PrunedImageEncoder
>>> enc = PrunedImageEncoder.from_pretrained(model_dir, device="cuda", dtype=torch.bfloat16, energy=0.99)
>>> feats = enc.encode(images)                 # list of [k_i, D]: each image's kept projected features
>>> llm = vllm.LLM(model_dir, enable_mm_embeds=True)
>>> outs = llm.generate(enc.requests(prompts, images), sampling_params)
>>> enc.chat_message("What is shown?", [image])  # an OpenAI chat message with image_embeds parts

* :mod:`.encoder`: :class:`PrunedImageEncoder` (the checkpoint's image encoder plus
  ``adaptive_prune``, and the vLLM request / chat-message builders) and :func:`image_embeds_part`.
* :mod:`.checkpoint`: loads only the image side of the checkpoint (no language model).
* :mod:`.plugin`: the ``vllm.general_plugins`` entry point that lets one ``generate`` call carry
  LLaVA / LLaVA-NeXT embeddings of different lengths (registered by installing this package).

Neither vLLM nor transformers is imported until they are used.
"""

from .encoder import SUPPORTED_MODEL_TYPES, PrunedImageEncoder, image_embeds_part

__all__ = ["PrunedImageEncoder", "image_embeds_part", "SUPPORTED_MODEL_TYPES"]
