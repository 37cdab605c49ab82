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

from mlfsic.datasets import adapter as disk
from mlfsic.datasets import voc
from mlfsic.harness.config import config_dir
from mlfsic.harness.protocol.splits import load_label_split
from mlfsic.harness.protocol.data import split_pool
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
    default = voc.read({"root": str(devkit)}).dataset
    assert strict.dataset.annotation_sha256 != default.annotation_sha256  # the option changes targets: new key
    only_2012 = voc.read({"root": str(devkit), "sets": ["VOC2012/trainval"]}).dataset
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
    ("missing_list", r"image list not found: .*VOC2007/ImageSets/Main/trainval.txt \(none of dataset.sets"),
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
    elif case == "missing_list":  # none of the sets present; one missing set alone is read around (below)
        for folder, list_name in ((v7, "trainval"), (v7, "test"), (v12, "trainval")):
            (folder / "ImageSets" / "Main" / f"{list_name}.txt").unlink()
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
        _ = voc.read({"root": str(devkit)}).dataset
    assert "\n" not in str(error.value)


def test_voc_with_voc2007_only_reads_it_and_names_the_missing_set(tmp_path, capsys):
    import shutil

    from mlfsic.harness.cli import main

    devkit = _write_voc(tmp_path)
    shutil.rmtree(devkit / "VOC2012")
    loaded = voc.read({"name": "voc", "root": str(devkit)})
    assert loaded.sources == (("VOC2007 trainval", 4), ("VOC2007 test", 3))
    assert set(_rows(loaded.dataset)) == {2007000001, 2007000004, 2007000005, 2007000006, 2007000007, 2007000009,
                                          2007000012}
    assert any("missing, not read: VOC2012/trainval" in note for note in loaded.notes)
    assert main(["data", "prepare", "voc", f"root={devkit}"]) == 0
    assert "VOC2012/ImageSets/Main/trainval.txt" in capsys.readouterr().out


def test_voc_same_image_two_years_must_agree(tmp_path):
    devkit = _write_voc(tmp_path)
    v12 = devkit / "VOC2012"
    # VOC2012 carries 2007 images over as 2007_NNNNNN: the same photo as VOC2007's NNNNNN, the same id
    (v12 / "ImageSets" / "Main" / "seg.txt").write_text("2007_000005\n")
    (v12 / "Annotations" / "2007_000005.xml").write_text(_voc_xml("2007_000005", [("chair", 0), ("person", 0)]))
    _image(v12 / "JPEGImages" / "2007_000005.jpg")
    with pytest.raises(MlfsicError, match=r"image id 2007000005 .* is already used by VOC2007/JPEGImages/000005.jpg"):
        _ = voc.read({"root": str(devkit), "sets": ["VOC2007/trainval", "VOC2012/seg"]}).dataset


# ------------------------------------------------------------------------------------------- NUS-WIDE
CONCEPTS81 = _split_json("nuswide_zsl925.json")["test"]
NUS_IMAGES = [  # (Imagelist.txt line, concepts)
    ("actor\\0001_2124494179.jpg", {"sky", "clouds"}),
    ("actor\\0002_174174086.jpg", {"tiger"}),
    ("C:\\ImageData\\Flickr\\airport\\0001_22334455.jpg", {"beach"}),
    ("airport\\0002_33445566.jpg", {"sky", "tiger"}),
    ("animal\\0001_55566677.jpg", set()),
    ("animal\\0002_66677788.jpg", {"zebra", "birds"}),
    ("zoo\\0001_77788899.jpg", {"airport"}),
]
SEEN_TAGS = [f"tag{k:02d}" for k in range(12)]
TAGS = SEEN_TAGS[:3] + ["sky", "tiger"] + SEEN_TAGS[3:]  # two tags equal a concept name: not seen labels


