"""What a fitted LCM-family method keeps and attends to in one episode: the prepared context and the figure.

``prepare`` resolves the run config as ``mlfsic run`` would, prepares the benchmark (dataset, backbone,
features: ``harness.sweep.prepare.prepare_benchmark``) and fits or loads the method through
``harness.sweep.evaluate.fit_method`` with the val split for model selection (``fit_val``), so the model
explained is the checkpoint a default run (or a ``fit_val`` ablation) makes and shares. ``draw_episode``
draws episode i of the sweep's episode set for (split, K, seed) with the harness's pure sampler.
``write_figure`` draws one episode's support images, the positions LCM kept and each label's attention
(``explain_figure.render_figure``) into a PNG. The measures over many episodes: ``measures.py``. The
command and its options: ``harness/cli/explain.py`` (``mlfsic explain``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from mlfsic.harness.cli.options import ExplainOptions
from mlfsic.harness.errors import MlfsicError
from mlfsic.harness.protocol.data import LabelledPool
from mlfsic.harness.sweep.benchmark import Benchmark
from mlfsic.harness.sweep.spec import Sweep
from mlfsic.methods.api import Method
from mlfsic.studies.lcm_tomm2024.explain_figure import Boxes, FigureRow, load_boxes, render_figure


# ------------------------------------------------------------------------------------------- context
@dataclass
class Explained:
    """A prepared benchmark with a fitted LCM-family method, ready to draw and explain episodes."""

    sweep: Sweep
    benchmark: Benchmark
    method: Method  # fitted, of a class with ``explain`` (the LCM family: methods.lcm.LCM)
    pool: LabelledPool  # of the explained split


def _sweep_overrides(options: ExplainOptions) -> list[str]:
    overrides = [f"dataset={options.dataset}", f"method=[{options.method}]", f"setting=[{options.setting}]",
                 f"seeds=[{options.seed}]", f"eval_split={options.split}"]
    if options.results_dir is not None:
        overrides.append(f"results_dir={options.results_dir}")
    return overrides + list(options.overrides)


def prepare(options: ExplainOptions) -> Explained:
    """Resolve the config as ``mlfsic run`` would, prepare the benchmark and fit (or load) the method."""
    import torch

    from mlfsic.harness.sweep.evaluate import fit_method, load_fitted, method_spec
    from mlfsic.harness.sweep.prepare import prepare_benchmark
    from mlfsic.harness.sweep.load import load_sweep
    from mlfsic.methods.registry import get_method_class

    sweep = load_sweep(_sweep_overrides(options))
    entry = sweep.methods[options.method]
    if not callable(getattr(get_method_class(entry.base), "explain", None)):
        raise MlfsicError(f"explain option method={options.method!r}: {entry.base!r} has no explain(); "
                          f"use an LCM-family method (lcm, wvga or a variant of them)")
    if options.split == "test":
        print("mlfsic explain: note: split=test shows novel-split episodes; never choose hyperparameters from them",
              file=sys.stderr)
    # the runner's steps and locks: an explain beside a sweep on the same results dir waits for its work
    benchmark = prepare_benchmark(sweep, progress=False)
    spec = method_spec(entry.name, entry.config, base=entry.base)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the runner's fit tasks, so the checkpoint is the one a run makes
    try:
        # fit_val: the val split serves model selection as in a default run, so this is the shipped model
        fit = fit_method(benchmark, spec, options.seed, sweep.cache_root, sweep.eval_split, fit_val=True)
    finally:
        torch.set_num_threads(threads)
    method = load_fitted(fit.checkpoint, spec)
    _apply_selection_rule(method, options)
    return Explained(sweep=sweep, benchmark=benchmark, method=method, pool=benchmark.pool(options.split))


def _apply_selection_rule(method: Any, options: ExplainOptions) -> None:
    if options.threshold_mode is not None:
        method.threshold_mode = options.threshold_mode
    if options.theta is not None:
        method.theta = options.theta


def draw_episode(
    explained: Explained, k_shot: int, seed: int, index: int, split: str | None = None
) -> tuple[Any, np.ndarray]:
    """Episode ``index`` of the sweep's episode set for (split, K, seed), as the method sees it, and its
    support image ids. Drawn by the harness's sampler (``harness.protocol.episodes.make_episode``), which is pure,
    so it is the episode a sweep evaluating that split would draw. ``split``: the label split to draw
    from (``base``, ``val`` or ``test``); None: the explained split (``explained.pool``)."""
    from mlfsic.harness.protocol.episodes import SamplerParams, make_episode
    from mlfsic.harness.sweep.evaluate import episode_of

    sweep, benchmark = explained.sweep, explained.benchmark
    pool = explained.pool if split is None else benchmark.pool(split)
    params = SamplerParams(protocol=sweep.protocol, k_shot=k_shot, n_query=sweep.n_query, n_way=sweep.n_way)
    drawn = make_episode(pool, params, seed, index)
    episode, _ = episode_of(benchmark, pool, drawn, seed, k_shot, index, with_local=True)
    support_ids = np.asarray(drawn["support"], dtype=np.int64)
    return episode, support_ids


# --------------------------------------------------------------------------------------------- boxes


def dataset_boxes(dataset_cfg: Mapping[str, Any]) -> Boxes:
    """Boxes of a COCO-format dataset config (``root`` / ``annotations``)."""
    if "annotations" not in dataset_cfg or not str(dataset_cfg["annotations"]).endswith(".json"):
        raise MlfsicError(f"dataset {dataset_cfg.get('name')!r} has no COCO annotation file with boxes")
    return load_boxes(Path(str(dataset_cfg["root"])) / str(dataset_cfg["annotations"]))


# -------------------------------------------------------------------------------------------- figure


def figure_rows(explained: Explained, episode: Any, support_ids: np.ndarray, n_images: int, max_labels: int) -> list[FigureRow]:
    """The first ``n_images`` support images of the episode with what ``method.explain`` says of them."""
    info = explained.method.explain(episode)
    file_of = explained.benchmark.dataset().file_name_of()
    image_root = Path(explained.benchmark.dataset().image_root)
    rows = []
    for image_row in range(min(n_images, len(support_ids))):
        pairs = np.flatnonzero(info["pair_image"] == image_row)[:max_labels]
        image_id = int(support_ids[image_row])
        rows.append(FigureRow(
            image_id=image_id, path=image_root / file_of[image_id], keep=info["keep"][image_row],
            labels=tuple(episode.label_names[int(info["pair_label"][p])] for p in pairs),
            attention=tuple(info["attention"][p] for p in pairs),
            weights=tuple(float(info["image_weights"][p]) for p in pairs),
        ))
    return rows


def default_out(explained: Explained, options: ExplainOptions) -> Path:
    name = (f"{options.method}-{options.dataset}-{options.split}-{options.setting}-seed{options.seed}"
            f"-ep{options.episode}.png")
    return explained.sweep.results_dir / "explain" / name


def _title(explained: Explained, options: ExplainOptions, n_support: int) -> str:
    method = explained.method
    rule = (f"selection {method.selection}, {method.threshold_mode} theta {method.theta:g}"
            if method.selection != "off" else "selection off (all positions kept)")
    return (f"{options.method} | {options.dataset} {options.split} {options.setting} seed {options.seed} episode "
            f"{options.episode} ({n_support} support images) | {rule}\n"
            f"kept: dropped cells darkened (the selection is per image); heat: head-averaged attention of the "
            f"label's word vector over the grid, scaled to its peak\n"
            f"peak: its largest weight / the uniform weight; cyan: the label's boxes; w: the image's weight in the "
            f"label's prototype")


def write_figure(explained: Explained, options: ExplainOptions) -> Path:
    """Draw the episode, explain it and write the PNG atomically; returns its path."""
    from mlfsic.harness.io import write_with_atomic

    episode, support_ids = draw_episode(explained, options.k_shot, options.seed, options.episode)
    rows = figure_rows(explained, episode, support_ids, options.n_images, options.max_labels)
    try:
        boxes: Boxes | None = dataset_boxes(explained.sweep.dataset.as_dict())
    except MlfsicError:
        boxes = None  # a dataset without boxes: the figure without them
    figure = render_figure(rows, _title(explained, options, len(support_ids)), options.max_labels, boxes)
    path = Path(options.out) if options.out else default_out(explained, options)
    save: Callable[[Path], None] = lambda tmp: figure.save(tmp, format="PNG")
    write_with_atomic(path, save)
    return path
