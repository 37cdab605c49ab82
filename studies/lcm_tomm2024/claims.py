"""``mlfsic claims``: the abstract's claims of Yan et al. (TOMM 2024) tested on two run dirs (the command:
``harness/cli/claims.py``; the generic pieces it uses, the paired bootstrap and the run dir, stay in the harness).

Two runs hold the evidence:

    ablation   a val-split run of ``configs/sweep/lcm_ablation.yaml`` (``mlfsic run +sweep=lcm_ablation``,
               published with ``mlfsic leaderboard results/runs/<run_id> publish=true
               out=results/published_ablation``); default ``results/published_ablation``
    ranking    the published novel-split (``eval_split=test``) run of ``make run``; default ``results/published``

``CLAIMS`` is the table of claims, one ``Claim`` each: which run, which method, compared with which
methods (``versus``; empty: every other method of the setting except ``exclude``, and except a method that
is the claimed method itself in that setting, ``same_model``: wvga's 0-shot is lcm's) and in which settings.
The ranking claim compares lcm with every method of the published run, the linear-probe control included.
Every comparison pairs the two methods' per-episode mAP over their shared episodes (same setting, seed,
episode set and episode index; an episode where either mAP is undefined is left out) and gives the mean
difference ``method - other`` in mAP points, its 95% percentile interval and a two-sided p-value from the
paired bootstrap of ``report.intervals``: hierarchical (resample seeds, then episodes within each seed;
``intervals.paired_difference``: seeds then episodes with >= ``MIN_SEEDS`` seeds, else over episodes),
as the leaderboard does; ``interval`` says which. ``verdict`` reads the interval; a claim against every
baseline gets one more row per setting, ``combined_verdict`` of its comparisons.

The command refuses (``MlfsicError``, one line) a run dir that is missing, a run evaluated on another
split than its claims need (ablations on val, the ranking on test), a method or setting a claim needs
that the run lacks, and two methods evaluated on different episodes. A claim that does not hold is a
result: the table says so.

Outputs, in ``out`` (default: ``claims/`` next to the ablation run dir, i.e. ``results/claims`` for the
defaults): ``claims.csv`` (one row per comparison and summary, ``CLAIM_COLUMNS``), ``claims.json`` (the
same rows, the sources, the claim definitions and the bootstrap settings) and ``claims.md`` (the table
the command prints). Every row names its source: run id, git commit (and dirty flag) of the run's
``run.json``, split evaluated and run dir. The outputs are a pure function of the inputs (fixed
bootstrap seed, no timestamp).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlfsic.harness.errors import MlfsicError
from mlfsic.harness.io import write_json_atomic, write_text_atomic
from mlfsic.harness.report.intervals import (
    MIN_SEEDS,
    n_seeds_of,
    paired_difference,
)
from mlfsic.harness.report.stats import _read_table
from mlfsic.harness.sweep.store import read_run_json

ABLATION, RANKING = "ablation", "ranking"
SPLIT_OF_RUN = {ABLATION: "val", RANKING: "test"}  # the split each run's claims are tested on
SPLIT_SHOWN = {"val": "val", "test": "test (novel)"}
HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"
COMPARISON, SUMMARY = "comparison", "summary"
N_BOOT, BOOT_SEED, CONFIDENCE = 10000, 0, 0.95
EPISODE_KEY = ["seed", "episode_set_id", "episode"]
RECORD_NEEDED = ("method", "dataset", "setting", "seed", "episode_set_id", "episode", "map", "status")
CLAIM_COLUMNS = ["claim_id", "claim", "kind", "run", "split", "dataset", "setting", "method", "compared_with",
                 "n_paired", "n_seeds", "interval", "diff", "ci_low", "ci_high", "p_value", "verdict", "run_id",
                 "git_commit", "git_dirty", "run_dir"]
TABLE_HEADER = ("claim", "split", "setting", "compared with", "difference [95% CI]", "p", "verdict", "source run")


@dataclass(frozen=True)
class Claim:
    """One claim of the abstract as a test: ``method`` beats each compared method in each setting."""

    key: str  # short id, the csv's claim_id
    text: str  # the claim in words
    run: str  # ABLATION (val split) or RANKING (novel split)
    method: str
    versus: tuple[str, ...]  # compared methods; () = every other method of the setting except ``exclude``
    settings: tuple[str, ...]
    exclude: tuple[str, ...] = ()
    # (setting, method) pairs also left out: a method that is ``method`` itself in that setting (wvga fits
    # lcm's checkpoint and shares its 0-shot path, so their 0-shot difference is 0 by construction)
    same_model: tuple[tuple[str, str], ...] = ()


# Each text says in plain words what the comparison adds or removes; the variants: configs/sweep/lcm_ablation.yaml.
CLAIMS: tuple[Claim, ...] = (
    Claim("word-embedding-init", "word-embedding initialisation helps (lcm-randvec: fixed random label vectors "
          "replace the word embeddings)", ABLATION, "lcm", ("lcm-randvec",), ("1shot", "5shot")),
    Claim("local-selection", "LCM local-feature selection helps (lcm-noselect: no purify mask in the test-time "
          "adaptation, every local position kept)", ABLATION, "lcm", ("lcm-noselect",), ("1shot", "5shot")),
    Claim("cross-interaction", "the whole cross-interaction block helps (lcm-nocross: no attention block, prototypes "
          "from the support images' global features)", ABLATION, "lcm", ("lcm-nocross",), ("1shot", "5shot")),
    Claim("channel-attention", "channel-wise cross-attention helps (lcm-chattn: lcm plus the word-conditioned "
          "channel gate the paper names; off in the release and in lcm)", ABLATION, "lcm-chattn", ("lcm",),
          ("1shot", "5shot")),
    Claim("dynamic-convolution", "word-embedding dynamic convolution helps (lcm-dynconv: lcm plus a word-generated "
          "convolution of the local features; unused in the release, off in lcm)", ABLATION, "lcm-dynconv",
          ("lcm",), ("1shot", "5shot")),
    Claim("beats-baselines", "lcm beats the baselines", RANKING, "lcm", (), ("0shot", "1shot", "5shot"),
          exclude=("random",), same_model=(("0shot", "wvga"), ("0shot", "wvga-adapted"))),
)


@dataclass(frozen=True)
class Run:
    """A run dir's ok records and where they come from."""

    role: str  # ABLATION or RANKING
    path: Path
    run_id: str
    git_commit: str
    git_dirty: bool | None
    split: str  # run.json config.eval_split
    dataset: str
    records: pd.DataFrame


