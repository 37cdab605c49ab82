"""The run config's schema: every key of ``mlfsic run``, its type and its default, declared once (``RunConfig``).

Hydra composes ``RunConfig`` first (``configs/config.yaml`` names it in its defaults list as ``run_schema``),
then the dataset group, presets and command-line overrides on top. OmegaConf checks every value against its
field's type, refuses a key the schema does not have and fills in the defaults, so ``configs/config.yaml`` only
chooses (the dataset) and documents (its ``#: key: default`` lines; tests/test_config_schema.py checks they are
these). ``harness.config`` turns OmegaConf's errors into one line (``translate``, ``unknown_key`` with "did you
mean"), takes booleans only as true/false (``check_boolean_overrides``: OmegaConf would read yes/1 as true) and
applies ``~key`` itself. ``validate`` (``resolve_sweep``) runs the same check on what was composed or on a plain
mapping (a config given a reference run's episode keys, ``harness.sweep.load``), refusing a deleted key too.

Each field's ``metadata`` says what is accepted (``expected``, the text of the one-line error) and the domain
checks that a type cannot express: ``min`` (an integer's lower bound) and ``choices``; ``check_scalars``
applies them. The checks that need the registries (methods, variants, backbone kinds, dataset adapters) or the
file system stay in ``harness.sweep.spec``.

What stays open (``Any`` or ``dict[str, Any]``), and why:

* ``dataset``: its keys depend on the adapter (``sources``, ``sets``, ``generate``, ...) and on the backbone
  kind (``dataset.backbone.*``), and plug-ins add adapters and kinds; a schema would have to enumerate the
  plug-ins. ``spec._dataset`` checks the keys every dataset has; the adapter checks its own
  (``datasets.registry.check_files``) and the kind its backbone keys (``backbones.kinds.check_backbone_keys``,
  ``SmallCnnSettings`` ...).
* ``method_args`` and ``variants``: hyperparameters of registered methods, checked against each constructor's
  signature (``spec.check_hyperparameters``).
* ``method``, ``method_modules``, ``setting``, ``seeds``: a scalar or a list (``setting=1shot`` and
  ``setting=[1shot,5shot]`` alike), checked by ``spec``.

The types keep what Hydra composed before there was a schema (integers stay integers, ``task_timeout_s`` and
the ``resources`` amounts become floats, keys the run id ignores), so run ids do not move
(tests/test_sweep.py pins them).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mlfsic.harness.errors import MlfsicError, invalid_value
from mlfsic.harness.protocol.episodes import PROTOCOLS

# The name ``configs/config.yaml`` gives the schema in its defaults list (Hydra's ConfigStore).
SCHEMA_NAME = "run_schema"
OBJECT_STORE_MINIMUM_BYTES = 75 * 1024 * 1024  # Ray's minimum (ray_constants.OBJECT_STORE_MINIMUM_MEMORY_BYTES)
EVAL_SPLITS = ("test", "val", "base")


def _key(default: Any, expected: str, **checks: Any) -> Any:
    """A field with its default, what is accepted (``expected``) and its domain checks (``min``, ``choices``)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"expected": expected, **checks})
    return field(default=default, metadata={"expected": expected, **checks})


def _integer(default: int | None, minimum: int, expected: str | None = None) -> Any:
    return _key(default, expected or f"an integer >= {minimum}", min=minimum)


def _amount(default: float | None, what: str) -> Any:
    """A per-task ``num_cpus`` (> 0) or ``num_gpus`` (>= 0) of ``resources``."""
    expected = f"a number {'> 0' if what == 'cpus' else '>= 0'} per task (a fraction, or a whole number above 1)"
    return _key(default, expected if default is not None else f"null (the default) or {expected}")


@dataclass
class EmbeddingsConfig:
    """``embeddings``: the label-name encoder (``harness.backbones.embeddings.ENCODERS``)."""

    encoder: str = _key("minilm", "one of the encoders (minilm, glove, hf, clip)")
    path: str | None = _key(None, "null or a GloVe text file / a local Hugging Face model directory")


@dataclass
class RayConfig:
    """``ray``: how the driver reaches Ray: a cluster at ``address``, or a local Ray with these limits."""

    address: str | None = _key(None, "null (start a local Ray), auto, or host:port of a cluster's head")
    num_cpus: int | None = _integer(None, 1, "null (all cores) or an integer >= 1")
    object_store_memory: int = _integer(300_000_000, OBJECT_STORE_MINIMUM_BYTES,
                                        f"bytes, an integer >= {OBJECT_STORE_MINIMUM_BYTES} (Ray's minimum, 75 MiB)")


@dataclass
class StageConfig:
    """``resources.<stage>``: a stage's own request; null takes the default (``spec.StageResources``)."""

    num_cpus: float | None = _amount(None, "cpus")
    num_gpus: float | None = _amount(None, "gpus")


