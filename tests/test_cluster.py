"""Fault tolerance on a real two-node Ray cluster on localhost (slow: ``make bench``).

The head and a second node run as separate raylets (``ray.cluster_utils.Cluster`` starts the same
processes as ``ray start --head`` / ``ray start --address``). A sweep connects with ``ray.address``;
the second node is killed while the sweep runs. The sweep must complete, and its records must equal
those of an undisturbed run on the same cluster (same rows, same mAP values).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY_DATASET_OVERRIDES

pytestmark = pytest.mark.slow

SWEEP = ["method=[random,example-cosine,laso]", "setting=[1shot]", "seeds=[0,1]", "n_episodes=60",
         "chunk_episodes=5", "+method_args.laso.steps=300", *TINY_DATASET_OVERRIDES]
COMPARED = ["method", "dataset", "setting", "seed", "episode_set_id", "episode", "map", "f1_3", "f1_5", "n_labels",
            "n_query", "method_config_hash", "status"]


def _run(address: str, results_dir: Path, run_id: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "mlfsic.harness.cli", "run", f"ray.address={address}",
               f"results_dir={results_dir}", f"run_id={run_id}", *SWEEP]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _records(results_dir: Path, run_id: str) -> pd.DataFrame:
    records = pd.read_parquet(results_dir / "runs" / run_id / "records.parquet")
    return records[COMPARED].sort_values(["method", "setting", "seed", "episode"]).reset_index(drop=True)


def test_sweep_survives_losing_a_node(tmp_path):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 80 * 2**20,
                                                            "include_dashboard": False})
    second = cluster.add_node(num_cpus=1, object_store_memory=80 * 2**20)
    try:
        cluster.wait_for_nodes()
        reference = _run(cluster.address, tmp_path, "undisturbed")
        out, err = reference.communicate(timeout=900)
        assert reference.returncode == 0, err[-3000:]

        disturbed = _run(cluster.address, tmp_path, "disturbed")
        parts = tmp_path / "runs" / "disturbed" / "parts"
        deadline = time.time() + 600
        while time.time() < deadline and len(list(parts.glob("*.records.parquet"))) < 4:
            time.sleep(0.2)
        done_before_kill = len(list(parts.glob("*.records.parquet")))
        cluster.remove_node(second, allow_graceful=False)
        out, err = disturbed.communicate(timeout=900)
        assert disturbed.returncode == 0, err[-3000:]
        print(f"\ncluster: chunks done before the node was killed: {done_before_kill} of 72")
    finally:
        cluster.shutdown()

    pd.testing.assert_frame_equal(_records(tmp_path, "undisturbed"), _records(tmp_path, "disturbed"))
