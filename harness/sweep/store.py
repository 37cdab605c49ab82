"""The run directory (docs/architecture.md §4.2): finished work is written per chunk, atomically, as it arrives.

    results/runs/<run_id>/run.json              resolved config, provenance, episode sets, failures
    results/runs/<run_id>/parts/<chunk>.*       one finished evaluation chunk: records, label AP, scores
    results/runs/<run_id>/records.parquet       assembled from the parts: one row per (method, dataset,
    results/runs/<run_id>/label_ap.parquet      setting, seed, episode), failed cells left out
    results/runs/<run_id>/scores/<cell>.npz     with save_scores=true
    results/suites/<suite_id>/suite.json        a suite (``mlfsic run +suite=NAME``): its member run dirs

A chunk counts as done once its ``.records.parquet`` exists (written last) and checks out, so an interrupted
sweep is resumed by skipping done chunks. The records file's parquet metadata records the size and sha256
of the chunk's other files (label AP, scores, report); ``chunk_done`` checks them and the records file's
footer, and a part that fails (truncated, half-written, replaced) is removed with one line and recomputed.
The assembled tables hold complete, non-failed cells only (every
planned chunk done), so they never hold a partial cell or a duplicate row, during a sweep or after an
interruption.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mlfsic.harness.errors import MlfsicError
from mlfsic.harness.io import sha256_file, write_json_atomic, write_with_atomic

# records.parquet: one row per (method, dataset, setting, seed, episode). ``backbone_id``,
# ``embedding_id`` and ``protocol`` say which features, label embeddings and episode protocol a number
# was computed on: rows that differ in them are never paired or ranked together.
RECORD_COLUMNS = (
    "run_id", "method", "method_config_hash", "dataset", "setting", "k_shot", "seed", "episode_set_id",
    "episode", "map", "f1_3", "f1_5", "n_labels", "n_query", "fit_s", "predict_s", "status",
    "protocol", "backbone_id", "embedding_id",
)
# label_ap.parquet: one row per (method, dataset, setting, seed, episode, label).
LABEL_AP_COLUMNS = ("run_id", "method", "dataset", "setting", "seed", "episode_set_id", "episode", "label", "ap")


@dataclass
class ChunkResult:
    """What an evaluation task returns for one chunk of episodes; written as one part of the run dir."""

    records: pd.DataFrame  # RECORD_COLUMNS
    label_ap: pd.DataFrame  # LABEL_AP_COLUMNS
    scores: dict[str, np.ndarray] | None  # "scores", "targets", "episode" when save_scores
    task_s: float = 0.0  # wall seconds of the whole chunk (loading the fit, episodes, predict, metrics)
    task_cpu_s: float = 0.0  # CPU seconds of the evaluating process meanwhile (all its threads)
    report: dict[str, Any] = field(default_factory=dict)  # the method's ``predict_report`` for the chunk
    device: str = "cpu"  # where ``predict_batch`` computed (``evaluate.compute_device``); run.json ``devices``


def cell_key(method: str, setting: str, seed: int) -> str:
    """``<method>__<setting>__seed<k>``: the name of a cell's files."""
    return f"{method}__{setting}__seed{seed}"


def chunk_name(method: str, setting: str, seed: int, config_hash: str, chunk: int) -> str:
    """A part's name carries the method's config+code hash: a changed method never reuses stale parts."""
    return f"{cell_key(method, setting, seed)}__{config_hash[:10]}__chunk{chunk:04d}"


def assembled_cells(records: pd.DataFrame) -> set[str]:
    """The ``cell_key`` of every (method, setting, seed) in assembled records."""
    rows = records[["method", "setting", "seed"]].drop_duplicates().itertuples(index=False)
    return {cell_key(str(method), str(setting), int(seed)) for method, setting, seed in rows}


def cell_of(part_name: str) -> str:
    """``<method>__<setting>__seed<k>`` of a part name."""
    return "__".join(part_name.split("__")[:3])


PART_FILES_KEY = b"mlfsic.part_files"  # in a records part's parquet metadata: {suffix: {size, sha256}}


def chunk_done(run_path: Path, name: str) -> bool:
    """Whether chunk ``name`` is done: its records file exists and ``part_problem`` finds nothing. A damaged
    part is removed, with one line on stderr, so the chunk is computed again."""
    if not (run_path / "parts" / f"{name}.records.parquet").is_file():
        return False
    problem = part_problem(run_path, name)
    if problem is None:
        return True
    print(f"mlfsic: part {run_path / 'parts' / name}.*: {problem}; removed it, the chunk is computed again",
          file=sys.stderr, flush=True)
    _remove_part(run_path, name)
    return False


