"""The demo: how many tokens each sample photograph keeps, and which.

Each scikit-image sample photograph becomes N=576 patch tokens (a 24 x 24 grid of 14-pixel RGB
patches, as LLaVA-1.5's vision tower cuts a 336-pixel image) and goes through
:func:`eadaprune_kernels.adaptive_prune` in one batch. The table shows each image's budget, the kept
fraction, the energy the kept rank captures and whether the budget saturated (the image needs more
than the sketch's l singular values: its budget is then the cap l, not a measurement); ``--png``
also draws each image with its kept patches bright and its dropped patches dimmed.
"""

from __future__ import annotations

import math
import numbers
import time

import torch

from . import adaptive_prune
from .backends import available_backends
from .images import SAMPLE_IMAGES, patch_tokens, sample_images

GRID, PATCH = 24, 14
DIM = 0.25  # brightness of a dropped patch in the picture
LEGEND = "bright patches: kept tokens; dim patches: dropped tokens"


def check_demo_arguments(energy, sketch_size, power_iters, backend) -> None:
    """Raises ValueError / TypeError naming a bad argument, before anything is loaded or printed."""
    if isinstance(energy, bool) or not isinstance(energy, numbers.Real):
        raise TypeError(f"energy: expected a float in (0, 1], got {type(energy).__name__} {energy!r}")
    if math.isnan(energy) or not 0.0 < energy <= 1.0:
        raise ValueError(f"energy: expected a float in (0, 1], got {energy}")
    for name, value, minimum in (("sketch_size", sketch_size, 1), ("power_iters", power_iters, 0)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name}: expected an int, got {type(value).__name__} {value!r}")
        if value < minimum:
            raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    usable = available_backends("cpu")
    if backend != "auto" and backend not in usable:
        raise ValueError(f"backend: expected 'auto' or a backend that runs on this CPU ({', '.join(usable)}), "
                         f"got {backend!r}")


def run_demo(*, energy=0.99, sketch_size=128, power_iters=2, backend="auto", png=None, names=SAMPLE_IMAGES,
             print_fn=print):
    """Prunes the sample photographs, prints the table, optionally writes the picture; returns the result."""
    check_demo_arguments(energy, sketch_size, power_iters, backend)
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
    print_fn(f"The sketch measures l = min(sketch_size, N, D) = {l} singular values per image, so a budget "
             f"can be measured up to {l} tokens.")
    print_fn("")
    print_fn("| image | budget | kept fraction | energy kept | saturated |")
    print_fn("|---|---:|---:|---:|---|")
    for i, name in enumerate(images):
        k = int(result.lengths[i])
        captured = float(cumulative[i, min(k, l) - 1] / result.total_energy[i].double())
        flag = f"yes: needs more than l = {l}" if result.saturated[i] else "no"
        print_fn(f"| {name} | {k} | {k / n:.1%} | {captured:.4f} | {flag} |")
    total = int(result.lengths.sum())
    print_fn("")
    print_fn(f"Kept {total} of {b * n} tokens ({total / (b * n):.1%}); backend={result.backend}, "
             f"{seconds * 1e3:.0f} ms for the batch ({seconds * 1e3 / b:.1f} ms per image).")
    saturated = [name for i, name in enumerate(images) if result.saturated[i]]
    if saturated:
        print_fn(f"Saturated ({', '.join(saturated)}): the {l} singular values of the sketch hold less than "
                 f"{energy} of the energy, so the budget is the cap max_tokens = {l}, not a measurement, and "
                 f"'energy kept' falls short. Rerun with a larger --sketch-size (e.g. {min(2 * l, n)}) to "
                 "measure it.")
    else:
        print_fn(f"No image saturated: every budget was reached within l = {l} singular values.")
    if png is not None:
        write_picture(png, images, result, energy)
        print_fn(f"Wrote {png} ({LEGEND}).")
    return result


def picture_layout(count: int, columns: int = 4) -> dict:
    """Where :func:`write_picture` puts things: canvas size and the top-left pixel of image i's patches."""
    side, label, gap, header = GRID * PATCH, 34, 8, 40
    rows = -(-count // columns)
    size = (columns * (side + gap) + gap, header + rows * (side + label + gap) + gap)
    origins = [(gap + (i % columns) * (side + gap), header + (i // columns) * (side + label + gap) + label)
               for i in range(count)]
    return dict(size=size, origins=origins, side=side, label=label, header=header)


def write_picture(path, images, result, energy, columns=4):
    """A PNG of every image with its kept patches bright and its dropped patches dimmed, under a legend."""
    try:
        from PIL import Image, ImageDraw
    except ImportError as exc:
        raise ImportError("the demo picture needs Pillow: pip install 'eadaprune_kernels[demo]'") from exc
    layout = picture_layout(len(images), columns)
    side, label = layout["side"], layout["label"]
    l = result.singular_values.shape[1]
    canvas = Image.new("RGB", layout["size"], "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((8, 6), f"{LEGEND}. energy {energy}, l = {l} singular values per image.", fill="black")
    draw.text((8, 20), "saturated: the image needs more than l; its budget is the cap l (raise --sketch-size).",
              fill="black")
    for i, (name, image) in enumerate(images.items()):
        tokens = patch_tokens(image, GRID, PATCH)  # [576, 588] in patch order
        kept = torch.zeros(GRID * GRID, dtype=torch.bool)
        kept[result.indices[i, : int(result.lengths[i])]] = True
        shade = torch.where(kept, 1.0, DIM)[:, None]
        tiles = (tokens * shade).reshape(GRID, GRID, PATCH, PATCH, 3).permute(0, 2, 1, 3, 4)
        pixels = (tiles.reshape(side, side, 3).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        x0, y0 = layout["origins"][i]
        canvas.paste(Image.fromarray(pixels), (x0, y0))
        k = int(result.lengths[i])
        draw.text((x0, y0 - label + 2), f"{name}: keeps {k}/{GRID * GRID} tokens", fill="black")
        if result.saturated[i]:
            draw.text((x0, y0 - label + 16), f"saturated: needs more than l = {l}", fill="firebrick")
    canvas.save(path)
