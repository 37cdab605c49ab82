"""Configuration: Hydra composition of the run config and the pieces derived from it.

The config tree ships inside the package (``mlfsic.configs``), so ``mlfsic`` works from any directory:

    configs/config.yaml          run-level keys (method, setting, seeds, n_episodes, ray, resources, ...)
    configs/dataset/<name>.yaml  one file per dataset (a Hydra group: ``dataset=coco``)
    configs/methods/<name>.yaml  hyperparameters of built-in method ``<name>`` (constructor keyword arguments)
    configs/sweep/<name>.yaml    sweep presets (``+sweep=<name>``, ``# @package _global_``): method, variants, ...
    configs/splits/*.json        label splits (docs/architecture.md §5.1)
    configs/reference/*.yaml     paper-reported numbers with citations

Method hyperparameters are deliberately *not* a Hydra group: ``method=[lcm,protonet]`` is a plain list
override, and a group named ``method`` would capture it. Override a hyperparameter with
``+method_args.<name>.<key>=<value>``.

Every run-config key's type and default are declared once, in the schema ``harness.config_schema.RunConfig``,
which Hydra composes first (config.yaml's defaults list names it ``run_schema``); OmegaConf refuses a value of
the wrong type or an unknown key while composing, and ``_explain`` turns that into one MlfsicError line. The
composed config is read once, by ``harness.sweep.resolve_sweep``, into a typed ``Sweep``.
"""

from __future__ import annotations

import functools
import importlib.resources
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from mlfsic.harness.errors import MlfsicError
from mlfsic.harness import config_schema as schema


def config_dir() -> Path:
    return Path(str(importlib.resources.files("mlfsic.configs")))


