"""The data types that flow through the harness (docs/architecture.md §3, 4.3).

``Dataset``       what an adapter returns: every image of an annotation file with multi-hot labels.
``LabelledPool``  the images of one label split (docs/architecture.md §5.2: an image belongs to a split only if
                  *all* its labels are in that split), with label columns in the split's order.
``SPLITS``        the names of the three label splits, in this order.

What a method receives (``SplitData``, ``Episode``) is defined with the Method API in
``mlfsic.methods.api``, the one module a method author imports.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlfsic.harness.errors import MlfsicError

SPLITS = ("base", "val", "test")  # label splits: train on base, select on val, evaluate on test (novel)


@dataclass(frozen=True)
class Dataset:
    """All images of one annotation file.

    ``targets[i, j]`` is True when image ``image_ids[i]`` carries label ``label_names[j]``.
    ``label_names`` follow the annotation file's category order.
    """

    name: str
    image_root: Path
    image_ids: np.ndarray  # (n,) int64
    file_names: tuple[str, ...]  # relative to image_root
    label_names: tuple[str, ...]
    targets: np.ndarray  # (n, n_labels) bool
    annotation_sha256: str

    def label_column(self, label: str) -> int:
        try:
            return self.label_names.index(label)
        except ValueError:
            raise MlfsicError(f"dataset {self.name!r}: unknown label {label!r}") from None

    def file_name_of(self) -> dict[int, str]:
        return dict(zip(self.image_ids.tolist(), self.file_names))


@dataclass(frozen=True)
class LabelledPool:
    """The images of one split; ``targets`` columns follow ``label_names`` (the split's order)."""

    dataset: str
    split: str
    label_names: tuple[str, ...]
    image_ids: np.ndarray  # (n,) int64
    targets: np.ndarray  # (n, N) bool
    annotation_sha256: str

    def __len__(self) -> int:
        return int(self.image_ids.shape[0])


def split_pool(dataset: Dataset, split: str, label_names: list[str] | tuple[str, ...]) -> LabelledPool:
    """Images whose labels are all in ``label_names`` (and that have at least one), docs/architecture.md §5.2."""
    columns = [dataset.label_column(name) for name in label_names]
    inside = np.zeros(len(dataset.label_names), dtype=bool)
    inside[columns] = True
    has_outside_label = dataset.targets[:, ~inside].any(axis=1)
    has_inside_label = dataset.targets[:, inside].any(axis=1)
    keep = has_inside_label & ~has_outside_label
    return LabelledPool(
        dataset=dataset.name,
        split=split,
        label_names=tuple(label_names),
        image_ids=dataset.image_ids[keep].copy(),
        targets=dataset.targets[keep][:, columns].copy(),
        annotation_sha256=dataset.annotation_sha256,
    )


def find_rows(haystack_ids: np.ndarray, image_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row of each of ``image_ids`` in ``haystack_ids`` and whether it was found (rows of misses: 0)."""
    ids = np.asarray(image_ids, dtype=np.int64).reshape(-1)
    haystack = np.asarray(haystack_ids, dtype=np.int64)
    if len(haystack) == 0:
        return np.zeros(len(ids), dtype=np.int64), np.zeros(len(ids), dtype=bool)
    order = np.argsort(haystack, kind="stable")
    positions = np.minimum(np.searchsorted(haystack[order], ids), len(haystack) - 1)
    found = haystack[order][positions] == ids
    return np.where(found, order[positions], 0), found
