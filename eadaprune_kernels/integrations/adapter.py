"""E-AdaPrune for Hugging Face transformers vision-language models: the adapter core.

>>> from eadaprune_kernels.integrations import enable_token_pruning
>>> handle = enable_token_pruning(model, processor=processor, energy=0.99)   # any adaptive_prune kwargs
>>> out = model.generate(**processor(images=images, text=prompts, return_tensors="pt", padding=True),
...                      max_new_tokens=32)                                  # the LM sees pruned images
>>> handle.last.budgets       # tokens kept per pruned unit (image, or view) by the last pruned call
>>> handle.disable()          # or: with enable_token_pruning(model) as handle: ...

Supported: the classes of :data:`~.families.SUPPORTED_MODELS` (LLaVA, LLaVA-NeXT, LLaVA-OneVision,
Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Gemma 3, PaliGemma, InternVL, Idefics3, SmolVLM) of transformers
>= 5.18, the versions whose ``forward`` takes ``mm_encoder_outputs`` (SmolVLM: >= 5.21, see
:mod:`.idefics`); tested on 5.18.0 and 5.24.0. What differs between them is
described by one small :class:`~.spec.FamilySpec` each (:mod:`.llava`, :mod:`.qwen_vl`,
:mod:`.gemma`, :mod:`.internvl`, :mod:`.idefics`).

Mechanism
---------
A prompt holds one placeholder token (``config.image_token_id``) per projected image feature; the
model embeds ``input_ids``, checks that the number of placeholders equals the number of features and
scatters the features into the placeholder rows (row-major order). ``forward(...,
mm_encoder_outputs={"image": output})`` accepts features computed beforehand (``generate`` itself
pre-encodes images that way before the prefill and hands them to the first forward step only).

While enabled, ``model.forward`` and ``model.generate`` are wrapped (instance attributes that shadow
the class methods; :meth:`TokenPruningHandle.disable` removes them). A call that carries
``pixel_values`` is rewritten *before* the model sees it:

1. the images are encoded with the model's own ``get_image_features`` (vision tower, feature
   selection, projector: the rows the language model would see), and the family's layout splits
   them into views (tiles) and images;
2. each pruning unit (an image, or a view with ``unit="view"``) is one [N_u, D] matrix: all units go
   to :func:`~eadaprune_kernels.adaptive_prune` in one call (batched when every N_u is equal, else
   ragged). The indices are chosen on detached features and the kept rows are gathered with plain
   indexing, so gradients reach the kept features (and the vision tower) in training;
3. in ``input_ids`` the placeholders of the dropped rows are removed (the placeholders of a unit
   are its rows in order), and every sequence is re-packed and re-padded to the new common length on
   the padding side (``padding_side=``, else ``processor``'s tokenizer, else inferred from
   ``attention_mask``). ``attention_mask``, ``labels``, ``token_type_ids`` / ``mm_token_type_ids``
   follow; positions come from the family (:attr:`~.spec.FamilySpec.positions`): caller-given
   position_ids are shifted down per sequence, Qwen's M-RoPE positions keep their un-pruned values;
4. the original ``forward`` / ``generate`` runs on the shortened inputs with the pruned features as
   ``mm_encoder_outputs`` and no ``pixel_values``. The model therefore builds ``inputs_embeds``
   itself and still runs its own placeholder-count check, which holds by construction.

Why this mechanism: the sequence length must shrink before ``generate`` starts its bookkeeping
(attention mask growth, positions, cache length), so pruning inside the model (a hook on the
projector) cannot work for generation. Handing ``input_ids`` (not ``inputs_embeds``) to ``generate``
keeps every token-based feature of generation (repetition penalty, stopping criteria, beam expansion
of multi-image inputs) and leaves the merge of text and image embeddings, and its check, to
transformers. It needs no attention weights, so every attention implementation works.
``generate`` returns ``[prompt, new tokens]`` whose prompt part is the *caller's* un-pruned
``input_ids`` again, so ``out[:, input_ids.shape[1]:]`` still selects the new tokens; the pruned
prompt is ``handle.last.input_ids``.

Notes
-----
* ``forward`` with ``pixel_values`` returns logits / hidden states for the *pruned* sequence
  (``handle.last.keep`` maps it to the caller's positions).
* Calls without ``pixel_values`` (decoding steps, text-only prompts, videos alone, pre-computed
  ``mm_encoder_outputs``) are passed through untouched. When continuing from a cache by hand, use
  ``handle.last.attention_mask`` (the pruned one) as the prefix of later attention masks.
* ``inputs_embeds`` together with ``pixel_values`` is rejected (the placeholders could not be found),
  and so are videos together with images in one call (video tokens are not pruned).
* ``max_tokens`` / ``min_tokens`` apply per unit as for ragged input of ``adaptive_prune``: a unit
  of N rows keeps at most min(max_tokens, N). ``total_budget`` is shared by all units of a call.
* Each pruned call reads the budgets back to the host once (the sequence shapes depend on them).
* ``handle.last`` describes the most recent pruned call; a handle is not meant to be shared by
  threads that call the model concurrently.
"""

