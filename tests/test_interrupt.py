"""Ctrl-C and resume with the real CLI (slow: ``make bench``).

A sweep is interrupted with SIGINT once some chunks are done; it exits with 130 and keeps its finished
chunks. Re-running the same command computes only the missing chunks, and the final records have one
row per (method, setting, seed, episode), none duplicated, none missing.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from conftest import TINY_DATASET_OVERRIDES

pytestmark = pytest.mark.slow


def test_interrupted_sweep_resumes_without_recomputing(tmp_path):
    command = [sys.executable, "-m", "mlfsic.harness.cli", "run", f"results_dir={tmp_path}", "run_id=interrupted",
               "method=[random,example-cosine,laso]", "setting=[1shot,5shot]", "seeds=[0]", "n_episodes=100",
               "chunk_episodes=10", "ray.num_cpus=2", "+method_args.laso.steps=200", *TINY_DATASET_OVERRIDES]
    parts = tmp_path / "runs" / "interrupted" / "parts"
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while time.time() < deadline and len(list(parts.glob("*.records.parquet"))) < 8 and first.poll() is None:
        time.sleep(0.1)
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 130, err[-2000:]
    assert "re-run the same command to resume" in err
    done = len(list(parts.glob("*.records.parquet")))
    assert json.loads((tmp_path / "runs" / "interrupted" / "run.json").read_text())["status"] == "interrupted"

    second = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-2000:]
    counts = json.loads((tmp_path / "runs" / "interrupted" / "run.json").read_text())["counts"]
    print(f"\ninterrupt: {done} of {counts['chunks_total']} chunks done at the interrupt; re-run skipped "
          f"{counts['chunks_skipped']}, computed {counts['chunks_submitted']}")
    assert counts["chunks_skipped"] == done
    assert counts["chunks_submitted"] == counts["chunks_total"] - done
    records = pd.read_parquet(tmp_path / "runs" / "interrupted" / "records.parquet")
    keys = ["method", "setting", "seed", "episode"]
    assert not records.duplicated(keys).any()
    assert len(records) == 3 * 2 * 100  # random, example-cosine, laso x (1shot, 5shot) x 100 episodes
