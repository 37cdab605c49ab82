"""Fault injection into real sweeps (README "Failure modes"): damaged caches and run-dir parts.

One clean tiny coco-moji sweep (``mlfsic run`` in this process, on the session's local Ray) is the
reference. Each test damages one artifact the clean sweep left in the results dir -- a planted pickle, a
truncated or garbage checkpoint, a truncated feature shard, a modified episode-set file, truncated or
half-written parts, or adds a method that hangs -- runs the same sweep again and asserts the exit code, the one
line that names the
file, and that every record equals the clean run's (timing columns and run_id aside). Worker loss and a
driver SIGKILL mid-write are tested in tests/test_interrupt.py and tests/test_cluster.py, not here.

At the end of the module a table (fault, survived, records lost) is printed (visible with ``-s``).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import tiny_overrides

from mlfsic.harness.cli import main
from mlfsic.harness.io import sha256_file

SWEEP = ("method=[random,protonet]", "setting=[1shot]", "seeds=[0]", "n_episodes=20", "chunk_episodes=10",
         "+method_args.protonet.n_episodes=30")
KEYS = ["method", "dataset", "setting", "seed", "episode"]
OUTCOMES: list[tuple[str, bool, int]] = []  # (fault, survived, records lost), printed at the end


@pytest.fixture(scope="module", autouse=True)
def fault_table():
    yield
    if OUTCOMES:
        width = max(len(fault) for fault, _, _ in OUTCOMES)
        lines = [f"{'fault':<{width}}  survived  records lost"]
        lines += [f"{fault:<{width}}  {'yes' if ok else 'NO':<8}  {lost}" for fault, ok, lost in OUTCOMES]
        print("\n" + "\n".join(lines))


def _run(results_dir: Path, run_id: str, capfd) -> tuple[int, str, Path]:
    capfd.readouterr()
    code = main(["run", *tiny_overrides(results_dir, *SWEEP, f"run_id={run_id}")])
    return code, capfd.readouterr().err, results_dir / "runs" / run_id


def _records(run_path: Path) -> pd.DataFrame:
    records = pd.read_parquet(run_path / "records.parquet").drop(columns=["fit_s", "predict_s", "run_id"])
    return records.sort_values(KEYS).reset_index(drop=True)


@pytest.fixture(scope="module")
def clean(ray_session, tmp_path_factory, tiny_results_dir):
    """The undisturbed sweep: (results dir, run dir, records). The generated dataset, the trained backbone
    and the label embeddings are the session's (``tiny_results_dir``), made once; the caches these tests
    damage (features, checkpoints, episode sets) and the run dirs are this module's own."""
    results_dir = tmp_path_factory.mktemp("faults")
    for shared in ("data", "cache/backbones", "cache/embeddings"):
        (tiny_results_dir / shared).mkdir(parents=True, exist_ok=True)
        (results_dir / shared).parent.mkdir(parents=True, exist_ok=True)
        (results_dir / shared).symlink_to(tiny_results_dir / shared, target_is_directory=True)
    assert main(["run", *tiny_overrides(results_dir, *SWEEP, "run_id=clean")]) == 0
    run_path = results_dir / "runs" / "clean"
    records = _records(run_path)
    assert len(records) == 2 * 20
    return results_dir, run_path, records


def _check_survived(fault: str, clean_records: pd.DataFrame, run_path: Path) -> None:
    """Record the outcome (every clean record present and equal), then assert it."""
    records = _records(run_path) if (run_path / "records.parquet").is_file() else clean_records.iloc[:0]
    merged = clean_records.merge(records, on=KEYS, how="left", suffixes=("", "_now"), indicator=True)
    value_columns = [c for c in clean_records.columns if c not in KEYS]
    same = merged["_merge"] == "both"
    for column in value_columns:
        same &= merged[column] == merged[f"{column}_now"]
    lost = int((~same).sum())
    OUTCOMES.append((fault, lost == 0 and len(records) == len(clean_records), lost))
    pd.testing.assert_frame_equal(records, clean_records)


def _checkpoint(results_dir: Path) -> Path:
    (path,) = sorted((results_dir / "cache" / "checkpoints").glob("protonet-*.pt"))
    return path


def _forge_record(checkpoint: Path) -> None:
    """An attacker who can write the checkpoint can write its record too: make them agree."""
    record_file = checkpoint.with_suffix(".json")
    record = json.loads(record_file.read_text())
    record["checkpoint"] = {"size": checkpoint.stat().st_size, "sha256": sha256_file(checkpoint)}
    record_file.write_text(json.dumps(record))


