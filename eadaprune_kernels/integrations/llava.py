"""E-AdaPrune for Hugging Face transformers LLaVA and LLaVA-NeXT.

>>> from eadaprune_kernels.integrations import enable_token_pruning
>>> handle = enable_token_pruning(model, processor=processor, energy=0.99)   # any adaptive_prune kwargs
>>> out = model.generate(**processor(images=images, text=prompts, return_tensors="pt", padding=True),
...                      max_new_tokens=32)                                  # the LM sees pruned images
>>> handle.last.budgets       # tokens kept per image by the last pruned call
>>> handle.disable()          # or: with enable_token_pruning(model) as handle: ...

Supported: ``LlavaForConditionalGeneration`` and ``LlavaNextForConditionalGeneration`` of
transformers >= 5.18 (the versions whose ``forward`` takes ``mm_encoder_outputs``; tested on 5.24).

Mechanism
---------
A LLaVA prompt holds one placeholder token (``config.image_token_id``) per projected image feature;
the model embeds ``input_ids``, checks that the number of placeholders equals the number of image
features, and scatters the features into the placeholder rows. Since transformers 5.18,
``forward(..., mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=[...])})``
accepts image features that were computed beforehand (``generate`` itself pre-encodes images this
way, before the prefill, and hands them to the first forward step only).

While enabled, ``model.forward`` and ``model.generate`` are wrapped (instance attributes that
shadow the class methods; :meth:`TokenPruningHandle.disable` removes them). A call that carries
``pixel_values`` is rewritten *before* the model sees it:

1. the images are encoded with the model's own ``get_image_features`` (vision tower, feature-layer
   selection, multi-modal projector: the tokens the language model would see), one [N_i, D] tensor
   per image;
2. the images are pruned with :func:`~eadaprune_kernels.adaptive_prune` (images with the same N_i
   in one batched call); image i keeps ``budget_i`` features, in their original order;
3. in ``input_ids``, the placeholders of image i beyond its first ``budget_i`` are removed (images
   are matched to placeholder runs in row-major order, as the model's scatter does), and every
   sequence is re-packed and re-padded to the new common length on the padding side (taken from
   ``padding_side=``, else from ``processor``'s tokenizer, else inferred from ``attention_mask``).
   ``attention_mask``, ``labels``, ``token_type_ids`` / ``mm_token_type_ids`` and explicit
   ``position_ids`` (shifted down by the number of tokens removed before each position) follow;
4. the original ``forward`` / ``generate`` runs on the shortened inputs with the pruned features as
   ``mm_encoder_outputs`` and no ``pixel_values``. The model therefore builds ``inputs_embeds``
   itself and still runs its own placeholder-count check, which holds by construction.

Why this mechanism: the sequence length must shrink before ``generate`` starts its bookkeeping
(attention mask growth, position ids from the mask, cache length), so pruning inside the model
(e.g. a hook on the projector) cannot work for generation. Handing ``input_ids`` (not
``inputs_embeds``) to ``generate`` keeps every token-based feature of generation (repetition
penalty, stopping criteria, beam expansion of multi-image inputs) and leaves the merge of text and
image embeddings, and its check, to transformers. ``generate`` returns ``[prompt, new tokens]``
whose prompt part is the *caller's* un-pruned ``input_ids`` again, so ``out[:, input_ids.shape[1]:]``
still selects the new tokens; the pruned prompt is ``handle.last.input_ids``.

Notes
-----
* ``forward`` with ``pixel_values`` returns logits / hidden states for the *pruned* sequence
  (``handle.last.keep`` maps it to the caller's positions). Without explicit ``position_ids`` the
  language model uses its default positions for that sequence, as for any forward call; ``generate``
  derives them from the pruned attention mask.
* Calls without ``pixel_values`` (decoding steps, text-only prompts, pre-computed
  ``mm_encoder_outputs``) are passed through untouched. When continuing from a cache by hand, use
  ``handle.last.attention_mask`` (the pruned one) as the prefix of later attention masks.
* ``inputs_embeds`` together with ``pixel_values`` is rejected (the placeholders could not be found).
* LLaVA-NeXT: each image's feature sequence (all its tiles plus the ``image_newline`` rows) is
  pruned as one [N_i, D] matrix, so newline rows are kept or dropped like any other token.
* ``handle.last`` describes the most recent pruned call; a handle is not meant to be shared by
  threads that call the model concurrently.
"""

