"""``mlfsic teacher train [+backbone=tiny-teacher-strict] [HYDRA OVERRIDES] [out=DIR]``: retrain the tiny teacher.

It trains into the cache (``backbones/tiny_teacher.py``), reports its zero-shot mAP on the val labels of the
benchmark (the prompt of ``backbones/embeddings.PROMPT``, macro AP over val images), and on the novel labels
for the record (never to choose settings), and compares with the pinned file; ``out=`` writes
``tiny_teacher-<regime>-<sha12>.pt`` + ``.json`` to ship.
"""

from __future__ import annotations

import shutil

import numpy as np

from mlfsic.harness.backbones import open_clip as clip_models
from mlfsic.harness.backbones.images import image_paths, read_images
from mlfsic.harness.backbones.tiny_teacher import image_embeddings, trained_teacher, zero_shot_ap
from mlfsic.harness.backbones.weights import pinned_weights
from mlfsic.harness.cli.options import split_out_option
from mlfsic.harness.errors import MlfsicError
from mlfsic.harness.io import atomic_path, sha256_file, write_json_atomic
from mlfsic.harness.protocol.data import split_pool
from mlfsic.harness.protocol.metrics import prototype_map
from mlfsic.harness.sweep.prepare import load_dataset_and_split
from mlfsic.harness.sweep.load import load_sweep


def teacher_command(overrides: list[str]) -> int:
    """``mlfsic teacher train [HYDRA OVERRIDES] [out=DIR]``: train, report val zero-shot mAP, compare, write."""
    out, hydra_overrides = split_out_option(overrides, "a folder")
    if not any(o.lstrip("+").startswith("backbone=") for o in hydra_overrides):
        hydra_overrides.append("+backbone=tiny-teacher")
    sweep = load_sweep(hydra_overrides)  # every key validated, as for `mlfsic run`
    backbone_cfg = sweep.dataset.backbone.as_dict()
    if backbone_cfg.get("model") != clip_models.TINY_TEACHER:
        raise MlfsicError(f"dataset.backbone.model is {backbone_cfg.get('model')!r}: only the {clip_models.TINY_TEACHER} "
                          "is trained by mlfsic (use +backbone=tiny-teacher or +backbone=tiny-teacher-strict)")
    pinned = pinned_weights(backbone_cfg)  # a wrong hash fails before minutes of training
    path, report = trained_teacher(backbone_cfg, sweep.cache_root, progress=True)
    sha = sha256_file(path)
    print(f"trained: {path}  sha256 {sha}  ({report['seconds']:.0f} s, loss per epoch {report['train_loss']})")
    dataset, split = load_dataset_and_split(sweep.dataset.as_dict())
    models = {"trained": clip_models.load_tiny_teacher(path)}
    if pinned is not None:
        models["pinned"] = clip_models.load_tiny_teacher(pinned)
    for name in ("val", "test"):
        pool = split_pool(dataset, name, split[name])
        images = read_images(image_paths(dataset, pool.image_ids), clip_models.TINY_TEACHER_VISION["image_size"])
        embeddings = {label: image_embeddings(clip, images) for label, clip in models.items()}
        aps = {label: zero_shot_ap(models[label], embeddings[label], pool.targets, list(pool.label_names))
               for label in models}
        shown_as = "val" if name == "val" else "novel (reported, never used to choose settings)"
        print(f"zero-shot mAP on the {shown_as} labels ({len(pool.image_ids)} images, macro AP; chance = mean "
              f"prevalence {pool.targets.mean():.4f}): "
              + ", ".join(f"{label} {np.nanmean(ap):.4f}" for label, ap in aps.items()))
        print("  per label (trained): " + ", ".join(f"{label} {ap:.3f}" for label, ap in zip(pool.label_names, aps["trained"])))
        if name == "val":  # scored as the small_cnn's training report scores its features, so the backbones compare
            backbone_map = prototype_map(embeddings["trained"].numpy(), pool.targets.astype(np.float32), 0)
            print(f"as a backbone: val mAP of nearest prototypes (small_cnn's measure) {backbone_map or float('nan'):.4f}")
    if pinned is not None:
        print(f"pinned: {pinned}  same sha256: {'yes' if backbone_cfg['pinned_sha256'] == sha else 'no'}")
    if out is not None:
        target = out / f"tiny_teacher-{report['settings']['regime']}-{sha[:12]}.pt"
        with atomic_path(target) as tmp:
            shutil.copyfile(path, tmp)
        write_json_atomic(target.with_suffix(".json"), {"trained_on": clip_models.teacher_trained_on(report["settings"]),
                                                        "training": report})
        print(f"written: {target} (pin with dataset.backbone.pinned_sha256: {sha})")
    return 0
