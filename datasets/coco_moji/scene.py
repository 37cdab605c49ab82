"""Drawing one coco-moji scene: a textured background, unlabelled distractors, labelled glyphs, boxes.

Layers, bottom to top:
1. a seeded texture (``make_background``): a two-colour gradient, soft or hard stripes at a random
   angle, or posterised colour clouds, with mild pixel noise on a quarter of them (kept rare because
   noise makes PNGs large: about 20 kB instead of 5 kB per 96 px image);
2. 0-2 distractor glyphs (no COCO category), 20-40 % of the image side, anywhere;
3. the labelled glyphs, each scaled so its longer side is 29-62 % of the image side (28-60 px at 96 px;
   smaller when a scene holds more objects), rotated by up to 25 degrees, with colour jitter (hue shift
   up to 14 degrees, saturation and brightness 0.8-1.2), placed fully inside the canvas. Positions are
   retried until every earlier labelled glyph keeps at least ``MIN_VISIBLE`` of its pixels; this keeps
   every label recognisable.

The box of a labelled glyph is the tight box ``[x, y, w, h]`` of its *visible* pixels (alpha >= 128, not
covered by a later labelled glyph) and its ``area`` is their count, as a COCO annotation without a
segmentation. All randomness comes from the ``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

ALPHA_VISIBLE = 128
MIN_VISIBLE = 0.8
MAX_ROTATION_DEG = 25.0
LABELLED_SIDE = (0.29, 0.625)  # longer side as a fraction of the image side, for a single object
SHRINK_PER_EXTRA_OBJECT = 0.06  # the upper bound drops by this per additional labelled glyph
DISTRACTOR_SIDE = (0.2, 0.4)
DISTRACTOR_COUNTS: dict[int, float] = {0: 0.4, 1: 0.4, 2: 0.2}
PLACEMENT_TRIES = 40
NOISE_PROBABILITY = 0.25  # pixel noise on a quarter of the backgrounds (noise makes a PNG 3-4x larger)
NOISE_SIGMA_MAX = 6.0
CLOUD_STEP = 8  # colour clouds are posterised in steps of 8 levels: banded, and half the PNG size


@dataclass(frozen=True)
class PlacedObject:
    """A labelled glyph in a finished scene: its category id, box [x, y, w, h] and visible area."""

    category_id: int
    bbox: tuple[int, int, int, int]
    area: int


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    """A moderately saturated colour (HSV s in [0.1, 0.6], v in [0.45, 1]) as RGB floats 0..255."""
    hue, sat, val = rng.uniform(0, 1), rng.uniform(0.1, 0.6), rng.uniform(0.45, 1.0)
    rgb = Image.new("HSV", (1, 1), (int(hue * 255), int(sat * 255), int(val * 255))).convert("RGB")
    return np.array(rgb.getpixel((0, 0)), dtype=np.float32)


def make_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A (size, size, 3) uint8 texture: gradient, stripes or colour clouds, with pixel noise."""
    kind = int(rng.integers(3))
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if kind == 2:
        cells = int(rng.integers(3, 8))
        coarse = np.stack([_random_colour(rng) for _ in range(cells * cells)]).reshape(cells, cells, 3)
        clouds = Image.fromarray(coarse.astype(np.uint8)).resize((size, size), Image.Resampling.BICUBIC)
        texture = np.floor(np.asarray(clouds, dtype=np.float32) / CLOUD_STEP) * CLOUD_STEP + CLOUD_STEP / 2
    else:
        angle = rng.uniform(0, np.pi)
        coordinate = xs * np.cos(angle) + ys * np.sin(angle)
        if kind == 0:
            weight = (coordinate - coordinate.min()) / max(float(np.ptp(coordinate)), 1e-6)
        else:
            period = rng.uniform(6, 24) / size
            wave = np.sin(2 * np.pi * coordinate / period + rng.uniform(0, 2 * np.pi))
            weight = (wave > 0).astype(np.float32) if rng.uniform() < 0.5 else (wave + 1) / 2
        first, second = _random_colour(rng), _random_colour(rng)
        texture = first + weight[..., None] * (second - first)
    if rng.uniform() < NOISE_PROBABILITY:
        channels = 1 if rng.uniform() < 0.5 else 3
        texture = texture + rng.normal(0, rng.uniform(1, NOISE_SIGMA_MAX), size=(size, size, channels))
    return np.clip(texture, 0, 255).astype(np.uint8)