from __future__ import annotations

import functools
import inspect
import numbers
from dataclasses import dataclass

import torch

from .._validation import make_config
from ..api import adaptive_prune
from ..backends import resolve_backend
from ..results import PruneResult

__all__ = ["enable_token_pruning", "TokenPruningHandle", "PrunedInputs", "SUPPORTED_MODELS"]

SUPPORTED_MODELS = ("LlavaForConditionalGeneration", "LlavaNextForConditionalGeneration")
MIN_TRANSFORMERS = "5.18"

# The keyword arguments of adaptive_prune the adapter forwards, with their defaults.
# Keywords of adaptive_prune that the adapter cannot honour: it builds the per-image token matrices
# itself (no cu_seqlens), and it prunes images grouped by token count, so a batch-wide total_budget
# would not be the one the caller asked for.
_UNSUPPORTED_PRUNE_KWARGS = {
    "cu_seqlens": "the adapter passes each image's features itself",
    "total_budget": "the adapter prunes images grouped by their token count, so one batch total cannot be kept",
}

_PRUNE_DEFAULTS = {
    name: p.default
    for name, p in inspect.signature(adaptive_prune).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY and name not in _UNSUPPORTED_PRUNE_KWARGS
}

# Sequence-aligned [B, L] inputs besides input_ids / position_ids, and the value their new padding gets.
_ALIGNED_FILL = {"attention_mask": 0, "labels": -100, "token_type_ids": 0, "mm_token_type_ids": 0}

_HANDLE_ATTR = "_eadaprune_token_pruning"


