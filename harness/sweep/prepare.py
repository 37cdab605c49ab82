"""Preparation of a benchmark: dataset on disk, label split, pools, backbone weights, features.

``load_dataset_and_split`` goes through the dataset factory (``mlfsic.datasets.registry``): it generates
coco-moji when its folder is missing (so ``mlfsic run`` works on a fresh machine), reads the dataset with
the adapter its config names and splits the labels.
``backbone_weights`` gives the coco-moji CNN's pinned weights shipped in the package (when they were
trained on this dataset with these settings), else trains it on the base split and caches the result
content-addressed under ``results/cache/backbones`` (or finds ResNet-50 weights). ``make_benchmark`` builds the
handle tasks receive. The Ray runner runs the backbone and feature steps as tasks;
``prepare_benchmark`` does the same work in this process, for use without Ray
(``harness.evaluate.evaluate_cell``), producing the same cached artifacts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from mlfsic.harness.sweep.benchmark import Benchmark
from mlfsic.harness.config import plain
from mlfsic.harness.protocol.data import Dataset, split_pool
from mlfsic.harness.errors import MlfsicError
from mlfsic.harness.io import sha256_file, sha256_json


def load_dataset_and_split(
    dataset_cfg: DictConfig | Mapping[str, Any], progress: bool = True
) -> tuple[Dataset, dict[str, list[str]]]:
    """The dataset (made first when its adapter generates it, as coco-moji) and its label split."""
    from mlfsic.datasets import registry

    cfg = plain(dataset_cfg)
    registry.ensure_files(cfg, progress)
    dataset = registry.load_dataset(cfg)
    return dataset, registry.label_split(cfg, dataset)


SMALL_CNN_TRAINING_KEYS = ("kind", "image_size", "epochs", "batch_size", "lr", "seed")
# Training settings of a small_cnn whose dataset config leaves them out (e.g. dataset=voc
# dataset.backbone.kind=small_cnn): coco-moji's values.
SMALL_CNN_DEFAULTS = {"image_size": 96, "epochs": 8, "batch_size": 128, "lr": 0.002, "seed": 0}


def backbone_weights(
    dataset: Dataset, split: dict[str, list[str]], backbone_cfg: dict[str, Any], cache_root: Path, progress: bool = True
) -> tuple[Path | None, dict[str, Any]]:
    """Weights file for the configured backbone and a report (run.json's ``backbone`` block).

    ``small_cnn``: the pinned file (``dataset.backbone.pinned_weights``, its sha256 checked) when its record
    says it was trained on this dataset, split and settings (report ``pinned: true``); otherwise trained
    and cached (``pinned: false``, with ``pinned_unused`` saying why when a pinned file was not used).
    """
    kind = backbone_cfg.get("kind")
    if kind == "small_cnn":
        from mlfsic.harness.backbones.kinds import pinned_record, pinned_weights

        backbone_cfg = {**SMALL_CNN_DEFAULTS, **backbone_cfg}
        pinned = pinned_weights(backbone_cfg)
        unused = None
        if pinned is not None:
            record = pinned_record(pinned)
            differing = _differences(record["trained_on"], small_cnn_trained_on(dataset, split, backbone_cfg))
            if not differing:
                return pinned, {"kind": "small_cnn", "pinned": True, "weights_file": str(backbone_cfg["pinned_weights"]),
                                "weights_sha256": str(backbone_cfg["pinned_sha256"]), "training": record.get("training", {})}
            unused = (f"{pinned.name} was trained with another {', '.join(differing)}; "
                      "trained on this dataset instead")
        path, report = trained_small_cnn(dataset, split, backbone_cfg, cache_root, progress)
        report = {**report, "pinned": False, "weights_sha256": sha256_file(path)}
        return path, report if unused is None else {**report, "pinned_unused": unused}
    if kind == "resnet50":
        weights = backbone_cfg.get("weights")
        return (Path(weights) if weights else None), {}
    if kind == "open_clip":
        return open_clip_weights(backbone_cfg, split)
    raise MlfsicError(f"dataset.backbone.kind {kind!r} is not one of small_cnn, resnet50, open_clip")


def open_clip_weights(backbone_cfg: dict[str, Any], split: dict[str, list[str]] | None = None) -> tuple[Path, dict[str, Any]]:
    """The weights of an open_clip backbone, checked by loading them once, and run.json's ``backbone`` block.

    The tiny teacher: ``dataset.backbone.weights`` when given, else the pinned file, whose record must show
    the configured training settings (a sweep never trains the teacher: ``mlfsic teacher train`` does) and
    that its corpus held out every val and novel label of the sweep's ``split`` (else those labels' glyphs may
    have been in its training data).
    Any other open_clip model: ``dataset.backbone.weights``, a local file. Loading here turns an unknown
    model name or weights of another model into a one-line error before any task is submitted.
    """
    from mlfsic.harness.backbones.kinds import pinned_record, pinned_weights
    from mlfsic.harness.backbones.open_clip import TINY_TEACHER, load_clip

    model = str(backbone_cfg.get("model") or "")
    given = backbone_cfg.get("weights")
    path = Path(str(given)).expanduser() if given else None
    report: dict[str, Any] = {"kind": "open_clip", "model": model}
    if model == TINY_TEACHER and path is None:
        from mlfsic.harness.backbones.tiny_teacher import teacher_settings, teacher_trained_on

        path = pinned_weights(backbone_cfg)
        if path is None:
            raise MlfsicError("the tiny-teacher backbone has neither dataset.backbone.weights nor pinned_weights "
                              "(train one with `mlfsic teacher train out=DIR`)")
        record = pinned_record(path)
        configured = teacher_trained_on(teacher_settings(backbone_cfg))
        if record["trained_on"] != configured:
            differing = [key for key in configured["settings"]
                         if record["trained_on"].get("settings", {}).get(key) != configured["settings"][key]]
            raise MlfsicError(f"pinned teacher {path.name} was trained with other settings "
                              f"({', '.join(differing) or 'corpus or MiniLM version'}); a run never trains the teacher: "
                              "`mlfsic teacher train out=DIR` and pin the result, or set dataset.backbone.weights")
        held_out = {label for labels in record["trained_on"]["held_out"].values() for label in labels}
        seen = [label for name in ("val", "test") for label in (split or {}).get(name, []) if label not in held_out]
        if seen:
            raise MlfsicError(f"pinned teacher {path.name} held out only the val/novel labels of the packaged COCO "
                              f"split; {seen[0]!r} ({len(seen)} label(s) of this sweep's val/test split) may be in its "
                              "corpus: use the packaged split, or a teacher trained for this split")
        report.update(pinned=True, regime=record["trained_on"]["settings"]["regime"],
                      training=record.get("training", {}))
    load_clip(backbone_cfg, path)
    # a pinned file's sha256 was just checked against the config: no second read of the file
    report.update(weights_file=str(path),
                  weights_sha256=str(backbone_cfg["pinned_sha256"]) if report.get("pinned") else sha256_file(path))
    if model == TINY_TEACHER:
        report["stand_in"] = ("tiny teacher trained by mlfsic on the OpenMoji glyph+name corpus; "
                              "a stand-in for CLIP weights, not CLIP")
    return path, report


def small_cnn_trained_on(dataset: Dataset, split: dict[str, list[str]], backbone_cfg: dict[str, Any]) -> dict[str, Any]:
    """What determines trained small_cnn weights: dataset annotations, base/val labels and training settings."""
    return {"dataset": dataset.name, "annotation_sha256": dataset.annotation_sha256, "base": list(split["base"]),
            "val": list(split["val"]), "backbone": {key: backbone_cfg.get(key) for key in SMALL_CNN_TRAINING_KEYS}}


def _differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Names of the entries (``backbone.<key>`` inside the settings) where two ``trained_on`` records differ."""
    names = [key for key in current if key != "backbone" and recorded.get(key) != current[key]]
    settings = recorded.get("backbone") if isinstance(recorded.get("backbone"), dict) else {}
    return names + [f"backbone.{key}" for key, value in current["backbone"].items() if settings.get(key) != value]


