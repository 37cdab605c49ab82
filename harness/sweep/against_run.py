"""A reference run to rank new methods against, without rerunning its methods (README "Rank your method").

    mlfsic leaderboard RUN_DIR publish=true          copy a finished run into results/published/ (``publish``)
    mlfsic run method=[mine] against=published        run only ``mine`` on the published run's episodes
    mlfsic run method=[mine] against=RUN_DIR          the same against any run dir a lab keeps

A reference is a run dir (``run.json``, ``records.parquet``, ``label_ap.parquet``): the repository's
``results/published/`` or any ``results/runs/<run_id>/``. A sweep with ``against`` computes only the
methods the reference does not hold (same name, config and code: ``method_config_hash``), on exactly the
reference's episode sets and features, and its leaderboard is the union of both runs (``report``).

Comparable means the same numbers would come out for a reference method rerun here. Checked, each
difference one ``MlfsicError`` line naming it (exit 2):

    before any work (``check_before_work``, nothing started or written):
        metric version (``METRIC_VERSION``), dataset name/adapter/generator settings, eval_split, protocol,
        n_way, n_query, n_episodes at most the reference's, the sweep's seeds and settings among the reference's, label-embedding
        id, and the backbone id when the weights file is known (pinned or given); otherwise the backbone
        config that trains it
    after the dataset is read, before Ray starts (``check_dataset``, ``check_prefix_episode_sets``):
        annotation sha256, label split, episode-set ids (content hashes: sampler, params, images); with
        ``n_episodes`` below the reference's, ours must be the first episodes of its sets (a prefix comparison)
    after the backbone step, before any feature, method task or record (``check_backbone``):
        backbone id

Runs made before run.json recorded ``metric_version``, ``embedding_id`` and ``dataset`` are read as metric
version "1", the records' embedding id, and no annotation/split check (their episode-set ids, content
hashes that include the annotation sha256 and the evaluated labels, still are compared).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mlfsic.harness.errors import MlfsicError
from mlfsic.harness.io import atomic_path, sha256_json, write_json_atomic
from mlfsic.harness.protocol.data import LabelledPool
from mlfsic.harness.protocol.episodes import EpisodePlan, EpisodeSetRef, load_episode_set, materialise_episode_sets
from mlfsic.harness.protocol.metrics import METRIC_VERSION
from mlfsic.harness.sweep.spec import PUBLISHED_DIR, RUN_FILES, Sweep
from mlfsic.harness.sweep.store import read_run_json

# Bump when harness/metrics.py (or how evaluate.py turns scores into records) changes any number, so a run
# scored the old way is never ranked with one scored the new way. Runs that do not record it are "1".
# Sweep keys that choose the episodes: taken from the reference unless the user sets them.
EPISODE_KEYS = ("setting", "seeds", "n_episodes", "n_query", "n_way", "protocol", "eval_split")
# Backbone keys that choose a weights file rather than how it is trained: its id is compared instead (from
# the config when the file is known, else after the backbone step, which a pinned file makes instant).
BACKBONE_FILE_KEYS = ("weights", "pinned_weights", "pinned_sha256", "device")


@dataclass(frozen=True)
class Reference:
    """What a reference run dir says about how its numbers were made."""

    path: Path
    published: bool
    run_id: str
    commit: str
    dirty: bool | None
    config: dict[str, Any]
    metric_version: str
    backbone_id: str
    backbone_pinned: bool  # made with the backbone pinned in the package (run.json backbone.pinned)
    embedding_id: str
    annotation_sha256: str | None  # None: a run made before run.json recorded it
    split_sha256: str | None
    episode_sets: dict[str, str]  # "<dataset>/<setting>/seed<k>" -> episode_set_id
    method_hashes: dict[str, set[str]] = field(default_factory=dict)  # method -> config hash(es) of its records

    @property
    def label(self) -> str:
        """How messages name it: ``the published`` or ``reference run <run_id>'s``."""
        return "the published" if self.published else f"reference run {self.run_id}'s"

    @property
    def name(self) -> str:
        """``the published run`` or ``reference run <run_id>``."""
        return "the published run" if self.published else f"reference run {self.run_id}"

    def cells(self) -> set[tuple[str, int]]:
        """The (setting, seed) pairs it holds episode sets for."""
        out = set()
        for key in self.episode_sets:
            _, setting, seed = key.rsplit("/", 2)
            out.add((setting, int(seed.removeprefix("seed"))))
        return out