def _write_nuswide(root: Path, images=NUS_IMAGES, tag_rows=None) -> Path:
    (root / "ImageList").mkdir(parents=True)
    (root / "ImageList" / "Imagelist.txt").write_text("\r\n".join(line for line, _ in images) + "\r\n")
    (root / "ConceptsList").mkdir()
    (root / "ConceptsList" / "Concepts81.txt").write_text("\n".join(CONCEPTS81) + "\n")
    labels = root / "Groundtruth" / "AllLabels"
    labels.mkdir(parents=True)
    for concept in CONCEPTS81:
        (labels / f"Labels_{concept}.txt").write_text("".join(f"{int(concept in c)}\n" for _, c in images))
    for line, _ in images:
        folder, file = line.split("\\")[-2:]
        _image(root / "Flickr" / folder / file)
    (root / "NUS_WID_Tags").mkdir()
    (root / "NUS_WID_Tags" / "TagList1k.txt").write_text("\n".join(TAGS) + "\n")
    rows = tag_rows if tag_rows is not None else [[int((i + j) % 3 == 0) for j in range(len(TAGS))]
                                                  for i in range(len(images))]
    (root / "NUS_WID_Tags" / "AllTags1k.txt").write_text("".join("\t".join(map(str, r)) + "\t\n" for r in rows))
    return root


def test_nuswide_concepts_multi_hot_and_pools(tmp_path):
    from mlfsic.datasets import nuswide

    root = _write_nuswide(tmp_path / "NUS-WIDE")
    loaded = nuswide.read({"name": "nuswide", "root": str(root)})
    dataset = loaded.dataset
    assert dataset.label_names == tuple(CONCEPTS81)
    assert _rows(dataset) == {i + 1: concepts for i, (_, concepts) in enumerate(NUS_IMAGES)}
    assert dataset.file_names[:3] == ("actor/0001_2124494179.jpg", "actor/0002_174174086.jpg",
                                      "airport/0001_22334455.jpg")
    assert dataset.image_root == root / "Flickr"

    split = nuswide.label_split({"split_file": "nuswide.json"}, dataset)
    assert (len(split["base"]), len(split["val"]), len(split["test"])) == (52, 10, 19)
    assert _pool_rows(split_pool(dataset, "base", split["base"])) == {1: {"sky", "clouds"}, 7: {"airport"}}
    assert _pool_rows(split_pool(dataset, "val", split["val"])) == {3: {"beach"}}
    assert _pool_rows(split_pool(dataset, "test", split["test"])) == {2: {"tiger"}, 6: {"zebra", "birds"}}
    summary = disk.summarize(loaded, split, "nuswide.json")
    assert summary["images_per_split"] == {"base": 2, "val": 1, "test": 2}
    assert summary["images_without_labels"] == 1 and summary["images_in_no_split"] == 1  # 5 unlabelled; 4 mixed
    assert summary["split_provisional"] is True
    assert "labels with fewer than 10 images" in disk.format_summary(summary)


def test_nuswide_split_file_is_the_documented_rule():
    split = _split_json("nuswide.json")
    assert split["provisional"] is True and "PROVISIONAL" in split["note"]
    broad = ["sky", "clouds", "person", "water", "animal"]
    others = [c for c in CONCEPTS81 if c not in broad]
    assert split["test"] == [c for i, c in enumerate(others) if i % 4 == 3]
    assert split["val"] == [c for i, c in enumerate(others) if i % 8 == 1]
    assert split["train"] == [c for c in CONCEPTS81 if c not in split["test"] + split["val"]]
    assert sorted(CONCEPTS81) == CONCEPTS81 and len(CONCEPTS81) == 81


