"""The Hugging Face LLaVA adapter (eadaprune_kernels.integrations) on a tiny random LLaVA.

The model is built from configs (no downloads): a 1-layer CLIP vision tower on 28 x 28 images with
7-pixel patches (N = 16 image tokens) and a 2-layer Llama of width 64. Its vision position
embeddings are zeroed, so an image made of a few flat regions gives a feature matrix of that few
distinct rows (a low budget) while a noise image gives a high one: batches get different budgets.
"""

import types
from contextlib import contextmanager

import pytest
import torch

transformers = pytest.importorskip("transformers", minversion="5.18")

from eadaprune_kernels import adaptive_prune  # noqa: E402
from eadaprune_kernels.integrations import enable_token_pruning  # noqa: E402

from helpers import pad_token_rows  # noqa: E402

IMAGE_TOKEN = 100
PAD = 0
N = 16  # (28 / 7) ** 2 patch tokens, CLS dropped ("default" strategy)
NEW_TOKENS = 3


def _tiny_llava():
    torch.manual_seed(0)
    vision = transformers.CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        image_size=28, patch_size=7, projection_dim=32,
    )
    text = transformers.LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=128, max_position_embeddings=256,
        pad_token_id=PAD, bos_token_id=1, eos_token_id=2,
    )
    config = transformers.LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN,
        vision_feature_layer=-1, vision_feature_select_strategy="default",
    )
    model = transformers.LlavaForConditionalGeneration(config).float().eval()
    with torch.no_grad():
        model.model.vision_tower.embeddings.position_embedding.weight.zero_()
    model.generation_config.pad_token_id = PAD
    model.generation_config.eos_token_id = None  # always generate NEW_TOKENS tokens
    return model


@pytest.fixture(scope="module")
def model():
    return _tiny_llava()


def _images():
    """[3, 3, 28, 28]: two flat halves (budget 1), four flat quarters (a few), noise (many)."""
    two = torch.zeros(3, 28, 28)
    two[:, :, 14:] = 1.0
    four = torch.zeros(3, 28, 28)
    four[:, :14, 14:] = 1.0
    four[:, 14:, :14] = -1.0
    four[0, 14:, 14:] = 0.5
    noise = torch.randn(3, 28, 28, generator=torch.Generator().manual_seed(1))
    return torch.stack([two, four, noise])


def _batch(rows, side):
    """Pads token lists to a batch on ``side``: (input_ids [B, L], attention_mask [B, L])."""
    return pad_token_rows(rows, side, PAD)


IMG = [IMAGE_TOKEN] * N
ROWS = [[1, 5, 6] + IMG + [7, 8, 9, 10], [1, 11] + IMG + [12, 13]]  # one image each, unequal text


def _direct(model, pixel_values, **prune_kwargs):
    """The projected features of each image and adaptive_prune's result on them."""
    with torch.no_grad():
        features = torch.stack(list(model.model.get_image_features(pixel_values=pixel_values).pooler_output))
    return features, adaptive_prune(features, **prune_kwargs)


@contextmanager
def _lm_inputs(model):
    """Records the inputs_embeds / attention_mask / position_ids of every language-model call."""
    calls = []

    def hook(module, args, kwargs):
        calls.append({k: kwargs.get(k) for k in ("inputs_embeds", "attention_mask", "position_ids")})

    handle = model.model.language_model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


def _greedy(model, **inputs):
    return model.generate(
        **inputs, max_new_tokens=NEW_TOKENS, do_sample=False, return_dict_in_generate=True, output_logits=True,
    )


def _is_padded_on(mask, side):
    steps = mask[:, 1:].long() - mask[:, :-1].long()
    return bool((steps >= 0).all()) if side == "left" else bool((steps <= 0).all())


