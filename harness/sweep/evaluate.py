"""Fit a method on the base split and evaluate it on an episode set -- the runner without Ray.

These functions are the units of work of a sweep (docs/architecture.md §9): ``fit_method`` per (method, dataset,
seed) with a content-addressed checkpoint, ``evaluate_episodes`` per (method, setting, chunk of
episodes). The Ray runner (``harness.sweep.runner``) submits them as tasks; ``evaluate_cell`` chains them in
one process for notebooks, tests and debugging.

A method only ever receives ``SplitData`` (the base split, and the val split for model selection) and
``Episode`` objects, which carry no query targets; targets are looked up here, after ``predict`` returned.
The rows written for each chunk follow the run directory's schema in ``harness.sweep.store``.
A method that declares ``local_rows`` gets the local grids of base and val as ``StoredLocalRows``, read from the
memory-mapped feature store when indexed, so its fit's heap does not grow with the base split (issue 37).

Device: ``fit_method`` and ``evaluate_episodes`` take the torch device of their task (``"cuda"`` when Ray gave
it a GPU, ``driver.ray_setup.task_device``) and hand it to the method (``Method.use_device``) before ``fit`` and
before ``predict_batch``; a method computes there only if it declares ``uses_device`` (``compute_device``).
Checkpoints hold CPU tensors whatever device the fit ran on, and the device is no part of their key.
"""

from __future__ import annotations

import functools
import importlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mlfsic.harness.sweep import checkpoint
from mlfsic.harness.sweep.benchmark import Benchmark
from mlfsic.harness.backbones.embeddings import embedding_id
from mlfsic.harness.protocol.episodes import check_pool_matches, episode_seed, episode_targets, load_episode_set
from mlfsic.harness.errors import MlfsicError
from mlfsic.harness.code_identity import METHOD_CODE_RULE, method_code
from mlfsic.harness.io import file_lock, sha256_json
from mlfsic.harness.protocol.metrics import episode_map, f1_at_k, per_label_ap
from mlfsic.harness.sweep.store import LABEL_AP_COLUMNS, RECORD_COLUMNS, ChunkResult
from mlfsic.harness.protocol.episodes import parse_setting
from mlfsic.methods.api import LOCAL_ROWS_BLOCK_BYTES, Episode, SplitData, constructor_defaults
from mlfsic.methods.registry import create_method, get_method_class


# What run.json says of the arithmetic of fits and chunks (``devices``): float32 on every device, no autocast /
# mixed precision; torch's default leaves TF32 matmuls off on CUDA.
PRECISION = {"dtype": "float32", "mixed_precision": False}


def compute_device(method: Any, device: str) -> str:
    """The device a method (class or instance) computes on when its task was given ``device``: ``device``
    when it declares ``uses_device``, else ``"cpu"``."""
    return str(device) if getattr(method, "uses_device", False) else "cpu"


class MethodFailure(Exception):
    """The method under test raised or returned unusable scores; its cell is marked failed."""


@dataclass(frozen=True)
class MethodSpec:
    """A method with its resolved hyperparameters; ``config_hash`` covers the method, config and code.

    ``name`` is what records carry: a registered method, or a variant of the registered method ``base``
    (``harness.sweep``). The hash covers the instantiated method, not the variant's name, so a variant
    equal to its base shares its checkpoint.
    """

    name: str
    module: str  # imported by workers before the method is created (registers one-file methods)
    config: dict[str, Any]
    config_hash: str
    base: str = ""  # the registered method a variant instantiates; "" = ``name`` itself
    fit_hash: str = ""  # keys the checkpoint: ``config_hash`` without the method's ``predict_params``

    @property
    def method(self) -> str:
        """The registered method that is instantiated."""
        return self.base or self.name


def method_spec(name: str, config: dict[str, Any], base: str | None = None) -> MethodSpec:
    """The method with every hyperparameter spelled out: constructor defaults updated by ``config``.

    The code part of both hashes is ``method_code``: the stripped source of the method's import closure (its
    class's module, the mlfsic modules it runs, its ``code_modules``; docs/architecture.md §3.1), so editing a
    helper it imports refits it and editing only a docstring or a comment does not. The package version is
    not part of it: it never changes with the code.
    """
    method = base or name
    cls = get_method_class(method)
    config = {**constructor_defaults(cls), **config}
    code = {"rule": METHOD_CODE_RULE, "modules": method_code(cls)}
    config_hash = sha256_json({"name": method, "config": config, "code": code})
    fit_config = {key: value for key, value in config.items() if key not in cls.predict_params}
    fit_hash = config_hash if len(fit_config) == len(config) else sha256_json(
        {"name": method, "config": fit_config, "code": code})
    return MethodSpec(name=name, module=cls.__module__, config=dict(config), config_hash=config_hash,
                      base="" if method == name else method, fit_hash=fit_hash)