def test_nuswide_zsl925_protocol(tmp_path):
    from mlfsic.datasets import nuswide

    root = _write_nuswide(tmp_path / "NUS-WIDE")
    cfg = {"name": "nuswide-zsl", "root": str(root), "protocol": "zsl925", "split_file": "nuswide_zsl925.json"}
    loaded = nuswide.read(cfg)
    dataset = loaded.dataset
    assert dataset.label_names == tuple(SEEN_TAGS + CONCEPTS81)  # seen tags (TagList1k order), then concepts
    tags = np.array([[int((i + j) % 3 == 0) for j in range(len(TAGS))] for i in range(len(NUS_IMAGES))], dtype=bool)
    seen_columns = [TAGS.index(t) for t in SEEN_TAGS]
    assert (dataset.targets[:, :12] == tags[:, seen_columns]).all()
    assert _rows(dataset)[2] - set(SEEN_TAGS) == {"tiger"}  # the concept's human label, not the tag
    assert "12 seen labels = the 14 tags" in loaded.notes[0]

    split = nuswide.label_split(cfg, dataset)
    assert split["test"] == CONCEPTS81 and split["val"] == ["tag09"]
    assert split["base"] == [t for t in SEEN_TAGS if t != "tag09"]
    expected_test = {i: c for i, c in _rows(dataset).items() if c and c <= set(CONCEPTS81)}
    assert _pool_rows(split_pool(dataset, "test", split["test"])) == expected_test
    with pytest.raises(MlfsicError, match="needs dataset.protocol=zsl925"):
        nuswide.label_split({"split_file": "nuswide_zsl925.json"}, nuswide.read({"root": str(root)}).dataset)


def test_nuswide_duplicates_and_missing_images(tmp_path):
    from mlfsic.datasets import nuswide

    images = NUS_IMAGES + [NUS_IMAGES[1]]  # the same path again, same labels: kept once
    root = _write_nuswide(tmp_path / "a", images)
    loaded = nuswide.read({"root": str(root)})
    assert loaded.dataset.image_ids.tolist() == [1, 2, 3, 4, 5, 6, 7]
    assert any("kept once" in note for note in loaded.notes)
    images = NUS_IMAGES + [(NUS_IMAGES[1][0], {"zebra"})]
    root = _write_nuswide(tmp_path / "b", images)
    with pytest.raises(MlfsicError, match=r"Imagelist.txt:8: image actor/0002_174174086.jpg is listed again with "
                                          r"different labels \(first at line 2\)"):
        _ = nuswide.read({"root": str(root)}).dataset
    root = _write_nuswide(tmp_path / "c")
    (root / "Flickr" / "animal" / "0001_55566677.jpg").unlink()
    with pytest.raises(MlfsicError, match=r"1 of 7 images are missing, first .*Flickr/animal/0001_55566677.jpg "
                                          r"\(listed in .*Imagelist.txt:5\)"):
        _ = nuswide.read({"root": str(root)}).dataset
    dropped = nuswide.read({"root": str(root), "missing_images": "drop"})
    assert dropped.dataset.image_ids.tolist() == [1, 2, 3, 4, 6, 7] and dropped.missing_images == 1
    assert dropped.dataset.annotation_sha256 != nuswide.read({"root": str(root)}, check_images=False).dataset.annotation_sha256
    # with drop, the files decide even when the caller skips checks (workers rebuild the same dataset)
    assert nuswide.read({"root": str(root), "missing_images": "drop"}, check_images=False).dataset.image_ids.tolist() == \
        [1, 2, 3, 4, 6, 7]


