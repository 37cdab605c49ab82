"""``mlfsic explain`` (harness/cli/explain.py; the study's code: studies/lcm_tomm2024/explain.py, measures.py).

Fast tests: the figure, the box and the attention measures on a tiny generated coco-moji (a few seconds of
generation, one backbone epoch, 10 LCM steps), the box geometry, the kept-inside-box fraction and the
attention transfer on hand-made explanations, bad options.
The slow test prints the kept-inside-box fractions of LCM on the default coco-moji val split.
"""

from __future__ import annotations

import doctest
import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from mlfsic.harness.cli import main
from mlfsic.harness.cli.explain import explain_command, parse_options
from mlfsic.harness.errors import MlfsicError
from mlfsic.studies.lcm_tomm2024 import measures as measures_module
from mlfsic.studies.lcm_tomm2024.explain import prepare
from mlfsic.studies.lcm_tomm2024.explain_figure import Boxes, cells_inside, figure_size, tile_box
from mlfsic.studies.lcm_tomm2024.measures import attention_transfer, border_cells, kept_inside_box_fraction, measure_boxes

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
TINY = {"dataset.generate.n_base": "120", "dataset.generate.n_val": "90", "dataset.generate.n_test": "24",
        "dataset.backbone.epochs": "1", "+method_args.lcm.steps": "10"}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("explain")


# ------------------------------------------------------------------------------------------- figure
def test_explain_writes_one_png_with_overlays(tiny_dir, capsys):
    out = tiny_dir / "figure.png"
    options = {**TINY, "results_dir": str(tiny_dir), "n_images": "2", "out": str(out),
               "threshold_mode": "relative", "theta": "0.8"}
    assert explain_command(options) == 0
    assert capsys.readouterr().out.strip() == str(out)
    with Image.open(out) as figure:
        assert figure.format == "PNG" and figure.size == figure_size(2, 2 + 4)
        pixels = np.asarray(figure.convert("RGB"), dtype=np.float64)
    for row in range(2):
        raw, kept, attention = (pixels[tile_box(row, c)[1]:tile_box(row, c)[3], tile_box(row, c)[0]:tile_box(row, c)[2]]
                                for c in range(3))
        assert raw.shape == (192, 192, 3) and raw.std() > 5  # an image, not an empty tile
        assert kept.mean() < raw.mean()  # relative theta 0.8 drops cells: they are darkened
        assert np.abs(attention - raw).mean() > 5  # the heat overlay changes the image


def test_explain_measure_boxes_prints_kept_and_chance(tiny_dir, capsys):
    assert explain_command({**TINY, "results_dir": str(tiny_dir), "measure": "boxes", "n_episodes": "2"}) == 0
    line = capsys.readouterr().out.strip()
    match = re.search(r"inside the label's boxes: ([\d.]+) vs chance \(box area share\) ([\d.]+)", line)
    assert match and "\n" not in line
    assert 0 <= float(match.group(1)) <= 1 and 0 < float(match.group(2)) < 1


def test_explain_measure_attention_prints_a_table_of_base_and_val_and_writes_json(tiny_dir, capsys):
    out = tiny_dir / "attention.json"
    # the tiny base split has labels on 5 images: one query image per label (explain reads only the support),
    # and 4 labels an episode, so the release rule's N x K support leaves every label a query image
    options = {**TINY, "results_dir": str(tiny_dir), "measure": "attention", "n_episodes": "2", "out": str(out),
               "++n_query": "1", "++n_way": "4"}
    assert explain_command(options) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:3] == ["split", "episodes", "label"] and lines[-1] == str(out)
    assert [line.split()[0] for line in lines[1:3]] == ["base", "val"]
    content = json.loads(out.read_text())
    assert content["measure"] == "attention" and content["fitted_on"] == "base"
    assert content["backbone"]["kind"] == "small_cnn" and content["backbone"]["model"] is None
    assert re.fullmatch(r"[0-9a-f]{64}", content["backbone"]["id"])
    assert list(content["splits"]) == ["base", "val"]
    for split, result in content["splits"].items():
        assert result["n_episodes"] == 2 and result["n_pairs"] > 0 and result["positions"] == 36
        assert result["uniform_border_share"] == pytest.approx(20 / 36)
        assert 0 <= result["border_mass"] <= 1 and 0 <= result["kept_border_share"] <= 1
        assert result["mean_cosine"] is None or -1 <= result["mean_cosine"] <= 1 + 1e-9
        assert lines[1 + list(content["splits"]).index(split)].split()[1:3] == ["2", str(result["n_comparisons"])]


