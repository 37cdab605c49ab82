"""Preparation of a benchmark: dataset on disk, label split, pools, backbone weights, features.

``load_dataset_and_split`` goes through the dataset factory (``mlfsic.datasets.registry``): it generates
coco-moji when its folder is missing (so ``mlfsic run`` works on a fresh machine), reads the dataset with
the adapter its config names and splits the labels.
``backbones.kinds.backbone_weights`` gives the weights of the configured backbone kind (pinned, trained
on the base split and cached, or a local file). ``make_benchmark`` builds the handle tasks receive. The Ray
runner runs the backbone and feature steps as tasks;
``prepare_benchmark`` does the same work in this process, for use without Ray
(``sweep/evaluate.evaluate_cell``), producing the same cached artifacts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mlfsic.datasets import registry
from mlfsic.harness.backbones.kinds import backbone_weights, identify_backbone, load_backbone
from mlfsic.harness.protocol.data import Dataset, split_pool
from mlfsic.harness.sweep.benchmark import Benchmark
from mlfsic.harness.sweep.spec import Sweep


def load_dataset_and_split(dataset_cfg: Mapping[str, Any], progress: bool = True) -> tuple[Dataset, dict[str, list[str]]]:
    """The dataset (made first when its adapter generates it, as coco-moji) and its label split."""
    cfg = dict(dataset_cfg)
    registry.ensure_files(cfg, progress)
    dataset = registry.load_dataset(cfg)
    return dataset, registry.label_split(cfg, dataset)


def make_benchmark(sweep: Sweep, dataset: Dataset, split: dict[str, list[str]], weights: str | Path | None) -> Benchmark:
    """The small picklable handle of a prepared benchmark (see ``sweep/benchmark.py``)."""
    backbone = sweep.dataset.backbone.as_dict()
    return Benchmark(
        dataset_name=dataset.name, dataset_config=json.dumps(sweep.dataset.as_dict(), sort_keys=True),
        annotation_sha256=dataset.annotation_sha256, split_labels={k: tuple(v) for k, v in split.items()},
        backbone_config=backbone, backbone_weights=str(weights) if weights else None,
        backbone_id=identify_backbone(backbone, Path(weights) if weights else None),
        feature_root=str(sweep.cache_root / "features"), embedding_encoder=sweep.embeddings.encoder,
        embedding_path=sweep.embeddings.path, embedding_cache=str(sweep.cache_root / "embeddings"),
    )


def prepare_benchmark(sweep: Sweep, progress: bool = True) -> Benchmark:
    """Dataset, backbone and features of ``sweep`` made (or found) in this process, without Ray."""
    from mlfsic.harness.sweep.features import extract_shard, extraction_lock, missing_image_ids

    dataset, split = load_dataset_and_split(sweep.dataset.as_dict(), progress)
    weights, _ = backbone_weights(dataset, split, sweep.dataset.backbone.as_dict(), sweep.cache_root, progress)
    benchmark = make_benchmark(sweep, dataset, split, weights)
    image_ids = np.unique(np.concatenate([split_pool(dataset, name, labels).image_ids for name, labels in split.items()]))
    feature_root = Path(benchmark.feature_root)
    with extraction_lock(feature_root, benchmark.backbone_id, dataset.annotation_sha256):
        missing = missing_image_ids(feature_root, benchmark.backbone_id, dataset.annotation_sha256, image_ids)
        if len(missing):
            backbone = load_backbone(benchmark.backbone_config, weights, benchmark.backbone_id)
            extract_shard(backbone, dataset, missing, feature_root, progress=progress)
    return benchmark