@dataclass(frozen=True)
class PrunedInputs:
    """What the most recent pruned call fed the model (``handle.last``).

    For a prompt batch of B sequences of length L holding I images in total:
        input_ids:         [B, L'] the prompt after surplus placeholders were removed and re-padded.
        attention_mask:    [B, L'] its attention mask.
        keep:              [B, L] bool over the caller's input_ids: True where a token was kept.
        image_features:    I tensors [budget_i, D]: the kept projected features of each image, in
                           placeholder (row-major) order.
        kept_indices:      I int64 tensors [budget_i]: which of image i's N_i features were kept.
        budgets:           [I] int64, tokens kept per image.
        num_image_tokens:  [I] int64, N_i (features per image before pruning).
        results:           the PruneResult of each adaptive_prune call, one per distinct N_i in order
                           of first appearance (LLaVA: one call for all images).
        padding_side:      "left" or "right", the side the re-padding used.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    keep: torch.Tensor
    image_features: tuple[torch.Tensor, ...]
    kept_indices: tuple[torch.Tensor, ...]
    budgets: torch.Tensor
    num_image_tokens: torch.Tensor
    results: tuple[PruneResult, ...]
    padding_side: str

    @property
    def num_pruned(self) -> torch.Tensor:
        """[B] int64: tokens removed from each sequence."""
        return (~self.keep).sum(1)


class TokenPruningHandle:
    """Returned by :func:`enable_token_pruning`; ``disable()`` (or leaving a ``with`` block) undoes it."""

    def __init__(self, model, prune_kwargs: dict, padding_side: str | None, processor) -> None:
        self.model = model
        self.prune_kwargs = dict(prune_kwargs)
        self.padding_side = padding_side
        self.processor = processor
        self.last: PrunedInputs | None = None
        self._wrappers: dict[str, object] = {}
        self._previous: dict[str, object] = {}
        self._originals: dict[str, object] = {}
        self._forward_signature = None
        self._generate_signature = None

    # ---------------------------------------------------------------- install / remove
    @property
    def enabled(self) -> bool:
        return bool(self._wrappers)

    def _install(self) -> None:
        model, handle = self.model, self
        for name, impl in (("forward", self._forward), ("generate", self._generate)):
            original = getattr(model, name)
            self._originals[name] = original
            self._previous[name] = model.__dict__.get(name, _MISSING)

            def wrapper(*args, _impl=impl, **kwargs):
                return _impl(*args, **kwargs)

            # functools.wraps sets __wrapped__, so inspect.signature(model.forward) (which
            # generate() reads) still reports the model's own parameters.
            wrapper = functools.wraps(original)(wrapper)
            self._wrappers[name] = wrapper
            setattr(model, name, wrapper)
        self._forward_signature = inspect.signature(self._originals["forward"])
        self._generate_signature = inspect.signature(self._originals["generate"])
        setattr(model, _HANDLE_ATTR, handle)

    def disable(self) -> None:
        """Restores the model's own forward and generate. Calling it again does nothing."""
        if not self._wrappers:
            return
        model = self.model
        for name, wrapper in self._wrappers.items():
            if model.__dict__.get(name) is not wrapper:
                raise RuntimeError(
                    f"model.{name} was replaced after token pruning was enabled; undo that change "
                    f"first, then call disable()"
                )
        for name in self._wrappers:
            previous = self._previous[name]
            if previous is _MISSING:
                delattr(model, name)
            else:
                setattr(model, name, previous)
        self._wrappers.clear()
        if model.__dict__.get(_HANDLE_ATTR) is self:
            delattr(model, _HANDLE_ATTR)

    def __enter__(self) -> "TokenPruningHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.disable()

    def __repr__(self) -> str:
        state = "enabled" if self.enabled else "disabled"
        return f"TokenPruningHandle({type(self.model).__name__}, {state}, {self.prune_kwargs})"

    # ---------------------------------------------------------------- wrapped calls
    def _forward(self, *args, **kwargs):
        original = self._originals["forward"]
        call = _bind(self._forward_signature, args, kwargs)
        if call is None or not _has_images(call.get("pixel_values")):
            return original(*args, **kwargs)
        call, self.last = self.prune_inputs(**call)
        return original(**call)

    def _generate(self, *args, **kwargs):
        original = self._originals["generate"]
        call = _bind(self._generate_signature, args, kwargs)
        if call is None or not _has_images(call.get("pixel_values")):
            return original(*args, **kwargs)
        inputs = call.pop("inputs", None)
        if inputs is not None:
            if call.get("input_ids") is not None:
                raise ValueError("inputs: pass the prompt as `inputs` or as `input_ids`, not both")
            call["input_ids"] = inputs
        prompt = call.get("input_ids")
        with torch.no_grad():
            call, self.last = self.prune_inputs(**call)
        output = original(**call)
        return _restore_prompt(output, prompt, self.last.input_ids)

    # ---------------------------------------------------------------- the rewrite
    def prune_inputs(self, **model_kwargs) -> tuple[dict, PrunedInputs]:
        """Rewrites the keyword arguments of one forward/generate call that carries pixel_values.

        Returns the keyword arguments to pass to the model's *original* forward or generate
        (shortened input_ids and aligned inputs, the pruned features as ``mm_encoder_outputs``, no
        pixel_values) and the :class:`PrunedInputs` record. The model is not run beyond its image
        encoder and projector.
        """
        model = self.model
        call = dict(model_kwargs)
        input_ids = call.get("input_ids")
        if call.get("inputs_embeds") is not None:
            raise ValueError(
                "inputs_embeds: token pruning needs input_ids (to find and remove image placeholder "
                "tokens); pass input_ids instead of inputs_embeds together with pixel_values"
            )
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.shape[0] == 0:
            raise ValueError(
                f"input_ids: expected a [B, L] tensor with B >= 1 next to pixel_values, got {_describe(input_ids)}"
            )
        mm = call.get("mm_encoder_outputs") or {}
        if mm.get("image") is not None:
            raise ValueError("mm_encoder_outputs: pre-computed image features cannot be combined with pixel_values")

        # 1. Encode the images exactly as the model (and generate) would.
        encoder = model.base_model.get_image_features
        encoder_kwargs = {
            key: call.pop(key)
            for key in inspect.signature(encoder).parameters
            if key != "kwargs" and key in call
        }
        image_outputs = encoder(**encoder_kwargs, return_dict=True)
        features = list(image_outputs.pooler_output)
        num_tokens = [int(f.shape[0]) for f in features]

        image_token_id = model.config.image_token_id
        is_placeholder = input_ids == image_token_id
        num_placeholders = int(is_placeholder.sum())
        if num_placeholders != sum(num_tokens):
            raise ValueError(
                f"input_ids: holds {num_placeholders} image placeholder tokens (id {image_token_id}) but "
                f"the {len(features)} image(s) give {sum(num_tokens)} features ({num_tokens}); the prompt "
                f"needs one placeholder per image feature before pruning"
            )

        # 2. Prune, one adaptive_prune call per distinct N (LLaVA: all images at once).
        kept_features: list = [None] * len(features)
        kept_indices: list = [None] * len(features)
        budgets = [0] * len(features)
        results = []
        groups: dict[int, list[int]] = {}
        for i, n in enumerate(num_tokens):
            groups.setdefault(n, []).append(i)
        for members in groups.values():
            result = adaptive_prune(torch.stack([features[i] for i in members]), **self.prune_kwargs)
            results.append(result)
            for j, (i, k) in enumerate(zip(members, result.lengths.tolist())):
                kept_features[i] = result.tokens[j, :k]
                kept_indices[i] = result.indices[j, :k]
                budgets[i] = k

        # 3. Which placeholders stay: the first budget_i of image i's run (row-major order).
        device = input_ids.device
        n_t = torch.tensor(num_tokens, dtype=torch.long, device=device)
        b_t = torch.tensor(budgets, dtype=torch.long, device=device)
        image_of = torch.repeat_interleave(torch.arange(len(features), device=device), n_t)
        rank_in_image = torch.arange(num_placeholders, device=device) - (torch.cumsum(n_t, 0) - n_t)[image_of]
        keep = torch.ones_like(is_placeholder)
        keep[is_placeholder] = rank_in_image < b_t[image_of]

        attention_mask = call.get("attention_mask")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        elif not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask: expected a 2-D tensor of the shape of input_ids {tuple(input_ids.shape)}, "
                f"got {_describe(attention_mask)}"
            )
        side = self._padding_side(attention_mask)

        # 4. Re-pack every sequence and re-pad to the new common length on the padding side.
        batch, length = input_ids.shape
        new_lengths = keep.sum(1)
        new_length = int(new_lengths.max())
        column = torch.cumsum(keep, 1) - 1
        if side == "left":
            column = column + (new_length - new_lengths)[:, None]
        rows = torch.arange(batch, device=device)[:, None].expand(batch, length)
        destination = (rows[keep], column[keep])

        def repack(t: torch.Tensor, fill) -> torch.Tensor:
            out = torch.full((batch, new_length), fill, dtype=t.dtype, device=t.device)
            out[destination] = t[keep]
            return out

        call["input_ids"] = repack(input_ids, self._pad_token_id())
        call["attention_mask"] = repack(attention_mask, 0)
        for key, fill in _ALIGNED_FILL.items():
            value = call.get(key)
            if key != "attention_mask" and isinstance(value, torch.Tensor) and value.shape == input_ids.shape:
                call[key] = repack(value, fill)
        position_ids = call.get("position_ids")
        if position_ids is not None:
            if (
                not isinstance(position_ids, torch.Tensor)
                or position_ids.dim() != 2
                or position_ids.shape[1] != length
                or position_ids.shape[0] not in (1, batch)
            ):
                raise ValueError(
                    f"position_ids: expected a [B, L] or [1, L] tensor with L = {length}, got {_describe(position_ids)}"
                )
            removed_before = torch.cumsum(~keep, 1)
            shifted = torch.where(attention_mask != 0, position_ids - removed_before, position_ids.expand(batch, length))
            call["position_ids"] = repack(shifted, 0)

        image_outputs.pooler_output = kept_features
        call["mm_encoder_outputs"] = {**mm, "image": image_outputs}
        record = PrunedInputs(
            input_ids=call["input_ids"],
            attention_mask=call["attention_mask"],
            keep=keep,
            image_features=tuple(kept_features),
            kept_indices=tuple(kept_indices),
            budgets=b_t,
            num_image_tokens=n_t,
            results=tuple(results),
            padding_side=side,
        )
        return call, record

    def _padding_side(self, attention_mask: torch.Tensor) -> str:
        if self.padding_side is not None:
            return self.padding_side
        if self.processor is not None:
            return _processor_padding_side(self.processor)
        left = bool((attention_mask[:, 0] == 0).any())
        right = bool((attention_mask[:, -1] == 0).any())
        if left and right:
            raise ValueError(
                "padding_side: cannot infer it, attention_mask has padding at both ends; pass "
                "padding_side='left' or 'right' (or the processor) to enable_token_pruning"
            )
        # Unpadded prompts get new padding on the left, the side decoder-only generation needs.
        return "right" if right else "left"

    def _pad_token_id(self) -> int:
        model = self.model
        image_token_id = model.config.image_token_id
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        candidates = (
            getattr(tokenizer, "pad_token_id", None),
            getattr(getattr(model, "generation_config", None), "pad_token_id", None),
            getattr(model.config.get_text_config(), "pad_token_id", None),
        )
        for candidate in candidates:
            if isinstance(candidate, numbers.Integral) and not isinstance(candidate, bool) and candidate != image_token_id:
                return int(candidate)
        return 0 if image_token_id != 0 else 1


