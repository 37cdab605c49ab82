"""A base/val/novel label split made from the data (``mlfsic data split``), docs/architecture.md §5.1-5.2.

The ML-FSIC papers split a dataset's labels at random into base (train), val and novel (test) labels, about
65/15/20 (COCO: 52/12/16), and keep an image in a split only if all its labels are (``split_pool``). A
purely random split of a small or skewed vocabulary can put most frequent labels in one part, or leave a
val or novel label with too few images for the largest K-shot episode. The rule here, ``RULE``:

1. **Floor.** ``floor = max_shot + n_query``: an episode needs K support + Q query images per label. A label
   carried by fewer than ``floor`` images in the whole dataset can never meet it and is a base label.
2. **Stratified deal.** Labels are ranked by how many images carry them (ties in a seeded random order),
   cut into bins of ``BIN_SIZE`` consecutive ranks, shuffled within each bin (seeded), and dealt in that
   order, each to the part furthest below its target share of the labels dealt so far (``shares``,
   default 65/15/20). So every part receives frequent, middling and rare labels in the target proportion,
   and the seed decides which.
3. **Repair.** Under the strict rule a label's images are those whose labels all sit in its part; a val or
   novel label below the floor is repaired greedily (the one furthest below first). Tried: it and the labels
   of other parts that take the most of its images (``CULPRITS``: bringing a label that always shares an
   image with it into its part gives those images back), each swapped with one of the ``CANDIDATES``
   labels of another part nearest in frequency rank, so the parts keep their sizes; the swap that most
   reduces (labels below the floor, images missing to the floor) is taken; if none does, the label moves to
   base (its part shrinks; recorded). Each step lowers (val+novel labels, labels below the floor, images
   missing), so it ends. A part left without a label is an error saying which floor to lower.

The result records the rule, the seed, the data's sha256 and the images each part keeps, so a split file
says how it was made and for which data. Deterministic for (data, rule settings, seed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlfsic.harness.errors import MlfsicError
from mlfsic.harness.protocol.data import SPLITS, Dataset

RULE = "frequency-stratified-v1"
DEFAULT_SHARES = (0.65, 0.15, 0.20)  # base, val, test: ~COCO's 52/12/16
BIN_SIZE = 20  # 13/3/4 labels of every 20 frequency ranks at the default shares
CANDIDATES = 16  # base labels tried per repair step, the nearest in frequency rank


@dataclass(frozen=True)
class SplitRule:
    """What a made split depends on besides the data."""

    max_shot: int = 5
    n_query: int = 4
    seed: int = 0
    shares: tuple[float, float, float] = DEFAULT_SHARES

    @property
    def floor(self) -> int:
        return self.max_shot + self.n_query

    def check(self) -> None:
        if self.max_shot < 0 or self.n_query < 1:
            raise MlfsicError(f"max_shot={self.max_shot}, n_query={self.n_query}: expected max_shot >= 0, n_query >= 1")
        if len(self.shares) != 3 or min(self.shares) <= 0:
            raise MlfsicError(f"parts={'/'.join(map(str, self.shares))}: expected three positive shares "
                              "(base/val/test), e.g. parts=65/15/20")


@dataclass(frozen=True)
class MadeSplit:
    """The label lists and what the split file records about them."""

    parts: dict[str, list[str]]  # base, val, test
    images_per_split: dict[str, int]
    images_in_no_split: int
    min_images_per_label: dict[str, int]
    base_only: list[str]  # labels below the floor in the whole dataset
    repairs: list[str] = field(default_factory=list)

    def file_content(self, dataset: Dataset, rule: SplitRule, command: str) -> dict[str, Any]:
        """The split file: ``train``/``val``/``test`` (the harness reads these) and ``made_by``."""
        shares = dict(zip(SPLITS, (round(share / sum(rule.shares), 4) for share in rule.shares)))
        return {
            "note": (f"made by `{command}`: rule {RULE} (labels ranked by image count, dealt by frequency bin into "
                     f"base/val/test {'/'.join(str(round(100 * s)) for s in shares.values())}, seed {rule.seed}; "
                     f"val and novel labels then repaired to keep >= {rule.floor} images each under the strict rule)"),
            "made_by": {
                "command": command, "rule": RULE, "seed": rule.seed, "shares": shares, "max_shot": rule.max_shot,
                "n_query": rule.n_query, "floor": rule.floor, "dataset": dataset.name,
                "data_sha256": dataset.annotation_sha256, "n_images": len(dataset.image_ids),
                "n_labels": len(dataset.label_names), "labels_per_split": {k: len(v) for k, v in self.parts.items()},
                "images_per_split": self.images_per_split, "images_in_no_split": self.images_in_no_split,
                "min_images_per_label": self.min_images_per_label, "base_only": self.base_only,
                "repairs": self.repairs,
            },
            "train": self.parts["base"], "val": self.parts["val"], "test": self.parts["test"],
        }


class _Pools:
    """Per-label image counts under the strict rule for an assignment of labels to parts, fast: computed over
    the distinct label sets of the images (weighted by how many images share each)."""

    def __init__(self, targets: np.ndarray):
        packed = np.packbits(targets, axis=1)
        _, first, counts = np.unique(packed, axis=0, return_index=True, return_counts=True)
        self.patterns = targets[first]  # (G, L) distinct label sets
        self.counts = counts.astype(np.int64)

    def own(self, part_of: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Images of each label in its own part's pool (L,), and the part of each label set (-1: none)."""
        part = _image_parts(self.patterns, part_of)
        inside = self.patterns & (part[:, None] == part_of[None, :])
        return self.counts @ inside, part


