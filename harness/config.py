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
"""

from __future__ import annotations

import importlib
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
from mlfsic.methods.api import parse_setting


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


def as_list(value: Any) -> list[Any]:
    """A scalar override (``setting=1shot``) and a list override (``setting=[1shot,5shot]``) alike."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)) or OmegaConf.is_list(value):
        return list(value)
    return [value]


def settings_of(cfg: DictConfig) -> list[str]:
    settings = [str(s) for s in as_list(cfg.setting)]
    for setting in settings:
        parse_setting(setting)
    return settings


def method_names(cfg: DictConfig) -> list[str]:
    """``method: all`` -> every registered method; otherwise the names given, checked against the registry."""
    from mlfsic.methods.registry import available_methods, get_method_class

    for module in as_list(cfg.get("method_modules")):
        try:
            importlib.import_module(str(module))
        except ImportError as error:
            raise MlfsicError(f"method_modules: cannot import {module!r}: {error}") from None
    names = [str(n) for n in as_list(cfg.method)]
    if names == ["all"]:
        return list(available_methods())
    for name in names:
        get_method_class(name)
    return names


def method_config(name: str, cfg: DictConfig | None = None) -> dict[str, Any]:
    """Hyperparameters of method ``name``: ``configs/methods/<name>.yaml`` updated by ``method_args.<name>``."""
    path = config_dir() / "methods" / f"{name}.yaml"
    values: dict[str, Any] = {}
    if path.is_file():
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise MlfsicError(f"{path}: expected a mapping of hyperparameters")
        values.update(loaded)
    if cfg is not None and cfg.get("method_args") and name in cfg.method_args:
        values.update(OmegaConf.to_container(cfg.method_args[name], resolve=True))  # type: ignore[arg-type]
    return values


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


def split_name(eval_split: str) -> str:
    if eval_split not in ("base", "val", "test"):
        raise MlfsicError(f"eval_split {eval_split!r} must be one of base, val, test")
    return eval_split


def plain(mapping: Mapping[str, Any] | DictConfig) -> dict[str, Any]:
    if isinstance(mapping, DictConfig):
        return to_container(mapping)
    return dict(mapping)