_MISSING = object()


def enable_token_pruning(model, *, processor=None, padding_side: str | None = None, **prune_kwargs) -> TokenPruningHandle:
    """Prunes every image of every ``forward`` / ``generate`` call of a transformers LLaVA model.

    Args:
        model: a ``transformers.LlavaForConditionalGeneration`` or ``LlavaNextForConditionalGeneration``.
        processor: optional processor (or tokenizer); its tokenizer's ``padding_side`` (read at each
            call) decides where re-padding goes, its ``pad_token_id`` fills it.
        padding_side: "left" or "right"; overrides the processor. Without either, it is inferred from
            each call's attention_mask (left when the prompts are not padded).
        **prune_kwargs: keyword arguments of :func:`~eadaprune_kernels.adaptive_prune` (energy,
            center, sketch_size, power_iters, min_tokens, max_tokens, seed, sketch_matrix, backend,
            validate); checked here, and again against each call's actual image shapes.

    Returns:
        a :class:`TokenPruningHandle`; ``handle.disable()`` restores the model, ``handle.last`` holds
        the :class:`PrunedInputs` of the latest pruned call.
    """
    _check_model(model)
    if padding_side is not None and padding_side not in ("left", "right"):
        raise ValueError(f"padding_side: expected 'left', 'right' or None, got {padding_side!r}")
    if processor is not None:
        _processor_padding_side(processor)  # fails now rather than at the first call
    prune_kwargs = _check_prune_kwargs(model, prune_kwargs)
    existing = model.__dict__.get(_HANDLE_ATTR)
    if existing is not None and existing.enabled:
        raise RuntimeError("token pruning is already enabled on this model; disable() its handle first")
    handle = TokenPruningHandle(model, prune_kwargs, padding_side, processor)
    handle._install()
    return handle


