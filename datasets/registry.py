"""The dataset factory: adapters keyed by the ``adapter:`` name of ``configs/dataset/<name>.yaml``.

In the pattern of timm's ``create_model``: ``load_dataset(dataset_cfg)`` finds the adapter the config
names and returns a ``harness.protocol.data.Dataset``; ``label_split(dataset_cfg, dataset)`` its base/val/test
label lists; ``prepare_dataset(name, options)`` backs ``mlfsic data prepare NAME key=value ...``.

An adapter is a module (imported when first used) that writes only what reads its files::

    read(cfg, check_images=True) -> datasets.adapter.Loaded   # the Dataset + notes for the summary

and may override the defaults this module supplies (``_default_*`` below)::

    load(cfg, check_images=True) -> Dataset                   # default: read(...).dataset
    label_split(cfg, dataset) -> {"base": [...], "val": [...], "test": [...]}
                                                              # default: cfg.split_file (restrict_split)
    prepare(cfg) -> datasets.adapter.Prepared                 # default: every file checked, summarised
    check_files(cfg) -> None                                  # optional: at sweep resolution (coco)
    ensure_files(cfg, progress) -> None                       # optional: make missing files (coco-moji)

``cfg`` is the dataset config as a plain mapping (``root`` and the adapter's own keys). Every file is
checked up front; a missing or malformed one is a one-line ``MlfsicError`` naming it.

Adding a dataset = one module with ``read`` + its line in ``ADAPTERS`` below (or ``register_adapter``
from a plug-in) + one yaml in ``configs/dataset/`` naming it with ``adapter:`` and a split file in
``configs/splits/`` (docs/architecture.md §11).
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from mlfsic.datasets.adapter import Prepared, bool_option, option, summarize
from mlfsic.harness.errors import MlfsicError
from mlfsic.harness.protocol.data import Dataset
from mlfsic.harness.protocol.splits import load_label_split

# adapter name -> module implementing it
ADAPTERS: dict[str, str] = {
    "coco": "mlfsic.datasets.coco",
    "coco-moji": "mlfsic.datasets.coco_moji.adapter",
    "voc": "mlfsic.datasets.voc",
    "nuswide": "mlfsic.datasets.nuswide",
    "imaterialist": "mlfsic.datasets.imaterialist",
}


def register_adapter(name: str, module: str) -> None:
    """Add an adapter (a plug-in's module path); a name already taken is an error."""
    if name in ADAPTERS:
        raise MlfsicError(f"dataset adapter {name!r} is already registered ({ADAPTERS[name]})")
    ADAPTERS[name] = module


def adapter_module(name: str) -> ModuleType:
    """The module of adapter ``name``; an unknown name lists the registered ones (and the closest)."""
    if name not in ADAPTERS:
        close = difflib.get_close_matches(str(name), list(ADAPTERS), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise MlfsicError(f"unknown dataset adapter {name!r}; registered: {', '.join(sorted(ADAPTERS))}{hint}")
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


def check_files(cfg: Mapping[str, Any]) -> None:
    """The adapter's check of the files its config names, when it has one (run at sweep resolution)."""
    adapter = _adapter_of(cfg)
    if hasattr(adapter, "check_files"):
        adapter.check_files(cfg)


def load_dataset(cfg: Mapping[str, Any], check_images: bool = False) -> Dataset:
    """The ``Dataset`` that ``cfg`` (a dataset config) describes."""
    adapter = _adapter_of(cfg)
    if hasattr(adapter, "load"):
        return adapter.load(cfg, check_images=check_images)
    return adapter.read(cfg, check_images=check_images).dataset


def label_split(cfg: Mapping[str, Any], dataset: Dataset) -> dict[str, list[str]]:
    """Base/val/test label lists of ``cfg``'s split file for ``dataset``."""
    adapter = _adapter_of(cfg)
    if hasattr(adapter, "label_split"):
        return adapter.label_split(cfg, dataset)
    return _default_label_split(cfg, dataset)


def _default_label_split(cfg: Mapping[str, Any], dataset: Dataset) -> dict[str, list[str]]:
    """``cfg.split_file`` (``configs/splits/<file>`` or a path); with ``restrict_split``, labels the dataset
    does not have are dropped, otherwise they are an error."""
    return load_label_split(str(cfg["split_file"]), dataset.label_names, bool_option(cfg, "restrict_split", False))


def prepare_config(cfg: Mapping[str, Any]) -> Any:
    """The dataset of ``cfg`` with every file checked, its split and summary (``.text()``): the adapter's
    ``prepare`` when it has one (coco-moji generates), else read, split, summarise (``adapter.Prepared``)."""
    adapter = _adapter_of(cfg)
    if hasattr(adapter, "prepare"):
        return adapter.prepare(cfg)
    loaded = adapter.read(cfg, check_images=True)
    split = label_split(cfg, loaded.dataset)
    return Prepared(dataset=loaded.dataset, split=split,
                    summary=summarize(loaded, split, str(option(cfg, "split_file", "")) or None))


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

    from mlfsic.harness.config import compose_config, config_dir, to_container

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
    return prepare_config(to_container(compose_config(overrides).dataset)).text()
