"""The figure of ``mlfsic explain`` (``explain.write_figure``): support images, the local positions LCM kept and
each label's attention over the grid, with the label's boxes when the annotations have them.

Pure drawing on arrays and image files: ``render_figure(rows, title, max_labels, boxes)`` -> a PIL image.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mlfsic.harness.errors import MlfsicError


# figure layout (pixels)
TILE = 192


GAP = 6


CAPTION = 16


TITLE = 52


MARGIN = 6


BOX_COLOUR = (0, 230, 255)


KEPT_COLOUR = (40, 220, 60)


DROPPED_SHADE = (30, 30, 30)


@dataclass(frozen=True)
class Boxes:
    """COCO boxes per (image id, label name), (x, y, w, h) in pixels, and each image's (width, height)."""

    sizes: dict[int, tuple[int, int]]
    boxes: dict[tuple[int, str], list[tuple[float, float, float, float]]]

    def of(self, image_id: int, label: str) -> list[tuple[float, float, float, float]]:
        return self.boxes.get((int(image_id), label), [])


def load_boxes(annotation_path: Path) -> Boxes:
    """The boxes of a COCO instances json; a file without boxes is a one-line error naming it."""
    try:
        content = json.loads(Path(annotation_path).read_text(encoding="utf-8"))
        names = {int(c["id"]): str(c["name"]) for c in content["categories"]}
        sizes = {int(i["id"]): (int(i["width"]), int(i["height"])) for i in content["images"]}
        boxes: dict[tuple[int, str], list[tuple[float, float, float, float]]] = {}
        for annotation in content["annotations"]:
            x, y, w, h = (float(v) for v in annotation["bbox"])
            key = (int(annotation["image_id"]), names[int(annotation["category_id"])])
            boxes.setdefault(key, []).append((x, y, w, h))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MlfsicError(f"cannot read boxes from {annotation_path}: {error}") from None
    except (KeyError, TypeError, ValueError) as error:
        raise MlfsicError(f"{annotation_path}: no COCO boxes (images need width/height, annotations a bbox): "
                          f"missing or bad {error}") from None
    return Boxes(sizes=sizes, boxes=boxes)


def grid_side(positions: int) -> int:
    """The side g of a square g x g local grid with ``positions`` = g * g (row-major, backbones.py)."""
    side = int(round(math.sqrt(positions)))
    if side * side != positions:
        raise MlfsicError(f"local features have {positions} positions, not a square grid")
    return side


def cells_inside(boxes: Sequence[tuple[float, float, float, float]], width: int, height: int, side: int) -> np.ndarray:
    """(side * side,) bool, row-major: the cell's centre lies inside one of ``boxes`` (image pixels).

    The backbone resizes the whole image to its input size without cropping, so cell (r, c) of the
    grid covers [c W / g, (c + 1) W / g) x [r H / g, (r + 1) H / g) of the original image.
    """
    centre_x = (np.arange(side) + 0.5) * width / side
    centre_y = (np.arange(side) + 0.5) * height / side
    cy, cx = np.meshgrid(centre_y, centre_x, indexing="ij")
    inside = np.zeros((side, side), dtype=bool)
    for x, y, w, h in boxes:
        inside |= (cx >= x) & (cx < x + w) & (cy >= y) & (cy < y + h)
    return inside.reshape(-1)


def figure_size(n_rows: int, n_columns: int) -> tuple[int, int]:
    """(width, height) of a figure with ``n_rows`` support images and ``n_columns`` tiles per row."""
    width = 2 * MARGIN + n_columns * TILE + (n_columns - 1) * GAP
    height = TITLE + n_rows * (CAPTION + TILE + GAP) - GAP + MARGIN
    return width, height


