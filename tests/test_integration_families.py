"""enable_token_pruning on every supported model family, each a tiny random model built from its config.

No downloads: every model is a 1-layer vision tower and a 2-layer language model of width 64 with
random weights, and every prompt is built by hand the way the family's processor lays it out
(placeholder runs, grid metadata, token types). Each case is a batch of two prompts holding images
of different sizes (so units have different N and budgets), and the same checks run on all:

* keeping every token reproduces the un-pruned model's logits and greedy output, left and right
  padded, with eager and SDPA attention (for Qwen this proves the M-RoPE positions);
* pruning shortens the language model's prefill, and the pruned forward equals the un-pruned model
  with the dropped tokens masked out at the same positions (proof of features, re-packing and
  positions together);
* batched generate works with left and right padding; left-padded it equals each prompt alone;
* disable() restores the model.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import pytest
import torch
from packaging.version import Version

transformers = pytest.importorskip("transformers", minversion="5.18")

from eadaprune_kernels import adaptive_prune  # noqa: E402
from eadaprune_kernels.integrations import enable_token_pruning  # noqa: E402
from eadaprune_kernels.integrations.families import find_family  # noqa: E402

from helpers import pad_token_rows  # noqa: E402

IMG, PAD, BOS, EOS = 100, 0, 1, 2
# separator tokens of the prompts (vision start/end, begin/end of image, tile labels)
START, END, ROW_1_COL_1, ROW_1_COL_2, GLOBAL, NEWLINE = 102, 103, 104, 105, 106, 107
NEW_TOKENS = 3
KEEP_ALL = {"energy": 1.0, "min_tokens": 4096, "max_tokens": 4096}  # clamped to each unit's N

TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=128, max_position_embeddings=512, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS)
CLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28,
            patch_size=7)
SIGLIP = dict(CLIP)


def _pixels(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- the cases
@dataclass(frozen=True)
class Prompt:
    """One prompt of a case: its tokens and the encoder inputs of its images."""

    tokens: list[int]
    images: dict


@dataclass(frozen=True)
class Case:
    """A family's tiny model and two prompts.

    build:     a fresh model (float32, eval mode), weights from torch.manual_seed(0).
    prompts:   ``(model) -> [Prompt, Prompt]``; placeholder counts come from the model's own
               get_image_features where they depend on the image, as a processor computes them.
    collate:   joins the prompts' encoder inputs into one batch.
    types:     ``(input_ids) -> dict`` of the token-type inputs the processor returns.
    energy:    an energy at which the images lose tokens, with different budgets.
    mrope:     the model builds its own 3-D positions (no caller position_ids in the masked check).
    keep_all:  keywords that keep every token (LLaVA checks max_tokens against its fixed N).
    """

    name: str
    build: Callable
    prompts: Callable
    collate: Callable = field(default=lambda images: {k: torch.cat([i[k] for i in images]) for k in images[0]})
    types: Callable = field(default=lambda ids: {})
    energy: float = 0.9
    mrope: bool = False
    keep_all: dict = field(default_factory=lambda: KEEP_ALL)


def _finish(model):
    model = model.float().eval()
    model.generation_config.pad_token_id = PAD
    model.generation_config.eos_token_id = None  # always generate NEW_TOKENS tokens
    return model


def _count(model, images) -> list[int]:
    with torch.no_grad():
        return [int(f.shape[0]) for f in model.base_model.get_image_features(**images, return_dict=True).pooler_output]


def _llava():
    vision = transformers.CLIPVisionConfig(**CLIP, projection_dim=32)
    config = transformers.LlavaConfig(vision_config=vision, text_config=transformers.LlamaConfig(**TEXT),
                                      image_token_id=IMG, vision_feature_layer=-1,
                                      vision_feature_select_strategy="default")
    return transformers.LlavaForConditionalGeneration(config)


def _llava_prompts(model):
    images = [{"pixel_values": _pixels(1, 3, 28, 28, seed=s)} for s in (1, 2)]
    return [Prompt([BOS, 5, 6] + [IMG] * 16 + [7, 8], images[0]), Prompt([BOS, 9] + [IMG] * 16 + [10], images[1])]


def _anyres(kind):
    def build():
        if kind == "next":
            config = transformers.LlavaNextConfig(
                vision_config=transformers.CLIPVisionConfig(**CLIP), text_config=transformers.LlamaConfig(**TEXT),
                image_token_id=IMG, image_grid_pinpoints=[[28, 56], [56, 28], [56, 56]], vision_feature_layer=-1,
                vision_feature_select_strategy="default")
            return transformers.LlavaNextForConditionalGeneration(config)
        config = transformers.LlavaOnevisionConfig(
            vision_config=transformers.SiglipVisionConfig(**SIGLIP), text_config=transformers.Qwen2Config(**TEXT),
            image_token_index=IMG, video_token_index=101, image_grid_pinpoints=[[28, 56], [56, 28], [56, 56]],
            vision_feature_select_strategy="full", vision_feature_layer=-1)
        return transformers.LlavaOnevisionForConditionalGeneration(config)
    return build


def _anyres_prompts(model):
    images = [{"pixel_values": _pixels(1, 5, 3, 28, 28, seed=3 + i), "image_sizes": torch.tensor([size])}
              for i, size in enumerate(([28, 56], [50, 30]))]
    n = [_count(model, i)[0] for i in images]
    return [Prompt([BOS, 5] + [IMG] * n[0] + [6, 7], images[0]), Prompt([BOS] + [IMG] * n[1] + [8], images[1])]


QWEN_ROPE = {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0}


def _qwen(kind):
    def build():
        ids = dict(image_token_id=IMG, video_token_id=101, vision_start_token_id=START, vision_end_token_id=END)
        vision = dict(num_heads=2, patch_size=4, spatial_merge_size=2, temporal_patch_size=2)
        if kind == "2":
            config = transformers.Qwen2VLConfig(
                vision_config=dict(vision, depth=1, embed_dim=32, hidden_size=64),
                text_config=dict(TEXT, rope_parameters=QWEN_ROPE), **ids)
            return transformers.Qwen2VLForConditionalGeneration(config)
        if kind == "2.5":
            config = transformers.Qwen2_5_VLConfig(
                vision_config=dict(vision, depth=1, hidden_size=32, intermediate_size=64, out_hidden_size=64,
                                   window_size=16, fullatt_block_indexes=[0]),
                text_config=dict(TEXT, rope_parameters=QWEN_ROPE), **ids)
            return transformers.Qwen2_5_VLForConditionalGeneration(config)
        config = transformers.Qwen3VLConfig(
            vision_config=dict(vision, depth=2, hidden_size=32, intermediate_size=64, out_hidden_size=64,
                               num_position_embeddings=16, deepstack_visual_indexes=[0, 1]),
            text_config=dict(TEXT, head_dim=16, rope_parameters=dict(QWEN_ROPE, mrope_interleaved=True)), **ids)
        return transformers.Qwen3VLForConditionalGeneration(config)
    return build


def _qwen_image(grid, seed):
    t, h, w = grid
    return {"pixel_values": _pixels(t * h * w, 3 * 2 * 4 * 4, seed=seed), "image_grid_thw": torch.tensor([grid])}


def _qwen_prompts(model):
    a, b, c = _qwen_image((1, 4, 6), 5), _qwen_image((1, 4, 4), 6), _qwen_image((1, 6, 8), 7)
    two = {k: torch.cat([a[k], b[k]]) for k in a}
    return [Prompt([BOS, 5, START] + [IMG] * 6 + [END, 6, START] + [IMG] * 4 + [END, 7, 8], two),
            Prompt([BOS, START] + [IMG] * 12 + [END, 9], c)]


def _gemma3():
    text = transformers.Gemma3TextConfig(**dict(TEXT, head_dim=16, query_pre_attn_scalar=16, sliding_window=64))
    config = transformers.Gemma3Config(
        text_config=text, vision_config=transformers.SiglipVisionConfig(**dict(SIGLIP, image_size=56)),
        mm_tokens_per_image=16, boi_token_index=START, eoi_token_index=END, image_token_index=IMG)
    model = transformers.Gemma3ForConditionalGeneration(config)
    with torch.no_grad():  # initialised to zeros: every image would be one flat token
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(std=0.2)
    return model


def _gemma3_prompts(model):
    one, two, three = (_pixels(1, 3, 56, 56, seed=s) for s in (8, 9, 10))
    image = [START] + [IMG] * 16 + [END]
    return [Prompt([BOS, 5] + image + [6], {"pixel_values": one}),
            Prompt([BOS] + image + image + [7, 8], {"pixel_values": torch.cat([two, three])})]


def _paligemma():
    text = transformers.GemmaConfig(**dict(TEXT, head_dim=16))
    config = transformers.PaliGemmaConfig(text_config=text, vision_config=transformers.SiglipVisionConfig(**SIGLIP),
                                          image_token_index=IMG, projection_dim=64, hidden_size=64, vocab_size=128)
    return transformers.PaliGemmaForConditionalGeneration(config)


def _paligemma_prompts(model):
    return [Prompt([IMG] * 16 + [BOS, 5, 6, NEWLINE], {"pixel_values": _pixels(1, 3, 28, 28, seed=11)}),
            Prompt([IMG] * 16 + [BOS, 7, NEWLINE], {"pixel_values": _pixels(1, 3, 28, 28, seed=12)})]


def _internvl():
    vision = transformers.InternVLVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                               num_attention_heads=2, image_size=[56, 56], patch_size=[7, 7])
    config = transformers.InternVLConfig(vision_config=vision, text_config=transformers.Qwen2Config(**TEXT),
                                         image_token_id=IMG, image_seq_length=16, downsample_ratio=0.5)
    return transformers.InternVLForConditionalGeneration(config)


def _internvl_prompts(model):
    # prompt 0: one image of 2 tiles; prompt 1: one image of 1 tile and one of 2 (16 tokens per tile)
    return [Prompt([BOS, 5, START] + [IMG] * 32 + [END, 6], {"pixel_values": _pixels(2, 3, 56, 56, seed=13)}),
            Prompt([BOS, START] + [IMG] * 16 + [END, 7, START] + [IMG] * 32 + [END],
                   {"pixel_values": _pixels(3, 3, 56, 56, seed=14)})]


def _idefics(name):
    def build():
        vision = getattr(transformers, f"{name}VisionConfig")(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=56,
            patch_size=7)
        config = getattr(transformers, f"{name}Config")(
            vision_config=vision, text_config=transformers.LlamaConfig(**TEXT), image_token_id=IMG, scale_factor=2)
        return getattr(transformers, f"{name}ForConditionalGeneration")(config)
    return build


def _idefics_prompts(model):
    tile = [IMG] * 16  # (56 / 7)^2 patches, pixel-shuffled by 2
    split = ([START, ROW_1_COL_1] + tile + [START, ROW_1_COL_2] + tile + [NEWLINE, START, GLOBAL] + tile + [START])
    single = [START, GLOBAL] + tile + [START]
    return [Prompt([BOS, 5] + split + [6], {"pixel_values": _pixels(1, 3, 3, 56, 56, seed=15)}),
            Prompt([BOS] + single + [7, 8], {"pixel_values": _pixels(1, 1, 3, 56, 56, seed=16)})]


def _idefics_collate(images):
    """Pads each prompt's tiles to the batch's largest count with all-zero tiles, as the processor does."""
    tiles = max(i["pixel_values"].shape[1] for i in images)
    padded = [torch.nn.functional.pad(i["pixel_values"], (0, 0, 0, 0, 0, 0, 0, tiles - i["pixel_values"].shape[1]))
              for i in images]
    return {"pixel_values": torch.cat(padded)}


def _image_types(key):
    return lambda ids: {key: (ids == IMG).long()}


CASES = [
    Case("llava", _llava, _llava_prompts, keep_all={"energy": 1.0, "min_tokens": 16, "max_tokens": 16}),
    Case("llava_next", _anyres("next"), _anyres_prompts, energy=0.99),
    Case("llava_onevision", _anyres("onevision"), _anyres_prompts, energy=0.99),
    Case("qwen2_vl", _qwen("2"), _qwen_prompts, types=_image_types("mm_token_type_ids"), mrope=True),
    Case("qwen2_5_vl", _qwen("2.5"), _qwen_prompts, types=_image_types("mm_token_type_ids"), mrope=True),
    Case("qwen3_vl", _qwen("3"), _qwen_prompts, types=_image_types("mm_token_type_ids"), mrope=True),
    Case("gemma3", _gemma3, _gemma3_prompts, types=_image_types("token_type_ids")),
    Case("paligemma", _paligemma, _paligemma_prompts, types=lambda ids: {"token_type_ids": torch.zeros_like(ids)}),
    Case("internvl", _internvl, _internvl_prompts),
    Case("idefics3", _idefics("Idefics3"), _idefics_prompts, collate=_idefics_collate),
    Case("smolvlm", _idefics("SmolVLM"), _idefics_prompts, collate=_idefics_collate),
]
CASE_IDS = [c.name for c in CASES]


@pytest.fixture(scope="module", params=CASES, ids=CASE_IDS)
def family(request):
    """(case, model, prompts) built once per case for this module."""
    case = request.param
    torch.manual_seed(0)
    model = _finish(case.build())
    family = find_family(model)
    if family.min_transformers and Version(transformers.__version__) < Version(family.min_transformers):
        pytest.skip(f"{family.name} needs transformers >= {family.min_transformers} (found "
                    f"{transformers.__version__}): before, {family.why}; test_integration_adapter.py "
                    f"checks that the adapter refuses it there")
    return case, model, case.prompts(model)


@contextmanager
def attention(model, implementation):
    model.set_attn_implementation(implementation)
    try:
        yield
    finally:
        model.set_attn_implementation("sdpa")


def _batch(case, prompts, side, which=(0, 1)):
    """The model inputs of ``prompts[which]`` padded on ``side``."""
    ids, mask = pad_token_rows([prompts[i].tokens for i in which], side, PAD)
    return {"input_ids": ids, "attention_mask": mask, **case.types(ids),
            **case.collate([prompts[i].images for i in which])}


@contextmanager
def _lm_inputs(model):
    """Records the inputs_embeds / attention_mask of every language-model call."""
    calls = []

    def hook(module, args, kwargs):
        calls.append({k: kwargs.get(k) for k in ("inputs_embeds", "attention_mask")})

    base = model.base_model
    language_model = base.language_model if hasattr(base, "language_model") else base.text_model  # Idefics3
    handle = language_model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


def _greedy(model, **inputs):
    return model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False, return_dict_in_generate=True,
                          output_logits=True)


# ---------------------------------------------------------------- the checks
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_keeping_every_token_reproduces_the_model(family, implementation, side):
    case, model, prompts = family
    inputs = _batch(case, prompts, side)
    with attention(model, implementation):
        with torch.no_grad():
            plain = model(**inputs).logits
        plain_gen = _greedy(model, **inputs)
        with enable_token_pruning(model, padding_side=side, **case.keep_all) as handle:
            with torch.no_grad():
                pruned = model(**inputs).logits
            assert bool(handle.last.keep.all())
            assert torch.equal(handle.last.budgets, handle.last.num_image_tokens)
            pruned_gen = _greedy(model, **inputs)
    torch.testing.assert_close(pruned, plain, atol=1e-5, rtol=1e-5)
    assert torch.equal(pruned_gen.sequences, plain_gen.sequences)
    for step_pruned, step_plain in zip(pruned_gen.logits, plain_gen.logits):
        torch.testing.assert_close(step_pruned, step_plain, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_pruned_generate_shortens_the_prefill(family, implementation, side):
    case, model, prompts = family
    inputs = _batch(case, prompts, side)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    with attention(model, implementation):
        with enable_token_pruning(model, energy=case.energy, padding_side=side) as handle, _lm_inputs(model) as calls:
            out = _greedy(model, **inputs)
        record = handle.last
        assert bool((record.budgets < record.num_image_tokens).any())
        removed = record.num_pruned
        assert torch.equal(removed, (record.num_image_tokens - record.budgets).new_zeros(2).index_add_(
            0, record.unit_sample, record.num_image_tokens - record.budgets))
        assert torch.equal(record.sample_budgets, (ids == IMG).sum(1) - removed)
        new_length = ids.shape[1] - int(removed.min())
        assert calls[0]["inputs_embeds"].shape[:2] == (2, new_length)
        assert record.input_ids.shape == (2, new_length)
        assert torch.equal(record.attention_mask.sum(1), mask.sum(1) - removed)
        # the text tokens are unchanged, in order, with only the surplus placeholders gone
        for b in range(2):
            real = record.input_ids[b][record.attention_mask[b] == 1]
            assert [t for t in real.tolist() if t != IMG] == [t for t in prompts[b].tokens if t != IMG]
        assert [c["inputs_embeds"].shape[1] for c in calls[1:]] == [1] * (NEW_TOKENS - 1)
        assert out.sequences.shape == (2, ids.shape[1] + NEW_TOKENS)
        assert torch.equal(out.sequences[:, : ids.shape[1]], ids)  # the caller's prompt comes back in front
        if side == "left":  # batched left-padded generation equals generating each prompt alone
            with enable_token_pruning(model, energy=case.energy):
                for b in range(2):
                    alone = _greedy(model, **_batch(case, prompts, "left", which=(b,)))
                    assert torch.equal(alone.sequences[0, len(prompts[b].tokens):], out.sequences[b, ids.shape[1]:])
                    torch.testing.assert_close(alone.logits[0][0], out.logits[0][b], atol=1e-4, rtol=1e-4)


def test_pruned_forward_equals_the_model_with_dropped_tokens_masked(family):
    """The kept tokens see exactly what they would see in the un-pruned model if the dropped
    placeholders were masked out: same features, same positions (Qwen: the un-pruned M-RoPE
    positions; others: the caller's positions shifted down)."""
    case, model, prompts = family
    inputs = _batch(case, prompts, "left")
    mask = inputs["attention_mask"]
    if not case.mrope:
        inputs["position_ids"] = (mask.cumsum(1) - 1).clamp(min=0)
    with enable_token_pruning(model, energy=case.energy) as handle, torch.no_grad():
        pruned = model(**inputs).logits
    keep = handle.last.keep
    assert not bool(keep.all())
    holed = mask * keep
    reference = dict(inputs, attention_mask=holed)
    if case.mrope:
        reference["position_ids"] = model.base_model.get_rope_index(
            inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"], image_grid_thw=inputs["image_grid_thw"],
            attention_mask=mask)[0]
    else:
        reference["position_ids"] = (holed.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        masked = model(**reference).logits
    real = handle.last.attention_mask == 1
    torch.testing.assert_close(pruned[real], masked[(holed == 1)], atol=1e-4, rtol=1e-4)


def test_disable_restores_the_model(family):
    case, model, prompts = family
    inputs = _batch(case, prompts, "left")
    with torch.no_grad():
        before = model(**inputs).logits
    handle = enable_token_pruning(model, energy=case.energy)
    try:
        with torch.no_grad():
            assert model(**inputs).logits.shape[1] < inputs["input_ids"].shape[1]
    finally:
        handle.disable()
    assert "forward" not in model.__dict__ and "generate" not in model.__dict__
    with torch.no_grad():
        after = model(**inputs).logits
    torch.testing.assert_close(after, before, atol=0, rtol=0)


def test_pruned_units_are_adaptive_prune_of_each_unit(family):
    """Every unit's kept features are adaptive_prune's choice on that unit's rows, in order."""
    case, model, prompts = family
    inputs = _batch(case, prompts, "left")
    with enable_token_pruning(model, energy=case.energy) as handle, torch.no_grad():
        model(**inputs)
    record = handle.last
    with torch.no_grad():
        encoder_inputs = {k: v for k, v in inputs.items() if k in case.collate([prompts[0].images])}
        features = model.base_model.get_image_features(**encoder_inputs, return_dict=True).pooler_output
    rows = torch.cat(list(features))
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), record.num_image_tokens.cumsum(0)])
    for u in range(len(record.budgets)):
        unit = rows[offsets[u]:offsets[u + 1]]
        expected = adaptive_prune(unit, energy=case.energy)
        assert int(expected.lengths) == int(record.budgets[u])
        assert torch.equal(record.kept_indices[u], expected.indices[: int(expected.lengths)])
        torch.testing.assert_close(record.image_features[u], unit[record.kept_indices[u]], atol=0, rtol=0)
