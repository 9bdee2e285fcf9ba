"""What vLLM 0.32 does with pruned embeddings of an M-RoPE model (Qwen2-VL), outside this package's path.

vLLM takes Qwen2-VL image embeddings only together with ``image_grid_thw``; the grid, not the
embeddings, decides how many placeholder positions the image gets (t * h * w / merge^2) and which
3-D rotary positions they have. A pruned set of k rows is not a grid, so it is accepted only under a
made-up grid of size k, and the kept rows then sit at that grid's positions, not at their own.
PrunedImageEncoder refuses such checkpoints; these tests pin down vLLM's behaviour the README states.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from eadaprune_kernels.integrations.vllm import PrunedImageEncoder
from engines import shutdown_llm, start_llm
import tiny_models

K = 6
_uuids = itertools.count()


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    return tiny_models.write_qwen2_vl_checkpoint(tmp_path_factory.mktemp("qwen2_vl") / "model")


@pytest.fixture(scope="module")
def qwen_llm(qwen_dir):
    engine = start_llm(qwen_dir)
    yield engine
    shutdown_llm(engine)


PROMPT = f"user: {tiny_models.QWEN2_VL_IMAGE} what is this assistant:"


def _run(llm, rows: torch.Tensor, grid: list[int]):
    """(prompt length, first-step logprobs) of one greedy request with ``rows`` under ``grid``."""
    from vllm import SamplingParams

    request = {
        "prompt": PROMPT,
        "multi_modal_data": {"image": {"image_embeds": rows, "image_grid_thw": torch.tensor([grid])}},
        "multi_modal_uuids": {"image": [f"qwen-{next(_uuids)}"]},
    }
    (output,) = llm.generate([request], SamplingParams(temperature=0.0, max_tokens=2, logprobs=3), use_tqdm=False)
    first = {token: lp.logprob for token, lp in output.outputs[0].logprobs[0].items()}
    return len(output.prompt_token_ids), first


def _max_difference(a: dict, b: dict) -> float:
    shared = set(a) & set(b)
    assert shared
    return max(abs(a[t] - b[t]) for t in shared)


def test_qwen2_vl_embeddings_are_placed_by_their_grid_not_by_their_rows(qwen_dir, qwen_llm):
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(qwen_dir)
    text_tokens = len(tokenizer(PROMPT).input_ids) - 1  # <|image_pad|> becomes the image's positions
    rows = torch.randn(K, 128, generator=torch.Generator().manual_seed(0))

    # k rows under a made-up 1 x k strip (2 x 2k patches, merged 2 x 2): accepted, k positions
    length, strip = _run(qwen_llm, rows, [1, 2, 2 * K])
    assert length == text_tokens + K
    _, strip_again = _run(qwen_llm, rows, [1, 2, 2 * K])
    assert _max_difference(strip, strip_again) <= 1e-6
    # the same rows as a k x 1 column: same count, other rotary positions, another answer
    length, column = _run(qwen_llm, rows, [1, 2 * K, 2])
    assert length == text_tokens + K
    assert _max_difference(strip, column) > 1e-4

    # a grid smaller than the rows: no error, the grid's count wins and the trailing rows are dropped
    length, truncated = _run(qwen_llm, rows, [1, 4, 4])
    assert length == text_tokens + 4
    _, first_four = _run(qwen_llm, rows[:4], [1, 4, 4])
    assert _max_difference(truncated, first_four) <= 1e-6

    # no grid at all: refused
    from vllm import SamplingParams

    with pytest.raises(ValueError, match="image_grid_thw"):
        qwen_llm.generate(
            [{"prompt": PROMPT, "multi_modal_data": {"image": {"image_embeds": rows}}}], SamplingParams(max_tokens=1),
            use_tqdm=False,
        )


def test_pruned_image_encoder_refuses_qwen2_vl(qwen_dir):
    with pytest.raises(ValueError, match=r"model_dir: expected a LLaVA-style checkpoint .*got model_type 'qwen2_vl'"):
        PrunedImageEncoder.from_pretrained(qwen_dir, device="cpu")
