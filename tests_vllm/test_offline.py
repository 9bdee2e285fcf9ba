"""Pruned image embeddings through vLLM's offline engine (vllm.LLM) on its CPU build.

One engine per model kind (LLaVA, then LLaVA-NeXT), started with enable_mm_embeds. vLLM caches
encoder outputs by content hash (or by the request's multi_modal_uuids), so a request that reuses an
image already sent skips the encoder step; every phase below gives its images their own uuids, so
each one really goes through the model's embedding input path.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from eadaprune_kernels.integrations.vllm import PrunedImageEncoder
from engines import MODEL_KINDS, shutdown_llm, start_llm

NEW_TOKENS = 6
LOGPROBS = 3
_uuid_counter = itertools.count()


@pytest.fixture(scope="module", params=MODEL_KINDS)
def kind(request):
    return request.param


@pytest.fixture(scope="module")
def llm(checkpoints, kind):
    engine = start_llm(checkpoints[kind])
    yield engine
    shutdown_llm(engine)


@pytest.fixture(scope="module")
def tokenizer(checkpoints, kind):
    import transformers

    return transformers.AutoTokenizer.from_pretrained(checkpoints[kind])


def llm_kind(llm) -> str:
    """The engine's model_type: which checkpoint it serves."""
    return llm.llm_engine.model_config.hf_config.model_type


def _greedy(**overrides):
    from vllm import SamplingParams

    return SamplingParams(**{"temperature": 0.0, "max_tokens": NEW_TOKENS, "logprobs": LOGPROBS, **overrides})


def _with_fresh_uuids(requests: list[dict]) -> list[dict]:
    """Each image of each request gets a uuid never used before (no encoder-cache hit)."""
    out = []
    for request in requests:
        request = dict(request)
        images = request.get("multi_modal_data", {}).get("image")
        if images is not None:
            count = len(images) if isinstance(images, list) else 1
            request["multi_modal_uuids"] = {"image": [f"img-{next(_uuid_counter)}" for _ in range(count)]}
        out.append(request)
    return out


def _assert_same_generation(got, expected, atol=1e-4):
    """Same greedy tokens, and the same top logprobs at every step (within float32 rounding)."""
    assert list(got.outputs[0].token_ids) == list(expected.outputs[0].token_ids)
    for step_got, step_expected in zip(got.outputs[0].logprobs, expected.outputs[0].logprobs):
        chosen = set(step_got) & set(step_expected)
        assert len(chosen) >= LOGPROBS
        for token in chosen:
            assert abs(step_got[token].logprob - step_expected[token].logprob) <= atol


def test_keeping_every_token_gives_vllms_own_pixel_path_output(checkpoints, kind, llm, pictures):
    names = ["halves", "noise", "wide"] if kind == "llava_next" else ["halves", "quarters", "noise"]
    images = [pictures[n] for n in names]
    features = PrunedImageEncoder.from_pretrained(checkpoints[kind], device="cpu").features(images)
    longest = max(f.shape[0] for f in features)
    keep_all = PrunedImageEncoder.from_pretrained(
        checkpoints[kind], device="cpu", min_tokens=longest, max_tokens=longest
    )
    prompt = f"user: {keep_all.image_token} what is in this image assistant:"
    embedded = keep_all.requests([prompt] * len(images), images, llm=llm)
    assert keep_all.last.lengths.tolist() == [f.shape[0] for f in features]  # nothing pruned
    pixels = [{"prompt": prompt, "multi_modal_data": {"image": image}} for image in images]

    from_pixels = llm.generate(_with_fresh_uuids(pixels), _greedy(), use_tqdm=False)
    from_embeddings = llm.generate(_with_fresh_uuids(embedded), _greedy(), use_tqdm=False)
    for got, expected in zip(from_embeddings, from_pixels):
        assert got.prompt_token_ids == expected.prompt_token_ids
        _assert_same_generation(got, expected)


def test_pruned_prompts_hold_the_text_and_exactly_k_image_tokens(checkpoints, llm, tokenizer, pictures):
    encoder = PrunedImageEncoder.from_pretrained(checkpoints[llm_kind(llm)], device="cpu")
    token = encoder.image_token
    prompts = [
        f"user: {token} what is in this image assistant:",
        f"user: {token} and {token} where is the cat assistant:",
        "user: how many dog assistant:",
    ]
    images = [pictures["noise"], [pictures["halves"], pictures["quarters"]], None]
    requests = encoder.requests(prompts, images, llm=llm)
    budgets = encoder.last.lengths.tolist()
    image_token_id = tokenizer.convert_tokens_to_ids(token)
    outputs = llm.generate(_with_fresh_uuids(requests), _greedy(), use_tqdm=False)

    kept_per_prompt = [budgets[0], budgets[1] + budgets[2], 0]
    for prompt, kept, output in zip(prompts, kept_per_prompt, outputs):
        text_ids = [t for t in tokenizer(prompt).input_ids if t != image_token_id]
        assert len(output.prompt_token_ids) == len(text_ids) + kept
        assert sum(t == image_token_id for t in output.prompt_token_ids) == kept
        assert [t for t in output.prompt_token_ids if t != image_token_id] == text_ids
        assert len(output.outputs[0].token_ids) >= 1


def test_one_call_mixes_very_different_budgets(checkpoints, llm, pictures):
    """Budgets from 1-2 rows (flat halves) to most of the image (noise) in ONE generate call: vLLM
    batches them in one engine step, which needs the plugin; each answer equals the request run alone."""
    kind = llm_kind(llm)
    encoder = PrunedImageEncoder.from_pretrained(checkpoints[kind], device="cpu")
    names = ["halves", "wide", "quarters", "tall"] if kind == "llava_next" else ["halves", "noise", "quarters", "noise2"]
    prompt = f"user: {encoder.image_token} describe the picture assistant:"
    requests = encoder.requests([prompt] * len(names), [pictures[n] for n in names], llm=llm)
    budgets = encoder.last.lengths.tolist()
    assert min(budgets) <= 2 and max(budgets) >= 8 * min(budgets)

    together = llm.generate(_with_fresh_uuids(requests), _greedy(), use_tqdm=False)  # first: no cache hit
    assert [len(o.prompt_token_ids) for o in together] == [len(together[0].prompt_token_ids) - budgets[0] + k for k in budgets]
    for request, batched in zip(requests, together):
        alone = llm.generate(_with_fresh_uuids([request]), _greedy(), use_tqdm=False)[0]
        _assert_same_generation(batched, alone)
    # the engine is still alive and serves the next call
    again = llm.generate(_with_fresh_uuids(requests[:2]), _greedy(), use_tqdm=False)
    assert [list(o.outputs[0].token_ids) for o in again] == [list(o.outputs[0].token_ids) for o in together[:2]]


def test_embeddings_of_the_wrong_width_are_refused_before_the_engine(checkpoints, llm):
    encoder = PrunedImageEncoder.from_pretrained(checkpoints[llm_kind(llm)], device="cpu")
    encoder.hidden_size += 1  # as if the encoder came from another model than the engine serves
    with pytest.raises(ValueError, match="llm: serves a model of hidden size 128, but this encoder's features have D = 129"):
        encoder.requests([f"{encoder.image_token} a"], [[torch.zeros(1)]], llm=llm)
