"""The leakage check: passes on ``split_pool`` output, catches every kind of planted leak."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mlfsic.harness.protocol.data import Dataset, LabelledPool, split_pool
from mlfsic.harness.errors import MlfsicError
from mlfsic.harness.protocol.leakage import check_no_leakage

BASE = [f"base_{j}" for j in range(8)]
VAL = ["val_0", "val_1"]
NOVEL = [f"novel_{j}" for j in range(4)]


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    """Images with 1-3 labels drawn across all splits, so many images mix splits (and belong to none)."""
    rng = np.random.default_rng(0)
    labels = BASE + NOVEL + VAL
    freq = np.r_[np.full(len(BASE), 3.0), np.full(len(NOVEL), 1.0), np.full(len(VAL), 1.0)]
    freq /= freq.sum()
    targets = np.zeros((600, len(labels)), dtype=bool)
    for i in range(600):
        targets[i, rng.choice(len(labels), size=int(rng.integers(1, 4)), replace=False, p=freq)] = True
    ids = np.arange(600, dtype=np.int64) * 3 + 1
    return Dataset("synthetic", Path("."), ids, tuple(f"{i}.png" for i in ids), tuple(labels), targets, "f" * 64)


def leaky_ids(dataset: Dataset, inside: list[str], outside: list[str]) -> np.ndarray:
    """Ids (computed independently) of images carrying a label of ``inside`` and one of ``outside``."""
    cols_in = [dataset.label_names.index(n) for n in inside]
    cols_out = [dataset.label_names.index(n) for n in outside]
    mask = dataset.targets[:, cols_in].any(axis=1) & dataset.targets[:, cols_out].any(axis=1)
    return dataset.image_ids[mask]


def test_clean_split_passes(dataset):
    base = split_pool(dataset, "base", BASE)
    novel = split_pool(dataset, "test", NOVEL)
    val = split_pool(dataset, "val", VAL)
    report = check_no_leakage(dataset, base, [val, novel])
    assert report == {"ok": True, "base": {"split": "base", "images": len(base), "labels": 8}, "val": None,
                      "fit_receives": ["base"], "evaluated_split_reaches_fit": False,
                      "eval": {"val": {"images": len(val), "labels": 2}, "test": {"images": len(novel), "labels": 4}}}
    assert len(base) > 50 and len(novel) > 10


def test_val_split_given_to_fit_is_checked(dataset):
    """``fit`` receives base + val: the report says so, and a val image carrying a novel label is caught."""
    base = split_pool(dataset, "base", BASE)
    novel = split_pool(dataset, "test", NOVEL)
    val = split_pool(dataset, "val", VAL)
    report = check_no_leakage(dataset, base, [novel], val_pool=val)
    assert report["fit_receives"] == ["base", "val"] and report["val"] == {"images": len(val), "labels": 2}
    with pytest.raises(MlfsicError, match="label 'novel_0' is in both the val split given to fit"):
        check_no_leakage(dataset, base, [novel], val_pool=LabelledPool(
            "synthetic", "val", (*VAL, "novel_0"), val.image_ids, np.zeros((len(val), 3), bool), val.annotation_sha256))
    planted = int(leaky_ids(dataset, VAL, NOVEL)[0])
    sloppy = LabelledPool("synthetic", "val", tuple(VAL), np.r_[val.image_ids, planted],
                          np.zeros((len(val) + 1, 2), bool), val.annotation_sha256)
    with pytest.raises(MlfsicError, match=rf"val \(given to fit\) image {planted} carries label "):
        check_no_leakage(dataset, base, [novel], val_pool=sloppy)


def test_base_training_image_with_novel_label(dataset):
    base = split_pool(dataset, "base", BASE)
    novel = split_pool(dataset, "test", NOVEL)
    planted = int(leaky_ids(dataset, BASE, NOVEL)[0])
    training = np.r_[base.image_ids, planted]
    with pytest.raises(MlfsicError, match=rf"base training image {planted} carries label 'novel_\d'"):
        check_no_leakage(dataset, base, [novel], base_training_ids=training)


def test_pool_columns_hide_the_leak_but_dataset_does_not(dataset):
    """A base pool built without the all-labels rule looks clean in its own columns; the check sees through."""
    cols = [dataset.label_names.index(n) for n in BASE]
    keep = dataset.targets[:, cols].any(axis=1)  # wrong rule: any base label
    sloppy = LabelledPool("synthetic", "base", tuple(BASE), dataset.image_ids[keep], dataset.targets[keep][:, cols], "f" * 64)
    first = int(sloppy.image_ids[~np.isin(sloppy.image_ids, split_pool(dataset, "base", BASE).image_ids)][0])
    with pytest.raises(MlfsicError, match=rf"base training image {first} carries label"):
        check_no_leakage(dataset, sloppy, [])


def test_eval_image_in_base_pool(dataset):
    base = split_pool(dataset, "base", BASE)
    novel = split_pool(dataset, "test", NOVEL)
    shared = int(base.image_ids[3])
    row = int(np.flatnonzero(base.image_ids == shared)[0])
    leaky = LabelledPool("synthetic", "test", tuple(NOVEL), np.r_[novel.image_ids, shared],
                         np.vstack([novel.targets, np.zeros((1, 4), bool)]), "f" * 64)
    assert base.targets[row].any()
    with pytest.raises(MlfsicError, match=rf"test image {shared} \(labels 'base_\d'.*\) is also an image given to fit"):
        check_no_leakage(dataset, base, [leaky])


def test_eval_image_with_base_label(dataset):
    base = split_pool(dataset, "base", BASE[:4])  # base images use only base_0..3
    bad = int(leaky_ids(dataset, NOVEL, BASE[4:])[0])  # a novel+base_4.. image: not in base, but not pure novel
    assert bad not in set(base.image_ids.tolist())
    novel = split_pool(dataset, "test", NOVEL)
    leaky = LabelledPool("synthetic", "test", tuple(NOVEL), np.r_[novel.image_ids, bad],
                         np.vstack([novel.targets, np.ones((1, 4), bool)]), "f" * 64)
    with pytest.raises(MlfsicError, match=rf"test image {bad} carries label 'base_[4-7]', which is not a test label"):
        check_no_leakage(dataset, base, [leaky])


def test_overlapping_label_sets_and_unknown_ids(dataset):
    base = split_pool(dataset, "base", BASE)
    overlapping = split_pool(dataset, "test", NOVEL + [BASE[2]])
    with pytest.raises(MlfsicError, match="label 'base_2' is in both the base and test splits"):
        check_no_leakage(dataset, base, [overlapping])
    with pytest.raises(MlfsicError, match="base training image 2 is not in dataset 'synthetic'"):
        check_no_leakage(dataset, base, [], base_training_ids=np.array([2]))
