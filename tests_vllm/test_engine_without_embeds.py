"""An engine started without enable_mm_embeds: both refusals are clear and the engine survives them."""

from __future__ import annotations

import pytest

from eadaprune_kernels.integrations.vllm import PrunedImageEncoder
from engines import shutdown_llm, start_llm


@pytest.fixture(scope="module")
def pixel_only_llm(checkpoints):
    engine = start_llm(checkpoints["llava"], enable_mm_embeds=False)
    yield engine
    shutdown_llm(engine)


def test_pruned_requests_to_an_engine_without_enable_mm_embeds_are_refused(checkpoints, pixel_only_llm, pictures):
    from vllm import SamplingParams

    encoder = PrunedImageEncoder.from_pretrained(checkpoints["llava"], device="cpu")
    prompt = f"user: {encoder.image_token} what is in this image assistant:"
    with pytest.raises(ValueError, match=r"llm: the engine was started without enable_mm_embeds; start it with LLM\(\.\.\., enable_mm_embeds=True\)"):
        encoder.requests([prompt], [pictures["noise"]], llm=pixel_only_llm)
    # without llm=, vLLM refuses the embeddings itself, in the caller's process
    requests = encoder.requests([prompt], [pictures["noise"]])
    with pytest.raises(ValueError, match="You must set `--enable-mm-embeds` to input `image_embeds`"):
        pixel_only_llm.generate(requests, SamplingParams(max_tokens=2), use_tqdm=False)
    # the engine still serves pixel requests
    (output,) = pixel_only_llm.generate(
        [{"prompt": prompt, "multi_modal_data": {"image": pictures["noise"]}}], SamplingParams(max_tokens=2), use_tqdm=False
    )
    assert len(output.outputs[0].token_ids) >= 1
