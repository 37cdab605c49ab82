"""The dataset factory: adapters keyed by the ``adapter:`` name of ``configs/dataset/<name>.yaml``.

In the pattern of timm's ``create_model``: ``load_dataset(dataset_cfg)`` finds the adapter the config
names and returns a ``harness.protocol.data.Dataset``; ``label_split(dataset_cfg, dataset)`` its base/val/test
label lists; ``prepare_dataset(name, options)`` backs ``mlfsic data prepare NAME key=value ...``; ``composed_config`` gives
``mlfsic data check`` / ``split`` the same config; ``split_command`` / ``missing_split_error`` say how to make
a missing split file (``mlfsic data split``).

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
import shlex
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from mlfsic.datasets.adapter import Prepared, bool_option, check_problems, format_summary, option, summarize, \
    unreadable_images
from mlfsic.harness.errors import MlfsicError
from mlfsic.harness.protocol.data import Dataset
from mlfsic.harness.protocol.splits import load_label_split, split_path

# adapter name -> module implementing it
ADAPTERS: dict[str, str] = {
    "coco": "mlfsic.datasets.coco",
    "coco-moji": "mlfsic.datasets.coco_moji.adapter",
    "voc": "mlfsic.datasets.voc",
    "nuswide": "mlfsic.datasets.nuswide",
    "imaterialist": "mlfsic.datasets.imaterialist",
    "imagefolder": "mlfsic.datasets.imagefolder",  # your own images + metadata.jsonl/csv
    "coco-format": "mlfsic.datasets.coco",  # any COCO-format instances file (configs/dataset/coco-format.yaml)
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
    does not have are dropped, otherwise they are an error. A missing file says how to make one."""
    if not split_path(str(cfg["split_file"])).is_file():
        raise missing_split_error(cfg)
    return load_label_split(str(cfg["split_file"]), dataset.label_names, bool_option(cfg, "restrict_split", False))


def split_command(cfg: Mapping[str, Any]) -> str:
    """The ``mlfsic data split`` command that writes ``cfg``'s split file from its data.

    The dataset is named by its adapter (``imagefolder``, ``coco-format``: the config of the same name), with
    ``root=``, the adapter's ``COMMAND_KEYS`` that are set, and ``out=`` the split file.
    """
    adapter = _adapter_of(cfg)
    parts = ["mlfsic data split", str(cfg.get("adapter")), f"root={shlex.quote(str(cfg.get('root')))}"]
    for key in getattr(adapter, "COMMAND_KEYS", ()):
        value = cfg.get(key)
        if value is not None and value != getattr(adapter, "DEFAULTS", {}).get(key):
            parts.append(f"{key}={shlex.quote(str(value))}")
    parts.append(f"out={shlex.quote(str(cfg.get('split_file')))}")
    return " ".join(parts)


def missing_split_error(cfg: Mapping[str, Any]) -> MlfsicError:
    """``dataset.split_file`` not found, in one line with the command that makes it (or how to name one)."""
    path = split_path(str(cfg.get("split_file")))
    return MlfsicError(f"dataset.split_file={cfg.get('split_file')}: split file not found ({path}); expected a file "
                       f"of configs/splits/ or a path to one: make one from the data with {split_command(cfg)} (or "
                       "name yours: dataset.split_file=/path/split.json)")


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


def check_config(cfg: Mapping[str, Any], floor: int, open_images: bool = True,
                 progress: bool = True) -> tuple[str, list[str]]:
    """``mlfsic data check``: the validation report of ``cfg``'s data and what makes it fail (empty: none).

    As ``prepare_config`` (every file checked), plus images per label, labels below ``floor`` (K + Q), duplicate
    rows, missing files (read with ``missing_images: drop`` where the adapter has the option, so all are
    counted) and, with ``open_images``, files PIL cannot open. Without a split file yet, the report says how to
    make one instead of failing.
    """
    given, cfg = cfg, dict(cfg)
    if cfg.get("missing_images") == "error":
        cfg["missing_images"] = "drop"  # count every missing file; check_problems fails on them
    ensure_files(cfg, progress)
    adapter = _adapter_of(cfg)
    loaded = adapter.read(cfg, check_images=True)
    split_file = str(cfg.get("split_file") or "")
    has_split = hasattr(adapter, "label_split") or (split_file and split_path(split_file).is_file())
    split = label_split(cfg, loaded.dataset) if has_split else {}
    summary = summarize(loaded, split, split_file if has_split else None, floor)
    lines = [format_summary(summary)]
    if not has_split:
        lines.append(f"  no split file yet ({split_file}); make one: {split_command(given)}")
    unreadable = unreadable_images(loaded.dataset, progress) if open_images else []
    lines.extend(f"  unreadable: {entry}" for entry in unreadable[:5])
    problems = check_problems(summary, unreadable)
    lines.append("  check: " + ("OK" if not problems else f"{len(problems)} problem(s): " + "; ".join(problems)))
    return "\n".join(lines), problems


def dataset_config_names() -> list[str]:
    """The dataset configs users can name (``configs/dataset/<name>.yaml``)."""
    from mlfsic.harness.config import config_dir

    return sorted(path.stem for path in (config_dir() / "dataset").glob("*.yaml"))


def prepare_dataset(name: str, options: Mapping[str, str]) -> str:
    """``mlfsic data prepare NAME key=value ...``: make (coco-moji) or check a dataset; the printable summary.

    ``root=DIR`` is the short form of ``dataset.root=DIR``; any other key is a key of the dataset config,
    or a short option the adapter declares in ``OPTION_KEYS`` (coco-moji: ``out=``, ``seed=``, ...).
    """
    return prepare_config(composed_config(name, options)["dataset"]).text()


def composed_config(name: str, options: Mapping[str, str]) -> dict[str, Any]:
    """The run config with dataset ``name`` (``configs/dataset/<name>.yaml``) and ``options`` as dataset keys
    (``root=DIR`` -> ``dataset.root=DIR``; an adapter's ``OPTION_KEYS`` map short names), as a plain dict."""
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
    return to_container(compose_config(overrides))
