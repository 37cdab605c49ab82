"""Ranking a new method against a reference run without rerunning its methods (issue 16).

A small reference run (random + the example plug-in) is published with ``mlfsic leaderboard RUN_DIR
publish=true``; ``mlfsic run method=[protonet] against=<it>`` computes protonet only, on the reference's
episode sets, and its leaderboard ranks the union with paired differences; anything that would make the
numbers incomparable is refused in one line (exit 2) with nothing written.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import tiny_overrides

from mlfsic.harness.cli import main
from mlfsic.harness.protocol.metrics import METRIC_VERSION
from mlfsic.harness.sweep.against_run import load_reference
from mlfsic.harness.sweep.runner import run_sweep
from mlfsic.harness.sweep.load import load_sweep

N_EPISODES = 20
REFERENCE = ("method=[random,example-cosine]", "setting=[0shot,1shot]", "seeds=[0,1]", f"n_episodes={N_EPISODES}",
             "chunk_episodes=10")
NEW = ("method=[protonet]", "+method_args.protonet.n_episodes=50")


@pytest.fixture(scope="module")
def reference_run(ray_session, tiny_results_dir) -> Path:
    outcome = run_sweep(load_sweep(tiny_overrides(tiny_results_dir, *REFERENCE)), progress=False)
    assert outcome.failures == []
    return outcome.run_path


@pytest.fixture(scope="module")
def published(reference_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("published")
    assert main(["leaderboard", str(reference_run), f"out={out}", "publish=true"]) == 0
    return out


def _run(capsys, *overrides: str) -> tuple[int, Path | None, str]:
    """``mlfsic run``: exit code, the run dir it printed (None on error), stderr."""
    capsys.readouterr()
    code = main(["run", *overrides])
    out, err = capsys.readouterr()
    return code, (Path(out.strip().splitlines()[-1]) if code == 0 else None), err


def test_publish_copies_the_run_with_its_provenance(reference_run, published):
    for name in ("run.json", "records.parquet", "label_ap.parquet", "reference.json", "leaderboard.csv",
                 "leaderboard.md"):
        assert (published / name).is_file(), name
    assert not (published / "leaderboard.html").exists()  # the page (plotly inlined) is not published
    pd.testing.assert_frame_equal(pd.read_parquet(published / "records.parquet"),
                                  pd.read_parquet(reference_run / "records.parquet"))
    summary = json.loads((published / "reference.json").read_text())
    info = json.loads((reference_run / "run.json").read_text())
    assert summary["run_id"] == info["run_id"] and summary["git"] == info["git"]
    assert summary["backbone_id"] == info["backbone"]["id"] and summary["embedding_id"] == info["embedding_id"]
    assert summary["episode_sets"] == info["episode_sets"] and summary["metric_version"] == METRIC_VERSION
    assert summary["dataset"]["annotation_sha256"] == info["dataset"]["annotation_sha256"]
    assert set(summary["methods"]) == {"random", "example-cosine"}


def test_a_new_method_is_ranked_against_the_published_run(tiny_results_dir, reference_run, published, capsys):
    code, run_path, _ = _run(capsys, *tiny_overrides(tiny_results_dir, *NEW), f"against={published}")
    assert code == 0 and run_path is not None
    reference_id = json.loads((published / "run.json").read_text())["run_id"]
    # only protonet was computed, on the reference's settings, seeds and episode sets (none given here)
    records = pd.read_parquet(run_path / "records.parquet")
    assert set(records["method"]) == {"protonet"} and set(records["run_id"]) == {run_path.name}
    assert set(records["seed"]) == {0, 1} and set(records["setting"]) == {"1shot"}
    assert records.groupby("seed")["episode"].nunique().tolist() == [N_EPISODES, N_EPISODES]
    info = json.loads((run_path / "run.json").read_text())
    assert info["episode_sets"] == json.loads((published / "run.json").read_text())["episode_sets"]
    assert info["against"]["run_id"] == reference_id

    board = pd.read_csv(run_path / "leaderboard.csv")
    one_shot = board[board["setting"] == "1shot"].set_index("method")
    assert set(one_shot.index) == {"random", "example-cosine", "protonet"}
    assert one_shot["group"].nunique() == 1  # one group: ranked together
    assert one_shot["source"].to_dict() == {"random": "reference", "example-cosine": "reference", "protonet": "now"}
    assert one_shot["rank"].notna().all() and (one_shot["n_episodes"] == 2 * N_EPISODES).all()
    reference_board = pd.read_csv(published / "leaderboard.csv").set_index(["setting", "method"])
    assert one_shot.loc["random", "map"] == pytest.approx(reference_board.loc[("1shot", "random"), "map"])
    assert board.loc[board["setting"] == "0shot", "source"].tolist() == ["reference"]  # random's 0shot cell

    comparisons = pd.read_csv(run_path / "against.csv")
    assert sorted(comparisons["versus"]) == ["example-cosine", "random"]
    assert (comparisons["method"] == "protonet").all() and (comparisons["n_paired"] == 2 * N_EPISODES).all()
    assert (comparisons["diff_ci_low"] <= comparisons["diff"]).all()
    assert (comparisons["diff"] <= comparisons["diff_ci_high"]).all()
    markdown = (run_path / "leaderboard.md").read_text()
    commit = json.loads((published / "run.json").read_text())["git"]["commit"]
    assert f"`{reference_id}` (commit `{commit}`" in markdown and "## Against the reference" in markdown
    assert "| protonet |" in markdown and " now |" in markdown and " reference |" in markdown
    html = (run_path / "leaderboard.html").read_text()
    assert "mlfsic-against-table" in html and "now (this run)" in html

    # rebuilt by `mlfsic leaderboard RUN_DIR against=...`: the same files
    before = (run_path / "leaderboard.csv").read_bytes()
    assert main(["leaderboard", str(run_path), f"against={published}"]) == 0
    assert (run_path / "leaderboard.csv").read_bytes() == before


def test_any_run_dir_is_a_reference_and_a_subset_of_seeds_is_compared(tiny_results_dir, reference_run, capsys):
    code, run_path, err = _run(capsys, *tiny_overrides(tiny_results_dir, "method=[random,protonet]",
                                                       "+method_args.protonet.n_episodes=50", "seeds=[1]",
                                                       "setting=[1shot]"), f"against={reference_run}")
    assert code == 0 and run_path is not None
    assert f"random: in reference run {reference_run.name} with the same config and code" in err
    records = pd.read_parquet(run_path / "records.parquet")
    assert set(records["method"]) == {"protonet"} and set(records["seed"]) == {1}  # random not recomputed
    board = pd.read_csv(run_path / "leaderboard.csv")
    assert set(board["setting"]) == {"1shot"}  # only what the sweep asked for
    assert (board["n_episodes"] == N_EPISODES).all() and (board["n_seeds"] == 1).all()
    assert board.set_index("method")["source"].to_dict() == {
        "random": "reference", "example-cosine": "reference", "protonet": "now"}
    assert (pd.read_csv(run_path / "against.csv")["n_paired"] == N_EPISODES).all()


def test_fewer_episodes_compare_on_the_prefix_of_the_reference_sets(tiny_results_dir, published, capsys):
    """``n_episodes=N`` below the reference's: ours are its first N episodes (checked), paired, and noted."""
    n = N_EPISODES // 2
    code, run_path, _ = _run(capsys, *tiny_overrides(tiny_results_dir, *NEW, f"n_episodes={n}"), f"against={published}")
    assert code == 0 and run_path is not None
    info = json.loads((run_path / "run.json").read_text())
    prefix = info["against"]["prefix"]
    assert prefix["n_episodes"] == n and prefix["reference_n_episodes"] == N_EPISODES
    reference_sets = json.loads((published / "run.json").read_text())["episode_sets"]
    assert sorted(prefix["episode_sets"].values()) == sorted(reference_sets[k] for k in info["episode_sets"])
    board = pd.read_csv(run_path / "leaderboard.csv")
    one_shot = board[board["setting"] == "1shot"].set_index("method")
    assert one_shot["group"].nunique() == 1 and (one_shot["n_episodes"] == 2 * n).all()
    reference_records = pd.read_parquet(published / "records.parquet")
    first = reference_records[(reference_records["method"] == "random") & (reference_records["setting"] == "1shot")
                              & (reference_records["episode"] < n)]
    assert one_shot.loc["random", "map"] == pytest.approx(first["map"].mean())
    assert (pd.read_csv(run_path / "against.csv")["n_paired"] == 2 * n).all()
    assert f"first {n} of the reference's {N_EPISODES} episodes" in (run_path / "leaderboard.md").read_text()


