"""The Ray sweep runner on a real local Ray instance and a tiny generated coco-moji benchmark."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_overrides
from sklearn.metrics import average_precision_score

from mlfsic.harness.errors import MlfsicError
from mlfsic.harness.sweep.evaluate import evaluate_cell, method_spec
from mlfsic.harness.sweep.store import RECORD_COLUMNS
from mlfsic.harness.sweep.prepare import prepare_benchmark
from mlfsic.harness.sweep.driver.ray_setup import task_slots
from mlfsic.harness.sweep.runner import run_sweep
from mlfsic.harness.sweep.load import load_sweep
from mlfsic.harness.sweep.spec import TaskResources

N_EPISODES = 30


def _sweep(results_dir, *extra):
    sweep = load_sweep(tiny_overrides(results_dir, f"n_episodes={N_EPISODES}", "chunk_episodes=10", *extra))
    return run_sweep(sweep, progress=False)


def test_sweep_writes_complete_records_and_resumes(ray_session, tiny_results_dir):
    extra = ("method=[random,example-cosine,protonet]", "setting=[0shot,1shot]", "seeds=[0,1]", "save_scores=true",
             "+method_args.protonet.n_episodes=100")
    outcome = _sweep(tiny_results_dir, *extra)
    assert outcome.failures == []
    records = pd.read_parquet(outcome.run_path / "records.parquet")
    assert set(RECORD_COLUMNS) <= set(records.columns)
    keys = ["method", "dataset", "setting", "seed", "episode"]
    assert not records.duplicated(keys).any()
    # random: 0shot and 1shot; the cosine plug-in and protonet: 1shot only (no zero-shot). No gaps.
    expected = {("random", "0shot"), ("random", "1shot"), ("example-cosine", "1shot"), ("protonet", "1shot")}
    assert set(map(tuple, records[["method", "setting"]].drop_duplicates().values)) == expected
    for (method, setting, seed), group in records.groupby(["method", "setting", "seed"]):
        assert sorted(group["episode"]) == list(range(N_EPISODES)), (method, setting, seed)
    assert (records["status"] == "ok").all()
    assert records["episode_set_id"].nunique() == 4  # (0shot, 1shot) x 2 seeds, shared by methods
    # Chunk timing in run.json: every computed chunk counted; a chunk's wall time covers its predict calls.
    chunk_s = json.loads((outcome.run_path / "run.json").read_text())["evaluate_chunk_s"]
    assert chunk_s["n_chunks"] == outcome.counts["chunks_submitted"]
    assert chunk_s["wall"] >= records["predict_s"].sum() and chunk_s["cpu"] > 0

    # Stored scores reproduce every episode's mAP with sklearn.
    for (method, setting, seed), group in records.groupby(["method", "setting", "seed"]):
        stored = np.load(outcome.run_path / "scores" / f"{method}__{setting}__seed{seed}.npz")
        for row in group.itertuples():
            mask = stored["episode"] == row.episode
            expected_map = average_precision_score(stored["targets"][mask], stored["scores"][mask], average="macro")
            assert row.map == pytest.approx(expected_map, abs=1e-9)

    # The runner without Ray (prepare_benchmark + evaluate_cell) gives the same mAP per episode.
    sweep = load_sweep(tiny_overrides(tiny_results_dir, f"n_episodes={N_EPISODES}", *extra))
    benchmark = prepare_benchmark(sweep, progress=False)
    ray_rows = records.query("method == 'protonet' and seed == 1").sort_values("episode")
    path = tiny_results_dir / "episodes" / f"{ray_rows['episode_set_id'].iloc[0]}.json"
    spec = method_spec("protonet", sweep.methods["protonet"].config)
    local = evaluate_cell(benchmark, spec, 1, "1shot", str(path), tiny_results_dir / "cache").records
    np.testing.assert_array_equal(local["map"].to_numpy(), ray_rows["map"].to_numpy())

    label_ap = pd.read_parquet(outcome.run_path / "label_ap.parquet")
    per_episode = label_ap.groupby(keys)["ap"].mean().reset_index()
    merged = records.merge(per_episode, on=keys)
    np.testing.assert_allclose(merged["map"], merged["ap"], atol=1e-12)

    # Resume: drop two finished chunks, re-run: only those two are recomputed, records identical.
    parts = sorted((outcome.run_path / "parts").glob("*.records.parquet"))
    for part in parts[:2]:
        part.unlink()
    resumed = _sweep(tiny_results_dir, *extra)
    assert resumed.counts["chunks_submitted"] == 2
    assert resumed.counts["chunks_skipped"] == resumed.counts["chunks_total"] - 2
    again = pd.read_parquet(resumed.run_path / "records.parquet")
    pd.testing.assert_frame_equal(
        records.drop(columns=["fit_s", "predict_s"]), again.drop(columns=["fit_s", "predict_s"])
    )
    # A third run finds everything done: nothing submitted, no fit.
    done = _sweep(tiny_results_dir, *extra)
    assert done.counts["chunks_submitted"] == 0 and done.counts["fit_tasks"] == 0
    run_json = json.loads((done.run_path / "run.json").read_text())
    assert run_json["evaluate_chunk_s"] == {"n_chunks": 0, "wall": 0.0, "cpu": 0.0}  # this invocation's only
    assert run_json["status"] == "complete"
    assert run_json["git"]["commit"]
    assert run_json["forward_passes"] == run_json["n_feature_images"]


def test_failing_methods_fail_their_cells_only(ray_session, tiny_results_dir):
    outcome = _sweep(
        tiny_results_dir, "method_modules=[faulty_methods]", "setting=[1shot]", "seeds=[0]",
        "method=[random,test-raises,test-nan,test-wrong-shape,test-fit-raises]",
    )
    failed = {f["method"]: f["error"] for f in outcome.failures}
    assert set(failed) == {"test-raises", "test-nan", "test-wrong-shape", "test-fit-raises"}
    assert "deliberate failure" in failed["test-raises"]
    assert "non-finite" in failed["test-nan"]
    assert "shape" in failed["test-wrong-shape"]
    assert "cannot fit" in failed["test-fit-raises"]
    records = pd.read_parquet(outcome.run_path / "records.parquet")
    assert set(records["method"]) == {"random"}
    assert len(records) == N_EPISODES
    run_json = json.loads((outcome.run_path / "run.json").read_text())
    assert run_json["status"] == "failed" and len(run_json["failures"]) == 4


@pytest.mark.slow
def test_a_worker_killed_for_memory_is_reported_as_out_of_memory(tiny_results_dir, tmp_path):
    """A sweep in its own Ray (a subprocess), whose memory monitor kills workers once the machine uses 3 GB more
    than now; the method allocating without bound fails its cell as out of memory, the other cell completes."""
    import os
    import subprocess
    import sys

    meminfo = dict(line.split(":", 1) for line in open("/proc/meminfo").read().splitlines())
    total, available = (int(meminfo[key].split()[0]) * 1024 for key in ("MemTotal", "MemAvailable"))
    threshold = min(0.95, (total - available + 3.0e9) / total)
    tests = str(Path(__file__).parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")]),
           "RAY_memory_usage_threshold": f"{threshold:.3f}", "RAY_task_oom_retries": "0"}
    overrides = tiny_overrides(tiny_results_dir, f"n_episodes={N_EPISODES}", "chunk_episodes=10", "setting=[1shot]",
                               "seeds=[0]", "method_modules=[faulty_methods]", "method=[random,test-eats-memory]",
                               "max_retries=0", "ray.num_cpus=2", f"run_id=oom-{tmp_path.name}")
    done = subprocess.run([sys.executable, "-m", "mlfsic.harness.cli", "run", *overrides], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-2000:]
    failed = [line for line in done.stderr.splitlines() if line.startswith("FAILED ")]
    assert len(failed) == 1 and failed[0].startswith("FAILED test-eats-memory 1shot seed0: out of memory: "), \
        done.stderr[-3000:]
    run_dir = Path(done.stdout.strip().splitlines()[-1])
    assert set(pd.read_parquet(run_dir / "records.parquet")["method"]) == {"random"}


def test_time_limit_interrupts_the_block_and_restores_the_alarm():
    from mlfsic.harness.sweep.driver.tasks import TaskTimedOut, time_limit

    before = signal.getsignal(signal.SIGALRM)
    with pytest.raises(TaskTimedOut, match=r"timed out: a nap ran past task_timeout_s=0.2"):
        with time_limit(0.2, "a nap"):
            try:
                time.sleep(5)
            except Exception:  # a method's broad except does not swallow the timeout
                pass
    with time_limit(5, "quick"):
        pass
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    assert signal.getsignal(signal.SIGALRM) is before
    with time_limit(None, "unbounded"):
        time.sleep(0.3)


def test_published_costs_order_the_tasks_longest_first(ray_session, tiny_results_dir):
    """Fits by measured fit seconds, then chunks by estimated seconds (published per-episode cost x episodes)."""
    import ray

    from mlfsic.harness.protocol.data import split_pool
    from mlfsic.harness.protocol.episodes import materialise_episode_sets
    from mlfsic.harness.sweep.prepare import load_dataset_and_split
    from mlfsic.harness.sweep.driver.planning import SweepWork, TaskCosts, plan_and_submit

    costs = TaskCosts.published()
    assert costs.episode_s("lcm", "5shot") > costs.episode_s("lcm", "1shot") > costs.episode_s("protonet", "5shot")
    assert costs.fit_s("laso") > costs.fit_s("protonet") > costs.fit_s("random")
    assert costs.fit_s("not-published") == pytest.approx(float(np.median(list(costs.fit.values()))))

    sweep = load_sweep(tiny_overrides(tiny_results_dir, f"n_episodes={N_EPISODES}", "chunk_episodes=10", "seeds=[0]",
                                      "method=[random,wordvec-zeroshot,protonet]", "run_id=lpt-order"))
    benchmark = prepare_benchmark(sweep, progress=False)
    dataset, split = load_dataset_and_split(sweep.dataset.as_dict())
    episode_sets = materialise_episode_sets(split_pool(dataset, "test", split["test"]), sweep.episode_plan,
                                            sweep.results_dir)
    specs = {name: method_spec(m.name, m.config, base=m.base) for name, m in sweep.methods.items()}
    options = {"num_cpus": 1, "max_retries": 0}
    [plan] = plan_and_submit([SweepWork(sweep, benchmark, specs, episode_sets)], options, options)
    tasks = list(plan.pending.values())  # in submission order
    ray.get(list(plan.pending))
    fits = [task.method for task in tasks if task.kind == "fit"]
    assert fits == ["protonet", "wordvec-zeroshot", "random"]
    chunks = [(task.method, task.settings[0]) for task in tasks if task.kind == "evaluate"]
    estimates = [costs.episode_s(method, setting) for method, setting in chunks]
    assert estimates == sorted(estimates, reverse=True) and len(chunks) == 3 * 3 + 2 * 3 + 3
    # the published run's per-episode costs: random's chunks are the dearest per episode there
    assert chunks[0][0] == "random"


def test_gpu_request_on_cpu_cluster_is_rejected_up_front(ray_session, tiny_results_dir):
    sweep = load_sweep(tiny_overrides(tiny_results_dir, "resources.num_gpus=1", "method=[random]"))
    with pytest.raises(MlfsicError, match=r"^resources\.num_gpus=1 requested, but no node of the Ray cluster has that "
                                          r"many GPUs .*; set resources\.num_gpus=0 or"):
        run_sweep(sweep, progress=False)
    sweep = load_sweep(tiny_overrides(tiny_results_dir, "resources.evaluate.num_gpus=0.5", "method=[random]"))
    with pytest.raises(MlfsicError, match=r"^resources\.evaluate\.num_gpus=0\.5 requested, .*; set "
                                          r"resources\.evaluate\.num_gpus=0 or"):
        run_sweep(sweep, progress=False)


def test_warm_up_covers_every_task_slot_of_the_cluster(ray_session):
    """One warm-up per task slot the sweep's tasks can fill at once (the shared test cluster: 2 CPUs, no GPU)."""
    assert task_slots(TaskResources(num_cpus=1)) == 2
    assert task_slots(TaskResources(num_cpus=0.5)) == 4
    assert task_slots(TaskResources(num_cpus=2)) == 1
    assert task_slots(TaskResources(num_cpus=1, num_gpus=1)) == 1  # no GPU here: never fewer than one


