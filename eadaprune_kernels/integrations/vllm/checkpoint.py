"""Loading only the image side of a LLaVA / LLaVA-NeXT checkpoint into transformers' model classes.

The language model is never built: transformers' ``LlavaModel`` / ``LlavaNextModel`` is created on the
meta device as a shell (its config and ``get_image_features``), and only the vision tower, the
projector and ``image_newline`` are built for real and filled from the safetensors files.
"""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["build_image_encoder"]


def build_image_encoder(transformers, config, directory: Path, device: torch.device, dtype: torch.dtype):
    """transformers' LlavaModel / LlavaNextModel with only the vision tower, projector and
    image_newline materialised (on ``device``, in ``dtype``) and loaded; no language model."""
    if config.model_type == "llava":
        model_cls = transformers.LlavaModel
        from transformers.models.llava.modeling_llava import LlavaMultiModalProjector as projector_cls
    else:
        model_cls = transformers.LlavaNextModel
        from transformers.models.llava_next.modeling_llava_next import LlavaNextMultiModalProjector as projector_cls
    no_init = _no_init_weights()
    with torch.device("meta"):
        model = model_cls(config)  # the shell: its config and get_image_features
    model.language_model = None
    # The same submodules LlavaModel.__init__ builds, for real, without random initialisation.
    with no_init(), torch.device(device):
        model.vision_tower = transformers.AutoModel.from_config(config.vision_config)
        model.multi_modal_projector = projector_cls(config)
        if config.model_type == "llava_next":
            model.image_newline = torch.nn.Parameter(torch.empty(config.text_config.hidden_size))
    model.to(dtype)
    _load_encoder_weights(model, directory)
    return model.eval().requires_grad_(False)


def _no_init_weights():
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers < 5
        from transformers.modeling_utils import no_init_weights
    return no_init_weights


_ENCODER_PREFIXES = ("vision_tower.", "multi_modal_projector.", "image_newline")


def _load_encoder_weights(model, directory: Path) -> None:
    """Copies the encoder's tensors from the directory's safetensors files, whatever naming
    generation wrote them (``model.vision_tower.*``, ``vision_tower.*``, ``vision_tower.vision_model.*``)."""
    from safetensors import safe_open

    targets = {name: t for name, t in model.state_dict().items() if name.startswith(_ENCODER_PREFIXES)}
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise ValueError(f"model_dir: no *.safetensors weights in {directory}")
    loaded = set()
    for file in files:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            for key in f.keys():
                name = _encoder_name(key, targets)
                if name is None:
                    continue
                target = targets[name]
                value = f.get_tensor(key)
                if value.shape != target.shape:
                    raise ValueError(
                        f"model_dir: {file.name}:{key} has shape {tuple(value.shape)}, the config gives "
                        f"{name} shape {tuple(target.shape)}"
                    )
                target.copy_(value)
                loaded.add(name)
    missing = sorted(set(targets) - loaded)
    if missing:
        raise ValueError(
            f"model_dir: the weights in {directory} lack {len(missing)} tensor(s) of the image encoder, "
            f"e.g. {missing[:3]}"
        )


def _encoder_name(key: str, targets: dict) -> str | None:
    name = key[len("model."):] if key.startswith("model.") else key
    if not name.startswith(_ENCODER_PREFIXES):
        return None
    for candidate in (
        name,
        name.replace("vision_tower.vision_model.", "vision_tower.", 1),
        name.replace("vision_tower.", "vision_tower.vision_model.", 1),
    ):
        if candidate in targets:
            return candidate
    return None