@pytest.mark.parametrize("case, pattern", [
    ("truncated_labels", r"Labels_tiger.txt: 5 lines of values, but .*Imagelist.txt lists 7 images"),
    ("bad_value", r"Labels_sky.txt:3: expected 0/1 values, found '2'"),
    ("missing_label_file", r"Concepts81.txt:81: concept 'zebra' has no label file .*AllLabels/Labels_zebra.txt"),
    ("unknown_concept", r"Concepts81.txt:82: concept 'kitten' has no label file .*Labels_kitten.txt"),
    ("duplicate_concept", r"Concepts81.txt:82: 'sky' is listed twice \(first at line 56\)"),
    ("empty_list", r"Imagelist.txt: empty image list"),
    ("blank_line_in_list", r"Imagelist.txt:3: blank line"),
    ("tag_row_short", r"AllTags1k.txt:4: 13 values, expected 14"),
    ("tag_rows_missing", r"AllTags1k.txt: 6 lines of values, but .*Imagelist.txt lists 7 images"),
    ("no_tag_list", r"tag list not found: .*NUS_WID_Tags/TagList1k.txt"),
    ("bad_protocol", r"dataset.protocol='zsl': expected one of concepts81, zsl925"),
])
def test_nuswide_bad_input_is_one_line_naming_the_file(tmp_path, case, pattern):
    from mlfsic.datasets import nuswide

    root = _write_nuswide(tmp_path / "NUS-WIDE")
    labels = root / "Groundtruth" / "AllLabels"
    cfg = {"root": str(root), "protocol": "zsl925"}
    if case == "truncated_labels":
        (labels / "Labels_tiger.txt").write_text("0\n1\n0\n1\n0\n")
    elif case == "bad_value":
        (labels / "Labels_sky.txt").write_text("1\n0\n2\n1\n0\n0\n0\n")
    elif case == "missing_label_file":
        (labels / "Labels_zebra.txt").unlink()
    elif case == "unknown_concept":
        (root / "ConceptsList" / "Concepts81.txt").write_text("\n".join(CONCEPTS81 + ["kitten"]) + "\n")
    elif case == "duplicate_concept":
        (root / "ConceptsList" / "Concepts81.txt").write_text("\n".join(CONCEPTS81 + ["sky"]) + "\n")
    elif case == "empty_list":
        (root / "ImageList" / "Imagelist.txt").write_text("\n\n")
    elif case == "blank_line_in_list":
        (root / "ImageList" / "Imagelist.txt").write_text("a\\1_1.jpg\na\\2_2.jpg\n\na\\3_3.jpg\n")
    elif case == "tag_row_short":
        rows = (root / "NUS_WID_Tags" / "AllTags1k.txt").read_text().splitlines()
        rows[3] = rows[3][:-3]
        (root / "NUS_WID_Tags" / "AllTags1k.txt").write_text("\n".join(rows) + "\n")
    elif case == "tag_rows_missing":
        rows = (root / "NUS_WID_Tags" / "AllTags1k.txt").read_text().splitlines()
        (root / "NUS_WID_Tags" / "AllTags1k.txt").write_text("\n".join(rows[:-1]) + "\n")
    elif case == "no_tag_list":
        (root / "NUS_WID_Tags" / "TagList1k.txt").unlink()
    elif case == "bad_protocol":
        cfg["protocol"] = "zsl"
    with pytest.raises(MlfsicError, match=pattern) as error:
        _ = nuswide.read(cfg).dataset
    assert "\n" not in str(error.value)


# --------------------------------------------------------------------------------------- iMaterialist
IMAT_TRAIN = {"1": ["1", "2"], "2": ["5"], "3": ["3", "5"], "4": ["10", "20"], "5": ["13"], "6": []}
IMAT_VAL = {"1": ["15", "25"], "2": ["2", "4"]}


def _imat_json(labels: dict[str, list[str]]) -> dict:
    return {"images": [{"imageId": i, "url": f"https://example.invalid/{i}.jpg"} for i in labels],
            "annotations": [{"imageId": i, "labelId": ids} for i, ids in labels.items()],
            "license": {"id": 1, "name": "fixture"}}


def _write_imat(root: Path) -> Path:
    root.mkdir(parents=True)
    for name, labels in (("train", IMAT_TRAIN), ("validation", IMAT_VAL)):
        (root / f"{name}.json").write_text(json.dumps(_imat_json(labels)))
        for image_id in labels:
            _image(root / name / f"{image_id}.jpg")
    return root