def trained_small_cnn(
    dataset: Dataset, split: dict[str, list[str]], backbone_cfg: dict[str, Any], cache_root: Path, progress: bool = True,
    retrain: bool = False,
) -> tuple[Path, dict[str, Any]]:
    """The small_cnn trained on the base split, cached under ``cache_root/backbones`` (``retrain``: train anyway).

    The cache key is the training input (``small_cnn_trained_on``: annotations, base/val labels, training
    settings, unset ones at ``SMALL_CNN_DEFAULTS``) and the code that trains it, so a change of either trains
    anew; extraction-only keys (device, extract_batch_size) do not.
    """
    from mlfsic.harness.backbones import networks as backbone_models
    from mlfsic.harness.backbones import small_cnn as backbone_training
    from mlfsic.harness.backbones import images
    from mlfsic.harness.io import file_lock, write_json_atomic

    backbone_cfg = {**SMALL_CNN_DEFAULTS, **backbone_cfg}
    code = [sha256_file(module.__file__) for module in (images, backbone_models, backbone_training)]
    key = sha256_json({**small_cnn_trained_on(dataset, split, backbone_cfg), "code": code})
    path = cache_root / "backbones" / f"small_cnn-{key[:20]}.pt"
    report_path = path.with_suffix(".json")
    with file_lock(path.with_suffix(".lock")):  # two sweeps sharing a results dir train it once
        if not retrain and path.is_file() and report_path.is_file():
            return path, json.loads(report_path.read_text())
        base = split_pool(dataset, "base", split["base"])
        val = split_pool(dataset, "val", split["val"])
        report = backbone_training.train_small_cnn(
            dataset, base.image_ids, base.targets.astype(np.float32), val.image_ids, val.targets.astype(np.float32),
            out_path=path, epochs=int(backbone_cfg["epochs"]), batch_size=int(backbone_cfg["batch_size"]),
            lr=float(backbone_cfg["lr"]), seed=int(backbone_cfg["seed"]), image_size=int(backbone_cfg["image_size"]),
            progress=progress,
        )
        write_json_atomic(report_path, report)
    return path, report