@dataclass(frozen=True)
class FitResult:
    checkpoint: str
    fit_s: float
    cached: bool
    report: dict[str, Any]  # the method's ``fit_report`` (e.g. the kept epoch and its val mAP)
    note: str = ""  # one line when a cached checkpoint was refused and refitted (the driver prints it)
    device: str = "cpu"  # the device the fit computed on (of a cached checkpoint: the one its fit ran on)


def fit_splits(eval_split: str, fit_val: bool = False) -> tuple[str, ...]:
    """The splits ``Method.fit`` receives: base, plus val for model selection unless val is evaluated;
    ``fit_val`` (ablations on val, ``configs/sweep/lcm_ablation.yaml``) gives fit the val split even then,
    so the fitted models are exactly those of a default run."""
    return ("base",) if eval_split == "val" and not fit_val else ("base", "val")


def checkpoint_path(benchmark: Benchmark, spec: MethodSpec, seed: int, cache_root: Path, eval_split: str,
                    fit_val: bool = False) -> Path:
    key = sha256_json({
        "method": spec.fit_hash or spec.config_hash,
        "backbone": benchmark.backbone_id,
        "annotations": benchmark.annotation_sha256,
        "fit_labels": {split: list(benchmark.split_labels[split]) for split in fit_splits(eval_split, fit_val)},
        "embeddings": embedding_id(benchmark.embedding_encoder, benchmark.embedding_path),
        "seed": seed,
        "checkpoint_format": checkpoint.FORMAT_VERSION,  # a pickle of an older harness is never opened
    })
    return cache_root / "checkpoints" / f"{spec.method}-{key[:20]}.pt"


