"""PASCAL VOC adapter: a ``VOCdevkit`` folder as distributed (VOC2007 and/or VOC2012), read without pixels.

Layout read (the devkit's own)::

    VOCdevkit/VOC2007/ImageSets/Main/{trainval,test}.txt   one image id per line (000005)
    VOCdevkit/VOC2007/Annotations/<id>.xml                 <annotation><object><name>, <difficult>
    VOCdevkit/VOC2007/JPEGImages/<id>.jpg
    VOCdevkit/VOC2012/...                                  the same, ids like 2008_000008

``sets`` names the image lists pooled, as ``<year folder>/<list>`` (a list that is absent is skipped and named in
the notes, e.g. a devkit with VOC2007 only; none present is an error); the default pool is VOC2007 trainval +
VOC2007 test + VOC2012 trainval (VOC2012's test annotations are not public), as later ML-FSIC work on VOC
pools them. An image carries a class when one of its ``<object>``s (direct children of ``<annotation>``;
VOC2012's ``<part>`` names are body parts and are not read) is of that class. ``difficult`` objects count as
present unless ``include_difficult: false``. The 20 classes keep the devkit's order.

Image ids encode year and number: ``000005`` of VOC2007 is 2007000005, ``2008_000008`` is 2008000008; so ids are
unique across years. An image VOC2012 carries over from 2007 (``2007_000032``, in its Segmentation lists, not
in Main) is the photo VOC2007 calls ``000032`` and gets its id: pooling both is an error naming both places,
so one photo never sits in a pool twice. File names are relative to the devkit: ``VOC2007/JPEGImages/000005.jpg``.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mlfsic.datasets.adapter import Digest, LabelTable, Loaded, bool_option, finish, read_bytes, read_lines, \
    root_of, str_list
from mlfsic.harness.protocol.data import Dataset
from mlfsic.harness.errors import MlfsicError

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
DEFAULT_SETS = ("VOC2007/trainval", "VOC2007/test", "VOC2012/trainval")
_COLUMN = {name: column for column, name in enumerate(VOC_CLASSES)}
_NEW_ID = re.compile(r"^(\d{4})_(\d{6})$")  # VOC2008+ ids: 2008_000008
_OLD_ID = re.compile(r"^(\d{6})$")  # VOC2007 ids: 000005
_YEAR_FOLDER = re.compile(r"VOC(\d{4})")


def read(cfg: Mapping[str, Any], check_images: bool = True) -> Loaded:
    root = root_of(cfg, "the VOCdevkit folder (holding VOC2007/ and/or VOC2012/)")
    return read_voc(str(cfg.get("name", "voc")), root, sets=str_list(cfg, "sets", DEFAULT_SETS),
                    include_difficult=bool_option(cfg, "include_difficult", True), check_images=check_images)


def load_voc(name: str, root: str | Path, sets: Sequence[str] = DEFAULT_SETS, include_difficult: bool = True,
             check_images: bool = True) -> Dataset:
    return read_voc(name, root, sets, include_difficult, check_images).dataset


def read_voc(name: str, root: str | Path, sets: Sequence[str] = DEFAULT_SETS, include_difficult: bool = True,
             check_images: bool = True) -> Loaded:
    root = Path(root)
    if not root.is_dir():
        raise MlfsicError(f"VOCdevkit folder not found: {root}")
    digest = Digest(root, "voc")
    table = LabelTable()
    parsed: dict[tuple[str, str], frozenset[int]] = {}
    sources = []
    difficult_only = 0
    lists = [(entry, *_parse_set(entry)) for entry in sets]
    missing = [entry for entry, folder, list_name in lists
               if not (root / folder / "ImageSets" / "Main" / f"{list_name}.txt").is_file()]
    if len(missing) == len(lists):
        raise MlfsicError(f"image list not found: {root / lists[0][1] / 'ImageSets' / 'Main' / (lists[0][2] + '.txt')} "
                          f"(none of dataset.sets {', '.join(sets)} is present under {root})")
    for entry, folder, list_name in lists:
        if entry in missing:  # e.g. a VOCdevkit with VOC2007 only: read what is there, say what is not
            continue
        list_path = root / folder / "ImageSets" / "Main" / f"{list_name}.txt"
        ids = _read_list(list_path, digest)
        for line_number, image_name in ids:
            image_id = _image_id(folder, image_name, list_path, line_number)
            key = (folder, image_name)
            if key not in parsed:
                labels, hard = _read_annotation(root / folder / "Annotations" / f"{image_name}.xml", digest,
                                                include_difficult)
                parsed[key] = labels
                difficult_only += hard
            table.add(image_id, f"{folder}/JPEGImages/{image_name}.jpg", parsed[key], f"{list_path}:{line_number}")
        sources.append((f"{folder} {list_name}", len(ids)))
    digest.add_options({"include_difficult": include_difficult, "sets": list(sets)})
    dataset, _ = finish(name, root, table, VOC_CLASSES, digest, check_images, "error")
    notes = [f"difficult objects {'counted as present' if include_difficult else 'ignored'} "
             f"(include_difficult: {str(include_difficult).lower()}); "
             f"{difficult_only} image-label pairs are difficult-only"]
    if table.duplicates:
        notes.append(f"{table.duplicates} images listed more than once (same labels) kept once")
    if missing:
        lists = ", ".join(e.replace("/", "/ImageSets/Main/", 1) + ".txt" for e in missing)
        notes.append(f"missing, not read: {', '.join(missing)} (no {lists})")
    return Loaded(dataset=dataset, notes=tuple(notes), sources=tuple(sources))


def _parse_set(entry: str) -> tuple[str, str]:
    folder, sep, list_name = str(entry).strip().partition("/")
    if not sep or not folder or not list_name or "/" in list_name:
        raise MlfsicError(f"dataset.sets entry {entry!r}: expected <year folder>/<list>, e.g. VOC2007/trainval "
                          f"(the list VOC2007/ImageSets/Main/trainval.txt)")
    return folder, list_name


def _read_list(path: Path, digest: Digest) -> list[tuple[int, str]]:
    """(line number, image id) of an ``ImageSets/Main`` list; one id per line, blank lines skipped."""
    entries = []
    for number, line in enumerate(read_lines(path, digest, "image list"), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 1:
            raise MlfsicError(f"{path}:{number}: expected one image id per line, got {line.strip()!r} "
                              f"(a per-class list? use the plain lists such as trainval.txt)")
        entries.append((number, fields[0]))
    if not entries:
        raise MlfsicError(f"{path}: empty image list")
    return entries


def _image_id(folder: str, image_name: str, list_path: Path, line_number: int) -> int:
    match = _NEW_ID.match(image_name)
    if match:
        return int(match.group(1)) * 1_000_000 + int(match.group(2))
    match = _OLD_ID.match(image_name)
    year = _YEAR_FOLDER.search(folder)
    if match and year:
        return int(year.group(1)) * 1_000_000 + int(match.group(1))
    if match:
        raise MlfsicError(f"{list_path}:{line_number}: image id {image_name!r} has no year and folder {folder!r} "
                          f"names none (expected VOC<year>)")
    raise MlfsicError(f"{list_path}:{line_number}: {image_name!r} is not a VOC image id (000005 or 2008_000008)")


def _read_annotation(path: Path, digest: Digest, include_difficult: bool) -> tuple[frozenset[int], int]:
    """Class columns of one XML file, and how many classes only difficult objects carry."""
    data = read_bytes(path)
    digest.add_file(path, data)
    try:
        annotation = ET.fromstring(data)
    except ET.ParseError as error:
        raise MlfsicError(f"{path}: malformed XML ({error})") from None
    if annotation.tag != "annotation":
        raise MlfsicError(f"{path}: root element is <{annotation.tag}>, expected <annotation>")
    easy: set[int] = set()
    hard: set[int] = set()
    for number, obj in enumerate(annotation.findall("object"), start=1):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise MlfsicError(f"{path}: <object> #{number} has no <name>")
        column = _COLUMN.get(name)
        if column is None:
            raise MlfsicError(f"{path}: <object> #{number}: unknown class {name!r}; expected one of the 20 VOC "
                              f"classes ({', '.join(VOC_CLASSES)})")
        difficult = (obj.findtext("difficult") or "0").strip()
        if difficult not in ("0", "1"):
            raise MlfsicError(f"{path}: <object> #{number}: <difficult> is {difficult!r}, expected 0 or 1")
        (hard if difficult == "1" else easy).add(column)
    hard -= easy
    labels = easy | hard if include_difficult else easy
    return frozenset(labels), len(hard)
