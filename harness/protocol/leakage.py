"""The leakage check run by every sweep (docs/architecture.md §5.2).

An image belongs to a split only if *all* its labels are in that split's label set (the rule of Yan et
al., AAAI 2022 / 2024 for COCO). ``split_pool`` implements the rule; this module proves its outcome
independently, against the **full** ``Dataset`` targets rather than the pools' own columns (a pool only
has columns for its split's labels, so it cannot show a label it dropped):

1. the splits' label sets are disjoint and every label exists in the dataset;
2. every base training image exists in the dataset and carries base labels only, and every image of
   the val split handed to ``Method.fit`` for model selection carries val labels only (so ``fit`` never
   sees an image with a label of the evaluated split);
3. every evaluation image carries its own split's labels only, and none is an image ``fit`` receives
   (base training, base pool or the val split given to ``fit``).

The first violation raises ``MlfsicError`` naming the image and the label; success returns a small,
JSON-ready report that the runner stores in ``run.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mlfsic.harness.protocol.data import Dataset, LabelledPool, find_rows
from mlfsic.harness.errors import MlfsicError


def _dataset_rows(dataset: Dataset, image_ids: np.ndarray, role: str) -> np.ndarray:
    """Rows of ``image_ids`` in ``dataset``; an id the dataset lacks is an error."""
    rows, found = find_rows(dataset.image_ids, image_ids)
    if not found.all():
        missing = int(np.asarray(image_ids).reshape(-1)[np.flatnonzero(~found)[0]])
        raise MlfsicError(f"{role} image {missing} is not in dataset {dataset.name!r}")
    return rows


def _label_mask(dataset: Dataset, label_names: Sequence[str]) -> np.ndarray:
    mask = np.zeros(len(dataset.label_names), dtype=bool)
    mask[[dataset.label_column(name) for name in label_names]] = True
    return mask


def _check_only_labels(dataset: Dataset, image_ids: np.ndarray, allowed: np.ndarray, role: str, split: str) -> None:
    """Every image carries labels of ``allowed`` only, per the full dataset targets."""
    rows = _dataset_rows(dataset, image_ids, role)
    outside = np.asarray(dataset.targets, dtype=bool)[rows][:, ~allowed]
    bad = np.flatnonzero(outside.any(axis=1))
    if len(bad):
        first = int(bad[0])
        label = dataset.label_names[int(np.flatnonzero(~allowed)[np.flatnonzero(outside[first])[0]])]
        raise MlfsicError(
            f"leakage: {role} image {int(np.asarray(image_ids)[first])} carries label {label!r}, "
            f"which is not a {split} label ({len(bad)} such images)"
        )


def check_no_leakage(
    dataset: Dataset,
    base_pool: LabelledPool,
    eval_pools: Sequence[LabelledPool],
    base_training_ids: np.ndarray | None = None,
    val_pool: LabelledPool | None = None,
) -> dict[str, Any]:
    """Prove that what ``Method.fit`` receives holds no label of an evaluated split, and no evaluation
    image is one ``fit`` sees.

    ``base_training_ids`` are the base images ``Method.fit`` will see (default: the whole base pool);
    ``val_pool`` is the val split ``fit`` receives for model selection (None when it gets none).
    Returns ``{"ok": True, "base": {...}, "val": {...} | None, "eval": {split: {...}},
    "fit_receives": [...], "evaluated_split_reaches_fit": False}`` with image and label counts.
    """
    training_ids = np.asarray(base_pool.image_ids if base_training_ids is None else base_training_ids, dtype=np.int64)
    base_labels = set(base_pool.label_names)
    fit_pools = [base_pool] + ([val_pool] if val_pool is not None else [])
    for pool in eval_pools:
        if val_pool is not None:
            shared = sorted(set(pool.label_names) & set(val_pool.label_names))
            if shared:
                raise MlfsicError(f"leakage: label {shared[0]!r} is in both the val split given to fit and the "
                                  f"evaluated {pool.split} split")
        shared = [name for name in pool.label_names if name in base_labels]
        if shared:
            raise MlfsicError(f"leakage: label {shared[0]!r} is in both the {base_pool.split} and {pool.split} splits")
    for i, pool in enumerate(eval_pools):
        for other in eval_pools[i + 1:]:
            shared = sorted(set(pool.label_names) & set(other.label_names))
            if shared and pool.split != other.split:
                raise MlfsicError(f"leakage: label {shared[0]!r} is in both the {pool.split} and {other.split} splits")

    base_allowed = _label_mask(dataset, base_pool.label_names)
    _check_only_labels(dataset, training_ids, base_allowed, f"{base_pool.split} training", base_pool.split)

    base_ids = np.union1d(np.asarray(base_pool.image_ids, dtype=np.int64), training_ids)
    if val_pool is not None:
        _check_only_labels(dataset, val_pool.image_ids, _label_mask(dataset, val_pool.label_names), "val (given to fit)",
                           val_pool.split)
        base_ids = np.union1d(base_ids, np.asarray(val_pool.image_ids, dtype=np.int64))
    report: dict[str, Any] = {
        "ok": True,
        "base": {"split": base_pool.split, "images": int(len(training_ids)), "labels": len(base_pool.label_names)},
        "val": None if val_pool is None else {"images": len(val_pool), "labels": len(val_pool.label_names)},
        "fit_receives": [pool.split for pool in fit_pools],
        "evaluated_split_reaches_fit": False,
        "eval": {},
    }
    for pool in eval_pools:
        eval_ids = np.asarray(pool.image_ids, dtype=np.int64)
        overlap = np.isin(eval_ids, base_ids)
        if overlap.any():
            image = int(eval_ids[np.flatnonzero(overlap)[0]])
            row = _dataset_rows(dataset, np.array([image]), pool.split)[0]
            labels = [dataset.label_names[j] for j in np.flatnonzero(dataset.targets[row])]
            raise MlfsicError(
                f"leakage: {pool.split} image {image} (labels {', '.join(map(repr, labels)) or 'none'}) is also an "
                f"image given to fit ({int(overlap.sum())} such images)"
            )
        _check_only_labels(dataset, eval_ids, _label_mask(dataset, pool.label_names), pool.split, pool.split)
        report["eval"][pool.split] = {"images": int(len(eval_ids)), "labels": len(pool.label_names)}
    return report
