"""The from-disk adapters (VOC, NUS-WIDE, iMaterialist) on small fixtures written in each published format.

Each fixture is a handful of blank images and annotation files laid out as the dataset is distributed;
the tests check the multi-hot matrices and the strict-rule split pools exactly, the shipped split files,
and that a malformed input is one ``MlfsicError`` line naming the file (and line or element).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mlfsic.datasets import disk, voc
from mlfsic.harness.config import config_dir, load_label_split
from mlfsic.harness.data import split_pool
from mlfsic.harness.errors import MlfsicError


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4)).save(path)


def _rows(dataset) -> dict[int, set[str]]:
    names = np.array(dataset.label_names)
    return {int(i): set(names[row].tolist()) for i, row in zip(dataset.image_ids, dataset.targets)}


def _pool_rows(pool) -> dict[int, set[str]]:
    names = np.array(pool.label_names)
    return {int(i): set(names[row].tolist()) for i, row in zip(pool.image_ids, pool.targets)}


def _split_json(name: str) -> dict:
    return json.loads((config_dir() / "splits" / name).read_text())


# ------------------------------------------------------------------------------------------------ VOC
def _voc_xml(image_name: str, objects: list[tuple[str, int]], folder: str = "VOC2007") -> str:
    parts = [f"<annotation>\n\t<folder>{folder}</folder>\n\t<filename>{image_name}.jpg</filename>\n"
             "\t<size><width>4</width><height>4</height><depth>3</depth></size>\n\t<segmented>0</segmented>\n"]
    for name, difficult in objects:
        part = "\t\t<part><name>head</name><bndbox><xmin>1</xmin></bndbox></part>\n" if name == "person" else ""
        parts.append(f"\t<object>\n\t\t<name>{name}</name>\n\t\t<pose>Unspecified</pose>\n\t\t<truncated>0</truncated>\n"
                     f"\t\t<difficult>{difficult}</difficult>\n\t\t<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>3</xmax>"
                     f"<ymax>3</ymax></bndbox>\n{part}\t</object>\n")
    return "".join(parts) + "</annotation>\n"


VOC_FIXTURE = {
    ("VOC2007", "trainval"): {
        "000005": [("chair", 0), ("chair", 1), ("person", 0)],
        "000007": [("car", 0)],
        "000009": [("horse", 0), ("person", 1)],  # person only difficult
        "000012": [("cat", 0), ("dog", 0)],
    },
    ("VOC2007", "test"): {
        "000001": [("dog", 0), ("person", 0)],
        "000004": [("sofa", 0), ("tvmonitor", 0)],
        "000006": [("bicycle", 0), ("bus", 0)],
    },
    ("VOC2012", "trainval"): {
        "2008_000008": [("horse", 0), ("person", 0)],
        "2008_000015": [("sheep", 0)],
        "2009_000001": [("pottedplant", 1)],  # only a difficult object
        "2010_000002": [("cow", 0), ("bird", 0)],
    },
}


def _write_voc(root: Path) -> Path:
    devkit = root / "VOCdevkit"
    for (folder, list_name), images in VOC_FIXTURE.items():
        main = devkit / folder / "ImageSets" / "Main"
        main.mkdir(parents=True, exist_ok=True)
        (main / f"{list_name}.txt").write_text("".join(f"{name}\n" for name in images))
        for name, objects in images.items():
            (devkit / folder / "Annotations").mkdir(parents=True, exist_ok=True)
            (devkit / folder / "Annotations" / f"{name}.xml").write_text(_voc_xml(name, objects, folder))
            _image(devkit / folder / "JPEGImages" / f"{name}.jpg")
    return devkit


def test_voc_multi_hot_and_pools(tmp_path):
    devkit = _write_voc(tmp_path)
    loaded = voc.read({"name": "voc", "root": str(devkit)})
    dataset = loaded.dataset
    assert dataset.label_names == voc.VOC_CLASSES
    assert _rows(dataset) == {
        2007000001: {"dog", "person"}, 2007000004: {"sofa", "tvmonitor"}, 2007000005: {"chair", "person"},
        2007000006: {"bicycle", "bus"}, 2007000007: {"car"}, 2007000009: {"horse", "person"},
        2007000012: {"cat", "dog"}, 2008000008: {"horse", "person"}, 2008000015: {"sheep"},
        2009000001: {"pottedplant"}, 2010000002: {"bird", "cow"},
    }
    files = dataset.file_name_of()
    assert files[2007000005] == "VOC2007/JPEGImages/000005.jpg"
    assert files[2008000008] == "VOC2012/JPEGImages/2008_000008.jpg"
    assert all((dataset.image_root / f).is_file() for f in dataset.file_names)
    assert len(dataset.annotation_sha256) == 64
    assert loaded.sources == (("VOC2007 trainval", 4), ("VOC2007 test", 3), ("VOC2012 trainval", 4))

    split = load_label_split("voc.json", dataset.label_names, restrict=False)
    assert _pool_rows(split_pool(dataset, "base", split["base"])) == {
        2007000005: {"chair", "person"}, 2007000007: {"car"}, 2007000009: {"horse", "person"},
        2008000008: {"horse", "person"}}
    assert _pool_rows(split_pool(dataset, "val", split["val"])) == {2007000006: {"bicycle", "bus"}}
    assert _pool_rows(split_pool(dataset, "test", split["test"])) == {
        2007000004: {"sofa", "tvmonitor"}, 2007000012: {"cat", "dog"}, 2008000015: {"sheep"},
        2009000001: {"pottedplant"}}

    summary = disk.summarize(loaded, split, "voc.json")
    assert summary["images_per_split"] == {"base": 4, "val": 1, "test": 4}
    assert summary["images_in_no_split"] == 2  # 000001 (dog+person), 2010_000002 (cow+bird)
    assert summary["split_provisional"] is True
    text = disk.format_summary(summary)
    assert "PROVISIONAL" in text and "voc: 11 images, 20 labels" in text and "all present" in text


def test_voc_difficult_switch_and_options(tmp_path):
    devkit = _write_voc(tmp_path)
    strict = voc.read({"root": str(devkit), "include_difficult": False})
    rows = _rows(strict.dataset)
    assert rows[2007000009] == {"horse"} and rows[2009000001] == set() and rows[2007000005] == {"chair", "person"}
    default = voc.load({"root": str(devkit)})
    assert strict.dataset.annotation_sha256 != default.annotation_sha256  # the option changes targets: new key
    only_2012 = voc.load({"root": str(devkit), "sets": ["VOC2012/trainval"]})
    assert only_2012.image_ids.tolist() == [2008000008, 2008000015, 2009000001, 2010000002]
    # the same list twice: images kept once
    twice = voc.read({"root": str(devkit), "sets": ["VOC2007/test", "VOC2007/test"]})
    assert len(twice.dataset.image_ids) == 3 and any("kept once" in note for note in twice.notes)


def test_voc_split_file_is_the_documented_one():
    split = _split_json("voc.json")
    assert split["provisional"] is True and "PROVISIONAL" in split["note"]
    assert sorted(split["test"]) == ["cat", "dog", "pottedplant", "sheep", "sofa", "tvmonitor"]
    assert (len(split["train"]), len(split["val"]), len(split["test"])) == (8, 6, 6)
    assert sorted(split["train"] + split["val"] + split["test"]) == sorted(voc.VOC_CLASSES)


@pytest.mark.parametrize("case, pattern", [
    ("missing_image", r"1 of 11 images are missing, first .*VOC2007/JPEGImages/000007.jpg \(listed in .*trainval.txt:2\)"),
    ("truncated_xml", r"VOC2007/Annotations/000005.xml: malformed XML \(.*line \d+, column \d+\)"),
    ("unknown_class", r"VOC2012/Annotations/2008_000015.xml: <object> #1: unknown class 'kitten'"),
    ("no_name", r"VOC2007/Annotations/000007.xml: <object> #1 has no <name>"),
    ("bad_difficult", r"VOC2007/Annotations/000007.xml: <object> #1: <difficult> is 'yes'"),
    ("empty_list", r"VOC2007/ImageSets/Main/test.txt: empty image list"),
    ("missing_list", r"image list not found: .*VOC2012/ImageSets/Main/trainval.txt"),
    ("missing_xml", r"annotation file not found: .*VOC2007/Annotations/000012.xml"),
    ("bad_id", r"VOC2007/ImageSets/Main/test.txt:2: 'img_4' is not a VOC image id"),
    ("two_columns", r"VOC2007/ImageSets/Main/test.txt:1: expected one image id per line"),
    ("not_utf8", r"VOC2007/ImageSets/Main/test.txt:1: not UTF-8 text"),
    ("wrong_root_element", r"000007.xml: root element is <html>, expected <annotation>"),
])
def test_voc_bad_input_is_one_line_naming_the_file(tmp_path, case, pattern):
    devkit = _write_voc(tmp_path)
    v7, v12 = devkit / "VOC2007", devkit / "VOC2012"
    if case == "missing_image":
        (v7 / "JPEGImages" / "000007.jpg").unlink()
    elif case == "truncated_xml":
        text = (v7 / "Annotations" / "000005.xml").read_text()
        (v7 / "Annotations" / "000005.xml").write_text(text[: len(text) // 2])
    elif case == "unknown_class":
        (v12 / "Annotations" / "2008_000015.xml").write_text(_voc_xml("2008_000015", [("kitten", 0)]))
    elif case == "no_name":
        (v7 / "Annotations" / "000007.xml").write_text("<annotation><object><difficult>0</difficult></object></annotation>")
    elif case == "bad_difficult":
        (v7 / "Annotations" / "000007.xml").write_text(_voc_xml("000007", [("car", "yes")]))
    elif case == "empty_list":
        (v7 / "ImageSets" / "Main" / "test.txt").write_text("\n")
    elif case == "missing_list":
        (v12 / "ImageSets" / "Main" / "trainval.txt").unlink()
    elif case == "missing_xml":
        (v7 / "Annotations" / "000012.xml").unlink()
    elif case == "bad_id":
        (v7 / "ImageSets" / "Main" / "test.txt").write_text("000001\nimg_4\n")
    elif case == "two_columns":
        (v7 / "ImageSets" / "Main" / "test.txt").write_text("000001  1\n000004 -1\n")
    elif case == "not_utf8":
        (v7 / "ImageSets" / "Main" / "test.txt").write_bytes(b"00000\xff\n")
    elif case == "wrong_root_element":
        (v7 / "Annotations" / "000007.xml").write_text("<html><body/></html>")
    with pytest.raises(MlfsicError, match=pattern) as error:
        voc.load({"root": str(devkit)})
    assert "\n" not in str(error.value)


def test_voc_same_image_two_years_must_agree(tmp_path):
    devkit = _write_voc(tmp_path)
    v12 = devkit / "VOC2012"
    # VOC2012 carries 2007 images over as 2007_NNNNNN: the same photo as VOC2007's NNNNNN, the same id
    (v12 / "ImageSets" / "Main" / "seg.txt").write_text("2007_000005\n")
    (v12 / "Annotations" / "2007_000005.xml").write_text(_voc_xml("2007_000005", [("chair", 0), ("person", 0)]))
    _image(v12 / "JPEGImages" / "2007_000005.jpg")
    with pytest.raises(MlfsicError, match=r"image id 2007000005 .* is already used by VOC2007/JPEGImages/000005.jpg"):
        voc.load({"root": str(devkit), "sets": ["VOC2007/trainval", "VOC2012/seg"]})
