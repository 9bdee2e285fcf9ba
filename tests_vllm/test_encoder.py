"""PrunedImageEncoder and the plugin without a running engine: loading, encoding, requests, errors.

The features are held to transformers' full model (language model included) loaded from the same
directory; the offline and server tests hold them to vLLM's own pixel path.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file

from eadaprune_kernels import adaptive_prune
from eadaprune_kernels.integrations.vllm import PrunedImageEncoder, image_embeds_part
from engines import MODEL_KINDS
import tiny_models

NAMES = ["halves", "quarters", "noise", "wide", "tall"]


@pytest.fixture(scope="module", params=MODEL_KINDS)
def kind(request):
    return request.param


@pytest.fixture(scope="module")
def encoder(checkpoints, kind):
    return PrunedImageEncoder.from_pretrained(checkpoints[kind], device="cpu", dtype=torch.float32)


def _full_model_features(model_dir, kind, images):
    """get_image_features of transformers' whole model (vision, projector and language model loaded)."""
    import transformers

    cls = transformers.LlavaNextForConditionalGeneration if kind == "llava_next" else transformers.LlavaForConditionalGeneration
    model = cls.from_pretrained(model_dir).eval()
    processor = transformers.AutoProcessor.from_pretrained(model_dir)
    inputs = processor.image_processor(images=images, return_tensors="pt")
    kwargs = {"pixel_values": inputs["pixel_values"]}
    if kind == "llava_next":
        kwargs["image_sizes"] = inputs["image_sizes"]
    with torch.no_grad():
        return list(model.model.get_image_features(**kwargs, return_dict=True).pooler_output)


def test_features_equal_the_full_transformers_model(checkpoints, kind, encoder, pictures):
    images = [pictures[n] for n in NAMES]
    expected = _full_model_features(checkpoints[kind], kind, images)
    got = encoder.features(images)
    assert len(got) == len(images)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=0, atol=0)
    n = tiny_models.NUM_PATCHES
    if kind == "llava":
        assert [f.shape[0] for f in got] == [n] * len(images)
    else:
        # base view + tiles, unpadded to the aspect ratio, one newline row per tile feature row
        assert all(f.shape[0] > n for f in got)
        assert got[3].shape[0] != got[2].shape[0]
    # only the image side was built: no language model, and the encoder holds no LM-sized tensor
    assert encoder.model.language_model is None
    names = {name.split(".")[0] for name, _ in encoder.model.named_parameters()}
    assert names == ({"vision_tower", "multi_modal_projector"} | ({"image_newline"} if kind == "llava_next" else set()))


@pytest.mark.parametrize("layout", ["transformers5", "model_prefixed", "model_prefixed_vision_model"])
def test_every_weight_naming_generation_loads(checkpoints, tmp_path, layout, pictures):
    """vLLM's names (vision_tower.vision_model.*), transformers 5's (vision_tower.*) and the
    "model."-prefixed names of transformers >= 4.52 load to the same features."""
    source = checkpoints["llava"]
    target = tmp_path / layout
    shutil.copytree(source, target)
    weights = load_file(source / "model.safetensors")

    def rename(key: str) -> str:
        if not key.startswith(("vision_tower.", "multi_modal_projector.")):
            return key
        if layout == "transformers5":
            return key.replace("vision_tower.vision_model.", "vision_tower.")
        if layout == "model_prefixed":
            return "model." + key.replace("vision_tower.vision_model.", "vision_tower.")
        return "model." + key

    renamed = {rename(k): v for k, v in weights.items()}
    assert set(renamed) != set(weights)
    save_file(renamed, target / "model.safetensors", metadata={"format": "pt"})
    images = [pictures["noise"], pictures["halves"]]
    reference = PrunedImageEncoder.from_pretrained(source, device="cpu").features(images)
    got = PrunedImageEncoder.from_pretrained(target, device="cpu").features(images)
    for g, r in zip(got, reference):
        torch.testing.assert_close(g, r, rtol=0, atol=0)


def test_encode_is_one_ragged_adaptive_prune_of_the_features(encoder, pictures, kind):
    images = [pictures[n] for n in NAMES]
    kept = encoder.encode(images)
    features = encoder.features(images)
    expected = adaptive_prune(features)
    budgets = expected.lengths.tolist()
    assert [k.shape[0] for k in kept] == budgets
    assert torch.equal(encoder.last.lengths, expected.lengths)
    for b, (k, f) in enumerate(zip(kept, features)):
        rows = expected.indices[b, : budgets[b]]
        assert bool((rows[1:] > rows[:-1]).all())  # original order
        torch.testing.assert_close(k, f[rows], rtol=0, atol=0)
    # the spectra differ: flat halves keep (almost) nothing, noise keeps many
    assert budgets[NAMES.index("halves")] <= 2
    assert budgets[NAMES.index("noise")] >= 8