def _tampered(published: Path, tmp_path: Path, edit) -> Path:
    copy = tmp_path / "reference"
    shutil.copytree(published, copy)
    info = json.loads((copy / "run.json").read_text())
    edit(info)
    (copy / "run.json").write_text(json.dumps(info))
    return copy


def _set(path: tuple[str, ...], value):
    def edit(info):
        target = info
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return edit


@pytest.mark.parametrize("extra, edit, expected", [
    (("n_episodes=30",), None, "n_episodes 30 differs from reference run"),  # more than it has
    (("seeds=[5]",), None, "seed 5 differs from reference run"),
    (("dataset.generate.n_test=250",), None, "dataset.generate.n_test 250 differs from reference run"),
    ((), _set(("embedding_id",), "glove-0123456789ab"), "differs from reference run"),
    ((), _set(("metric_version",), "0"), "metric version 1 differs from reference run"),
    ((), _set(("episode_sets", "coco-moji/1shot/seed0"), "f" * 64), "episode set coco-moji/1shot/seed0"),
    ((), _set(("backbone", "id"), "9c1b" * 16), "backbone"),  # known after the backbone step
])
def test_incomparable_runs_are_refused_with_nothing_written(tiny_results_dir, published, tmp_path, capsys, extra,
                                                            edit, expected):
    reference = _tampered(published, tmp_path, edit) if edit else published
    overrides = [*tiny_overrides(tiny_results_dir, *NEW, "run_id=refused", *extra), f"against={reference}"]
    code, _, err = _run(capsys, *overrides)
    assert code == 2
    lines = err.strip().splitlines()
    assert lines[-1].startswith("mlfsic: error: ") and expected in lines[-1], err
    if "backbone" in expected:
        assert "run the baselines too" in lines[-1] and "pinned backbone" in lines[-1]
    assert not (tiny_results_dir / "runs" / "refused").exists()


