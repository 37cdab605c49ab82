"""``mlfsic claims``: verdicts from fabricated runs with known shifts, refusals, outputs and the CLI."""

from __future__ import annotations

import doctest
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlfsic.harness.cli import main
from mlfsic.harness.errors import MlfsicError
from mlfsic.studies.lcm_tomm2024 import claims
from mlfsic.harness.report.intervals import EPISODE_LEVEL, SEED_LEVEL
from mlfsic.harness.sweep.store import RECORD_COLUMNS

# setting -> {method: how many mAP points lcm is above it}; lcm itself is added
ABLATION_SHIFTS = {setting: {"lcm-randvec": 5.0, "lcm-noselect": -5.0, "lcm-nocross": 0.0, "wvga": 1.0,
                             "lcm-chattn": -3.0, "lcm-dynconv": 2.0}
                   for setting in ("1shot", "5shot")}
RANKING_SHIFTS = {
    "0shot": {"wordvec-zeroshot": 5.0, "wvga": 5.0, "random": -30.0},
    "1shot": {"protonet": 5.0, "laso": 0.0, "random": -30.0},
    "5shot": {"protonet": 5.0, "laso": -5.0, "random": 30.0},
}


def episode_set_id(setting: str, seed: int) -> str:
    return hashlib.sha256(f"{setting}/seed{seed}".encode()).hexdigest()


def fabricate_run(run_dir: Path, shifts: dict[str, dict[str, float]], split: str,
                  seeds: tuple[int, ...] = (0, 1, 2), n_episodes: int = 40, noise: float = 2.0,
                  run_id: str = "coco-moji-fake", commit: str = "c0ffee" * 6 + "ab", dirty: bool = False) -> Path:
    """A run dir (run.json + records.parquet, the schema of results/published) with known per-episode shifts.

    lcm's mAP is a random base per episode; each other method's is lcm's minus its shift in points plus noise
    (sd ``noise`` points) centred within every seed, so lcm - other has exactly the shift as its mean per seed.
    """
    rng = np.random.default_rng(0)
    rows = []
    for setting, others in shifts.items():
        for seed in seeds:
            base = rng.uniform(0.3, 0.6, n_episodes)
            for method, shift in {"lcm": None, **others}.items():
                values = base.copy()
                if shift is not None:
                    jitter = rng.normal(0.0, noise, n_episodes)
                    values = base - (shift + jitter - jitter.mean()) / 100.0
                for episode, value in enumerate(values):
                    rows.append({"run_id": run_id, "method": method, "method_config_hash": "h" + method,
                                 "dataset": "coco-moji", "setting": setting, "k_shot": int(setting[0]), "seed": seed,
                                 "episode_set_id": episode_set_id(setting, seed), "episode": episode,
                                 "map": float(value), "f1_3": 0.3, "f1_5": 0.3, "n_labels": 9, "n_query": 36,
                                 "fit_s": 1.0, "predict_s": 0.01, "status": "ok", "protocol": "episodic-v1",
                                 "backbone_id": "b" * 64, "embedding_id": "minilm-3b78e881c5c8"})
    run_dir.mkdir(parents=True, exist_ok=True)
    records = pd.DataFrame(rows, columns=list(RECORD_COLUMNS))
    records.to_parquet(run_dir / "records.parquet", index=False)
    info = {"run_id": run_id, "status": "complete", "git": {"commit": commit, "dirty": dirty},
            "config": {"eval_split": split, "seeds": list(seeds), "n_episodes": n_episodes,
                       "setting": sorted(shifts)},
            "episode_sets": {f"coco-moji/{s}/seed{seed}": episode_set_id(s, seed) for s in shifts for seed in seeds}}
    (run_dir / "run.json").write_text(json.dumps(info, indent=1))
    return run_dir


def edit_records(run_dir: Path, edit) -> None:
    records = pd.read_parquet(run_dir / "records.parquet")
    edit(records).to_parquet(run_dir / "records.parquet", index=False)


