"""PrunedImageEncoder: a LLaVA / LLaVA-NeXT checkpoint's image encoder plus E-AdaPrune, for vLLM.

vLLM fixes each image's number of placeholder tokens before its encoder runs, so a budget read from
the spectrum cannot be imposed inside the engine. vLLM does accept image *embeddings* as input
(``LLM(..., enable_mm_embeds=True)``, or ``vllm serve ... --enable-mm-embeds``), and for LLaVA-style
models the placeholder count then follows each embedding's length. So the image side runs here:

1. the checkpoint's vision tower, feature-layer selection, CLS handling and multi-modal projector
   (and, for LLaVA-NeXT, the tiles, unpadding and ``image_newline`` rows), loaded from the
   checkpoint without the language model and run with transformers' own model code, give each image
   the [N_i, D] features vLLM's own pixel path would put in its prompt;
2. :func:`eadaprune_kernels.adaptive_prune` prunes all images in one ragged call;
3. the kept [k_i, D] rows, in their original order, go to vLLM as ``image`` embeddings (offline
   requests, or ``image_embeds`` content parts for the OpenAI-compatible server).
"""

from __future__ import annotations

import base64
import inspect
import io
import json
from pathlib import Path

import torch

from ... import PruneResult, adaptive_prune  # the public API only
from .checkpoint import build_image_encoder

__all__ = ["PrunedImageEncoder", "image_embeds_part", "SUPPORTED_MODEL_TYPES"]

SUPPORTED_MODEL_TYPES = ("llava", "llava_next")
_UNSUPPORTED_VISION = {"pixtral": "vLLM does not take image_embeds for Pixtral-based LLaVA"}
_NOT_PRUNE_KWARGS = {
    "tokens": "the encoder passes the projected image features itself",
    "scores": "per-token scores are not supported by PrunedImageEncoder",
    "cu_seqlens": "the encoder passes one [N_i, D] tensor per image itself",
}
_PRUNE_KWARGS = tuple(
    name for name, p in inspect.signature(adaptive_prune).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY and name not in _NOT_PRUNE_KWARGS
)


def image_embeds_part(features: torch.Tensor) -> dict:
    """The OpenAI-compatible chat content part that carries one image as embeddings ([k, D]).

    vLLM's server decodes ``image_embeds`` as base64 of ``torch.save`` (loaded with
    ``weights_only=True``); the tensor is sent from the CPU, in its own dtype.
    """
    if not isinstance(features, torch.Tensor) or features.dim() != 2 or not features.is_floating_point():
        raise ValueError(f"features: expected a floating [k, D] tensor, got {_describe(features)}")
    buffer = io.BytesIO()
    torch.save(features.detach().to("cpu").contiguous(), buffer)
    return {"type": "image_embeds", "image_embeds": base64.b64encode(buffer.getvalue()).decode("ascii")}