def test_prune_kwargs_reach_adaptive_prune(checkpoints, pictures):
    images = [pictures["noise"], pictures["quarters"]]
    low = PrunedImageEncoder.from_pretrained(checkpoints["llava"], device="cpu", energy=0.5)
    high = PrunedImageEncoder.from_pretrained(checkpoints["llava"], device="cpu", energy=0.999)
    low_budgets = [k.shape[0] for k in low.encode(images)]
    high_budgets = [k.shape[0] for k in high.encode(images)]
    assert all(lo <= hi for lo, hi in zip(low_budgets, high_budgets)) and sum(low_budgets) < sum(high_budgets)
    everything = PrunedImageEncoder.from_pretrained(
        checkpoints["llava"], device="cpu", min_tokens=tiny_models.NUM_PATCHES, max_tokens=tiny_models.NUM_PATCHES
    )
    kept = everything.encode(images)
    for k, f in zip(kept, everything.features(images)):
        torch.testing.assert_close(k, f, rtol=0, atol=0)
    total = PrunedImageEncoder.from_pretrained(checkpoints["llava"], device="cpu", total_budget=10)
    assert sum(k.shape[0] for k in total.encode(images)) == 10


def test_requests_carry_each_prompts_images(encoder, pictures):
    token = encoder.image_token
    prompts = [f"user: {token} what is this", "user: how are you", f"user: {token} and {token} two"]
    images = [pictures["noise"], None, [pictures["halves"], pictures["quarters"]]]
    requests = encoder.requests(prompts, images)
    budgets = encoder.last.lengths.tolist()
    assert [r["prompt"] for r in requests] == prompts
    assert "multi_modal_data" not in requests[1]
    shown = [requests[0]["multi_modal_data"]["image"], requests[2]["multi_modal_data"]["image"]]
    assert [len(s) for s in shown] == [1, 2]
    flat = [t for s in shown for t in s]
    assert [t.shape for t in flat] == [(k, encoder.hidden_size) for k in budgets]
    assert all(t.device.type == "cpu" for t in flat)
    expected = encoder.encode([pictures["noise"], pictures["halves"], pictures["quarters"]])
    for t, e in zip(flat, expected):
        torch.testing.assert_close(t, e, rtol=0, atol=0)


def test_chat_message_holds_image_embeds_parts(encoder, pictures):
    message = encoder.chat_message("what is this", [pictures["noise"], pictures["quarters"]])
    assert message["role"] == "user"
    *images, text = message["content"]
    assert text == {"type": "text", "text": "what is this"}
    kept = encoder.encode([pictures["noise"], pictures["quarters"]])
    assert [p["type"] for p in images] == ["image_embeds", "image_embeds"]
    for part, k in zip(images, kept):
        # how vLLM's server reads it: base64 of torch.save, loaded with weights_only=True
        decoded = torch.load(io.BytesIO(base64.b64decode(part["image_embeds"])), weights_only=True)
        torch.testing.assert_close(decoded, k, rtol=0, atol=0)


# ---------------------------------------------------------------------------- bad input


def test_a_checkpoint_that_is_not_llava_style_is_refused(tmp_path):
    llama = tiny_models.write_non_llava_checkpoint(tmp_path / "llama")
    with pytest.raises(ValueError, match=r"model_dir: expected a LLaVA-style checkpoint .*got model_type 'llama'"):
        PrunedImageEncoder.from_pretrained(llama, device="cpu")
    with pytest.raises(ValueError, match="model_dir: expected a local model directory with a config.json"):
        PrunedImageEncoder.from_pretrained(tmp_path / "missing", device="cpu")
    with pytest.raises(ValueError, match="model_dir: expected a local model directory"):
        PrunedImageEncoder.from_pretrained(42, device="cpu")