# -------------------------------------------------------------------------------------- measurement
def test_cells_inside_uses_cell_centres_on_the_scaled_grid():
    # a 96 px image, 6x6 grid of 16 px cells with centres at 8, 24, ..., 88
    left_half = cells_inside([(0, 0, 48, 96)], 96, 96, 6).reshape(6, 6)
    assert left_half[:, :3].all() and not left_half[:, 3:].any()
    corner = cells_inside([(80, 80, 16, 16)], 96, 96, 6).reshape(6, 6)  # holds only the centre (88, 88)
    assert np.flatnonzero(corner.reshape(-1)).tolist() == [35]
    assert not cells_inside([(0, 0, 7, 7)], 96, 96, 6).any()  # no centre inside
    assert cells_inside([(0, 0, 100, 50)], 200, 100, 2).tolist() == [True, False, False, False]


class _FixedExplanation:
    """A stand-in for a fitted LCM whose ``explain`` returns given arrays."""

    def __init__(self, info: dict[str, np.ndarray]) -> None:
        self.info = info

    def explain(self, episode) -> dict[str, np.ndarray]:
        return self.info


def test_kept_inside_box_fraction_counts_kept_cells_against_the_box_share():
    positions = 4  # a 2x2 grid on 100x100 images: cells centred at (25|75, 25|75)
    keep = np.array([[True, True, False, False], [True, False, False, True]])
    attention = np.array([[0.5, 0.5, 0.0, 0.0], [0.25, 0.0, 0.0, 0.75], [1.0, 0.0, 0.0, 0.0]])
    info = {"keep": keep, "attention": attention, "pair_image": np.array([0, 1, 1]), "pair_label": np.array([0, 0, 1])}
    boxes = Boxes(sizes={10: (100, 100), 11: (100, 100)},
                  boxes={(10, "cat"): [(0, 0, 50, 50)], (11, "cat"): [(50, 50, 50, 50)], (11, "dog"): [(0, 0, 100, 50)]})
    episode = SimpleNamespace(label_names=("cat", "dog"), support_local_features=np.zeros((2, positions, 3)))
    result = kept_inside_box_fraction(_FixedExplanation(info), [(episode, np.array([10, 11]))], boxes)
    # pairs: (10, cat) kept {0, 1}, box {0}: 1/2; (11, cat) kept {0, 3}, box {3}: 1/2; (11, dog) box {0, 1}: 1/2
    assert result.n_pairs == 3 and result.n_episodes == 1
    assert result.kept_inside == pytest.approx(0.5)
    assert result.chance == pytest.approx((0.25 + 0.25 + 0.5) / 3)
    assert result.attention_inside == pytest.approx((0.5 + 0.75 + 1.0) / 3)
    assert result.kept_per_image == pytest.approx(2.0) and result.pairs_without_cell == 0