def backbone_config(dataset_cfg: DictConfig) -> dict[str, Any]:
    return plain(dataset_cfg.backbone)


def make_benchmark(
    cfg: DictConfig, dataset: Dataset, split: dict[str, list[str]], weights: str | Path | None, cache_root: Path
) -> Benchmark:
    """The small picklable handle of a prepared benchmark (see ``harness.benchmark``)."""
    from mlfsic.harness.backbones.kinds import identify_backbone

    bb_cfg = backbone_config(cfg.dataset)
    embeddings = plain(cfg.embeddings)
    dataset_cfg = {**plain(cfg.dataset), "root": str(Path(str(cfg.dataset.root)).resolve())}
    return Benchmark(
        dataset_name=dataset.name, dataset_config=json.dumps(dataset_cfg, sort_keys=True),
        annotation_sha256=dataset.annotation_sha256, split_labels={k: tuple(v) for k, v in split.items()},
        backbone_config=bb_cfg, backbone_weights=str(weights) if weights else None,
        backbone_id=identify_backbone(bb_cfg, Path(weights) if weights else None),
        feature_root=str(cache_root / "features"), embedding_encoder=str(embeddings["encoder"]),
        embedding_path=embeddings.get("path"), embedding_cache=str(cache_root / "embeddings"),
    )


def prepare_benchmark(cfg: DictConfig, progress: bool = True) -> Benchmark:
    """Dataset, backbone and features of ``cfg`` made (or found) in this process, without Ray."""
    from mlfsic.harness.backbones.kinds import load_backbone
    from mlfsic.harness.sweep.features import extract_shard, extraction_lock, missing_image_ids

    cache_root = Path(str(cfg.results_dir)).resolve() / "cache"
    dataset, split = load_dataset_and_split(cfg.dataset, progress)
    weights, _ = backbone_weights(dataset, split, backbone_config(cfg.dataset), cache_root, progress)
    benchmark = make_benchmark(cfg, dataset, split, weights, cache_root)
    image_ids = np.unique(np.concatenate([split_pool(dataset, name, labels).image_ids for name, labels in split.items()]))
    feature_root = Path(benchmark.feature_root)
    with extraction_lock(feature_root, benchmark.backbone_id, dataset.annotation_sha256):
        missing = missing_image_ids(feature_root, benchmark.backbone_id, dataset.annotation_sha256, image_ids)
        if len(missing):
            backbone = load_backbone(benchmark.backbone_config, weights, benchmark.backbone_id)
            extract_shard(backbone, dataset, missing, feature_root, progress=progress)
    return benchmark
