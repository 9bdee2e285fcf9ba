"""Tiny random LLaVA / LLaVA-NeXT checkpoints, written offline for the vLLM tests.

Each checkpoint is a complete model directory as vLLM and transformers read it: config, weights
(safetensors), a word-level tokenizer built with `tokenizers` (no download), the image processor and
the processor with a chat template. The models are small enough for vLLM's CPU build to start in
seconds and large enough for vLLM's CPU attention kernels (head size 64):

* vision: a 2-layer CLIP tower on 28 x 28 images with 7-pixel patches, so one view gives 16 patch
  tokens (plus CLS, dropped by the "default" feature selection). Its position embeddings are zeroed:
  an image made of a few flat regions then gives a feature matrix with that few distinct rows (a low
  budget) and a noise image a high one, so batches get very different budgets.
* language model: a 2-layer Llama of width 128 over a vocabulary of 64 ids.
* LLaVA-NeXT: the same tower, pinpoints 28 x 56, 56 x 28 and 56 x 56 (up to four 28 px tiles
  besides the base view, then unpadded and closed by an image_newline row per feature row).

The weights are saved with the vision tower under ``vision_tower.vision_model.*``, the names vLLM
0.32 loads and most published LLaVA checkpoints use (transformers 5 itself writes ``vision_tower.*``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMAGE_TOKEN = "<image>"
WORDS = [
    "the", "a", "image", "shows", "what", "is", "in", "this", "picture", "describe", "colour", "red",
    "blue", "green", "left", "right", "top", "bottom", "two", "four", "noise", "flat", "and", "of",
    "user", "assistant", "yes", "no", "cat", "dog", "sky", "sea", "tree", "house", "road", "car",
    "light", "dark", "big", "small", "one", "three", "many", "few", "how", "where", "why", "who",
    "here", "there", ":",
]
SPECIALS = ["<unk>", "<pad>", "<s>", "</s>", IMAGE_TOKEN]
VOCAB_SIZE = 64  # the tokenizer uses the first len(SPECIALS) + len(WORDS) ids; the model may generate the rest
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}:"
    "{% if message['content'] is string %} {{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %} {{ part['text'] }}{% else %} <image>{% endif %}"
    "{% endfor %}{% endif %} {% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
IMAGE_SIZE = 28
PATCH_SIZE = 7
NUM_PATCHES = (IMAGE_SIZE // PATCH_SIZE) ** 2  # 16 tokens per view
PINPOINTS = [[28, 56], [56, 28], [56, 56]]


def _tokenizer():
    """A word-level fast tokenizer (whitespace split) with <image> as a special token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIALS + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(":", behavior="isolated")]
    )
    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
    )
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    return tokenizer


def _configs(next_model: bool):
    import transformers

    vision = transformers.CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, projection_dim=32,
    )
    text = transformers.LlamaConfig(
        hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, head_dim=64, vocab_size=VOCAB_SIZE, max_position_embeddings=1024,
        pad_token_id=1, bos_token_id=2, eos_token_id=3, tie_word_embeddings=False,
    )
    image_token_id = SPECIALS.index(IMAGE_TOKEN)
    common = dict(
        vision_config=vision, text_config=text, image_token_id=image_token_id,
        vision_feature_layer=-1, vision_feature_select_strategy="default",
    )
    if next_model:
        return transformers.LlavaNextConfig(image_grid_pinpoints=PINPOINTS, **common)
    return transformers.LlavaConfig(**common)


def _processor(next_model: bool, tokenizer):
    import transformers

    if next_model:
        image_processor = transformers.LlavaNextImageProcessor(
            size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
            image_grid_pinpoints=PINPOINTS,
        )
        cls = transformers.LlavaNextProcessor
    else:
        image_processor = transformers.CLIPImageProcessor(
            size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        )
        cls = transformers.LlavaProcessor
    return cls(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default", chat_template=CHAT_TEMPLATE, image_token=IMAGE_TOKEN,
    )


