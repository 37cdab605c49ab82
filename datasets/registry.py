"""The dataset factory: adapters keyed by the ``adapter:`` name of ``configs/dataset/<name>.yaml``.

In the pattern of timm's ``create_model``: ``load_dataset(dataset_cfg)`` finds the adapter the config
names and returns a ``harness.data.Dataset``; ``label_split(dataset_cfg, dataset)`` its base/val/test
label lists; ``prepare_dataset(name, options)`` backs ``mlfsic data prepare NAME key=value ...``.

An adapter is a module (imported when first used) with::

    read(cfg, check_images=True) -> datasets.disk.Loaded   # the Dataset + notes for the summary
    load(cfg, check_images=True) -> Dataset                 # read(...).dataset
    label_split(cfg, dataset) -> {"base": [...], "val": [...], "test": [...]}
    prepare(cfg) -> datasets.disk.Prepared                  # every file checked; summary via .text()
    ensure_files(cfg, progress) -> None                     # optional: make missing files (coco-moji)

``cfg`` is the dataset config as a plain mapping (``root`` and the adapter's own keys). Every file is
checked up front; a missing or malformed one is a one-line ``MlfsicError`` naming it.

Adding a dataset = one module (an adapter) + one yaml in ``configs/dataset/`` naming it with ``adapter:``
+ a split file in ``configs/splits/``; put the module in ``ADAPTERS`` below (docs/architecture.md §6.1).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from mlfsic.harness.protocol.data import Dataset
from mlfsic.harness.errors import MlfsicError

# adapter name -> module implementing it
ADAPTERS: dict[str, str] = {
    "coco": "mlfsic.datasets.coco",
    "coco-moji": "mlfsic.datasets.coco_moji.adapter",
    "voc": "mlfsic.datasets.voc",
    "nuswide": "mlfsic.datasets.nuswide",
    "imaterialist": "mlfsic.datasets.imaterialist",
}


def adapter_module(name: str) -> ModuleType:
    """The module of adapter ``name``; an unknown name lists the registered ones."""
    if name not in ADAPTERS:
        raise MlfsicError(f"unknown dataset adapter {name!r}; registered: {', '.join(sorted(ADAPTERS))}")
    return importlib.import_module(ADAPTERS[name])


def _adapter_of(cfg: Mapping[str, Any]) -> ModuleType:
    name = cfg.get("adapter")
    if not name:
        raise MlfsicError(f"dataset {cfg.get('name')!r}: its config has no 'adapter:' key "
                          f"(one of {', '.join(sorted(ADAPTERS))})")
    return adapter_module(str(name))


def ensure_files(cfg: Mapping[str, Any], progress: bool = True) -> None:
    """Make the dataset's files when its adapter can (coco-moji is generated on first use)."""
    adapter = _adapter_of(cfg)
    if hasattr(adapter, "ensure_files"):
        adapter.ensure_files(cfg, progress)


def load_dataset(cfg: Mapping[str, Any], check_images: bool = False) -> Dataset:
    """The ``Dataset`` that ``cfg`` (a dataset config) describes."""
    return _adapter_of(cfg).load(cfg, check_images=check_images)


def label_split(cfg: Mapping[str, Any], dataset: Dataset) -> dict[str, list[str]]:
    """Base/val/test label lists of ``cfg``'s split file for ``dataset``."""
    return _adapter_of(cfg).label_split(cfg, dataset)


def dataset_config_names() -> list[str]:
    """The dataset configs users can name (``configs/dataset/<name>.yaml``)."""
    from mlfsic.harness.config import config_dir

    return sorted(path.stem for path in (config_dir() / "dataset").glob("*.yaml"))


def prepare_dataset(name: str, options: Mapping[str, str]) -> str:
    """``mlfsic data prepare NAME key=value ...``: make (coco-moji) or check a dataset; the printable summary.

    ``root=DIR`` is the short form of ``dataset.root=DIR``; any other key is a key of the dataset config,
    or a short option the adapter declares in ``OPTION_KEYS`` (coco-moji: ``out=``, ``seed=``, ...).
    """
    import yaml

    from mlfsic.harness.config import compose_config, config_dir, plain

    names = dataset_config_names()
    if name not in names:
        raise MlfsicError(f"unknown dataset {name!r}; known: {', '.join(names)} (configs/dataset/<name>.yaml)")
    adapter = _adapter_of(yaml.safe_load((config_dir() / "dataset" / f"{name}.yaml").read_text()) or {})
    short = getattr(adapter, "OPTION_KEYS", {})
    overrides = [f"dataset={name}"]
    for key, value in options.items():
        target = short.get(key, key)
        plus = "+" if target.startswith("+") else ""
        overrides.append(f"{plus}dataset.{target.lstrip('+')}={value}")
    return adapter.prepare(plain(compose_config(overrides).dataset)).text()
