"""iMaterialist Fashion 2018 adapter (FGVC5 Kaggle competition): its json annotation files, read without pixels.

Files read (relative to ``root``; ``annotations`` and ``images`` are parallel lists, pooled)::

    train.json, validation.json   {"images": [{"imageId": "1", "url": ...}, ...],
                                   "annotations": [{"imageId": "1", "labelId": ["62", "17", ...]}, ...]}
    train/<imageId>.jpg, ...      the images, downloaded by the user from the urls (``image_pattern``)

Labels are the competition's label ids 1..``n_labels`` (228). The competition did not name them: give a names
file with ``label_names: <path>`` (csv with a header naming an id column ``labelId``/``label_id``/``id`` and a
name column ``labelName``/``label_name``/``name``, e.g. the later-released ``labelId,taskId,labelName,taskName``
map; or json, ``{"62": "name"}`` or a list of such rows); then the names file lists the labels, and a name used
by two ids is told apart by its task (``name (task)``) when the file has a ``taskName``/``task`` column.
Without one, labels are named ``label_<id>`` and the summary says so. Label columns follow the id order.

Image ids: ``k * 1_000_000_000 + imageId`` for the k-th annotation file (from 0), since train.json and
validation.json both number from 1. An image listed twice with different labels is an error naming both
places. Many of the urls are dead: ``missing_images: drop`` leaves images whose file is missing out (counted in
the summary and in the content digest) instead of stopping.

``label_split``: the shipped provisional split (``configs/splits/imaterialist.json``) names labels by id
(``label_<id>``); with a names file they are mapped to the names.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mlfsic.datasets.adapter import Digest, LabelTable, Loaded, decode_text, finish, option, read_bytes, \
    read_json, root_of, str_list
from mlfsic.harness.protocol.splits import split_path
from mlfsic.harness.protocol.splits import load_label_split
from mlfsic.harness.protocol.data import Dataset
from mlfsic.harness.errors import MlfsicError

N_LABELS = 228
SOURCE_STRIDE = 1_000_000_000
DEFAULT_ANNOTATIONS = ("train.json", "validation.json")
DEFAULT_IMAGES = ("train", "validation")
_ID_COLUMNS = ("labelId", "label_id", "labelid", "id")
_NAME_COLUMNS = ("labelName", "label_name", "labelname", "name")
_TASK_COLUMNS = ("taskName", "task_name", "taskname", "task")
_ID_LABEL = re.compile(r"^label_(\d+)$")


def read(cfg: Mapping[str, Any], check_images: bool = True) -> Loaded:
    root = root_of(cfg, "the iMaterialist folder (holding train.json, validation.json)")
    names = option(cfg, "label_names", None)
    return read_imaterialist(
        str(option(cfg, "name", "imaterialist")), root,
        annotations=str_list(cfg, "annotations", DEFAULT_ANNOTATIONS), images=str_list(cfg, "images", DEFAULT_IMAGES),
        label_names=str(names) if names else None, n_labels=_int_option(cfg, "n_labels", N_LABELS),
        image_pattern=str(option(cfg, "image_pattern", "{imageId}.jpg")),
        missing_images=str(option(cfg, "missing_images", "error")), check_images=check_images)


def read_imaterialist(name: str, root: str | Path, *, annotations: Sequence[str] = DEFAULT_ANNOTATIONS,
                      images: Sequence[str] = DEFAULT_IMAGES, label_names: str | None = None,
                      n_labels: int = N_LABELS, image_pattern: str = "{imageId}.jpg",
                      missing_images: str = "error", check_images: bool = True) -> Loaded:
    root = Path(root)
    if len(annotations) != len(images):
        raise MlfsicError(f"dataset.annotations has {len(annotations)} files but dataset.images {len(images)} "
                          f"folders; give one image folder per annotation file")
    if "{imageId}" not in image_pattern:
        raise MlfsicError(f"dataset.image_pattern={image_pattern!r}: must contain {{imageId}}")
    digest = Digest(root, "imaterialist")
    if label_names:
        names_path = Path(label_names) if Path(label_names).is_absolute() else root / label_names
        id_to_name = read_label_names(names_path, digest)
        label_ids = sorted(id_to_name)
        notes = [f"label names from {names_path} ({len(label_ids)} labels)"]
        known = f"not in {names_path.name}"
    else:
        label_ids = list(range(1, n_labels + 1))
        id_to_name = {i: f"label_{i}" for i in label_ids}
        notes = [f"no label names given (dataset.label_names): labels are named label_<id>, ids 1..{n_labels}"]
        known = f"label ids are 1..{n_labels}, dataset.n_labels"
    column_of = {label_id: column for column, label_id in enumerate(label_ids)}
    table = LabelTable()
    sources = []
    unlabelled = 0
    for index, (annotation_file, image_folder) in enumerate(zip(annotations, images)):
        path = root / annotation_file
        n_listed, n_unlabelled = _read_source(path, index, image_folder, image_pattern, column_of, known, table,
                                              digest)
        sources.append((annotation_file, n_listed))
        unlabelled += n_unlabelled
    if unlabelled:
        notes.append(f"{unlabelled} listed images have no annotation (no labels)")
    if table.duplicates:
        notes.append(f"{table.duplicates} images listed more than once (same labels) kept once")
    digest.add_options({"annotations": list(annotations), "images": list(images), "label_names": bool(label_names),
                        "n_labels": n_labels, "image_pattern": image_pattern})
    dataset, dropped = finish(name, root, table, [id_to_name[i] for i in label_ids], digest, check_images,
                              missing_images)
    return Loaded(dataset=dataset, notes=tuple(notes), sources=tuple(sources), missing_images=dropped)


def label_split(cfg: Mapping[str, Any], dataset: Dataset) -> dict[str, list[str]]:
    """``cfg.split_file``; labels written ``label_<id>`` are mapped to the names file's names when one is given."""
    split_file = str(option(cfg, "split_file", "imaterialist.json"))
    restrict = bool(option(cfg, "restrict_split", False))
    names = option(cfg, "label_names", None)
    if not names or not _names_labels_by_id(split_path(split_file)):
        return load_label_split(split_file, dataset.label_names, restrict)
    root = root_of(cfg, "the iMaterialist folder")
    names_path = Path(str(names)) if Path(str(names)).is_absolute() else root / str(names)
    id_to_name = read_label_names(names_path, None)
    by_id = load_label_split(split_file, tuple(f"label_{i}" for i in sorted(id_to_name)), restrict)
    return {part: [id_to_name[int(_ID_LABEL.match(label).group(1))] for label in labels]
            for part, labels in by_id.items()}