def verdict(ci_low: float, ci_high: float) -> str:
    """What a 95% interval of ``method - other`` says about "method is better".

    Example:
        >>> verdict(0.4, 2.1)
        'holds'
        >>> verdict(-3.0, -0.2)
        'does not hold'
        >>> verdict(-0.5, 1.0)
        'inconclusive'
        >>> verdict(0.0, 0.0)
        'inconclusive'
    """
    if ci_low > 0.0:
        return HOLDS
    if ci_high < 0.0:
        return FAILS
    return INCONCLUSIVE


def combined_verdict(verdicts: list[str]) -> str:
    """A claim against several baselines: holds if it holds against every one, fails if it fails against any.

    Example:
        >>> combined_verdict(["holds", "holds"]), combined_verdict(["holds", "inconclusive", "does not hold"])
        ('holds', 'does not hold')
    """
    if not verdicts:
        raise MlfsicError("combined_verdict of no comparisons")
    if all(v == HOLDS for v in verdicts):
        return HOLDS
    return FAILS if FAILS in verdicts else INCONCLUSIVE


def default_ablation_dir() -> Path:
    from mlfsic.harness.sweep.spec import PUBLISHED_DIR

    return PUBLISHED_DIR.parent / "published_ablation"


def default_ranking_dir() -> Path:
    from mlfsic.harness.sweep.spec import PUBLISHED_DIR

    return PUBLISHED_DIR


def default_out_dir(run_dir: Path) -> Path:
    """``claims/`` next to the ablation run dir (``results/claims`` for the defaults), or next to the ranking run
    dir with ``ablation=none``."""
    return Path(run_dir).parent / "claims"


def _how_to_make(role: str, path: Path) -> str:
    if role == ABLATION:
        return (f"make it with `mlfsic run +sweep=lcm_ablation`, then `mlfsic leaderboard results/runs/<run_id> "
                f"publish=true out={path}` (or give ablation=DIR)")
    return "make it with `make run`, then `make publish` (or give ranking=DIR)"


