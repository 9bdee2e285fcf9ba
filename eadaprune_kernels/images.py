"""Turning photographs into visual-token matrices, for the demo and the accuracy report.

Without a vision encoder at hand, an image's tokens are its raw patches, as a ViT sees them before
its first layer: the image is resized to (grid * patch)^2 pixels and cut into a grid x grid array
of patch x patch RGB patches, each flattened to one token (LLaVA-1.5's CLIP ViT-L/14-336 uses
grid=24, patch=14: N=576 tokens of D=588 values).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["SAMPLE_IMAGES", "patch_tokens", "sample_images"]

# scikit-image ships these photographs inside its wheel (no download): simple ones first.
SAMPLE_IMAGES = ("horse", "moon", "camera", "coffee", "chelsea", "astronaut", "rocket",
                 "coins", "brick", "grass", "gravel")


def patch_tokens(image: torch.Tensor, grid: int = 24, patch: int = 14) -> torch.Tensor:
    """Tokens [grid * grid, patch * patch * 3] float32 of an image [H, W] or [H, W, C] in [0, 1].

    Grey images are repeated to 3 channels, an alpha channel is dropped; the image is resized with
    bilinear interpolation (antialiased) to grid * patch pixels a side.
    """
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image: expected a torch.Tensor [H, W] or [H, W, C], got {type(image).__name__}")
    if image.dim() == 2:
        image = image[:, :, None]
    if image.dim() != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"image: expected shape [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], got {tuple(image.shape)}")
    image = image[:, :, :3].to(torch.float32)
    if image.shape[2] == 1:
        image = image.expand(-1, -1, 3)
    side = grid * patch
    chw = F.interpolate(image.permute(2, 0, 1)[None], size=(side, side), mode="bilinear",
                        antialias=True, align_corners=False)[0]
    # [3, g*p, g*p] -> [g, g, p, p, 3] -> [g*g, p*p*3]
    tiles = chw.reshape(3, grid, patch, grid, patch).permute(1, 3, 2, 4, 0)
    return tiles.reshape(grid * grid, patch * patch * 3).contiguous()


def sample_images(names=SAMPLE_IMAGES) -> dict[str, torch.Tensor]:
    """The named scikit-image sample photographs as float32 tensors [H, W, C] in [0, 1].

    Needs scikit-image (``pip install eadaprune_kernels[demo]``); raises ImportError saying so.
    """
    try:
        import numpy as np
        from skimage import data
    except ImportError as exc:
        raise ImportError(
            "sample images need scikit-image: pip install 'eadaprune_kernels[demo]'"
        ) from exc
    images = {}
    for name in names:
        array = np.asarray(getattr(data, name)())
        scale = 1.0 if array.dtype == bool else float(np.iinfo(array.dtype).max)
        images[name] = torch.from_numpy(array.astype(np.float32) / scale)
    return images