def test_missing_encoder_weights_are_named(checkpoints, tmp_path):
    target = tmp_path / "no_projector"
    shutil.copytree(checkpoints["llava"], target)
    weights = load_file(target / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.startswith("multi_modal_projector.")},
              target / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"lack 4 tensor\(s\) of the image encoder.*multi_modal_projector.linear_1"):
        PrunedImageEncoder.from_pretrained(target, device="cpu")


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        ({"energy": 1.5}, ValueError, "energy"),
        ({"sketch_size": 0}, ValueError, "sketch_size"),
        ({"max_tokens": "all"}, TypeError, "max_tokens"),
        ({"scores": None}, ValueError, "scores: not supported by PrunedImageEncoder"),
        ({"cu_seqlens": None}, ValueError, "cu_seqlens: not supported"),
        ({"energie": 0.9}, ValueError, "energie: not an argument of adaptive_prune"),
        ({"dtype": torch.int32}, TypeError, "dtype: expected a floating torch.dtype"),
    ],
)
def test_bad_arguments_are_refused_when_loading(checkpoints, kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        PrunedImageEncoder.from_pretrained(checkpoints["llava"], device="cpu", **kwargs)


def test_images_that_do_not_match_the_placeholders_are_refused(encoder, pictures):
    token = encoder.image_token
    with pytest.raises(ValueError, match=r"images: prompt 1 holds 2 '<image>' placeholder\(s\) but 1 image\(s\)"):
        encoder.requests([f"{token} a", f"{token} {token} b"], [pictures["noise"], [pictures["halves"]]])
    with pytest.raises(ValueError, match=r"images: prompt 0 holds 0 '<image>' placeholder\(s\) but 1 image"):
        encoder.requests(["no placeholder"], [pictures["noise"]])
    with pytest.raises(ValueError, match=r"images: expected a list with one entry per prompt \(2\), got list of length 1"):
        encoder.requests([f"{token} a", "b"], [pictures["noise"]])
    with pytest.raises(TypeError, match="prompts: expected a list of str"):
        encoder.requests(f"{token} a", [pictures["noise"]])
    with pytest.raises(TypeError, match="images: expected a list of images, got Image"):
        encoder.encode(pictures["noise"])
    with pytest.raises(ValueError, match=r"features: expected a floating \[k, D\] tensor"):
        image_embeds_part(torch.zeros(4))


def test_check_engine_reads_the_engines_own_model_config(checkpoints, encoder, kind, pictures):
    """check_engine (and requests(llm=...)) read vLLM's own model config of the engine."""
    from types import SimpleNamespace

    from vllm.config import ModelConfig

    def engine(enable_mm_embeds):
        config = ModelConfig(model=str(checkpoints[kind]), enable_mm_embeds=enable_mm_embeds)
        return SimpleNamespace(llm_engine=SimpleNamespace(model_config=config))

    with pytest.raises(ValueError, match="llm: the engine was started without enable_mm_embeds"):
        encoder.requests([f"{encoder.image_token} a"], [[pictures["noise"]]], llm=engine(False))
    encoder.check_engine(engine(True))
    with pytest.raises(TypeError, match="llm: expected a vllm.LLM"):
        encoder.check_engine(object())


# ---------------------------------------------------------------------------- the plugin

_PLUGIN_CHECK = textwrap.dedent(
    """
    import importlib.metadata, json, torch
    from vllm.model_executor.models.llava import LlavaImageEmbeddingInputs, LlavaImagePixelInputs
    from vllm.model_executor.models.llava_next import LlavaNextImageEmbeddingInputs

    def check(schema, data):
        try:
            schema(type="image_embeds", data=data)
            return "ok"
        except ValueError as error:
            return str(error)

    ragged = [torch.zeros(3, 128), torch.zeros(14, 128)]
    wrong_width = [torch.zeros(3, 128), torch.zeros(14, 64)]
    wrong_rank = [torch.zeros(3, 128), torch.zeros(1, 14, 128)]
    schemas = {"llava": LlavaImageEmbeddingInputs, "llava_next": LlavaNextImageEmbeddingInputs}
    report = {"before": {k: check(s, ragged) for k, s in schemas.items()}}
    (plugin,) = [ep for ep in importlib.metadata.entry_points(group="vllm.general_plugins")
                 if ep.value.startswith("eadaprune_kernels.")]
    register = plugin.load()
    register()
    register()  # vLLM may call it more than once
    report["after"] = {k: check(s, ragged) for k, s in schemas.items()}
    report["wrong_width"] = {k: check(s, wrong_width) for k, s in schemas.items()}
    report["wrong_rank"] = {k: check(s, wrong_rank) for k, s in schemas.items()}
    report["same_length"] = check(LlavaImageEmbeddingInputs, torch.zeros(2, 5, 128))
    report["pixel_dims"] = str(LlavaImagePixelInputs.__annotations__["pixel_values"].__metadata__[0])
    print(json.dumps(report))
    """
)


def test_the_installed_plugin_lets_one_call_carry_embeddings_of_different_lengths():
    """In a fresh process: vLLM's schema refuses ragged embeddings, the entry point's register()
    makes only the feature size dynamic; width, rank and pixel inputs are still checked."""
    result = subprocess.run([sys.executable, "-c", _PLUGIN_CHECK], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    for kind in MODEL_KINDS:
        assert "data contains inconsistent shapes" in report["before"][kind]
        assert report["after"][kind] == "ok"
        assert "inconsistent shapes" in report["wrong_width"][kind]
        assert "inconsistent shapes" in report["wrong_rank"][kind]
    assert report["same_length"] == "ok"
    assert report["pixel_dims"] == "(bn, 3, h, w)"
