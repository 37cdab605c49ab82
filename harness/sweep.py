"""The sweep, resolved once: a typed, frozen description of what ``mlfsic run`` / ``mlfsic episodes`` do.

The command line is composed by Hydra (``harness.config.compose_config``) and turned into a ``Sweep`` by
``resolve_sweep`` at the CLI boundary. Everything after that (runner, episode sets, tasks) reads the
``Sweep``, never the OmegaConf object::

    sweep = resolve_sweep(compose_config(["method=[protonet]", "seeds=[0]"]))   # or load_sweep([...])
    run_sweep(sweep)

``resolve_sweep`` also validates every key: a bad value ends in one ``MlfsicError`` line naming the key,
the value and what is accepted, before any work starts and before anything is written.

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
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mlfsic.harness.config import compose_config, method_yaml, to_container
from mlfsic.harness.errors import MlfsicError
from mlfsic.harness.io import sha256_json

# Keys that do not change what a sweep computes: left out of the run id.
RUN_ID_IGNORED_KEYS = ("ray", "resources", "results_dir", "run_id", "max_retries")


@dataclass(frozen=True)
class RayOptions:
    """How the driver reaches Ray: a cluster at ``address``, or a local Ray with these limits."""

    address: str | None = None
    num_cpus: int | None = None  # local Ray only; None: all cores
    object_store_memory: int = 300_000_000  # bytes, local Ray only


@dataclass(frozen=True)
class TaskResources:
    """Resources of every task of the sweep."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0


@dataclass(frozen=True)
class EmbeddingOptions:
    encoder: str = "minilm"
    path: str | None = None


@dataclass(frozen=True)
class SweepMethod:
    """One entry of ``method``: a registered method or a variant of one, with its hyperparameters.

    ``config`` holds the values the run sets (yaml, ``method_args``, the variant's); the constructor
    defaults are filled in by ``harness.evaluate.method_spec``.
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
    ray: RayOptions
    resources: TaskResources
    embeddings: EmbeddingOptions
    dataset: dict[str, Any]  # the dataset config, ``root`` made absolute
    method_modules: tuple[str, ...]
    config: dict[str, Any]  # the resolved config as composed (run.json["config"], the run id)

    @property
    def dataset_name(self) -> str:
        return str(self.dataset["name"])

    @property
    def cache_root(self) -> Path:
        return self.results_dir / "cache"

    @property
    def run_path(self) -> Path:
        return self.results_dir / "runs" / self.run_id

    def dataset_config(self) -> DictConfig:
        """The dataset config as the dataset loaders (``harness.prepare``) read it."""
        return OmegaConf.create(self.dataset)

    def as_dictconfig(self) -> DictConfig:
        """The resolved config for code that still reads a DictConfig (``harness.prepare``)."""
        return OmegaConf.create({**self.config, "results_dir": str(self.results_dir), "dataset": self.dataset})


def derive_run_id(config: Mapping[str, Any]) -> str:
    """``run_id`` if set, else ``<dataset>-<hash of the resolved config minus RUN_ID_IGNORED_KEYS>``.

    Keys added after run ids were first derived (``variants``) count only when set, so a config that
    does not use them keeps its run id.
    """
    if config.get("run_id"):
        return str(config["run_id"])
    content = {k: v for k, v in config.items() if k not in RUN_ID_IGNORED_KEYS}
    if not content.get("variants"):
        content.pop("variants", None)
    return f"{config['dataset']['name']}-{sha256_json(content)[:12]}"


def load_sweep(overrides: Sequence[str] = ()) -> Sweep:
    """``resolve_sweep(compose_config(overrides))``."""
    return resolve_sweep(compose_config(list(overrides)))


def resolve_sweep(cfg: DictConfig | Mapping[str, Any]) -> Sweep:
    """Validate the composed config and resolve it into a ``Sweep`` (one-line MlfsicError on a bad value)."""
    config = to_container(cfg) if isinstance(cfg, DictConfig) else dict(cfg)
    from mlfsic.methods.api import parse_setting

    settings = tuple(str(s) for s in _as_list(config.get("setting")))
    for setting in settings:
        parse_setting(setting)
    seed = config.get("seed")
    seeds = (int(seed),) if seed is not None else tuple(int(s) for s in _as_list(config.get("seeds")))
    eval_split = str(config["eval_split"])
    if eval_split not in ("base", "val", "test"):
        raise MlfsicError(f"eval_split {eval_split!r} must be one of base, val, test")
    methods = _resolve_methods(config)
    ray_cfg, resources, embeddings = config["ray"], config["resources"], config["embeddings"]
    dataset = dict(config["dataset"])
    dataset["root"] = str(Path(str(dataset["root"])).resolve())
    return Sweep(
        methods=methods,
        settings=settings,
        seeds=seeds,
        n_episodes=int(config["n_episodes"]),
        n_query=int(config["n_query"]),
        n_way=None if config.get("n_way") is None else int(config["n_way"]),
        protocol=str(config["protocol"]),
        eval_split=eval_split,
        results_dir=Path(str(config["results_dir"])).resolve(),
        run_id=derive_run_id(config),
        save_scores=bool(config["save_scores"]),
        chunk_episodes=int(config["chunk_episodes"]),
        max_retries=int(config["max_retries"]),
        ray=RayOptions(address=ray_cfg.get("address") or None,
                       num_cpus=int(ray_cfg["num_cpus"]) if ray_cfg.get("num_cpus") else None,
                       object_store_memory=int(ray_cfg["object_store_memory"])),
        resources=TaskResources(num_cpus=float(resources.get("num_cpus") or 1),
                                num_gpus=float(resources.get("num_gpus") or 0)),
        embeddings=EmbeddingOptions(encoder=str(embeddings["encoder"]), path=embeddings.get("path")),
        dataset=dataset,
        method_modules=tuple(str(m) for m in _as_list(config.get("method_modules"))),
        config=config,
    )


def _as_list(value: Any) -> list[Any]:
    """A scalar override (``setting=1shot``) and a list override (``setting=[1shot,5shot]``) alike."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _resolve_methods(config: Mapping[str, Any]) -> dict[str, SweepMethod]:
    from mlfsic.methods.registry import available_methods, get_method_class

    for module in _as_list(config.get("method_modules")):
        try:
            importlib.import_module(str(module))
        except ImportError as error:
            raise MlfsicError(f"method_modules: cannot import {module!r}: {error}") from None
    names = [str(n) for n in _as_list(config.get("method"))]
    if names == ["all"]:
        names = list(available_methods())
    method_args = config.get("method_args") or {}
    methods = {}
    for name in names:
        get_method_class(name)
        values = {**method_yaml(name), **(method_args.get(name) or {})}
        methods[name] = SweepMethod(name=name, base=name, config=values)
    return methods

