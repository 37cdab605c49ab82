"""Choosing a method's prediction settings per K on val episodes drawn in ``fit`` (linear-probe, tip-adapter).

``fit`` does not know which K the sweep evaluates, so such a method scores a grid of settings on val K-shot
episodes for each K of its ``val_shots`` and stores the best of each; ``predict`` uses the stored K nearest
to the episode's (``nearest_shot``). The val episodes come from ``torch_utils.val_episodes``; without a val
split (``eval_split=val``) or with too few usable val labels, the method's defaults are kept and said so.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from mlfsic.methods.api import Episode, SplitData
from mlfsic.methods.torch_utils import val_episodes

ScoreGrid = Callable[[list[tuple[Episode, np.ndarray]]], tuple[list[dict[str, Any]], dict[str, Any]]]


def choose_per_shot(val: SplitData | None, val_shots: Sequence[int], n_episodes: int, n_query: int, seed: int,
                    default: Mapping[str, Any], score_grid: ScoreGrid
                    ) -> tuple[dict[int, dict[str, Any]], dict[str, Any], list[str]]:
    """Per K of ``val_shots``: ``score_grid(episodes)`` gives one row per setting (the setting's keys, those of
    ``default``, and ``val_map``) and extra report fields; the best row is kept (exact ties: the earlier row).

    Returns the chosen setting per K, the report (``chosen`` and ``val_grid`` per ``<K>shot``) and notes on
    the K that kept ``default`` (no val split, or fewer than 2 val labels with K + ``n_query`` images).
    """
    chosen: dict[int, dict[str, Any]] = {}
    report_chosen: dict[str, dict[str, Any]] = {}
    report_grid: dict[str, list[dict[str, Any]]] = {}
    notes = []
    for k_shot in val_shots:
        episodes = val_episodes(val, k_shot, n_episodes, n_query, seed) if val is not None else []
        if not episodes:
            chosen[k_shot] = dict(default)
            report_chosen[f"{k_shot}shot"] = {**default, "val_map": None}
            notes.append(f"{k_shot}shot: no val split" if val is None
                         else f"{k_shot}shot: fewer than 2 val labels have {k_shot + n_query} images")
            continue
        rows, extra = score_grid(episodes)
        best = max(range(len(rows)), key=lambda i: (rows[i]["val_map"], -i))
        chosen[k_shot] = {key: rows[best][key] for key in default}
        report_chosen[f"{k_shot}shot"] = {**rows[best], "val_episodes": len(episodes), **extra}
        report_grid[f"{k_shot}shot"] = rows
    return chosen, {"chosen": report_chosen, "val_grid": report_grid}, notes


def nearest_shot(chosen: Mapping[int, dict[str, Any]], k_shot: int) -> dict[str, Any]:
    """The setting stored for the K nearest to ``k_shot`` (ties: the smaller K)."""
    return chosen[min(chosen, key=lambda k: (abs(k - k_shot), k))]