def _names_labels_by_id(path: Path) -> bool:
    try:
        raw = json.loads(path.read_text())
        labels = [label for part in ("train", "val", "test") for label in raw[part]]
    except (OSError, ValueError, KeyError, TypeError):
        return False  # load_label_split reports it
    return bool(labels) and all(isinstance(label, str) and _ID_LABEL.match(label) for label in labels)


def _int_option(cfg: Mapping[str, Any], key: str, default: int) -> int:
    value = option(cfg, key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise MlfsicError(f"dataset.{key}={value!r}: expected a positive integer")
    return value


def _positive_id(value: Any, where: str, what: str) -> int:
    text = str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
    if not text.isdigit() or int(text) < 1:
        raise MlfsicError(f"{where}: {what} {value!r} is not a positive integer id")
    return int(text)


def _read_source(path: Path, index: int, image_folder: str, image_pattern: str, column_of: dict[int, int],
                 known: str, table: LabelTable, digest: Digest) -> tuple[int, int]:
    content = read_json(path, digest)
    if not isinstance(content, dict):
        raise MlfsicError(f"{path}: top level is not an object with 'images' and 'annotations'")
    entries = content.get("images")
    labelled = content.get("annotations")
    if not isinstance(entries, list):
        raise MlfsicError(f"{path}: missing list 'images'")
    if not isinstance(labelled, list):
        raise MlfsicError(f"{path}: missing list 'annotations' (test.json has none: it cannot be evaluated)")
    if not entries:
        raise MlfsicError(f"{path}: 'images' is empty")
    listed: dict[int, int] = {}
    for k, entry in enumerate(entries):
        if not isinstance(entry, dict) or "imageId" not in entry:
            raise MlfsicError(f"{path}: images[{k}] has no imageId")
        image_id = _positive_id(entry["imageId"], f"{path}: images[{k}]", "imageId")
        if image_id >= SOURCE_STRIDE:
            raise MlfsicError(f"{path}: images[{k}]: imageId {image_id} is too large (< {SOURCE_STRIDE})")
        listed.setdefault(image_id, k)
    labels_of: dict[int, tuple[frozenset[int], int]] = {}
    for k, entry in enumerate(labelled):
        where = f"{path}: annotations[{k}]"
        if not isinstance(entry, dict) or "imageId" not in entry or "labelId" not in entry:
            raise MlfsicError(f"{where} lacks imageId or labelId")
        image_id = _positive_id(entry["imageId"], where, "imageId")
        if image_id not in listed:
            raise MlfsicError(f"{where}: image {image_id} is not in 'images'")
        if not isinstance(entry["labelId"], list):
            raise MlfsicError(f"{where}: labelId is not a list")
        columns = set()
        for value in entry["labelId"]:
            label_id = _positive_id(value, where, "labelId")
            if label_id not in column_of:
                raise MlfsicError(f"{where}: unknown label id {label_id} ({known})")
            columns.add(column_of[label_id])
        labels = frozenset(columns)
        previous = labels_of.get(image_id)
        if previous is not None and previous[0] != labels:
            raise MlfsicError(f"{where}: image {image_id} is listed again with different labels "
                              f"(first at annotations[{previous[1]}])")
        labels_of.setdefault(image_id, (labels, k))
    for image_id, k in listed.items():
        labels = labels_of.get(image_id, (frozenset(), 0))[0]
        file_name = f"{image_folder}/{image_pattern.format(imageId=image_id)}"
        table.add(index * SOURCE_STRIDE + image_id, file_name, labels, f"{path}: images[{k}]")
    return len(listed), len(listed) - len(labels_of)


def read_label_names(path: Path, digest: Digest | None) -> dict[int, str]:
    """id -> name from a csv (header with id and name columns) or json file; names made unique."""
    data = read_bytes(path, "label names file")
    if digest is not None:
        digest.add_file(path, data)
    text = decode_text(path, data)
    rows: list[tuple[int, str, str | None, str]] = []  # (id, name, task, where)
    if path.suffix.lower() == ".json":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as error:
            raise MlfsicError(f"{path}:{error.lineno}: malformed JSON ({error.msg}, column {error.colno})") from None
        if isinstance(raw, dict):
            items = [({"id": k, "name": v}, f"{path}: key {k!r}") for k, v in raw.items()]
        elif isinstance(raw, list):
            items = [(row, f"{path}: [{k}]") for k, row in enumerate(raw)]
        else:
            raise MlfsicError(f"{path}: expected an object id -> name or a list of rows")
        for row, where in items:
            if not isinstance(row, dict):
                raise MlfsicError(f"{where}: expected an object with an id and a name")
            rows.append(_row(row, where))
    else:
        reader = csv.DictReader(io.StringIO(text))
        header = reader.fieldnames or []
        if not any(c in header for c in _ID_COLUMNS) or not any(c in header for c in _NAME_COLUMNS):
            raise MlfsicError(f"{path}:1: header {','.join(header)!r} lacks an id column ({'/'.join(_ID_COLUMNS)}) "
                              f"or a name column ({'/'.join(_NAME_COLUMNS)})")
        for row in reader:
            rows.append(_row(row, f"{path}:{reader.line_num}"))
    if not rows:
        raise MlfsicError(f"{path}: no label names")
    names: dict[int, str] = {}
    where_of: dict[int, str] = {}
    for label_id, name, _, where in rows:
        if label_id in names:
            raise MlfsicError(f"{where}: label id {label_id} is named twice (first at {where_of[label_id]})")
        names[label_id] = name
        where_of[label_id] = where
    first_where: dict[str, str] = {}
    repeated = set()
    for _, name, _, where in rows:
        if name in first_where:
            if not any(task for _, n, task, _ in rows if n == name):
                raise MlfsicError(f"{where}: name {name!r} is also given at {first_where[name]}, and the file has no "
                                  f"task column to tell them apart")
            repeated.add(name)
        first_where.setdefault(name, where)
    for label_id, name, task, where in rows:
        if name in repeated:
            if not task:
                raise MlfsicError(f"{where}: name {name!r} is given to several label ids and this row has no task")
            names[label_id] = f"{name} ({task})"
    seen: dict[str, int] = {}
    for label_id, name in names.items():
        if name in seen:
            raise MlfsicError(f"{where_of[label_id]}: name {name!r} is also label id {seen[name]}'s")
        seen[name] = label_id
    return names


def _row(row: Mapping[str, Any], where: str) -> tuple[int, str, str | None, str]:
    label_id = next((row[c] for c in _ID_COLUMNS if c in row), None)
    name = next((row[c] for c in _NAME_COLUMNS if c in row), None)
    task = next((row[c] for c in _TASK_COLUMNS if c in row), None)
    if label_id is None or name is None or not str(name).strip():
        raise MlfsicError(f"{where}: expected a label id and a non-empty name")
    return (_positive_id(str(label_id).strip(), where, "label id"), str(name).strip(),
            str(task).strip() if task is not None and str(task).strip() else None, where)
