"""The adapter core beyond the per-family matrix: pruning units (image / view / tile), gradients,
padding-free packed rows, total_budget, Qwen's positions and decoding from a cache, and the errors.

The tiny models and prompts are the ones of test_integration_families.py.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from packaging.version import Version

transformers = pytest.importorskip("transformers", minversion="5.18")

from eadaprune_kernels import adaptive_prune  # noqa: E402
from eadaprune_kernels.integrations import SUPPORTED_MODELS, enable_token_pruning  # noqa: E402
from test_integration_families import CASES, IMG, _batch, _finish, _greedy  # noqa: E402

CASE = {c.name: c for c in CASES}


def _built(name):
    case = CASE[name]
    torch.manual_seed(0)
    model = _finish(case.build())
    return case, model, case.prompts(model)


@pytest.fixture(scope="module")
def llava():
    return _built("llava")


@pytest.fixture(scope="module")
def qwen2():
    return _built("qwen2_vl")


def _units(record):
    return record.num_image_tokens.tolist(), record.unit_image.tolist()


def _features(model, case, prompts, inputs):
    keys = case.collate([prompts[0].images]).keys()
    with torch.no_grad():
        output = model.base_model.get_image_features(**{k: inputs[k] for k in keys}, return_dict=True)
    return torch.cat(list(output.pooler_output))


# ---------------------------------------------------------------- units
@pytest.mark.parametrize("name", ["llava_onevision", "internvl", "idefics3"])
def test_units_image_and_view(name):
    """unit="image" prunes all views of an image as one matrix, unit="view" each view (tile) alone; the
    placeholders of a unit are its rows, so each unit's kept features are adaptive_prune's on its rows."""
    case, model, prompts = _built(name)
    inputs = _batch(case, prompts, "left")
    rows = _features(model, case, prompts, inputs)
    per_prompt = [sum(1 for t in p.tokens if t == IMG) for p in prompts]
    expected = {
        # anyres: base view (28 / 7)^2 = 16 rows, then the high-resolution grid with its newline rows
        "llava_onevision": ({"image": (per_prompt, [0, 1]),
                             "view": ([16, per_prompt[0] - 16, 16, per_prompt[1] - 16], [0, 0, 1, 1])}),
        # 16 rows per tile; images of 2, 1 and 2 tiles
        "internvl": {"image": ([32, 16, 32], [0, 1, 2]), "view": ([16] * 5, [0, 0, 1, 2, 2])},
        # each placeholder run (tile) is a view; no image unit
        "idefics3": {"view": ([16] * 4, [0, 1, 2, 3])},
    }[name]
    for unit, (sizes, images) in expected.items():
        with enable_token_pruning(model, energy=case.energy, unit=unit) as handle, torch.no_grad():
            model(**inputs)
        record = handle.last
        assert record.unit == unit
        assert _units(record) == (sizes, images)
        offsets = [0] + torch.tensor(sizes).cumsum(0).tolist()
        for u, size in enumerate(sizes):
            ref = adaptive_prune(rows[offsets[u]:offsets[u] + size], energy=case.energy)
            assert torch.equal(record.kept_indices[u], ref.indices[: int(ref.lengths)])
        # the kept placeholders of unit u are exactly its kept rows
        kept = record.keep[inputs["input_ids"] == IMG]
        expected_keep = torch.zeros(offsets[-1], dtype=torch.bool)
        for u, idx in enumerate(record.kept_indices):
            expected_keep[offsets[u] + idx] = True
        assert torch.equal(kept, expected_keep)
    if name == "idefics3":
        with pytest.raises(ValueError, match="^unit: Idefics3 prunes per 'view', got 'image'"):
            enable_token_pruning(model, unit="image")


def test_generate_with_views_keeps_tile_separators():
    case, model, prompts = _built("idefics3")
    inputs = _batch(case, prompts, "left")
    with enable_token_pruning(model, energy=case.energy) as handle:
        out = model.generate(**inputs, max_new_tokens=2, do_sample=False)
    record = handle.last
    assert out.shape == (2, inputs["input_ids"].shape[1] + 2)
    for b in range(2):
        ids = record.input_ids[b][record.attention_mask[b] == 1].tolist()
        assert [t for t in ids if t != IMG] == [t for t in prompts[b].tokens if t != IMG]
        runs = torch.tensor(ids) == IMG
        assert int(runs.sum()) == int(record.sample_budgets[b])


# ---------------------------------------------------------------- training
@pytest.mark.parametrize("name", ["llava", "qwen2_vl"])
def test_backward_through_a_pruned_forward(name):
    """Gradients reach the kept features and the vision tower; keeping every token gives the same
    gradients as the un-pruned model."""
    case, model, prompts = _built(name)
    inputs = _batch(case, prompts, "right")
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)

    def grads(**enable):
        model.zero_grad(set_to_none=True)
        if enable:
            with enable_token_pruning(model, padding_side="right", **enable) as handle:
                model(**inputs, labels=labels).loss.backward()
            assert all(f.requires_grad for f in handle.last.image_features)
        else:
            model(**inputs, labels=labels).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    vision = [n for n in plain if "vision" in n or "visual" in n or "projector" in n]
    assert vision
    kept_all = grads(**case.keep_all)
    assert kept_all.keys() == plain.keys()
    for n in plain:
        torch.testing.assert_close(kept_all[n], plain[n], atol=1e-5, rtol=1e-4, msg=n)
    pruned = grads(energy=case.energy)
    assert all(bool(pruned[n].isfinite().all()) for n in pruned)
    assert all(float(pruned[n].norm()) > 0 for n in vision)
    model.zero_grad(set_to_none=True)


# ---------------------------------------------------------------- positions
def test_padding_free_packed_rows_keep_per_sequence_positions(llava):
    """Two prompts packed in one row, positions restarting at the second (FlashAttention varlen style):
    each sequence's positions are shifted by its own removed tokens, never negative, and the packed
    pruned forward equals each prompt pruned alone (use_cache=False, as in training: transformers
    finds packed sequences from the positions only when there is no mask and no cache)."""
    case, model, prompts = llava
    rows = [torch.tensor(p.tokens) for p in prompts]
    ids = torch.cat(rows)[None]
    positions = torch.cat([torch.arange(len(r)) for r in rows])[None]
    pixel_values = torch.cat([p.images["pixel_values"] for p in prompts])
    with enable_token_pruning(model) as handle, torch.no_grad():
        packed = model(input_ids=ids, position_ids=positions, pixel_values=pixel_values, use_cache=False).logits
        record = handle.last
        budgets = record.budgets.tolist()
        assert budgets[0] < 16 and budgets[1] < 16
        lengths = [len(r) - (16 - k) for r, k in zip(rows, budgets)]
        assert record.position_ids.tolist() == [list(range(lengths[0])) + list(range(lengths[1]))]
        start = 0
        for b in range(2):
            alone = model(input_ids=rows[b][None], pixel_values=prompts[b].images["pixel_values"]).logits
            torch.testing.assert_close(packed[0, start:start + lengths[b]], alone[0], atol=1e-4, rtol=1e-4)
            start += lengths[b]


def test_qwen_caller_positions_follow_the_kept_tokens(qwen2):
    """[4, B, L] or [3, B, L] position_ids of the un-pruned prompt (as generate builds them) give the
    same pruned forward as the adapter's own positions; mm_token_type_ids are built when missing."""
    case, model, prompts = qwen2
    inputs = _batch(case, prompts, "left")
    mask = inputs["attention_mask"]
    spatial = model.base_model.get_rope_index(inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"],
                                              image_grid_thw=inputs["image_grid_thw"], attention_mask=mask)[0]
    text = ((mask.cumsum(1) - 1).clamp(min=0))[None]
    with enable_token_pruning(model, energy=case.energy) as handle, torch.no_grad():
        own = model(**inputs).logits
        positions = handle.last.position_ids
        assert positions.shape[0] == 3
        for given in (torch.cat([text, spatial]), spatial):
            logits = model(**inputs, position_ids=given).logits
            torch.testing.assert_close(logits, own, atol=1e-5, rtol=1e-5)
            assert torch.equal(handle.last.position_ids[-3:], positions)
        without_types = {k: v for k, v in inputs.items() if k != "mm_token_type_ids"}
        torch.testing.assert_close(model(**without_types).logits, own, atol=0, rtol=0)
    # the kept image tokens keep their un-pruned grid positions
    kept = handle.last.keep
    for b in range(2):
        real = handle.last.attention_mask[b] == 1
        assert torch.equal(positions[:, b][:, real], spatial[:, b][:, (kept[b] & (mask[b] == 1))])


