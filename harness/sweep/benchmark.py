"""The prepared benchmark: dataset, label split, pools, backbone and features, resolved once per sweep.

``prepare_benchmark(cfg)`` runs in the driver: it generates coco-moji when missing, reads the dataset
through its adapter (``mlfsic.datasets.registry``), splits the labels (docs/architecture.md §5.1/5.2),
trains or loads the backbone and returns a small, picklable ``Benchmark`` that Ray tasks receive. Tasks then rebuild what
they need from disk (``Benchmark.dataset()``, ``pool()``, ``features()``), cached per process, so a
task ships a few hundred bytes, never arrays.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlfsic.harness.protocol.data import Dataset, LabelledPool, split_pool
from mlfsic.harness.errors import MlfsicError



@dataclass(frozen=True)
class Benchmark:
    """Everything a task needs to find the prepared data on shared storage."""

    dataset_name: str
    dataset_config: str  # the dataset config as canonical JSON (absolute root): what the adapter reads
    annotation_sha256: str
    split_labels: dict[str, tuple[str, ...]]
    backbone_config: dict[str, Any]
    backbone_weights: str | None
    backbone_id: str
    feature_root: str
    embedding_encoder: str
    embedding_path: str | None
    embedding_cache: str

    def dataset(self) -> Dataset:
        return _load_dataset(self.dataset_config)

    def pool(self, split: str) -> LabelledPool:
        if split not in self.split_labels:
            raise MlfsicError(f"unknown split {split!r}; known: {', '.join(self.split_labels)}")
        return _pool(self.dataset_config, split, self.split_labels[split])

    def features(self, image_ids: np.ndarray, with_local: bool) -> tuple[np.ndarray, np.ndarray | None]:
        from mlfsic.harness.sweep.features import load_features

        return load_features(Path(self.feature_root), self.backbone_id, self.annotation_sha256, image_ids, with_local)

    def label_embeddings(self, label_names: tuple[str, ...]) -> np.ndarray:
        if self.embedding_encoder == "clip":
            return _clip_label_embeddings(json.dumps(self.backbone_config, sort_keys=True), self.backbone_weights,
                                          tuple(label_names))
        return _label_embeddings(self.embedding_encoder, self.embedding_path, self.embedding_cache, tuple(label_names))

    def clip_model(self) -> Any:
        """The backbone's ``harness.backbones.open_clip.ClipModel`` (open_clip backbones only), loaded once per process."""
        if self.backbone_config.get("kind") != "open_clip":
            raise MlfsicError(f"backbone {self.backbone_config.get('kind')!r} has no text tower: "
                              "this method needs an open_clip backbone (+backbone=tiny-teacher)")
        return _clip_model(json.dumps(self.backbone_config, sort_keys=True), self.backbone_weights)


@functools.lru_cache(maxsize=4)
def _load_dataset(dataset_config: str) -> Dataset:
    from mlfsic.datasets.registry import load_dataset

    return load_dataset(json.loads(dataset_config), check_images=False)


@functools.lru_cache(maxsize=16)
def _pool(dataset_config: str, split: str, labels: tuple[str, ...]) -> LabelledPool:
    return split_pool(_load_dataset(dataset_config), split, labels)


@functools.lru_cache(maxsize=1)
def _clip_model(backbone_config: str, weights: str | None) -> Any:
    from mlfsic.harness.backbones.open_clip import load_clip

    return load_clip(json.loads(backbone_config), Path(weights) if weights else None)


@functools.lru_cache(maxsize=16)
def _clip_label_embeddings(backbone_config: str, weights: str | None, label_names: tuple[str, ...]) -> np.ndarray:
    from mlfsic.harness.backbones.embeddings import PROMPT

    text = _clip_model(backbone_config, weights).encode_text([PROMPT.format(label=name) for name in label_names])
    return text.numpy().astype(np.float32)


@functools.lru_cache(maxsize=16)
def _label_embeddings(encoder: str, path: str | None, cache: str, label_names: tuple[str, ...]) -> np.ndarray:
    from mlfsic.harness.backbones.embeddings import label_embeddings

    return label_embeddings(list(label_names), encoder=encoder, path=path, cache_dir=Path(cache))