def test_variants_are_fitted_and_evaluated_under_their_own_name(ray_session, tiny_results_dir):
    outcome = _sweep(tiny_results_dir, "+variants.protonet-e16.method=protonet", "+variants.protonet-e16.embed_dim=16",
                     "+method_args.protonet.n_episodes=100", "method=[protonet,protonet-e16]", "setting=[1shot]",
                     "seeds=[0]")
    assert outcome.failures == []
    records = pd.read_parquet(outcome.run_path / "records.parquet")
    assert set(records["method"]) == {"protonet", "protonet-e16"}
    assert (records.groupby("method")["episode"].count() == N_EPISODES).all()
    assert records.groupby("method")["method_config_hash"].nunique().eq(1).all()
    assert records["method_config_hash"].nunique() == 2  # different models, different checkpoints
    run_json = json.loads((outcome.run_path / "run.json").read_text())
    variant = run_json["methods"]["protonet-e16"]
    assert variant["method"] == "protonet"
    assert variant["config"]["embed_dim"] == 16 and variant["config"]["n_episodes"] == 100  # base's args + own
    assert run_json["methods"]["protonet"]["config"]["embed_dim"] == 128
    assert run_json["config"]["variants"] == {"protonet-e16": {"method": "protonet", "embed_dim": 16}}
    checkpoint = tiny_results_dir / "cache" / "checkpoints"
    assert any(json.loads(p.read_text())["config"].get("embed_dim") == 16 for p in checkpoint.glob("protonet-*.json"))
