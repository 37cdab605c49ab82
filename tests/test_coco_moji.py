"""The coco-moji generator (docs/architecture.md §6.2): catalogue, COCO output, split rule, determinism, atomicity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

import mlfsic.datasets.coco_moji.generate as generate_module
from mlfsic.datasets.coco import load_coco
from mlfsic.datasets.coco_moji import drawable_categories, format_summary, generate_coco_moji
from mlfsic.datasets.coco_moji.catalogue import COCO_2014_CATEGORIES, DISTRACTORS, GLYPHS, NOT_DRAWABLE
from mlfsic.datasets.coco_moji.generate import default_split_file, read_split
from mlfsic.datasets.coco_moji.glyphs import render_glyph
from mlfsic.datasets.coco_moji.plan import n_mixed_scenes, plan_scenes
from mlfsic.harness.protocol.data import split_pool
from mlfsic.harness.errors import MlfsicError

TINY = {"n_base": 60, "n_val": 20, "n_test": 40}
N_MIXED = 6  # 5 % of 120


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("moji") / "seed0"
    summary = generate_coco_moji(out, seed=0, preview=out.parent / "preview.png", progress=False, **TINY)
    return out, summary


def _annotations(out: Path) -> dict:
    return json.loads((out / "annotations.json").read_text())


def test_categories_have_official_coco_2014_ids_and_names():
    # independent reference: torchvision's COCO label list, indexed by category id ("N/A" at the gaps)
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

    reference = FasterRCNN_ResNet50_FPN_Weights.DEFAULT.meta["categories"]
    assert len(COCO_2014_CATEGORIES) == 80
    for category_id, name, _ in COCO_2014_CATEGORIES:
        assert reference[category_id] == name
    names = {name for _, name, _ in COCO_2014_CATEGORIES}
    assert set(GLYPHS) <= names and set(NOT_DRAWABLE) <= names
    assert set(GLYPHS).isdisjoint(NOT_DRAWABLE) and set(GLYPHS) | set(NOT_DRAWABLE) == names
    assert drawable_categories() == [name for _, name, _ in COCO_2014_CATEGORIES if name in GLYPHS]


def test_every_catalogue_glyph_renders_from_the_font():
    codepoints = [code for codes in GLYPHS.values() for code in codes] + list(DISTRACTORS)
    assert len(codepoints) == len(set(codepoints)), "a glyph is listed twice (two categories or also a distractor)"
    for category, codes in GLYPHS.items():
        assert codes, category
        for code in codes:
            image = render_glyph(code)
            alpha = np.asarray(image.getchannel("A"))
            assert (alpha >= 128).sum() > 500, f"{category}: U+{code:04X} renders (almost) empty"
            rgb = np.asarray(image.convert("RGB"), dtype=np.int32)[alpha >= 128]
            assert np.ptp(rgb, axis=0).max() > 60, f"{category}: U+{code:04X} is not drawn in colour"
    for code in DISTRACTORS:
        render_glyph(code)


def test_missing_glyph_is_refused_not_drawn_as_a_box():
    with pytest.raises(MlfsicError, match="U\\+0041"):
        render_glyph(ord("A"))  # the emoji font has no Latin letters: Pillow would draw .notdef


def test_loads_with_pycocotools_and_the_coco_adapter(tiny):
    out, summary = tiny
    coco = COCO(str(out / "annotations.json"))
    assert len(coco.getImgIds()) == sum(TINY.values()) + N_MIXED == summary["n_images"]
    categories = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    split, _ = read_split(default_split_file())
    assert sorted(categories.values()) == sorted(label for labels in split.values() for label in labels)
    document = _annotations(out)
    assert document["info"]["generator_version"] == summary["generator_version"]
    assert "CC BY-SA 4.0" in document["licenses"][0]["name"] and "OpenMoji" in document["licenses"][0]["attribution"]
    dataset = load_coco("coco-moji", out, "annotations.json", "images")
    assert dataset.targets.sum(axis=1).min() >= 1 and dataset.targets.sum(axis=1).max() <= 4
    assert dataset.targets.sum() == summary["n_annotations"]  # one annotation per distinct label


def test_split_rule_pools_have_the_requested_sizes_and_mixed_images_belong_to_no_split(tiny):
    out, summary = tiny
    dataset = load_coco("coco-moji", out, "annotations.json", "images")
    split, dropped = read_split(default_split_file())
    assert "fork" in dropped["test"] and "bicycle" in split["test"]
    pools = {name: split_pool(dataset, name, split[name]) for name in ("base", "val", "test")}
    for name, pool in pools.items():
        assert len(pool) == TINY[f"n_{name}"] == summary["images_per_split"][name]
    in_a_pool = set().union(*(set(pool.image_ids.tolist()) for pool in pools.values()))
    scene_split = {image["id"]: image["scene_split"] for image in _annotations(out)["images"]}
    mixed = {image_id for image_id, name in scene_split.items() if name == "mixed"}
    assert len(mixed) == N_MIXED == summary["unassigned_images"] == summary["mixed_images"]
    assert mixed.isdisjoint(in_a_pool) and in_a_pool | mixed == set(scene_split)
    for name, pool in pools.items():
        assert all(scene_split[i] == name for i in pool.image_ids.tolist())


def test_boxes_lie_inside_the_image_and_labels_are_distinct(tiny):
    out, _ = tiny
    document = _annotations(out)
    size = {image["id"]: (image["width"], image["height"]) for image in document["images"]}
    seen: dict[int, list[int]] = {}
    for annotation in document["annotations"]:
        x, y, w, h = annotation["bbox"]
        width, height = size[annotation["image_id"]]
        assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= width and y + h <= height
        assert 0 < annotation["area"] <= w * h and annotation["iscrowd"] == 0
        assert 0.29 * 96 * 0.5 <= max(w, h) <= 96  # glyphs are drawn large enough to recognise
        seen.setdefault(annotation["image_id"], []).append(annotation["category_id"])
    assert all(len(ids) == len(set(ids)) for ids in seen.values())
    with Image.open(out / "images" / document["images"][0]["file_name"]) as image:
        assert image.mode == "RGB" and image.size == (96, 96)


def test_same_seed_is_byte_identical_and_another_seed_differs(tiny, tmp_path):
    out, _ = tiny
    again = tmp_path / "again"
    other = tmp_path / "other"
    generate_coco_moji(again, seed=0, progress=False, **TINY)
    generate_coco_moji(other, seed=1, progress=False, **TINY)
    assert (again / "annotations.json").read_bytes() == (out / "annotations.json").read_bytes()
    for name in ("1.png", "57.png"):
        assert (again / "images" / name).read_bytes() == (out / "images" / name).read_bytes()
    assert (other / "annotations.json").read_bytes() != (out / "annotations.json").read_bytes()


def test_existing_dataset_is_reused_and_never_overwritten(tiny):
    out, summary = tiny
    stamp = (out / "annotations.json").stat().st_mtime_ns
    reused = generate_coco_moji(out, seed=0, progress=False, **TINY)
    assert reused["reused"] and not summary["reused"]
    assert reused["images_per_split"] == summary["images_per_split"]
    assert (out / "annotations.json").stat().st_mtime_ns == stamp
    with pytest.raises(MlfsicError, match="seed"):
        generate_coco_moji(out, seed=3, progress=False, **TINY)


def test_interrupted_run_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = {"n": 0}
    real_draw = generate_module.draw_scene

    def failing_draw(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt
        return real_draw(*args, **kwargs)

    monkeypatch.setattr(generate_module, "draw_scene", failing_draw)
    with pytest.raises(KeyboardInterrupt):
        generate_coco_moji(tmp_path / "moji", progress=False, **TINY)
    assert list(tmp_path.iterdir()) == []


def test_preview_and_summary_text(tiny):
    out, summary = tiny
    with Image.open(summary["preview"]) as sheet:
        assert sheet.width >= 4 * 192 and sheet.height >= 4 * 192
    text = format_summary(summary)
    assert "base 60, val 20, test 40" in text and "bicycle" in text and "not drawable" in text


def test_bad_split_file_names_the_label(tmp_path):
    bad = tmp_path / "split.json"
    bad.write_text(json.dumps({"train": ["dog"], "val": ["cat"], "test": ["unicorn"]}))
    with pytest.raises(MlfsicError, match="unicorn"):
        generate_coco_moji(tmp_path / "out", split_file=bad, progress=False, **TINY)
    only_undrawable = tmp_path / "undrawable.json"
    only_undrawable.write_text(json.dumps({"train": ["dog"], "val": ["cat"], "test": ["fork"]}))
    with pytest.raises(MlfsicError, match="no drawable test label"):
        generate_coco_moji(tmp_path / "out", split_file=only_undrawable, progress=False, **TINY)


def test_default_size_plan_is_balanced_and_covers_every_novel_label():
    split, _ = read_split(default_split_file())
    counts = {"base": 6000, "val": 1500, "test": 2000}
    plans = plan_scenes(split, counts, n_mixed_scenes(counts, split), np.random.default_rng(0))
    assert sum(plan.split == "mixed" for plan in plans) == 475
    sizes = np.bincount([len(plan.labels) for plan in plans if plan.split != "mixed"], minlength=5)[1:]
    assert np.allclose(sizes / sizes.sum(), [0.4, 0.3, 0.2, 0.1], atol=0.02)
    for name in ("base", "val", "test"):
        allowed = set(split[name])
        per_label = {label: 0 for label in split[name]}
        for plan in plans:
            if plan.split == name:
                assert set(plan.labels) <= allowed and len(set(plan.labels)) == len(plan.labels)
                for label in plan.labels:
                    per_label[label] += 1
        assert min(per_label.values()) >= 25 and max(per_label.values()) <= 1.2 * min(per_label.values()), name
    for plan in plans:
        if plan.split == "mixed":
            assert sum(any(label in split[name] for label in plan.labels) for name in split) >= 2
