"""``mlfsic explain``: where LCM looks in its support images, as one PNG, and a box measurement.

LCM (Yan et al., "Modelling Multi-modal Cross-interaction for Multi-label Few-shot Image Classification
Based on Local Feature Selection", ACM TOMM 2024) keeps, per support image, the local positions whose
removal would change the cross-modal alignment loss (``methods/lcm.py``, docs/architecture.md §8), and
each label's word vector attends over the kept positions of every support image carrying the label.
This module shows both for one episode and measures whether the kept positions fall on the labelled
objects::

    mlfsic explain [method=lcm] [setting=1shot] [seed=0] [episode=0] [n_images=4] [split=val] [out=X.png]
    mlfsic explain measure=boxes [n_episodes=50] [split=val]
    mlfsic explain measure=attention [method=lcm] [n_episodes=50] [out=X.json]

Options (``key=value``; a key with a ``.`` or a leading ``+`` is passed to the run config as a Hydra
override, e.g. ``dataset.generate.n_base=400`` or ``+method_args.lcm.steps=20``):

* ``method``: an LCM-family method (``lcm``, ``wvga``, or a variant given with ``+variants.<name>...``);
  ``setting``: ``<K>shot`` with K >= 1; ``seed``: the method's seed and the episode set's seed;
  ``episode``: the episode index (episode i of seed s is episode i of the sweep's episode set for s).
* ``split``: ``val`` (default) or ``test``; ``test`` shows novel-split episodes and says so on stderr:
  choices (hyperparameters, ablations) must never be made on them.
* ``dataset``, ``results_dir``: as in ``mlfsic run``. The dataset, backbone and features are made or
  found as ``mlfsic run`` does (``harness.sweep.prepare.prepare_benchmark``), and the method is fitted through
  ``harness.sweep.evaluate.fit_method`` with the val split for model selection (``fit_val``), so it is the
  checkpoint a default run (or a ``fit_val`` ablation) makes and shares.
* ``theta``, ``threshold_mode``: applied to the fitted method before explaining (its training keeps the
  fitted config), to look at another selection rule of the same model.
* ``out`` (the figure; ``measure=attention``: its JSON, below): the PNG (default
  ``<results_dir>/explain/<method>-<dataset>-<split>-<setting>-seed<S>-ep<E>.png``); ``n_images``:
  support images shown (rows); ``max_labels``: label columns.
* ``measure=boxes``: ``kept_inside_box_fraction`` over ``n_episodes`` episodes instead of a figure.
* ``measure=attention``: ``attention_transfer`` over ``n_episodes`` episodes of the base split's labels
  (those the method was fitted on) and ``n_episodes`` of the val split's labels (never trained on; they
  served only the shipped fit's model selection), never the novel split: how label-specific the attention maps are and
  how much of their mass sits on the grid's border cells. A table on stdout and a JSON file (``out``, a
  ``.json`` path; default ``<results_dir>/explain/<method>-<dataset>-attention-<setting>-seed<S>
  -n<n_episodes>.json``). The episodes are the sweep's sampler's (``n_way``, ``n_query``); a base split
  too small for them can take ``++n_query=1`` (explaining reads only the support images).

The figure has one row per support image: the image, the positions LCM kept (dropped cells darkened;
the selection is per image, under the alignment loss of all the episode's labels), then per label the
image carries the head-averaged attention of the label's word vector over the grid (heat) with the
label's boxes (cyan) when the annotations have them.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from mlfsic.harness.cli.options import ExplainOptions, parse_key_values
from mlfsic.harness.errors import MlfsicError
from mlfsic.harness.protocol.data import LabelledPool
from mlfsic.harness.report.explain_figure import Boxes, FigureRow, cells_inside, grid_side, load_boxes, render_figure
from mlfsic.harness.sweep.benchmark import Benchmark
from mlfsic.harness.sweep.spec import Sweep
from mlfsic.methods.api import Method

# measure=attention: the labels the method was fitted on, then held-out labels (never the novel split)
ATTENTION_SPLITS = ("base", "val")


# ------------------------------------------------------------------------------------------- options
def _is_override(key: str) -> bool:
    """A key with a ``.`` or a leading ``+`` is a run-config override, not an option of ``ExplainOptions``."""
    return "." in key or key.startswith("+")


def parse_options(options: Mapping[str, str] | Sequence[str]) -> ExplainOptions:
    """``key=value`` strings (or their dict) -> ExplainOptions (declared in ``harness.cli.options``, so
    ``mlfsic explain --help`` lists them); a key with a ``.`` or a leading ``+`` goes to ``overrides``, the run
    config's Hydra overrides; an unknown key or bad value is a one-line MlfsicError."""
    parsed, overrides = parse_key_values(
        "explain", ExplainOptions, dict(options) if isinstance(options, Mapping) else options, passes=_is_override,
        extra=" (and run-config overrides: a key with a '.' or a leading '+', e.g. +method_args.lcm.steps=20)")
    parsed = replace(parsed, overrides=tuple(f"{key}={value}" for key, value in overrides.items()))
    _check_options(parsed)
    return parsed