def make_split(dataset: Dataset, rule: SplitRule) -> MadeSplit:
    """The base/val/test labels of ``dataset`` by ``RULE`` (module docstring)."""
    rule.check()
    names = list(dataset.label_names)
    if len(names) < 3:
        raise MlfsicError(f"dataset {dataset.name!r} has {len(names)} labels; a base/val/novel split needs >= 3")
    frequency = dataset.targets.sum(axis=0).astype(np.int64)
    eligible = frequency >= rule.floor
    if eligible.sum() < 2:
        raise MlfsicError(f"dataset {dataset.name!r}: {int(eligible.sum())} labels have >= {rule.floor} images "
                          f"(max_shot {rule.max_shot} + n_query {rule.n_query}); val and novel need one each: "
                          "lower max_shot or n_query")
    rng = np.random.default_rng(rule.seed)
    rank = np.lexsort((rng.permutation(len(names)), -frequency))  # labels, most frequent first
    part_of = _deal(rank, eligible, rule.shares, rng)
    pools = _Pools(dataset.targets)
    repairs = _repair(part_of, rank, eligible, pools, rule.floor, names)
    own, _ = pools.own(part_of)
    parts = {name: [names[i] for i in range(len(names)) if part_of[i] == p] for p, name in enumerate(SPLITS)}
    for name, labels in parts.items():
        if not labels:
            raise MlfsicError(f"dataset {dataset.name!r}: no {name} label keeps {rule.floor} images (max_shot "
                              f"{rule.max_shot} + n_query {rule.n_query}) under the strict rule; lower max_shot or n_query")
    labelled = dataset.targets.any(axis=1)
    image_part = _image_parts(dataset.targets, part_of)
    return MadeSplit(
        parts=parts,
        images_per_split={name: int((image_part == p).sum()) for p, name in enumerate(SPLITS)},
        images_in_no_split=int((labelled & (image_part < 0)).sum()),
        min_images_per_label={name: int(own[part_of == p].min()) for p, name in enumerate(SPLITS)},
        base_only=[names[i] for i in np.flatnonzero(~eligible)],
        repairs=repairs,
    )


def _deal(rank: np.ndarray, eligible: np.ndarray, shares: tuple[float, ...], rng: np.random.Generator) -> np.ndarray:
    """Part of each label: bins of ``BIN_SIZE`` ranks, shuffled, each label to the part most below its share."""
    target = np.asarray(shares, dtype=float) / float(sum(shares))
    part_of = np.zeros(len(rank), dtype=np.int64)
    dealt = np.zeros(3, dtype=float)
    for start in range(0, len(rank), BIN_SIZE):
        for label in rng.permutation(rank[start:start + BIN_SIZE]):
            if eligible[label]:
                deficit = target * (dealt.sum() + 1) - dealt
                part = int(np.argmax(deficit))  # ties: base, then val, then test
            else:
                part = 0
            part_of[label] = part
            dealt[part] += 1
    return part_of


