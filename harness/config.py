"""Configuration: Hydra composition of the run config and the pieces derived from it.

The config tree ships inside the package (``mlfsic.configs``), so ``mlfsic`` works from any directory:

    configs/config.yaml          run-level keys (method, setting, seeds, n_episodes, ray, resources, ...)
    configs/dataset/<name>.yaml  one file per dataset (a Hydra group: ``dataset=coco``)
    configs/methods/<name>.yaml  hyperparameters of built-in method ``<name>`` (constructor keyword arguments)
    configs/splits/*.json        label splits (DESIGN 5.1)
    configs/reference/*.yaml     paper-reported numbers with citations

Method hyperparameters are deliberately *not* a Hydra group: ``method=[lcm,protonet]`` is a plain list
override, and a group named ``method`` would capture it. Override a hyperparameter with
``+method_args.<name>.<key>=<value>``.

The composed config is read once, by ``harness.sweep.resolve_sweep``, into a typed ``Sweep``.
"""

from __future__ import annotations

import importlib.resources
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mlfsic.harness.errors import MlfsicError


def config_dir() -> Path:
    return Path(str(importlib.resources.files("mlfsic.configs")))


def compose_config(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Compose ``configs/config.yaml`` with command-line overrides; errors become one-line MlfsicErrors."""
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
            cfg = compose(config_name="config", overrides=list(overrides))
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise MlfsicError(f"bad config override ({' '.join(overrides)}): {first_line}") from None
    return cfg


def to_container(cfg: DictConfig) -> dict[str, Any]:
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    return container


def method_yaml(name: str) -> dict[str, Any]:
    """Hyperparameters a run uses for registered method ``name``: ``configs/methods/<name>.yaml`` ({} if none)."""
    path = config_dir() / "methods" / f"{name}.yaml"
    if not path.is_file():
        return {}
    loaded = yaml.safe_load(path.read_text()) or {}
    if not isinstance(loaded, dict):
        raise MlfsicError(f"{path}: expected a mapping of hyperparameters")
    return loaded


def load_label_split(split_file: str, dataset_labels: tuple[str, ...], restrict: bool) -> dict[str, list[str]]:
    """Read a split file (``configs/splits/<file>`` or a path): {"base", "val", "test"} label lists.

    With ``restrict`` (coco-moji), labels the dataset does not have are dropped; otherwise an unknown
    label is an error naming it and the file.
    """
    path = Path(split_file)
    if not path.is_absolute() and not path.exists():
        path = config_dir() / "splits" / split_file
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


def plain(mapping: Mapping[str, Any] | DictConfig) -> dict[str, Any]:
    if isinstance(mapping, DictConfig):
        return to_container(mapping)
    return dict(mapping)
