"""Contact sheet of coco-moji scenes for a human check: 16 scenes upscaled, boxes drawn, labels below.

Scenes are upscaled with nearest-neighbour sampling so the sheet shows exactly the pixels a model sees.
Each scene is shown with its annotation boxes, and its split and label names (in the box colours) are
written underneath. Up to four scenes per split (base, val, test, mixed) are shown, lowest ids first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from mlfsic.harness.errors import MlfsicError
from mlfsic.harness.io import write_with_atomic

BOX_COLOURS = ((230, 25, 75), (0, 130, 200), (60, 160, 60), (245, 130, 48))
N_SCENES = 16
COLUMNS = 4
SCALE = 2
TEXT_LINES = 4
LINE_PX = 13


def _pick_images(annotations: dict[str, Any], n: int) -> list[dict[str, Any]]:
    images = sorted(annotations["images"], key=lambda image: image["id"])
    per_split = max(1, n // 4)
    chosen: list[dict[str, Any]] = []
    for split in ("base", "val", "test", "mixed"):
        chosen += [image for image in images if image.get("scene_split") == split][:per_split]
    chosen_ids = {image["id"] for image in chosen}
    chosen += [image for image in images if image["id"] not in chosen_ids][: n - len(chosen)]
    return chosen[:n]


def write_preview(dataset_dir: Path, annotations: dict[str, Any], path: Path) -> Path:
    """Write the contact sheet PNG to ``path`` (atomically) and return it."""
    names = {category["id"]: category["name"] for category in annotations["categories"]}
    objects: dict[int, list[dict[str, Any]]] = {}
    for annotation in annotations["annotations"]:
        objects.setdefault(annotation["image_id"], []).append(annotation)
    images = _pick_images(annotations, N_SCENES)
    if not images:
        raise MlfsicError(f"{dataset_dir}: no images to preview")
    side = max(image["width"] for image in images) * SCALE
    cell_h = side + TEXT_LINES * LINE_PX + 6
    rows = (len(images) + COLUMNS - 1) // COLUMNS
    sheet = Image.new("RGB", (COLUMNS * (side + 8), rows * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=11)
    for index, image in enumerate(images):
        row, column = divmod(index, COLUMNS)
        x0, y0 = column * (side + 8) + 4, row * cell_h + 2
        scene = Image.open(dataset_dir / "images" / image["file_name"]).convert("RGB")
        sheet.paste(scene.resize((scene.width * SCALE, scene.height * SCALE), Image.Resampling.NEAREST), (x0, y0))
        draw.text((x0, y0 + side + 2), f"#{image['id']} [{image.get('scene_split', '?')}]", fill=(0, 0, 0), font=font)
        for k, annotation in enumerate(objects.get(image["id"], [])):
            colour = BOX_COLOURS[k % len(BOX_COLOURS)]
            x, y, w, h = annotation["bbox"]
            draw.rectangle((x0 + x * SCALE, y0 + y * SCALE, x0 + (x + w) * SCALE - 1, y0 + (y + h) * SCALE - 1),
                           outline=colour)
            line = k // 2 + 1
            if line < TEXT_LINES:
                draw.text((x0 + (k % 2) * (side // 2), y0 + side + 2 + line * LINE_PX), names[annotation["category_id"]],
                          fill=colour, font=font)
    write_with_atomic(path, lambda tmp: sheet.save(tmp, format="PNG"))
    return path
