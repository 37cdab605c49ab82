"""Suites: several sweeps run as one job (``mlfsic run +suite=NAME``; docs/architecture.md §9.1).

A suite file lists members, each a named list of Hydra overrides (dataset x backbone x embeddings, methods,
settings, seeds) composed exactly like a command line::

    # configs/suite/coco-moji-all.yaml (or any yaml file: +suite=/path/to/my_suite.yaml)
    description: coco-moji on every shipped backbone
    members:
      small-cnn: []                                   # the default sweep
      tiny-teacher-concept-seen: [+backbone=tiny-teacher]
      tiny-teacher-strict: [+backbone=tiny-teacher-strict]

A member's sweep is ``load_sweep([*member overrides, *the command line's other overrides])``: the command
line comes last, so ``mlfsic run +suite=coco-moji-all n_episodes=50 seeds=[0]`` narrows every member. Each
member is an ordinary run (its own run dir under ``results/runs/``, the run id its config derives, so a
member equal to the default sweep *is* the default run); ``runner.run_sweeps`` prepares them in turn
(features are shared where dataset and backbone match: the store is keyed by backbone id) and submits all
their method tasks as one Ray job graph with one progress display. The suite dir
``results/suites/<suite_id>/suite.json`` points at the member runs (``store.write_suite_json``); the same
command resumes every member, as a sweep resumes.

Ranking against published work, member by member (``against=``): ``against=SUITE_DIR`` gives each member the
run of the same member name in that suite dir (a suite dir made by ``mlfsic run +suite=``, or one
``publish_suite`` wrote); ``against=published`` is the repository's ``results/published_suites/<suite>``
(``mlfsic leaderboard SUITE_DIR publish=true``), where a member without overrides (the default sweep) may
fall back to ``results/published``. Each member then computes only the methods its reference lacks and is
checked against it as a sweep with ``against=`` is (``against_run``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from mlfsic.harness.config import config_dir
from mlfsic.harness.errors import MlfsicError
from mlfsic.harness.io import sha256_json
from mlfsic.harness.sweep.load import load_sweep, override_key
from mlfsic.harness.sweep.against_run import publish
from mlfsic.harness.sweep.spec import PUBLISHED_DIR, Sweep
from mlfsic.harness.sweep.store import is_suite_dir, read_suite_json, suite_run_dirs, write_suite_json

_MEMBER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
SUITE_KEYS = ("description", "members")
PUBLISHED_SUITES_DIR = PUBLISHED_DIR.parent / "published_suites"


@dataclass(frozen=True)
class SuiteMember:
    name: str
    overrides: tuple[str, ...]  # the member's own overrides (the command line's follow them)
    sweep: Sweep


@dataclass(frozen=True)
class Suite:
    name: str
    source: Path  # the suite yaml file
    overrides: tuple[str, ...]  # the command line's overrides other than +suite=
    members: tuple[SuiteMember, ...]

    @property
    def suite_id(self) -> str:
        """``<name>-<hash of the member names and run ids>``: the same command gives the same suite dir."""
        content = [[member.name, member.sweep.run_id] for member in self.members]
        return f"{self.name}-{sha256_json(content)[:12]}"

    @property
    def suite_dir(self) -> Path:
        return self.members[0].sweep.results_dir / "suites" / self.suite_id


def split_suite_override(overrides: list[str]) -> tuple[str | None, list[str]]:
    """The value of ``+suite=NAME`` (or ``suite=NAME``) and the other overrides; (None, overrides) without one."""
    name, rest = None, []
    for override in overrides:
        value = override.partition("=")[2]
        if override_key(override) == "suite":
            if name is not None:
                raise MlfsicError(f"{override}: give one +suite=NAME per command")
            name = value.strip()
            if not name:
                raise MlfsicError(f"{override}: expected +suite=NAME ({', '.join(suite_names())}) or a yaml file")
        else:
            rest.append(override)
    return name, rest


def suite_names() -> list[str]:
    return sorted(path.stem for path in (config_dir() / "suite").glob("*.yaml"))


def suite_file(name: str) -> Path:
    """``configs/suite/<name>.yaml``, or ``name`` itself when it is a path to a yaml file."""
    path = Path(name).expanduser()
    if name.endswith((".yaml", ".yml")):
        if not path.is_file():
            raise MlfsicError(f"+suite={name}: file not found")
        return path.resolve()
    packaged = config_dir() / "suite" / f"{name}.yaml"
    if not packaged.is_file():
        raise MlfsicError(f"+suite={name}: no such suite; expected one of {', '.join(suite_names())} "
                          "(configs/suite/<name>.yaml) or a path to a suite yaml file")
    return packaged


def read_suite_file(path: Path) -> dict[str, tuple[str, ...]]:
    """The members of a suite file (name -> overrides), checked; one-line errors name the file and field."""
    try:
        content = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise MlfsicError(f"{path}: cannot read the suite ({str(error).splitlines()[0]})") from None
    if not isinstance(content, dict):
        raise MlfsicError(f"{path}: expected a mapping with 'members'")
    unknown = sorted(set(content) - set(SUITE_KEYS))
    if unknown:
        raise MlfsicError(f"{path}: unknown key {unknown[0]!r}; expected {', '.join(SUITE_KEYS)}")
    members = content.get("members")
    if not isinstance(members, dict) or not members:
        raise MlfsicError(f"{path}: 'members' must map member names to lists of overrides")
    checked: dict[str, tuple[str, ...]] = {}
    for name, overrides in members.items():
        if not isinstance(name, str) or not _MEMBER_NAME.match(name):
            raise MlfsicError(f"{path}: members.{name}: a member name is letters, digits and ._+-")
        overrides = overrides or []
        if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
            raise MlfsicError(f"{path}: members.{name}: expected a list of override strings, e.g. [+backbone=tiny-teacher]")
        checked[name] = tuple(overrides)
    return checked


def load_suite(name: str, overrides: list[str]) -> Suite:
    """Every member's sweep resolved and validated before anything runs; an error names the member."""
    for override in overrides:
        if override_key(override) == "run_id":
            raise MlfsicError(f"{override}: the members of a suite derive their own run ids; drop run_id=")
    source = suite_file(name)
    against = next((o.partition("=")[2] for o in overrides if override_key(o) == "against"), None)
    others = [o for o in overrides if override_key(o) != "against"]
    members = []
    for member, member_overrides in read_suite_file(source).items():
        try:
            member_against = ([] if against in (None, "null") else
                              [f"against={_member_against(against, source.stem, member, member_overrides)}"])
            sweep = load_sweep([*member_overrides, *others, *member_against])
        except MlfsicError as error:
            raise MlfsicError(f"suite {source.stem}, member {member}: {error}") from None
        members.append(SuiteMember(member, member_overrides, sweep))
    results_dirs = {str(m.sweep.results_dir) for m in members}
    if len(results_dirs) > 1:
        raise MlfsicError(f"suite {source.stem}: the members write to different results_dir ({', '.join(sorted(results_dirs))}); "
                          "a suite has one results_dir")
    return Suite(name=source.stem, source=source, overrides=tuple(overrides), members=tuple(members))


