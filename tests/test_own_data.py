"""Your own data (README "Your own data"): the walkthrough check -> split -> run on a generated folder of
images with metadata.csv / metadata.jsonl, the split maker's rule, COCO-format files, and one-line errors.

The generated data: 32 px PNGs of one or two coloured shapes; each label is a (colour, shape) pair drawn in
the image, so the small CNN trained on the base labels gives learnable features. One label holds a ``|``
and non-ASCII text ("blue cross | croix bleue") to exercise the CSV escape and labels kept as written.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

from mlfsic.datasets import imagefolder, registry
from mlfsic.harness.cli import main
from mlfsic.harness.errors import MlfsicError
from mlfsic.harness.protocol.data import Dataset, split_pool
from mlfsic.harness.protocol.split_maker import SplitRule, _Pools, _repair, make_split

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 230)}
LABELS = [f"{colour} {shape}" for colour in COLOURS for shape in SHAPES[:-1]] + ["red cross", "green cross",
                                                                                  "blue cross | croix bleue"]
SWEEP = ["dataset.backbone.kind=small_cnn", "dataset.backbone.epochs=1", "dataset.backbone.image_size=32",
         "method=[protonet,lcm]", "n_episodes=10", "seeds=[0]", "setting=[1shot]",
         "+method_args.protonet.n_episodes=50", "+method_args.lcm.steps=20", "+method_args.lcm.embed_dim=16",
         "+method_args.lcm.heads=2", "+method_args.lcm.n_val_episodes=2", "+method_args.lcm.adapt_steps=5"]


# ------------------------------------------------------------------------------------------ the data
def _draw(draw: ImageDraw.ImageDraw, label: str, box: tuple[int, int, int, int]) -> None:
    colour = COLOURS[label.split()[0]]
    shape = label.split()[1]
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([(x0, y1), ((x0 + x1) // 2, y0), (x1, y1)], fill=colour)
    else:
        width, cx, cy = max(2, (x1 - x0) // 4), (x0 + x1) // 2, (y0 + y1) // 2
        draw.rectangle((cx - width, y0, cx + width, y1), fill=colour)
        draw.rectangle((x0, cy - width, x1, cy + width), fill=colour)


def make_images(root: Path, n_images: int = 300, seed: int = 0, size: int = 32) -> list[tuple[str, list[str]]]:
    """PNGs under root/a and root/b, 60 % with one shape, the rest with two; (file name, labels) per image."""
    rng = np.random.default_rng(seed)
    rows = []
    for number in range(n_images):
        k = 1 if rng.random() < 0.6 else 2
        labels = [LABELS[i] for i in rng.choice(len(LABELS), size=k, replace=False)]
        image = Image.new("RGB", (size, size), (30, 30, 30))
        draw = ImageDraw.Draw(image)
        half = size // 2
        for slot, label in enumerate(labels):
            x = slot * half if k == 2 else int(rng.integers(0, half // 2))
            y = int(rng.integers(0, half))
            _draw(draw, label, (x + 1, y + 1, x + half - 2, y + half - 2))
        name = f"{'ab'[number % 2]}/img_{number:04d}.png"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        image.save(root / name)
        rows.append((name, labels))
    return rows


def write_jsonl(root: Path, rows: list[tuple[str, list[str]]], name: str = "metadata.jsonl") -> Path:
    path = root / name
    path.write_text("".join(json.dumps({"file_name": f, "labels": labels}, ensure_ascii=False) + "\n"
                            for f, labels in rows), encoding="utf-8")
    return path


def write_csv(root: Path, rows: list[tuple[str, list[str]]], name: str = "metadata.csv") -> Path:
    path = root / name
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", "labels", "photographer"])
        for file_name, labels in rows:
            writer.writerow([file_name, "|".join(label.replace("\\", "\\\\").replace("|", "\\|") for label in labels),
                             "me, myself"])
    return path


@pytest.fixture(scope="module")
def own_data(tmp_path_factory) -> tuple[Path, list[tuple[str, list[str]]]]:
    root = tmp_path_factory.mktemp("own") / "shapes"
    rows = make_images(root)
    write_csv(root, rows)
    return root, rows


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("mlfsic: error: ") and "\n" not in err, err
    return err


# ------------------------------------------------------------------------------------------ walkthrough
def test_walkthrough_check_split_run(own_data, tmp_path, capsys, ray_session):
    """README "Your own data": the three commands, as written there, end in a leaderboard."""
    root, _ = own_data
    assert main(["data", "check", "imagefolder", f"root={root}"]) == 0
    out = capsys.readouterr().out
    assert "imagefolder: 300 images, 12 labels" in out and "check: OK" in out
    assert f"make one: mlfsic data split imagefolder root={root} out={root}/split.json" in out
    assert "blue cross | croix bleue" in out  # the label as written

    assert main(["data", "split", "imagefolder", f"root={root}", "seed=0", "max_shot=5", "n_query=4"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {root}/split.json: base 8 / val 2 / test 2 labels" in out
    split = json.loads((root / "split.json").read_text())
    made = split["made_by"]
    dataset = imagefolder.read({"root": str(root)}).dataset
    assert made["seed"] == 0 and made["rule"] == "frequency-stratified-v1" and made["floor"] == 9
    assert made["data_sha256"] == dataset.annotation_sha256
    assert sorted(split["train"] + split["val"] + split["test"]) == sorted(LABELS)
    for part, key in (("base", "train"), ("val", "val"), ("test", "test")):
        pool = split_pool(dataset, part, split[key])
        assert made["images_per_split"][part] == len(pool)
        if part != "base":
            assert pool.targets.sum(axis=0).min() >= 9  # every val/novel label keeps K + Q under the strict rule
    # the same command again: the same file (seeded); another split in its place needs force=true
    before = (root / "split.json").read_text()
    assert main(["data", "split", "imagefolder", f"root={root}", "seed=0", "max_shot=5", "n_query=4"]) == 0
    assert (root / "split.json").read_text() == before
    assert main(["data", "split", "imagefolder", f"root={root}", "seed=1", "max_shot=5", "n_query=4"]) == 2
    assert "force=true replaces it" in _one_line_error(capsys)

    assert main(["data", "check", "imagefolder", f"root={root}"]) == 0  # now with the split's pools
    out = capsys.readouterr().out
    assert "label split" in out and "images per label (in all / in its split's pool)" in out

    results = tmp_path / "results"
    assert main(["run", "dataset=imagefolder", f"dataset.root={root}", f"results_dir={results}", *SWEEP]) == 0
    run_dir = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert (run_dir / "leaderboard.md").is_file() and "| protonet |" in (run_dir / "leaderboard.md").read_text()
    records = pd.read_parquet(run_dir / "records.parquet")
    assert set(records["method"]) == {"protonet", "lcm"} and len(records) == 2 * 10
    assert records["map"].between(0, 1).all() and records["n_labels"].eq(2).all()
    labels = set(pd.read_parquet(run_dir / "label_ap.parquet")["label"])
    assert labels == set(split["test"])  # the novel labels, named as written in the metadata
    run = json.loads((run_dir / "run.json").read_text())
    assert run["dataset"]["annotation_sha256"] == dataset.annotation_sha256


def test_jsonl_and_csv_read_the_same_and_the_id_follows_the_data(own_data, tmp_path):
    root, rows = own_data
    from_csv = imagefolder.read({"root": str(root)}).dataset
    other = tmp_path / "jsonl"
    other.mkdir()
    (other / "a").symlink_to(root / "a")
    (other / "b").symlink_to(root / "b")
    write_jsonl(other, rows)
    from_jsonl = imagefolder.read({"root": str(other)}).dataset
    assert from_jsonl.label_names == from_csv.label_names == tuple(sorted(LABELS))
    assert from_jsonl.file_names == from_csv.file_names and np.array_equal(from_jsonl.targets, from_csv.targets)
    assert from_jsonl.image_ids.tolist() == list(range(1, 301))
    assert "blue cross | croix bleue" in from_csv.label_names  # '\|' in the CSV cell is a '|'
    again = imagefolder.read({"root": str(other)}).dataset
    assert again.annotation_sha256 == from_jsonl.annotation_sha256 != from_csv.annotation_sha256
    write_jsonl(other, [(f, ["red circle"] if i == 0 else labels) for i, (f, labels) in enumerate(rows)])
    assert imagefolder.read({"root": str(other)}).dataset.annotation_sha256 != from_jsonl.annotation_sha256


def test_options_name_another_file_and_columns(tmp_path):
    (tmp_path / "x.png").write_bytes(b"")
    (tmp_path / "y.png").write_bytes(b"")
    (tmp_path / "labels.csv").write_text("path,ignored,tags\nx.png,1,\"sofa|tennis racket\"\n"
                                         "./y.png,2, Café \\\\|\\|pipe|\n", encoding="utf-8")
    cfg = {"root": str(tmp_path), "metadata": "labels.csv", "file_column": "path", "labels_column": "tags"}
    with pytest.raises(MlfsicError, match=r"labels.csv:3: an empty label"):
        imagefolder.read(cfg)
    (tmp_path / "labels.csv").write_text("path,ignored,tags\nx.png,1,\"sofa|tennis racket\"\n"
                                         "./y.png,2, Café \\\\|\\|pipe\nx.png,3,tennis racket|sofa\n",
                                         encoding="utf-8")
    loaded = imagefolder.read(cfg)
    dataset = loaded.dataset
    assert dataset.file_names == ("x.png", "y.png")
    assert dataset.label_names == ("Café \\", "sofa", "tennis racket", "|pipe")
    assert loaded.duplicate_rows == 1
    assert imagefolder.split_labels("cat|fire hydrant|a\\|b") == ["cat", "fire hydrant", "a|b"]


# ------------------------------------------------------------------------------------------ errors
def _small_tree(root: Path, fmt: str) -> tuple[Path, list[tuple[str, list[str]]]]:
    rows = [(f"img_{i}.png", [LABELS[i % 6]]) for i in range(30)]
    root.mkdir(parents=True)
    for name, _ in rows:
        Image.new("RGB", (4, 4)).save(root / name)
    path = (write_jsonl if fmt == "jsonl" else write_csv)(root, rows)
    (root / "split.json").write_text(json.dumps({"train": LABELS[:2], "val": LABELS[2:4], "test": LABELS[4:6]}))
    return path, rows


BAD = {  # case: (format, line to put at data row 3, expected message after the file name)
    "bad_json": ("jsonl", '{"file_name": "img_2.png", "labels": [', r":3: malformed JSON"),
    "not_an_object": ("jsonl", '["img_2.png", ["red circle"]]', r":3: expected a JSON object"),
    "missing_key": ("jsonl", '{"file_name": "img_2.png"}', r":3: no key 'labels'"),
    "labels_not_a_list": ("jsonl", '{"file_name": "img_2.png", "labels": "red circle"}', r":3: 'labels' is .* expected a list"),
    "empty_label": ("jsonl", '{"file_name": "img_2.png", "labels": ["red circle", ""]}', r":3: an empty label"),
    "whitespace_label": ("jsonl", '{"file_name": "img_2.png", "labels": [" \\t "]}', r":3: a label that is only whitespace"),
    "listed_twice": ("jsonl", '{"file_name": "img_0.png", "labels": ["green circle"]}',
                     r":3: image img_0.png is listed again with different labels \(first at line 1\)"),
    "missing_file": ("jsonl", '{"file_name": "gone/img_2.png", "labels": ["red circle"]}',
                     r"gone/img_2.png \(listed in .*metadata.jsonl:3\)"),
    "leaves_root": ("jsonl", '{"file_name": "../img_2.png", "labels": ["red circle"]}', r":3: file name .* is not a path inside"),
    "csv_empty_label": ("csv", "img_2.png,red circle||green circle,me", r":4: an empty label"),
    "csv_whitespace_label": ("csv", "img_2.png,red circle|  ,me", r":4: a label that is only whitespace"),
    "csv_extra_field": ("csv", "img_2.png,red circle,me,you", r":4: 4 fields but the header has 3"),
    "csv_missing_column": ("csv", None, r":1: no column 'labels'"),
    "csv_not_utf8": ("csv", b"img_2.png,caf\xe9,me", r":4: not UTF-8 text"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_input_is_one_line_naming_file_and_line_and_writes_nothing(tmp_path, capsys, case):
    fmt, line, pattern = BAD[case]
    path, _ = _small_tree(tmp_path / "data", fmt)
    lines = path.read_bytes().split(b"\n")
    if line is None:
        lines[0] = b"file_name,tags,photographer"
    else:
        lines[2 if fmt == "jsonl" else 3] = line if isinstance(line, bytes) else line.encode()
    path.write_bytes(b"\n".join(lines))
    results = tmp_path / "results"
    assert main(["run", "dataset=imagefolder", f"dataset.root={tmp_path / 'data'}", f"results_dir={results}",
                 "dataset.backbone.kind=small_cnn", "method=[protonet]", "n_episodes=2"]) == 2
    assert str(path) in _one_line_error(capsys) or case == "missing_file"
    assert not results.exists() or not any(results.rglob("*"))  # nothing written
    with pytest.raises(MlfsicError, match=pattern) as error:
        imagefolder.read({"root": str(tmp_path / "data")})
    assert str(path) in str(error.value) and "\n" not in str(error.value)
    # `data check` stops on the same line (a missing file: in its report, then exit 2 naming file and line)
    assert main(["data", "check", "imagefolder", f"root={tmp_path / 'data'}"]) == 2
    message = _one_line_error(capsys)
    assert f"{path.name}:" in message


def test_check_reports_unreadable_files_and_labels_below_the_floor(tmp_path, capsys):
    _small_tree(tmp_path / "data", "jsonl")
    (tmp_path / "data" / "img_7.png").write_bytes(b"not a png")
    assert main(["data", "check", "imagefolder", f"root={tmp_path / 'data'}", "max_shot=5", "n_query=4"]) == 2
    out = capsys.readouterr()
    assert "unreadable: " in out.out and "img_7.png" in out.out
    assert "error: val labels below K + Q = 9 images" in out.out  # 5 images a label: below 5 + 4
    assert "1 image files cannot be opened" in out.err and "val labels have fewer than" in out.err
    assert main(["data", "check", "imagefolder", f"root={tmp_path / 'data'}", "max_shot=1", "n_query=4",
                 "open_images=false"]) == 0


def test_a_hand_written_split_file_keeps_working(tmp_path):
    from mlfsic.harness.sweep.load import load_sweep

    _small_tree(tmp_path / "data", "jsonl")
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps({"train": LABELS[:4], "val": LABELS[4:5], "test": LABELS[5:6]}))
    sweep = load_sweep(["dataset=imagefolder", f"dataset.root={tmp_path / 'data'}", f"dataset.split_file={mine}",
                        "dataset.backbone.kind=small_cnn"])
    cfg = sweep.dataset.as_dict()
    assert registry.label_split(cfg, registry.load_dataset(cfg)) == {"base": LABELS[:4], "val": [LABELS[4]],
                                                                     "test": [LABELS[5]]}


def test_without_a_split_file_the_error_gives_the_command(tmp_path):
    _small_tree(tmp_path / "data", "jsonl")
    (tmp_path / "data" / "split.json").unlink()
    from mlfsic.harness.config import compose_config, to_container

    cfg = to_container(compose_config(["dataset=imagefolder", f"dataset.root={tmp_path / 'data'}",
                                       "dataset.metadata=metadata.jsonl"]))["dataset"]
    command = (f"mlfsic data split imagefolder root={tmp_path / 'data'} metadata=metadata.jsonl "
               f"out={tmp_path / 'data'}/split.json")
    with pytest.raises(MlfsicError, match="split file not found") as error:
        registry.label_split(cfg, registry.load_dataset(cfg))
    assert command in str(error.value) and "\n" not in str(error.value)
    assert command in str(registry.missing_split_error(cfg))


def test_a_sweep_without_a_split_file_says_how_to_make_one(tmp_path, capsys):
    _small_tree(tmp_path / "data", "jsonl")
    (tmp_path / "data" / "split.json").unlink()
    assert main(["run", "dataset=imagefolder", f"dataset.root={tmp_path / 'data'}",
                 f"results_dir={tmp_path / 'results'}"]) == 2
    assert f"mlfsic data split imagefolder root={tmp_path / 'data'}" in _one_line_error(capsys)


# ------------------------------------------------------------------------------------------ the split rule
def _dataset(targets: np.ndarray, names: list[str] | None = None) -> Dataset:
    names = names or [f"label {i:02d}" for i in range(targets.shape[1])]
    return Dataset(name="synthetic", image_root=Path("."), image_ids=np.arange(len(targets), dtype=np.int64),
                   file_names=tuple(f"{i}.png" for i in range(len(targets))), label_names=tuple(names),
                   targets=targets.astype(bool), annotation_sha256="0" * 64)


def _zipf_targets(n_images: int = 3000, n_labels: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, n_labels + 1)
    weights /= weights.sum()
    targets = np.zeros((n_images, n_labels), dtype=bool)
    for row in range(n_images):
        targets[row, rng.choice(n_labels, size=int(rng.integers(1, 3)), replace=False, p=weights)] = True
    return targets


def test_split_is_seeded_balanced_by_frequency_and_meets_the_floor():
    dataset = _dataset(_zipf_targets())
    rule = SplitRule(max_shot=5, n_query=4, seed=0)
    made = make_split(dataset, rule)
    assert make_split(dataset, rule) == made
    assert make_split(dataset, SplitRule(seed=1)).parts != made.parts
    sizes = {part: len(labels) for part, labels in made.parts.items()}
    assert sum(sizes.values()) == 40 and sizes["val"] + sizes["test"] >= 12 and sizes["base"] >= 24
    frequency = dict(zip(dataset.label_names, dataset.targets.sum(axis=0)))
    ranks = {name: rank for rank, name in enumerate(sorted(frequency, key=lambda n: -frequency[n]))}
    for part in ("val", "test"):  # every part holds frequent and rare labels: stratified by frequency rank
        part_ranks = [ranks[name] for name in made.parts[part]]
        assert min(part_ranks) < 20 <= max(part_ranks)
        pool = split_pool(dataset, part, made.parts[part])
        assert pool.targets.sum(axis=0).min() >= rule.floor
        assert made.images_per_split[part] == len(pool)
    content = made.file_content(dataset, rule, "mlfsic data split x")
    assert content["made_by"]["min_images_per_label"]["val"] >= 9 and content["train"] == made.parts["base"]


def test_repair_gives_a_short_label_back_the_images_a_co_occurring_label_takes():
    rows = [{label} for label in (0, 1, 2, 3, 4, 5, 7) for _ in range(20)]  # 20 images of each alone
    rows += [{6}] * 3 + [{6, 7}] * 20  # label 6 (val): 3 images alone, 20 with label 7 (novel)
    targets = np.array([[label in row for label in range(8)] for row in rows])
    part_of = np.array([0, 0, 0, 0, 0, 1, 1, 2])
    before, _ = _Pools(targets).own(part_of)
    assert before[6] < 9
    steps = _repair(part_of, np.argsort(-targets.sum(axis=0), kind="stable"), np.ones(8, dtype=bool),
                    _Pools(targets), 9, [f"l{i}" for i in range(8)])
    own, _ = _Pools(targets).own(part_of)
    assert steps and steps[0].startswith("swapped") and own[part_of > 0].min() >= 9
    assert np.bincount(part_of, minlength=3).tolist() == [5, 2, 1]  # a swap keeps the parts' sizes


def test_a_floor_no_label_can_meet_is_one_line_saying_what_to_lower():
    dataset = _dataset(np.eye(12, dtype=bool).repeat(5, axis=0))  # 5 images a label
    with pytest.raises(MlfsicError, match="lower max_shot or n_query"):
        make_split(dataset, SplitRule(max_shot=5, n_query=4))
    assert len(make_split(dataset, SplitRule(max_shot=1, n_query=4)).parts["test"]) >= 1


# ------------------------------------------------------------------------------------------ coco-format
def _write_coco(root: Path, rows: list[tuple[str, list[str]]], source: Path) -> dict:
    categories = [{"id": 10 + i, "name": name} for i, name in enumerate(sorted(LABELS))]
    ids = {c["name"]: c["id"] for c in categories}
    images, annotations = [], []
    (root / "images").mkdir(parents=True)
    for number, (file_name, labels) in enumerate(rows, start=1):
        (root / "images" / Path(file_name).name).symlink_to(source / file_name)
        images.append({"id": number, "file_name": Path(file_name).name, "width": 32, "height": 32})
        for label in labels:
            annotations.append({"id": len(annotations) + 1, "image_id": number, "category_id": ids[label],
                                "bbox": [0, 0, 8, 8], "area": 64, "iscrowd": 0})
    content = {"images": images, "annotations": annotations, "categories": categories}
    (root / "instances.json").write_text(json.dumps(content))
    return content


def test_coco_format_check_split_and_sweep_resolution(own_data, tmp_path, capsys):
    from mlfsic.harness.sweep.load import load_sweep

    source, rows = own_data
    root = tmp_path / "coco"
    content = _write_coco(root, rows, source)
    options = [f"root={root}", "annotations=instances.json", "images=images"]
    assert main(["data", "check", "coco-format", *options]) == 0
    out = capsys.readouterr().out
    assert "coco-format: 300 images, 12 labels" in out
    assert f"mlfsic data split coco-format root={root} annotations=instances.json images=images out={root}/split.json" in out
    assert main(["data", "split", "coco-format", *options, "seed=0"]) == 0
    assert (f"next: mlfsic run dataset=coco-format dataset.root={root} dataset.annotations=instances.json "
            "dataset.images=images") in capsys.readouterr().out
    sweep = load_sweep(["dataset=coco-format", f"dataset.root={root}", "dataset.annotations=instances.json",
                        "dataset.images=images", "dataset.backbone.kind=small_cnn"])
    cfg = sweep.dataset.as_dict()
    dataset = registry.load_dataset(cfg)
    from_folder = imagefolder.read({"root": str(source)}).dataset
    assert dataset.label_names == from_folder.label_names and np.array_equal(dataset.targets, from_folder.targets)
    split = registry.label_split(cfg, dataset)
    assert sorted(split["base"] + split["val"] + split["test"]) == sorted(LABELS)

    content["categories"][1]["name"] = content["categories"][0]["name"]
    (root / "instances.json").write_text(json.dumps(content))
    assert main(["data", "check", "coco-format", *options]) == 2
    assert "instances.json: categories[1] (id 11): name 'blue circle' is also that of categories[0]" in \
        _one_line_error(capsys)


# ------------------------------------------------------------------------------------------ scale
@pytest.mark.slow
def test_a_million_metadata_rows_read_in_under_a_minute(tmp_path):
    """1,000,000 JSONL rows (metadata only; the files' existence is checked, here all missing)."""
    from mlfsic.datasets.adapter import check_images

    rng = np.random.default_rng(0)
    labels = [f"tag {i}" for i in range(100)]
    picks = rng.integers(0, len(labels), size=(1_000_000, 3))
    with open(tmp_path / "metadata.jsonl", "w") as handle:
        handle.writelines(json.dumps({"file_name": f"d{number % 1000}/{number}.jpg",
                                      "labels": [labels[i] for i in set(row.tolist())]}) + "\n"
                          for number, row in enumerate(picks))
    start = time.perf_counter()
    dataset = imagefolder.read({"root": str(tmp_path)}, check_images=False).dataset
    present = check_images(tmp_path, dataset.file_names, lambda i: "", "drop")
    seconds = time.perf_counter() - start
    print(f"1,000,000 rows read and checked in {seconds:.1f}s")
    assert len(dataset.image_ids) == 1_000_000 and not present.any() and seconds < 60