def _score(own: np.ndarray, part_of: np.ndarray, floor: int) -> tuple[int, int, int]:
    """(val+novel labels, of them below the floor, images they miss to it): lower is better after a repair."""
    evaluated = part_of > 0
    short = evaluated & (own < floor)
    return int(evaluated.sum()), int(short.sum()), int((floor - own[short]).sum())


def _repair(part_of: np.ndarray, rank: np.ndarray, eligible: np.ndarray, pools: _Pools, floor: int,
            names: list[str]) -> list[str]:
    """Swap (or move to base) labels while a val/novel label is below the floor, in place; the steps, as text.

    For the val/novel label furthest below (``short``), the labels tried are it and its ``CULPRITS``: the
    labels of other parts that most often share an image with it (each such image leaves its pool). Each is
    tried swapped with the ``CANDIDATES`` labels of other parts nearest to it in frequency rank (labels below
    the floor in all stay in base); the swap lowering (labels below the floor, images missing) most is taken.
    If none does, the short label moves to base.
    """
    position = np.empty(len(rank), dtype=np.int64)
    position[rank] = np.arange(len(rank))
    steps: list[str] = []
    for _ in range(4 * len(names)):
        own, pattern_part = pools.own(part_of)
        short = np.flatnonzero((part_of > 0) & (own < floor))
        if not len(short):
            break
        label = int(short[np.lexsort((position[short], own[short]))[0]])  # furthest below, then most frequent
        current = _score(own, part_of, floor)[1:]
        best: tuple[tuple[int, int], int, int] | None = None  # (score, label, label it swaps with)
        for first in [label, *_culprits(pools, pattern_part, part_of, label)]:
            if not eligible[first]:  # a label below the floor in all stays in base
                continue
            others = np.flatnonzero((part_of != part_of[first]) & eligible)
            for second in others[np.argsort(np.abs(position[others] - position[first]), kind="stable")][:CANDIDATES]:
                trial = part_of.copy()
                trial[first], trial[second] = part_of[second], part_of[first]
                score = _score(pools.own(trial)[0], trial, floor)[1:]
                if score < current and (best is None or score < best[0]):
                    best = (score, first, int(second))
        if best is not None:
            _, first, second = best
            steps.append(f"swapped {names[first]!r} ({SPLITS[int(part_of[first])]}) with {names[second]!r} "
                         f"({SPLITS[int(part_of[second])]}): {names[label]!r} had {int(own[label])} images")
            part_of[first], part_of[second] = part_of[second], part_of[first]
            continue
        steps.append(f"moved {names[label]!r} from {SPLITS[int(part_of[label])]} to base "
                     f"({int(own[label])} images < {floor}, no swap helped)")
        part_of[label] = 0
    return steps


CULPRITS = 3  # labels of other parts tried with a label below the floor (repair)


def _culprits(pools: _Pools, pattern_part: np.ndarray, part_of: np.ndarray, label: int) -> list[int]:
    """The labels outside ``label``'s part that share the most of its lost images (most first)."""
    lost = pools.patterns[:, label] & (pattern_part != part_of[label])
    shared = pools.counts[lost] @ pools.patterns[lost]
    outside = (part_of != part_of[label]) & (shared > 0)
    order = np.argsort(-shared, kind="stable")
    return [int(m) for m in order if outside[m]][:CULPRITS]


def _image_parts(targets: np.ndarray, part_of: np.ndarray) -> np.ndarray:
    """The part each image belongs to under the strict rule (-1: none, or no label)."""
    per_part = np.stack([targets[:, part_of == p].sum(axis=1) for p in range(3)], axis=1)
    sizes = targets.sum(axis=1)
    part = np.argmax(per_part, axis=1)
    pure = (per_part[np.arange(len(part)), part] == sizes) & (sizes > 0)
    return np.where(pure, part, -1)
