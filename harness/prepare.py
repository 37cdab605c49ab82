"""Driver-side preparation of a sweep: dataset on disk, label split, pools, backbone weights.

``load_dataset_and_split`` generates coco-moji when its folder is missing (so ``mlfsic run`` works on a
fresh machine), loads the annotation file through the COCO adapter and splits the labels.
``backbone_weights`` trains the coco-moji CNN on the base split (or finds ResNet-50 weights) and
caches the result content-addressed under ``results/cache/backbones``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from mlfsic.harness.config import load_label_split, plain
from mlfsic.harness.data import Dataset, split_pool
from mlfsic.harness.errors import MlfsicError
from mlfsic.harness.io import sha256_file, sha256_json


def ensure_dataset_files(dataset_cfg: DictConfig, progress: bool = True) -> Path:
    """The dataset root; coco-moji is generated there first when it is missing."""
    root = Path(str(dataset_cfg.root))
    if (root / str(dataset_cfg.annotations)).is_file():
        return root
    generate = dataset_cfg.get("generate")
    if generate is None:
        raise MlfsicError(f"dataset {dataset_cfg.name!r}: annotation file not found: {root / dataset_cfg.annotations}")
    from mlfsic.datasets.coco_moji import generate_coco_moji

    generate_coco_moji(root, seed=int(generate.seed), image_size=int(generate.image_size), n_base=int(generate.n_base),
                       n_val=int(generate.n_val), n_test=int(generate.n_test), progress=progress)
    return root


def load_dataset_and_split(dataset_cfg: DictConfig, progress: bool = True) -> tuple[Dataset, dict[str, list[str]]]:
    from mlfsic.datasets.coco import load_coco

    root = ensure_dataset_files(dataset_cfg, progress)
    dataset = load_coco(str(dataset_cfg.name), root, str(dataset_cfg.annotations), str(dataset_cfg.images))
    split = load_label_split(str(dataset_cfg.split_file), dataset.label_names, bool(dataset_cfg.get("restrict_split")))
    return dataset, split


def backbone_weights(
    dataset: Dataset, split: dict[str, list[str]], backbone_cfg: dict[str, Any], cache_root: Path, progress: bool = True
) -> tuple[Path | None, dict[str, Any]]:
    """Weights file for the configured backbone (trained and cached for ``small_cnn``) and a report."""
    kind = backbone_cfg.get("kind")
    if kind == "small_cnn":
        from mlfsic.harness import backbones

        key = sha256_json({"annotations": dataset.annotation_sha256, "base": split["base"], "val": split["val"],
                           "config": backbone_cfg, "code": sha256_file(backbones.__file__)})
        path = cache_root / "backbones" / f"small_cnn-{key[:20]}.pt"
        report_path = path.with_suffix(".json")
        if path.is_file() and report_path.is_file():
            import json

            return path, json.loads(report_path.read_text())
        base = split_pool(dataset, "base", split["base"])
        val = split_pool(dataset, "val", split["val"])
        report = backbones.train_small_cnn(
            dataset, base.image_ids, base.targets.astype(np.float32), val.image_ids, val.targets.astype(np.float32),
            out_path=path, epochs=int(backbone_cfg["epochs"]), batch_size=int(backbone_cfg["batch_size"]),
            lr=float(backbone_cfg["lr"]), seed=int(backbone_cfg["seed"]), image_size=int(backbone_cfg["image_size"]),
            progress=progress,
        )
        from mlfsic.harness.io import write_json_atomic

        write_json_atomic(report_path, report)
        return path, report
    if kind == "resnet50":
        weights = backbone_cfg.get("weights")
        return (Path(weights) if weights else None), {}
    raise MlfsicError(f"dataset.backbone.kind {kind!r} is not one of small_cnn, resnet50")


def backbone_config(dataset_cfg: DictConfig) -> dict[str, Any]:
    return plain(dataset_cfg.backbone)
