"""README's cluster recipe, run as written on localhost (slow: ``make bench``).

A head node (``ray start --head``) and a second node (``ray start --address=...``), each a separate raylet with
one CPU; the sweep is submitted as a Ray job (``ray job submit --working-dir . -- mlfsic run ray.address=auto``,
with the runtime_env ``excludes`` README documents). Its records must equal those of the same sweep run
locally (its own local Ray, its own results dir: dataset, backbone and features made afresh).

``ray start --block`` keeps each node's processes children of one process group, which the test ends itself:
``ray stop`` would stop every Ray on the machine, including the tests' shared instance.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY_DATASET_OVERRIDES

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SWEEP = ["method=[random,protonet]", "setting=[1shot,5shot]", "seeds=[0]", "n_episodes=40", "chunk_episodes=10",
         *TINY_DATASET_OVERRIDES]
COMPARED = ["method", "dataset", "setting", "seed", "episode_set_id", "episode", "map", "f1_3", "f1_5", "n_labels",
            "n_query", "method_config_hash", "status", "backbone_id", "embedding_id"]
# README's runtime_env: Ray caps the working-dir upload at 100 MiB; the venv, git history and results stay home.
RUNTIME_ENV = {"excludes": [".git", ".venv", "results"]}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _records(run_dir: Path) -> pd.DataFrame:
    records = pd.read_parquet(run_dir / "records.parquet")
    return records[COMPARED].sort_values(["method", "setting", "seed", "episode"]).reset_index(drop=True)


def _start_node(*arguments: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "ray"), "start", "--block", "--num-cpus=1", f"--object-store-memory={80 * 2**20}",
                             *arguments], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _stop(node: subprocess.Popen) -> None:
    try:
        os.killpg(node.pid, signal.SIGTERM)
        node.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(node.pid, signal.SIGKILL)
    except ProcessLookupError:  # the node had ended already
        pass


def test_a_ray_job_on_two_nodes_gives_the_records_of_a_local_run(tmp_path):
    # As README: token authentication (Ray >= 2.5x) with one token every node, the job client and the driver share.
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env.pop("RAY_ADDRESS", None)
    gcs, dashboard = _free_port(), _free_port()
    # Each node its own temp dir, as on separate machines: two nodes sharing one would share runtime_resources/,
    # and the second node's clean-up of the job's working_dir would remove the driver's current directory.
    temp = Path(tempfile.mkdtemp(prefix="rj", dir="/tmp"))  # short: Ray's socket paths must fit in 107 bytes
    head = _start_node("--head", "--node-ip-address=127.0.0.1", f"--port={gcs}", "--include-dashboard=true",
                       "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", f"--temp-dir={temp / 'h'}", env=env)
    nodes = [head]
    try:
        deadline = time.time() + 120
        while subprocess.run([str(BIN / "ray"), "status", f"--address=127.0.0.1:{gcs}"], env=env,
                             capture_output=True).returncode != 0:
            assert time.time() < deadline and head.poll() is None, head.stderr.read() if head.poll() is not None else ""
            time.sleep(2)
        nodes.append(_start_node(f"--address=127.0.0.1:{gcs}", "--node-ip-address=127.0.0.1", f"--temp-dir={temp / 'n'}",
                                 env=env))
        deadline = time.time() + 120
        while _alive_nodes(gcs, env) < 2:
            assert time.time() < deadline, _status(gcs, env)
            time.sleep(2)

        job_results = tmp_path / "shared-results"  # storage every node sees: one machine here
        submit = [str(BIN / "ray"), "job", "submit", f"--address=http://127.0.0.1:{dashboard}",
                  f"--working-dir={REPO}", f"--runtime-env-json={json.dumps(RUNTIME_ENV)}", "--",
                  "mlfsic", "run", "ray.address=auto", f"results_dir={job_results}", "run_id=job", *SWEEP]
        deadline = time.time() + 180
        while True:  # the head's job agent comes up a little after the node reports alive
            job = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=1200, cwd=REPO)
            if "No available agent to submit job" not in job.stderr or time.time() > deadline:
                break
            time.sleep(5)
        assert job.returncode == 0, (job.stdout + job.stderr)[-3000:]
        assert "succeeded" in job.stdout.lower(), job.stdout[-2000:]
        info = json.loads((job_results / "runs" / "job" / "run.json").read_text())
        assert info["ray"]["address"] == "auto" and info["ray"]["cluster_resources"]["CPU"] == 2.0
    finally:
        for node in reversed(nodes):
            _stop(node)
        shutil.rmtree(temp, ignore_errors=True)

    local_results = tmp_path / "local-results"
    local = subprocess.run([sys.executable, "-m", "mlfsic.harness.cli", "run", "ray.num_cpus=2",
                            f"results_dir={local_results}", "run_id=local", *SWEEP], env=env, capture_output=True,
                           text=True, timeout=1200)
    assert local.returncode == 0, local.stderr[-3000:]
    pd.testing.assert_frame_equal(_records(job_results / "runs" / "job"), _records(local_results / "runs" / "local"))


def _status(gcs: int, env: dict[str, str]) -> str:
    done = subprocess.run([str(BIN / "ray"), "status", f"--address=127.0.0.1:{gcs}"], env=env, capture_output=True,
                          text=True)
    return done.stdout


def _alive_nodes(gcs: int, env: dict[str, str]) -> int:
    status = _status(gcs, env)
    active = status.split("Active:", 1)[-1].split("Pending:", 1)[0]
    return sum(1 for line in active.splitlines() if "node_" in line)
