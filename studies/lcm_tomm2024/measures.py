"""Two measures of LCM's explanations over many episodes, behind ``mlfsic explain measure=...``.

* ``kept_inside_box_fraction`` (``measure=boxes``): do the local positions LCM keeps fall on the labelled
  objects? The share of kept positions inside the label's COCO boxes against the boxes' area share (chance).
* ``attention_transfer`` (``measure=attention``): is each label's attention specific to the label, and how
  much of it sits on the grid's border? On the labels the method was fitted on (base) and held-out ones (val).

The functions on ``LCM.explain`` arrays are pure (tested on hand-made arrays); ``measure_boxes`` and
``measure_attention`` draw the episodes of a prepared context (``explain.prepare``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from mlfsic.harness.cli.options import ExplainOptions
from mlfsic.harness.errors import MlfsicError
from mlfsic.studies.lcm_tomm2024.explain import Explained, dataset_boxes, draw_episode
from mlfsic.studies.lcm_tomm2024.explain_figure import Boxes, cells_inside, grid_side

# measure=attention: the labels the method was fitted on, then held-out labels (never the novel split)
ATTENTION_SPLITS = ("base", "val")


# --------------------------------------------------------------------------------------------- boxes
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