def _explanation(pair_image: list[int], attention: np.ndarray, keep: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """An ``LCM.explain`` result with the given pairs and maps (every position kept unless ``keep``)."""
    n_images = max(pair_image) + 1
    return {"pair_image": np.asarray(pair_image), "pair_label": np.arange(len(pair_image)),
            "attention": np.asarray(attention, dtype=np.float64),
            "keep": np.ones((n_images, attention.shape[1]), dtype=bool) if keep is None else keep}


def test_attention_transfer_identical_maps_have_cosine_one():
    rng = np.random.default_rng(0)
    shared = rng.dirichlet(np.ones(36))
    # image 0 carries two labels with the same map; image 1 one label (nothing to compare)
    info = _explanation([0, 0, 1], np.stack([shared, shared, rng.dirichlet(np.ones(36))]))
    result = attention_transfer([info], side=6)
    assert result["n_comparisons"] == 1 and result["n_multi_label_images"] == 1 and result["n_pairs"] == 3
    assert result["mean_cosine"] == pytest.approx(1.0)


def test_attention_transfer_orthogonal_one_hot_maps_have_cosine_zero():
    one_hot = np.eye(36)
    info = _explanation([0, 0, 0, 1, 1], one_hot[[0, 7, 14, 3, 4]])
    result = attention_transfer([info, info], side=6)
    # per explanation: 3 unordered pairs on image 0, 1 on image 1
    assert result["n_comparisons"] == 8 and result["n_multi_label_images"] == 4 and result["n_episodes"] == 2
    assert result["mean_cosine"] == pytest.approx(0.0)


def test_attention_transfer_border_mass_against_the_uniform_share():
    on_border = border_cells(6)
    assert on_border.sum() == 20 and not on_border.reshape(6, 6)[1:-1, 1:-1].any()
    border_only = on_border / on_border.sum()
    centre_only = ~on_border / (~on_border).sum()
    keep = np.stack([on_border, on_border])
    result = attention_transfer([_explanation([0, 1], np.stack([border_only, border_only]), keep)], side=6)
    assert result["border_mass"] == pytest.approx(1.0) and result["uniform_border_share"] == pytest.approx(20 / 36)
    assert result["kept_border_share"] == pytest.approx(1.0) and result["kept_per_image"] == pytest.approx(20)
    assert result["n_comparisons"] == 0 and result["mean_cosine"] is None  # one label per image
    mixed = attention_transfer([_explanation([0, 0], np.stack([border_only, centre_only]))], side=6)
    assert mixed["border_mass"] == pytest.approx(0.5) and mixed["mean_cosine"] == pytest.approx(0.0)
    uniform = attention_transfer([_explanation([0], np.full((1, 36), 1 / 36))], side=6)
    assert uniform["border_mass"] == pytest.approx(20 / 36) and uniform["kept_border_share"] == pytest.approx(20 / 36)


def test_attention_transfer_refuses_maps_of_another_grid():
    with pytest.raises(MlfsicError, match="not maps over a 6x6 grid"):
        attention_transfer([_explanation([0], np.full((1, 25), 1 / 25))], side=6)


def test_measures_module_docstring_examples_hold():
    results = doctest.testmod(measures_module)
    assert results.failed == 0 and results.attempted >= 4


# ------------------------------------------------------------------------------------- bad options
@pytest.mark.parametrize(("argument", "message"), [
    ("bogus=1", "unknown explain option 'bogus'; known: method, setting, seed"),
    ("seed=x", "explain option seed='x': expected an integer"),
    ("split=base", "explain option split='base': expected one of val, test"),
    ("setting=0shot", "explain option setting='0shot'"),
    ("measure=iou", "explain option measure='iou'"),
    ("measure=attention split=test", "explain option split='test': measure=attention draws episodes of the base"),
    ("measure=attention out=x.png", "explain option out='x.png': expected a .json path"),
    ("threshold_mode=max", "explain option threshold_mode='max'"),
])
def test_bad_option_is_one_line_and_exit_2(argument, message, capsys):
    assert main(["explain", *argument.split()]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"mlfsic: error: {message}") and error.count("\n") == 1


def test_non_lcm_method_is_refused_before_any_work(tmp_path, capsys):
    assert main(["explain", "method=protonet", f"results_dir={tmp_path / 'r'}"]) == 2
    assert "'protonet' has no explain()" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_overrides_with_a_dot_go_to_the_run_config():
    options = parse_options({"dataset.generate.n_base": "100", "+method_args.lcm.steps": "5", "episode": "3"})
    assert options.overrides == ("dataset.generate.n_base=100", "+method_args.lcm.steps=5") and options.episode == 3


# -------------------------------------------------------------------------------------------- slow
@pytest.mark.slow
def test_kept_positions_inside_boxes_on_coco_moji_val():
    """50 val 1shot episodes of the default coco-moji (results/ of the checkout, made or reused as
    ``mlfsic run`` does): LCM as fitted (released rule), then the same model with relative selection."""
    options = parse_options({"measure": "boxes", "results_dir": str(REPO / "results"), "n_episodes": "50"})
    explained = prepare(options)
    for mode, theta in ((explained.method.threshold_mode, explained.method.theta), ("relative", 0.65)):
        explained.method.threshold_mode, explained.method.theta = mode, theta
        result = measure_boxes(explained, options)
        print(f"lcm val 1shot, {mode} theta {theta}: {result.text()}")
        assert 0 < result.chance < 1 and 0 <= result.kept_inside <= 1
