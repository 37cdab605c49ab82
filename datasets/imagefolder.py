"""The ``imagefolder`` adapter: your own images and one metadata file, Hugging Face's ``imagefolder`` layout.

Layout read (``dataset.root``)::

    metadata.jsonl   {"file_name": "cats/001.jpg", "labels": ["cat", "sofa"]}      one JSON object a line
      or
    metadata.csv     file_name,labels                                              a header, then one row
                     cats/001.jpg,cat|sofa                                         an image
    cats/001.jpg ... the images, in any subfolders; ``file_name`` is relative to the root

Exactly one of ``metadata.jsonl`` / ``metadata.csv`` sits at the root unless ``metadata`` names the file
(a name or path relative to the root; the format follows its suffix: ``.jsonl`` or ``.csv``). Other columns
are ignored; ``file_column`` and ``labels_column`` rename the two read.

Labels. JSONL: a list of strings (``[]``: an image with no label). CSV: the cell's labels separated by
``|``; a ``|`` inside a label is written ``\\|`` and a backslash before ``|`` or ``\\`` is written ``\\\\``
(``"a\\|b|c"`` is the labels ``a|b`` and ``c``; any other backslash is kept as written); cells holding commas
or quotes are CSV-quoted as usual; an empty cell is no label. In both formats each label is stripped of
leading and trailing whitespace and otherwise kept as written (Unicode, inner spaces, case): the sorted set
of labels is the label vocabulary, and each name is the text the word-embedding methods embed
(``harness/backbones/embeddings.py``). A label listed twice in one row counts once.

Errors, each one line naming the file and line (``MlfsicError``): a malformed JSON line or a line that is
not an object, a missing column or key, a CSV row with more fields than the header, an empty ``file_name``
or one leaving the root, labels that are not a list of strings, an empty label or one that is only
whitespace, an image listed again with different labels. An image listed again with the same labels is
kept once and counted (``Loaded.duplicate_rows``). A listed file that is missing is an error naming it and
its line (``missing_images: drop`` leaves such images out and counts them).

Image ids are the position of the image's first row among the data rows (1, 2, ...). ``annotation_sha256``
is a sha256 over the metadata file's bytes and the options that change what is read (columns, dropped
files), so caches and episode-set ids follow the data.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import posixpath
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from tqdm import tqdm

from mlfsic.datasets.adapter import Digest, Loaded, build_dataset, decode_text, option, read_bytes, root_of
from mlfsic.harness.errors import MlfsicError

METADATA_NAMES = ("metadata.jsonl", "metadata.csv")
FORMATS = {".jsonl": "jsonl", ".csv": "csv"}
DEFAULTS: dict[str, Any] = {"metadata": None, "file_column": "file_name", "labels_column": "labels",
                            "missing_images": "error"}
COMMAND_KEYS = ("metadata", "file_column", "labels_column", "missing_images")  # echoed by `mlfsic data split`
SEPARATOR = "|"
PROGRESS_ROWS = 200_000  # a progress bar (on a terminal) for metadata files with more rows than this

Row = tuple[int, str, tuple[str, ...]]  # (line, file name, labels)
T = TypeVar("T")


def read(cfg: Mapping[str, Any], check_images: bool = True) -> Loaded:
    """The dataset of ``cfg`` (``root`` and the keys of ``DEFAULTS``), every row checked."""
    root = root_of(cfg, "the folder holding your images and metadata.jsonl or metadata.csv")
    path = metadata_path(root, option(cfg, "metadata", None))
    file_column = _column(cfg, "file_column")
    labels_column = _column(cfg, "labels_column")
    missing_images = str(option(cfg, "missing_images", DEFAULTS["missing_images"]))
    digest = Digest(root, "imagefolder")
    data = read_bytes(path, "metadata file")
    digest.add_file(path, data)
    digest.add_options({"file_column": file_column, "labels_column": labels_column})
    text = decode_text(path, data)
    rows = _jsonl_rows if FORMATS[path.suffix.lower()] == "jsonl" else _csv_rows
    files, label_sets, lines, duplicates = _collect(path, rows(path, text, file_column, labels_column))
    if not files:
        raise MlfsicError(f"{path}: no image rows")
    label_names = sorted(set(itertools.chain.from_iterable(label_sets)))
    targets = _multi_hot(label_sets, label_names)
    dataset, dropped = build_dataset(
        str(cfg.get("name", "imagefolder")), root, np.arange(1, len(files) + 1, dtype=np.int64), files, label_names,
        targets, digest, check_images, missing_images, lambda i: f"{path}:{lines[i]}")
    notes = []
    missing: tuple[str, ...] = ()
    if dropped:
        kept = set(dataset.file_names)
        missing = tuple(f"{root / name} ({path.name}:{line})" for name, line in zip(files, lines)
                        if name not in kept)[:5]
        notes.append(f"missing image files left out (missing_images=drop), first: {missing[0]}")
    if duplicates:
        notes.append(f"{duplicates} rows repeat an image with the same labels (kept once)")
    return Loaded(dataset=dataset, notes=tuple(notes), sources=((path.name, len(files)),), missing_images=dropped,
                  duplicate_rows=duplicates, missing_examples=missing)


def check_files(cfg: Mapping[str, Any]) -> None:
    """Every row and listed file, at sweep resolution: a malformed row or a missing image stops the sweep
    before Ray starts or anything is written (the runner's own reads skip the file checks)."""
    read(cfg, check_images=True)


def metadata_path(root: Path, metadata: str | None) -> Path:
    """``root/metadata`` when named, else the one of ``metadata.jsonl`` / ``metadata.csv`` present at the root."""
    if metadata:
        path = Path(str(metadata)).expanduser()
        path = path if path.is_absolute() else root / path
        if path.suffix.lower() not in FORMATS:
            raise MlfsicError(f"dataset.metadata={metadata}: expected a .jsonl or .csv file")
        if not path.is_file():
            raise MlfsicError(f"metadata file not found: {path}")
        return path
    present = [root / name for name in METADATA_NAMES if (root / name).is_file()]
    if not present:
        raise MlfsicError(f"no metadata.jsonl or metadata.csv in {root} (or name the file: dataset.metadata=FILE)")
    if len(present) > 1:
        raise MlfsicError(f"both metadata.jsonl and metadata.csv are in {root}; name the one to read: "
                          "dataset.metadata=metadata.csv")
    return present[0]


def split_labels(cell: str) -> list[str]:
    """The labels of a CSV cell: ``|``-separated, ``\\|`` a literal ``|``, ``\\\\`` a literal backslash.

    Example:
        >>> split_labels("cat|fire hydrant|a\\\\|b")
        ['cat', 'fire hydrant', 'a|b']
    """
    if "\\" not in cell:
        return cell.split(SEPARATOR)
    labels, current, index = [], [], 0
    while index < len(cell):
        char = cell[index]
        if char == "\\" and index + 1 < len(cell) and cell[index + 1] in (SEPARATOR, "\\"):
            current.append(cell[index + 1])
            index += 2
            continue
        if char == SEPARATOR:
            labels.append("".join(current))
            current = []
        else:
            current.append(char)
        index += 1
    labels.append("".join(current))
    return labels


# ------------------------------------------------------------------------------------------ rows
def _column(cfg: Mapping[str, Any], key: str) -> str:
    value = option(cfg, key, DEFAULTS[key])
    if not isinstance(value, str) or not value:
        raise MlfsicError(f"dataset.{key}={value!r}: expected a column name")
    return value


def _progress(items: list[T], path: Path) -> Iterable[T]:
    """``items``, with a progress bar on a terminal for large files."""
    if len(items) <= PROGRESS_ROWS:
        return items
    return tqdm(items, desc=f"reading {path.name}", unit=" rows", disable=None, file=sys.stderr, mininterval=0.5)


def _jsonl_rows(path: Path, text: str, file_column: str, labels_column: str) -> Iterator[Row]:
    lines = text.split("\n")
    numbers = [number for number, line in enumerate(lines, start=1) if line.strip()]
    entries = _decode_all(path, [lines[number - 1] for number in numbers], numbers)
    for number, entry in _progress(list(zip(numbers, entries)), path):
        if type(entry) is not dict:
            raise MlfsicError(f"{path}:{number}: expected a JSON object with {file_column!r} and {labels_column!r}")
        for key in (file_column, labels_column):
            if key not in entry:
                raise MlfsicError(f"{path}:{number}: no key {key!r} (dataset.{_key_option(key, file_column)} "
                                  "names another)")
        file_name = entry[file_column]
        labels = entry[labels_column]
        if type(file_name) is not str:
            raise MlfsicError(f"{path}:{number}: {file_column!r} is {json.dumps(file_name)}, expected a string")
        try:
            if type(labels) is not list:
                raise AttributeError
            cleaned = _clean(path, number, labels)  # .strip() of a non-string: AttributeError
        except AttributeError:
            raise MlfsicError(f"{path}:{number}: {labels_column!r} is {json.dumps(labels, ensure_ascii=False)[:80]}, "
                              'expected a list of strings, e.g. ["cat", "sofa"]') from None
        yield number, file_name, cleaned


def _decode_all(path: Path, lines: list[str], numbers: list[int]) -> list[Any]:
    """One JSON value per line (``numbers``: their line numbers): all decoded at once (C speed), or line by
    line to name the bad one."""
    try:
        values = json.loads("[" + ",".join(lines) + "]")
        if len(values) == len(lines):
            return values
    except (json.JSONDecodeError, RecursionError):
        pass
    values = []
    for number, line in zip(numbers, lines):
        try:
            values.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise MlfsicError(f"{path}:{number}: malformed JSON ({error.msg}, column {error.colno})") from None
    return values


def _csv_rows(path: Path, text: str, file_column: str, labels_column: str) -> Iterator[Row]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise MlfsicError(f"{path}:1: empty file; expected a header naming {file_column!r} and {labels_column!r}") \
            from None
    except csv.Error as error:
        raise MlfsicError(f"{path}:1: malformed CSV ({error})") from None
    columns = [name.strip() for name in header]
    for key in (file_column, labels_column):
        if key not in columns:
            raise MlfsicError(f"{path}:1: no column {key!r} in the header ({', '.join(columns)}); "
                              f"dataset.{_key_option(key, file_column)} names another")
    file_at, labels_at = columns.index(file_column), columns.index(labels_column)
    end = 1  # the line the previous record ended on
    total = text.count("\n")
    bar = tqdm(total=total, desc=f"reading {path.name}", unit=" rows", disable=None if total > PROGRESS_ROWS else True,
               file=sys.stderr, mininterval=0.5)
    with bar:
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as error:
                raise MlfsicError(f"{path}:{end + 1}: malformed CSV ({error})") from None
            number, end = end + 1, reader.line_num
            bar.update(1)
            if not fields or not any(field.strip() for field in fields):
                continue
            if len(fields) > len(columns):
                raise MlfsicError(f"{path}:{number}: {len(fields)} fields but the header has {len(columns)} "
                                  "(quote a cell holding a comma)")
            if len(fields) <= max(file_at, labels_at):
                missing = columns[max(file_at, labels_at)]
                raise MlfsicError(f"{path}:{number}: no value for column {missing!r} ({len(fields)} fields, "
                                  f"the header has {len(columns)})")
            cell = fields[labels_at]
            labels = split_labels(cell) if cell.strip() else []
            yield number, fields[file_at], _clean(path, number, labels)


def _key_option(key: str, file_column: str) -> str:
    return "file_column" if key == file_column else "labels_column"


def _clean(path: Path, number: int, labels: list[str]) -> tuple[str, ...]:
    """Labels stripped, repeats dropped (first order kept); an empty or whitespace-only label is an error."""
    stripped = [label.strip() for label in labels]
    if not all(stripped):
        label = labels[stripped.index("")]
        what = "an empty label" if not label else f"a label that is only whitespace ({label!r})"
        raise MlfsicError(f"{path}:{number}: {what}")
    return tuple(dict.fromkeys(stripped)) if len(stripped) > 1 else tuple(stripped)


def _collect(path: Path, rows: Iterator[Row]) -> tuple[list[str], list[tuple[str, ...]], list[int], int]:
    """Files (first-row order), their labels and first lines, and how many rows repeated an image."""
    first: dict[str, int] = {}  # file -> index
    files: list[str] = []
    label_sets: list[tuple[str, ...]] = []
    lines: list[int] = []
    duplicates = 0
    for number, raw_name, labels in rows:
        name = _file_name(path, number, raw_name)
        index = first.get(name)
        if index is None:
            first[name] = len(files)
            files.append(name)
            label_sets.append(labels)
            lines.append(number)
        elif set(label_sets[index]) != set(labels):
            raise MlfsicError(f"{path}:{number}: image {name} is listed again with different labels "
                              f"(first at line {lines[index]})")
        else:
            duplicates += 1
    return files, label_sets, lines, duplicates


def _file_name(path: Path, number: int, raw: str) -> str:
    """A file name relative to the root, normalised (``./a.png`` -> ``a.png``); one leaving the root is an error."""
    name = raw.strip()
    if not name:
        raise MlfsicError(f"{path}:{number}: empty file name")
    probe = "/" + name
    if "/." not in probe and "//" not in probe and not name.endswith("/"):
        return name  # no empty, "." or ".." part: nothing to normalise (the common case, kept fast)
    normal = posixpath.normpath(name)
    if normal.startswith(("/", "../")) or normal in ("..", "."):
        raise MlfsicError(f"{path}:{number}: file name {raw!r} is not a path inside dataset.root")
    return normal


def _multi_hot(label_sets: list[tuple[str, ...]], label_names: list[str]) -> np.ndarray:
    column = {name: index for index, name in enumerate(label_names)}
    counts = np.fromiter(map(len, label_sets), dtype=np.int64, count=len(label_sets))
    rows = np.repeat(np.arange(len(label_sets), dtype=np.int64), counts)
    columns = np.fromiter(map(column.__getitem__, itertools.chain.from_iterable(label_sets)), dtype=np.int64,
                          count=int(counts.sum()))
    targets = np.zeros((len(label_sets), len(label_names)), dtype=bool)
    targets[rows, columns] = True
    return targets