def load_run(path: Path, role: str) -> Run:
    """Read a run dir's run.json and ok records; refuse a missing dir or a run on the wrong split."""
    path = Path(path)
    if not path.is_dir():
        raise MlfsicError(f"{role} run dir {path} not found: {_how_to_make(role, path)}")
    info = read_run_json(path)
    split = (info.get("config") or {}).get("eval_split")
    if split is None:
        raise MlfsicError(f"{path / 'run.json'}: missing field 'config.eval_split' (which split was evaluated)")
    if split != SPLIT_OF_RUN[role]:
        raise MlfsicError(f"{path}: evaluated on the {split} split (run.json config.eval_split), but the {role} "
                          f"claims are tested on the {SPLIT_OF_RUN[role]} split")
    records = _read_table(path / "records.parquet", RECORD_NEEDED)
    records = records.loc[records["status"] == "ok", list(RECORD_NEEDED)].reset_index(drop=True)
    datasets = sorted(set(records["dataset"]))
    if len(datasets) != 1:
        raise MlfsicError(f"{path / 'records.parquet'}: expected ok records of one dataset, found "
                          f"{len(datasets)} ({', '.join(datasets) or 'none'})")
    git = info.get("git") or {}
    return Run(role=role, path=path, run_id=str(info["run_id"]), git_commit=str(git.get("commit", "unknown")),
               git_dirty=git.get("dirty"), split=str(split), dataset=datasets[0], records=records)


def _episodes(run: Run, method: str, setting: str, claim: Claim) -> pd.Series:
    """The method's mAP in the setting, indexed by (seed, episode_set_id, episode)."""
    in_setting = run.records[run.records["setting"] == setting]
    if in_setting.empty:
        settings = ", ".join(sorted(set(run.records["setting"]))) or "none"
        raise MlfsicError(f"{run.path}: no records in setting {setting} (claim {claim.key!r} needs {claim.method} "
                          f"there; the run has settings {settings})")
    rows = in_setting[in_setting["method"] == method]
    if rows.empty:
        methods = ", ".join(sorted(set(in_setting["method"])))
        raise MlfsicError(f"{run.path}: method {method} has no records in {setting} (claim {claim.key!r} needs it; "
                          f"methods there: {methods})")
    return rows.set_index(EPISODE_KEY)["map"].sort_index()


def _episode_difference(a: pd.Series, b: pd.Series, method: str, other: str) -> str:
    """The first seed where the two methods' episodes differ, in words."""
    seeds_a, seeds_b = a.index.get_level_values("seed"), b.index.get_level_values("seed")
    for seed in sorted(set(seeds_a) | set(seeds_b)):
        part_a, part_b = a[seeds_a == seed], b[seeds_b == seed]
        if part_a.empty or part_b.empty:
            return f"seed {seed} has records of {other if part_a.empty else method} only"
        ids_a = sorted(set(part_a.index.get_level_values("episode_set_id")))
        ids_b = sorted(set(part_b.index.get_level_values("episode_set_id")))
        if ids_a != ids_b:
            return (f"seed {seed}: {method} on episode set {', '.join(i[:12] for i in ids_a)}, {other} on "
                    f"{', '.join(i[:12] for i in ids_b)}")
        if not part_a.index.equals(part_b.index):
            return f"seed {seed}: {len(part_a)} episodes of {method}, {len(part_b)} of {other}"
    return "their episodes differ"


def paired_episodes(run: Run, claim: Claim, other: str, setting: str) -> tuple[pd.Series, pd.Series]:
    """Both methods' mAP on the same (seed, episode_set_id, episode) index; refuses different episodes."""
    a, b = _episodes(run, claim.method, setting, claim), _episodes(run, other, setting, claim)
    if not a.index.equals(b.index):
        raise MlfsicError(f"{run.path}: {claim.method} and {other} in {setting} were not evaluated on the same "
                          f"episodes ({_episode_difference(a, b, claim.method, other)}); rerun them in one sweep")
    defined = np.isfinite(a.to_numpy(np.float64)) & np.isfinite(b.to_numpy(np.float64))
    if not defined.any():
        raise MlfsicError(f"{run.path}: {claim.method} and {other} in {setting} share no episode where both have a "
                          "defined mAP")
    return a[defined], b[defined]


def compare(run: Run, claim: Claim, other: str, setting: str, a: pd.Series, b: pd.Series, n_boot: int = N_BOOT,
            seed: int = BOOT_SEED) -> dict[str, Any]:
    """One comparison row: paired bootstrap of ``a - b`` (``paired_episodes``) in mAP points."""
    values_a, values_b = 100.0 * a.to_numpy(np.float64), 100.0 * b.to_numpy(np.float64)  # mAP points
    clusters = a.index.get_level_values("seed").to_numpy()
    result = paired_difference(values_a, values_b, clusters, n_boot=n_boot, seed=seed, confidence=CONFIDENCE)
    return {**_row_base(run, claim, setting, COMPARISON, other), "n_paired": len(a), "n_seeds": n_seeds_of(clusters),
            "interval": result["interval"], "diff": result["mean_diff"],
            "ci_low": result["ci_low"], "ci_high": result["ci_high"], "p_value": result["p_value"],
            "verdict": verdict(result["ci_low"], result["ci_high"])}