def test_generate_batch_of_one_prunes_by_the_budget(model):
    ids = torch.tensor([ROWS[0]])
    pixel_values = _images()[2:]
    _, ref = _direct(model, pixel_values, energy=0.9)
    budget = int(ref.lengths[0])
    assert 1 <= budget < N
    with enable_token_pruning(model, energy=0.9) as handle, _lm_inputs(model) as calls:
        out = model.generate(input_ids=ids, pixel_values=pixel_values, max_new_tokens=NEW_TOKENS, do_sample=False)
    assert not handle.enabled
    prefill = calls[0]["inputs_embeds"]
    assert prefill.shape[1] == ids.shape[1] - (N - budget)
    kept = prefill[0][handle.last.input_ids[0] == IMAGE_TOKEN]
    torch.testing.assert_close(kept, ref.tokens[0, :budget])
    assert out.shape == (1, ids.shape[1] + NEW_TOKENS)
    assert torch.equal(out[:, : ids.shape[1]], ids)  # the caller's prompt comes back in front
    assert [c["inputs_embeds"].shape[1] for c in calls[1:]] == [1] * (NEW_TOKENS - 1)


@pytest.mark.parametrize("how", ["explicit", "processor", "inferred"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_generate_batch_with_different_budgets(model, side, how):
    ids, mask = _batch(ROWS, side)
    pixel_values = _images()[[0, 2]]
    _, ref = _direct(model, pixel_values)
    budgets = ref.lengths.long()
    assert budgets[0] != budgets[1]
    removed = N - budgets
    options = {
        "explicit": {"padding_side": side},
        "processor": {"processor": types.SimpleNamespace(tokenizer=types.SimpleNamespace(padding_side=side))},
        "inferred": {},
    }[how]
    with enable_token_pruning(model, **options) as handle, _lm_inputs(model) as calls:
        out = _greedy(model, input_ids=ids, attention_mask=mask, pixel_values=pixel_values)
    assert handle.last.padding_side == side
    assert torch.equal(handle.last.budgets, budgets)
    embeds, lm_mask = calls[0]["inputs_embeds"], calls[0]["attention_mask"]
    new_length = ids.shape[1] - int(removed.min())
    assert embeds.shape[1] == new_length and lm_mask.shape == (2, new_length)
    assert torch.equal(lm_mask.sum(1), mask.sum(1) - removed)
    assert _is_padded_on(lm_mask, side)
    for b in range(2):
        kept = embeds[b][handle.last.input_ids[b] == IMAGE_TOKEN]
        torch.testing.assert_close(kept, ref.tokens[b, : budgets[b]])
        # the text tokens are unchanged, in order, with only the surplus placeholders gone
        text = handle.last.input_ids[b][(lm_mask[b] == 1) & (handle.last.input_ids[b] != IMAGE_TOKEN)]
        assert text.tolist() == [t for t in ROWS[b] if t != IMAGE_TOKEN]
    # decoding steps extend the pruned mask by one token each
    assert [c["attention_mask"].shape[1] for c in calls[1:]] == [new_length + t for t in range(1, NEW_TOKENS)]
    assert out.sequences.shape == (2, ids.shape[1] + NEW_TOKENS)
    assert torch.equal(out.sequences[:, : ids.shape[1]], ids)
    if side == "left":  # batched left-padded generation equals generating each prompt alone
        with enable_token_pruning(model):
            for b in range(2):
                alone = _greedy(model, input_ids=torch.tensor([ROWS[b]]), pixel_values=pixel_values[b : b + 1])
                assert torch.equal(alone.sequences[0, len(ROWS[b]):], out.sequences[b, ids.shape[1]:])
                torch.testing.assert_close(alone.logits[0][0], out.logits[0][b], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("side", ["left", "right"])
def test_forward_batched_matches_each_prompt_alone(model, side):
    """Re-packing keeps embeddings, mask and (explicit, left-padded) positions consistent."""
    ids, mask = _batch(ROWS, side)
    pixel_values = _images()[[0, 2]]
    kwargs = {}
    if side == "left":
        kwargs["position_ids"] = (mask.cumsum(1) - 1).clamp(min=0)
    with enable_token_pruning(model, padding_side=side) as handle, torch.no_grad():
        labels = ids.masked_fill(mask == 0, -100)
        batched = model(input_ids=ids, attention_mask=mask, pixel_values=pixel_values, labels=labels, **kwargs)
        record = handle.last
        assert batched.logits.shape[1] == ids.shape[1] - int(record.num_pruned.min())
        # the labels were re-packed with the tokens: the loss is next-token CE on the pruned prompt
        targets = record.input_ids.masked_fill(record.attention_mask == 0, -100)[:, 1:]
        expected = torch.nn.functional.cross_entropy(batched.logits[:, :-1].flatten(0, 1), targets.flatten())
        torch.testing.assert_close(batched.loss, expected)
        for b in range(2):
            alone = model(input_ids=torch.tensor([ROWS[b]]), pixel_values=pixel_values[b : b + 1])
            assert alone.logits.shape[1] == len(ROWS[b]) - int(N - record.budgets[b])
            real = record.attention_mask[b] == 1
            torch.testing.assert_close(batched.logits[b][real], alone.logits[0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("side", ["left", "right"])
def test_keeping_every_token_reproduces_the_unpruned_model(model, side):
    ids, mask = _batch(ROWS, side)
    pixel_values = _images()[[0, 2]]
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask, pixel_values=pixel_values).logits
    plain_gen = _greedy(model, input_ids=ids, attention_mask=mask, pixel_values=pixel_values)
    with enable_token_pruning(model, energy=1.0, min_tokens=N, max_tokens=N, padding_side=side) as handle:
        with torch.no_grad():
            pruned = model(input_ids=ids, attention_mask=mask, pixel_values=pixel_values).logits
        assert bool(handle.last.keep.all()) and handle.last.budgets.tolist() == [N, N]
        pruned_gen = _greedy(model, input_ids=ids, attention_mask=mask, pixel_values=pixel_values)
    torch.testing.assert_close(pruned, plain, atol=1e-5, rtol=1e-5)
    assert torch.equal(pruned_gen.sequences, plain_gen.sequences)
    for step_pruned, step_plain in zip(pruned_gen.logits, plain_gen.logits):
        torch.testing.assert_close(step_pruned, step_plain, atol=1e-5, rtol=1e-5)


def test_disable_restores_the_model(model):
    ids, mask = _batch(ROWS, "left")
    pixel_values = _images()[[0, 2]]
    inputs = dict(input_ids=ids, attention_mask=mask, pixel_values=pixel_values)
    with torch.no_grad():
        before = model(**inputs).logits
    handle = enable_token_pruning(model, energy=0.9)
    assert "forward" in model.__dict__ and "generate" in model.__dict__
    with torch.no_grad(), _lm_inputs(model) as calls:
        assert model(**inputs).logits.shape[1] < ids.shape[1]
    assert calls[0]["inputs_embeds"].shape[1] < ids.shape[1]
    handle.disable()
    handle.disable()  # a second call does nothing
    assert "forward" not in model.__dict__ and "generate" not in model.__dict__
    assert type(model).forward is model.forward.__func__
    with torch.no_grad(), _lm_inputs(model) as calls:
        after = model(**inputs).logits
    assert calls[0]["inputs_embeds"].shape[1] == ids.shape[1]
    torch.testing.assert_close(after, before, atol=0, rtol=0)
    again = enable_token_pruning(model)  # can be enabled again once disabled
    again.disable()


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"energie": 0.9}, "energie"),
        ({"scores": torch.ones(1, N)}, "scores"),
        ({"energy": 1.5}, "energy"),
        ({"energy": 0.0}, "energy"),
        ({"max_tokens": N + 1}, "max_tokens"),
        ({"min_tokens": 5, "max_tokens": 4}, "min_tokens"),
        ({"power_iters": -1}, "power_iters"),
        ({"backend": "no-such-backend"}, "backend"),
        ({"padding_side": "middle"}, "padding_side"),
        ({"processor": object()}, "processor"),
        ({"total_budget": 0}, "total_budget"),
        ({"cu_seqlens": torch.tensor([0, N])}, "cu_seqlens"),
    ],
)
def test_bad_arguments_fail_at_enable_time(model, kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name}: "):
        enable_token_pruning(model, **kwargs)
    assert "forward" not in model.__dict__ and "generate" not in model.__dict__