def part_problem(run_path: Path, name: str) -> str | None:
    """Why a written part is not intact, or None: an unreadable records footer (truncated, half-written or
    garbage), or a companion file missing or of another size or sha256 than the records file recorded."""
    parts = run_path / "parts"
    records = parts / f"{name}.records.parquet"
    try:
        metadata = pq.read_metadata(records)
    except (OSError, ValueError, pa.ArrowException) as error:
        return f"{records.name} is unreadable ({type(error).__name__}: {str(error).strip().splitlines()[0][:120]})"
    raw = (metadata.metadata or {}).get(PART_FILES_KEY)
    if raw is None:  # a part written before sizes were recorded: its label AP must at least be readable
        try:
            pq.read_metadata(parts / f"{name}.label_ap.parquet")
        except (OSError, ValueError, pa.ArrowException) as error:
            return f"{name}.label_ap.parquet is unreadable ({type(error).__name__})"
        return None
    try:
        files = {str(suffix): (int(item["size"]), str(item["sha256"])) for suffix, item in json.loads(raw).items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        return f"{records.name} has unreadable part metadata"
    for suffix, (size, digest) in sorted(files.items()):
        path = parts / f"{name}.{suffix}"
        if not path.is_file():
            return f"{path.name} is missing"
        if path.stat().st_size != size:
            return f"{path.name} has {path.stat().st_size} bytes where its records file says {size} (truncated?)"
        if sha256_file(path) != digest:
            return f"{path.name} has another sha256 than its records file says (modified?)"
    return None


def _remove_part(run_path: Path, name: str) -> None:
    for path in (run_path / "parts").glob(f"{name}.*"):
        path.unlink(missing_ok=True)


def write_chunk(run_path: Path, name: str, result: ChunkResult) -> None:
    """Write one finished chunk: its companion files, then the records file (last) recording their size
    and sha256 in its parquet metadata."""
    parts = run_path / "parts"
    written = []
    if result.scores is not None:
        write_with_atomic(parts / f"{name}.scores.npz", lambda tmp: _save_npz(tmp, result.scores))
        written.append("scores.npz")
    if result.report:
        write_json_atomic(parts / f"{name}.report.json", result.report)
        written.append("report.json")
    write_with_atomic(parts / f"{name}.label_ap.parquet", lambda tmp: result.label_ap.to_parquet(tmp, index=False))
    written.append("label_ap.parquet")
    files = {suffix: {"size": (parts / f"{name}.{suffix}").stat().st_size, "sha256": sha256_file(parts / f"{name}.{suffix}")}
             for suffix in written}
    table = pa.Table.from_pandas(result.records, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), PART_FILES_KEY: json.dumps(files).encode()})
    write_with_atomic(parts / f"{name}.records.parquet", lambda tmp: pq.write_table(table, tmp))