@pytest.fixture()
def runs(tmp_path) -> dict[str, Path]:
    return {claims.ABLATION: fabricate_run(tmp_path / "ablation", ABLATION_SHIFTS, "val", run_id="coco-moji-abl",
                                           commit="a" * 40, dirty=True),
            claims.RANKING: fabricate_run(tmp_path / "ranking", RANKING_SHIFTS, "test", run_id="coco-moji-rank",
                                          commit="b" * 40)}


def row(table: pd.DataFrame, claim_id: str, setting: str, compared_with: str) -> pd.Series:
    found = table[(table["claim_id"] == claim_id) & (table["setting"] == setting)
                  & table["compared_with"].str.startswith(compared_with)]
    assert len(found) == 1, (claim_id, setting, compared_with)
    return found.iloc[0]


def test_verdict_doctests():
    assert doctest.testmod(claims).failed == 0


def test_verdicts_follow_the_fabricated_shifts(runs):
    table, read = claims.evaluate_claims(runs, n_boot=2000)
    assert list(table.columns) == claims.CLAIM_COLUMNS
    for setting in ("1shot", "5shot"):
        holds = row(table, "word-embedding-init", setting, "lcm-randvec")
        assert holds["verdict"] == "holds" and holds["diff"] == pytest.approx(5.0)
        assert 0.0 < holds["ci_low"] < 5.0 < holds["ci_high"] and holds["p_value"] < 0.001
        fails = row(table, "local-selection", setting, "lcm-noselect")
        assert fails["verdict"] == "does not hold" and fails["diff"] == pytest.approx(-5.0)
        assert fails["ci_high"] < 0.0
        unclear = row(table, "cross-interaction", setting, "lcm-nocross")
        assert unclear["verdict"] == "inconclusive" and unclear["ci_low"] < 0.0 < unclear["ci_high"]
        assert unclear["diff"] == pytest.approx(0.0, abs=1e-9)
        assert holds["n_paired"] == 120 and holds["n_seeds"] == 3 and holds["interval"] == SEED_LEVEL
        assert (holds["split"], holds["run_id"], holds["git_commit"], holds["git_dirty"]) == (
            "val", "coco-moji-abl", "a" * 40, True)
        # the components the paper names are claimed by the variant that adds them, against lcm
        adds = row(table, "channel-attention", setting, "lcm")
        assert adds["method"] == "lcm-chattn" and adds["diff"] == pytest.approx(3.0) and adds["verdict"] == "holds"
        assert row(table, "dynamic-convolution", setting, "lcm")["verdict"] == "does not hold"
    # ablation claims compare with their named method only (wvga is in the run, not in those claims)
    assert set(table.loc[table["run"] == claims.ABLATION, "compared_with"]) == {"lcm-randvec", "lcm-noselect",
                                                                                "lcm-nocross", "lcm"}
    ranking = table[table["claim_id"] == "beats-baselines"]
    assert "random" not in " ".join(ranking["compared_with"])
    assert (ranking["split"] == "test").all() and (ranking["run_id"] == "coco-moji-rank").all()
    summaries = ranking[ranking["kind"] == claims.SUMMARY].set_index("setting")
    assert summaries["verdict"].to_dict() == {"0shot": "holds", "1shot": "inconclusive", "5shot": "does not hold"}
    assert summaries.loc["1shot", "compared_with"] == "every baseline (laso, protonet)"
    assert summaries["diff"].isna().all()
    # 0shot: wvga is lcm's own checkpoint there (same_model), so only wordvec-zeroshot and the summary
    assert list(ranking["setting"]) == ["0shot"] * 2 + ["1shot"] * 3 + ["5shot"] * 3
    assert "wvga" not in set(ranking.loc[ranking["setting"] == "0shot", "compared_with"])
    assert row(table, "beats-baselines", "5shot", "laso")["verdict"] == "does not hold"
    assert row(table, "beats-baselines", "1shot", "protonet")["verdict"] == "holds"
    assert set(read) == {claims.ABLATION, claims.RANKING}


