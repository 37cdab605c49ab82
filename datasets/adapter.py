"""Shared pieces of the adapters that read published datasets from disk (VOC, NUS-WIDE, iMaterialist).

Each adapter reads its dataset as distributed, checks every file it names up front and returns a
``harness.protocol.data.Dataset``. What they share lives here:

``Digest``             sha256 over every annotation file read (path and bytes) and the options that change
                       the targets, so caches keyed on ``Dataset.annotation_sha256`` follow the content.
``read_bytes`` / ``read_lines``  one-line ``MlfsicError`` naming the file (and line) at fault.
``LabelTable``         image rows collected from several sources; an image listed twice with different
                       labels is an error naming both places.
``check_images``       which listed image files are missing (an error, or dropped with ``missing_images: drop``).
``summarize`` / ``format_summary``  the printable validation report: images, labels, images per split after
                       the strict rule (``harness.protocol.data.split_pool``), missing files, split provenance;
                       with a K + Q floor (``mlfsic data check``) images per label, labels below the floor,
                       duplicate rows.
``unreadable_images`` / ``check_problems``  what makes ``mlfsic data check`` fail.

Nothing here decodes pixels (``unreadable_images`` opens image headers) or writes files.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlfsic.harness.protocol.data import SPLITS, Dataset, split_pool
from mlfsic.harness.errors import MlfsicError, invalid_value
from mlfsic.harness.protocol.splits import split_path

MISSING_IMAGE_MODES = ("error", "drop")
FEW_IMAGES = 10  # a split label with fewer images than this in its pool is listed in the summary


@dataclass(frozen=True)
class Loaded:
    """An adapter's result: the dataset and what the summary should say about how it was read."""

    dataset: Dataset
    notes: tuple[str, ...] = ()
    sources: tuple[tuple[str, int], ...] = ()  # (annotation source, images it lists)
    missing_images: int = 0  # dropped with missing_images: drop (with "error" any missing image raises)
    duplicate_rows: int = 0  # rows that listed an image again with the same labels (kept once)
    missing_examples: tuple[str, ...] = ()  # a few of the dropped files, with where they were listed


class Digest:
    """sha256 over (relative path, size, bytes) of each file read, then the options that change the targets."""

    def __init__(self, root: Path, adapter: str):
        self._root = Path(root)
        self._hash = hashlib.sha256(f"mlfsic-disk-adapter:{adapter}\n".encode())

    def add_file(self, path: Path, data: bytes) -> None:
        try:
            name = Path(path).relative_to(self._root).as_posix()
        except ValueError:
            name = Path(path).name
        self._hash.update(f"file:{name}:{len(data)}\n".encode())
        self._hash.update(data)

    def add_options(self, options: Mapping[str, Any]) -> None:
        self._hash.update(("options:" + json.dumps(options, sort_keys=True, default=str) + "\n").encode())

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def read_bytes(path: Path, what: str = "annotation file") -> bytes:
    path = Path(path)
    if not path.is_file():
        raise MlfsicError(f"{what} not found: {path}")
    try:
        return path.read_bytes()
    except OSError as error:
        raise MlfsicError(f"cannot read {what} {path}: {error.strerror or error}") from None