def load_reference(path: Path) -> Reference:
    """Read a reference run dir (see ``resolve_against``); one-line errors name the file."""
    import pandas as pd
    import pyarrow.parquet as pq

    path = Path(path)
    info = read_run_json(path, required=("run_id", "config", "episode_sets", "backbone"))
    try:
        present = set(pq.read_schema(path / "records.parquet").names)
        records = pd.read_parquet(path / "records.parquet",
                                  columns=[c for c in ("method", "method_config_hash", "embedding_id") if c in present])
    except Exception as error:  # pyarrow raises several types for a corrupt file
        raise MlfsicError(f"{path / 'records.parquet'}: cannot read ({type(error).__name__}: {error})") from None
    if not {"method", "method_config_hash"} <= set(records.columns):
        raise MlfsicError(f"{path / 'records.parquet'}: missing column 'method' or 'method_config_hash'")
    embedding = info.get("embedding_id")
    if embedding is None:  # a run made before run.json recorded it: the records' (older runs: unknown)
        ids = sorted(set(records["embedding_id"].dropna().astype(str))) if "embedding_id" in records else []
        embedding = ids[0] if len(ids) == 1 else "unknown"
    hashes: dict[str, set[str]] = {}  # what its records hold (a method whose cells all failed has none)
    for name, config_hash in records[["method", "method_config_hash"]].drop_duplicates().itertuples(index=False):
        hashes.setdefault(str(name), set()).add(str(config_hash))
    dataset = info.get("dataset") or {}
    git = info.get("git") or {}
    return Reference(
        path=path, published=path.resolve() == PUBLISHED_DIR.resolve(), run_id=str(info["run_id"]),
        commit=str(git.get("commit", "unknown")), dirty=git.get("dirty"), config=dict(info["config"]),
        metric_version=str(info.get("metric_version", "1")), backbone_id=str((info["backbone"] or {}).get("id")),
        backbone_pinned=bool((info["backbone"] or {}).get("pinned")),
        embedding_id=str(embedding), annotation_sha256=dataset.get("annotation_sha256"),
        split_sha256=dataset.get("split_sha256"), episode_sets=dict(info["episode_sets"]), method_hashes=hashes,
    )


# ----------------------------------------------------------------------------------------- the sweep's keys
def with_reference_episodes(config: dict[str, Any], given: set[str], reference: Reference) -> dict[str, Any]:
    """``config`` with each ``EPISODE_KEYS`` key the user did not set taken from the reference's config."""
    out = dict(config)
    for key in EPISODE_KEYS:
        names = ("seeds", "seed") if key == "seeds" else (key,)
        if any(name in given for name in names):
            continue
        for name in names:
            if name in reference.config:
                out[name] = reference.config[name]
    return out


# ----------------------------------------------------------------------------------------- checks
def _short(value: Any) -> str:
    text = str(value)
    return text[:12] + "..." if len(text) > 16 and all(c in "0123456789abcdef" for c in text) else text


def _differs(what: str, ours: Any, reference: Reference, theirs: Any, hint: str) -> MlfsicError:
    return MlfsicError(f"{what} {_short(ours)} differs from {reference.label} {_short(theirs)}: {hint}")


def _flat(prefix: str, value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flat(f"{prefix}.{key}", item))
        return out
    return {prefix: value}


RERUN = "run the baselines too (leave against out)"


def check_before_work(sweep: Sweep, reference: Reference) -> None:
    """Everything comparable from the config alone (see the module docstring); raises on the first difference."""
    if reference.metric_version != METRIC_VERSION:
        raise _differs("metric version", METRIC_VERSION, reference, reference.metric_version,
                       f"this harness scores episodes differently; {RERUN}")
    _check_dataset_config(sweep.dataset.as_dict(), reference)
    _check_episode_keys(sweep, reference)
    from mlfsic.harness.backbones.embeddings import embedding_id

    ours_embedding = embedding_id(sweep.embeddings.encoder, sweep.embeddings.path)
    if ours_embedding != reference.embedding_id:
        their_encoder = (reference.config.get("embeddings") or {}).get("encoder")
        raise _differs("label embedding", ours_embedding, reference, reference.embedding_id,
                       f"use the reference's embeddings.encoder={their_encoder}, or {RERUN}")
    ours_backbone = expected_backbone_id(sweep.dataset.backbone.as_dict(), reference)
    if ours_backbone is not None:
        check_backbone(ours_backbone, reference)
    else:  # known after the backbone step; its training settings now
        _check_same(_flat("dataset.backbone", sweep.dataset.backbone.as_dict()),
                    _flat("dataset.backbone", _their_dataset(reference).get("backbone") or {}), reference,
                    f"the backbone would differ; {RERUN}, or use the reference's backbone settings",
                    skip=BACKBONE_FILE_KEYS)


def _their_dataset(reference: Reference) -> dict[str, Any]:
    return dict(reference.config.get("dataset") or {})