def _with_cache(model, output) -> dict:
    """The keyword that passes a model output's key/value cache back in (transformers 5.2x calls it
    ``cache``, earlier 5.x ``past_key_values``)."""
    if "cache" in inspect.signature(model.forward).parameters:
        return {"cache": output.cache}
    return {"past_key_values": output.past_key_values}


def test_qwen_decoding_from_the_cache_uses_the_pruned_rope_deltas(qwen2):
    """A forward that fills the cache, then a decoding step without position_ids (the model numbers it
    cache length + rope_deltas), matches generate's first two steps: the adapter left rope_deltas
    consistent with the pruned prompt. (One unpadded prompt: transformers' own decoding-by-hand path
    takes positions from a 2-D mask as long as the whole sequence, so it needs no mask here.)"""
    case, model, prompts = qwen2
    inputs = _batch(case, prompts, "left", which=(0,))
    with enable_token_pruning(model, energy=case.energy) as handle:
        generated = _greedy(model, **inputs)
        model.base_model.rope_deltas = None  # nothing stale from generate
        with torch.no_grad():
            first = model(**inputs, use_cache=True)
            assert bool((handle.last.budgets < handle.last.num_image_tokens).any())
            token = first.logits[:, -1].argmax(-1, keepdim=True)
            second = model(input_ids=token, **_with_cache(model, first))
    torch.testing.assert_close(first.logits[:, -1], generated.logits[0], atol=1e-5, rtol=1e-5)
    assert torch.equal(token[:, 0], generated.sequences[:, inputs["input_ids"].shape[1]])
    torch.testing.assert_close(second.logits[:, -1], generated.logits[1], atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- budgets
@pytest.mark.parametrize("name", ["llava", "llava_onevision"])
def test_total_budget_is_shared_over_all_units(name):
    """total_budget goes to one adaptive_prune call over every unit of the call (batched when the units
    have one N, ragged otherwise), so the batch keeps exactly that many image tokens."""
    case, model, prompts = _built(name)
    inputs = _batch(case, prompts, "left")
    rows = _features(model, case, prompts, inputs)
    sizes = [sum(1 for t in p.tokens if t == IMG) for p in prompts]
    units = list(rows.split(sizes))
    total = sum(sizes) // 3
    assert (len(set(sizes)) > 1) == (name == "llava_onevision")  # a ragged call, or a batched one
    with enable_token_pruning(model, total_budget=total) as handle, torch.no_grad():
        model(**inputs)
        record = handle.last
        assert int(record.budgets.sum()) == total and len(record.results) == 1
        ref = adaptive_prune(units if len(set(sizes)) > 1 else torch.stack(units), total_budget=total)
        assert record.budgets.tolist() == ref.lengths.tolist()
        assert torch.equal(record.sample_budgets, torch.as_tensor(ref.lengths, dtype=torch.long))
    with enable_token_pruning(model, total_budget=sizes[0] + 1), torch.no_grad():
        with pytest.raises(ValueError, match="^total_budget: "):
            model(**_batch(case, prompts, "left", which=(0,)))  # more than the one image holds
    with pytest.raises(TypeError, match="^total_budget: "):
        enable_token_pruning(model, total_budget=1.5)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_units_of_different_n_go_to_one_ragged_call(backend):
    """LLaVA-OneVision's images have different N: one ragged adaptive_prune call prunes them all, and
    each unit keeps what adaptive_prune keeps of it alone."""
    case, model, prompts = _built("llava_onevision")
    inputs = _batch(case, prompts, "left")
    rows = _features(model, case, prompts, inputs)
    with enable_token_pruning(model, energy=case.energy, backend=backend) as handle, torch.no_grad():
        model(**inputs)
    record = handle.last
    sizes = record.num_image_tokens.tolist()
    assert len(set(sizes)) == 2
    (result,) = record.results
    assert result.backend == backend and result.lengths.shape == (2,)
    for unit, kept in zip(rows.split(sizes), record.kept_indices):
        alone = adaptive_prune(unit, energy=case.energy, backend=backend)
        assert torch.equal(kept, alone.indices[: int(alone.lengths)])


@pytest.mark.parametrize("name", ["gemma3", "internvl", "qwen3_vl", "idefics3"])
def test_beam_search_with_several_images_per_prompt(name):
    """generate expands the pruned features per beam (entries of unequal length, deepstack features
    included): keeping every token gives the un-pruned beams, pruning gives beams of the pruned prompt."""
    case, model, prompts = _built(name)
    inputs = _batch(case, prompts, "left")
    beams = {"max_new_tokens": 2, "do_sample": False, "num_beams": 2, "num_return_sequences": 2}
    plain = model.generate(**inputs, **beams)
    with enable_token_pruning(model, **case.keep_all):
        assert torch.equal(model.generate(**inputs, **beams), plain)
    with enable_token_pruning(model, energy=case.energy) as handle:
        out = model.generate(**inputs, **beams)
    assert bool((handle.last.budgets < handle.last.num_image_tokens).any())
    assert out.shape == (4, inputs["input_ids"].shape[1] + 2)
    assert torch.equal(out[:, : inputs["input_ids"].shape[1]], inputs["input_ids"].repeat_interleave(2, 0))


# ---------------------------------------------------------------- errors
def test_unsupported_models_raise_type_error_listing_the_supported_classes(llava):
    _, model, _ = llava
    config = transformers.LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                      vocab_size=32)
    for other in (transformers.LlamaForCausalLM(config), model.model):
        with pytest.raises(TypeError, match="^model: expected one of ") as error:
            enable_token_pruning(other)
        assert all(name in str(error.value) for name in SUPPORTED_MODELS)
        assert type(other).__name__ in str(error.value)