def test_a_claim_is_one_table_entry(runs):
    extra = claims.Claim("wvga-gap", "lcm beats wvga on val", claims.ABLATION, "lcm", ("wvga",), ("1shot",))
    table, read = claims.evaluate_claims(runs, claims=(extra,), n_boot=1000)
    assert len(table) == 1 and table.iloc[0]["verdict"] == "holds" and table.iloc[0]["diff"] == pytest.approx(1.0)
    assert set(read) == {claims.ABLATION}  # only the runs some claim needs are read


def test_few_seeds_give_episode_level_intervals_and_undefined_maps_are_left_out(tmp_path):
    ablation = fabricate_run(tmp_path / "one_seed", ABLATION_SHIFTS, "val", seeds=(0,), n_episodes=60)
    edit_records(ablation, lambda r: r.assign(map=r["map"].where(~((r["method"] == "lcm-randvec")
                                                                   & (r["episode"] < 4)))))
    table, _ = claims.evaluate_claims({claims.ABLATION: ablation}, claims=claims.CLAIMS[:3], n_boot=1000)
    randvec = row(table, "word-embedding-init", "1shot", "lcm-randvec")
    assert randvec["interval"] == EPISODE_LEVEL and randvec["n_seeds"] == 1 and randvec["n_paired"] == 56
    assert randvec["verdict"] == "holds"
    assert row(table, "local-selection", "1shot", "lcm-noselect")["n_paired"] == 60


def test_refuses_a_missing_method(runs):
    edit_records(runs[claims.ABLATION], lambda r: r[~((r["method"] == "lcm-nocross") & (r["setting"] == "5shot"))])
    with pytest.raises(MlfsicError) as error:
        claims.evaluate_claims(runs, n_boot=100)
    message = str(error.value)
    assert "\n" not in message
    assert str(runs[claims.ABLATION]) in message and "lcm-nocross" in message and "5shot" in message


def test_refuses_a_missing_setting(runs):
    edit_records(runs[claims.RANKING], lambda r: r[r["setting"] != "0shot"])
    with pytest.raises(MlfsicError, match=r"no records in setting 0shot") as error:
        claims.evaluate_claims(runs, n_boot=100)
    assert str(runs[claims.RANKING]) in str(error.value) and "lcm" in str(error.value)


def test_refuses_different_episode_sets(runs):
    other_set = episode_set_id("1shot", 99)
    edit_records(runs[claims.ABLATION], lambda r: r.assign(episode_set_id=r["episode_set_id"].mask(
        (r["method"] == "lcm-randvec") & (r["setting"] == "1shot") & (r["seed"] == 1), other_set)))
    with pytest.raises(MlfsicError) as error:
        claims.evaluate_claims(runs, n_boot=100)
    message = str(error.value)
    assert "\n" not in message and str(runs[claims.ABLATION]) in message
    assert "lcm and lcm-randvec in 1shot were not evaluated on the same episodes" in message
    assert "seed 1" in message and other_set[:12] in message


def test_refuses_missing_episodes_of_one_method(runs):
    edit_records(runs[claims.RANKING], lambda r: r[~((r["method"] == "protonet") & (r["setting"] == "5shot")
                                                      & (r["seed"] == 2) & (r["episode"] >= 30))])
    with pytest.raises(MlfsicError, match=r"lcm and protonet in 5shot .*\(seed 2: 40 episodes of lcm, 30 of protonet"):
        claims.evaluate_claims(runs, n_boot=100)


def test_refuses_a_run_on_the_wrong_split(tmp_path, runs):
    novel_ablation = fabricate_run(tmp_path / "novel_ablation", ABLATION_SHIFTS, "test")
    with pytest.raises(MlfsicError, match=r"evaluated on the test split .* ablation claims are tested on the val"):
        claims.evaluate_claims({**runs, claims.ABLATION: novel_ablation}, n_boot=100)


def _printed_rows(text: str) -> list[list[str]]:
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]


