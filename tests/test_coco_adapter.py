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
from mlfsic.harness.protocol.data import split_pool
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


def _write_coco_2014(root: Path) -> None:
    """Two instances files in their own folders, with disjoint image ids, as COCO 2014 is distributed."""
    for number, part in enumerate(("train2014", "val2014")):
        folder = root / "tmp" / part
        _write_coco(folder, n_images=6 + number, seed=number)
        content = json.loads((folder / "annotations.json").read_text())
        for entry in content["images"]:  # shift the ids of val2014 so the two files never share one
            entry["id"] += 1000 * number
        for entry in content["annotations"]:
            entry["image_id"] += 1000 * number
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"instances_{part}.json").write_text(json.dumps(content))
        (folder / "images").rename(root / part)


def _coco_2014_config(root: Path) -> dict:
    from mlfsic.harness.config import compose_config
    from mlfsic.harness.config import to_container

    return to_container(compose_config(["dataset=coco", f"dataset.root={root}", "dataset.restrict_split=true"]))["dataset"]


def test_train2014_and_val2014_are_pooled_like_pycocotools_reads_each(tmp_path):
    from mlfsic.datasets.registry import load_dataset, prepare_dataset

    _write_coco_2014(tmp_path)
    dataset = load_dataset(_coco_2014_config(tmp_path), check_images=True)
    assert len(dataset.image_ids) == 13 and np.all(np.diff(dataset.image_ids) > 0)
    row_of = {int(image_id): row for row, image_id in enumerate(dataset.image_ids)}
    for part in ("train2014", "val2014"):
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(tmp_path / "annotations" / f"instances_{part}.json"))
        columns = {c["id"]: dataset.label_names.index(c["name"]) for c in coco.loadCats(coco.getCatIds())}
        for image_id in coco.getImgIds():
            expected = np.zeros(len(dataset.label_names), dtype=bool)
            expected[[columns[a["category_id"]] for a in coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))]] = True
            row = row_of[image_id]
            assert np.array_equal(dataset.targets[row], expected)
            assert dataset.file_names[row] == f"{part}/{coco.imgs[image_id]['file_name']}"
            assert (dataset.image_root / dataset.file_names[row]).is_file()
    summary = prepare_dataset("coco", {"root": str(tmp_path), "restrict_split": "true"})
    assert "instances_train2014.json" in summary and "instances_val2014.json" in summary


def test_pooled_files_must_not_share_an_image_id_or_differ_in_categories(tmp_path):
    from mlfsic.datasets.registry import load_dataset

    _write_coco_2014(tmp_path)
    val_file = tmp_path / "annotations" / "instances_val2014.json"
    content = json.loads(val_file.read_text())
    original = json.dumps(content)
    content["images"][0]["id"] = 100
    content["annotations"] = [a for a in content["annotations"] if a["image_id"] != 1100]
    val_file.write_text(json.dumps(content))
    with pytest.raises(MlfsicError, match=r"instances_val2014.json: image id 100 is also in .*instances_train2014"):
        load_dataset(_coco_2014_config(tmp_path))
    content = json.loads(original)
    content["categories"][0]["name"] = "human"
    val_file.write_text(json.dumps(content))
    with pytest.raises(MlfsicError, match="instances_val2014.json: its categories differ"):
        load_dataset(_coco_2014_config(tmp_path))


def test_a_sweep_on_pooled_coco_checks_every_source_up_front(tmp_path):
    from mlfsic.harness.sweep.load import load_sweep

    _write_coco_2014(tmp_path)
    overrides = ["dataset=coco", f"dataset.root={tmp_path}", "dataset.restrict_split=true"]
    assert load_sweep(overrides).dataset.settings["sources"][1]["images"] == "val2014"
    (tmp_path / "val2014").rename(tmp_path / "elsewhere")
    with pytest.raises(MlfsicError, match=r"dataset.root=.*val2014 not found"):
        load_sweep(overrides)