def _check_options(options: ExplainOptions) -> None:
    """What the types and ``metadata`` of ``ExplainOptions`` do not say (``parse_key_values`` checked those)."""
    from mlfsic.methods.lcm import THRESHOLD_MODES

    if options.threshold_mode is not None and options.threshold_mode not in THRESHOLD_MODES:
        raise MlfsicError(f"explain option threshold_mode={options.threshold_mode!r}: expected one of "
                          f"{', '.join(THRESHOLD_MODES)}")
    if options.measure == "attention" and options.split != "val":
        raise MlfsicError(f"explain option split={options.split!r}: measure=attention draws episodes of the "
                          f"{' and '.join(ATTENTION_SPLITS)} splits' labels (never test); leave split unset")
    out_suffix = ".json" if options.measure == "attention" else ".png"
    if options.out and Path(options.out).suffix.lower() != out_suffix:  # before minutes of preparation
        raise MlfsicError(f"explain option out={options.out!r}: expected a {out_suffix} path")
    if options.k_shot < 1:
        raise MlfsicError(f"explain option setting={options.setting!r}: LCM explains K-shot episodes, K >= 1")


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


@dataclass(frozen=True)
class BoxFractions:
    """``kept_inside_box_fraction``'s result; fractions are means over (support image, label) pairs."""

    n_episodes: int
    n_pairs: int
    kept_inside: float  # share of the kept positions whose cell centre is inside one of the label's boxes
    chance: float  # share of all positions inside the label's boxes (what keeping at random would give)
    attention_inside: float  # attention mass of the label's word vector inside its boxes
    kept_per_image: float  # mean number of kept positions per support image
    positions: int  # L
    difference_ci: tuple[float, float]  # 95% interval of kept_inside - chance over episodes (normal approx.)
    pairs_without_cell: int  # pairs whose boxes contain no cell centre (counted with fraction 0)

    def text(self) -> str:
        low, high = self.difference_ci
        return (f"kept positions inside the label's boxes: {self.kept_inside:.3f} vs chance (box area share) "
                f"{self.chance:.3f}; difference 95% CI [{low:+.3f}, {high:+.3f}]; attention mass inside "
                f"{self.attention_inside:.3f}; kept {self.kept_per_image:.1f}/{self.positions} positions per "
                f"image; {self.n_pairs} (image, label) pairs over {self.n_episodes} episodes "
                f"({self.pairs_without_cell} with no cell centre in a box)")


def _episode_pairs(method: Any, episode: Any, support_ids: np.ndarray, boxes: Boxes) -> list[tuple[float, float, float, int]]:
    """(kept inside share, inside share, attention inside, kept count) per (support image, label) pair."""
    info = method.explain(episode)
    side = grid_side(info["keep"].shape[1])
    rows = []
    for pair, (image_row, label_column) in enumerate(zip(info["pair_image"], info["pair_label"])):
        image_id = int(support_ids[image_row])
        width, height = boxes.sizes[image_id]
        inside = cells_inside(boxes.of(image_id, episode.label_names[label_column]), width, height, side)
        kept = info["keep"][image_row]
        rows.append((float((kept & inside).sum() / max(1, kept.sum())), float(inside.mean()),
                     float(info["attention"][pair][inside].sum()), int(kept.sum())))
    return rows


