"""The demo: how many tokens each sample photograph keeps, and which.

Each scikit-image sample photograph becomes N=576 patch tokens (a 24 x 24 grid of 14-pixel RGB
patches, as LLaVA-1.5's vision tower cuts a 336-pixel image) and goes through
:func:`eadaprune_kernels.adaptive_prune` in one batch. The table shows each image's budget, the
sketch's singular-value count l, the kept fraction, the energy the kept rank captures and whether
the budget saturated; ``--png`` also draws each image with its dropped patches dimmed.
"""

from __future__ import annotations

import time

import torch

from . import adaptive_prune
from .images import SAMPLE_IMAGES, patch_tokens, sample_images

GRID, PATCH = 24, 14


def run_demo(*, energy=0.99, sketch_size=128, power_iters=2, backend="auto", png=None, names=SAMPLE_IMAGES,
             print_fn=print):
    """Prunes the sample photographs, prints the table, optionally writes the picture; returns the result."""
    print_fn(f"Loading {len(names)} sample photographs (scikit-image) as {GRID}x{GRID} patch tokens ...")
    images = sample_images(names)
    tokens = torch.stack([patch_tokens(image, GRID, PATCH) for image in images.values()])
    b, n, d = tokens.shape
    print_fn(f"Pruning a batch of B={b}, N={n}, D={d} float32 at energy={energy}, "
             f"sketch_size={sketch_size}, power_iters={power_iters} ...")
    start = time.perf_counter()
    result = adaptive_prune(tokens, energy=energy, sketch_size=sketch_size, power_iters=power_iters,
                            backend=backend)
    seconds = time.perf_counter() - start
    cumulative = torch.cumsum(result.singular_values.double().square(), 1)
    l = result.singular_values.shape[1]
    print_fn("")
    print_fn("| image | budget | singular values (l) | kept fraction | energy kept | saturated |")
    print_fn("|---|---:|---:|---:|---:|---|")
    for i, name in enumerate(images):
        k = int(result.lengths[i])
        captured = float(cumulative[i, min(k, l) - 1] / result.total_energy[i].double())
        print_fn(f"| {name} | {k} | {l} | {k / n:.1%} | {captured:.4f} | {'yes' if result.saturated[i] else 'no'} |")
    total = int(result.lengths.sum())
    print_fn("")
    print_fn(f"Kept {total} of {b * n} tokens ({total / (b * n):.1%}); backend={result.backend}, "
             f"{seconds * 1e3:.0f} ms for the batch ({seconds * 1e3 / b:.1f} ms per image).")
    if png is not None:
        write_picture(png, images, result, energy)
        print_fn(f"Wrote {png}")
    return result


def write_picture(path, images, result, energy, columns=4):
    """A PNG of every image with its kept patches bright and its dropped patches dimmed."""
    try:
        from PIL import Image, ImageDraw
    except ImportError as exc:
        raise ImportError("the demo picture needs Pillow: pip install 'eadaprune_kernels[demo]'") from exc
    side, label = GRID * PATCH, 34
    rows = -(-len(images) // columns)
    canvas = Image.new("RGB", (columns * (side + 8) + 8, rows * (side + label + 8) + 8), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (name, image) in enumerate(images.items()):
        tokens = patch_tokens(image, GRID, PATCH)  # [576, 588] in patch order
        kept = torch.zeros(GRID * GRID, dtype=torch.bool)
        kept[result.indices[i, : int(result.lengths[i])]] = True
        shade = torch.where(kept, 1.0, 0.25)[:, None]
        tiles = (tokens * shade).reshape(GRID, GRID, PATCH, PATCH, 3).permute(0, 2, 1, 3, 4)
        pixels = (tiles.reshape(side, side, 3).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        x0 = 8 + (i % columns) * (side + 8)
        y0 = 8 + (i // columns) * (side + label + 8)
        canvas.paste(Image.fromarray(pixels), (x0, y0 + label))
        k = int(result.lengths[i])
        draw.text((x0, y0 + 2), f"{name}: keeps {k}/{GRID * GRID} tokens", fill="black")
        draw.text((x0, y0 + 16), f"energy {energy}{'  (saturated)' if result.saturated[i] else ''}", fill="black")
    canvas.save(path)
