"""A short sweep (random + protonet, 20 episodes, the small CNN backbone) on PASCAL VOC, NUS-WIDE and
iMaterialist trees written in their published formats: the disk adapters feed the same runner as coco-moji.

The trees are bigger than the adapter tests' fixtures (every label needs K + Q images in its split) and use
coloured 32-pixel JPEGs; the SmallCNN is trained for one epoch on them (features, not accuracy, are tested).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from mlfsic.harness.protocol.splits import load_label_split
from mlfsic.harness.sweep.runner import run_sweep
from mlfsic.harness.sweep.load import load_sweep

SWEEP = ["method=[random,protonet]", "setting=[1shot]", "seeds=[0]", "n_episodes=20", "n_query=2",
         "dataset.backbone.kind=small_cnn", "dataset.backbone.image_size=32", "+dataset.backbone.epochs=1",
         "+dataset.backbone.batch_size=32"]
IMAGES_PER_LABEL = 6  # below protonet's 5 + 4 per training label: it lowers its training shot to 2


def _jpeg(path: Path, rng: np.random.Generator) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)).save(path)


def _write_voc_tree(root: Path) -> Path:
    """VOC2007 trainval: IMAGES_PER_LABEL single-object images of each of the 20 classes."""
    rng = np.random.default_rng(0)
    classes = json.loads((Path(__file__).resolve().parents[1] / "configs/splits/voc.json").read_text())
    names = [*classes["train"], *classes["val"], *classes["test"]]
    devkit = root / "VOCdevkit"
    ids = []
    for number, name in enumerate(n for n in names for _ in range(IMAGES_PER_LABEL)):
        image_id = f"{number + 1:06d}"
        ids.append(image_id)
        xml = (f"<annotation><folder>VOC2007</folder><filename>{image_id}.jpg</filename><object><name>{name}</name>"
               "<difficult>0</difficult><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>30</xmax><ymax>30</ymax></bndbox>"
               "</object></annotation>")
        (devkit / "VOC2007/Annotations").mkdir(parents=True, exist_ok=True)
        (devkit / "VOC2007/Annotations" / f"{image_id}.xml").write_text(xml)
        _jpeg(devkit / "VOC2007/JPEGImages" / f"{image_id}.jpg", rng)
    (devkit / "VOC2007/ImageSets/Main").mkdir(parents=True)
    (devkit / "VOC2007/ImageSets/Main/trainval.txt").write_text("".join(f"{i}\n" for i in ids))
    return devkit


def _write_imaterialist_tree(root: Path, n_labels: int) -> Path:
    """train.json + validation.json with IMAGES_PER_LABEL images of every label id, one label each."""
    rng = np.random.default_rng(1)
    entries = {"train": [], "validation": []}
    for number, label in enumerate(label for label in range(1, n_labels + 1) for _ in range(IMAGES_PER_LABEL)):
        part = "train" if number % 2 == 0 else "validation"
        entries[part].append({"imageId": str(number + 1), "labelId": [str(label)]})
        _jpeg(root / part / f"{number + 1}.jpg", rng)
    for part, part_annotations in entries.items():
        images = [{"imageId": a["imageId"], "url": "https://example.invalid"} for a in part_annotations]
        (root / f"{part}.json").write_text(json.dumps({"images": images, "annotations": part_annotations}))
    return root


def _write_nuswide_tree(root: Path) -> Path:
    """Image list, Concepts81.txt and one Labels_<concept>.txt per concept: IMAGES_PER_LABEL images each."""
    rng = np.random.default_rng(2)
    split = json.loads((Path(__file__).resolve().parents[1] / "configs/splits/nuswide.json").read_text())
    concepts = sorted({*split["train"], *split["val"], *split["test"]})
    owners = [concept for concept in concepts for _ in range(IMAGES_PER_LABEL)]
    lines = []
    for number, concept in enumerate(owners):
        lines.append(f"C:\\ImageData\\Flickr\\{concept}\\{number:04d}_{number}.jpg")
        _jpeg(root / "Flickr" / concept / f"{number:04d}_{number}.jpg", rng)
    (root / "ImageList").mkdir(parents=True)
    (root / "ImageList/Imagelist.txt").write_text("\r\n".join(lines) + "\r\n")
    (root / "ConceptsList").mkdir()
    (root / "ConceptsList/Concepts81.txt").write_text("\n".join(concepts) + "\n")
    (root / "Groundtruth/AllLabels").mkdir(parents=True)
    for concept in concepts:
        (root / "Groundtruth/AllLabels" / f"Labels_{concept}.txt").write_text(
            "".join(f"{int(owner == concept)}\n" for owner in owners))
    return root


def _sweep(tmp_path: Path, dataset: str, root: Path, *extra: str) -> pd.DataFrame:
    sweep = load_sweep([f"dataset={dataset}", f"dataset.root={root}", f"results_dir={tmp_path / 'results'}",
                        *SWEEP, *extra])
    outcome = run_sweep(sweep, progress=False)
    assert not outcome.failures, outcome.failures
    run = json.loads((outcome.run_path / "run.json").read_text())
    assert run["backbone"]["kind"] == "small_cnn"
    assert run["fit_reports"]["protonet/seed0"]["train_shot"] == IMAGES_PER_LABEL - 4
    return pd.read_parquet(outcome.run_path / "records.parquet")


def test_a_short_sweep_runs_on_a_voc_tree(ray_session, tmp_path):
    records = _sweep(tmp_path, "voc", _write_voc_tree(tmp_path / "voc"), "dataset.sets=[VOC2007/trainval]")
    assert set(records["method"]) == {"random", "protonet"} and len(records) == 2 * 20
    assert records["n_labels"].eq(6).all() and records["map"].between(0, 1).all()  # the 6 novel VOC classes


def test_a_short_sweep_runs_on_a_nuswide_tree(ray_session, tmp_path):
    split = json.loads((Path(__file__).resolve().parents[1] / "configs/splits/nuswide.json").read_text())
    records = _sweep(tmp_path, "nuswide", _write_nuswide_tree(tmp_path / "nus"))
    assert set(records["method"]) == {"random", "protonet"} and records["n_labels"].eq(len(split["test"])).all()


def test_a_short_sweep_runs_on_an_imaterialist_tree(ray_session, tmp_path):
    split = json.loads((Path(__file__).resolve().parents[1] / "configs/splits/imaterialist.json").read_text())
    n_labels = max(int(name.removeprefix("label_")) for part in ("train", "val", "test") for name in split[part])
    records = _sweep(tmp_path, "imaterialist", _write_imaterialist_tree(tmp_path / "imat", n_labels))
    novel = load_label_split("imaterialist.json", tuple(f"label_{i}" for i in range(1, n_labels + 1)), False)["test"]
    assert set(records["method"]) == {"random", "protonet"} and records["n_labels"].eq(len(novel)).all()
