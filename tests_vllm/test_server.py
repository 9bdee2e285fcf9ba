"""Pruned image embeddings through vLLM's OpenAI-compatible server (chat completions, image_embeds).

The test starts the server on 127.0.0.1 (a free port) with --enable-mm-embeds on the tiny LLaVA
checkpoint, sends chat requests whose image is an ``image_embeds`` content part built by
PrunedImageEncoder.chat_message, and stops the server (and its engine processes) at the end.
"""

from __future__ import annotations

import base64
import io

import pytest

from eadaprune_kernels.integrations.vllm import PrunedImageEncoder
from engines import openai_server, post_json
import tiny_models

QUESTION = "what is in this image"
NEW_TOKENS = 5


@pytest.fixture(scope="module")
def server(checkpoints, tmp_path_factory):
    log = tmp_path_factory.mktemp("server") / "vllm_server.log"
    with openai_server(checkpoints["llava"], log) as url:
        yield url


def _chat(url: str, model_dir, message: dict) -> dict:
    body = {
        "model": str(model_dir), "messages": [message], "max_tokens": NEW_TOKENS, "temperature": 0.0,
        "logprobs": True, "top_logprobs": 2,
    }
    return post_json(f"{url}/v1/chat/completions", body)


def _png_data_url(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _pixel_message(image) -> dict:
    return {"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": _png_data_url(image)}}, {"type": "text", "text": QUESTION},
    ]}


def _generated(answer: dict) -> list[tuple[str, float]]:
    return [(step["token"], step["logprob"]) for step in answer["choices"][0]["logprobs"]["content"]]


def test_server_answers_a_chat_request_with_pruned_image_embeds(server, checkpoints, pictures):
    encoder = PrunedImageEncoder.from_pretrained(checkpoints["llava"], device="cpu")
    for name in ("noise", "halves"):
        message = encoder.chat_message(QUESTION, [pictures[name]])
        budget = int(encoder.last.lengths[0])
        assert 1 <= budget < tiny_models.NUM_PATCHES
        pruned = _chat(server, checkpoints["llava"], message)
        from_pixels = _chat(server, checkpoints["llava"], _pixel_message(pictures[name]))
        # the prompt holds the same text, and k instead of N image positions
        assert pruned["usage"]["prompt_tokens"] == from_pixels["usage"]["prompt_tokens"] - tiny_models.NUM_PATCHES + budget
        assert pruned["usage"]["completion_tokens"] >= 1
        assert pruned["choices"][0]["message"]["role"] == "assistant"
        assert len(_generated(pruned)) == pruned["usage"]["completion_tokens"]


def test_server_keeping_every_token_answers_as_its_pixel_path(server, checkpoints, pictures):
    n = tiny_models.NUM_PATCHES
    encoder = PrunedImageEncoder.from_pretrained(checkpoints["llava"], device="cpu", min_tokens=n, max_tokens=n)
    image = pictures["quarters"]
    from_embeds = _chat(server, checkpoints["llava"], encoder.chat_message(QUESTION, [image]))
    from_pixels = _chat(server, checkpoints["llava"], _pixel_message(image))
    assert from_embeds["usage"] == from_pixels["usage"]
    assert from_embeds["choices"][0]["message"]["content"] == from_pixels["choices"][0]["message"]["content"]
    for (token, logprob), (pixel_token, pixel_logprob) in zip(_generated(from_embeds), _generated(from_pixels)):
        assert token == pixel_token
        assert abs(logprob - pixel_logprob) <= 1e-4