def _check_model(model) -> None:
    try:
        import transformers
    except ImportError as exc:
        raise ImportError(
            f"enable_token_pruning needs transformers >= {MIN_TRANSFORMERS}: pip install 'eadaprune_kernels[hf]'"
        ) from exc
    classes = tuple(getattr(transformers, name) for name in SUPPORTED_MODELS if hasattr(transformers, name))
    if not isinstance(model, classes):
        raise TypeError(f"model: expected one of {', '.join(SUPPORTED_MODELS)}, got {type(model).__name__}")
    if "mm_encoder_outputs" not in inspect.signature(model.forward).parameters:
        raise RuntimeError(
            f"model: {type(model).__name__}.forward takes no mm_encoder_outputs; token pruning needs "
            f"transformers >= {MIN_TRANSFORMERS}, found {transformers.__version__}"
        )


def _check_prune_kwargs(model, prune_kwargs: dict) -> dict:
    """The checks of adaptive_prune that do not need the images, run on a zero-stride stand-in."""
    for name in prune_kwargs:
        if name in ("tokens", "scores"):
            raise ValueError(
                f"{name}: the adapter passes the projected image features itself; per-token scores are "
                f"not supported by enable_token_pruning"
            )
        if name in _UNSUPPORTED_PRUNE_KWARGS:
            raise ValueError(f"{name}: not supported by enable_token_pruning ({_UNSUPPORTED_PRUNE_KWARGS[name]})")
        if name not in _PRUNE_DEFAULTS:
            raise ValueError(
                f"{name}: not an argument of adaptive_prune; expected some of {', '.join(_PRUNE_DEFAULTS)}"
            )
    merged = {**_PRUNE_DEFAULTS, **prune_kwargs}
    num_tokens = _expected_num_image_tokens(model.config)
    hidden = model.config.get_text_config().hidden_size
    sketch_matrix = merged["sketch_matrix"]
    device = sketch_matrix.device if isinstance(sketch_matrix, torch.Tensor) else model.device
    stand_in = torch.zeros((), dtype=torch.float32, device=device).expand(
        1, num_tokens if num_tokens is not None else 2**40, hidden
    )
    config_kwargs = {k: merged[k] for k in merged if k not in ("backend", "validate")}
    if num_tokens is None and sketch_matrix is not None:
        # Its [D, l] shape depends on N; only its type is checked now.
        if not isinstance(sketch_matrix, torch.Tensor):
            raise TypeError(
                f"sketch_matrix: expected a torch.Tensor [D, l] or None, got {type(sketch_matrix).__name__}"
            )
        config_kwargs["sketch_matrix"] = None
    make_config(stand_in, **config_kwargs)
    if not isinstance(merged["validate"], bool):
        raise TypeError(f"validate: expected a bool, got {type(merged['validate']).__name__} {merged['validate']!r}")
    resolve_backend(merged["backend"], model.device)
    return dict(prune_kwargs)