def test_imaterialist_multi_hot_ids_and_pools(tmp_path):
    from mlfsic.datasets import imaterialist

    root = _write_imat(tmp_path / "imat")
    cfg = {"name": "imaterialist", "root": str(root)}
    loaded = imaterialist.read(cfg)
    dataset = loaded.dataset
    assert dataset.label_names == tuple(f"label_{i}" for i in range(1, 229))
    assert _rows(dataset) == {
        1: {"label_1", "label_2"}, 2: {"label_5"}, 3: {"label_3", "label_5"}, 4: {"label_10", "label_20"},
        5: {"label_13"}, 6: set(), 1_000_000_001: {"label_15", "label_25"}, 1_000_000_002: {"label_2", "label_4"}}
    assert dataset.file_name_of()[1_000_000_002] == "validation/2.jpg"
    assert loaded.sources == (("train.json", 6), ("validation.json", 2))
    assert any("label_<id>" in note for note in loaded.notes)
    split = imaterialist.label_split(cfg, dataset)
    assert _pool_rows(split_pool(dataset, "base", split["base"])) == {
        1: {"label_1", "label_2"}, 1_000_000_002: {"label_2", "label_4"}}
    assert _pool_rows(split_pool(dataset, "val", split["val"])) == {5: {"label_13"}}
    assert _pool_rows(split_pool(dataset, "test", split["test"])) == {
        2: {"label_5"}, 4: {"label_10", "label_20"}, 1_000_000_001: {"label_15", "label_25"}}
    summary = disk.summarize(loaded, split, "imaterialist.json")
    assert summary["images_without_labels"] == 1 and summary["images_per_split"] == {"base": 2, "val": 1, "test": 3}
    assert "PROVISIONAL" in disk.format_summary(summary)
    only_val = imaterialist.read({"root": str(root), "annotations": ["validation.json"], "images": ["validation"]}).dataset
    assert only_val.image_ids.tolist() == [1, 2]


def test_imaterialist_label_names_csv_and_json(tmp_path):
    from mlfsic.datasets import imaterialist

    root = _write_imat(tmp_path / "imat")
    rows = ["labelId,taskId,labelName,taskName"] + [
        f"{i},{1 + i % 3},{'Other' if i in (2, 3) else f'attr {i}'},{['Category', 'Color', 'Style'][i % 3]}"
        for i in range(1, 229)]
    (root / "label_map_228.csv").write_text("\n".join(rows) + "\n")
    cfg = {"root": str(root), "label_names": "label_map_228.csv"}
    dataset = imaterialist.read(cfg).dataset
    assert dataset.label_names[:4] == ("attr 1", "Other (Style)", "Other (Category)", "attr 4")
    assert _rows(dataset)[1] == {"attr 1", "Other (Style)"}
    split = imaterialist.label_split(cfg, dataset)  # the id-named split, mapped to the names
    assert split["test"][:2] == ["attr 5", "attr 10"] and split["val"][0] == "Other (Category)"
    assert dataset.annotation_sha256 != imaterialist.read({"root": str(root)}).dataset.annotation_sha256

    (root / "names.json").write_text(json.dumps({str(i): f"n{i}" for i in range(1, 30)}))
    dataset = imaterialist.read({"root": str(root), "label_names": "names.json"}).dataset
    assert len(dataset.label_names) == 29 and _rows(dataset)[4] == {"n10", "n20"}


def test_imaterialist_split_file_is_the_documented_rule():
    split = _split_json("imaterialist.json")
    assert split["provisional"] is True and "PROVISIONAL" in split["note"]
    assert split["test"] == [f"label_{i}" for i in range(1, 229) if i % 5 == 0]
    assert split["val"] == [f"label_{i}" for i in range(1, 229) if i % 10 == 3]
    assert len(split["train"]) == 160 and set(split["train"] + split["val"] + split["test"]) == {
        f"label_{i}" for i in range(1, 229)}