def _check_same(ours: Mapping[str, Any], theirs: Mapping[str, Any], reference: Reference, hint: str,
                skip: tuple[str, ...] = ()) -> None:
    """Flat ``key -> value`` maps must agree on every key (last key part not in ``skip``)."""
    for key in sorted(set(ours) | set(theirs)):
        if key.rsplit(".", 1)[-1] not in skip and ours.get(key) != theirs.get(key):
            raise _differs(key, ours.get(key), reference, theirs.get(key), hint)


def _check_dataset_config(dataset: Mapping[str, Any], reference: Reference) -> None:
    """Name, adapter and generator settings (which make coco-moji's files); the files themselves: ``check_dataset``."""
    theirs = _their_dataset(reference)
    _check_same({f"dataset.{k}": dataset.get(k) for k in ("name", "adapter")},
                {f"dataset.{k}": theirs.get(k) for k in ("name", "adapter")}, reference,
                f"use the reference's dataset (dataset={theirs.get('name')})")
    _check_same(_flat("dataset.generate", dataset.get("generate") or {}),
                _flat("dataset.generate", theirs.get("generate") or {}), reference,
                "leave dataset.generate out: the reference's dataset is another")


def _check_episode_keys(sweep: Sweep, reference: Reference) -> None:
    """The keys that draw the episodes equal the reference's; seeds and settings among its own."""
    for key in ("eval_split", "protocol", "n_way", "n_query"):
        ours, theirs = sweep.config.get(key), reference.config.get(key)
        if ours != theirs:
            raise _differs(key, ours, reference, theirs, f"leave {key} out to take the reference's, or {RERUN}")
    theirs_n = reference.config.get("n_episodes")
    if not isinstance(theirs_n, int) or sweep.n_episodes > theirs_n:
        raise _differs("n_episodes", sweep.n_episodes, reference, theirs_n,
                       "leave n_episodes out to take the reference's, or give at most its count (the first "
                       f"n_episodes of its episode sets are compared), or {RERUN}")
    cells = reference.cells()
    seeds = sorted({seed for _, seed in cells})
    settings = sorted({setting for setting, _ in cells})
    for seed in sweep.seeds:
        if seed not in seeds:
            raise _differs("seed", seed, reference, "seeds " + ",".join(map(str, seeds)),
                           "leave seeds out, or pick among the reference's")
    for setting in sweep.settings:
        if setting not in settings:
            raise _differs("setting", setting, reference, "settings " + ",".join(settings),
                           "leave setting out, or pick among the reference's")


def expected_backbone_id(backbone: Mapping[str, Any], reference: Reference) -> str | None:
    """The backbone id known from the config's weights file, or None (known after the backbone step).

    resnet50: its weights file (or the torch cache's). small_cnn: the pinned file of the package
    (``dataset.backbone.pinned_weights``) when the reference was made with a pinned file too; otherwise the
    sweep trains it (or decides whether the pinned file fits this dataset) and the id is known later.
    """
    from mlfsic.harness.backbones import kinds as backbones
    from mlfsic.harness.backbones.weights import pinned_weights

    kind = backbone.get("kind")
    if kind == "resnet50":
        weights = backbone.get("weights")
        if weights is not None and not Path(str(weights)).is_file():
            return None
        try:
            return backbones.identify_backbone(backbone, Path(str(weights)) if weights else None)
        except MlfsicError:
            return None  # no file in the torch cache: the backbone step says so
    if kind != "small_cnn" or not reference.backbone_pinned or not backbone.get("pinned_weights"):
        return None
    path = pinned_weights(backbone)  # raises when the file is missing or its sha256 is not the config's
    return backbones.identify_backbone(backbone, path) if path is not None else None


def check_dataset(annotation_sha256: str, split: Mapping[str, Sequence[str]], reference: Reference) -> None:
    """The dataset read here against the reference's (annotation file, label split)."""
    if reference.annotation_sha256 is not None and annotation_sha256 != reference.annotation_sha256:
        raise _differs("dataset annotations sha256", annotation_sha256, reference, reference.annotation_sha256,
                       f"the dataset files differ; use the reference's dataset, or {RERUN}")
    ours = split_sha256(split)
    if reference.split_sha256 is not None and ours != reference.split_sha256:
        raise _differs("label split", ours, reference, reference.split_sha256,
                       f"dataset.split_file differs; use the reference's, or {RERUN}")


def split_sha256(split: Mapping[str, Sequence[str]]) -> str:
    return sha256_json({name: list(labels) for name, labels in sorted(split.items())})