def test_enable_rejects_other_models_and_double_enabling(model):
    with pytest.raises(TypeError, match="^model: "):
        enable_token_pruning(model.model.language_model)
    with enable_token_pruning(model):
        with pytest.raises(RuntimeError, match="already enabled"):
            enable_token_pruning(model)


def test_several_images_per_prompt_beam_search_and_placeholder_mismatch(model):
    rows = [[1, 5] + IMG + [6] + IMG + [7], [1, 8] + IMG + [9]]
    ids, mask = _batch(rows, "left")
    pixel_values = _images()  # row 0 holds images 0 and 1, row 1 holds image 2 (row-major order)
    _, ref = _direct(model, pixel_values)
    budgets = ref.lengths.long()
    with enable_token_pruning(model) as handle, _lm_inputs(model) as calls:
        out = model.generate(
            input_ids=ids, attention_mask=mask, pixel_values=pixel_values, max_new_tokens=NEW_TOKENS,
            do_sample=False, num_beams=2, num_return_sequences=2,
        )
        assert torch.equal(handle.last.num_pruned, torch.stack([2 * N - budgets[:2].sum(), N - budgets[2]]))
        assert torch.equal(calls[0]["attention_mask"].sum(1), (mask.sum(1) - handle.last.num_pruned).repeat_interleave(2))
        for i in range(3):
            torch.testing.assert_close(handle.last.image_features[i], ref.tokens[i, : budgets[i]])
        assert out.shape == (4, ids.shape[1] + NEW_TOKENS)
        assert torch.equal(out[:, : ids.shape[1]], ids.repeat_interleave(2, 0))
        with pytest.raises(ValueError, match="^input_ids: holds 32 image placeholder"):
            model(input_ids=ids[:1], attention_mask=mask[:1], pixel_values=pixel_values[:1])
        with pytest.raises(ValueError, match="^inputs_embeds: "):
            model.generate(inputs_embeds=torch.zeros(1, 3, 64), pixel_values=pixel_values[:1])


