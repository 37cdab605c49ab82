"""``mlfsic backbone train [HYDRA OVERRIDES] [out=PATH]``: retrain the pinned benchmark backbone.

It retrains the configured small_cnn with exactly the dataset's settings into the cache
(``results/cache/backbones``) and, when the dataset pins weights (``dataset.backbone.pinned_weights``),
reports how close the retrained ones are: same sha256 or not, the largest feature difference on a few
hundred base images, and the val mAP of both. ``out=DIR`` (or ``out=FILE.pt``) also writes the weights as
``small_cnn-<sha256[:12]>.pt`` with its record ``.json`` (what it was trained on, the training report): the
files to ship and pin. The shipped file is never overwritten unless ``out=`` names it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlfsic.harness.backbones.images import image_paths, read_images
from mlfsic.harness.backbones.kinds import load_backbone
from mlfsic.harness.backbones.small_cnn import (
    SmallCnnSettings,
    embed_array,
    load_small_cnn,
    small_cnn_trained_on,
    trained_small_cnn,
)
from mlfsic.harness.backbones.weights import pinned_record, pinned_weights
from mlfsic.harness.cli.options import split_out_option
from mlfsic.harness.errors import MlfsicError
from mlfsic.harness.io import atomic_path, sha256_file, write_json_atomic
from mlfsic.harness.protocol.data import Dataset, split_pool
from mlfsic.harness.protocol.metrics import prototype_map
from mlfsic.harness.sweep.prepare import load_dataset_and_split
from mlfsic.harness.sweep.load import load_sweep


COMPARE_IMAGES = 256  # base images whose features the retrain check compares


def train_command(overrides: list[str]) -> int:
    """``mlfsic backbone train [HYDRA OVERRIDES] [out=PATH]``; prints the retrained file and the comparison."""
    out, hydra_overrides = split_out_option(overrides, "a folder or a .pt file")
    sweep = load_sweep(hydra_overrides)  # every key validated, as for `mlfsic run`
    backbone_cfg = sweep.dataset.backbone.as_dict()
    if backbone_cfg.get("kind") != "small_cnn":
        raise MlfsicError(f"dataset.backbone.kind is {backbone_cfg.get('kind')!r} for dataset {sweep.dataset_name}: "
                          "only a small_cnn backbone is trained by mlfsic")
    pinned = pinned_weights(backbone_cfg)  # a wrong hash fails before minutes of training
    torch.set_num_threads(os.cpu_count() or 1)  # as the runner's backbone task: same threads, same weights
    dataset, split = load_dataset_and_split(sweep.dataset.as_dict())
    path, report = trained_small_cnn(dataset, split, backbone_cfg, sweep.cache_root, progress=True, retrain=True)
    sha = sha256_file(path)
    print(f"retrained: {path}  sha256 {sha}  ({report['seconds']:.1f} s; val mAP {report['val_map']})")
    if pinned is not None:
        _print_comparison(dataset, split, backbone_cfg, path, pinned, report, pinned_record(pinned))
    else:
        print("no pinned weights configured (dataset.backbone.pinned_weights): nothing to compare")
    if out is not None:
        target = out if out.suffix == ".pt" else out / f"small_cnn-{sha[:12]}.pt"
        with atomic_path(target) as tmp:
            shutil.copyfile(path, tmp)
        write_json_atomic(target.with_suffix(".json"),
                          {"trained_on": small_cnn_trained_on(dataset, split, backbone_cfg), "training": report})
        print(f"written: {target} and {target.with_suffix('.json').name} "
              f"(pin with dataset.backbone.pinned_sha256: {sha})")
    return 0


def _print_comparison(dataset: Dataset, split: dict[str, list[str]], backbone_cfg: dict[str, Any], retrained: Path,
                      pinned: Path, report: dict[str, Any], record: dict[str, Any]) -> None:
    """Same sha256 or not, max |feature difference| on base images, val mAP of both."""
    same = sha256_file(retrained) == sha256_file(pinned)
    config = {**backbone_cfg, "device": "cpu"}
    base_ids = np.sort(split_pool(dataset, "base", split["base"]).image_ids)[:COMPARE_IMAGES]
    first = load_backbone(config, retrained)
    images = first.load_images(image_paths(dataset, base_ids))
    outputs = (first.embed(images), load_backbone(config, pinned).embed(images))  # (global, local) each
    differences = [float(np.abs(outputs[0][which] - outputs[1][which]).max()) for which in (0, 1)]
    val = split_pool(dataset, "val", split["val"])
    val_images = read_images(image_paths(dataset, val.image_ids), SmallCnnSettings.of(backbone_cfg).image_size)
    pinned_map = prototype_map(embed_array(load_small_cnn(pinned), val_images), val.targets.astype(np.float32),
                               SmallCnnSettings.of(backbone_cfg).seed)
    recorded = record.get("training", {}).get("val_map")
    print(f"pinned:    {pinned}  sha256 {sha256_file(pinned)}")
    print(f"same sha256: {'yes' if same else 'no'}")
    print(f"max |feature difference| on {len(base_ids)} base images: global {differences[0]:.3g}, "
          f"local {differences[1]:.3g}")
    print(f"val mAP (nearest-prototype): retrained {report['val_map']}, pinned "
          f"{None if pinned_map is None else round(pinned_map, 6)} (recorded at its training: {recorded})")