def _expected_num_image_tokens(config) -> int | None:
    """N for a LLaVA with a CLIP vision tower; None where it is not fixed or not known."""
    if getattr(config, "model_type", None) != "llava":
        return None
    vision = config.vision_config
    if getattr(vision, "model_type", None) != "clip_vision_model":
        return None
    side = vision.image_size // vision.patch_size
    return side * side + (0 if config.vision_feature_select_strategy == "default" else 1)


def _processor_padding_side(processor) -> str:
    tokenizer = getattr(processor, "tokenizer", None) or processor
    side = getattr(tokenizer, "padding_side", None)
    if side not in ("left", "right"):
        raise ValueError(
            f"processor: expected a processor or tokenizer whose padding_side is 'left' or 'right', "
            f"got {type(processor).__name__} with padding_side {side!r}"
        )
    return side


def _bind(signature: inspect.Signature, args: tuple, kwargs: dict) -> dict | None:
    """The call's arguments by name (var-keyword ones flattened); None if they do not bind."""
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError:
        return None  # let the original raise its own error
    call = {}
    for name, value in bound.arguments.items():
        if signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
            call.update(value)
        elif signature.parameters[name].kind is inspect.Parameter.VAR_POSITIONAL:
            if value:
                return None
        else:
            call[name] = value
    return call


def _has_images(pixel_values) -> bool:
    if pixel_values is None:
        return False
    if isinstance(pixel_values, torch.Tensor):
        return pixel_values.numel() > 0 and pixel_values.shape[0] > 0
    return len(pixel_values) > 0


def _restore_prompt(output, prompt: torch.Tensor, pruned_prompt: torch.Tensor):
    """Puts the caller's prompt back in front of the generated tokens."""
    sequences = output if isinstance(output, torch.Tensor) else getattr(output, "sequences", None)
    if sequences is None:
        return output
    batch, pruned_length = pruned_prompt.shape
    rows = sequences.shape[0]
    expand = rows // batch if rows % batch == 0 else 0
    if (
        expand == 0
        or sequences.shape[1] < pruned_length
        or not torch.equal(sequences[:, :pruned_length], pruned_prompt.repeat_interleave(expand, 0).to(sequences))
    ):
        raise RuntimeError(
            "generate() did not return [pruned prompt, new tokens]; this transformers version is not "
            "supported by the token-pruning adapter"
        )
    restored = torch.cat([prompt.repeat_interleave(expand, 0).to(sequences), sequences[:, pruned_length:]], 1)
    if isinstance(output, torch.Tensor):
        return restored
    output.sequences = restored
    return output


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor of shape {tuple(value.shape)}, dtype {value.dtype}"
    return type(value).__name__
