"""Suites (``mlfsic run +suite=NAME``, harness/sweep/suite.py): members as one job on the shared test Ray, one
suite dir pointing at ordinary run dirs, records equal to each member run alone, resume, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from conftest import tiny_overrides
from mlfsic.harness.cli import main
from mlfsic.harness.config import compose_config
from mlfsic.harness.errors import MlfsicError
from mlfsic.harness.sweep.load import load_sweep
from mlfsic.harness.sweep.runner import run_sweep
from mlfsic.harness.sweep.store import read_suite_json, suite_run_dirs, write_suite_json
from mlfsic.harness.sweep.suite import (
    load_suite, read_suite_file, run_suite, split_suite_override, suite_file,
)

SMALL = ["method=[random,protonet]", "setting=[1shot,5shot]", "seeds=[0]", "n_episodes=12", "chunk_episodes=5"]
# Two members on the same dataset and backbone (features shared), differing in their label embeddings.
SUITE_YAML = """description: two members of the tiny test benchmark
members:
  minilm: []
  glove: [embeddings.encoder=glove]
"""


def _suite_file(tmp_path: Path) -> Path:
    path = tmp_path / "two.yaml"
    path.write_text(SUITE_YAML)
    return path


def _records(run_dir: Path) -> pd.DataFrame:
    records = pd.read_parquet(run_dir / "records.parquet")
    keys = ["method", "setting", "seed", "episode"]
    return records.sort_values(keys).reset_index(drop=True)[[*keys, "map", "episode_set_id", "backbone_id"]]


def test_suite_runs_every_member_as_one_job_and_resumes(ray_session, tiny_results_dir, tmp_path, capsys):
    path = _suite_file(tmp_path)
    overrides = tiny_overrides(tiny_results_dir, *SMALL)
    suite = load_suite(str(path), overrides)
    assert [m.name for m in suite.members] == ["minilm", "glove"]
    assert main(["run", f"+suite={path}", *overrides]) == 0
    out = capsys.readouterr()
    assert out.out.strip().splitlines()[-1] == str(suite.suite_dir)
    assert "suite:" in out.err and "sweep:" not in out.err  # one progress display for both members

    info = read_suite_json(suite.suite_dir)
    assert info["status"] == "complete" and info["suite_id"] == suite.suite_id
    assert [(m["name"], m["status"], m["overrides"]) for m in info["members"]] == [
        ("minilm", "complete", []), ("glove", "complete", ["embeddings.encoder=glove"])]
    runs = dict(suite_run_dirs(suite.suite_dir))
    for member in suite.members:  # each member is the run its own overrides derive
        assert runs[member.name].resolve() == load_sweep([*member.overrides, *overrides]).run_path
        run = json.loads((runs[member.name] / "run.json").read_text())
        assert run["status"] == "complete" and set(run["methods"]) == {"random", "protonet"}
        # the glove member found every feature the minilm member extracted: one forward pass per image
        assert run["forward_passes"] == run["n_feature_images"]
    assert (suite.suite_dir / "leaderboard.md").is_file() and (suite.suite_dir / "site" / "index.html").is_file()
    board = (suite.suite_dir / "leaderboard.csv").read_text()
    assert board.count("protonet") >= 4  # both members' rows, kept apart (other embedding ids)

    # A member's records equal that member run alone, in another results dir.
    alone_dir = tmp_path / "alone"
    alone = run_sweep(load_sweep(tiny_overrides(alone_dir, *SMALL, "embeddings.encoder=glove")), progress=False)
    pd.testing.assert_frame_equal(_records(alone.run_path), _records(runs["glove"]))

    # The same command resumes: nothing is computed again.
    outcomes = run_suite(load_suite(str(path), overrides), progress=False)
    assert [o.counts["chunks_submitted"] for o in outcomes] == [0, 0]
    assert [o.counts["fit_tasks"] for o in outcomes] == [0, 0]

    # Published member by member, then ranked against: each member gets its own member's reference.
    published = tmp_path / "published"
    assert main(["leaderboard", str(suite.suite_dir), f"out={published}", "publish=true"]) == 0
    for member in ("minilm", "glove"):  # each member's board beside its copy, as a published run's
        member_board = pd.read_csv(published / member / "leaderboard.csv")
        assert set(member_board["method"]) == {"random", "protonet"} and (published / member / "leaderboard.md").is_file()
    ranked = load_suite(str(path), [*overrides, f"against={published}"])
    assert [m.sweep.against for m in ranked.members] == [(published / "minilm").resolve(), (published / "glove").resolve()]
    outcomes = run_suite(ranked, progress=False)  # every method is in its reference: nothing is computed
    assert [o.counts["fit_tasks"] for o in outcomes] == [0, 0]
    with pytest.raises(MlfsicError, match="has no member 'glove'"):
        write_suite_json(tmp_path / "one", {**read_suite_json(published), "members": read_suite_json(published)["members"][:1]})
        for member in ("minilm",):
            (tmp_path / "one" / member).symlink_to(published / member)
        load_suite(str(path), [*overrides, f"against={tmp_path / 'one'}"])
    with pytest.raises(MlfsicError, match="with \\+suite=, expected published or a suite dir"):
        load_suite(str(path), [*overrides, f"against={runs['glove']}"])


def test_shipped_suites_resolve(tmp_path, monkeypatch):
    members = read_suite_file(suite_file("coco-moji-all"))
    untied = ("+method_args.lcm.tie_local_projection=false", "+method_args.lcm.selection=off",
              "+method_args.wvga.tie_local_projection=false", "+method_args.wvga-adapted.tie_local_projection=false")
    assert members == {"small-cnn": (), "tiny-teacher-concept-seen": ("+backbone=tiny-teacher", *untied),
                       "tiny-teacher-strict": ("+backbone=tiny-teacher-strict", *untied)}
    suite = load_suite("coco-moji-all", [f"results_dir={tmp_path}", "n_episodes=50", "seeds=[0]"])
    default = load_sweep([f"results_dir={tmp_path}", "n_episodes=50", "seeds=[0]"])
    assert suite.members[0].sweep.run_id == default.run_id
    regimes = [m.sweep.dataset.backbone.regime for m in suite.members]
    assert regimes == [None, "concept-seen", "strict"]
    assert "mkt" in suite.members[1].sweep.methods and "mkt" not in suite.members[0].sweep.methods

    # papers-all: a template whose paths come from the environment; composed member by member.
    for variable in ("MLFSIC_COCO_ROOT", "MLFSIC_VOC_ROOT", "MLFSIC_NUSWIDE_ROOT", "MLFSIC_IMATERIALIST_ROOT",
                     "MLFSIC_RESNET50_WEIGHTS", "MLFSIC_CLIP_WEIGHTS"):
        monkeypatch.setenv(variable, str(tmp_path / variable.lower()))
    papers = read_suite_file(suite_file("papers-all"))
    assert {name.split("-")[0] for name in papers} == {"coco", "voc", "nuswide", "imaterialist"}
    for name, overrides in papers.items():
        cfg = compose_config(list(overrides))
        backbone = cfg.dataset.backbone
        assert backbone.kind == ("resnet50" if name.endswith("resnet50") else "open_clip"), name
        assert cfg.dataset.root == str(tmp_path / f"mlfsic_{cfg.dataset.name}_root"), name
        if backbone.kind == "open_clip":
            assert backbone.model == "ViT-B-16-quickgelu" and backbone.weights == str(tmp_path / "mlfsic_clip_weights")


def test_suite_errors_are_one_line(tmp_path, monkeypatch):
    with pytest.raises(MlfsicError, match=r"\+suite=nope: no such suite; expected one of coco-moji-all, "
                       r"coco-moji-pretrained, papers-all"):
        load_suite("nope", [])
    with pytest.raises(MlfsicError, match="give one"):
        split_suite_override(["+suite=a", "+suite=b"])
    assert split_suite_override(["seeds=[0]"]) == (None, ["seeds=[0]"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("members:\n  a: +backbone=tiny-teacher\n")
    with pytest.raises(MlfsicError, match=r"bad.yaml: members.a: expected a list of override strings"):
        load_suite(str(bad), [])
    bad.write_text("memebers: {a: []}\n")
    with pytest.raises(MlfsicError, match=r"bad.yaml: unknown key 'memebers'"):
        load_suite(str(bad), [])
    with pytest.raises(MlfsicError, match="derive their own run ids"):
        load_suite("coco-moji-all", ["run_id=x"])
    with pytest.raises(MlfsicError, match="member small-cnn: seeds"):
        load_suite("coco-moji-all", [f"results_dir={tmp_path}", "seeds=[-1]"])
    monkeypatch.delenv("MLFSIC_COCO_ROOT", raising=False)
    with pytest.raises(MlfsicError, match="member coco-resnet50: .*MLFSIC_COCO_ROOT"):
        load_suite("papers-all", [])
    with pytest.raises(MlfsicError, match="member tiny-teacher-concept-seen: against=published: nothing published"):
        load_suite("coco-moji-all", [f"results_dir={tmp_path}", "against=published"])
    assert main(["run", "+suite=nope"]) == 2