def predict_reports(run_path: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """Per cell, what the methods reported of their predictions (``Method.predict_report``, e.g. LCM's
    adaptation steps and kept fraction of positions) over the parts ``names``: counts summed, other
    numbers averaged with the chunks' ``adapted_episodes`` (or 1) as weights."""
    by_cell: dict[str, list[dict[str, Any]]] = {}
    for name in names:
        path = run_path / "parts" / f"{name}.report.json"
        if path.is_file():
            by_cell.setdefault(cell_of(name), []).append(json.loads(path.read_text()))
    out: dict[str, dict[str, Any]] = {}
    for cell, reports in sorted(by_cell.items()):
        weights = np.array([float(r.get("adapted_episodes", 1)) for r in reports])
        merged: dict[str, Any] = {"chunks": len(reports)}
        for key in reports[0]:
            values = [r.get(key) for r in reports]
            if key == "adapted_episodes":
                merged[key] = int(sum(values))
            elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values) and len(set(values)) > 1:
                merged[key] = round(float(np.average(values, weights=weights)), 6)
            else:
                merged[key] = values[0]
        out[cell] = merged
    return out


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Uncompressed: float64 scores deflate by about 5%, for about 35 ms of driver CPU per file."""
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


def assemble(run_path: Path, planned_parts: list[str], failed_cells: set[str]) -> pd.DataFrame:
    """Rebuild records.parquet, label_ap.parquet (and scores/) from the cells whose planned parts are all done.

    Failed cells, unfinished cells and parts left by an earlier version of a method are left out.
    """
    parts = run_path / "parts"
    by_cell: dict[str, list[str]] = {}
    for name in planned_parts:
        by_cell.setdefault(cell_of(name), []).append(name)
    complete = {cell for cell, names in by_cell.items()
                if cell not in failed_cells and all((parts / f"{n}.records.parquet").is_file() for n in names)}
    names = sorted(n for n in planned_parts if cell_of(n) in complete)
    records = _concat([_read_part(run_path, n, "records") for n in names], RECORD_COLUMNS)
    label_ap = _concat([_read_part(run_path, n, "label_ap") for n in names], LABEL_AP_COLUMNS)
    keys = ["method", "dataset", "setting", "seed", "episode"]
    records = records.sort_values(keys, kind="stable").reset_index(drop=True)
    if records.duplicated(keys).any():
        raise MlfsicError(f"{run_path}: duplicate records for {records[records.duplicated(keys)].iloc[0][keys].to_dict()}")
    label_ap = label_ap.sort_values(keys + ["label"], kind="stable").reset_index(drop=True)
    write_with_atomic(run_path / "records.parquet", lambda tmp: records.to_parquet(tmp, index=False))
    write_with_atomic(run_path / "label_ap.parquet", lambda tmp: label_ap.to_parquet(tmp, index=False))
    _assemble_scores(run_path, names)
    return records


def _read_part(run_path: Path, name: str, table: str) -> pd.DataFrame:
    """One table of a part; an unreadable one (damaged after it was checked) is removed and a one-line error."""
    path = run_path / "parts" / f"{name}.{table}.parquet"
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError, pa.ArrowException) as error:
        _remove_part(run_path, name)
        raise MlfsicError(f"part {path} is unreadable ({type(error).__name__}); removed it, re-run the same "
                          "`mlfsic run` command to recompute that chunk") from None


def _concat(frames: list[pd.DataFrame], columns: tuple[str, ...]) -> pd.DataFrame:
    if not frames:
        return pd.DataFrame(columns=list(columns))
    return pd.concat(frames, ignore_index=True)[list(columns)]


def _assemble_scores(run_path: Path, names: list[str]) -> None:
    """``scores/<cell>.npz`` for the assembled cells; a scores file of any other cell is removed."""
    by_cell: dict[str, list[str]] = {}
    for name in names:
        if (run_path / "parts" / f"{name}.scores.npz").is_file():
            by_cell.setdefault(cell_of(name), []).append(name)
    for cell, chunk_names in by_cell.items():
        loaded = [np.load(run_path / "parts" / f"{n}.scores.npz") for n in sorted(chunk_names)]
        arrays = {key: np.concatenate([part[key] for part in loaded]) for key in ("scores", "targets", "episode")}
        write_with_atomic(run_path / "scores" / f"{cell}.npz", lambda tmp, a=arrays: _save_npz(tmp, a))
    if (run_path / "scores").is_dir():
        for stale in (run_path / "scores").glob("*.npz"):
            if stale.stem not in by_cell:
                stale.unlink()


def write_run_json(run_path: Path, content: dict[str, Any]) -> None:
    write_json_atomic(run_path / "run.json", content)


def read_run_json(run_dir: Path, required: tuple[str, ...] = ("run_id",)) -> dict[str, Any]:
    """A run dir's run.json as a dict; a missing or unreadable file, or a missing ``required`` field, is a
    one-line MlfsicError naming the file. The one reader of run.json (``write_run_json`` the one writer)."""
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        raise MlfsicError(f"missing {path} (not a run dir made by mlfsic run?)")
    info = _read_json_object(path)
    for key in required:
        if key not in info:
            raise MlfsicError(f"{path}: missing field {key!r} (not a run dir made by mlfsic run?)")
    return info


# ----------------------------------------------------------------------------------------- incomplete runs
# A run lacks cells when it was interrupted (Ctrl-C, a killed driver) or when cells failed: records.parquet
# then holds the finished cells only. ``run_gaps`` names what is missing and the command that resumes the run;
# the leaderboard (``report``) marks such a run INCOMPLETE with both.

@dataclass(frozen=True)
class MissingCell:
    """A (method, setting, seed) cell a run planned and records.parquet lacks, and why."""

    method: str
    dataset: str
    setting: str
    seed: int
    reason: str  # "failed: <error>", or why it was not computed


@dataclass(frozen=True)
class RunGaps:
    """What a run dir lacks: its status, the planned cells missing from its records, the resume command."""

    run_id: str
    status: str  # run.json's status: running, interrupted, failed, complete ("unknown": not recorded)
    n_planned: int  # cells the sweep planned (0: not known for this run)
    n_failed: int  # cells that failed (run.json failures)
    missing: tuple[MissingCell, ...]
    resume: str | None  # the command that resumes the run; None: not known, or the run is complete

    @property
    def incomplete(self) -> bool:
        """Missing cells, or a run that did not finish (running or interrupted: what it planned may be unknown)."""
        return bool(self.missing) or self.status in ("running", "interrupted", "failed")


NOT_FINISHED = {
    "interrupted": "not finished: the run was interrupted",
    "running": "not finished: the run is still running, or its driver stopped without recording it",
}


def run_gaps(run_dir: Path) -> RunGaps:
    """The cells run ``run_dir`` planned (run.json ``planned_cells``; for a run made before they were recorded,
    its methods x settings x seeds, each method on the settings it supports) or that failed, less those in its
    records.parquet; with the reason of each (its error, or that the run did not finish) and the resume command.
    A complete run (status complete, no failure) is taken at its word."""
    info = read_run_json(run_dir)
    status = str(info.get("status") or "unknown")
    failures = {cell_key(str(f.get("method")), str(f.get("setting")), int(f.get("seed", -1))): f
                for f in info.get("failures") or [] if isinstance(f, dict)}
    planned = info.get("planned_cells")
    if not isinstance(planned, list):
        planned = sorted(_configured_cells(info)) if status != "complete" else []
    present: set[str] = set()
    if (Path(run_dir) / "records.parquet").is_file():
        records = pd.read_parquet(Path(run_dir) / "records.parquet", columns=["method", "setting", "seed", "status"])
        present = assembled_cells(records[records["status"] == "ok"])
    dataset = str((info.get("dataset") or {}).get("name")
                  or ((info.get("config") or {}).get("dataset") or {}).get("name", ""))
    missing = []
    for key in sorted((set(planned) | set(failures)) - present):
        method, setting, seed = key.rsplit("__", 2)
        failure = failures.get(key)
        reason = (f"failed: {failure.get('error')}" if failure is not None
                  else NOT_FINISHED.get(status, "not run"))
        missing.append(MissingCell(method, str(failure.get("dataset", dataset)) if failure else dataset, setting,
                                   int(seed.removeprefix("seed")), reason))
    gaps = RunGaps(run_id=str(info["run_id"]), status=status, n_planned=len(planned), n_failed=len(failures),
                   missing=tuple(missing), resume=None)
    return replace(gaps, resume=resume_command(info)) if gaps.incomplete else gaps


def _configured_cells(info: dict[str, Any]) -> set[str]:
    """The ``cell_key`` of every (method, setting, seed) run.json's config and methods describe, each method on
    the settings it supports (a method not registered here: on every setting)."""
    from mlfsic.methods.registry import get_method_class

    config = info.get("config") or {}
    settings = config.get("setting")
    seeds = [config["seed"]] if config.get("seed") is not None else config.get("seeds")
    settings = [settings] if isinstance(settings, str) else settings
    seeds = [seeds] if isinstance(seeds, int) else seeds
    if not isinstance(settings, list) or not isinstance(seeds, list):
        return set()
    cells = set()
    for name, block in (info.get("methods") or {}).items():
        try:
            cls: Any = get_method_class(str((block or {}).get("method", name)))
        except MlfsicError:  # a plug-in not importable here
            cls = None
        for setting in settings:
            if cls is None or cls.supports(str(setting)):
                cells.update(cell_key(str(name), str(setting), int(seed)) for seed in seeds)
    return cells


def resume_command(info: dict[str, Any]) -> str | None:
    """The shell command that resumes a run: its last recorded ``mlfsic run`` arguments (run.json invocations,
    from its working directory), else overrides derived from its config that compose to exactly that config
    (a run made before arguments were recorded, or by ``run_sweep`` in a script); None when neither exists."""
    for invocation in reversed(info.get("invocations") or []):
        argv = invocation.get("argv") if isinstance(invocation, dict) else None
        if isinstance(argv, list) and argv:
            command = shlex.join(["mlfsic", *(str(a) for a in argv)])
            return f"cd {shlex.quote(str(invocation['cwd']))} && {command}" if invocation.get("cwd") else command
    overrides = _derived_overrides(info.get("config"))
    return shlex.join(["mlfsic", "run", *overrides]) if overrides is not None else None


def _derived_overrides(config: Any) -> list[str] | None:
    """Hydra overrides that compose (from the default config) to ``config`` exactly, or None."""
    if not isinstance(config, dict):
        return None
    from mlfsic.harness.config import compose_config, to_container

    try:
        overrides = _overrides(to_container(compose_config([])), config)
        if to_container(compose_config(overrides)) != config:
            return None
    except MlfsicError:
        return None
    return overrides


def _overrides(defaults: dict[str, Any], config: dict[str, Any], prefix: str = "") -> list[str]:
    """``key=value`` per leaf that differs, ``+key=value`` per leaf ``defaults`` lacks, ``~key`` per leaf
    ``config`` lacks; nested mappings by dotted keys."""
    out = []
    for key, value in config.items():
        path = f"{prefix}{key}"
        if key not in defaults:
            out.append(f"+{path}={_hydra_value(value)}")
        elif isinstance(value, dict) and isinstance(defaults[key], dict):
            out += _overrides(defaults[key], value, f"{path}.")
        elif value != defaults[key]:
            out.append(f"{path}={_hydra_value(value)}")
    out += [f"~{prefix}{key}" for key in defaults if key not in config]
    return out


def _number_like(text: str) -> bool:
    """Whether Hydra would read unquoted ``text`` as null, a bool or a number."""
    if text.lower() in ("null", "true", "false", "nan", "inf"):
        return True
    try:
        float(text)
    except ValueError:
        return False
    return True


def _hydra_value(value: Any) -> str:
    """``value`` in Hydra's override syntax: null, true/false, numbers, [lists], {key:value}, strings (quoted
    unless plain words or paths)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ",".join(_hydra_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{key}:{_hydra_value(item)}" for key, item in value.items()) + "}"
    text = str(value)
    if re.fullmatch(r"[\w/][\w./-]*", text) and not _number_like(text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


# ----------------------------------------------------------------------------------------- suite dirs
# results/suites/<suite_id>/suite.json: {"suite": name, "suite_id": id, "members": [{"name", "run_id",
# "run_dir" (relative to the suite dir, so a moved results dir keeps working), "overrides", "status"}, ...]}.
# A suite's runs are ordinary run dirs under results/runs/; the suite dir only points at them.

def is_suite_dir(path: Path) -> bool:
    return (Path(path) / "suite.json").is_file()


def write_suite_json(suite_dir: Path, content: dict[str, Any]) -> None:
    write_json_atomic(Path(suite_dir) / "suite.json", content)


def read_suite_json(suite_dir: Path) -> dict[str, Any]:
    """A suite dir's suite.json, checked: every member names a run dir. One-line MlfsicError naming the file."""
    path = Path(suite_dir) / "suite.json"
    if not path.is_file():
        raise MlfsicError(f"missing {path} (not a suite dir made by mlfsic run +suite=...?)")
    info = _read_json_object(path)
    members = info.get("members")
    if not isinstance(members, list) or not members:
        raise MlfsicError(f"{path}: field 'members' must be a non-empty list")
    for index, member in enumerate(members):
        if not isinstance(member, dict) or not isinstance(member.get("name"), str) or not isinstance(member.get("run_dir"), str):
            raise MlfsicError(f"{path}: members[{index}] needs a 'name' and a 'run_dir' string")
    return info


def suite_run_dirs(suite_dir: Path) -> list[tuple[str, Path]]:
    """(member name, run dir) per member of a suite, in the suite's order."""
    info = read_suite_json(suite_dir)
    return [(member["name"], Path(suite_dir) / member["run_dir"]) for member in info["members"]]


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as error:
        raise MlfsicError(f"{path}: cannot read ({error})") from None
    except json.JSONDecodeError as error:
        raise MlfsicError(f"{path}: invalid JSON ({error.msg} at line {error.lineno})") from None
    if not isinstance(info, dict):
        raise MlfsicError(f"{path}: expected a JSON object, found {type(info).__name__}")
    return info
