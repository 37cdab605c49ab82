"""Which labels each coco-moji scene carries: the split-aware, balanced label plan.

Splits follow docs/architecture.md §5.1/5.2: a base scene draws only base labels, a val scene only val labels, a test
(novel) scene only test labels, so each pool gets exactly the requested number of images under the
authors' rule (an image belongs to a split only if all its labels are in it). An extra ``MIXED_FRACTION``
of "mixed" scenes combine labels from at least two splits; they belong to no split and exercise the
rule (a leakage check must drop them).

Labels per image follow ``LABELS_PER_IMAGE`` (1: 40 %, 2: 30 %, 3: 20 %, 4: 10 %, capped by the split's
size). Labels are drawn without replacement with weight ``1 / (1 + uses - min_uses)^2``, which keeps the
per-label counts close together while leaving co-occurrences random.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LABELS_PER_IMAGE: dict[int, float] = {1: 0.4, 2: 0.3, 3: 0.2, 4: 0.1}
MIXED_FRACTION = 0.05
SPLITS = ("base", "val", "test")


@dataclass(frozen=True)
class ScenePlan:
    """One scene to draw: its split ("base", "val", "test" or "mixed") and its distinct labels."""

    split: str
    labels: tuple[str, ...]


def n_mixed_scenes(counts: dict[str, int], split_labels: dict[str, list[str]]) -> int:
    """About ``MIXED_FRACTION`` of the split scenes, when at least two splits have labels."""
    if sum(1 for split in SPLITS if split_labels[split]) < 2:
        return 0
    return int(round(MIXED_FRACTION * sum(counts.values())))


def _label_count(rng: np.random.Generator, low: int, high: int) -> int:
    sizes = [k for k in LABELS_PER_IMAGE if low <= k <= high]
    weights = np.array([LABELS_PER_IMAGE[k] for k in sizes])
    return int(rng.choice(sizes, p=weights / weights.sum()))


def _pick_balanced(candidates: list[str], k: int, uses: dict[str, int], rng: np.random.Generator) -> list[str]:
    """``k`` distinct labels from ``candidates``, favouring the least used; updates ``uses``."""
    chosen: list[str] = []
    pool = list(candidates)
    for _ in range(k):
        counts = np.array([uses[label] for label in pool], dtype=np.float64)
        weights = 1.0 / (1.0 + counts - counts.min()) ** 2
        label = pool.pop(int(rng.choice(len(pool), p=weights / weights.sum())))
        uses[label] += 1
        chosen.append(label)
    return chosen


def plan_scenes(
    split_labels: dict[str, list[str]], counts: dict[str, int], n_mixed: int, rng: np.random.Generator
) -> list[ScenePlan]:
    """Label sets for ``counts[split]`` scenes per split plus ``n_mixed`` mixed scenes, in shuffled order."""
    uses = {label: 0 for split in SPLITS for label in split_labels[split]}
    plans: list[ScenePlan] = []
    for split in SPLITS:
        labels = split_labels[split]
        for _ in range(counts[split]):
            k = _label_count(rng, 1, min(4, len(labels)))
            plans.append(ScenePlan(split, tuple(_pick_balanced(labels, k, uses, rng))))
    populated = [split for split in SPLITS if split_labels[split]]
    for _ in range(n_mixed):
        first, second = rng.choice(len(populated), size=2, replace=False)
        picked = _pick_balanced(split_labels[populated[first]], 1, uses, rng)
        picked += _pick_balanced(split_labels[populated[second]], 1, uses, rng)
        rest = [label for split in populated for label in split_labels[split] if label not in picked]
        k = _label_count(rng, 2, min(4, len(picked) + len(rest)))
        picked += _pick_balanced(rest, k - 2, uses, rng)
        plans.append(ScenePlan("mixed", tuple(picked)))
    order = rng.permutation(len(plans))
    return [plans[i] for i in order]