def test_outputs_match_the_printed_table(runs, tmp_path):
    text, paths = claims.run_claims(runs[claims.ABLATION], runs[claims.RANKING], tmp_path / "out")
    assert set(paths) == {"csv", "json", "md"} and paths["md"].read_text() == text
    table = pd.read_csv(paths["csv"])
    printed = _printed_rows(text)
    assert len(printed) == len(table) == 10 + 8
    for cells, (_, saved) in zip(printed, table.iterrows()):
        claim, split, setting, compared, difference, p_value, verdict, source = cells
        assert (claim, setting, compared, verdict, source) == (saved["claim"], saved["setting"],
                                                               saved["compared_with"], saved["verdict"],
                                                               saved["run_id"])
        assert split == {"val": "val", "test": "test (novel)"}[saved["split"]]
        if saved["kind"] == claims.SUMMARY:
            assert difference == p_value == "-"
            continue
        assert difference == f"{saved['diff']:+.2f} [{saved['ci_low']:+.2f}, {saved['ci_high']:+.2f}]"
        assert p_value == ("<0.001" if saved["p_value"] < 0.001 else f"{saved['p_value']:.3f}")
    document = json.loads(paths["json"].read_text())
    assert len(document["claims"]) == len(table)
    assert document["sources"]["ablation"] == {"run_id": "coco-moji-abl", "git_commit": "a" * 40, "git_dirty": True,
                                               "split": "val", "dataset": "coco-moji",
                                               "run_dir": str(runs[claims.ABLATION])}
    assert document["sources"]["ranking"]["split"] == "test"
    assert [d["key"] for d in document["definitions"]] == [c.key for c in claims.CLAIMS]
    assert "commit " + "a" * 40 + " (dirty)" in text and "commit " + "b" * 40 + "," in text
    again, _ = claims.run_claims(runs[claims.ABLATION], runs[claims.RANKING], tmp_path / "again")
    assert again == text and (tmp_path / "again" / "claims.csv").read_bytes() == paths["csv"].read_bytes()


def test_cli_prints_the_table_and_writes_the_files(runs, tmp_path, capsys):
    out = tmp_path / "claims_out"
    code = main(["claims", f"ablation={runs[claims.ABLATION]}", f"ranking={runs[claims.RANKING]}", f"out={out}"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = ("| lcm beats the baselines | test (novel) | 5shot | every baseline (laso, protonet) | - | - "
               "| does not hold |")
    assert summary in captured.out
    assert sorted(p.name for p in out.iterdir()) == ["claims.csv", "claims.json", "claims.md"]
    assert str(out / "claims.csv") in captured.out


def test_cli_default_out_is_claims_next_to_the_ablation_run(runs, capsys):
    assert main(["claims", f"ablation={runs[claims.ABLATION]}", f"ranking={runs[claims.RANKING]}"]) == 0
    capsys.readouterr()
    assert (runs[claims.ABLATION].parent / "claims" / "claims.json").is_file()


def test_ablation_none_tests_only_the_ranking_claims_next_to_the_ranking_run(runs, tmp_path, capsys):
    ranking = runs[claims.RANKING]
    assert main(["claims", "ablation=none", f"ranking={ranking}"]) == 0
    printed = capsys.readouterr().out
    table = pd.read_csv(ranking.parent / "claims" / "claims.csv")
    assert set(table["claim_id"]) == {claim.key for claim in claims.CLAIMS if claim.run == claims.RANKING}
    assert set(table["split"]) == {"test"} and "lcm beats the baselines" in printed
    document = json.loads((ranking.parent / "claims" / "claims.json").read_text())
    assert sorted(document["sources"]) == [claims.RANKING]


@pytest.mark.parametrize("role, command", [(claims.ABLATION, "mlfsic run +sweep=lcm_ablation"),
                                           (claims.RANKING, "make run")])
def test_cli_missing_run_dir_is_one_line_and_exit_2(runs, tmp_path, capsys, role, command):
    missing = tmp_path / "nowhere"
    given = {**{key: str(path) for key, path in runs.items()}, role: str(missing)}
    code = main(["claims", f"ablation={given[claims.ABLATION]}", f"ranking={given[claims.RANKING]}",
                 f"out={tmp_path / 'out'}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("mlfsic: error:")
    assert f"{role} run dir {missing} not found" in err and command in err
    assert not (tmp_path / "out").exists()


def test_cli_unknown_option_exits_2(capsys):
    assert main(["claims", "ablations=x"]) == 2
    assert "unknown claims option 'ablations'" in capsys.readouterr().err
