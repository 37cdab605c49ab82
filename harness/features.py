"""The feature store (DESIGN 3, 7): each image goes through the backbone once, shared by every method.

Layout, content-addressed by (backbone_id, annotation file sha256, image id)::

    <store_root>/<backbone_id>/<annotation_sha256>/
        shards/<shard_key>/ids.npy         (n,) int64 image ids, row order of the arrays
        shards/<shard_key>/global.npy      (n, D) float32
        shards/<shard_key>/local.npy       (n, L, C) float16 (half the bytes; ample precision for features)
        shards/<shard_key>/meta.json       shapes, dtypes, backbone kind
        forwards/<shard_key>.<token>.json  images this writer pushed through the backbone, and seconds

``shard_key`` is the sha256 of the sorted image ids the shard holds, so the same work always lands in
the same place. A shard is written into a temporary directory beside ``shards/`` and published by one
``os.rename`` of the directory: readers see a complete shard or none. Concurrent writers of the same
shard (a retried Ray task, two sweeps sharing storage) both compute it; the first rename wins and the
later writer discards its copy, which holds the same features (same weights, same images). Each writer
still records its own forward log, so ``forward_passes`` counts every image that really went through
the backbone, duplicates included; a sweep that reuses the store adds zero.

``missing_image_ids`` lists what is not stored yet, ``extract_shard`` computes only that (one Ray task
per shard in the runner) and ``load_features`` memory-maps the shard arrays (``np.load(mmap_mode="r")``)
and gathers rows in the requested order, so a worker touches only the pages of the images it asks for.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mlfsic.harness.backbones import Backbone, image_paths
from mlfsic.harness.data import Dataset, find_rows
from mlfsic.harness.errors import MlfsicError
from mlfsic.harness.io import sha256_text, write_json_atomic


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
        raise MlfsicError(f"corrupt feature shard {shard}: {error}") from None
    return ids, global_f, local_f


def stored_image_ids(store_root: Path, backbone_id: str, annotation_sha256: str) -> np.ndarray:
    """Every image id with stored features (sorted, unique)."""
    directory = store_dir(store_root, backbone_id, annotation_sha256)
    parts = [_open_shard(shard, False)[0] for shard in _shard_dirs(directory)]
    if not parts:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.concatenate(parts))


def missing_image_ids(store_root: Path, backbone_id: str, annotation_sha256: str, image_ids: np.ndarray) -> np.ndarray:
    """The ids of ``image_ids`` (unique, first-seen order) whose features are not stored yet."""
    wanted = _unique_in_order(np.asarray(image_ids, dtype=np.int64))
    stored = stored_image_ids(store_root, backbone_id, annotation_sha256)
    return wanted[~np.isin(wanted, stored)]


def load_features(
    store_root: Path, backbone_id: str, annotation_sha256: str, image_ids: np.ndarray, with_local: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """Global features float32 (n, D) and, if ``with_local``, local features float16 (n, L, C), in the
    order of ``image_ids`` (repeats allowed). A missing id is an error naming it and the store."""
    directory = store_dir(store_root, backbone_id, annotation_sha256)
    requested = np.asarray(image_ids, dtype=np.int64).reshape(-1)
    shards = [(shard, *_open_shard(shard, with_local)) for shard in _shard_dirs(directory)]
    if not shards:
        if len(requested) == 0:
            raise MlfsicError(f"no features stored in {directory}")
        raise MlfsicError(f"no features stored in {directory} (first requested image id: {int(requested[0])})")

    global_out = np.empty((len(requested), shards[0][2].shape[1]), dtype=np.float32)
    local_out = None
    if with_local:
        _, _, _, first_local = shards[0]
        local_out = np.empty((len(requested), *first_local.shape[1:]), dtype=first_local.dtype)
    found = np.zeros(len(requested), dtype=bool)
    for shard, ids, global_f, local_f in shards:
        if found.all():
            break
        shard_rows, in_shard = find_rows(ids, requested)
        hit = in_shard & ~found
        if not hit.any():
            continue
        rows = shard_rows[hit]
        # Fancy indexing a memmap reads only those rows; sort them for sequential access.
        sorted_rows, inverse = np.unique(rows, return_inverse=True)
        global_out[hit] = np.asarray(global_f[sorted_rows])[inverse]
        if local_out is not None and local_f is not None:
            local_out[hit] = np.asarray(local_f[sorted_rows])[inverse]
        found |= hit
    if not found.all():
        missing = requested[~found]
        raise MlfsicError(
            f"features missing for {len(missing)} image(s) in {directory} (first: image id {int(missing[0])}); "
            "run extraction first"
        )
    return global_out, local_out


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
) -> ShardInfo:
    """Compute and store the features of those ``image_ids`` that are not stored yet (one shard)."""
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
    with tqdm(total=len(todo), desc=f"features {backbone.kind}", unit="img", disable=not progress) as bar:
        for start in range(0, len(todo), backbone.batch_size):
            stop = min(start + backbone.batch_size, len(todo))
            batch_global, batch_local = backbone.embed(backbone.load_images(paths[start:stop]))
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
        meta = {"n": len(todo), "global": list(global_f.shape[1:]), "local": list(local_f.shape[1:]),
                "global_dtype": "float32", "local_dtype": "float16", "backbone_kind": backbone.kind,
                "image_size": backbone.image_size}
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