@dataclass
class ResourcesConfig:
    """``resources``: what each task asks Ray for (``spec.StageResources`` documents the precedence)."""

    num_cpus: float = _amount(1.0, "cpus")
    num_gpus: float = _amount(0.0, "gpus")
    extract: StageConfig = field(default_factory=StageConfig)
    fit: StageConfig = field(default_factory=StageConfig)
    evaluate: StageConfig = field(default_factory=StageConfig)


@dataclass
class RunConfig:
    """Every run-config key with its type and default; configs/config.yaml documents what each means."""

    method: Any = _key("all", "all, or a list of registered methods")
    method_modules: Any = _key([], "a list of importable modules (on PYTHONPATH) that @register methods")
    setting: Any = _key(["0shot", "1shot", "5shot"], "a setting or a list of distinct settings <K>shot")
    seeds: Any = _key([0, 1, 2], "a seed or a list of distinct seeds (integers >= 0)")
    n_episodes: int = _integer(600, 1)
    protocol: str = _key("release", f"one of {', '.join(PROTOCOLS)}", choices=PROTOCOLS)
    n_way: int | None = _integer(None, 1, "null (all labels) or an integer >= 1")
    n_query: int = _integer(4, 1)
    eval_split: str = _key("test", f"one of {', '.join(EVAL_SPLITS)}", choices=EVAL_SPLITS)
    fit_val: bool = _key(False, "true or false")
    results_dir: str = _key("results", "a directory (created when missing) for runs, episodes, cache and "
                            "generated data")
    run_id: str | None = _key(None, "null (derived from the config) or a directory name")
    seed: int | None = _integer(None, 0, "null (use seeds) or one seed, an integer >= 0")
    save_scores: bool = _key(False, "true or false")
    chunk_episodes: int = _integer(100, 1)
    max_retries: int = _integer(3, 0)
    task_timeout_s: float | None = _key(14400.0, "a number of seconds > 0, or null (no bound)")
    against: str | None = _key(None, "null, published or a run dir")
    embeddings: EmbeddingsConfig = field(default_factory=EmbeddingsConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    method_args: dict[str, Any] = _key({}, "a mapping <method>: {<hyperparameter>: <value>}")
    variants: dict[str, Any] = _key({}, "a mapping <variant name>: {method: <registered method>, ...}")
    dataset: Any = _key(MISSING, "a dataset config name (dataset=coco-moji, dataset=coco)")


def register() -> None:
    """Put ``RunConfig`` in Hydra's ConfigStore under ``SCHEMA_NAME`` (config.yaml's defaults list names it)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=SCHEMA_NAME, node=RunConfig)


# ----------------------------------------------------------------------------------------- lookups
@functools.lru_cache(maxsize=1)
def _sections() -> dict[str, type]:
    """Dotted key -> the dataclass of that section: ``""`` -> RunConfig, ``"resources.fit"`` -> StageConfig."""
    sections: dict[str, type] = {"": RunConfig}
    queue = [("", RunConfig)]
    while queue:
        prefix, cls = queue.pop()
        for name, kind in typing.get_type_hints(cls).items():
            if dataclasses.is_dataclass(kind):
                key = f"{prefix}{name}"
                sections[key] = kind
                queue.append((key + ".", kind))
    return sections


def top_level_keys() -> tuple[str, ...]:
    """The keys of the run config, in the schema's order."""
    return tuple(f.name for f in dataclasses.fields(RunConfig))


def section_keys(section: str) -> tuple[str, ...] | None:
    """The keys of a section (``ray``, ``resources.fit``); None when ``section`` is not one."""
    cls = _sections().get(section)
    return None if cls is None else tuple(f.name for f in dataclasses.fields(cls))


def leaf_keys() -> tuple[str, ...]:
    """Every dotted key that holds a value (``n_episodes``, ``resources.fit.num_gpus``), in the schema's order."""
    keys = []
    for section, cls in _sections().items():
        hints = typing.get_type_hints(cls)
        keys += [f"{section}.{f.name}" if section else f.name for f in dataclasses.fields(cls)
                 if not dataclasses.is_dataclass(hints[f.name])]
    return tuple(keys)


def schema_field(key: str) -> dataclasses.Field | None:
    """The field of a dotted key (``ray.num_cpus``); None for a key inside an open mapping or no key at all."""
    section, _, name = key.rpartition(".")
    cls = _sections().get(section)
    if cls is None:
        return None
    return next((f for f in dataclasses.fields(cls) if f.name == name), None)


def first_unknown(key: str) -> str | None:
    """The shortest prefix of a dotted key that the schema does not have (``resources.fitt`` of
    ``resources.fitt.num_gpus``); None when every part is known or the key goes into an open mapping."""
    parts = key.split(".")
    sections = _sections()
    for depth in range(len(parts)):
        section = ".".join(parts[:depth])
        if section not in sections:
            return None
        if parts[depth] not in section_keys(section):
            return ".".join(parts[:depth + 1])
    return None


def expected(key: str) -> str:
    """What ``key`` accepts, as the one-line error says it."""
    found = schema_field(key)
    if found is None:
        return "a key of the run config"
    if key in _sections():
        return "a mapping with keys " + ", ".join(f"{key}.{k}" for k in section_keys(key) or ())
    return found.metadata["expected"]


def unknown_key(key: str, value: Any, override: str | None = None) -> MlfsicError:
    """The one line of a key the schema does not have, with the closest known key and the known ones."""
    section, _, name = key.rpartition(".")
    known = section_keys(section) or ()
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {f'{section}.' if section else ''}{close[0]}?)" if close else ""
    listed = ", ".join(f"{section}.{k}" if section else k for k in known)
    where = override or key
    if override is None:
        return invalid_value(key, value, f"one of {listed}", f"unknown config key {key!r}{hint}")
    return MlfsicError(f"{where}: unknown config key {key!r}{hint}; expected one of {listed}")