def test_llava_next_images_of_different_sizes(model):
    """LLaVA-NeXT: each image's whole feature sequence (tiles + newline rows) is pruned as one matrix."""
    torch.manual_seed(0)
    config = transformers.LlavaNextConfig(
        vision_config=model.config.vision_config, text_config=model.config.text_config,
        image_token_id=IMAGE_TOKEN, image_grid_pinpoints=[[28, 56], [56, 28], [56, 56]],
        vision_feature_layer=-1, vision_feature_select_strategy="default",
    )
    next_model = transformers.LlavaNextForConditionalGeneration(config).float().eval()
    next_model.generation_config.pad_token_id = PAD
    next_model.generation_config.eos_token_id = None
    pixel_values = torch.randn(2, 5, 3, 28, 28, generator=torch.Generator().manual_seed(2))
    image_sizes = torch.tensor([[28, 56], [50, 30]])
    with torch.no_grad():
        features = next_model.model.get_image_features(pixel_values=pixel_values, image_sizes=image_sizes).pooler_output
    counts = [f.shape[0] for f in features]
    assert counts[0] != counts[1]
    refs = [adaptive_prune(f, energy=0.99) for f in features]
    budgets = torch.tensor([int(r.lengths) for r in refs])
    rows = [[1, 5] + [IMAGE_TOKEN] * counts[0] + [6, 7], [1] + [IMAGE_TOKEN] * counts[1] + [8]]
    ids, mask = _batch(rows, "left")
    with enable_token_pruning(next_model, energy=0.99) as handle, _lm_inputs(next_model) as calls:
        out = next_model.generate(
            input_ids=ids, attention_mask=mask, pixel_values=pixel_values, image_sizes=image_sizes,
            max_new_tokens=NEW_TOKENS, do_sample=False,
        )
    assert torch.equal(handle.last.budgets, budgets)
    assert torch.equal(calls[0]["attention_mask"].sum(1), mask.sum(1) - (torch.tensor(counts) - budgets))
    for b in range(2):
        kept = calls[0]["inputs_embeds"][b][handle.last.input_ids[b] == IMAGE_TOKEN]
        torch.testing.assert_close(kept, refs[b].tokens[: budgets[b]])
    assert torch.equal(out[:, : ids.shape[1]], ids)