def _member_against(value: str, suite_name: str, member: str, member_overrides: tuple[str, ...]) -> str:
    """The reference run of one member for ``against=published`` or ``against=SUITE_DIR``."""
    if value == "published":
        base = PUBLISHED_SUITES_DIR / suite_name
        if not is_suite_dir(base):
            if not member_overrides:  # the default sweep: the repository's published run
                return "published"
            raise MlfsicError(f"against=published: nothing published for this member ({base} has no suite.json); "
                              f"publish a finished suite with `mlfsic leaderboard SUITE_DIR publish=true`")
    else:
        base = Path(value).expanduser()
        if not is_suite_dir(base):
            raise MlfsicError(f"against={value}: with +suite=, expected published or a suite dir (holding "
                              "suite.json), whose members are matched by name")
    runs = dict(suite_run_dirs(base))
    if member not in runs:
        raise MlfsicError(f"against={value}: {base} has no member {member!r} (it has {', '.join(runs)})")
    return str(runs[member].resolve())


def publish_suite(suite_dir: Path, out_dir: Path) -> list[Path]:
    """Publish every member of a finished suite into ``out_dir/<member>`` (``against_run.publish``) with a
    suite.json there pointing at them, so that ``against=out_dir`` (or ``against=published`` for the default
    ``out_dir``, ``results/published_suites/<suite>``) ranks a later run of the suite member by member."""
    info = read_suite_json(suite_dir)
    written = []
    members = []
    for name, run_dir in suite_run_dirs(suite_dir):
        written += publish(run_dir, Path(out_dir) / name)
        member = next(m for m in info["members"] if m["name"] == name)
        members.append({**member, "run_dir": name})
    write_suite_json(out_dir, {**info, "members": members, "published_from": str(Path(suite_dir).resolve())})
    return [*written, Path(out_dir) / "suite.json"]


def suite_info(suite: Suite, status: str, outcomes: dict[str, Any] | None = None) -> dict[str, Any]:
    """suite.json's content: the members with their run dirs (relative to the suite dir) and status."""
    outcomes = outcomes or {}
    members = []
    for member in suite.members:
        sweep = member.sweep
        members.append({
            "name": member.name, "run_id": sweep.run_id,
            "run_dir": os.path.relpath(sweep.run_path, suite.suite_dir),
            "overrides": list(member.overrides), "dataset": sweep.dataset_name, "backbone": sweep.dataset.backbone.kind,
            **({"regime": sweep.dataset.backbone.regime} if sweep.dataset.backbone.regime else {}),
            "methods": list(sweep.methods), "settings": list(sweep.settings), "seeds": list(sweep.seeds),
            "status": outcomes.get(member.name, status),
        })
    return {"suite": suite.name, "suite_id": suite.suite_id, "source": str(suite.source),
            "overrides": list(suite.overrides), "status": status,
            "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"), "members": members}


def run_suite(suite: Suite, progress: bool = True) -> list[Any]:
    """Run (or resume) every member as one job (``runner.run_sweeps``); suite.json before and after."""
    from mlfsic.harness.sweep import runner

    write_suite_json(suite.suite_dir, suite_info(suite, "running"))
    try:
        outcomes = runner.run_sweeps([member.sweep for member in suite.members], progress=progress, desc="suite")
    except KeyboardInterrupt:
        write_suite_json(suite.suite_dir, suite_info(suite, "interrupted"))
        raise
    status = {m.name: ("failed" if o.failures else "complete") for m, o in zip(suite.members, outcomes)}
    overall = "failed" if "failed" in status.values() else "complete"
    write_suite_json(suite.suite_dir, suite_info(suite, overall, status))
    return outcomes