def test_bad_against_values_are_one_line_errors(tiny_results_dir, tmp_path, capsys):
    code, _, err = _run(capsys, *tiny_overrides(tiny_results_dir, *NEW), f"against={tmp_path / 'nowhere'}")
    assert code == 2 and "against=" in err and "not found" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "empty").mkdir()
    code, _, err = _run(capsys, *tiny_overrides(tiny_results_dir, *NEW), f"against={tmp_path / 'empty'}")
    assert code == 2 and "run.json not found" in err


def test_a_run_made_before_these_fields_reads_as_metric_version_1(published, tmp_path):
    def strip(info):
        for key in ("metric_version", "embedding_id", "dataset"):
            info.pop(key)
    old = load_reference(_tampered(published, tmp_path, strip))
    new = load_reference(published)
    assert old.metric_version == "1" and old.embedding_id == new.embedding_id
    assert old.annotation_sha256 is None and old.episode_sets == new.episode_sets


def test_a_reference_without_shared_episode_sets_is_refused(published, tmp_path):
    from mlfsic.harness.errors import MlfsicError
    from mlfsic.harness.report.leaderboard import build_leaderboard

    other = _tampered(published, tmp_path, _set(("run_id",), "another-run"))
    info = json.loads((other / "run.json").read_text())
    info["episode_sets"] = {key: "e" * 64 for key in info["episode_sets"]}
    (other / "run.json").write_text(json.dumps(info))
    with pytest.raises(MlfsicError, match="has no records on the episode sets"):
        build_leaderboard([other], tmp_path / "board", against=published)


def test_a_cell_of_one_method_over_three_seeds_is_summarised():
    import numpy as np

    from mlfsic.harness.report.intervals import ranks_with_ties

    values = {"random": np.random.default_rng(0).random(30)}
    result = ranks_with_ties(values, n_boot=200, clusters=np.repeat([0, 1, 2], 10))["random"]
    assert result["rank"] == 1 and result["vs_best"] is None and result["interval"] == "seeds+episodes"