def compose_config(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Compose ``configs/config.yaml`` with command-line overrides; errors become one-line MlfsicErrors.

    Each override is parsed on its own first, so a syntax error names the override at fault. Types and keys
    are checked here, against the schema; the values' domains later, by ``harness.sweep.resolve_sweep``.
    """
    given = [str(o) for o in overrides]
    parsed = {override: _parse_override(override) for override in given}
    schema.check_boolean_overrides({p.key_or_group: _parsed_value(p) for p in parsed.values()})
    deleted = [o for o in given if o.startswith("~") and "=" not in o and schema.schema_field(o[1:]) is not None]
    with tempfile.TemporaryDirectory(prefix="mlfsic-config-") as extra_dir:
        composed = [_backbone_override(_dataset_file_override(o, Path(extra_dir))) for o in given if o not in deleted]
        if any(o != c for o, c in zip(given, composed) if o.startswith("dataset=")):
            composed.append(f"hydra.searchpath=[file://{extra_dir}]")
        cfg = _compose(composed, parsed)
    _delete_schema_keys(cfg, [o[1:] for o in deleted])
    _kind_defaults(cfg, given)
    return cfg


def _delete_schema_keys(cfg: DictConfig, keys: list[str]) -> None:
    """``~<key>`` of a schema key, applied after composition (Hydra does not delete a structured config's field):
    the key is gone, so ``resolve_sweep`` names it as missing, and a recorded config made before a key existed
    (``~resources.extract``) composes again (``sweep.store``'s derived command)."""
    for key in keys:
        parent_key, _, name = key.rpartition(".")
        parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
        if not isinstance(parent, DictConfig) or name not in parent:
            raise MlfsicError(f"~{key}: {key} is not in the config (deleted twice?); expected a key of the config")
        with open_dict(parent):
            del parent[name]


def _parsed_value(parsed: Any) -> Any:
    try:
        return parsed.value()
    except Exception:  # noqa: BLE001 - a value Hydra cannot give back (an interpolation): left to composition
        return None


def _compose(overrides: list[str], parsed: dict[str, Any]) -> DictConfig:
    schema.register()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
            cfg = compose(config_name="config", overrides=overrides)
        OmegaConf.resolve(cfg)
    except MissingConfigException as error:
        group, _, name = str(error.missing_cfg_file or "").rpartition("/")
        options = ", ".join(sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))) or "(none)"
        if group:
            raise MlfsicError(f"{group}={name}: no such {group} config; expected one of {options} "
                              f"(configs/{group}/<name>.yaml)") from None
        raise MlfsicError(f"bad config override ({' '.join(overrides)}): {_first_line(error)}") from None
    except (HydraException, OmegaConfBaseException, ValueError, TypeError, KeyError) as error:
        raise MlfsicError(_explain(error, parsed)) from None
    return cfg


# ----------------------------------------------------------------------------------------- dataset files
def _dataset_file_override(override: str, extra_dir: Path) -> str:
    """``dataset=PATH.yaml`` (a dataset config of one's own) -> ``dataset=<name>`` of a copy in ``extra_dir``,
    which ``compose_config`` puts on Hydra's search path; any other override unchanged.

    A value with a ``/`` or ending in ``.yaml``/``.yml`` is a path; a missing file is a one-line error.
    """
    key, sep, value = override.partition("=")
    if key != "dataset" or not sep or not ("/" in value or value.endswith((".yaml", ".yml"))):
        return override
    path = Path(value).expanduser()
    if not path.is_file():
        raise MlfsicError(f"dataset={value}: file {path.resolve()} not found; expected a dataset name "
                          f"({', '.join(sorted(p.stem for p in (config_dir() / 'dataset').glob('*.yaml')))}) or a "
                          "dataset yaml file (docs/architecture.md §6.1)")
    name = f"file-{path.stem}"
    (extra_dir / "dataset").mkdir(exist_ok=True)
    shutil.copyfile(path, extra_dir / "dataset" / f"{name}.yaml")
    return f"dataset={name}"


def _dataset_yaml(overrides: list[str]) -> dict[str, Any]:
    """The dataset config file the overrides choose (the last ``dataset=``, else config.yaml's default), as
    written: before any override."""
    chosen = next((o.partition("=")[2] for o in reversed(overrides) if o.partition("=")[0].lstrip("+") == "dataset"),
                  None)
    if chosen is None:
        chosen = next(entry["dataset"] for entry in _config_yaml().get("defaults", [])
                      if isinstance(entry, dict) and "dataset" in entry)
    path = Path(chosen).expanduser() if "/" in chosen or chosen.endswith((".yaml", ".yml")) else (
        config_dir() / "dataset" / f"{chosen}.yaml")
    loaded = yaml.safe_load(path.read_text()) if path.is_file() else None
    return loaded if isinstance(loaded, dict) else {}


# ----------------------------------------------------------------------------------------- backbone keys
BACKBONE_KEY = "dataset.backbone."


def _backbone_override(override: str) -> str:
    """``dataset.backbone.<key>=<value>`` (with or without ``+``) -> ``++...``: every kind's keys are settable
    on every dataset, whether or not its yaml has them; ``resolve_sweep`` then refuses a key the kind does
    not read (``backbones.kinds.check_backbone_keys``)."""
    bare = override.lstrip("+")
    if bare.startswith(BACKBONE_KEY) and "=" in bare and not override.startswith("~"):
        return "++" + bare
    return override


def _backbone_keys_given(overrides: list[str]) -> set[str]:
    """The ``dataset.backbone`` keys the user chose: set on the command line or by a ``backbone=`` preset."""
    keys = set()
    for override in overrides:
        key, _, value = override.lstrip("+").partition("=")
        if key.startswith(BACKBONE_KEY):
            keys.add(key[len(BACKBONE_KEY):].split(".")[0])
        elif key == "backbone":
            preset = config_dir() / "backbone" / f"{value}.yaml"
            keys.update((yaml.safe_load(preset.read_text()) or {}) if preset.is_file() else {})
    return keys


def _kind_defaults(cfg: DictConfig, overrides: list[str]) -> None:
    """A backbone kind switched on a dataset (``dataset.backbone.kind=resnet50`` on coco-moji, or a
    ``+backbone=`` preset) starts from that kind's defaults: the dataset yaml's backbone keys the user did not
    set again are dropped (e.g. coco-moji's 96 px and the SmallCNN's training keys for a resnet50)."""
    written = _dataset_yaml(overrides).get("backbone")
    backbone = cfg.get("dataset", {}).get("backbone") if isinstance(cfg.get("dataset"), DictConfig) else None
    if not isinstance(written, dict) or not isinstance(backbone, DictConfig) or backbone.get("kind") == written.get("kind"):
        return
    keep = _backbone_keys_given(overrides) | {"kind"}
    with open_dict(backbone):
        for key in [k for k in written if k not in keep and k in backbone]:
            del backbone[key]


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _parse_override(override: str) -> Any:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    expected = "key=value, e.g. seeds=[0,1,2] or +method_args.protonet.lr=0.01 (quote a value holding spaces)"
    try:
        parsed = OverridesParser.create().parse_overrides([override])[0]
    except Exception as error:  # noqa: BLE001 - Hydra's grammar errors come in several types
        message = _first_line(error)
        if message.startswith("Error parsing override"):  # the next line says what is wrong
            lines = str(error).strip().splitlines()
            message = lines[1] if len(lines) > 1 else message
        raise MlfsicError(f"override {override!r}: not valid override syntax ({message}); expected {expected}") from None
    if not parsed.key_or_group:
        raise MlfsicError(f"override {override!r}: no key before '='; expected {expected}")
    if parsed.is_sweep_override():
        raise MlfsicError(f"override {override!r}: {parsed.key_or_group} takes one value per run; expected a list "
                          f"{parsed.key_or_group}=[a,b] (quote a string holding commas)")
    return parsed


def _explain(error: BaseException, parsed: dict[str, Any]) -> str:
    """One line naming the override behind a composition error."""
    text = str(error).strip()
    cause = _schema_error(error)
    if cause is not None and (getattr(cause, "full_key", None) or getattr(cause, "key", None)):
        key = str(getattr(cause, "full_key", None) or getattr(cause, "key", None))
        override = _override_of(key, parsed)
        if type(cause).__name__ == "ValidationError" and schema.schema_field(key) is not None:
            given = parsed[override].value() if override in parsed else getattr(cause, "value", None)
            return str(schema.translate(cause, given))
    match = re.search(r"Could not (?:override|append to config\.|delete from config\.) '([^']+)'", text)
    if match is None:
        match = re.search(r"Could not \w+ '([^']+)'", text)
    if match is None and cause is not None and type(cause).__name__ == "ConfigKeyError":
        match = re.search(r"full_key: (\S+)", str(cause))
    if match:
        key = match.group(1)
        override = _override_of(key, parsed)
        top = key.split(".")[0]
        unknown = schema.first_unknown(key)
        if unknown is not None:
            return str(schema.unknown_key(unknown, None, override))
        if top in ("method_args", "variants"):  # open mappings: a new entry takes a leading +
            return f"{override}: {key!r} is not in the config yet; expected +{override.lstrip('+')} to add it"
        return (f"{override}: unknown config key {key!r}; expected a key that configs/config.yaml or "
                f"configs/{top}/*.yaml defines")
    if isinstance(error, OmegaConfBaseException) and "Interpolation" in type(error).__name__:
        culprits = [o for o in parsed if "${" in o]
        where = culprits[0] if culprits else " ".join(parsed)
        return f"{where}: {_first_line(error)}; expected an interpolation ${{key}} of an existing key"
    return f"bad config override ({' '.join(parsed)}): {_first_line(error)}"


def _schema_error(error: BaseException) -> OmegaConfBaseException | None:
    """The OmegaConf error behind a Hydra composition error (Hydra wraps it), or None."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OmegaConfBaseException) and type(seen).__name__ in ("ValidationError", "ConfigKeyError"):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _override_of(key: str, parsed: dict[str, Any]) -> str:
    """The override that set ``key`` (as typed), else ``key`` itself."""
    return next((o for o, p in parsed.items() if p.key_or_group.lstrip("+~") == key), key)


@functools.lru_cache(maxsize=1)
def _config_yaml() -> dict[str, Any]:
    return yaml.safe_load((config_dir() / "config.yaml").read_text()) or {}


def top_level_keys() -> tuple[str, ...]:
    """The keys of the run config: the fields of the schema (``harness.config_schema.RunConfig``)."""
    return schema.top_level_keys()


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


