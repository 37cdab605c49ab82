"""Two sweeps started at once into one results dir (slow: ``make bench``).

Users of a shared cluster launch sweeps into the same ``results_dir``. Two ``mlfsic run`` processes of
the same command start together on a fresh results dir: one generates the dataset and trains the
backbone while the other waits (file locks, ``harness.io.file_lock``), features are computed once,
checkpoints are fitted once, and both write the same run dir (same run id). Both must exit 0, and the
records must equal, bit for bit, those of the same command run alone in another results dir.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.slow

SMALL_DATASET = ["dataset.generate.n_base=600", "dataset.generate.n_val=200", "dataset.generate.n_test=300",
                 "dataset.backbone.epochs=1"]
SWEEP = ["method=[random,example-cosine,protonet]", "setting=[0shot,1shot]", "seeds=[0]", "n_episodes=40",
         "chunk_episodes=10", "ray.num_cpus=1", "+method_args.protonet.n_episodes=50", "run_id=shared"]
TIMING = ["fit_s", "predict_s"]


def _command(results_dir: Path) -> list[str]:
    return [sys.executable, "-m", "mlfsic.harness.cli", "run", f"results_dir={results_dir}", *SMALL_DATASET, *SWEEP]


def _records(run_dir: Path) -> pd.DataFrame:
    records = pd.read_parquet(run_dir / "records.parquet").drop(columns=TIMING)
    return records.sort_values(["method", "setting", "seed", "episode"]).reset_index(drop=True)


def test_two_sweeps_at_once_share_every_artifact(tmp_path):
    shared = tmp_path / "shared"
    run_dir = shared / "runs" / "shared"
    processes = [subprocess.Popen(_command(shared), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
    # Read records.parquet as soon as the first process exits: what it leaves must already be complete.
    first_records = None
    deadline = time.time() + 1500
    while time.time() < deadline and all(p.poll() is None for p in processes):
        time.sleep(0.2)
    if (run_dir / "records.parquet").is_file():
        first_records = _records(run_dir)
    outputs = [p.communicate(timeout=max(1, deadline - time.time())) for p in processes]
    for process, (out, err) in zip(processes, outputs):
        assert process.returncode == 0, err[-3000:]
        assert Path(out.strip().splitlines()[-1]) == run_dir
        assert "\r" not in err  # stderr is a pipe, not a TTY: plain progress lines, no bars

    alone = subprocess.run(_command(tmp_path / "alone"), capture_output=True, text=True, timeout=1500)
    assert alone.returncode == 0, alone.stderr[-3000:]
    expected = _records(tmp_path / "alone" / "runs" / "shared")
    assert len(expected) == 40 * 4  # random 0shot+1shot, example-cosine 1shot, protonet 1shot
    assert first_records is not None
    pd.testing.assert_frame_equal(first_records, expected)
    pd.testing.assert_frame_equal(_records(run_dir), expected)
    pd.testing.assert_frame_equal(pd.read_parquet(run_dir / "label_ap.parquet"),
                                  pd.read_parquet(tmp_path / "alone" / "runs" / "shared" / "label_ap.parquet"))

    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "complete" and run["failures"] == []
    assert len(run["invocations"]) == 2  # neither invocation lost from run.json
    assert run["forward_passes"] == run["n_feature_images"]  # each image through the backbone once
    cache = shared / "cache"
    assert len(list((cache / "backbones").glob("*.pt"))) == 1
    assert not list((shared / "data").glob(".*.tmp"))  # the dataset was generated once, no leftover
    assert len(list((cache / "checkpoints").glob("*.pt"))) == 3  # random, example-cosine, protonet
    # The shared run's checkpoints and backbone are the ones a lone run makes (same bytes).
    alone_cache = tmp_path / "alone" / "cache"
    assert sorted(p.name for p in (cache / "backbones").glob("*.pt")) == \
        sorted(p.name for p in (alone_cache / "backbones").glob("*.pt"))
    print(f"\nconcurrent: 2 sweeps at once, {len(expected)} records equal to a lone run; "
          f"forward passes {run['forward_passes']} for {run['n_feature_images']} images")