def test_smolvlm_needs_transformers_5_21():
    """Before 5.21 SmolVLM's inputs_merger cuts the features into blocks of one tile's token count: the
    adapter refuses it there, with the reason, and runs from 5.21 on."""
    case, model, prompts = _built("smolvlm")
    if Version(transformers.__version__) < Version("5.21"):
        with pytest.raises(RuntimeError, match=r"^model: token pruning of SmolVLM needs transformers >= 5\.21"):
            enable_token_pruning(model)
        assert "forward" not in model.__dict__
    else:
        with enable_token_pruning(model, energy=case.energy) as handle, torch.no_grad():
            model(**_batch(case, prompts, "left"))
        assert handle.last.family == "SmolVLM"


def test_bad_unit_and_videos_are_refused(llava, qwen2):
    _, model, _ = llava
    with pytest.raises(ValueError, match="^unit: LLaVA prunes per 'image' or per 'view', got 'tile'"):
        enable_token_pruning(model, unit="tile")
    case, qwen, prompts = qwen2
    inputs = _batch(case, prompts, "left")
    with enable_token_pruning(qwen):
        with pytest.raises(ValueError, match="^pixel_values_videos: "):
            qwen(**inputs, pixel_values_videos=torch.zeros(4, 96), video_grid_thw=torch.tensor([[1, 2, 2]]))
