"""Label split files (docs/architecture.md §5.1): ``configs/splits/<file>`` or a path, read into base/val/test.

A split file is JSON with lists ``train`` (the base labels), ``val`` and ``test`` (the novel labels);
``split_path`` is the one place that says where a split file name points.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from mlfsic.harness.config import config_dir
from mlfsic.harness.errors import MlfsicError


def split_path(split_file: str | os.PathLike[str]) -> Path:
    """Where a split file is: a path, else ``configs/splits/<file>`` ."""
    path = Path(split_file)
    if not path.is_absolute() and not path.exists():
        path = config_dir() / "splits" / str(split_file)
    return path


def load_label_split(split_file: str, dataset_labels: tuple[str, ...], restrict: bool) -> dict[str, list[str]]:
    """Read a split file (``configs/splits/<file>`` or a path): {"base", "val", "test"} label lists.

    With ``restrict`` (coco-moji), labels the dataset does not have are dropped; otherwise an unknown
    label is an error naming it and the file.
    """
    path = split_path(split_file)
    if not path.is_file():
        raise MlfsicError(f"split file not found: {path}")
    try:
        raw = json.loads(path.read_text())
        split = {"base": list(raw["train"]), "val": list(raw["val"]), "test": list(raw["test"])}
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise MlfsicError(f"{path}: malformed split file ({error!r}); needs lists 'train', 'val', 'test'") from None
    known = set(dataset_labels)
    for part, labels in split.items():
        unknown = [label for label in labels if label not in known]
        if unknown and not restrict:
            raise MlfsicError(f"{path}: {part} label {unknown[0]!r} is not a category of the dataset")
        split[part] = [label for label in labels if label in known]
    return split
