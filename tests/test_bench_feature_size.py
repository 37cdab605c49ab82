"""Benchmark (``make bench``): every non-CLIP method's fit and predict cost at two feature sizes.

docs/scale.md §4 extrapolates the methods' cost to an ImageNet backbone's features; this measures it. Two sizes:

* ``smallcnn``: the coco-moji SmallCNN's features, global D = 128, local grid L = 36 positions x C = 128;
* ``efficientnet-lite0``: EfficientNet-Lite0's, D = C = 1280, L = 49 (7 x 7).

Synthetic data of coco-moji's shape (``tests/synthetic_data.py``'s generators, at these sizes): a base split
of 6,000 images over 42 labels, a val split of 1,500 images over 9 labels (``fit`` gets both, as in a default
run), and a pool of 2,000 images over 12 novel labels from which the harness's own sampler (protocol
``release``, 4 queries per label, all 12 labels) draws the evaluation episodes. Features are float32 (as
``split_data`` / ``episode_of`` hand them to a method) and each image's local grid averages over its positions
to its global feature (C == D, as with the real backbones; lcm's tied local projection relies on it). Word
embeddings are 384-d (the default ``minilm`` encoder).

Every method of ``available_methods()`` without ``needs_clip`` (``MLFSIC_FEATURE_SIZE_METHODS=a,b`` restricts
them) runs, per size, in its own subprocess with one torch thread (a Ray task's ``num_cpus=1``):

1. it loads the split arrays (local grids only for ``needs_local_features``), notes its resident set
   (``data MB``) and resets the kernel's peak (``echo 5 > /proc/self/clear_refs``), so generation does not count;
2. ``create_method(name, configs/methods/<name>.yaml, seed=0)`` (the yaml read by ``harness.config.method_yaml``
   and checked by ``check_hyperparameters``, as ``harness.sweep.spec`` does) and ``fit(base, val)``: **fit s**
   (wall and CPU);
3. per setting (1-shot and 5-shot; 0-shot for a method with no few-shot setting): a probe of ``PROBE_EPISODES``
   episodes through ``predict_batch`` (warm-up, and a rate estimate), then one chunk of ``n`` episodes through
   ``predict_batch``, ``n`` = 100 (the harness's ``chunk_episodes``) or fewer where the probe says 100 would take
   more than ``MLFSIC_FEATURE_SIZE_PREDICT_S`` seconds (default 60; at least 10): **predict episodes/s**;
   scores must be finite and (n_query, n_labels);
4. **peak RSS MB**: its ``VmHWM`` at the end, since the reset: the loaded data, the fit, the chunk's episodes
   (``build_episode`` builds a whole chunk before ``predict_batch`` in the harness too) and the prediction.

The table goes to stdout and, with ``MLFSIC_FEATURE_SIZE_OUT=FILE``, with the raw figures to a JSON file.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class FeatureSize:
    name: str
    dim: int  # D = C
    positions: int  # L


SIZES = (FeatureSize("smallcnn", 128, 36), FeatureSize("efficientnet-lite0", 1280, 49))
SPLITS = {"base": (42, 6000), "val": (9, 1500), "pool": (12, 2000)}  # labels, images (coco-moji's shape)
EMBEDDING_DIM = 384  # minilm
N_QUERY = 4
MAX_EPISODES = 100  # chunk_episodes
MIN_EPISODES = 10
PROBE_EPISODES = 5
PREDICT_BUDGET_S = float(os.environ.get("MLFSIC_FEATURE_SIZE_PREDICT_S", "60"))
GRID_CHUNK = 250  # images per local-grid block while generating (bounds the generator's float64 temporaries)
METHOD_TIMEOUT_S = 3 * 3600


def benchmarked_methods() -> list[str]:
    from mlfsic.methods.registry import available_methods

    names = [name for name, info in available_methods().items() if not info.cls.needs_clip]
    wanted = [name.strip() for name in os.environ.get("MLFSIC_FEATURE_SIZE_METHODS", "").split(",") if name.strip()]
    unknown = sorted(set(wanted) - set(names))
    assert not unknown, f"MLFSIC_FEATURE_SIZE_METHODS: {unknown} are not registered non-CLIP methods ({names})"
    return [name for name in names if not wanted or name in wanted]


# ------------------------------------------------------------------------------------------------ data
def generate(size: FeatureSize, out: Path) -> None:
    """The three splits' arrays as .npy files under ``out`` (one world: base, val and novel labels share the
    latent structure of ``synthetic_data.make_world``)."""
    from synthetic_data import _images, make_local_grid, make_world

    n_labels = [labels for labels, _ in SPLITS.values()]
    world = make_world(n_base_labels=n_labels[0] + n_labels[1], n_novel_labels=n_labels[2], dim=size.dim,
                       emb_dim=EMBEDDING_DIM, seed=1234)
    first = 0
    for number, (split, (labels, count)) in enumerate(SPLITS.items()):
        columns = np.arange(first, first + labels)
        first += labels
        rng = np.random.default_rng([0, number])
        features, targets = _images(world, columns, count, None, rng)
        assert (targets.sum(axis=0) > 0).all(), f"{split}: a label without images"
        local = np.lib.format.open_memmap(out / f"{split}_local.npy", mode="w+", dtype=np.float32,
                                          shape=(count, size.positions, size.dim))
        for start in range(0, count, GRID_CHUNK):
            rows = slice(start, start + GRID_CHUNK)
            local[rows], _ = make_local_grid(world, columns, features[rows], targets[rows], size.positions,
                                             np.random.default_rng([0, number, start]))
        np.testing.assert_allclose(local[:GRID_CHUNK].mean(axis=1), features[:GRID_CHUNK], atol=1e-3)
        local.flush()
        del local
        np.save(out / f"{split}_features.npy", features.astype(np.float32))
        np.save(out / f"{split}_targets.npy", targets.astype(np.float32))
        np.save(out / f"{split}_embeddings.npy", world.embeddings[columns])
        names = [f"{split}_{i}" for i in range(labels)]
        (out / f"{split}_labels.json").write_text(json.dumps(names))


def load_split(data: Path, split: str, with_local: bool):
    from mlfsic.methods.api import SplitData

    return SplitData(
        split=split,
        features=np.load(data / f"{split}_features.npy"),
        local_features=np.load(data / f"{split}_local.npy") if with_local else None,  # read into the heap
        targets=np.load(data / f"{split}_targets.npy"),
        label_names=tuple(json.loads((data / f"{split}_labels.json").read_text())),
        label_embeddings=np.load(data / f"{split}_embeddings.npy"),
        seed=0,
    )


def episodes(pool, k_shot: int, indices: range) -> list:
    """Episodes ``indices`` of the set (pool, protocol release, ``k_shot``, ``N_QUERY``, seed 0), built as
    ``harness.sweep.evaluate.episode_of`` builds them."""
    from mlfsic.harness.protocol.data import LabelledPool
    from mlfsic.harness.protocol.episodes import SamplerParams, episode_seed, make_episode
    from mlfsic.methods.api import Episode

    labelled = LabelledPool(dataset="synthetic", split="pool", label_names=pool.label_names,
                            image_ids=np.arange(len(pool.targets), dtype=np.int64), targets=pool.targets > 0.5,
                            annotation_sha256="")
    params = SamplerParams(protocol="release", k_shot=k_shot, n_query=N_QUERY)
    built = []
    for index in indices:
        drawn = make_episode(labelled, params, 0, index)
        support = np.asarray(drawn["support"], dtype=np.int64)
        query = np.asarray(drawn["query"], dtype=np.int64)
        local = pool.local_features
        built.append(Episode(
            index=index, seed=episode_seed(0, index), k_shot=k_shot, label_names=pool.label_names,
            label_embeddings=pool.label_embeddings, support_features=pool.features[support],
            support_local_features=None if local is None else local[support],
            support_targets=pool.targets[support], query_features=pool.features[query],
            query_local_features=None if local is None else local[query],
        ))
    return built


# --------------------------------------------------------------------------------------- one method
def _status_bytes(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {key} in /proc/self/status")


def _checked(name: str, scores: list, batch: list) -> None:
    assert len(scores) == len(batch), f"{name}: {len(scores)} score arrays for {len(batch)} episodes"
    for episode, score in zip(batch, scores):
        score = np.asarray(score)
        assert score.shape == (episode.n_query, episode.n_labels), f"{name}: scores {score.shape}"
        assert np.isfinite(score).all(), f"{name}: non-finite scores in episode {episode.index}"


def _predict(method, pool, k_shot: int) -> dict:
    probe = episodes(pool, k_shot, range(PROBE_EPISODES))
    started = time.perf_counter()
    scores = method.predict_batch(probe)
    probe_s = (time.perf_counter() - started) / PROBE_EPISODES
    _checked(method.name, scores, probe)
    del probe, scores
    n = int(min(MAX_EPISODES, max(MIN_EPISODES, PREDICT_BUDGET_S // max(probe_s, 1e-9))))
    chunk = episodes(pool, k_shot, range(n))
    started, started_cpu = time.perf_counter(), time.process_time()
    scores = method.predict_batch(chunk)
    wall, cpu = time.perf_counter() - started, time.process_time() - started_cpu
    _checked(method.name, scores, chunk)
    return {"episodes": n, "wall_s": wall, "cpu_s": cpu, "episodes_per_s": n / wall, "probe_s_per_episode": probe_s,
            "support_images": float(np.mean([len(e.support_features) for e in chunk]))}


def measure(name: str, data: Path) -> dict:
    """Fit and predict ``name`` on the arrays under ``data`` in this process (one torch thread)."""
    import torch

    from mlfsic.harness.config import method_yaml
    from mlfsic.harness.sweep.spec import check_hyperparameters
    from mlfsic.methods.registry import create_method, get_method_class

    torch.set_num_threads(1)
    cls = get_method_class(name)
    base = load_split(data, "base", cls.needs_local_features)
    val = load_split(data, "val", cls.needs_local_features)
    pool = load_split(data, "pool", cls.needs_local_features)
    data_bytes = _status_bytes("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS: the peak from here on
    config = method_yaml(name)
    check_hyperparameters(name, config, f"configs/methods/{name}.yaml:")
    method = create_method(name, config, seed=0)
    started, started_cpu = time.perf_counter(), time.process_time()
    method.fit(base, val)
    fit_s, fit_cpu = time.perf_counter() - started, time.process_time() - started_cpu
    settings = [1, 5] if cls.few_shot else [0]
    predict = {f"{k}shot": _predict(method, pool, k) for k in settings}
    return {"method": name, "config": config, "local": cls.needs_local_features, "fit_s": fit_s, "fit_cpu_s": fit_cpu,
            "predict": predict, "data_mb": data_bytes / 2**20, "peak_rss_mb": _status_bytes("VmHWM") / 2**20,
            "threads": torch.get_num_threads()}


# ------------------------------------------------------------------------------------------- report
def table(results: list[dict]) -> list[str]:
    """The printed table of ``results`` (one dict per method and size) and, per method, 1280-d / 128-d ratios."""
    def ratio(large: float, small: float, floor: float = 1e-3) -> str:
        return f"{large / small:.1f}x" if small >= floor else "-"  # "-": too small to time (e.g. random's fit)

    def rate(row: dict, setting: str) -> str:
        figure = row["predict"].get(setting)
        if figure is None:
            return "-"
        per_s = figure["episodes_per_s"]
        return f"{per_s:.1f} ({figure['episodes']})" if per_s >= 10 else f"{per_s:.2f} ({figure['episodes']})"

    lines = ["| method | size | fit s (CPU s) | predict ep/s 0-shot (n) | 1-shot (n) | 5-shot (n) | peak RSS MB "
             "(data MB) |", "|---|---|---|---|---|---|---|"]
    for row in results:
        lines.append(f"| {row['method']} | {row['size']} | {row['fit_s']:.1f} ({row['fit_cpu_s']:.1f}) | "
                     f"{rate(row, '0shot')} | {rate(row, '1shot')} | {rate(row, '5shot')} | "
                     f"{row['peak_rss_mb']:.0f} ({row['data_mb']:.0f}) |")
    by_method: dict[str, dict[str, dict]] = {}
    for row in results:
        by_method.setdefault(row["method"], {})[row["size"]] = row
    small, large = SIZES[0].name, SIZES[1].name
    lines += ["", f"| method | fit CPU s {large} / {small} | predict CPU s/episode (1-shot, 5-shot; 0-shot) | peak RSS |",
              "|---|---|---|---|"]
    for name, rows in by_method.items():
        if small not in rows or large not in rows:
            continue
        a, b = rows[small], rows[large]
        per_setting = [ratio(b["predict"][s]["cpu_s"] / b["predict"][s]["episodes"],
                             a["predict"][s]["cpu_s"] / a["predict"][s]["episodes"], 1e-6) for s in a["predict"]]
        lines.append(f"| {name} | {ratio(b['fit_cpu_s'], a['fit_cpu_s'])} | {', '.join(per_setting)} | "
                     f"{ratio(b['peak_rss_mb'], a['peak_rss_mb'])} |")
    return lines


def _run(arguments: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(Path(__file__).resolve()), *arguments], capture_output=True,
                          text=True, timeout=timeout)


def test_bench_feature_size(tmp_path):
    names = benchmarked_methods()
    out = os.environ.get("MLFSIC_FEATURE_SIZE_OUT")
    results: list[dict] = []
    failures: list[str] = []
    for size in SIZES:
        data = tmp_path / size.name
        data.mkdir()
        started = time.perf_counter()
        generated = _run(["generate", str(size.dim), str(size.positions), str(data)], 3600)
        assert generated.returncode == 0, generated.stderr[-3000:]
        print(f"\nfeature size {size.name}: data generated in {time.perf_counter() - started:.0f} s", flush=True)
        for name in names:
            started = time.perf_counter()
            done = _run(["measure", name, str(data)], METHOD_TIMEOUT_S)
            if done.returncode != 0:
                failures.append(f"{name} at {size.name}: exit {done.returncode}: {done.stderr[-2000:]}")
                print(f"feature size {size.name}: {name} FAILED", flush=True)
                continue
            row = {**json.loads(done.stdout.strip().splitlines()[-1]), "size": size.name, "dim": size.dim,
                   "positions": size.positions, "process_s": time.perf_counter() - started}
            results.append(row)
            print(f"feature size {size.name}: {name} fit {row['fit_s']:.1f} s, "
                  + ", ".join(f"{s} {p['episodes_per_s']:.1f} ep/s ({p['episodes']})" for s, p in row["predict"].items())
                  + f", peak RSS {row['peak_rss_mb']:.0f} MB ({row['process_s']:.0f} s)", flush=True)
            if out:  # kept as each method finishes
                Path(out).write_text(json.dumps({"results": results, "failures": failures}, indent=1) + "\n")
        for path in data.iterdir():
            path.unlink()
    print("\n" + "\n".join(table(results)))
    if out:
        Path(out).write_text(json.dumps({"results": results, "failures": failures}, indent=1) + "\n")
    assert not failures, "\n".join(failures)
    for row in results:
        assert math.isfinite(row["fit_s"]) and row["peak_rss_mb"] > 0
        assert all(p["episodes"] >= MIN_EPISODES for p in row["predict"].values())


if __name__ == "__main__":  # the subprocesses of the test
    if sys.argv[1] == "generate":
        generate(FeatureSize("custom", int(sys.argv[2]), int(sys.argv[3])), Path(sys.argv[4]))
    elif sys.argv[1] == "measure":
        print(json.dumps(measure(sys.argv[2], Path(sys.argv[3]))))
    else:
        raise SystemExit(f"unknown command {sys.argv[1]!r}: generate D L DIR | measure METHOD DIR")