def kept_inside_box_fraction(
    method: Any, episodes: Sequence[tuple[Any, np.ndarray]], boxes: Boxes
) -> BoxFractions:
    """Do LCM's kept positions fall on the labelled objects? Over the support images of ``episodes``
    (Episode, support image ids), for each (support image, label carried by it) pair: the fraction of
    the kept grid positions whose cell centre is inside one of the label's boxes, against the fraction of
    all positions (the box area share, i.e. chance); plus the label's attention mass inside its boxes."""
    per_episode: list[list[tuple[float, float, float, int]]] = [
        _episode_pairs(method, episode, support_ids, boxes) for episode, support_ids in episodes
    ]
    rows = np.asarray([row for rows in per_episode for row in rows], dtype=np.float64)
    if rows.size == 0:
        raise MlfsicError("kept_inside_box_fraction: no (support image, label) pairs in the episodes")
    differences = np.asarray([np.mean([r[0] - r[1] for r in rows_e]) for rows_e in per_episode if rows_e])
    half = 1.96 * differences.std(ddof=1) / math.sqrt(len(differences)) if len(differences) > 1 else math.nan
    mean_difference = float(differences.mean())
    positions = int(episodes[0][0].support_local_features.shape[1])
    return BoxFractions(
        n_episodes=len(episodes), n_pairs=int(rows.shape[0]), kept_inside=float(rows[:, 0].mean()),
        chance=float(rows[:, 1].mean()), attention_inside=float(rows[:, 2].mean()),
        kept_per_image=float(rows[:, 3].mean()), positions=positions,
        difference_ci=(mean_difference - half, mean_difference + half),
        pairs_without_cell=int((rows[:, 1] == 0).sum()),
    )


def measure_boxes(explained: Explained, options: ExplainOptions) -> BoxFractions:
    """``kept_inside_box_fraction`` over episodes 0 .. n_episodes - 1 of (split, setting, seed)."""
    boxes = dataset_boxes(explained.sweep.dataset.as_dict())
    episodes = [draw_episode(explained, options.k_shot, options.seed, index) for index in range(options.n_episodes)]
    return kept_inside_box_fraction(explained.method, episodes, boxes)


# ----------------------------------------------------------------------------------------- attention
def border_cells(side: int) -> np.ndarray:
    """(side * side,) bool, row-major: the cell lies in the first or last row or column of the grid."""
    on_border = np.zeros((side, side), dtype=bool)
    on_border[[0, -1], :] = True
    on_border[:, [0, -1]] = True
    return on_border.reshape(-1)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-12))


def attention_transfer(explains: list[dict[str, np.ndarray]], side: int) -> dict[str, Any]:
    """Is the attention of each label's word vector specific to the label, and where does it go?

    ``explains``: ``LCM.explain`` results (one per episode) on a ``side`` x ``side`` grid. Returns:

    * ``mean_cosine``: the mean cosine similarity between the attention maps of two different labels on
      the same support image, pooled over all such comparisons (``n_comparisons``: the unordered pairs
      (i, j), (i, j') with j != j', from the ``n_multi_label_images`` images that carry >= 2 labels);
      1 means every label looks at the same cells, i.e. the attention does not depend on the label;
      None when no image carries two labels.
    * ``border_mass``: the mean share of a map's attention mass on the border cells, over the
      ``n_pairs`` (support image, label) maps, against ``uniform_border_share``, the border cells' share
      of the grid (what a uniform map puts there: 20/36 on 6x6).
    * ``kept_border_share``: the mean share of an image's kept positions (``keep``) on the border, over
      the support images with a kept position, and ``kept_per_image``, the mean number kept.

    Example:
        One image with two labels on a 3x3 grid: a uniform map, and a map all on the centre cell.

        >>> uniform, centre = np.full(9, 1 / 9), np.eye(9)[4]
        >>> explain = {"pair_image": np.array([0, 0]), "pair_label": np.array([0, 1]),
        ...            "attention": np.stack([uniform, centre]), "keep": np.ones((1, 9), dtype=bool)}
        >>> result = attention_transfer([explain], side=3)
        >>> result["n_comparisons"], round(result["mean_cosine"], 3)
        (1, 0.333)
        >>> round(result["border_mass"], 3), round(result["uniform_border_share"], 3)
        (0.444, 0.889)
    """
    on_border = border_cells(side)
    cosines: list[float] = []
    border_masses: list[float] = []
    kept_border_shares: list[float] = []
    kept_counts: list[int] = []
    multi_label_images = 0
    for explain in explains:
        attention = np.asarray(explain["attention"], dtype=np.float64)
        pair_image = np.asarray(explain["pair_image"], dtype=np.int64)
        keep = np.asarray(explain["keep"], dtype=bool)
        if attention.ndim != 2 or attention.shape[1] != side * side or keep.shape[1] != side * side:
            raise MlfsicError(f"attention_transfer: attention {attention.shape} and keep {keep.shape} are not "
                              f"maps over a {side}x{side} grid")
        mass = attention.sum(axis=1)
        border_masses.extend((attention[:, on_border].sum(axis=1) / np.maximum(mass, 1e-12)).tolist())
        for image_row in np.unique(pair_image):
            maps = attention[pair_image == image_row]
            if len(maps) >= 2:
                multi_label_images += 1
            cosines.extend(_cosine(maps[a], maps[b]) for a in range(len(maps)) for b in range(a + 1, len(maps)))
        kept_counts.extend(keep.sum(axis=1).tolist())
        kept_border_shares.extend(float(row[on_border].sum() / row.sum()) for row in keep if row.any())
    if not border_masses:
        raise MlfsicError("attention_transfer: no (support image, label) pairs in the explanations")
    return {
        "n_episodes": len(explains),
        "n_pairs": len(border_masses),
        "n_multi_label_images": multi_label_images,
        "n_comparisons": len(cosines),
        "mean_cosine": float(np.mean(cosines)) if cosines else None,
        "border_mass": float(np.mean(border_masses)),
        "uniform_border_share": float(on_border.mean()),
        "kept_border_share": float(np.mean(kept_border_shares)) if kept_border_shares else None,
        "kept_per_image": float(np.mean(kept_counts)),
        "positions": side * side,
    }