def _row_base(run: Run, claim: Claim, setting: str, kind: str, compared_with: str) -> dict[str, Any]:
    return {"claim_id": claim.key, "claim": claim.text, "kind": kind, "run": run.role, "split": run.split,
            "dataset": run.dataset, "setting": setting, "method": claim.method, "compared_with": compared_with,
            "run_id": run.run_id, "git_commit": run.git_commit, "git_dirty": run.git_dirty,
            "run_dir": _shown(run.path)}


def _shown(path: Path) -> str:
    """A path relative to the repository when inside it (so outputs do not depend on the checkout's place)."""
    from mlfsic.harness.sweep.spec import PUBLISHED_DIR

    root = PUBLISHED_DIR.parent.parent
    try:
        return str(Path(path).resolve().relative_to(root))
    except ValueError:
        return str(path)


def compared_methods(run: Run, claim: Claim, setting: str) -> list[str]:
    """``claim.versus``, or every other method of the setting except ``claim.exclude`` (sorted)."""
    if claim.versus:
        return list(claim.versus)
    present = set(run.records.loc[run.records["setting"] == setting, "method"])
    same = {method for where, method in claim.same_model if where == setting}
    others = sorted(present - {claim.method} - set(claim.exclude) - same)
    if not others:
        raise MlfsicError(f"{run.path}: no method to compare {claim.method} with in {setting} (claim {claim.key!r}; "
                          f"methods there: {', '.join(sorted(present)) or 'none'})")
    return others


Pairs = dict[str, list[tuple[str, pd.Series, pd.Series]]]  # setting -> (compared method, a, b)


def claim_pairs(run: Run, claim: Claim) -> Pairs:
    """Every comparison the claim makes, checked (methods, settings, same episodes) before any bootstrap."""
    pairs: Pairs = {}
    for setting in claim.settings:
        _episodes(run, claim.method, setting, claim)  # a missing setting or method is named first
        pairs[setting] = [(other, *paired_episodes(run, claim, other, setting))
                          for other in compared_methods(run, claim, setting)]
    return pairs


def claim_rows(run: Run, claim: Claim, pairs: Pairs, n_boot: int = N_BOOT,
               seed: int = BOOT_SEED) -> list[dict[str, Any]]:
    """The claim's rows: one per (setting, compared method); with ``versus=()`` a summary row per setting."""
    rows = []
    for setting, compared_pairs in pairs.items():
        compared = [compare(run, claim, other, setting, a, b, n_boot=n_boot, seed=seed)
                    for other, a, b in compared_pairs]
        rows.extend(compared)
        if not claim.versus:
            others = ", ".join(r["compared_with"] for r in compared)
            summary = _row_base(run, claim, setting, SUMMARY, f"every baseline ({others})")
            rows.append({**summary, "n_paired": min(r["n_paired"] for r in compared),
                         "n_seeds": min(r["n_seeds"] for r in compared), "interval": compared[0]["interval"],
                         "diff": math.nan, "ci_low": math.nan, "ci_high": math.nan, "p_value": math.nan,
                         "verdict": combined_verdict([r["verdict"] for r in compared])})
    return rows


def evaluate_claims(run_dirs: dict[str, Path], claims: tuple[Claim, ...] = CLAIMS, n_boot: int = N_BOOT,
                    seed: int = BOOT_SEED) -> tuple[pd.DataFrame, dict[str, Run]]:
    """Every claim's rows (``CLAIM_COLUMNS``, in ``claims`` order) and the runs read, by role.

    ``run_dirs`` maps ABLATION / RANKING to a run dir; only the roles some claim needs are read. Every
    run dir, method, setting and episode pairing is checked before the first bootstrap.
    """
    roles = sorted({claim.run for claim in claims})
    runs = {role: load_run(run_dirs[role], role) for role in roles}
    pairs = [claim_pairs(runs[claim.run], claim) for claim in claims]
    rows = [row for claim, claim_pair in zip(claims, pairs)
            for row in claim_rows(runs[claim.run], claim, claim_pair, n_boot=n_boot, seed=seed)]
    return pd.DataFrame(rows, columns=CLAIM_COLUMNS), runs


def _points(value: float) -> str:
    return f"{value:+.2f}"


def format_difference(row: pd.Series) -> str:
    """``+4.80 [+3.10, +6.40]`` (mAP points), ``-`` for a summary row."""
    if not np.isfinite(row["diff"]):
        return "-"
    return f"{_points(row['diff'])} [{_points(row['ci_low'])}, {_points(row['ci_high'])}]"