def check_episode_sets(episode_sets: Mapping[str, str], reference: Reference) -> None:
    """Our ``<dataset>/<setting>/seed<k>`` -> episode_set_id against the reference's."""
    for key, episode_set_id in sorted(episode_sets.items()):
        theirs = reference.episode_sets.get(key)
        if theirs is None:
            raise MlfsicError(f"episode set {key} is not in {reference.label} episode sets "
                              f"({', '.join(sorted(reference.episode_sets))})")
        if theirs != episode_set_id:
            raise _differs(f"episode set {key}", episode_set_id, reference, theirs,
                           f"the sampler, the dataset or the split drew other episodes; {RERUN}")


def check_prefix_episode_sets(pool: LabelledPool, plan: EpisodePlan, ours: Sequence[EpisodeSetRef],
                              reference: Reference, results_dir: Path) -> dict[str, Any] | None:
    """Our episode sets against the reference's; with fewer episodes than it has, as a prefix of them.

    Episode ``i`` of a set is a pure function of (pool, sampler, seed, i) (``protocol.episodes.make_episode``),
    so the first ``n`` episodes of the reference's sets are a sound, paired comparison. The reference-sized
    sets are drawn here, their ids checked against the reference's, and ours checked to be their first
    ``n`` episodes. Returns None for a full comparison, else run.json's ``against.prefix`` record: our
    episode_set_id -> the reference's, and both episode counts (``report.against.restrict_reference`` reads it).
    """
    n_reference = int(reference.config["n_episodes"])
    if plan.n_episodes == n_reference:
        check_episode_sets({ref.key: ref.episode_set_id for ref in ours}, reference)
        return None
    full = {ref.key: ref for ref in materialise_episode_sets(pool, replace(plan, n_episodes=n_reference), results_dir)}
    check_episode_sets({key: ref.episode_set_id for key, ref in full.items()}, reference)
    mapping = {}
    for ref in ours:
        short = load_episode_set(ref.path)["episodes"]
        if short != load_episode_set(full[ref.key].path)["episodes"][: len(short)]:
            raise MlfsicError(f"episode set {ref.key}: its {len(short)} episodes are not the first of "
                              f"{reference.label} set {full[ref.key].episode_set_id[:12]}; {RERUN}")
        mapping[ref.episode_set_id] = full[ref.key].episode_set_id
    return {"n_episodes": plan.n_episodes, "reference_n_episodes": n_reference, "episode_sets": mapping}


def check_backbone(backbone_id: str, reference: Reference) -> None:
    if backbone_id != reference.backbone_id:
        raise _differs("backbone", backbone_id, reference, reference.backbone_id,
                       f"{RERUN}, or use the pinned backbone"
                       + (f" of commit {reference.commit[:12]}" if reference.backbone_pinned else ""))


def in_reference(reference: Reference, method: str, config_hash: str) -> bool:
    """Whether the reference holds ``method`` with this config and code (then it is not recomputed)."""
    return config_hash in reference.method_hashes.get(method, set())


# ----------------------------------------------------------------------------------------- publishing
def publish(run_dir: Path, out_dir: Path) -> list[Path]:
    """Copy a finished run's run.json, records and label AP into ``out_dir``; write reference.json.

    The leaderboard files are written by the caller (``report.build_leaderboard``). Refuses a run that is
    not complete (running, interrupted, or with failed cells): a reference must hold every cell.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    for name in RUN_FILES:
        if not (run_dir / name).is_file():
            raise MlfsicError(f"publish: {run_dir / name} not found (a finished run dir is needed)")
    info = read_run_json(run_dir)
    if info.get("status") != "complete":
        raise MlfsicError(f"publish: run {info.get('run_id')} has status {info.get('status')!r} "
                          f"({len(info.get('failures') or [])} failed cells); publish a complete run")
    if run_dir.resolve() == out_dir.resolve():
        raise MlfsicError(f"publish: {out_dir} is the run dir itself; give out=<another folder>")
    reference = load_reference(run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in RUN_FILES:
        target = out_dir / name
        with atomic_path(target) as temporary:
            shutil.copyfile(run_dir / name, temporary)
        written.append(target)
    summary = {
        "run_id": reference.run_id, "created": info.get("created"), "git": info.get("git"),
        "metric_version": reference.metric_version, "backbone_id": reference.backbone_id,
        "embedding_id": reference.embedding_id, "dataset": info.get("dataset"),
        "episode_sets": dict(sorted(reference.episode_sets.items())),
        "episodes": {key: reference.config.get(key) for key in ("eval_split", "protocol", "n_way", "n_query",
                                                                  "n_episodes", "seeds", "seed", "setting")},
        "methods": {name: sorted(hashes) for name, hashes in sorted(reference.method_hashes.items())},
        "regenerate": "mlfsic leaderboard RUN_DIR publish=true   (RUN_DIR: the run of `make run`)",
    }
    write_json_atomic(out_dir / "reference.json", summary)
    written.append(out_dir / "reference.json")
    return written
