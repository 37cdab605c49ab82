"""The COCO-format adapter against pycocotools' own queries, and its one-line errors."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from mlfsic.datasets.coco import load_coco
from mlfsic.harness.data import split_pool
from mlfsic.harness.errors import MlfsicError


def _write_coco(root: Path, n_images: int = 12, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    categories = [{"id": 1, "name": "person", "supercategory": "person"},
                  {"id": 3, "name": "car", "supercategory": "vehicle"},
                  {"id": 18, "name": "dog", "supercategory": "animal"},
                  {"id": 62, "name": "chair", "supercategory": "furniture"}]
    images, annotations = [], []
    (root / "images").mkdir(parents=True)
    for image_id in range(100, 100 + n_images):
        name = f"{image_id}.png"
        Image.new("RGB", (8, 8)).save(root / "images" / name)
        images.append({"id": image_id, "file_name": name, "width": 8, "height": 8})
        for category in rng.choice(categories, size=int(rng.integers(1, 3)), replace=False):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category["id"],
                                "bbox": [0, 0, 4, 4], "area": 16, "iscrowd": 0})
    content = {"images": images, "annotations": annotations, "categories": categories}
    (root / "annotations.json").write_text(json.dumps(content))
    return content


def test_targets_match_pycocotools(tmp_path):
    _write_coco(tmp_path)
    dataset = load_coco("tiny", tmp_path, "annotations.json", "images")
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(tmp_path / "annotations.json"))
    assert dataset.label_names == ("person", "car", "dog", "chair")
    for column, category_id in enumerate([1, 3, 18, 62]):
        expected = set(coco.getImgIds(catIds=[category_id]))
        assert set(dataset.image_ids[dataset.targets[:, column]].tolist()) == expected
    assert len(dataset.annotation_sha256) == 64


def test_split_rule_keeps_only_images_whose_labels_are_all_in_the_split(tmp_path):
    _write_coco(tmp_path, n_images=40)
    dataset = load_coco("tiny", tmp_path, "annotations.json", "images")
    pool = split_pool(dataset, "base", ["car", "person"])
    all_labels = {int(i): set(np.array(dataset.label_names)[row]) for i, row in zip(dataset.image_ids, dataset.targets)}
    expected = {i for i, labels in all_labels.items() if labels and labels <= {"car", "person"}}
    assert set(pool.image_ids.tolist()) == expected
    assert pool.label_names == ("car", "person")
    for image_id, row in zip(pool.image_ids, pool.targets):
        assert set(np.array(pool.label_names)[row]) == all_labels[int(image_id)]


def test_missing_and_malformed_files_name_the_file(tmp_path):
    with pytest.raises(MlfsicError, match="annotation file not found: .*annotations.json"):
        load_coco("tiny", tmp_path, "annotations.json", "images")
    content = _write_coco(tmp_path)
    (tmp_path / "annotations.json").write_text("{not json")
    with pytest.raises(MlfsicError, match="malformed annotation file .*annotations.json"):
        load_coco("tiny", tmp_path, "annotations.json", "images")
    content["annotations"][0]["category_id"] = 999
    (tmp_path / "annotations.json").write_text(json.dumps(content))
    with pytest.raises(MlfsicError, match="unknown image or category"):
        load_coco("tiny", tmp_path, "annotations.json", "images")
    content["annotations"][0]["category_id"] = 1
    (tmp_path / "annotations.json").write_text(json.dumps(content))
    (tmp_path / "images" / "100.png").unlink()
    with pytest.raises(MlfsicError, match="is missing: .*100.png"):
        load_coco("tiny", tmp_path, "annotations.json", "images")
