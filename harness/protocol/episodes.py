"""Episode samplers and frozen episode-set files (docs/architecture.md §5.3).

An *episode set* is drawn once from a ``LabelledPool`` and frozen in a JSON file, so every method of a
sweep (and of later sweeps) is scored on the same support/query images. The file holds image ids, label
names, the sampler parameters, the sampler version and the annotation file's sha256 -- never pixels or
targets: targets are recomputed from the pool (``episode_targets``) and must match because the
annotation hash does (``check_pool_matches``).

Randomness
    Episode ``i`` of a set made with ``seed`` draws from ``numpy.random.SeedSequence(seed).spawn(n)[i]``,
    i.e. ``SeedSequence(seed, spawn_key=(i,))``, which does not depend on ``n``. Episode ``i`` is thus
    the same whether 10 or 600 episodes are made, in any order, by any worker (``make_episode``).
    Methods get their own per-episode integer seed (``episode_seed``) from the child's first child,
    ``SeedSequence(seed, spawn_key=(i, 0))``: a stream independent of the one that drew the images.

Protocol ``release`` (the default: the support rule of the LCM release, Yan et al., TOMM 2024,
github.com/yk-pku/TOMM-FSIC: its purify mask is sized ``num_classes * k_shot``, one map per support image,
``models/atten_purify.py`` ~375, ~453, and ``train_eval.py`` ~241-253 feeds it exactly that many images)
    1. Labels: as in ``episodic-v1``.
    2. Support (K >= 1): the episode's labels are visited in a random order (drawn per episode); each
       label in turn gets exactly K support images drawn uniformly from its own images not yet in the
       support, whatever co-occurring labels already brought in. The support therefore holds exactly
       N x K distinct images (K per label, in visiting order), and a label may be carried by more than K
       of them. A label with fewer than K of its images left outside the support (the others' draws took
       them) makes the episode fail with an error naming the label and the counts, as a query shortage
       does; the feasibility check below cannot rule that out on small pools.
    3. Query: as in ``episodic-v1``.

Protocol ``episodic-v1`` (the default until the release rule; the multi-label few-shot episodes of e.g. Alfassy et al.,
"LaSO: Label-Set Operations networks for multi-label few-shot learning", CVPR 2019, and Yan et al.,
"Inferring prototypes for multi-label few-shot image classification with word vector guided
attention", AAAI 2022)
    1. Labels: all labels of the pool in pool order, or -- with ``n_way`` -- ``n_way`` of them drawn
       without replacement, kept in pool order. ``n_way == N`` is the same as ``n_way=None``.
    2. Support (K >= 1): the episode's labels are visited in a random order (drawn per episode, so no
       label is systematically favoured); a label that already has >= K support images containing it
       (brought in by earlier labels) is skipped, otherwise the missing ones are drawn uniformly from
       the label's images not yet in the support. Hence every label has >= K support images containing
       it, and the support stays as close to K per label as multi-label data allows. K = 0: no support.
    3. Query: for every label, Q images are drawn uniformly from the label's images outside the
       support, independently of the other labels' draws; the query set is their union (deduplicated)
       in a random order, so the row order carries no label information. Every label therefore has
       >= Q positive queries (AP is always defined) and the query set holds between Q and N*Q images.
       A query image is positive for every episode label it carries.

Protocol ``rest-of-pool``
    Each of the ``n_episodes`` draws is a support set built as in step 2 of ``episodic-v1``, evaluated on the whole rest
    of the pool (in a random order). ``n_query`` is not a draw size here: it is the minimum number of
    positive evaluation images each label must keep after the support is removed.

    This is *not* LaSO's evaluation (Alfassy et al., CVPR 2019), for which it was once named
    (``fixed-support``): LaSO draws its support sets from train2014 and tests on every val2014 image that
    holds at least one unseen label (images that also show seen labels are kept), over 10 fixed support
    sets. Under this harness's split rule an evaluation image carries evaluated labels only, and the
    support and evaluation images come from one pool; the protocol shares only "one support set, scored
    on all other images" with LaSO's. Numbers reported by LaSO are therefore not comparable to it.

Feasibility is checked before drawing: every pool label must be carried by >= K + Q images (with
``n_way`` any label may be drawn, so all are checked). Co-occurrence can still leave a label with fewer
than Q images outside the support; that episode then fails with an error naming the label and counts.

``SAMPLER_VERSION`` changes whenever a change of this module would change the drawn ids; it is part
of the hashed content, so episode sets of different sampler versions never share an id.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from mlfsic.harness.protocol.data import LabelledPool, find_rows
from mlfsic.harness.errors import MlfsicError
from mlfsic.harness.io import sha256_json, write_json_atomic


_SETTING_PATTERN = re.compile(r"^(\d+)shot$")


def parse_setting(setting: str) -> int:
    """``"5shot"`` -> 5, ``"0shot"`` -> 0; anything else is an error naming the setting.

    Example:
        >>> parse_setting("5shot"), parse_setting("0shot")
        (5, 0)
        >>> parse_setting("5-shot")
        Traceback (most recent call last):
        ...
        mlfsic.harness.errors.MlfsicError: setting '5-shot' is not of the form '<K>shot' (e.g. 0shot, 1shot, 5shot)
    """
    match = _SETTING_PATTERN.match(str(setting))
    if match is None:
        raise MlfsicError(f"setting {setting!r} is not of the form '<K>shot' (e.g. 0shot, 1shot, 5shot)")
    return int(match.group(1))


def is_setting(value: object) -> bool:
    """Whether ``value`` is a setting name (``<K>shot``, K >= 0).

    Example:
        >>> is_setting("1shot"), is_setting("shot"), is_setting(5)
        (True, False, False)
    """
    return isinstance(value, str) and _SETTING_PATTERN.match(value) is not None


PROTOCOLS = ("release", "episodic-v1", "rest-of-pool")
SAMPLER_VERSION = "1"
EPISODE_SET_KEYS = ("episode_set_id", "protocol", "sampler_version", "params", "annotation_sha256",
                    "label_names", "episodes")
PARAM_KEYS = ("dataset", "split", "n_way", "k_shot", "n_query", "n_episodes", "seed")
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class SamplerParams:
    """What a sampler needs besides the pool, the seed and the episode index."""

    protocol: str = "release"
    k_shot: int = 1
    n_query: int = 4
    n_way: int | None = None  # None: all labels of the pool


# ----------------------------------------------------------------------------------------- seeds
def episode_seed_sequence(seed: int, index: int) -> np.random.SeedSequence:
    """Child ``index`` of ``SeedSequence(seed).spawn(...)``, built directly (independent of the count)."""
    return np.random.SeedSequence(int(seed), spawn_key=(int(index),))


def episode_seed(seed: int, index: int) -> int:
    """A stable per-episode integer seed in [0, 2**32) for methods that train or sample per episode.

    Taken from the episode child's own first child, so it is independent of the stream that drew the
    episode's images.
    """
    child = np.random.SeedSequence(int(seed), spawn_key=(int(index), 0))
    return int(child.generate_state(1, dtype=np.uint32)[0])


# ----------------------------------------------------------------------------------------- sampling
@dataclass(frozen=True)
class _PoolIndex:
    """Per-label row indices of a pool, computed once per episode set."""

    image_ids: np.ndarray  # (n,) int64
    targets: np.ndarray  # (n, N) bool
    members: tuple[np.ndarray, ...]  # members[j]: rows carrying label j, ascending


def _index_pool(pool: LabelledPool) -> _PoolIndex:
    targets = np.asarray(pool.targets, dtype=bool)
    image_ids = np.asarray(pool.image_ids, dtype=np.int64)
    if targets.ndim != 2 or targets.shape != (len(image_ids), len(pool.label_names)):
        raise MlfsicError(
            f"pool {pool.dataset}/{pool.split}: targets shape {targets.shape} does not match "
            f"{len(image_ids)} images x {len(pool.label_names)} labels"
        )
    if len(np.unique(image_ids)) != len(image_ids):
        raise MlfsicError(f"pool {pool.dataset}/{pool.split}: duplicate image ids")
    members = tuple(np.flatnonzero(targets[:, j]) for j in range(targets.shape[1]))
    return _PoolIndex(image_ids=image_ids, targets=targets, members=members)


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise MlfsicError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if int(value) < minimum:
        raise MlfsicError(f"{name} must be >= {minimum}, got {int(value)}")
    return int(value)


def _checked_params(pool: LabelledPool, params: SamplerParams) -> SamplerParams:
    """Validate ``params`` against ``pool``; normalise ``n_way == N`` to None."""
    if params.protocol not in PROTOCOLS:
        raise MlfsicError(f"unknown episode protocol {params.protocol!r}; known: {', '.join(PROTOCOLS)}")
    k_shot = _check_int("k_shot", params.k_shot, 0)
    n_query = _check_int("n_query", params.n_query, 1)
    n_labels = len(pool.label_names)
    if n_labels == 0:
        raise MlfsicError(f"pool {pool.dataset}/{pool.split} has no labels")
    n_way = params.n_way
    if n_way is not None:
        n_way = _check_int("n_way", n_way, 1)
        if n_way > n_labels:
            raise MlfsicError(
                f"n_way={n_way} is larger than the {n_labels} labels of pool {pool.dataset}/{pool.split}"
            )
        if n_way == n_labels:
            n_way = None
    return SamplerParams(protocol=params.protocol, k_shot=k_shot, n_query=n_query, n_way=n_way)


def _check_label_counts(pool: LabelledPool, index: _PoolIndex, params: SamplerParams) -> None:
    need = params.k_shot + params.n_query
    for name, rows in zip(pool.label_names, index.members):
        if len(rows) < need:
            raise MlfsicError(
                f"label {name!r} of pool {pool.dataset}/{pool.split} has {len(rows)} images, but "
                f"k_shot={params.k_shot} + n_query={params.n_query} = {need} are needed"
            )


def _draw_support(rng: np.random.Generator, index: _PoolIndex, columns: np.ndarray, k_shot: int,
                  exactly_k: bool) -> np.ndarray:
    """Rows of a support set in which each label of ``columns`` is carried by >= ``k_shot`` images:
    ``exactly_k`` (``release``) draws K new images for every label, otherwise (``episodic-v1``) only the
    ones a label still lacks. Returns the rows, or raises ``_LabelRanOut`` (label column, images left)."""
    if k_shot == 0:
        return np.zeros(0, dtype=np.int64)
    in_support = np.zeros(len(index.image_ids), dtype=bool)
    order: list[int] = []
    for column in rng.permutation(columns):
        rows = index.members[column]
        have = 0 if exactly_k else int(in_support[rows].sum())
        if have >= k_shot:
            continue
        candidates = rows[~in_support[rows]]
        if len(candidates) < k_shot - have:
            raise _LabelRanOut(int(column), len(candidates))
        picked = rng.choice(candidates, size=k_shot - have, replace=False)
        in_support[picked] = True
        order.extend(int(row) for row in picked)
    return np.asarray(order, dtype=np.int64)


class _LabelRanOut(Exception):
    """A label of a ``release`` episode has fewer than K images left outside the support."""

    def __init__(self, column: int, n_left: int) -> None:
        super().__init__(column, n_left)
        self.column, self.n_left = column, n_left


def _remaining_positives_error(pool: LabelledPool, column: int, n_total: int, n_left: int, need: int,
                               params: SamplerParams, episode: int) -> MlfsicError:
    return MlfsicError(
        f"episode {episode}: label {pool.label_names[column]!r} of pool {pool.dataset}/{pool.split} has "
        f"{n_total} images but only {n_left} outside the support ({n_total - n_left} taken by co-occurring "
        f"labels' support), n_query={need} needed; lower k_shot={params.k_shot} or n_query, or use n_way"
    )


def _draw_episode(pool: LabelledPool, index: _PoolIndex, params: SamplerParams, seed: int, episode: int) -> dict[str, Any]:
    rng = np.random.default_rng(episode_seed_sequence(seed, episode))
    n_labels = len(pool.label_names)
    if params.n_way is None:
        columns = np.arange(n_labels)
    else:
        columns = np.sort(rng.choice(n_labels, size=params.n_way, replace=False))
    try:
        support = _draw_support(rng, index, columns, params.k_shot, exactly_k=params.protocol == "release")
    except _LabelRanOut as ran_out:
        n_total = len(index.members[ran_out.column])
        raise MlfsicError(
            f"episode {episode}: label {pool.label_names[ran_out.column]!r} of pool {pool.dataset}/{pool.split} has "
            f"{n_total} images but only {ran_out.n_left} outside the support ({n_total - ran_out.n_left} taken by "
            f"co-occurring labels' support), k_shot={params.k_shot} needed by the release rule; lower k_shot, use "
            f"n_way, or protocol=episodic-v1"
        ) from None
    in_support = np.zeros(len(index.image_ids), dtype=bool)
    in_support[support] = True

    if params.protocol in ("release", "episodic-v1"):
        in_query = np.zeros(len(index.image_ids), dtype=bool)
        for column in columns:
            rows = index.members[column]
            candidates = rows[~in_support[rows]]
            if len(candidates) < params.n_query:
                raise _remaining_positives_error(pool, int(column), len(rows), len(candidates), params.n_query,
                                                 params, episode)
            in_query[rng.choice(candidates, size=params.n_query, replace=False)] = True
        query = rng.permutation(np.flatnonzero(in_query))
    else:  # rest-of-pool: the whole rest of the pool
        for column in columns:
            rows = index.members[column]
            n_left = int((~in_support[rows]).sum())
            if n_left < params.n_query:
                raise _remaining_positives_error(pool, int(column), len(rows), n_left, params.n_query, params, episode)
        query = rng.permutation(np.flatnonzero(~in_support))

    return {
        "labels": [pool.label_names[int(c)] for c in columns],
        "support": index.image_ids[support].tolist(),
        "query": index.image_ids[query].tolist(),
    }


def make_episode(pool: LabelledPool, params: SamplerParams, seed: int, index: int) -> dict[str, Any]:
    """Episode ``index`` of the set ``(pool, params, seed)``: {labels, support, query} (names and ids).

    A pure function: the result does not depend on how many episodes the set has or who draws it.
    """
    params = _checked_params(pool, params)
    _check_int("seed", seed, 0)
    _check_int("episode index", index, 0)
    pool_index = _index_pool(pool)
    _check_label_counts(pool, pool_index, params)
    return _draw_episode(pool, pool_index, params, int(seed), int(index))


# ----------------------------------------------------------------------------------------- files
def _content_id(content: dict[str, Any]) -> str:
    return sha256_json({key: value for key, value in content.items() if key != "episode_set_id"})


def build_episode_set(
    pool: LabelledPool,
    protocol: str,
    k_shot: int,
    n_query: int,
    n_episodes: int,
    seed: int,
    n_way: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Draw ``n_episodes`` episodes and return the canonical episode-set content, id included."""
    params = _checked_params(pool, SamplerParams(protocol=str(protocol), k_shot=k_shot, n_query=n_query, n_way=n_way))
    n_episodes = _check_int("n_episodes", n_episodes, 1)
    seed = _check_int("seed", seed, 0)
    pool_index = _index_pool(pool)
    _check_label_counts(pool, pool_index, params)
    episodes = [
        _draw_episode(pool, pool_index, params, seed, i)
        for i in tqdm(range(n_episodes), desc=f"episodes {pool.split} {k_shot}shot seed{seed}", disable=not progress)
    ]
    content: dict[str, Any] = {
        "protocol": params.protocol,
        "sampler_version": SAMPLER_VERSION,
        "params": {"dataset": pool.dataset, "split": pool.split, "n_way": params.n_way, "k_shot": params.k_shot,
                   "n_query": params.n_query, "n_episodes": n_episodes, "seed": seed},
        "annotation_sha256": pool.annotation_sha256,
        "label_names": list(pool.label_names),
        "episodes": episodes,
    }
    content["episode_set_id"] = _content_id(content)
    return content