def decode_text(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise MlfsicError(f"{path}:{line}: not UTF-8 text (byte 0x{data[error.start]:02x})") from None


def read_lines(path: Path, digest: Digest | None, what: str = "annotation file") -> list[str]:
    """The file's lines, right-stripped (Windows line ends allowed); counted into ``digest``."""
    data = read_bytes(path, what)
    if digest is not None:
        digest.add_file(path, data)
    return [line.rstrip() for line in decode_text(path, data).splitlines()]


def read_json(path: Path, digest: Digest | None, what: str = "annotation file") -> Any:
    data = read_bytes(path, what)
    if digest is not None:
        digest.add_file(path, data)
    try:
        return json.loads(decode_text(path, data))
    except json.JSONDecodeError as error:
        raise MlfsicError(f"{path}:{error.lineno}: malformed JSON ({error.msg}, column {error.colno})") from None


@dataclass
class LabelTable:
    """Rows (image id -> file name, label set, where it was read) gathered from one or more sources."""

    rows: dict[int, tuple[str, frozenset[int], str]] = field(default_factory=dict)
    duplicates: int = 0  # images listed again with the same labels (kept once)

    def add(self, image_id: int, file_name: str, labels: Iterable[int], where: str) -> None:
        labels = frozenset(labels)
        previous = self.rows.get(image_id)
        if previous is None:
            self.rows[image_id] = (file_name, labels, where)
            return
        if previous[0] != file_name:
            raise MlfsicError(f"{where}: image id {image_id} ({file_name}) is already used by {previous[0]} "
                              f"({previous[2]}); image ids must be unique")
        if previous[1] != labels:
            raise MlfsicError(f"{where}: image {file_name} is listed again with different labels "
                              f"(first at {previous[2]})")
        self.duplicates += 1

    def __len__(self) -> int:
        return len(self.rows)


def check_images(image_root: Path, file_names: Sequence[str], where: Callable[[int], str], mode: str) -> np.ndarray:
    """Mask of the listed images whose file exists; with ``mode == "error"`` a missing one raises.

    ``where(i)`` names the annotation source (file:line) that listed image ``i`` (the error names the first).
    """
    if mode not in MISSING_IMAGE_MODES:
        raise MlfsicError(f"missing_images={mode!r}: expected one of {', '.join(MISSING_IMAGE_MODES)}")
    if not Path(image_root).is_dir():
        raise MlfsicError(f"image folder not found: {image_root}")
    root = os.fspath(image_root)
    present = np.fromiter((os.path.isfile(os.path.join(root, name)) for name in file_names), dtype=bool,
                          count=len(file_names))
    if mode == "error" and not present.all():
        missing = np.flatnonzero(~present)
        first = int(missing[0])
        raise MlfsicError(f"{len(missing)} of {len(file_names)} images are missing, first "
                          f"{Path(image_root) / file_names[first]} (listed in {where(first)}); "
                          f"missing_images=drop leaves them out")
    return present


def build_dataset(name: str, image_root: Path, image_ids: np.ndarray, file_names: Sequence[str],
                  label_names: Sequence[str], targets: np.ndarray, digest: Digest, check: bool, missing_images: str,
                  where: Callable[[int], str]) -> tuple[Dataset, int]:
    """The ``Dataset`` (rows sorted by image id) and how many images were dropped as missing.

    Image files are checked when ``check`` is true, and always with ``missing_images == "drop"``: then the
    files decide which images exist, so every process that rebuilds the dataset must look. Dropped files
    enter the digest.
    """
    if missing_images not in MISSING_IMAGE_MODES:
        raise MlfsicError(f"missing_images={missing_images!r}: expected one of {', '.join(MISSING_IMAGE_MODES)}")
    image_ids = np.asarray(image_ids, dtype=np.int64)
    if len(np.unique(image_ids)) != len(image_ids):
        raise MlfsicError(f"dataset {name!r}: image ids are not unique")  # adapters check this with context first
    dropped = 0
    if check or missing_images == "drop":
        present = check_images(image_root, file_names, where, missing_images)
        if not present.all():
            dropped = int((~present).sum())
            digest.add_options({"dropped_missing": [f for f, p in zip(file_names, present.tolist()) if not p]})
            image_ids, targets = image_ids[present], targets[present]
            file_names = [f for f, p in zip(file_names, present.tolist()) if p]
    order = np.argsort(image_ids, kind="stable")
    dataset = Dataset(name=name, image_root=Path(image_root), image_ids=image_ids[order].copy(),
                      file_names=tuple(file_names[i] for i in order.tolist()), label_names=tuple(label_names),
                      targets=np.ascontiguousarray(targets[order], dtype=bool), annotation_sha256=digest.hexdigest())
    return dataset, dropped


def finish(name: str, image_root: Path, table: LabelTable, label_names: Sequence[str], digest: Digest,
           check: bool, missing_images: str) -> tuple[Dataset, int]:
    """``build_dataset`` of a ``LabelTable``'s rows."""
    order = sorted(table.rows)
    targets = np.zeros((len(order), len(label_names)), dtype=bool)
    for row, image_id in enumerate(order):
        labels = table.rows[image_id][1]
        if labels:
            targets[row, sorted(labels)] = True
    return build_dataset(name, image_root, np.array(order, dtype=np.int64), [table.rows[i][0] for i in order],
                         label_names, targets, digest, check, missing_images, lambda i: table.rows[order[i]][2])


_BYTE_KIND = np.zeros(256, dtype=np.uint8)
_BYTE_KIND[[9, 10, 13, 32]] = 1
_BYTE_KIND[ord("0")] = 2
_BYTE_KIND[ord("1")] = 3


def read_binary_matrix(path: Path, digest: Digest | None, n_rows: int, n_cols: int, rows_from: str,
                       chunk_bytes: int = 1 << 25) -> np.ndarray:
    """A text file of ``n_rows`` lines of ``n_cols`` whitespace-separated 0/1 values, as a bool matrix.

    NUS-WIDE's ``Labels_<concept>.txt`` (one value a line) and ``AllTags1k.txt`` (1000 a line, ~0.5 GB) are
    read this way, vectorised in chunks of whole lines. Blank lines are allowed only at the end. Any other
    deviation is an error naming the file and line; ``rows_from`` names the file that fixes ``n_rows``.
    """
    data = read_bytes(path)
    if digest is not None:
        digest.add_file(path, data)
    buffer = np.frombuffer(data, dtype=np.uint8)
    out = np.zeros((n_rows, n_cols), dtype=bool)
    row = 0
    line_base = 1  # line number of the chunk's first line
    blank_line = 0  # first blank line seen (0: none); a value line after it is an error
    position = 0
    while position < len(buffer):
        end = min(position + chunk_bytes, len(buffer))
        if end < len(buffer):
            newline = data.rfind(b"\n", position, end)
            if newline < 0:
                newline = data.find(b"\n", end)
            end = len(buffer) if newline < 0 else newline + 1
        chunk = buffer[position:end]
        newlines = np.flatnonzero(chunk == 10)

        def line_of(offset: int, line_base: int = line_base, newlines: np.ndarray = newlines) -> int:
            return line_base + int(np.searchsorted(newlines, offset, side="left"))

        kind = _BYTE_KIND[chunk]  # 0 other, 1 whitespace, 2 "0", 3 "1"
        digit = kind >= 2
        if not kind.all():
            offset = int(np.argmin(kind))
            raise MlfsicError(f"{path}:{line_of(offset)}: expected 0/1 values, found {chr(chunk[offset])!r}")
        glued = digit[:-1] & digit[1:]
        if glued.any():
            offset = int(np.argmax(glued))
            raise MlfsicError(f"{path}:{line_of(offset)}: expected whitespace-separated 0/1 values")
        starts = np.concatenate([[0], newlines + 1])
        starts = starts[starts < len(chunk)]
        counts = np.add.reduceat(digit, starts, dtype=np.int64) if len(starts) else np.zeros(0, dtype=np.int64)
        wrong = np.flatnonzero((counts != 0) & (counts != n_cols))
        if len(wrong):
            index = int(wrong[0])
            raise MlfsicError(f"{path}:{line_base + index}: {counts[index]} values, expected {n_cols}")
        blank = np.flatnonzero(counts == 0)
        filled = np.flatnonzero(counts == n_cols)
        if len(filled):
            first_blank = blank_line or (line_base + int(blank[0]) if len(blank) and blank[0] < filled[-1] else 0)
            if first_blank:
                raise MlfsicError(f"{path}:{first_blank}: blank line (rows follow the lines of {rows_from})")
            if row + len(filled) > n_rows:
                raise MlfsicError(f"{path}: more than {n_rows} lines of values; {rows_from} lists {n_rows} images")
            out[row:row + len(filled)] = (kind[digit] == 3).reshape(len(filled), n_cols)
            row += len(filled)
        if len(blank) and not blank_line:
            blank_line = line_base + int(blank[0])
        line_base += len(newlines)
        position = end
    if row != n_rows:
        raise MlfsicError(f"{path}: {row} lines of values, but {rows_from} lists {n_rows} images (truncated?)")
    return out


# ------------------------------------------------------------------------------------------ options
# An adapter's own keys stay an open mapping in the run config's schema (harness/config_schema.py: ``dataset`` is
# ``Any``, as plug-ins add adapters); these read them, and a bad value is the same one line as a schema key's
# (``invalid_value``: ``dataset.<key>=<value>: <problem>; expected <what>``).
def option(cfg: Mapping[str, Any], key: str, default: Any = None) -> Any:
    value = cfg.get(key, default) if hasattr(cfg, "get") else default
    return default if value is None and default is not None else value


def str_list(cfg: Mapping[str, Any], key: str, default: Sequence[str]) -> list[str]:
    value = option(cfg, key, None)
    if value is None:
        return list(default)
    if isinstance(value, str):
        return [value]
    try:
        items = list(value)
    except TypeError:
        raise invalid_value(f"dataset.{key}", value, "a list of strings", "not a list") from None
    if not items or not all(isinstance(item, str) and item for item in items):
        raise invalid_value(f"dataset.{key}", items, "a non-empty list of strings")
    return items


def bool_option(cfg: Mapping[str, Any], key: str, default: bool) -> bool:
    value = option(cfg, key, None)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise invalid_value(f"dataset.{key}", value, "true or false", f"{value!r} is not a boolean")


def root_of(cfg: Mapping[str, Any], what: str) -> Path:
    value = option(cfg, "root", None)
    if not isinstance(value, str) or not value or value == "???":
        raise MlfsicError(f"dataset.root is not set; expected {what}, e.g. root=/data/... (dataset.root=...)")
    root = Path(value).expanduser()
    if not root.is_dir():
        raise MlfsicError(f"dataset.root={value}: folder not found; expected {what}")
    return root


# ------------------------------------------------------------------------------------------ summary
@dataclass(frozen=True)
class Prepared:
    """What ``mlfsic data prepare NAME`` reports: the checked dataset, its label split and the summary."""

    dataset: Dataset
    split: dict[str, list[str]]
    summary: dict[str, Any]

    def text(self) -> str:
        return format_summary(self.summary)


def split_file_meta(split_file: str | os.PathLike[str]) -> dict[str, Any]:
    """``provisional`` and ``note`` of a split file (``configs/splits/<file>`` or a path); {} if unreadable."""
    path = split_path(split_file)
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(raw, dict):
        return {}
    made_by = raw.get("made_by") if isinstance(raw.get("made_by"), dict) else {}
    return {"path": str(path), "provisional": bool(raw.get("provisional", False)), "note": raw.get("note"),
            "made_for": made_by.get("data_sha256")}


def summarize(loaded: Loaded, split: Mapping[str, Sequence[str]], split_file: str | None = None,
              floor: int | None = None) -> dict[str, Any]:
    """Counts a user checks before a sweep: images, labels, images per split after the strict rule.

    With ``floor`` (K + Q of the largest setting, ``mlfsic data check``) also the images of every label (in
    the whole data and in its split's pool), the labels below the floor per split, duplicate rows and the
    missing files left out.
    """
    dataset = loaded.dataset
    labels_per_image = dataset.targets.sum(axis=1)
    per_split: dict[str, int] = {}
    few: dict[str, list[str]] = {}
    in_pool: dict[str, int] = {}
    assigned = np.zeros(len(dataset.image_ids), dtype=bool)
    for name in SPLITS:
        labels = list(split.get(name, []))
        pool = split_pool(dataset, name, labels)
        per_split[name] = len(pool)
        counts = pool.targets.sum(axis=0) if len(labels) else np.zeros(0, dtype=int)
        few[name] = [f"{label} ({int(n)})" for label, n in zip(labels, counts.tolist()) if n < FEW_IMAGES]
        in_pool.update(zip(labels, (int(n) for n in counts.tolist())))
        if labels:
            assigned |= np.isin(dataset.image_ids, pool.image_ids)
    meta = split_file_meta(split_file) if split_file else {}
    checked: dict[str, Any] = {}
    if floor is not None:
        checked = {
            "floor": int(floor),
            "images_per_label": dict(zip(dataset.label_names, (int(n) for n in dataset.targets.sum(axis=0)))),
            "images_per_label_in_split": in_pool,
            "labels_below_floor": {name: [f"{label} ({in_pool[label]})" for label in split.get(name, [])
                                          if in_pool[label] < floor] for name in SPLITS},
            "duplicate_rows": int(loaded.duplicate_rows),
            "missing_examples": list(loaded.missing_examples),
            "split_made_for": meta.get("made_for"),
        }
    return {
        "dataset": dataset.name,
        "image_root": str(dataset.image_root),
        "n_images": int(len(dataset.image_ids)),
        "n_labels": int(len(dataset.label_names)),
        "images_without_labels": int((labels_per_image == 0).sum()),
        "mean_labels_per_labelled_image": float(labels_per_image[labels_per_image > 0].mean())
        if (labels_per_image > 0).any() else 0.0,
        "sources": [list(s) for s in loaded.sources],
        "missing_images_dropped": int(loaded.missing_images),
        "split_file": meta.get("path", split_file),
        "split_provisional": bool(meta.get("provisional", False)),
        "split_note": meta.get("note"),
        "split_labels": {name: len(split.get(name, [])) for name in SPLITS},
        "images_per_split": per_split,
        "images_in_no_split": int((~assigned & (labels_per_image > 0)).sum()),
        "labels_with_few_images": few,
        "notes": list(loaded.notes),
        "annotation_sha256": dataset.annotation_sha256,
        **checked,
    }


def format_summary(summary: Mapping[str, Any]) -> str:
    """The report ``mlfsic data prepare NAME`` prints."""
    lines = [f"{summary['dataset']}: {summary['n_images']} images, {summary['n_labels']} labels "
             f"(images under {summary['image_root']})"]
    if summary["sources"]:
        lines.append("  read: " + ", ".join(f"{source} ({n} images)" for source, n in summary["sources"]))
    lines.append("  image files: all present" if not summary["missing_images_dropped"] else
                 f"  image files: {summary['missing_images_dropped']} missing, left out (missing_images=drop)")
    lines.append(f"  labels per labelled image: {summary['mean_labels_per_labelled_image']:.2f}; "
                 f"images without labels: {summary['images_without_labels']}")
    provisional = " PROVISIONAL" if summary["split_provisional"] else ""
    counts = summary["split_labels"]
    if not any(counts.values()):
        lines.append("  label split: none yet")
    else:
        lines.append(f"  label split{provisional} {summary['split_file']}: "
                     + " / ".join(f"{name} {counts[name]}" for name in SPLITS) + " labels")
        if summary.get("split_note"):
            lines.append(f"    note: {summary['split_note']}")
        per_split = summary["images_per_split"]
        lines.append("  images per split (an image is in a split only if all its labels are): "
                     + ", ".join(f"{name} {per_split[name]}" for name in SPLITS)
                     + f"; labelled images in no split {summary['images_in_no_split']}")
    for name in SPLITS:
        few = summary["labels_with_few_images"][name]
        if few:
            shown = ", ".join(few[:12]) + (f", ... ({len(few)} in all)" if len(few) > 12 else "")
            lines.append(f"  {name} labels with fewer than {FEW_IMAGES} images in the {name} pool: {shown}")
    if "floor" in summary:
        lines.extend(_check_lines(summary))
    for note in summary["notes"]:
        lines.append(f"  {note}")
    lines.append(f"  annotation sha256 {summary['annotation_sha256'][:16]}")
    return "\n".join(lines)


SHOWN_LABELS = 40  # a check lists every label up to this many, else the ones with the fewest images


def _check_lines(summary: Mapping[str, Any]) -> list[str]:
    """The lines ``mlfsic data check`` adds: images per label, labels below the floor, duplicates."""
    floor = summary["floor"]
    totals = summary["images_per_label"]
    in_split = summary["images_per_label_in_split"]
    order = sorted(totals, key=lambda label: (in_split.get(label, totals[label]), totals[label], label))
    shown = order if len(order) <= SHOWN_LABELS else order[:SHOWN_LABELS // 2]
    head = "images per label" + (" (in all / in its split's pool)" if in_split else "")
    if len(shown) < len(order):
        head += f", the {len(shown)} with the fewest of {len(order)}"
    cells = [f"{label} {totals[label]}" + (f"/{in_split[label]}" if label in in_split else "") for label in shown]
    lines = [f"  {head}: " + ", ".join(cells)]
    if in_split:
        for name in SPLITS:
            below = summary["labels_below_floor"][name]
            if below:
                kind = "error" if name != "base" else "note"
                lines.append(f"  {kind}: {name} labels below K + Q = {floor} images in the {name} pool: "
                             + ", ".join(below[:12]) + (f", ... ({len(below)} in all)" if len(below) > 12 else ""))
    else:
        rare = [label for label in order if totals[label] < floor]
        if rare:
            lines.append(f"  labels with fewer than K + Q = {floor} images in all (base labels only): "
                         + ", ".join(rare[:12]) + (f", ... ({len(rare)} in all)" if len(rare) > 12 else ""))
    lines.append(f"  duplicate rows (same image, same labels, kept once): {summary['duplicate_rows']}")
    for example in summary["missing_examples"]:
        lines.append(f"    missing: {example}")
    made_for = summary.get("split_made_for")
    if made_for and made_for != summary["annotation_sha256"]:
        lines.append(f"  note: the split file was made for other data (sha256 {made_for[:16]}); the data changed "
                     "since `mlfsic data split`")
    return lines


def unreadable_images(dataset: Dataset, progress: bool = True) -> list[str]:
    """Files that PIL cannot open as an image (header only: a truncated body is not detected), with why."""
    from PIL import Image, UnidentifiedImageError
    from tqdm import tqdm

    bad = []
    for name in tqdm(dataset.file_names, desc="opening images", unit=" images", disable=None if progress else True,
                     mininterval=0.5):
        path = Path(dataset.image_root) / name
        try:
            with Image.open(path) as image:
                image.size  # noqa: B018 - the header is read by open; size is its result
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as error:
            bad.append(f"{path} ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})")
    return bad


def check_problems(summary: Mapping[str, Any], unreadable: Sequence[str]) -> list[str]:
    """What makes ``mlfsic data check`` fail: missing or unreadable files, val/novel labels below the floor."""
    problems = []
    if summary["missing_images_dropped"]:
        first = summary.get("missing_examples") or []
        problems.append(f"{summary['missing_images_dropped']} image files are missing"
                        + (f", first {first[0]}" if first else ""))
    if unreadable:
        problems.append(f"{len(unreadable)} image files cannot be opened, first {unreadable[0]}")
    for name in ("val", "test"):
        below = summary.get("labels_below_floor", {}).get(name, [])
        if below:
            problems.append(f"{len(below)} {name} labels have fewer than K + Q = {summary['floor']} images in the "
                            f"{name} pool, first {below[0]}")
    return problems