class PrunedImageEncoder:
    """Encodes images as a LLaVA / LLaVA-NeXT checkpoint would for vLLM, then prunes them.

    >>> enc = PrunedImageEncoder.from_pretrained(model_dir, device="cuda", dtype=torch.bfloat16, energy=0.99)
    >>> feats = enc.encode(images)              # list of [k_i, D]: each image's kept features
    >>> outs = llm.generate(enc.requests(prompts, images), sampling_params)

    Attributes:
        model_type: "llava" or "llava_next".
        image_token: the prompt placeholder of one image (e.g. "<image>"); vLLM expands each to k_i
            positions.
        hidden_size: D, the language model's width (the features' last dimension).
        prune_kwargs: the keyword arguments passed to ``adaptive_prune``.
        last: the :class:`~eadaprune_kernels.PruneResult` of the latest :meth:`encode` (``lengths`` are
            the budgets k_i), or None.
    """

    def __init__(self, model, image_processor, image_token: str, prune_kwargs: dict, device: torch.device,
                 dtype: torch.dtype) -> None:
        """Use :meth:`from_pretrained`."""
        self.model = model
        self.image_processor = image_processor
        self.image_token = image_token
        self.prune_kwargs = dict(prune_kwargs)
        self.device = device
        self.dtype = dtype
        self.model_type = model.config.model_type
        self.hidden_size = model.config.get_text_config().hidden_size
        self.last: PruneResult | None = None

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, model_dir, *, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                        **prune_kwargs) -> "PrunedImageEncoder":
        """Loads the image encoder of a local Hugging Face LLaVA / LLaVA-NeXT model directory.

        Only the vision tower, the projector and (LLaVA-NeXT) ``image_newline`` are read from the
        safetensors files; the language model is never built or loaded.

        Args:
            model_dir: the model directory vLLM serves (config.json, *.safetensors, the processor).
            device: where the encoder and the pruning run (default: "cuda" when available, else "cpu").
            dtype: the encoder's dtype and so the features' (default: the checkpoint's, else float32).
            **prune_kwargs: keyword arguments of :func:`~eadaprune_kernels.adaptive_prune` (energy,
                center, sketch_size, power_iters, min_tokens, max_tokens, seed, sketch_matrix, backend,
                validate, total_budget); checked now on a stand-in image.

        Raises:
            ValueError: not a directory with a config.json, not a LLaVA-style checkpoint, weights
                missing, or a bad pruning argument (TypeError for a wrong type).
        """
        try:
            import transformers
        except ImportError as exc:
            raise ImportError("PrunedImageEncoder needs transformers: pip install 'eadaprune_kernels[hf]'") from exc

        directory = Path(model_dir) if isinstance(model_dir, (str, Path)) else None
        if directory is None or not (directory / "config.json").is_file():
            raise ValueError(f"model_dir: expected a local model directory with a config.json, got {model_dir!r}")
        raw_config = json.loads((directory / "config.json").read_text())
        model_type = raw_config.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"model_dir: expected a LLaVA-style checkpoint (model_type {' or '.join(map(repr, SUPPORTED_MODEL_TYPES))}), "
                f"got model_type {model_type!r} ({', '.join(raw_config.get('architectures') or ['no architectures'])}) "
                f"in {directory}"
            )
        config = transformers.AutoConfig.from_pretrained(directory)
        vision_type = getattr(config.vision_config, "model_type", None)
        if vision_type in _UNSUPPORTED_VISION:
            raise ValueError(f"model_dir: {_UNSUPPORTED_VISION[vision_type]} (vision model_type {vision_type!r})")

        device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        if dtype is None:
            dtype = getattr(config, "dtype", None) or torch.float32
            dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype: expected a floating torch.dtype or None, got {dtype!r}")

        model = build_image_encoder(transformers, config, directory, device, dtype)
        processor = transformers.AutoProcessor.from_pretrained(directory)
        image_token = _image_token(processor, config)
        encoder = cls(model, processor.image_processor, image_token, {}, device, dtype)
        encoder.prune_kwargs = encoder._check_prune_kwargs(prune_kwargs)
        return encoder

    def _check_prune_kwargs(self, prune_kwargs: dict) -> dict:
        for name in prune_kwargs:
            if name in _NOT_PRUNE_KWARGS:
                raise ValueError(f"{name}: not supported by PrunedImageEncoder ({_NOT_PRUNE_KWARGS[name]})")
            if name not in _PRUNE_KWARGS:
                raise ValueError(f"{name}: not an argument of adaptive_prune; expected some of {', '.join(_PRUNE_KWARGS)}")
        # Every value check of adaptive_prune, on one zero image of a base view's size.
        stand_in = torch.zeros((), dtype=self.dtype, device=self.device).expand(self._base_view_tokens(), self.hidden_size)
        adaptive_prune([stand_in], **prune_kwargs)
        return dict(prune_kwargs)

    def _base_view_tokens(self) -> int:
        vision = self.model.config.vision_config
        side = vision.image_size // vision.patch_size
        return side * side + (0 if self.model.config.vision_feature_select_strategy == "default" else 1)

    # ------------------------------------------------------------------ encoding
    @torch.no_grad()
    def features(self, images) -> list[torch.Tensor]:
        """The un-pruned projected features of each image: a list of [N_i, D] on ``device``.

        These are the rows vLLM's own pixel path would place in the prompt for the same images (for
        LLaVA-NeXT: base view, tiles unpadded to the image's aspect ratio, one ``image_newline`` row
        per feature row of the tiles).

        Args:
            images: a list of images the checkpoint's image processor takes (PIL images, arrays).
        """
        images = _image_list(images, "images")
        if not images:
            return []
        inputs = self.image_processor(images=images, return_tensors="pt")
        kwargs = {"pixel_values": inputs["pixel_values"].to(self.device, self.dtype)}
        if self.model_type == "llava_next":
            kwargs["image_sizes"] = inputs["image_sizes"].to(self.device)
        output = self.model.get_image_features(**kwargs, return_dict=True)
        return [f for f in output.pooler_output]

    @torch.no_grad()
    def encode(self, images) -> list[torch.Tensor]:
        """Each image's kept features: a list of [k_i, D] on ``device``, rows in their original order.

        All images are pruned in one ragged ``adaptive_prune`` call (``self.last`` keeps its result).
        """
        features = self.features(images)
        if not features:
            return []
        result = adaptive_prune(features, **self.prune_kwargs)
        self.last = result
        return [result.tokens[b, :k] for b, k in enumerate(result.lengths.tolist())]

    # ------------------------------------------------------------------ vLLM inputs
    def requests(self, prompts, images, *, llm=None) -> list[dict]:
        """Prompts for ``vllm.LLM.generate``, with each image as its pruned embeddings.

        Args:
            prompts: a list of text prompts; each holds one ``image_token`` per image it shows.
            images: a list with one entry per prompt: an image, a list of images, or None / [] for a
                text-only prompt.
            llm: optionally the ``vllm.LLM`` the requests are for; it is checked to take embeddings
                of this width (``enable_mm_embeds=True``, same hidden size).

        Returns:
            one dict per prompt: ``{"prompt": text, "multi_modal_data": {"image": [t_1, ...]}}`` with
            [k_i, D] CPU tensors (vLLM ships them to its engine process), or ``{"prompt": text}``.
        """
        if llm is not None:
            self.check_engine(llm)
        per_prompt = self._images_per_prompt(prompts, images)
        flat = [image for group in per_prompt for image in group]
        features = [f.to("cpu") for f in self.encode(flat)]
        out, start = [], 0
        for prompt, group in zip(prompts, per_prompt):
            request = {"prompt": prompt}
            if group:
                request["multi_modal_data"] = {"image": features[start:start + len(group)]}
            out.append(request)
            start += len(group)
        return out

    def chat_message(self, text: str, images, *, role: str = "user") -> dict:
        """One OpenAI-compatible chat message: each image as an ``image_embeds`` part, then the text.

        For ``vllm serve MODEL_DIR --enable-mm-embeds``; the server's chat template places the images.
        """
        if not isinstance(text, str):
            raise TypeError(f"text: expected a str, got {type(text).__name__}")
        parts = [image_embeds_part(f) for f in self.encode(_image_list(images, "images"))]
        return {"role": role, "content": [*parts, {"type": "text", "text": text}]}

    def check_engine(self, llm) -> None:
        """Raises ValueError unless ``llm`` (a ``vllm.LLM``) takes this encoder's embeddings."""
        try:
            model_config = llm.llm_engine.model_config
        except AttributeError as exc:
            raise TypeError(f"llm: expected a vllm.LLM, got {type(llm).__name__}") from exc
        mm_config = getattr(model_config, "multimodal_config", None)
        if mm_config is None or not getattr(mm_config, "enable_mm_embeds", False):
            raise ValueError(
                "llm: the engine was started without enable_mm_embeds; start it with "
                "LLM(..., enable_mm_embeds=True) (vllm serve ... --enable-mm-embeds) to pass pruned image embeddings"
            )
        width = model_config.get_hidden_size()
        if width != self.hidden_size:
            raise ValueError(
                f"llm: serves a model of hidden size {width}, but this encoder's features have D = {self.hidden_size}"
            )

    def _images_per_prompt(self, prompts, images) -> list[list]:
        if not isinstance(prompts, (list, tuple)) or not all(isinstance(p, str) for p in prompts):
            raise TypeError(f"prompts: expected a list of str, got {_describe(prompts)}")
        if not isinstance(images, (list, tuple)) or len(images) != len(prompts):
            raise ValueError(
                f"images: expected a list with one entry per prompt ({len(prompts)}), got {_describe(images)}"
            )
        groups = []
        for i, (prompt, entry) in enumerate(zip(prompts, images)):
            group = [] if entry is None else list(entry) if isinstance(entry, (list, tuple)) else [entry]
            placeholders = prompt.count(self.image_token)
            if placeholders != len(group):
                raise ValueError(
                    f"images: prompt {i} holds {placeholders} {self.image_token!r} placeholder(s) but "
                    f"{len(group)} image(s) were given for it; each image needs one placeholder"
                )
            groups.append(group)
        return groups

    def __repr__(self) -> str:
        return (f"PrunedImageEncoder({self.model_type}, D={self.hidden_size}, device={self.device}, "
                f"dtype={self.dtype}, {self.prune_kwargs})")


def _image_token(processor, config) -> str:
    token = getattr(processor, "image_token", None)
    tokenizer = getattr(processor, "tokenizer", None)
    if not isinstance(token, str) or tokenizer is None or tokenizer.convert_tokens_to_ids(token) != config.image_token_id:
        raise ValueError(
            f"model_dir: the processor's image token {token!r} is not the config's image_token_id "
            f"{config.image_token_id}"
        )
    return token


def _image_list(images, name: str) -> list:
    if isinstance(images, (list, tuple)):
        return list(images)
    raise TypeError(f"{name}: expected a list of images, got {type(images).__name__}")


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor of shape {tuple(value.shape)}, dtype {value.dtype}"
    if isinstance(value, (list, tuple)):
        return f"{type(value).__name__} of length {len(value)}"
    return type(value).__name__