@pytest.mark.parametrize("case, pattern", [
    ("truncated_json", r"train.json:1: malformed JSON \(.*column \d+\)"),
    ("no_annotations", r"validation.json: missing list 'annotations'"),
    ("unknown_label", r"train.json: annotations\[1\]: unknown label id 999 \(label ids are 1..228"),
    ("bad_label", r"train.json: annotations\[0\]: labelId 'x7' is not a positive integer id"),
    ("twice_different", r"train.json: annotations\[6\]: image 2 is listed again with different labels "
                        r"\(first at annotations\[1\]\)"),
    ("not_listed", r"validation.json: annotations\[2\]: image 77 is not in 'images'"),
    ("missing_image", r"1 of 8 images are missing, first .*validation/2.jpg \(listed in .*validation.json: images\[1\]\)"),
    ("names_duplicate", r"names.csv:3: name 'a' is also given at .*names.csv:2, and the file has no task column"),
    ("names_header", r"names.csv:1: header 'foo,bar' lacks an id column"),
    ("unknown_split_label", r"own.json: test label 'label_999' is not a category of the dataset"),
    ("lists_differ", r"dataset.annotations has 2 files but dataset.images 1 folders"),
])
def test_imaterialist_bad_input_is_one_line_naming_the_file(tmp_path, case, pattern):
    from mlfsic.datasets import imaterialist

    root = _write_imat(tmp_path / "imat")
    cfg = {"root": str(root)}
    train = _imat_json(IMAT_TRAIN)
    if case == "truncated_json":
        (root / "train.json").write_text(json.dumps(train)[:50])
    elif case == "no_annotations":
        (root / "validation.json").write_text(json.dumps({"images": [{"imageId": "1", "url": "u"}]}))
    elif case == "unknown_label":
        train["annotations"][1]["labelId"] = ["999"]
        (root / "train.json").write_text(json.dumps(train))
    elif case == "bad_label":
        train["annotations"][0]["labelId"] = ["x7"]
        (root / "train.json").write_text(json.dumps(train))
    elif case == "twice_different":
        train["annotations"].append({"imageId": "2", "labelId": ["6"]})
        (root / "train.json").write_text(json.dumps(train))
    elif case == "not_listed":
        content = _imat_json(IMAT_VAL)
        content["annotations"].append({"imageId": "77", "labelId": ["1"]})
        (root / "validation.json").write_text(json.dumps(content))
    elif case == "missing_image":
        (root / "validation" / "2.jpg").unlink()
    elif case == "names_duplicate":
        (root / "names.csv").write_text("labelId,labelName\n1,a\n2,a\n")
        cfg["label_names"] = "names.csv"
    elif case == "names_header":
        (root / "names.csv").write_text("foo,bar\n1,a\n")
        cfg["label_names"] = "names.csv"
    elif case == "unknown_split_label":
        (tmp_path / "own.json").write_text(json.dumps({"train": ["label_1"], "val": ["label_2"], "test": ["label_999"]}))
        cfg["split_file"] = str(tmp_path / "own.json")
        with pytest.raises(MlfsicError, match=pattern) as error:
            imaterialist.label_split(cfg, imaterialist.read(cfg).dataset)
        assert "\n" not in str(error.value)
        return
    elif case == "lists_differ":
        cfg["images"] = ["train"]
    with pytest.raises(MlfsicError, match=pattern) as error:
        _ = imaterialist.read(cfg).dataset
    assert "\n" not in str(error.value)
    if case == "missing_image":
        assert imaterialist.read({**cfg, "missing_images": "drop"}).missing_images == 1


# ------------------------------------------------------------------------------ configs end to end
def test_dataset_configs_prepare_each_fixture(tmp_path):
    """configs/dataset/<name>.yaml composed as the CLI composes it, read by its adapter, summarised."""
    from mlfsic.datasets import imaterialist, nuswide
    from mlfsic.datasets import registry
    from mlfsic.harness.config import compose_config, to_container

    cases = [("voc", voc, _write_voc(tmp_path / "v"), (4, 1, 4)),
             ("nuswide", nuswide, _write_nuswide(tmp_path / "n"), (2, 1, 2)),
             ("nuswide_zsl", nuswide, _write_nuswide(tmp_path / "z"), None),
             ("imaterialist", imaterialist, _write_imat(tmp_path / "i"), (2, 1, 3))]
    for config, adapter, root, per_split in cases:
        cfg = compose_config([f"dataset={config}", f"dataset.root={root}"]).dataset
        assert cfg.adapter == adapter.__name__.rsplit(".", 1)[-1]
        prepared = registry.prepare_config(to_container(cfg))
        assert prepared.summary["split_provisional"] is True
        if per_split:
            assert tuple(prepared.summary["images_per_split"].values()) == per_split
        text = prepared.text()
        assert f"{cfg.name}: {len(prepared.dataset.image_ids)} images" in text and "PROVISIONAL" in text
    with pytest.raises(MlfsicError, match="dataset.root is not set"):
        registry.prepare_config(to_container(compose_config(["dataset=voc"]).dataset))