class StoredLocalRows:
    """The local grids (n, L, C) of images ``image_ids`` of a benchmark, left in its memory-mapped feature store
    and read when indexed (``methods.api.LocalRows``): ``rows[index]`` reads those images' rows through
    ``Benchmark.features`` and returns them as float32, the same values (float16 -> float32, exact) and the
    same order as indexing the in-memory float32 copy ``split_data`` made before. It holds only the ids. Many
    rows (``np.asarray``, a slice of the whole) are read ``block_bytes`` of float32 at a time, so reading the whole
    grid never holds more than a block besides the result."""

    def __init__(self, benchmark: Benchmark, image_ids: np.ndarray, block_bytes: int = LOCAL_ROWS_BLOCK_BYTES) -> None:
        self.benchmark = benchmark
        self.image_ids = np.asarray(image_ids, dtype=np.int64)
        self.block_bytes = block_bytes
        _, first = benchmark.features(self.image_ids[:1], True)  # the grid's (L, C), from one row
        if first is None:
            raise MlfsicError(f"feature store of {benchmark.dataset_name!r} has no local features (a method with "
                              "local_rows needs them)")
        self.shape: tuple[int, ...] = (len(self.image_ids), *first.shape[1:])
        self.dtype = np.dtype(np.float32)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> np.ndarray:
        rows, rest = (index[0], index[1:]) if isinstance(index, tuple) else (index, ())
        if isinstance(rows, torch.Tensor):
            rows = rows.cpu().numpy()
        ids = self.image_ids[rows]
        if ids.ndim == 0:  # one image: (L, C)
            return self._read(ids.reshape(1))[0][rest]
        return self._read(ids)[(slice(None), *rest)]

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        whole = self._read(self.image_ids)
        return whole if dtype is None else whole.astype(dtype, copy=False)

    def _read(self, ids: np.ndarray) -> np.ndarray:
        """float32 (len(ids), L, C), read ``block_bytes`` at a time."""
        out = np.empty((len(ids), *self.shape[1:]), dtype=np.float32)
        block = max(1, self.block_bytes // max(1, out[:1].nbytes))
        for start in range(0, len(ids), block):
            _, local = self.benchmark.features(ids[start:start + block], True)
            out[start:start + block] = local  # float16 -> float32, exact
        return out


def split_data(benchmark: Benchmark, split: str, seed: int, with_local: bool, local_rows: bool = False) -> SplitData:
    """The images of one label split as ``Method.fit`` receives them. With ``with_local`` and ``local_rows``
    (``Method.local_rows``) the local grids stay in the feature store (``StoredLocalRows``); with ``with_local``
    alone they are read into one float32 array."""
    pool = benchmark.pool(split)
    features, local = benchmark.features(pool.image_ids, with_local and not local_rows)
    local_features: np.ndarray | StoredLocalRows | None = None
    if with_local:
        local_features = StoredLocalRows(benchmark, pool.image_ids) if local_rows else np.asarray(local, np.float32)
    return SplitData(
        split=split,
        features=np.asarray(features, dtype=np.float32),
        local_features=local_features,
        targets=pool.targets.astype(np.float32),
        label_names=pool.label_names,
        label_embeddings=benchmark.label_embeddings(pool.label_names),
        seed=seed,
    )


def fit_method(benchmark: Benchmark, spec: MethodSpec, seed: int, cache_root: Path, eval_split: str = "test",
               fit_val: bool = False, device: str = "cpu") -> FitResult:
    """Train ``spec`` on the base split (val for model selection), or reuse its checkpoint.

    The evaluated split never reaches ``fit``: with ``eval_split="val"`` the method gets ``val=None``.
    Method errors raise MethodFailure. One writer per checkpoint (two sweeps sharing a results dir, a variant
    equal to its base, ``mlfsic explain`` beside a run): the others wait on its lock file and reuse it, so no
    chunk is ever evaluated with a checkpoint replaced under it. ``device``: the task's torch device, given to
    the method before ``fit`` (``Method.use_device``); it is not part of the checkpoint's key.
    """
    path = checkpoint_path(benchmark, spec, seed, cache_root, eval_split, fit_val)
    with file_lock(path.with_suffix(".lock")):
        return _fit_or_reuse(path, benchmark, spec, seed, fit_splits(eval_split, fit_val), device)


def _fit_or_reuse(path: Path, benchmark: Benchmark, spec: MethodSpec, seed: int, splits: tuple[str, ...],
                  device: str = "cpu") -> FitResult:
    importlib.import_module(spec.module)  # registers a one-file method: its module's classes may be decoded
    note = ""
    if path.is_file() or checkpoint.record_path(path).is_file():
        try:  # checked and decoded as data (never executed); a bad file is refitted: the fit is recomputable
            checkpoint.load_checkpoint(path, (spec.module,))
            info = checkpoint.read_record(path)
            return FitResult(str(path), float(info["fit_s"]), cached=True, report=info.get("fit_report", {}),
                             device=str(info.get("device", "cpu")))  # checkpoints before the device: CPU fits
        except (MlfsicError, OSError, ValueError, KeyError, TypeError) as error:
            note = f"mlfsic: {error}; refitting {spec.name} seed {seed}"
            print(note, file=sys.stderr, flush=True)
            path.unlink(missing_ok=True)
            checkpoint.record_path(path).unlink(missing_ok=True)
    method = create_method(spec.method, spec.config, seed)
    if method.needs_clip:
        method.use_clip(benchmark.clip_model())
    method.use_device(device)
    fit_device = compute_device(method, device)
    with_local, local_rows = method.needs_local_features, method.local_rows
    base = split_data(benchmark, "base", seed, with_local, local_rows)
    val = split_data(benchmark, "val", seed, with_local, local_rows) if "val" in splits else None
    start = time.perf_counter()
    try:
        method.fit(base, val)
    except Exception as error:
        raise MethodFailure(f"{spec.name}.fit raised {type(error).__name__}: {error}") from error
    fit_s = time.perf_counter() - start
    report = dict(getattr(method, "fit_report", {}) or {})
    checkpoint.save_checkpoint(path, method, {  # the record beside it is written last: the fit is complete
        "fit_s": fit_s, "name": spec.method, "seed": seed, "fit_report": report, "config": spec.config,
        "config_hash": spec.config_hash, "fit_hash": spec.fit_hash or spec.config_hash, "device": fit_device})
    return FitResult(str(path), fit_s, cached=False, report=report, note=note, device=fit_device)


def load_fitted(path: str, spec: MethodSpec | None = None) -> Any:
    """A fresh copy per chunk: a method that mutates itself in predict cannot leak state across chunks.
    With ``spec``, the method's ``predict_params`` are set to the spec's values (a variant that changes
    only those shares its base's checkpoint). The file is checked against its record and read as data
    (``harness.sweep.checkpoint``); a bad one is a one-line MlfsicError (re-running the sweep refits it)."""
    if spec is not None:
        importlib.import_module(spec.module)
    try:
        method, _ = checkpoint.load_checkpoint(Path(path), (spec.module,) if spec is not None else ())
    except checkpoint.CheckpointError as error:
        raise MlfsicError(f"{error}; re-run the same `mlfsic run` command to refit it") from None
    if spec is not None and type(method).predict_params:
        checked = create_method(spec.method, spec.config, method.seed)  # the constructor checks the values
        for key in type(method).predict_params:
            setattr(method, key, getattr(checked, key))
    return method


@functools.lru_cache(maxsize=32)
def cached_episode_set(path: str) -> dict[str, Any]:
    """An episode-set file, checked against its content hash; a damaged one is a one-line error saying how to
    rebuild it (the sweep's driver regenerates a damaged file before any task reads it)."""
    try:
        return load_episode_set(Path(path))
    except MlfsicError as error:
        raise MlfsicError(f"{error}; re-run the same `mlfsic run` command to regenerate it") from None


def build_episode(
    benchmark: Benchmark, episode_set: dict[str, Any], index: int, with_local: bool
) -> tuple[Episode, np.ndarray]:
    """The ``Episode`` a method sees, and separately the query targets (n_query, n_labels)."""
    pool = benchmark.pool(episode_set["params"]["split"])
    check_pool_matches(episode_set, pool)
    params = episode_set["params"]
    return episode_of(benchmark, pool, episode_set["episodes"][index], int(params["seed"]), int(params["k_shot"]),
                      index, with_local)


def episode_of(
    benchmark: Benchmark, pool: Any, spec: dict[str, Any], seed: int, k_shot: int, index: int, with_local: bool
) -> tuple[Episode, np.ndarray]:
    """The ``Episode`` of one drawn episode ``spec`` ({labels, support, query}) of ``pool``, and its query targets."""
    support_targets, query_targets = episode_targets(pool, spec)
    support, support_local = benchmark.features(np.asarray(spec["support"], dtype=np.int64), with_local)
    query, query_local = benchmark.features(np.asarray(spec["query"], dtype=np.int64), with_local)
    labels = tuple(spec["labels"])
    episode = Episode(
        index=index,
        seed=episode_seed(seed, index),
        k_shot=k_shot,
        label_names=labels,
        label_embeddings=benchmark.label_embeddings(labels),
        support_features=np.asarray(support, dtype=np.float32),
        support_local_features=None if support_local is None else np.asarray(support_local, dtype=np.float32),
        support_targets=np.asarray(support_targets, dtype=np.float32),
        query_features=np.asarray(query, dtype=np.float32),
        query_local_features=None if query_local is None else np.asarray(query_local, dtype=np.float32),
    )
    return episode, np.asarray(query_targets, dtype=np.float32)


def evaluate_episodes(
    benchmark: Benchmark,
    spec: MethodSpec,
    seed: int,
    setting: str,
    episode_set_path: str,
    indices: list[int],
    fit: FitResult,
    run_id: str,
    save_scores: bool = False,
    device: str = "cpu",
) -> ChunkResult:
    """Score episodes ``indices`` of an episode set; one record row per episode. ``device``: the task's torch
    device, given to the loaded method before ``predict_batch`` (``Method.use_device``)."""
    started, started_cpu = time.perf_counter(), time.process_time()
    method = load_fitted(fit.checkpoint, spec)
    if method.needs_clip:
        method.use_clip(benchmark.clip_model())
    method.use_device(device)
    episode_set = cached_episode_set(str(episode_set_path))
    k_shot = parse_setting(setting)
    protocol = str(episode_set["protocol"])
    embeddings = embedding_id(benchmark.embedding_encoder, benchmark.embedding_path)
    records: list[dict[str, Any]] = []
    label_rows: list[dict[str, Any]] = []
    saved_scores: list[np.ndarray] = []
    saved_targets: list[np.ndarray] = []
    saved_episode: list[np.ndarray] = []
    built = [build_episode(benchmark, episode_set, index, method.needs_local_features) for index in indices]
    start = time.perf_counter()
    try:
        batch_scores = method.predict_batch([episode for episode, _ in built])
    except Exception as error:
        raise MethodFailure(f"{spec.name}.predict raised {type(error).__name__} on episodes "
                            f"{indices[0]}-{indices[-1]}: {error}") from error
    predict_s = (time.perf_counter() - start) / max(1, len(indices))  # the chunk's mean per episode
    if len(batch_scores) != len(built):
        raise MethodFailure(f"{spec.name}.predict_batch returned {len(batch_scores)} score arrays for {len(built)} episodes")
    for index, (episode, query_targets), scores in zip(indices, built, batch_scores):
        scores = _checked_scores(spec.name, scores, episode, index)
        label_ap = per_label_ap(scores, query_targets)
        common = {"run_id": run_id, "method": spec.name, "dataset": benchmark.dataset_name, "setting": setting,
                  "seed": seed, "episode_set_id": episode_set["episode_set_id"], "episode": index}
        records.append({
            **common, "method_config_hash": spec.config_hash, "k_shot": k_shot, "protocol": protocol,
            "backbone_id": benchmark.backbone_id, "embedding_id": embeddings,
            "map": episode_map(scores, query_targets), "f1_3": f1_at_k(scores, query_targets, 3),
            "f1_5": f1_at_k(scores, query_targets, 5), "n_labels": episode.n_labels, "n_query": episode.n_query,
            "fit_s": fit.fit_s, "predict_s": predict_s, "status": "ok",
        })
        label_rows.extend({**common, "label": label, "ap": float(ap)} for label, ap in zip(episode.label_names, label_ap))
        if save_scores:
            saved_scores.append(scores)  # float64, exactly what the metrics saw
            saved_targets.append(query_targets.astype(np.uint8))
            saved_episode.append(np.full(len(scores), index, dtype=np.int32))
    scores_out = None
    if save_scores:
        scores_out = {"scores": np.concatenate(saved_scores), "targets": np.concatenate(saved_targets),
                      "episode": np.concatenate(saved_episode)}
    return ChunkResult(
        records=pd.DataFrame(records, columns=list(RECORD_COLUMNS)),
        label_ap=pd.DataFrame(label_rows, columns=list(LABEL_AP_COLUMNS)),
        scores=scores_out,
        task_s=time.perf_counter() - started,
        task_cpu_s=time.process_time() - started_cpu,
        report=dict(getattr(method, "predict_report", {}) or {}),
        device=compute_device(method, device),
    )


def _checked_scores(name: str, scores: Any, episode: Episode, index: int) -> np.ndarray:
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().cpu().numpy()
    scores = np.asarray(scores, dtype=np.float64)
    expected = (episode.n_query, episode.n_labels)
    if scores.shape != expected:
        raise MethodFailure(f"{name}.predict returned shape {scores.shape} on episode {index}, expected {expected}")
    if not np.isfinite(scores).all():
        raise MethodFailure(f"{name}.predict returned non-finite scores on episode {index}")
    return scores


def evaluate_cell(
    benchmark: Benchmark,
    spec: MethodSpec,
    seed: int,
    setting: str,
    episode_set_path: str,
    cache_root: Path,
    run_id: str = "local",
    save_scores: bool = False,
    fit_val: bool = False,
    device: str = "cpu",
) -> ChunkResult:
    """Fit (or reuse the checkpoint) and evaluate every episode of a set, in this process, on ``device``."""
    if not get_method_class(spec.method).supports(setting):
        raise MlfsicError(f"method {spec.name!r} does not support setting {setting!r}")
    episode_set = cached_episode_set(str(episode_set_path))
    fit = fit_method(benchmark, spec, seed, cache_root, eval_split=str(episode_set["params"]["split"]), fit_val=fit_val,
                     device=device)
    n_episodes = len(episode_set["episodes"])
    return evaluate_episodes(benchmark, spec, seed, setting, episode_set_path, list(range(n_episodes)), fit,
                             run_id, save_scores, device)