class _Payload:
    """Unpickling this runs ``os.mkdir(marker)``: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_a_harness_checkpoint_is_plain_data(clean):
    results_dir, _, _ = clean
    content = torch.load(_checkpoint(results_dir), weights_only=True)
    assert content["format"] == "mlfsic-checkpoint"
    assert json.loads(content["header"])["name"] == "protonet"


def test_planted_pickle_is_refused_unexecuted_and_refitted(clean, capfd, tmp_path):
    results_dir, _, clean_records = clean
    checkpoint = _checkpoint(results_dir)
    marker, control = tmp_path / "payload-ran", tmp_path / "control-ran"
    torch.save({"method": _Payload(control)}, tmp_path / "control.pt")
    torch.load(tmp_path / "control.pt", weights_only=False)
    assert control.exists()  # the payload is live: an unsafe load would run it
    torch.save({"method": _Payload(marker)}, checkpoint)
    _forge_record(checkpoint)

    code, err, run_path = _run(results_dir, "planted", capfd)
    assert not marker.exists(), "the planted pickle was executed"
    lines = [line for line in err.splitlines() if str(checkpoint) in line]
    assert len(lines) == 1 and "weights_only=True" in lines[0] and "refitting protonet seed 0" in lines[0], err[-3000:]
    assert "mkdir" in lines[0]  # the line says what was refused
    assert code == 0
    assert torch.load(checkpoint, weights_only=True)["format"] == "mlfsic-checkpoint"  # refitted in place
    _check_survived("planted pickle checkpoint", clean_records, run_path)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_damaged_checkpoint_is_refitted(clean, capfd, damage):
    results_dir, _, clean_records = clean
    checkpoint = _checkpoint(results_dir)
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[: len(data) // 2] if damage == "truncated" else os.urandom(len(data)))

    code, err, run_path = _run(results_dir, f"checkpoint-{damage}", capfd)
    lines = [line for line in err.splitlines() if str(checkpoint) in line]
    why = "bytes where its record says" if damage == "truncated" else "sha256 does not match its record"
    assert len(lines) == 1 and why in lines[0] and "refitting protonet seed 0" in lines[0], err[-3000:]
    assert code == 0
    _check_survived(f"{damage} checkpoint", clean_records, run_path)


def test_truncated_feature_shard_is_dropped_and_reextracted(clean, capfd):
    results_dir, _, clean_records = clean
    (local,) = (results_dir / "cache" / "features").glob("*/*/shards/*/local.npy")
    with open(local, "r+b") as handle:
        handle.truncate(local.stat().st_size // 3)

    code, err, run_path = _run(results_dir, "shard", capfd)
    lines = [line for line in err.splitlines() if "feature shard" in line]
    assert len(lines) == 1 and str(local.parent) in lines[0] and "extracted again" in lines[0], err[-3000:]
    assert code == 0
    _check_survived("truncated feature shard", clean_records, run_path)


def test_modified_episode_set_is_regenerated(clean, capfd):
    results_dir, _, clean_records = clean
    (path,) = (results_dir / "episodes").glob("*.json")
    content = json.loads(path.read_text())
    content["episodes"][3]["query"] = content["episodes"][3]["query"][::-1][:2]  # an edited episode
    path.write_text(json.dumps(content))

    code, err, run_path = _run(results_dir, "episodes", capfd)
    lines = [line for line in err.splitlines() if str(path) in line]
    assert len(lines) == 1 and "does not match its content" in lines[0] and "regenerated" in lines[0], err[-3000:]
    assert code == 0
    assert json.loads(path.read_text())["episodes"][3] != content["episodes"][3]
    _check_survived("modified episode-set JSON", clean_records, run_path)


def test_truncated_and_half_written_parts_are_recomputed(clean, capfd):
    results_dir, clean_run, clean_records = clean
    run_path = results_dir / "runs" / "parts"
    shutil.copytree(clean_run, run_path)  # a finished run dir whose storage lost the ends of two parts
    half_written = sorted(run_path.glob("parts/protonet__*chunk0000.records.parquet"))[0]
    truncated = sorted(run_path.glob("parts/random__*chunk0001.label_ap.parquet"))[0]
    for path in (half_written, truncated):
        with open(path, "r+b") as handle:
            handle.truncate(path.stat().st_size // 2)

    code, err, _ = _run(results_dir, "parts", capfd)
    lines = [line for line in err.splitlines() if line.startswith("mlfsic: part ")]
    assert len(lines) == 2, err[-3000:]
    assert any(half_written.name.removesuffix(".records.parquet") in line and "unreadable" in line for line in lines)
    assert any(truncated.name.removesuffix(".label_ap.parquet") in line and "truncated" in line for line in lines)
    assert code == 0
    counts = json.loads((run_path / "run.json").read_text())["counts"]
    assert counts["chunks_submitted"] == 2 and counts["chunks_skipped"] == counts["chunks_total"] - 2
    _check_survived("truncated / half-written part files", clean_records, run_path)


def test_a_hung_method_times_out_and_the_other_cells_are_the_clean_runs(clean, capfd):
    """task_timeout_s bounds each fit and each evaluation chunk: a method sleeping forever in fit, and one
    sleeping forever in its second chunk's predict, fail their cells as timed out (run.json says why); the
    other cells complete, equal to the clean run's; exit code 1."""
    results_dir, _, clean_records = clean
    capfd.readouterr()
    code = main(["run", *tiny_overrides(results_dir, *SWEEP, "method_modules=[faulty_methods]", "task_timeout_s=8",
                                        "method=[random,protonet,test-hangs,test-fit-hangs]", "run_id=hung")])
    err = capfd.readouterr().err
    assert code == 1
    failed = [line for line in err.splitlines() if line.startswith("FAILED ")]
    assert sorted(failed) == [
        "FAILED test-fit-hangs 1shot seed0: timed out: the fit of test-fit-hangs seed 0 ran past task_timeout_s=8",
        "FAILED test-hangs 1shot seed0: timed out: test-hangs 1shot seed 0, episodes 10-19 ran past task_timeout_s=8",
    ], err[-3000:]
    run_path = results_dir / "runs" / "hung"
    info = json.loads((run_path / "run.json").read_text())
    assert info["status"] == "failed" and {f["method"] for f in info["failures"]} == {"test-hangs", "test-fit-hangs"}
    _check_survived("method hung in fit / in one chunk (task_timeout_s)", clean_records, run_path)