def format_p(p_value: float) -> str:
    if not np.isfinite(p_value):
        return "-"
    return "<0.001" if p_value < 0.001 else f"{p_value:.3f}"


def claims_markdown(table: pd.DataFrame, runs: dict[str, Run], n_boot: int = N_BOOT) -> str:
    """The claims table, how to read it, and its sources (what ``mlfsic claims`` prints and claims.md holds)."""
    lines = ["# The claims of Yan et al. (TOMM 2024), tested", "",
             "| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
    for _, row in table.iterrows():
        cells = (row["claim"], SPLIT_SHOWN.get(row["split"], row["split"]), row["setting"], row["compared_with"],
                 format_difference(row), format_p(row["p_value"]), row["verdict"], row["run_id"])
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += ["", f"Difference: mAP points of the claim's method minus the compared one over their shared episodes "
              f"(same setting, seed, episode set, episode), its 95% percentile interval and two-sided p from a "
              f"paired bootstrap ({n_boot} replicates; seeds, then episodes within seeds, with >= {MIN_SEEDS} "
              f"seeds, else episodes). Verdict: holds if the interval lies above 0, does not hold if below, "
              f"inconclusive if it contains 0; against every baseline: holds only if it holds against each, does "
              f"not hold if it fails significantly against any.", "", "Sources:"]
    for role, run in sorted(runs.items()):
        intervals = sorted(set(table.loc[table["run"] == role, "interval"]))
        dirty = " (dirty)" if run.git_dirty else ""
        lines.append(f"- {role}: run {run.run_id} ({_shown(run.path)}), commit {run.git_commit}{dirty}, "
                     f"{run.dataset}, {SPLIT_SHOWN.get(run.split, run.split)} split, intervals over "
                     f"{' / '.join(intervals)}")
    return "\n".join(lines) + "\n"


def _json_value(value: Any) -> Any:
    if isinstance(value, (float, np.floating)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def write_claims(table: pd.DataFrame, runs: dict[str, Run], out_dir: Path, claims: tuple[Claim, ...] = CLAIMS,
                 n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> dict[str, Path]:
    """claims.csv, claims.json and claims.md in ``out_dir`` (atomic writes); their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / f"claims.{name}" for name in ("csv", "json", "md")}
    write_text_atomic(paths["csv"], table.to_csv(index=False, float_format="%.6f", na_rep="", lineterminator="\n"))
    document = {
        "claims": [{key: _json_value(value) for key, value in row.items()} for row in table.to_dict("records")],
        "definitions": [{**asdict(claim), "split": SPLIT_OF_RUN[claim.run]} for claim in claims],
        "sources": {role: {"run_id": run.run_id, "git_commit": run.git_commit, "git_dirty": run.git_dirty,
                           "split": run.split, "dataset": run.dataset, "run_dir": _shown(run.path)}
                    for role, run in sorted(runs.items())},
        "bootstrap": {"n_boot": n_boot, "seed": seed, "confidence": CONFIDENCE, "min_seeds_hierarchical": MIN_SEEDS,
                      "units": "mAP points (percent)"},
    }
    write_json_atomic(paths["json"], document)
    write_text_atomic(paths["md"], claims_markdown(table, runs, n_boot))
    return paths


NO_ABLATION = Path("none")  # ``ablation=none``: only the ranking claims (a backbone without an ablation run)


def run_claims(ablation: Path | None = None, ranking: Path | None = None,
               out: Path | None = None) -> tuple[str, dict[str, Path]]:
    """``mlfsic claims``: test ``CLAIMS`` on the two runs, write the outputs; the printed table and the paths.

    ``ablation=none`` tests only the claims on the ranking run (another backbone's published run, e.g. the
    pretrained suite's member), written by default to ``claims/`` next to the ranking run's dir."""
    ranking = Path(ranking) if ranking is not None else default_ranking_dir()
    if ablation is not None and Path(ablation) == NO_ABLATION:
        chosen = tuple(claim for claim in CLAIMS if claim.run == RANKING)
        table, runs = evaluate_claims({RANKING: ranking}, claims=chosen)
        paths = write_claims(table, runs, Path(out) if out is not None else default_out_dir(ranking), claims=chosen)
        return claims_markdown(table, runs), paths
    ablation = Path(ablation) if ablation is not None else default_ablation_dir()
    table, runs = evaluate_claims({ABLATION: ablation, RANKING: ranking})
    paths = write_claims(table, runs, Path(out) if out is not None else default_out_dir(ablation))
    return claims_markdown(table, runs), paths
