"""NUS-WIDE adapter: the NUS-WIDE folder as distributed by its authors, read without pixels.

Files read (paths relative to ``root``, each a config key)::

    image_list  ImageList/Imagelist.txt         one image a line, Windows paths: actor\\0001_2124494179.jpg
                                                (a longer C:\\...\\Flickr\\actor\\... prefix is allowed)
    concepts    ConceptsList/Concepts81.txt     the 81 human-annotated concepts, one a line
    labels_dir  Groundtruth/AllLabels           Labels_<concept>.txt: one 0/1 a line, in image_list order
    images      Flickr                          the images: <images>/<folder>/<file> from the list's last two parts

``protocol: concepts81`` (default): 81 labels, the concepts, from the human ground truth.

``protocol: zsl925``: the zero-shot protocol of the open-vocabulary NUS-WIDE papers (Fast0Tag, Zhang et al.
CVPR'16; LESA, Huynh & Elhamifar CVPR'20; BiAM; MKT), which needs the 1k tag files::

    tag_list    NUS_WID_Tags/TagList1k.txt      the 1000 most frequent Flickr tags, one a line
    tag_matrix  NUS_WID_Tags/AllTags1k.txt      one line per image (image_list order), 1000 0/1 values

Seen labels are the tags of TagList1k.txt whose name is not, character for character, one of the 81 concept
names (as LESA's preprocessing computes them; 925 with the published files), in TagList1k order, with the
user-tag ground truth of AllTags1k.txt; unseen labels are the 81 concepts with their human ground truth. So
1006 labels: the seen tags, then the concepts. ``configs/splits/nuswide_zsl925.json`` derives the label split
from the data (``label_split``): test = the 81 concepts, val = every 10th seen tag (in TagList1k order, from
the 10th; the harness needs a val split for model selection, the papers' protocol has none), train = the other
seen tags.

Image ids are the 1-based line numbers of ``image_list``. A path listed twice with the same labels is kept once;
with different labels it is an error naming both lines.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mlfsic.datasets.adapter import Digest, Loaded, build_dataset, decode_text, option, read_binary_matrix, \
    read_bytes, read_lines, root_of
from mlfsic.harness.protocol.splits import split_path
from mlfsic.harness.protocol.splits import load_label_split
from mlfsic.harness.protocol.data import Dataset
from mlfsic.harness.errors import MlfsicError

PROTOCOLS = ("concepts81", "zsl925")
ZSL_DERIVE = "nuswide-zsl925"  # the "derive" value of a split file whose train/val come from the tag files
ZSL_VAL_EVERY = 10
DEFAULTS = {
    "image_list": "ImageList/Imagelist.txt",
    "concepts": "ConceptsList/Concepts81.txt",
    "labels_dir": "Groundtruth/AllLabels",
    "images": "Flickr",
    "tag_list": "NUS_WID_Tags/TagList1k.txt",
    "tag_matrix": "NUS_WID_Tags/AllTags1k.txt",
}
_FLICKR_ID = re.compile(r"^\d+_(\d+)\.\w+$")


def read(cfg: Mapping[str, Any], check_images: bool = True) -> Loaded:
    root = root_of(cfg, "the NUS-WIDE folder (holding ImageList/, ConceptsList/, Groundtruth/)")
    paths = {key: str(option(cfg, key, default)) for key, default in DEFAULTS.items()}
    return read_nuswide(str(option(cfg, "name", "nuswide")), root, protocol=str(option(cfg, "protocol", "concepts81")),
                        missing_images=str(option(cfg, "missing_images", "error")), check_images=check_images,
                        **paths)


def read_nuswide(name: str, root: str | Path, *, image_list: str = DEFAULTS["image_list"],
                 concepts: str = DEFAULTS["concepts"], labels_dir: str = DEFAULTS["labels_dir"],
                 images: str = DEFAULTS["images"], protocol: str = "concepts81",
                 tag_list: str = DEFAULTS["tag_list"], tag_matrix: str = DEFAULTS["tag_matrix"],
                 missing_images: str = "error", check_images: bool = True) -> Loaded:
    root = Path(root)
    if protocol not in PROTOCOLS:
        raise MlfsicError(f"dataset.protocol={protocol!r}: expected one of {', '.join(PROTOCOLS)}")
    digest = Digest(root, "nuswide")
    list_path = root / image_list
    file_names = _read_image_list(list_path, digest)
    n = len(file_names)
    concept_path = root / concepts
    concept_names = _read_names(concept_path, digest, "concept list")
    label_root = root / labels_dir
    if not label_root.is_dir():
        raise MlfsicError(f"label folder not found: {label_root}")
    columns = []
    for line, concept in enumerate(concept_names, start=1):
        label_path = label_root / f"Labels_{concept}.txt"
        if not label_path.is_file():
            raise MlfsicError(f"{concept_path}:{line}: concept {concept!r} has no label file {label_path}")
        columns.append(read_binary_matrix(label_path, digest, n, 1, str(list_path))[:, 0])
    label_names = list(concept_names)
    targets = np.stack(columns, axis=1) if columns else np.zeros((n, 0), dtype=bool)
    notes = [f"protocol {protocol}: {len(concept_names)} concepts of {concepts}, human ground truth of {labels_dir}"]
    if len(concept_names) != 81:
        notes.append(f"note: {concepts} lists {len(concept_names)} concepts, not the published 81")
    listed = {f"Labels_{concept}.txt" for concept in concept_names}
    stray = sorted(p.name for p in label_root.glob("Labels_*.txt") if p.name not in listed)
    if stray:
        notes.append(f"{len(stray)} label files of concepts not in {concepts} not read: {', '.join(stray[:5])}"
                     + (", ..." if len(stray) > 5 else ""))
    if protocol == "zsl925":
        tag_path = root / tag_list
        tags = _read_names(tag_path, digest, "tag list")
        concept_set = set(concept_names)
        seen = [column for column, tag in enumerate(tags) if tag not in concept_set]
        tag_targets = read_binary_matrix(root / tag_matrix, digest, n, len(tags), str(list_path))
        label_names = [tags[c] for c in seen] + label_names
        targets = np.concatenate([tag_targets[:, seen], targets], axis=1)
        notes = [f"protocol zsl925: {len(seen)} seen labels = the {len(tags)} tags of {tag_list} minus the "
                 f"{len(tags) - len(seen)} equal to a concept name (925 with the published files), targets from the "
                 f"user tags of {tag_matrix}; {len(concept_names)} unseen labels = the concepts of {concepts}, "
                 f"human ground truth of {labels_dir}"]
    keep = _deduplicate(file_names, targets, list_path)
    duplicates = int((~keep).sum())
    if duplicates:
        notes.append(f"{duplicates} images listed more than once (same labels) kept once")
    flickr_ids = [m.group(1) for m in map(_FLICKR_ID.match, (f.rsplit("/", 1)[-1] for f in file_names)) if m]
    shared = len(flickr_ids) - len(set(flickr_ids))
    if shared:
        notes.append(f"note: {shared} listed files repeat a Flickr photo id under another folder (kept as separate "
                     f"images: the same photo may appear twice)")
    image_ids = np.arange(1, n + 1, dtype=np.int64)[keep]
    kept_names = [f for f, k in zip(file_names, keep.tolist()) if k]
    digest.add_options({"protocol": protocol})
    dataset, dropped = build_dataset(name, root / images, image_ids, kept_names, label_names, targets[keep], digest,
                                     check_images, missing_images, lambda i: f"{list_path}:{image_ids[i]}")
    return Loaded(dataset=dataset, notes=tuple(notes), sources=((image_list, n),), missing_images=dropped)


def label_split(cfg: Mapping[str, Any], dataset: Dataset) -> dict[str, list[str]]:
    """The label split of ``cfg.split_file``; a file with ``"derive": "nuswide-zsl925"`` is completed from the
    dataset's labels (see the module docstring), any other is read as is."""
    split_file = str(option(cfg, "split_file", "nuswide.json"))
    restrict = bool(option(cfg, "restrict_split", False))
    path = split_path(split_file)
    raw = _read_split_json(path)
    if raw.get("derive") is None:
        return load_label_split(split_file, dataset.label_names, restrict)
    if raw["derive"] != ZSL_DERIVE:
        raise MlfsicError(f"{path}: derive={raw['derive']!r} is not known; expected {ZSL_DERIVE!r}")
    if str(option(cfg, "protocol", "concepts81")) != "zsl925":
        raise MlfsicError(f"{path} derives the zero-shot split from the 1k tags; it needs dataset.protocol=zsl925")
    unseen = raw.get("test")
    if not isinstance(unseen, list) or not unseen:
        raise MlfsicError(f"{path}: 'test' must list the unseen concepts")
    known = set(dataset.label_names)
    for label in unseen:
        if label not in known:
            raise MlfsicError(f"{path}: test label {label!r} is not a label of the dataset")
    unseen_set = set(unseen)
    seen = [label for label in dataset.label_names if label not in unseen_set]
    val = seen[ZSL_VAL_EVERY - 1::ZSL_VAL_EVERY]
    val_set = set(val)
    return {"base": [label for label in seen if label not in val_set], "val": val, "test": list(unseen)}