def test_damage_after_the_check_is_a_one_line_error_naming_the_file(clean, tmp_path):
    """A checkpoint or a part damaged after the driver checked it (during a sweep): the chunk or the assembly
    stops with one line naming the file and the command that rebuilds it; the damaged part is removed."""
    from mlfsic.harness.errors import MlfsicError
    from mlfsic.harness.sweep.evaluate import load_fitted
    from mlfsic.harness.sweep.store import assemble

    results_dir, clean_run, _ = clean
    source = _checkpoint(results_dir)
    checkpoint = tmp_path / source.name
    shutil.copy(source, checkpoint)
    shutil.copy(source.with_suffix(".json"), checkpoint.with_suffix(".json"))
    assert type(load_fitted(str(checkpoint))).__name__ == "MultiLabelProtoNet"
    with open(checkpoint, "r+b") as handle:
        handle.truncate(100)
    with pytest.raises(MlfsicError, match=f"checkpoint {checkpoint}: .*re-run the same `mlfsic run` command to refit"):
        load_fitted(str(checkpoint))

    run_path = tmp_path / "run"
    shutil.copytree(clean_run, run_path)
    planned = sorted(p.name.removesuffix(".records.parquet") for p in (run_path / "parts").glob("*.records.parquet"))
    damaged = run_path / "parts" / f"{planned[0]}.records.parquet"
    damaged.write_bytes(damaged.read_bytes()[:200])
    with pytest.raises(MlfsicError, match=f"part {damaged} is unreadable .*re-run the same `mlfsic run` command"):
        assemble(run_path, planned, set())
    assert not damaged.exists()  # so the re-run computes that chunk again


# ----------------------------------------------------------------------------------------- the codec alone
def _write_raw_checkpoint(path: Path, state: dict) -> None:
    """A file that passes torch.load(weights_only=True) and its record: only the decoder stands in the way."""
    torch.save({"format": "mlfsic-checkpoint", "version": 1, "header": "{}", "state": state}, path)
    path.with_suffix(".json").write_text(json.dumps({"checkpoint": {"size": path.stat().st_size,
                                                                    "sha256": sha256_file(path)}}))


@pytest.mark.parametrize("cls", ["subprocess:Popen", "torch.utils.data.dataloader:DataLoader", "mlfsic.harness.cli:main"])
def test_decoder_builds_only_allowed_classes(tmp_path, cls):
    """A crafted data-only checkpoint naming any other class (or a function) is refused, nothing built."""
    from mlfsic.harness.sweep.checkpoint import CheckpointError, load_checkpoint

    path = tmp_path / "crafted.pt"
    _write_raw_checkpoint(path, {"__t__": "object", "class": cls, "state": {}, "id": 0})
    with pytest.raises(CheckpointError, match=f"checkpoint {path}: cannot decode"):
        load_checkpoint(path)


def test_an_attribute_that_is_not_data_is_refused_at_save_time(tmp_path):
    from mlfsic.harness.errors import MlfsicError
    from mlfsic.harness.sweep.checkpoint import save_checkpoint
    from mlfsic.methods.registry import create_method

    method = create_method("random", {}, seed=0)
    method.fit_report = {"hooks": [lambda: 0]}
    with pytest.raises(MlfsicError, match=r"method 'random': cannot checkpoint method\.fit_report\['hooks'\]\[0\]"):
        save_checkpoint(tmp_path / "random.pt", method, {"name": "random"})
    assert not list(tmp_path.iterdir())  # nothing half-written