def episode_set_path(results_dir: Path, episode_set_id: str) -> Path:
    return Path(results_dir) / "episodes" / f"{episode_set_id}.json"


def save_episode_set(episode_set: dict[str, Any], results_dir: Path) -> Path:
    """Write ``results_dir/episodes/<id>.json`` atomically; an existing valid file is reused untouched."""
    episode_set_id = episode_set.get("episode_set_id")
    if episode_set_id != _content_id(episode_set):
        raise MlfsicError(f"episode set {episode_set_id!r}: id does not match its content (modified after building?)")
    path = episode_set_path(Path(results_dir), str(episode_set_id))
    if path.exists():
        try:
            load_episode_set(path)
            return path
        except MlfsicError as error:  # a damaged file under the right name: the set is a deterministic
            # function of the pool and the plan, so rewrite it with the content just drawn, and say so
            print(f"mlfsic: {error}; regenerated it from the pool and the episode plan", file=sys.stderr, flush=True)
    write_json_atomic(path, episode_set, indent=None)
    return path


@dataclass(frozen=True)
class EpisodeSetRef:
    """A materialised episode set of a sweep: which (dataset, setting, seed) it serves and where it is."""

    dataset: str
    setting: str
    seed: int
    episode_set_id: str
    path: Path
    n_episodes: int

    @property
    def key(self) -> str:
        """``<dataset>/<setting>/seed<k>``: its key in run.json's ``episode_sets``."""
        return f"{self.dataset}/{self.setting}/seed{self.seed}"