def _jitter_colour(glyph: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Hue shift up to +-14 degrees, saturation and brightness scaled by 0.8-1.2; alpha kept."""
    alpha = glyph.getchannel("A")
    hsv = np.asarray(glyph.convert("RGB").convert("HSV"), dtype=np.int32).copy()
    hsv[..., 0] = (hsv[..., 0] + int(rng.integers(-10, 11))) % 256
    hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.8, 1.2), 0, 255)
    hsv[..., 2] = np.clip(hsv[..., 2] * rng.uniform(0.8, 1.2), 0, 255)
    recoloured = Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB")
    recoloured.putalpha(alpha)
    return recoloured


def transform_glyph(glyph: Image.Image, rng: np.random.Generator, longer_side: int, jitter: bool = True) -> Image.Image:
    """Scale so the longer side is ``longer_side`` px, recolour, rotate; cropped to its pixels."""
    scale = longer_side / max(glyph.size)
    size = (max(1, round(glyph.width * scale)), max(1, round(glyph.height * scale)))
    out = glyph.resize(size, Image.Resampling.LANCZOS)
    if jitter:
        out = _jitter_colour(out, rng)
    out = out.rotate(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG), Image.Resampling.BICUBIC, expand=True)
    box = out.getchannel("A").getbbox()
    return out.crop(box) if box else out


def _fit(glyph: Image.Image, size: int) -> Image.Image:
    """Shrink a rotated glyph that came out larger than the canvas (rare, only at tiny image sizes)."""
    if glyph.width <= size and glyph.height <= size:
        return glyph
    scale = size / max(glyph.size)
    return glyph.resize((max(1, int(glyph.width * scale)), max(1, int(glyph.height * scale))), Image.Resampling.LANCZOS)


def _mask_at(glyph: Image.Image, x: int, y: int, size: int) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[y : y + glyph.height, x : x + glyph.width] = np.asarray(glyph.getchannel("A")) >= ALPHA_VISIBLE
    return mask


def _place(glyph: Image.Image, earlier: list[np.ndarray], size: int, rng: np.random.Generator) -> tuple[int, int, np.ndarray]:
    """A position where every earlier mask keeps >= MIN_VISIBLE of its pixels (else the best tried)."""
    best: tuple[float, int, int, np.ndarray] | None = None
    for _ in range(PLACEMENT_TRIES):
        x = int(rng.integers(0, size - glyph.width + 1))
        y = int(rng.integers(0, size - glyph.height + 1))
        mask = _mask_at(glyph, x, y, size)
        kept = min((float((m & ~mask).sum()) / max(int(m.sum()), 1) for m in earlier), default=1.0)
        if best is None or kept > best[0]:
            best = (kept, x, y, mask)
        if kept >= MIN_VISIBLE:
            break
    assert best is not None
    return best[1], best[2], best[3]


def draw_scene(
    labelled: list[tuple[int, Image.Image]],
    distractors: list[Image.Image],
    rng: np.random.Generator,
    size: int,
) -> tuple[Image.Image, list[PlacedObject]]:
    """Compose one scene from cached glyph renders: ``labelled`` is [(category_id, glyph)]."""
    canvas = Image.fromarray(make_background(rng, size)).convert("RGBA")
    for glyph in distractors:
        side = int(round(rng.uniform(*DISTRACTOR_SIDE) * size))
        piece = _fit(transform_glyph(glyph, rng, side), size)
        canvas.alpha_composite(piece, (int(rng.integers(0, size - piece.width + 1)),
                                       int(rng.integers(0, size - piece.height + 1))))
    low, high = LABELLED_SIDE
    high = max(low, high - SHRINK_PER_EXTRA_OBJECT * (len(labelled) - 1))
    masks: list[np.ndarray] = []
    for _, glyph in labelled:
        piece = _fit(transform_glyph(glyph, rng, int(round(rng.uniform(low, high) * size))), size)
        x, y, mask = _place(piece, masks, size, rng)
        canvas.alpha_composite(piece, (x, y))
        masks.append(mask)
    placed: list[PlacedObject] = []
    covered = np.zeros((size, size), dtype=bool)
    for (category_id, _), mask in reversed(list(zip(labelled, masks))):
        visible = mask & ~covered
        covered |= mask
        rows, cols = np.nonzero(visible)
        if rows.size == 0:  # cannot happen with MIN_VISIBLE > 0 unless placement failed completely
            continue
        x0, y0 = int(cols.min()), int(rows.min())
        bbox = (x0, y0, int(cols.max()) - x0 + 1, int(rows.max()) - y0 + 1)
        placed.append(PlacedObject(category_id, bbox, int(rows.size)))
    placed.reverse()
    return canvas.convert("RGB"), placed