from __future__ import annotations

import copy
import functools
import inspect
import numbers
from dataclasses import dataclass

import torch

from .. import PruneResult, adaptive_prune, spectral_budget
from .families import SUPPORTED_MODELS, find_family
from .spec import FamilySpec, PromptEdit

__all__ = ["enable_token_pruning", "TokenPruningHandle", "PrunedInputs", "SUPPORTED_MODELS", "MIN_TRANSFORMERS"]

MIN_TRANSFORMERS = "5.18"

# Keywords of adaptive_prune the adapter cannot honour: it builds the units' token matrices itself.
_UNSUPPORTED_PRUNE_KWARGS = {"cu_seqlens": "the adapter passes each unit's features itself"}

# The keyword arguments of adaptive_prune the adapter forwards, with their defaults.
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

    For a prompt batch of B sequences of length L whose images give U pruning units (images, or
    views with ``unit="view"``), in placeholder (row-major) order:
        input_ids:         [B, L'] the prompt after surplus placeholders were removed and re-padded.
        attention_mask:    [B, L'] its attention mask.
        position_ids:      the position_ids passed to the model (None: the model's own).
        keep:              [B, L] bool over the caller's input_ids: True where a token was kept.
        image_features:    U tensors [budget_u, D]: the kept projected features of each unit.
        kept_indices:      U int64 tensors [budget_u]: which of unit u's N_u rows were kept.
        budgets:           [U] int64, tokens kept per unit.
        num_image_tokens:  [U] int64, N_u (rows per unit before pruning).
        unit_image:        [U] int64, the image each unit belongs to (its index among the call's
                           images as the family counts them; Idefics3 / SmolVLM: the tile).
        unit_sample:       [U] int64, the prompt (batch row) each unit belongs to.
        results:           the PruneResult of the call's adaptive_prune call (a tuple of one).
        padding_side:      "left" or "right", the side the re-padding used.
        unit:              "image" or "view", what one pruned matrix was.
        family:            the name of the model family.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor | None
    keep: torch.Tensor
    image_features: tuple[torch.Tensor, ...]
    kept_indices: tuple[torch.Tensor, ...]
    budgets: torch.Tensor
    num_image_tokens: torch.Tensor
    unit_image: torch.Tensor
    unit_sample: torch.Tensor
    results: tuple[PruneResult, ...]
    padding_side: str
    unit: str
    family: str

    @property
    def num_pruned(self) -> torch.Tensor:
        """[B] int64: tokens removed from each sequence."""
        return (~self.keep).sum(1)

    @property
    def sample_budgets(self) -> torch.Tensor:
        """[B] int64: image tokens kept in each prompt (the sum of its units' budgets)."""
        totals = torch.zeros(self.keep.shape[0], dtype=torch.long, device=self.budgets.device)
        return totals.index_add_(0, self.unit_sample.to(totals.device), self.budgets)


class TokenPruningHandle:
    """Returned by :func:`enable_token_pruning`; ``disable()`` (or leaving a ``with`` block) undoes it."""

    def __init__(self, model, family: FamilySpec, unit: str, prune_kwargs: dict, padding_side: str | None,
                 processor) -> None:
        self.model = model
        self.family = family
        self.unit = unit
        self.prune_kwargs = dict(prune_kwargs)
        self.padding_side = padding_side
        self.processor = processor
        self.last: PrunedInputs | None = None
        self._wrappers: dict[str, object] = {}
        self._previous: dict[str, object] = {}
        self._originals: dict[str, object] = {}
        self._forward_signature = None
        self._generate_signature = None
        self._stacked_pooler = False  # the last encoder output was one tensor: forward wants one

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
        return (f"TokenPruningHandle({type(self.model).__name__}, {state}, unit={self.unit!r}, "
                f"{self.prune_kwargs})")

    # ---------------------------------------------------------------- wrapped calls
    def _forward(self, *args, **kwargs):
        original = self._originals["forward"]
        call = _bind(self._forward_signature, args, kwargs)
        if call is None or not _has_images(call.get("pixel_values")):
            if call is not None and self._stacked_pooler and _stack_pooler(call):
                return original(**call)  # generate's prefill step with our (list) features
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
            call, self.last = self.prune_inputs(for_generate=True, **call)
        output = original(**call)
        return _restore_prompt(output, prompt, self.last.input_ids)

    # ---------------------------------------------------------------- the rewrite
    def prune_inputs(self, *, for_generate: bool = False, **model_kwargs) -> tuple[dict, PrunedInputs]:
        """Rewrites the keyword arguments of one forward/generate call that carries pixel_values.

        Returns the keyword arguments to pass to the model's *original* ``forward`` (or, with
        ``for_generate=True``, ``generate``): shortened input_ids and aligned inputs, the pruned
        features as ``mm_encoder_outputs``, no pixel_values; and the :class:`PrunedInputs` record.
        The model is not run beyond its image encoder and projector.
        """
        model, family = self.model, self.family
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
        if _has_images(call.get("pixel_values_videos")):
            raise ValueError(
                "pixel_values_videos: token pruning prunes images only and cannot take videos in the same "
                "call; pass the videos in a call of their own (it is passed through unpruned)"
            )
        mm = call.get("mm_encoder_outputs") or {}
        if mm.get("image") is not None:
            raise ValueError("mm_encoder_outputs: pre-computed image features cannot be combined with pixel_values")

        # 1. Encode the images exactly as the model (and generate) would, and lay them out in units.
        encoder = model.base_model.get_image_features
        encoder_kwargs = {
            key: call.pop(key)
            for key in inspect.signature(encoder).parameters
            if key != "kwargs" and key in call
        }
        image_outputs = encoder(**encoder_kwargs, return_dict=True)
        self._stacked_pooler = isinstance(image_outputs.pooler_output, torch.Tensor)
        entries = list(image_outputs.pooler_output)
        is_placeholder = input_ids == model.config.image_token_id
        unit_sizes, unit_image = self._units(entries, is_placeholder)

        # 2. Prune: indices from the detached features, one adaptive_prune call for all units.
        rows = torch.cat(entries)
        offsets = torch.tensor([0] + unit_sizes, dtype=torch.long).cumsum(0).tolist()
        units = [rows[offsets[u]:offsets[u + 1]].detach() for u in range(len(unit_sizes))]
        kept_indices, results = _prune_units(units, self.prune_kwargs)
        keep_rows = torch.zeros(offsets[-1], dtype=torch.bool, device=rows.device)
        keep_rows[torch.cat([idx + offsets[u] for u, idx in enumerate(kept_indices)])] = True

        # 3. Which tokens stay (the placeholders of a unit are its rows), the re-packed prompt, positions.
        keep = torch.ones_like(is_placeholder)
        keep[is_placeholder] = keep_rows.to(input_ids.device)
        edit = self._shorten(call, keep, for_generate, {**model_kwargs, **encoder_kwargs})

        # 4. The kept features, gathered by plain indexing (gradients reach them), in the model's own
        # entry structure. Always a list: generate's beam expansion needs entries of unequal length;
        # a model whose encoder returns one stacked tensor (Gemma 3, PaliGemma, InternVL) gets them
        # stacked into [1, K, D] at its forward.
        entry_offsets = torch.tensor([0] + [int(e.shape[0]) for e in entries]).cumsum(0).tolist()
        entry_rows = [keep_rows[entry_offsets[e]:entry_offsets[e + 1]] for e in range(len(entries))]
        image_outputs.pooler_output = [entry[kept] for entry, kept in zip(entries, entry_rows)]
        for name in family.per_entry_features:
            layers = getattr(image_outputs, name, None)
            if layers is not None:
                setattr(image_outputs, name, [
                    [feature[kept] for feature, kept in zip(layer, entry_rows)] for layer in layers
                ])
        call["mm_encoder_outputs"] = {**mm, "image": image_outputs}
        if not for_generate and self._stacked_pooler:
            _stack_pooler(call)

        device = input_ids.device
        budgets = torch.tensor([int(idx.numel()) for idx in kept_indices], dtype=torch.long, device=device)
        first_placeholder = torch.tensor(offsets[:-1], dtype=torch.long, device=device)
        record = PrunedInputs(
            input_ids=call["input_ids"],
            attention_mask=edit.new_attention_mask,
            position_ids=call.get("position_ids"),
            keep=keep,
            image_features=tuple(rows[keep_rows].split(budgets.tolist())),
            kept_indices=tuple(kept_indices),
            budgets=budgets,
            num_image_tokens=torch.tensor(unit_sizes, dtype=torch.long, device=device),
            unit_image=torch.tensor(unit_image, dtype=torch.long, device=device),
            unit_sample=is_placeholder.nonzero()[:, 0][first_placeholder],
            results=results,
            padding_side=edit.padding_side,
            unit=self.unit,
            family=family.name,
        )
        return call, record

    def _units(self, entries: list[torch.Tensor], is_placeholder: torch.Tensor) -> tuple[list[int], list[int]]:
        """(rows of each pruning unit, image of each unit), in placeholder order."""
        entry_sizes = [int(e.shape[0]) for e in entries]
        runs = _placeholder_runs(is_placeholder)
        if sum(entry_sizes) == 0:
            raise ValueError("pixel_values: the images give no features (every image is padding); drop pixel_values")
        if sum(runs) != sum(entry_sizes):
            raise ValueError(
                f"input_ids: holds {sum(runs)} image placeholder tokens (id {self.model.config.image_token_id}) "
                f"but the images give {sum(entry_sizes)} features ({entry_sizes}); the prompt needs one "
                f"placeholder per image feature before pruning"
            )
        layout = self.family.layout(self.model.config, entry_sizes, runs)
        if self.unit == "image":
            return _merge_views(layout)
        return list(layout.view_sizes), list(layout.view_image)

    def _shorten(self, call: dict, keep: torch.Tensor, for_generate: bool, inputs: dict) -> PromptEdit:
        """Re-packs ``call``'s prompt and aligned inputs to the kept tokens (in place) and sets its
        positions; returns the :class:`PromptEdit` (its ``padding_side`` attribute added)."""
        input_ids = call["input_ids"]
        attention_mask = given_mask = call.get("attention_mask")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        elif not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask: expected a 2-D tensor of the shape of input_ids {tuple(input_ids.shape)}, "
                f"got {_describe(attention_mask)}"
            )
        side = self._padding_side(attention_mask)
        repack = _repacker(keep, side)
        call["input_ids"] = repack(input_ids, self._pad_token_id())
        call["attention_mask"] = repack(attention_mask, 0)
        for key, fill in _ALIGNED_FILL.items():
            value = call.get(key)
            if key != "attention_mask" and isinstance(value, torch.Tensor) and value.shape == input_ids.shape:
                call[key] = repack(value, fill)
        edit = PromptEdit(
            input_ids=input_ids, attention_mask=given_mask, position_ids=call.get("position_ids"), keep=keep,
            new_attention_mask=call["attention_mask"], repack=repack, inputs=inputs, for_generate=for_generate,
            padding_side=side,
        )
        position_ids = self.family.positions(self.model, edit)
        if position_ids is not None:
            call["position_ids"] = position_ids
        if given_mask is None and (edit.position_ids is not None or bool(call["attention_mask"].all())):
            # The caller passed no mask: keep it that way when no row needs padding, and for
            # padding-free packed rows (position_ids given), where transformers finds the sequences
            # from the position restarts only without a mask; the new padding sits at position 0, so
            # every padding token is a sequence of its own that no real token attends to.
            call.pop("attention_mask")
        return edit

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
            is_int = isinstance(candidate, numbers.Integral) and not isinstance(candidate, bool)
            if is_int and candidate != image_token_id:
                return int(candidate)
        return 0 if image_token_id != 0 else 1


_MISSING = object()


def enable_token_pruning(
    model, *, processor=None, padding_side: str | None = None, unit: str | None = None, **prune_kwargs
) -> TokenPruningHandle:
    """Prunes every image of every ``forward`` / ``generate`` call of a transformers vision-language model.

    Args:
        model: an instance of one of :data:`SUPPORTED_MODELS` (``...ForConditionalGeneration``).
        processor: optional processor (or tokenizer); its tokenizer's ``padding_side`` (read at each
            call) decides where re-padding goes, its ``pad_token_id`` fills it.
        padding_side: "left" or "right"; overrides the processor. Without either, it is inferred from
            each call's attention_mask (left when the prompts are not padded).
        unit: what one pruned token matrix is: "image" (all views / tiles of an image together) or
            "view" (each tile, or LLaVA-NeXT/OneVision's overview and high-resolution grid, alone).
            None picks the family's default: "image", except Idefics3 / SmolVLM ("view", per tile).
        **prune_kwargs: keyword arguments of :func:`~eadaprune_kernels.adaptive_prune` (energy,
            center, sketch_size, power_iters, min_tokens, max_tokens, seed, sketch_matrix, backend,
            validate, total_budget); checked here, and again against each call's actual images.

    Returns:
        a :class:`TokenPruningHandle`; ``handle.disable()`` restores the model, ``handle.last`` holds
        the :class:`PrunedInputs` of the latest pruned call.
    """
    family = _check_model(model)
    if padding_side is not None and padding_side not in ("left", "right"):
        raise ValueError(f"padding_side: expected 'left', 'right' or None, got {padding_side!r}")
    if unit is None:
        unit = family.units[0]
    elif unit not in family.units:
        raise ValueError(
            f"unit: {family.name} prunes per {' or per '.join(repr(u) for u in family.units)}, got {unit!r}"
        )
    if processor is not None:
        _processor_padding_side(processor)  # fails now rather than at the first call
    prune_kwargs = _check_prune_kwargs(model, family, prune_kwargs)
    existing = model.__dict__.get(_HANDLE_ATTR)
    if existing is not None and existing.enabled:
        raise RuntimeError("token pruning is already enabled on this model; disable() its handle first")
    handle = TokenPruningHandle(model, family, unit, prune_kwargs, padding_side, processor)
    handle._install()
    return handle


def _check_model(model) -> FamilySpec:
    try:
        import transformers
    except ImportError as exc:
        raise ImportError(
            f"enable_token_pruning needs transformers >= {MIN_TRANSFORMERS}: pip install 'eadaprune_kernels[hf]'"
        ) from exc
    family = find_family(model)
    if family is None:
        raise TypeError(f"model: expected one of {', '.join(SUPPORTED_MODELS)}, got {type(model).__name__}")
    if "mm_encoder_outputs" not in inspect.signature(model.forward).parameters:
        raise RuntimeError(
            f"model: {type(model).__name__}.forward takes no mm_encoder_outputs; token pruning needs "
            f"transformers >= {MIN_TRANSFORMERS}, found {transformers.__version__}"
        )
    if family.min_transformers is not None and _version(transformers.__version__) < _version(family.min_transformers):
        raise RuntimeError(
            f"model: token pruning of {family.name} needs transformers >= {family.min_transformers}, found "
            f"{transformers.__version__}: before, {family.why}"
        )
    return family


def _version(text: str) -> tuple[int, ...]:
    """(major, minor, patch) of a version string such as '5.21.0' or '5.22.0.dev0'."""
    from packaging.version import Version

    return Version(text).release


def _check_int(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__} {value!r}")
    if value < low:
        raise ValueError(f"{name}: expected an int >= {low}, got {value}")


def _check_prune_kwargs(model, family: FamilySpec, prune_kwargs: dict) -> dict:
    """Checks the keywords once, before any image is seen, with adaptive_prune's own checks where it can.

    When the family fixes N (LLaVA with a CLIP tower), spectral_budget runs on a flat stand-in image of
    the real shape (all checks, including max_tokens <= N and sketch_matrix's shape; a flat image costs
    no decomposition). Otherwise the bounds and sketch_matrix, which depend on N, are checked here and
    the stand-in is a tiny flat [1, 2, 2] image for the others (types, ranges, backend, device).
    """
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
    total_budget = merged.pop("total_budget")
    if total_budget is not None:
        _check_int("total_budget", total_budget, 1)  # its upper bound depends on the call's images
    sketch_matrix = merged["sketch_matrix"]
    device = sketch_matrix.device if isinstance(sketch_matrix, torch.Tensor) else model.device
    num_tokens = family.fixed_num_tokens(model.config)
    if num_tokens is not None:
        stand_in = torch.zeros(1, num_tokens, model.config.get_text_config().hidden_size, device=device)
    else:
        _check_int("min_tokens", merged["min_tokens"], 1)
        if merged["max_tokens"] is not None:
            _check_int("max_tokens", merged["max_tokens"], 1)
            if merged["min_tokens"] > merged["max_tokens"]:
                raise ValueError(
                    f"min_tokens: expected <= max_tokens = {merged['max_tokens']}, got {merged['min_tokens']}"
                )
        if sketch_matrix is not None and (
            not isinstance(sketch_matrix, torch.Tensor) or not sketch_matrix.is_floating_point()
            or sketch_matrix.dim() != 2
        ):
            raise TypeError(
                f"sketch_matrix: expected a floating torch.Tensor [D, l] or None, got {_describe(sketch_matrix)}"
            )
        merged.update(min_tokens=1, max_tokens=None, sketch_matrix=None)
        stand_in = torch.zeros(1, 2, 2, device=device)
    spectral_budget(stand_in, **merged)
    return dict(prune_kwargs)


# ---------------------------------------------------------------- pruning the units
def _merge_views(layout) -> tuple[list[int], list[int]]:
    """(unit sizes, unit images) with the views of each image merged into one unit."""
    sizes, images = [], []
    for size, image in zip(layout.view_sizes, layout.view_image):
        if images and images[-1] == image:
            sizes[-1] += size
        else:
            sizes.append(size)
            images.append(image)
    return sizes, images


def _per_unit_bounds(kwargs: dict, n: int) -> dict:
    """The keywords for a dense call on units of n rows: max_i = min(max_tokens, n), min_i = min(min_tokens,
    max_i), as adaptive_prune defines them for ragged input."""
    max_tokens = kwargs.get("max_tokens")
    if max_tokens is None or max_tokens <= n:
        return kwargs
    return {**kwargs, "max_tokens": n, "min_tokens": min(kwargs.get("min_tokens", 1), n)}


def _prune_units(units: list[torch.Tensor], kwargs: dict) -> tuple[list[torch.Tensor], tuple[PruneResult, ...]]:
    """The kept row indices of every unit (ascending), from one adaptive_prune call: batched when the
    units have one N, else ragged (a list of [N_u, D] matrices)."""
    sizes = {int(u.shape[0]) for u in units}
    if len(sizes) == 1:
        result = adaptive_prune(torch.stack(units), **_per_unit_bounds(kwargs, sizes.pop()))
    else:
        result = adaptive_prune(list(units), **kwargs)
    return _indices(result, range(len(units))), (result,)


def _indices(result: PruneResult, rows) -> list[torch.Tensor]:
    lengths = result.lengths.tolist()  # the one host synchronisation of the call
    return [result.indices[r, : lengths[r]] for r in rows]


# ---------------------------------------------------------------- prompt helpers
def _placeholder_runs(is_placeholder: torch.Tensor) -> list[int]:
    """Lengths of the runs of placeholder tokens, row-major (a run never continues into the next row)."""
    flags = torch.nn.functional.pad(is_placeholder, (1, 1)).to(torch.int8)
    steps = (flags[:, 1:] - flags[:, :-1]).flatten()
    starts = (steps == 1).nonzero().squeeze(1)
    ends = (steps == -1).nonzero().squeeze(1)
    return (ends - starts).tolist()


def _repacker(keep: torch.Tensor, side: str):
    """``repack(t, fill)``: t [B, L]'s kept entries moved to [B, L'] (L' the longest kept row), each row
    padded on ``side``."""
    batch, length = keep.shape
    new_lengths = keep.sum(1)
    new_length = int(new_lengths.max())
    column = torch.cumsum(keep, 1) - 1
    if side == "left":
        column = column + (new_length - new_lengths)[:, None]
    rows = torch.arange(batch, device=keep.device)[:, None].expand(batch, length)
    destination = (rows[keep], column[keep])

    def repack(t: torch.Tensor, fill) -> torch.Tensor:
        out = torch.full((batch, new_length), fill, dtype=t.dtype, device=t.device)
        out[destination] = t[keep]
        return out

    return repack


def _stack_pooler(call: dict) -> bool:
    """For families whose forward reads pooler_output as a tensor: a list of pruned entries in
    ``call["mm_encoder_outputs"]["image"]`` becomes one [1, K, D] tensor (rows in placeholder order).
    Returns whether it changed the call (a copy of the encoder output is made; generate keeps its own)."""
    mm = call.get("mm_encoder_outputs")
    image = mm.get("image") if isinstance(mm, dict) else None
    pooler = getattr(image, "pooler_output", None)
    if not isinstance(pooler, (list, tuple)) or not pooler:
        return False
    image = copy.copy(image)
    image.pooler_output = torch.cat(list(pooler))[None]
    call["mm_encoder_outputs"] = {**mm, "image": image}
    return True


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