def write_checkpoint(directory: Path, *, next_model: bool = False, seed: int = 0) -> Path:
    """Writes a tiny random LLaVA (or LLaVA-NeXT) model directory and returns its path."""
    import transformers
    from safetensors.torch import load_file, save_file

    directory = Path(directory)
    torch.manual_seed(seed)
    config = _configs(next_model)
    cls = transformers.LlavaNextForConditionalGeneration if next_model else transformers.LlavaForConditionalGeneration
    model = cls(config).float().eval()
    with torch.no_grad():
        model.model.vision_tower.embeddings.position_embedding.weight.zero_()
        for param in model.model.language_model.parameters():  # a sharper random LM: fewer near-ties
            param.mul_(4.0)
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    model.save_pretrained(directory)
    tokenizer = _tokenizer()
    _processor(next_model, tokenizer).save_pretrained(directory)

    # vLLM 0.32 loads the tower as vision_tower.vision_model.* (transformers 5 saves vision_tower.*).
    weights_file = directory / "model.safetensors"
    weights = load_file(weights_file)
    renamed = {
        ("vision_tower.vision_model." + k[len("vision_tower."):] if k.startswith("vision_tower.") else k): v
        for k, v in weights.items()
    }
    save_file(renamed, weights_file, metadata={"format": "pt"})
    return directory


def write_non_llava_checkpoint(directory: Path) -> Path:
    """A tiny plain Llama (no vision tower): what PrunedImageEncoder must refuse."""
    import transformers

    directory = Path(directory)
    config = _configs(next_model=False).text_config
    transformers.LlamaForCausalLM(config).save_pretrained(directory)
    return directory


def images(seed: int = 0) -> dict[str, Image.Image]:
    """Test pictures, 28 x 28 unless named otherwise: flat halves (budget 1 after centering), four
    flat quarters (a few), noise (many); and for LLaVA-NeXT a 56 x 40 and a 40 x 56 noise picture."""
    rng = np.random.default_rng(seed)

    def picture(array) -> Image.Image:
        return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8), "RGB")

    halves = np.zeros((28, 28, 3))
    halves[:, 14:] = (200, 40, 40)
    quarters = np.zeros((28, 28, 3))
    quarters[:14, 14:] = (250, 250, 250)
    quarters[14:, :14] = (30, 200, 60)
    quarters[14:, 14:] = (20, 20, 220)
    return {
        "halves": picture(halves),
        "quarters": picture(quarters),
        "noise": picture(rng.integers(0, 256, (28, 28, 3))),
        "noise2": picture(rng.integers(0, 256, (28, 28, 3))),
        "wide": picture(rng.integers(0, 256, (40, 56, 3))),
        "tall": picture(rng.integers(0, 256, (56, 40, 3))),
    }


QWEN2_VL_SPECIALS = ["<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|video_pad|>"]
QWEN2_VL_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"


def write_qwen2_vl_checkpoint(directory: Path, seed: int = 0) -> Path:
    """A tiny random Qwen2-VL (an M-RoPE model): 1-layer vision tower (14-pixel patches, 2 x 2 merge,
    output width 128), a 2-layer language model of width 128 with rotary sections [8, 12, 12]."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    directory = Path(directory)
    vocab = {token: i for i, token in enumerate(SPECIALS + QWEN2_VL_SPECIALS + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(":", behavior="isolated")]
    )
    backend.decoder = decoders.WordPiece(prefix="##")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>",
        extra_special_tokens={
            "image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
            "vision_bos_token": "<|vision_start|>", "vision_eos_token": "<|vision_end|>",
        },
    )
    tokenizer.add_special_tokens({"additional_special_tokens": QWEN2_VL_SPECIALS})
    torch.manual_seed(seed)
    config = transformers.Qwen2VLConfig(
        text_config=dict(
            vocab_size=VOCAB_SIZE, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
            rope_parameters={"rope_type": "default", "mrope_section": [8, 12, 12], "rope_theta": 10000.0},
            bos_token_id=2, eos_token_id=3, pad_token_id=1,
        ),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=128, num_heads=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=vocab["<|image_pad|>"], video_token_id=vocab["<|video_pad|>"],
        vision_start_token_id=vocab["<|vision_start|>"], vision_end_token_id=vocab["<|vision_end|>"],
    )
    transformers.Qwen2VLForConditionalGeneration(config).eval().save_pretrained(directory)
    pixels = dict(min_pixels=56 * 56, max_pixels=112 * 112, patch_size=14, merge_size=2, temporal_patch_size=2)
    transformers.Qwen2VLProcessor(
        image_processor=transformers.Qwen2VLImageProcessor(**pixels),
        video_processor=transformers.Qwen2VLVideoProcessor(**pixels),
        tokenizer=tokenizer, chat_template=CHAT_TEMPLATE,
    ).save_pretrained(directory)
    return directory
