"""The feature store (docs/architecture.md §3, 7): each image goes through the backbone once, shared by every method.

Layout, content-addressed by (backbone_id, annotation file sha256, image id)::

    <store_root>/<backbone_id>/<annotation_sha256>/
        shards/<shard_key>/ids.npy         (n,) int64 image ids, row order of the arrays
        shards/<shard_key>/global.npy      (n, D) float32
        shards/<shard_key>/local.npy       (n, L, C) float16 (half the bytes; ample precision for features)
        shards/<shard_key>/meta.json       shapes, dtypes, backbone kind, size and sha256 of each array file
        shards/<shard_key>/verified.json   (size, mtime) of the files when their sha256 was last checked
        forwards/<shard_key>.<token>.json  images this writer pushed through the backbone, and seconds

``shard_key`` is the sha256 of the sorted image ids the shard holds, so the same work always lands in
the same place. A shard is written into a temporary directory beside ``shards/`` and published by one
``os.rename`` of the directory: readers see a complete shard or none. Concurrent writers of the same
shard (a retried Ray task, two sweeps sharing storage) both compute it; the first rename wins and the
later writer discards its copy, which holds the same features (same weights, same images). Each writer
still records its own forward log, so ``forward_passes`` counts every image that really went through
the backbone, duplicates included; a sweep that reuses the store adds zero.

``missing_image_ids`` lists what is not stored yet, ``extract_shard`` computes only that (one Ray task
per shard in the runner, whose images ``resources.num_cpus`` - 1 worker processes decode while the backbone
runs: ``batches.decoded_batches``) and ``load_features`` memory-maps the shard arrays
(``np.load(mmap_mode="r")``) and gathers rows in the requested order, so a worker touches only the pages of
the images it asks for.

A shard is checked when it is opened: its arrays must parse and have the sizes meta.json records (every
reader, a few ``stat`` calls); the sweep's driver, before extraction, also checks their sha256 (again only
when a file's size or mtime changed since the last check, ``verified.json``). A shard that fails the
driver's check is dropped with one line and its images are extracted again; one that fails a worker's
read (damaged during the sweep) is a one-line error naming it (re-running the sweep rebuilds it).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mlfsic.harness.backbones.batches import decoded_batches
from mlfsic.harness.backbones.kinds import Backbone
from mlfsic.harness.protocol.data import Dataset
from mlfsic.harness.errors import MlfsicError
from mlfsic.harness.backbones.images import image_paths
from mlfsic.harness.io import file_lock, sha256_file, sha256_text, write_json_atomic


@dataclass(frozen=True)
class ShardInfo:
    """What one ``extract_shard`` call did (small: this is what a Ray task returns)."""

    shard_dir: Path | None  # None when nothing was missing
    n_requested: int
    n_computed: int  # images pushed through the backbone by this call
    seconds: float
    published: bool  # False when another writer published the same shard first (or nothing to do)

    @property
    def images_per_second(self) -> float:
        return self.n_computed / self.seconds if self.seconds > 0 else 0.0


def store_dir(store_root: Path, backbone_id: str, annotation_sha256: str) -> Path:
    return Path(store_root) / backbone_id / annotation_sha256


def shard_key(image_ids: np.ndarray) -> str:
    return sha256_text(",".join(str(i) for i in np.sort(np.asarray(image_ids, dtype=np.int64)).tolist()))


# ----------------------------------------------------------------------------------------- reading
def _shard_dirs(directory: Path) -> list[Path]:
    shards = directory / "shards"
    if not shards.is_dir():
        return []
    return sorted(p for p in shards.iterdir() if p.is_dir() and not p.name.startswith("."))


@functools.lru_cache(maxsize=256)
def _open_shard(shard: Path, with_local: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """ids (in memory), global and local (memory-mapped). Shards are immutable once published."""
    try:
        ids = np.load(shard / "ids.npy")
        global_f = np.load(shard / "global.npy", mmap_mode="r")
        local_f = np.load(shard / "local.npy", mmap_mode="r") if with_local else None
    except (OSError, ValueError) as error:
        raise MlfsicError(f"corrupt feature shard {shard}: {error}; {_REBUILD}") from None
    return ids, global_f, local_f


SHARD_ARRAYS = ("ids.npy", "global.npy", "local.npy")
_REBUILD = "re-run the same `mlfsic run` command: it drops the shard and extracts its images again"


def shard_problem(shard: Path, full: bool = False) -> str | None:
    """Why a published shard cannot be read as written, or None: unreadable meta.json, a missing array, a
    size other than meta.json records (shards written before sizes were recorded: an array numpy cannot
    map), and with ``full`` a sha256 other than recorded (checked again only after a file's size or mtime
    changed, ``verified.json``)."""
    try:
        meta = json.loads((shard / "meta.json").read_text())
        files = meta.get("files")
    except (OSError, ValueError, AttributeError) as error:
        return f"has no readable meta.json ({type(error).__name__})"
    try:
        stats = {name: (shard / name).stat() for name in SHARD_ARRAYS}
    except OSError as error:
        return f"lacks {Path(str(error.filename)).name}"
    if not isinstance(files, dict):  # written before sizes were recorded: the arrays must at least map
        try:
            ids = np.load(shard / "ids.npy")
            rows = [np.load(shard / name, mmap_mode="r").shape[0] for name in ("global.npy", "local.npy")]
        except (OSError, ValueError) as error:
            return f"has an unreadable array ({error})"
        return None if rows == [len(ids), len(ids)] else "has arrays of different lengths"
    try:
        recorded = {name: (int(files[name]["size"]), str(files[name]["sha256"])) for name in SHARD_ARRAYS}
    except (KeyError, TypeError, ValueError):
        return "has a meta.json without the size and sha256 of each array"
    for name in SHARD_ARRAYS:
        expected = recorded[name][0]
        if stats[name].st_size != expected:
            return f"has {name} of {stats[name].st_size} bytes where meta.json records {expected} (truncated?)"
    if not full:
        return None
    seen = {name: [stats[name].st_size, stats[name].st_mtime_ns] for name in SHARD_ARRAYS}
    try:
        if json.loads((shard / "verified.json").read_text()) == seen:
            return None
    except (OSError, ValueError):
        pass
    for name in SHARD_ARRAYS:
        if sha256_file(shard / name) != recorded[name][1]:
            return f"has {name} whose sha256 differs from meta.json's (modified?)"
    try:
        write_json_atomic(shard / "verified.json", seen)
    except OSError:  # a read-only store: checked again next time
        pass
    return None


def drop_damaged_shards(store_root: Path, backbone_id: str, annotation_sha256: str) -> list[str]:
    """Check every shard of a store in full (``shard_problem``) and remove those that fail, so that their
    images count as missing and are extracted again; one printed line per removed shard (returned too).
    Called through ``missing_image_ids``, which the sweep runs under the extraction lock."""
    directory = store_dir(store_root, backbone_id, annotation_sha256)
    lines = []
    for shard in _shard_dirs(directory):
        problem = shard_problem(shard, full=True)
        if problem is None:
            continue
        try:
            n_images: object = int(json.loads((shard / "meta.json").read_text())["n"])
        except (OSError, ValueError, KeyError, TypeError):
            n_images = "its"
        shutil.rmtree(shard, ignore_errors=True)
        line = f"mlfsic: feature shard {shard} {problem}; dropped it, {n_images} images are extracted again"
        print(line, file=sys.stderr, flush=True)
        lines.append(line)
    if lines:
        _open_shard.cache_clear()
        _STORE_INDEX.pop(directory, None)
    return lines


def stored_image_ids(store_root: Path, backbone_id: str, annotation_sha256: str) -> np.ndarray:
    """Every image id with stored features (sorted, unique)."""
    return _store_index(store_dir(store_root, backbone_id, annotation_sha256), rebuild=True).ids


def missing_image_ids(store_root: Path, backbone_id: str, annotation_sha256: str, image_ids: np.ndarray) -> np.ndarray:
    """The ids of ``image_ids`` (unique, first-seen order) whose features are not stored yet; a damaged shard
    is dropped first (``drop_damaged_shards``), so its images count as missing."""
    drop_damaged_shards(store_root, backbone_id, annotation_sha256)
    wanted = _unique_in_order(np.asarray(image_ids, dtype=np.int64))
    stored = stored_image_ids(store_root, backbone_id, annotation_sha256)
    return wanted[~np.isin(wanted, stored)]


def load_features(
    store_root: Path, backbone_id: str, annotation_sha256: str, image_ids: np.ndarray, with_local: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """Global features float32 (n, D) and, if ``with_local``, local features float16 (n, L, C), in the
    order of ``image_ids`` (repeats allowed). A missing id is an error naming it and the store.

    An id stored in several shards (two writers that split the same images differently) is read from
    the first shard in name order. The id -> (shard, row) index of a store is built once per process
    and rebuilt when a shard is published (the ``shards/`` folder's mtime changes) or an id is missing.
    """
    directory = store_dir(store_root, backbone_id, annotation_sha256)
    requested = np.asarray(image_ids, dtype=np.int64).reshape(-1)
    index = _store_index(directory)
    shard_no, rows, found = index.lookup(requested)
    if not found.all():  # a shard published since the index was built, within the mtime's resolution
        index = _store_index(directory, rebuild=True)
        shard_no, rows, found = index.lookup(requested)
    if not index.shards:
        if len(requested) == 0:
            raise MlfsicError(f"no features stored in {directory}")
        raise MlfsicError(f"no features stored in {directory} (first requested image id: {int(requested[0])})")
    if not found.all():
        missing = requested[~found]
        raise MlfsicError(
            f"features missing for {len(missing)} image(s) in {directory} (first: image id {int(missing[0])}); "
            "run extraction first"
        )

    _, first_global, first_local = _open_shard(index.shards[0], with_local)
    global_out = np.empty((len(requested), first_global.shape[1]), dtype=np.float32)
    local_out = None
    if with_local:
        assert first_local is not None
        local_out = np.empty((len(requested), *first_local.shape[1:]), dtype=first_local.dtype)
    for number in np.unique(shard_no):
        hit = shard_no == number
        _, global_f, local_f = _open_shard(index.shards[int(number)], with_local)
        # Fancy indexing a memmap reads only those rows; sort them for sequential access.
        sorted_rows, inverse = np.unique(rows[hit], return_inverse=True)
        global_out[hit] = np.asarray(global_f[sorted_rows])[inverse]
        if local_out is not None and local_f is not None:
            local_out[hit] = np.asarray(local_f[sorted_rows])[inverse]
    return global_out, local_out


@dataclass(frozen=True)
class _StoreIndex:
    """Every stored id of one store folder, sorted, with the shard (first in name order) and row holding it."""

    shards: tuple[Path, ...]
    mtime_ns: int
    ids: np.ndarray  # sorted, unique
    shard_no: np.ndarray
    row: np.ndarray

    def lookup(self, requested: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if len(self.ids) == 0:
            zeros = np.zeros(len(requested), dtype=np.int64)
            return zeros, zeros, np.zeros(len(requested), dtype=bool)
        positions = np.minimum(np.searchsorted(self.ids, requested), len(self.ids) - 1)
        found = self.ids[positions] == requested
        return self.shard_no[positions], self.row[positions], found


_STORE_INDEX: dict[Path, _StoreIndex] = {}


def _store_index(directory: Path, rebuild: bool = False) -> _StoreIndex:
    shards_dir = directory / "shards"
    try:
        mtime_ns = shards_dir.stat().st_mtime_ns
    except OSError:
        mtime_ns = -1
    index = _STORE_INDEX.get(directory)
    if index is not None and index.mtime_ns == mtime_ns and not rebuild:
        return index
    shards = tuple(_shard_dirs(directory))
    for shard in shards:  # a few stat calls each; the driver checks hashes too (``drop_damaged_shards``)
        problem = shard_problem(shard)
        if problem is not None:
            raise MlfsicError(f"feature shard {shard} {problem}; {_REBUILD}")
    ids = [_open_shard(shard, False)[0] for shard in shards]
    if ids:
        all_ids = np.concatenate(ids).astype(np.int64, copy=False)
        shard_no = np.repeat(np.arange(len(ids), dtype=np.int64), [len(part) for part in ids])
        row = np.concatenate([np.arange(len(part), dtype=np.int64) for part in ids])
        unique, first = np.unique(all_ids, return_index=True)  # first occurrence = first shard in name order
        index = _StoreIndex(shards, mtime_ns, unique, shard_no[first], row[first])
    else:
        empty = np.zeros(0, dtype=np.int64)
        index = _StoreIndex(shards, mtime_ns, empty, empty, empty)
    _STORE_INDEX[directory] = index
    return index


@contextmanager
def extraction_lock(store_root: Path, backbone_id: str, annotation_sha256: str) -> Iterator[None]:
    """Held while a process finds the missing images of a store and computes them, so that two sweeps
    sharing a results dir never compute overlapping shards (features of one image from two forward passes
    could differ in the last bit): the second waits and finds nothing missing."""
    with file_lock(store_dir(store_root, backbone_id, annotation_sha256) / ".extract.lock"):
        yield


def forward_passes(store_root: Path, backbone_id: str, annotation_sha256: str) -> int:
    """Images pushed through the backbone for this (backbone, annotation file), over all writers."""
    forwards = store_dir(store_root, backbone_id, annotation_sha256) / "forwards"
    if not forwards.is_dir():
        return 0
    total = 0
    for log in sorted(forwards.glob("*.json")):
        try:
            total += int(json.loads(log.read_text())["images_forwarded"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise MlfsicError(f"corrupt forward log {log}: {error}") from None
    return total


# ----------------------------------------------------------------------------------------- writing
def extract_shard(
    backbone: Backbone,
    dataset: Dataset,
    image_ids: np.ndarray,
    store_root: Path,
    progress: bool = True,
    decode_workers: int = 0,
) -> ShardInfo:
    """Compute and store the features of those ``image_ids`` that are not stored yet (one shard).

    ``decode_workers`` processes decode and resize the images (``batches.decoded_batches``) while the backbone
    runs on the batches before; 0 decodes in this process. The stored features are the same either way."""
    started = time.perf_counter()
    requested = np.asarray(image_ids, dtype=np.int64)
    directory = store_dir(store_root, backbone.backbone_id, dataset.annotation_sha256)
    todo = missing_image_ids(store_root, backbone.backbone_id, dataset.annotation_sha256, requested)
    if len(todo) == 0:
        return ShardInfo(None, len(requested), 0, time.perf_counter() - started, False)
    paths = image_paths(dataset, todo)  # checks every id before any compute

    n_local, n_channels = backbone.local_shape
    global_f = np.empty((len(todo), backbone.global_dim), dtype=np.float32)
    local_f = np.empty((len(todo), n_local, n_channels), dtype=np.float16)
    with (tqdm(total=len(todo), desc=f"features {backbone.kind}", unit="img", disable=not progress) as bar,
          contextlib.closing(decoded_batches(backbone, paths, decode_workers)) as batches):
        for start, stop, images in batches:
            batch_global, batch_local = backbone.embed(images)
            global_f[start:stop] = batch_global
            local_f[start:stop] = batch_local
            bar.update(stop - start)
    seconds = time.perf_counter() - started

    key = shard_key(todo)
    final = directory / "shards" / key
    token = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
    tmp = directory / "shards" / f".tmp-{key[:16]}-{token}"
    tmp.mkdir(parents=True)
    try:
        for name, array in (("ids", todo), ("global", global_f), ("local", local_f)):
            with open(tmp / f"{name}.npy", "wb") as handle:
                np.save(handle, array)
        files = {name: {"size": (tmp / name).stat().st_size, "sha256": sha256_file(tmp / name)} for name in SHARD_ARRAYS}
        meta = {"n": len(todo), "global": list(global_f.shape[1:]), "local": list(local_f.shape[1:]),
                "global_dtype": "float32", "local_dtype": "float16", "backbone_kind": backbone.kind,
                "image_size": backbone.image_size, "files": files}
        (tmp / "meta.json").write_text(json.dumps(meta, sort_keys=True) + "\n")
        published = _publish(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    write_json_atomic(directory / "forwards" / f"{key}.{token}.json",
                      {"images_forwarded": len(todo), "seconds": round(seconds, 3), "published": published})
    return ShardInfo(final, len(requested), len(todo), seconds, published)


def _publish(tmp: Path, final: Path) -> bool:
    """Rename the finished shard directory into place; False if another writer got there first."""
    try:
        os.rename(tmp, final)
    except OSError:
        if (final / "meta.json").is_file():
            return False
        raise
    return True


def _unique_in_order(values: np.ndarray) -> np.ndarray:
    _, first = np.unique(values, return_index=True)
    return values[np.sort(first)]