def tile_box(row: int, column: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of a tile: column 0 the image, 1 the kept positions, 2.. one per label."""
    x0 = MARGIN + column * (TILE + GAP)
    y0 = TITLE + row * (CAPTION + TILE + GAP) + CAPTION
    return x0, y0, x0 + TILE, y0 + TILE


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=11)
    except TypeError:  # Pillow without FreeType
        return ImageFont.load_default()


def _grid_image(values: np.ndarray, side: int, resample: Image.Resampling = Image.Resampling.NEAREST) -> np.ndarray:
    """(side * side,) values in [0, 1] -> (TILE, TILE) float array, each cell a block."""
    grid = Image.fromarray(values.reshape(side, side).astype(np.float32), mode="F")
    return np.asarray(grid.resize((TILE, TILE), resample), dtype=np.float32)


def _cell_rectangle(cell: int, side: int) -> tuple[int, int, int, int]:
    row, column = divmod(cell, side)
    return (round(column * TILE / side), round(row * TILE / side),
            round((column + 1) * TILE / side) - 1, round((row + 1) * TILE / side) - 1)


def kept_tile(image: np.ndarray, keep: np.ndarray, side: int) -> Image.Image:
    """The image (TILE, TILE, 3) with dropped cells darkened and kept cells outlined."""
    dropped = 1.0 - _grid_image(keep.astype(np.float32), side)[..., None]
    shaded = image * (1 - 0.75 * dropped) + np.asarray(DROPPED_SHADE, np.float32) * 0.75 * dropped
    tile = Image.fromarray(shaded.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(tile)
    for cell in np.flatnonzero(keep):
        draw.rectangle(_cell_rectangle(int(cell), side), outline=KEPT_COLOUR)
    return tile


def _heat_colours(values: np.ndarray) -> np.ndarray:
    """A black-red-yellow-white ramp: (..., ) in [0, 1] -> (..., 3) in [0, 255]."""
    ramp = np.stack([np.clip(3 * values, 0, 1), np.clip(3 * values - 1, 0, 1), np.clip(3 * values - 2, 0, 1)], -1)
    return ramp * 255.0


def attention_tile(image: np.ndarray, attention: np.ndarray, side: int, boxes: Sequence[tuple[float, ...]],
                   scale: tuple[float, float]) -> Image.Image:
    """The image blended with the attention heat (normalised by its maximum) and the label's boxes."""
    values = attention / max(float(attention.max()), 1e-12)
    heat = _grid_image(values, side)
    alpha = (0.35 + 0.45 * heat)[..., None]
    blended = image * (1 - alpha) + _heat_colours(heat) * alpha
    tile = Image.fromarray(blended.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(tile)
    for x, y, w, h in boxes:
        draw.rectangle((x * scale[0], y * scale[1], (x + w) * scale[0] - 1, (y + h) * scale[1] - 1),
                       outline=BOX_COLOUR, width=2)
    return tile


def _image_tile(path: Path) -> tuple[np.ndarray, tuple[int, int]]:
    """The support image resized to (TILE, TILE) as float32 RGB, and its original (width, height)."""
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
    except OSError as error:
        raise MlfsicError(f"cannot read image {path}: {error}") from None
    return np.asarray(rgb.resize((TILE, TILE), Image.Resampling.NEAREST), dtype=np.float32), rgb.size


@dataclass(frozen=True)
class FigureRow:
    """One support image of the figure: its id, file, kept positions and one entry per label shown."""

    image_id: int
    path: Path
    keep: np.ndarray  # (L,) bool
    labels: tuple[str, ...]
    attention: tuple[np.ndarray, ...]  # (L,) per label
    weights: tuple[float, ...]  # the image's weight in each label's prototype


def render_figure(rows: Sequence[FigureRow], title: str, max_labels: int, boxes: Boxes | None) -> Image.Image:
    """The PNG image: one row per support image, columns image | kept | one attention tile per label."""
    width, height = figure_size(len(rows), 2 + max_labels)
    figure = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(figure)
    font = _font()
    draw.multiline_text((MARGIN, 4), title, fill=(0, 0, 0), font=font, spacing=3)
    for row_index, row in enumerate(rows):
        image, (image_width, image_height) = _image_tile(row.path)
        side = grid_side(row.keep.shape[0])
        scale = (TILE / image_width, TILE / image_height)
        tiles = [(Image.fromarray(image.astype(np.uint8)), f"image {row.image_id}"),
                 (kept_tile(image, row.keep, side), f"kept {int(row.keep.sum())}/{row.keep.shape[0]}")]
        for label, attention, weight in zip(row.labels, row.attention, row.weights):
            label_boxes = boxes.of(row.image_id, label) if boxes is not None else []
            peak = float(attention.max()) * attention.shape[0]  # the largest weight / the uniform weight 1/L
            caption = f"{label} w {weight:.2f} peak {peak:.1f}x"
            tiles.append((attention_tile(image, attention, side, label_boxes, scale), caption))
        for column in range(2 + max_labels):
            x0, y0, x1, y1 = tile_box(row_index, column)
            if column < len(tiles):
                tile, caption = tiles[column]
                figure.paste(tile, (x0, y0))
                draw.text((x0, y0 - CAPTION + 2), caption[:34], fill=(0, 0, 0), font=font)
            else:
                draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=(240, 240, 240))
    return figure
