"""The ``coco`` adapter (docs/architecture.md §6.1): real COCO 2014 and the generated coco-moji go through it.

Reads COCO instances json files with pycocotools and returns a ``harness.protocol.data.Dataset``: every image
id, its file name, and multi-hot labels over the categories in category-id order. Files are checked up
front; a missing or malformed file is a one-line ``MlfsicError`` naming it. Pixels are not read here
(features are extracted once, lazily, by the feature store).

The same module is the ``coco-format`` adapter (``configs/dataset/coco-format.yaml``): any COCO-format
instances file with its own categories (the category names are the labels), one ``annotations`` file with
its ``images`` folder. Ids, category names and image file names must be unique (pycocotools would
silently keep the last of two entries with one id).

Config keys (``configs/dataset/coco.yaml``): ``root``, ``split_file``, ``restrict_split`` and either
``sources`` -- a list of ``{annotations, images}`` pairs relative to root, pooled into one dataset, as the
ML-FSIC papers pool ``train2014`` and ``val2014`` before splitting by label -- or one ``annotations`` file
with its ``images`` folder (coco-moji's form). Pooled sources must share the category list and never
reuse an image id; file names become ``<images>/<file_name>`` under root.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO

from mlfsic.datasets.adapter import Loaded, root_of
from mlfsic.harness.protocol.data import Dataset
from mlfsic.harness.errors import MlfsicError, invalid_value
from mlfsic.harness.io import sha256_file

COMMAND_KEYS = ("annotations", "images")  # echoed by `mlfsic data split coco-format ...` (registry.split_command)


def read(cfg: Mapping[str, Any], check_images: bool = True) -> Loaded:
    root = root_of(cfg, "the COCO folder holding the annotation files and the image folders")
    name = str(cfg.get("name", "coco"))
    if cfg.get("sources") is None:
        annotations, images = str(cfg.get("annotations")), str(cfg.get("images"))
        dataset = load_coco(name, root, annotations, images, check_images=check_images)
        return Loaded(dataset=dataset, sources=((annotations, len(dataset.image_ids)),))
    sources = coco_sources(cfg)
    parts = [load_coco(name, root, annotation_file, images, check_images) for annotation_file, images in sources]
    dataset = pool_coco(name, Path(root), parts, [annotation_file for annotation_file, _ in sources])
    return Loaded(dataset=dataset, sources=tuple((a, len(p.image_ids)) for (a, _), p in zip(sources, parts)))


def check_files(cfg: Mapping[str, Any]) -> None:
    """Every annotation file and image folder the config names is there (run at sweep resolution)."""
    root = Path(str(cfg["root"])).expanduser().resolve()
    for annotation_file, images in coco_sources(cfg):
        for path, is_there in ((root / annotation_file, Path.is_file), (root / images, Path.is_dir)):
            if not is_there(path):
                raise invalid_value("dataset.root", cfg["root"], f"the folder holding {annotation_file} and "
                                    f"{images}/ of dataset {cfg['name']}", f"{path} not found")


def coco_sources(cfg: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The (annotations, images) pairs of ``cfg.sources`` (or of ``annotations``/``images`` without it); a
    malformed entry is a one-line error."""
    if cfg.get("sources") is None:
        return [(str(cfg.get("annotations")), str(cfg.get("images")))]
    sources = cfg.get("sources")
    if not isinstance(sources, Sequence) or isinstance(sources, str) or not sources:
        raise MlfsicError(f"dataset.sources={sources!r}: expected a non-empty list of {{annotations, images}}")
    pairs = []
    for number, entry in enumerate(sources):
        if not isinstance(entry, Mapping) or not all(isinstance(entry.get(k), str) for k in ("annotations", "images")):
            raise MlfsicError(f"dataset.sources[{number}]={entry!r}: expected {{annotations: FILE, images: FOLDER}}")
        pairs.append((str(entry["annotations"]), str(entry["images"])))
    return pairs


def pool_coco(name: str, root: Path, parts: Sequence[Dataset], annotation_files: Sequence[str]) -> Dataset:
    """One dataset of several COCO files (same categories, disjoint image ids), paths relative to root."""
    first = parts[0]
    seen: dict[int, str] = {}
    for part, annotation_file in zip(parts, annotation_files):
        if part.label_names != first.label_names:
            raise MlfsicError(f"{root / annotation_file}: its categories differ from those of "
                              f"{root / annotation_files[0]}; pooled COCO files must share one category list")
        for image_id in part.image_ids.tolist():
            if image_id in seen:
                raise MlfsicError(f"{root / annotation_file}: image id {image_id} is also in {root / seen[image_id]}")
            seen[image_id] = annotation_file
    image_ids = np.concatenate([part.image_ids for part in parts])
    file_names = [(part.image_root.relative_to(root) / file_name).as_posix()
                  for part in parts for file_name in part.file_names]
    targets = np.concatenate([part.targets for part in parts])
    order = np.argsort(image_ids, kind="stable")
    digest = hashlib.sha256(b"mlfsic-coco-pooled\n")
    for part, annotation_file in zip(parts, annotation_files):
        digest.update(f"{annotation_file}:{part.annotation_sha256}\n".encode())
    return Dataset(name=name, image_root=root, image_ids=image_ids[order], file_names=tuple(file_names[i] for i in order),
                   label_names=first.label_names, targets=np.ascontiguousarray(targets[order]),
                   annotation_sha256=digest.hexdigest())