def measure_attention(explained: Explained, options: ExplainOptions) -> dict[str, dict[str, Any]]:
    """``attention_transfer`` per split of ``ATTENTION_SPLITS``, over its episodes 0 .. n_episodes - 1 of
    (setting, seed)."""
    results: dict[str, dict[str, Any]] = {}
    for split in ATTENTION_SPLITS:
        explains = []
        for index in range(options.n_episodes):
            episode, _ = draw_episode(explained, options.k_shot, options.seed, index, split=split)
            explains.append(explained.method.explain(episode))
        results[split] = attention_transfer(explains, grid_side(explains[0]["keep"].shape[1]))
    return results


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def attention_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """The per-split results of ``measure_attention`` as a small text table."""
    header = ("split", "episodes", "label pairs", "mean cosine", "border mass", "uniform border", "kept border")
    rows = [header] + [
        (split, str(result["n_episodes"]), str(result["n_comparisons"]), _number(result["mean_cosine"]),
         _number(result["border_mass"]), _number(result["uniform_border_share"]), _number(result["kept_border_share"]))
        for split, result in results.items()
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = ["  ".join(cell.ljust(width) if column == 0 else cell.rjust(width)
                       for column, (cell, width) in enumerate(zip(row, widths)))
             for row in rows]
    lines.append("label pairs: two labels' attention maps on one support image (cosine 1: the same map for every "
                 "label); border mass: attention on the grid's border cells, uniform border: a uniform map's; "
                 "kept border: the kept positions' share on the border")
    return "\n".join(lines)


def default_attention_out(explained: Explained, options: ExplainOptions) -> Path:
    """The JSON of ``measure=attention``, beside the figures in ``<results_dir>/explain``."""
    name = (f"{options.method}-{options.dataset}-attention-{options.setting}-seed{options.seed}"
            f"-n{options.n_episodes}.json")
    return explained.sweep.results_dir / "explain" / name


def write_attention(explained: Explained, options: ExplainOptions, results: Mapping[str, Any]) -> Path:
    """The results of ``measure_attention`` with what produced them (method, setting, seed, the backbone's kind,
    model and id, the selection rule), as JSON (atomically); returns its path."""
    from mlfsic.harness.io import write_json_atomic

    method = explained.method
    backbone = explained.sweep.dataset.backbone
    content = {
        "measure": "attention", "method": options.method, "dataset": options.dataset, "setting": options.setting,
        "seed": options.seed, "n_episodes": options.n_episodes, "fitted_on": "base",
        # the features measured: the same command on another backbone (+backbone=...) gives another grid
        "backbone": {"kind": backbone.kind, "model": backbone.settings.get("model"),
                     "id": explained.benchmark.backbone_id},
        "selection": {"selection": method.selection, "threshold_mode": method.threshold_mode, "theta": method.theta},
        "splits": dict(results),
    }
    path = Path(options.out) if options.out else default_attention_out(explained, options)
    write_json_atomic(path, content)
    return path


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


# ------------------------------------------------------------------------------------------- command
def explain_command(options: Mapping[str, str] | Sequence[str]) -> int:
    """``mlfsic explain key=value ...``: write the PNG and print its path, or print the box measurement,
    or print the attention table and the path of its JSON."""
    parsed = parse_options(options)
    explained = prepare(parsed)
    if parsed.measure == "boxes":
        print(measure_boxes(explained, parsed).text())
        return 0
    if parsed.measure == "attention":
        results = measure_attention(explained, parsed)
        print(attention_table(results))
        print(write_attention(explained, parsed, results))
        return 0
    print(write_figure(explained, parsed))
    return 0