def _read_split_json(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise MlfsicError(f"split file {path}: {error}") from None
    if not isinstance(raw, dict):
        raise MlfsicError(f"{path}: malformed split file; expected an object with lists train, val, test")
    return raw


def _read_image_list(path: Path, digest: Digest) -> list[str]:
    """``<folder>/<file>`` of each line (Windows separators), blank lines allowed only at the end."""
    data = read_bytes(path, "image list")
    digest.add_file(path, data)
    lines = decode_text(path, data).splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise MlfsicError(f"{path}: empty image list")
    names = []
    for number, line in enumerate(lines, start=1):
        parts = [part for part in re.split(r"[\\/]", line.strip()) if part]
        if not parts:
            raise MlfsicError(f"{path}:{number}: blank line (label files follow this list line by line)")
        if parts[-1] in (".", "..") or (len(parts) > 1 and parts[-2] in (".", "..")):
            raise MlfsicError(f"{path}:{number}: {line.strip()!r} is not an image path")
        names.append("/".join(parts[-2:]))
    return names


def _read_names(path: Path, digest: Digest, what: str) -> list[str]:
    """One name a line (concepts or tags); blank lines only at the end, no duplicates."""
    lines = read_lines(path, digest, what)
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise MlfsicError(f"{path}: empty {what}")
    names: list[str] = []
    first: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        name = line.strip()
        if not name:
            raise MlfsicError(f"{path}:{number}: blank line in the {what}")
        if "/" in name or "\\" in name:
            raise MlfsicError(f"{path}:{number}: {name!r} is not a name")
        if name in first:
            raise MlfsicError(f"{path}:{number}: {name!r} is listed twice (first at line {first[name]})")
        first[name] = number
        names.append(name)
    return names


def _deduplicate(file_names: list[str], targets: np.ndarray, list_path: Path) -> np.ndarray:
    """Rows to keep: the first of each path; a repeat with different labels is an error."""
    keep = np.ones(len(file_names), dtype=bool)
    first: dict[str, int] = {}
    for row, name in enumerate(file_names):
        previous = first.setdefault(name, row)
        if previous == row:
            continue
        if not np.array_equal(targets[previous], targets[row]):
            raise MlfsicError(f"{list_path}:{row + 1}: image {name} is listed again with different labels "
                              f"(first at line {previous + 1})")
        keep[row] = False
    return keep