def load_coco(name: str, root: str | Path, annotations: str, images: str, check_images: bool = True) -> Dataset:
    """Load ``root/annotations`` (COCO instances json) with images under ``root/images``."""
    root = Path(root)
    annotation_path = root / annotations
    image_root = root / images
    if not annotation_path.is_file():
        raise MlfsicError(f"annotation file not found: {annotation_path}")
    if not image_root.is_dir():
        raise MlfsicError(f"image folder not found: {image_root}")
    coco = _read_coco(annotation_path)

    categories = sorted(coco.loadCats(coco.getCatIds()), key=lambda c: c["id"])
    label_names = tuple(str(c["name"]) for c in categories)
    column_of_category = {c["id"]: column for column, c in enumerate(categories)}
    image_ids = np.array(sorted(coco.getImgIds()), dtype=np.int64)
    row_of_image = {int(i): row for row, i in enumerate(image_ids)}
    targets = np.zeros((len(image_ids), len(label_names)), dtype=bool)
    for annotation in coco.dataset.get("annotations", []):
        try:
            row = row_of_image[int(annotation["image_id"])]
            column = column_of_category[annotation["category_id"]]
        except KeyError as error:
            raise MlfsicError(
                f"{annotation_path}: annotation {annotation.get('id')} refers to unknown image or category {error}"
            ) from None
        targets[row, column] = True

    file_names = tuple(str(coco.imgs[int(i)]["file_name"]) for i in image_ids)
    if check_images:
        for file_name in file_names:
            if not (image_root / file_name).is_file():
                raise MlfsicError(f"image listed in {annotation_path} is missing: {image_root / file_name}")
    return Dataset(
        name=name,
        image_root=image_root,
        image_ids=image_ids,
        file_names=file_names,
        label_names=label_names,
        targets=targets,
        annotation_sha256=sha256_file(annotation_path),
    )


def _check_unique(annotation_path: Path, field: str, entries: list[dict[str, Any]]) -> None:
    """Ids (and category names, image file names) appear once; a name is a non-blank string. pycocotools would
    keep the last of two entries with one id silently; two categories of one name would be one label."""
    named = "name" if field == "categories" else "file_name"
    seen: dict[Any, int] = {}
    seen_names: dict[str, int] = {}
    for index, entry in enumerate(entries):
        where = f"malformed annotation file {annotation_path}: {field}[{index}]"
        if entry["id"] in seen:
            raise MlfsicError(f"{where} repeats id {entry['id']!r} of {field}[{seen[entry['id']]}]")
        seen[entry["id"]] = index
        name = entry[named]
        if not isinstance(name, str) or not name.strip():
            raise MlfsicError(f"{where} (id {entry['id']!r}): {named} {json.dumps(name, ensure_ascii=False)} is not a "
                              "non-blank string")
        if name in seen_names:
            raise MlfsicError(f"{where} (id {entry['id']!r}): {named} {name!r} is also that of "
                              f"{field}[{seen_names[name]}]")
        seen_names[name] = index


def _read_coco(annotation_path: Path) -> COCO:
    try:
        with open(annotation_path, "rb") as handle:
            content = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MlfsicError(f"malformed annotation file {annotation_path}: {error}") from None
    if not isinstance(content, dict):
        raise MlfsicError(f"malformed annotation file {annotation_path}: top level is not an object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(content.get(key), list):
            raise MlfsicError(f"malformed annotation file {annotation_path}: missing list {key!r}")
    for field, entries in (("images", content["images"]), ("categories", content["categories"])):
        for entry in entries:
            required = ("id", "file_name") if field == "images" else ("id", "name")
            if not isinstance(entry, dict) or any(key not in entry for key in required):
                raise MlfsicError(f"malformed annotation file {annotation_path}: an entry of {field!r} lacks {required}")
        _check_unique(annotation_path, field, entries)
    coco = COCO()
    coco.dataset = content
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco.createIndex()
    return coco