# ----------------------------------------------------------------------------------------- checks
def translate(error: OmegaConfBaseException, value: Any = None, override: str | None = None) -> MlfsicError:
    """OmegaConf's ValidationError / ConfigKeyError on the schema -> one ``invalid_value`` line."""
    key = str(getattr(error, "full_key", "") or getattr(error, "key", "") or "")
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if type(error).__name__ == "ConfigKeyError":
        return unknown_key(key, value, override)
    found = schema_field(key)
    if found is None:
        return MlfsicError(f"{override or key}: {text}")
    if key in _sections():
        return invalid_value(key, value, expected(key), "not a mapping")
    kind = _type_name(typing.get_type_hints(_sections()[key.rpartition('.')[0]])[found.name])
    return invalid_value(key, value, expected(key), f"{value!r} is not {kind}")


def _type_name(kind: Any) -> str:
    inner = [arg for arg in typing.get_args(kind) if arg is not type(None)] or [kind]
    return {int: "an integer", float: "a number", bool: "a boolean", str: "a string"}.get(inner[0], "of its type")


def validate(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` checked against the schema: no key missing (``~key``), no unknown key, every value of its type,
    and the ``min`` / ``choices`` of each field (``check_scalars``); raises one MlfsicError line. Returns the
    values as the schema types them (a composed config's own; a plain mapping's ``"2"`` of a float key: 2.0)."""
    check_present(config, RunConfig, "")
    try:
        typed = OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(RunConfig), dict(config)))
    except OmegaConfBaseException as error:
        raise translate(error, _value_at(config, str(getattr(error, "full_key", "") or ""))) from None
    assert isinstance(typed, dict)
    check_scalars(typed, RunConfig, "")
    return typed


def check_present(config: Mapping[str, Any], cls: type, prefix: str) -> None:
    """A key of the schema absent from ``config`` (deleted with ``~key``) is an error, at any depth, and so is a
    section (``ray``, ``resources.fit``) that is not a mapping."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if f.name not in config:
            raise MlfsicError(f"{key}: the config key is missing (deleted with ~{key}?); expected a value, "
                              f"as configs/config.yaml documents")
        if dataclasses.is_dataclass(hints[f.name]):
            if not isinstance(config[f.name], Mapping):
                raise invalid_value(key, config[f.name], expected(key), "not a mapping")
            check_present(config[f.name], hints[f.name], key + ".")


def check_scalars(config: Mapping[str, Any], cls: type, prefix: str) -> None:
    """The ``min`` and ``choices`` of every field of ``cls`` (sections included) on ``config``'s values."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key, value = f"{prefix}{f.name}", config.get(f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            if isinstance(value, Mapping):
                check_scalars(value, hints[f.name], key + ".")
            continue
        check_value(key, value)


def check_value(key: str, value: Any) -> Any:
    """One value against its field's ``min`` / ``choices`` (null passes where the type is Optional)."""
    found = schema_field(key)
    if found is None or value is None:
        return value
    if "choices" in found.metadata and value not in found.metadata["choices"]:
        raise invalid_value(key, value, expected(key), f"{value!r} is not known")
    if "min" in found.metadata:
        if isinstance(value, bool) or not isinstance(value, int):
            raise invalid_value(key, value, expected(key), f"{value!r} is not an integer")
        if value < found.metadata["min"]:
            raise invalid_value(key, value, expected(key), f"{value} is below {found.metadata['min']}")
    return value


def check_boolean_overrides(overrides: Mapping[str, Any]) -> None:
    """``save_scores=yes``: OmegaConf would read yes/no/on/off/1/0 as a boolean; the run config takes only true
    or false, as before the schema. ``overrides``: key -> the value Hydra parsed."""
    for key, value in overrides.items():
        found = schema_field(key)
        if found is None or value is None or isinstance(value, bool):
            continue
        section = _sections().get(key.rpartition(".")[0])
        if section is not None and typing.get_type_hints(section)[found.name] is bool:
            raise invalid_value(key, value, "true or false", f"{value!r} is not a boolean")


def _value_at(config: Mapping[str, Any], key: str) -> Any:
    value: Any = config
    for part in key.split(".") if key else []:
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def defaults() -> dict[str, Any]:
    """The schema's defaults as a plain mapping (``dataset`` left out: a config group chooses it)."""
    container = OmegaConf.to_container(OmegaConf.structured(RunConfig))
    assert isinstance(container, dict)
    container.pop("dataset")
    return container

