"""A synthetic feature store on disk and a benchmark reading it, for tests of what ``fit`` receives from the store.

``write_store`` writes the base, val and novel splits of a ``synthetic_data.World`` as published shards in the
layout of ``harness.sweep.features`` (ids.npy, global.npy float32, local.npy float16, meta.json with each
array's size and sha256), a block of images at a time, so a store of any size is written without holding its
local grids in memory. Each split's images are spread over ``n_shards`` shards in a shuffled order, and the
pool lists them in yet another order, so reading a split gathers rows across shards and out of store order.

``StoreBenchmark`` is the part of ``harness.sweep.benchmark.Benchmark`` that ``harness.sweep.evaluate.fit_method``
reads (``pool``, ``features``, ``label_embeddings`` and what keys a checkpoint), over such a store.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlfsic.harness.io import sha256_file
from mlfsic.harness.protocol.data import LabelledPool
from mlfsic.harness.sweep.features import SHARD_ARRAYS, load_features, shard_key, store_dir
from synthetic_data import World, _images, make_local_grid

BACKBONE_ID = "synthetic-backbone"
ANNOTATION_SHA256 = "synthetic-annotations"
GRID_BLOCK = 250  # images per block while writing local grids (bounds the generator's float64 temporaries)


@dataclass(frozen=True)
class SplitSpec:
    name: str
    columns: np.ndarray  # label columns of the world
    n_images: int


def split_specs(world: World, sizes: dict[str, int], n_val_labels: int) -> list[SplitSpec]:
    """base: the world's base labels but the last ``n_val_labels``; val: those; novel ("test"): the novel labels."""
    n_base = len(world.base_labels) - n_val_labels
    n_all = len(world.base_labels) + len(world.novel_labels)
    columns = {"base": np.arange(n_base), "val": np.arange(n_base, len(world.base_labels)),
               "test": np.arange(len(world.base_labels), n_all)}
    return [SplitSpec(name, columns[name], count) for name, count in sizes.items()]


def _label_name(world: World, column: int) -> str:
    names = world.base_labels + world.novel_labels
    return names[column]


@dataclass
class StoreBenchmark:
    """The store's splits as ``split_data`` reads them (a duck-typed ``Benchmark``)."""

    store_root: Path
    world: World
    pools: dict[str, LabelledPool]

    backbone_id: str = BACKBONE_ID
    annotation_sha256: str = ANNOTATION_SHA256
    embedding_encoder: str = "minilm"  # only named in checkpoint keys: label embeddings are the world's
    embedding_path: str | None = None

    @property
    def split_labels(self) -> dict[str, tuple[str, ...]]:
        return {split: pool.label_names for split, pool in self.pools.items()}

    def pool(self, split: str) -> LabelledPool:
        return self.pools[split]

    def features(self, image_ids: np.ndarray, with_local: bool) -> tuple[np.ndarray, np.ndarray | None]:
        return load_features(self.store_root, self.backbone_id, self.annotation_sha256, image_ids, with_local)

    def label_embeddings(self, label_names: tuple[str, ...]) -> np.ndarray:
        names = list(self.world.base_labels + self.world.novel_labels)
        return self.world.embeddings[[names.index(name) for name in label_names]].copy()


def write_store(store_root: Path, world: World, splits: list[SplitSpec], positions: int, n_shards: int = 2,
                seed: int = 0) -> StoreBenchmark:
    """Write the splits' features as ``n_shards`` shards per split under ``store_root``; the benchmark over them."""
    directory = store_dir(store_root, BACKBONE_ID, ANNOTATION_SHA256) / "shards"
    directory.mkdir(parents=True, exist_ok=True)
    pools: dict[str, LabelledPool] = {}
    first_id = 0
    for number, spec in enumerate(splits):
        rng = np.random.default_rng([seed, number])
        features, targets = _images(world, spec.columns, spec.n_images, None, rng)
        for label in np.flatnonzero(targets.sum(axis=0) == 0):  # every label has an image
            targets[label % spec.n_images, label] = 1.0
        ids = first_id + np.arange(spec.n_images, dtype=np.int64)
        first_id += spec.n_images
        stored = rng.permutation(spec.n_images)  # store order: shuffled, then cut into shards
        for part, rows in enumerate(np.array_split(stored, n_shards)):
            _write_shard(directory, world, spec.columns, ids[rows], features[rows], targets[rows], positions,
                         [seed, number, part])
        pool_order = rng.permutation(spec.n_images)  # the pool's order: another one
        pools[spec.name] = LabelledPool(dataset="synthetic", split=spec.name,
                                        label_names=tuple(_label_name(world, c) for c in spec.columns),
                                        image_ids=ids[pool_order], targets=targets[pool_order] > 0.5,
                                        annotation_sha256=ANNOTATION_SHA256)
    return StoreBenchmark(Path(store_root), world, pools)


def _write_shard(directory: Path, world: World, columns: np.ndarray, ids: np.ndarray, features: np.ndarray,
                 targets: np.ndarray, positions: int, seed: list[int]) -> None:
    shard = directory / shard_key(ids)
    shard.mkdir()
    np.save(shard / "ids.npy", ids)
    np.save(shard / "global.npy", features.astype(np.float32))
    local = np.lib.format.open_memmap(shard / "local.npy", mode="w+", dtype=np.float16,
                                      shape=(len(ids), positions, world.dim))
    for start in range(0, len(ids), GRID_BLOCK):
        rows = slice(start, start + GRID_BLOCK)
        grid, _ = make_local_grid(world, columns, features[rows], targets[rows], positions,
                                  np.random.default_rng([*seed, start]))
        local[rows] = grid
    local.flush()
    del local
    files = {name: {"size": (shard / name).stat().st_size, "sha256": sha256_file(shard / name)} for name in SHARD_ARRAYS}
    meta = {"n": len(ids), "global": [world.dim], "local": [positions, world.dim], "global_dtype": "float32",
            "local_dtype": "float16", "backbone_kind": "synthetic", "image_size": 0, "files": files}
    (shard / "meta.json").write_text(json.dumps(meta, sort_keys=True) + "\n")