@dataclass(frozen=True)
class EpisodePlan:
    """Which episode sets a sweep evaluates on: one per (setting, seed), all drawn alike."""

    protocol: str
    settings: tuple[str, ...]
    seeds: tuple[int, ...]
    n_query: int
    n_episodes: int
    n_way: int | None


def materialise_episode_sets(pool: LabelledPool, plan: EpisodePlan, results_dir: Path,
                             progress: bool = False) -> list[EpisodeSetRef]:
    """Build (or reuse) the episode set of every (setting, seed) of ``plan`` under ``results_dir``; a sweep's
    methods all share them."""
    refs = []
    for setting in plan.settings:
        for seed in plan.seeds:
            episode_set = build_episode_set(pool, plan.protocol, parse_setting(setting), plan.n_query,
                                            plan.n_episodes, seed, n_way=plan.n_way, progress=progress)
            path = save_episode_set(episode_set, results_dir)
            refs.append(EpisodeSetRef(dataset=pool.dataset, setting=setting, seed=seed,
                                      episode_set_id=str(episode_set["episode_set_id"]), path=path,
                                      n_episodes=len(episode_set["episodes"])))
    return refs


def load_episode_set(path: Path) -> dict[str, Any]:
    """Read an episode-set file and verify its id against its content."""
    path = Path(path)
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MlfsicError(f"episode set file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MlfsicError(f"episode set file {path} is not readable JSON: {error}") from None
    if not isinstance(content, dict):
        raise MlfsicError(f"episode set file {path}: top level is not a JSON object")
    missing = [key for key in EPISODE_SET_KEYS if key not in content]
    if missing:
        raise MlfsicError(f"episode set file {path}: missing field {missing[0]!r}")
    params = content["params"]
    if not isinstance(params, dict) or any(key not in params for key in PARAM_KEYS):
        raise MlfsicError(f"episode set file {path}: field 'params' lacks one of {', '.join(PARAM_KEYS)}")
    if not isinstance(content["episodes"], list) or not all(
        isinstance(e, dict) and all(isinstance(e.get(k), list) for k in ("labels", "support", "query"))
        for e in content["episodes"]
    ):
        raise MlfsicError(f"episode set file {path}: field 'episodes' must be a list of {{labels, support, query}}")
    actual = _content_id(content)
    if content["episode_set_id"] != actual:
        raise MlfsicError(
            f"episode set file {path}: stored episode_set_id {content['episode_set_id']!r} does not match its "
            f"content (sha256 {actual}); the file was modified"
        )
    if _SHA256_HEX.match(path.stem) and path.stem != actual:
        raise MlfsicError(f"episode set file {path}: file name does not match its episode_set_id {actual}")
    return content


# ----------------------------------------------------------------------------------------- targets
def check_pool_matches(episode_set: dict[str, Any], pool: LabelledPool) -> None:
    """The pool must be the one the set was drawn from: same dataset, split and annotation file."""
    params = episode_set["params"]
    expected = (params["dataset"], params["split"], episode_set["annotation_sha256"])
    actual = (pool.dataset, pool.split, pool.annotation_sha256)
    if expected != actual:
        raise MlfsicError(
            f"episode set {episode_set['episode_set_id'][:12]} was drawn from {expected[0]}/{expected[1]} "
            f"(annotations sha256 {expected[2][:12]}), not from {actual[0]}/{actual[1]} (sha256 {actual[2][:12]})"
        )


def _rows_of(pool: LabelledPool, image_ids: list[int], role: str) -> np.ndarray:
    rows, found = find_rows(pool.image_ids, np.asarray(image_ids, dtype=np.int64))
    if not found.all():
        bad = int(np.asarray(image_ids)[np.flatnonzero(~found)[0]])
        raise MlfsicError(f"{role} image {bad} is not in pool {pool.dataset}/{pool.split}")
    return rows


def episode_targets(pool: LabelledPool, episode: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Multi-hot float32 targets over the episode's labels: (n_support, N) and (n_query, N), stored id order."""
    column_of = {name: j for j, name in enumerate(pool.label_names)}
    unknown = [name for name in episode["labels"] if name not in column_of]
    if unknown:
        raise MlfsicError(f"episode label {unknown[0]!r} is not a label of pool {pool.dataset}/{pool.split}")
    columns = np.asarray([column_of[name] for name in episode["labels"]], dtype=np.int64)
    targets = np.asarray(pool.targets, dtype=bool)
    support = targets[_rows_of(pool, episode["support"], "support")][:, columns]
    query = targets[_rows_of(pool, episode["query"], "query")][:, columns]
    return support.astype(np.float32), query.astype(np.float32)
