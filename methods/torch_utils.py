"""Small helpers shared by the built-in methods: seeding, layer construction, standardisation, input checks.

Determinism (docs/architecture.md §4.3): a method never relies on global RNG state. ``fit`` draws from generators made
here from ``self.seed``; ``predict`` from generators made from ``(self.seed, episode.seed)``. Layers are
therefore built with ``linear`` / ``mlp``, which initialise weights from an explicit ``torch.Generator``
(PyTorch's default initialisation uses the global generator), and no method uses dropout (which cannot
take a generator).

Features are standardised with the base split's per-dimension mean and standard deviation, stored on the
method, so every method sees inputs of unit scale whatever the backbone.

Bad inputs raise ``MlfsicError`` with one line naming the method, the field and, where relevant, the label.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from mlfsic.methods.api import LOCAL_ROWS_BLOCK_BYTES, Episode, LocalRows, Method, SplitData
from mlfsic.harness.errors import MlfsicError


# ------------------------------------------------------------------------------------------- seeding
def derive_seed(*keys: int) -> int:
    """A 63-bit seed mixed from integer keys (any size, any sign) through ``numpy.random.SeedSequence``."""
    entropy = [int(key) % (1 << 128) for key in keys]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> np.uint64(1))


def numpy_rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng(derive_seed(*keys))


def torch_generator(*keys: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*keys))


# -------------------------------------------------------------------------------------------- layers
def linear(in_dim: int, out_dim: int, generator: torch.Generator, zero: bool = False) -> nn.Linear:
    """``nn.Linear`` with PyTorch's default (Kaiming-uniform) init drawn from ``generator``, or zeros."""
    layer = nn.Linear(in_dim, out_dim)
    with torch.no_grad():
        if zero:
            layer.weight.zero_()
            layer.bias.zero_()
        else:
            nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
            bound = 1.0 / math.sqrt(in_dim)
            nn.init.uniform_(layer.bias, -bound, bound, generator=generator)
    return layer


def mlp(dims: Sequence[int], generator: torch.Generator, negative_slope: float = 0.0) -> nn.Sequential:
    """Fully connected layers ``dims[0] -> ... -> dims[-1]`` with (leaky) ReLU between them, none at the end."""
    if len(dims) < 2:
        raise ValueError(f"mlp needs at least two sizes, got {list(dims)}")
    layers: list[nn.Module] = []
    for index, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(linear(d_in, d_out, generator))
        if index < len(dims) - 2:
            layers.append(nn.LeakyReLU(negative_slope) if negative_slope > 0 else nn.ReLU())
    return nn.Sequential(*layers)


def minibatches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """One epoch of shuffled index batches (the last one may be smaller)."""
    order = torch.randperm(n, generator=generator)
    return list(torch.split(order, max(1, int(batch_size))))


# --------------------------------------------------------------------------------- standardisation
def fit_standardiser(features: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and standard deviation (floored at 1e-6) of ``features`` (n, D)."""
    x = torch.as_tensor(np.asarray(features, dtype=np.float32))
    return x.mean(dim=0), x.std(dim=0, unbiased=False).clamp_min(1e-6)


def standardise(features: np.ndarray, mean: torch.Tensor, std: torch.Tensor,
                device: torch.device | str | None = None) -> torch.Tensor:
    """(n, D) float32 array -> standardised (n, D) float32 tensor, on ``device`` (None: the CPU; ``mean`` and
    ``std`` must be there too)."""
    return (torch.as_tensor(np.asarray(features, dtype=np.float32), device=device) - mean) / std


# ------------------------------------------------------------------------------------------ checks
def check_split_data(data: SplitData, method: str) -> None:
    """Shapes and values of a ``SplitData`` agree; raise a one-line MlfsicError naming the field otherwise."""
    features, targets, embeddings, name = data.features, data.targets, data.label_embeddings, data.split
    if features.ndim != 2 or features.shape[0] == 0:
        raise MlfsicError(f"{method}.fit: {name}.features must be a non-empty (n, D) array, got shape {features.shape}")
    if targets.ndim != 2 or targets.shape[0] != features.shape[0]:
        raise MlfsicError(
            f"{method}.fit: {name}.targets has shape {targets.shape}, expected ({features.shape[0]}, n_labels)"
        )
    if targets.shape[1] != len(data.label_names):
        raise MlfsicError(
            f"{method}.fit: {name}.targets has {targets.shape[1]} columns but {name}.label_names has "
            f"{len(data.label_names)}"
        )
    if embeddings.ndim != 2 or embeddings.shape[0] != len(data.label_names):
        raise MlfsicError(
            f"{method}.fit: {name}.label_embeddings has shape {embeddings.shape}, "
            f"expected ({len(data.label_names)}, E)"
        )
    if not np.all(np.isfinite(features)):
        raise MlfsicError(f"{method}.fit: {name}.features contains NaN or infinite values")
    empty = np.flatnonzero(targets.sum(axis=0) == 0)
    if empty.size:
        raise MlfsicError(f"{method}.fit: {name} label {data.label_names[int(empty[0])]!r} has no image")


def all_finite_rows(rows: np.ndarray | LocalRows, block_bytes: int = LOCAL_ROWS_BLOCK_BYTES) -> bool:
    """Whether every value of ``rows`` (an array or ``LocalRows``, indexed along its first axis) is finite, checked
    ``block_bytes`` of float32 rows at a time, so the check never holds a grid-sized temporary (nor reads a
    ``LocalRows`` whole)."""
    n = len(rows)
    row_bytes = 4 * int(np.prod(rows.shape[1:], dtype=np.int64))
    block = max(1, block_bytes // max(1, row_bytes))
    return all(bool(np.isfinite(rows[start:start + block]).all()) for start in range(0, n, block))


def check_fit_splits(base: SplitData, val: SplitData | None, method: str) -> None:
    """``check_split_data`` of the base split and of val (when given), whose features must have base's size."""
    check_split_data(base, method)
    if val is not None:
        check_split_data(val, method)
        if val.features.shape[1] != base.features.shape[1]:
            raise MlfsicError(f"{method}.fit: val.features has {val.features.shape[1]} columns, "
                              f"base.features {base.features.shape[1]}")


def standardised_base(method: Method, base: SplitData, val: SplitData | None = None) -> torch.Tensor:
    """The shared start of a built-in ``fit``: check ``base`` (and ``val``), store the base split's
    per-dimension mean and std on the method (``feature_mean``, ``feature_std``) and return the base
    features standardised, (n, D) float32."""
    check_split_data(base, method.name)
    if val is not None:
        check_split_data(val, method.name)
    method.feature_mean, method.feature_std = fit_standardiser(base.features)
    return standardise(base.features, method.feature_mean, method.feature_std)


def check_episode(episode: Episode, method: str, feature_dim: int, zero_shot: bool, few_shot: bool) -> None:
    """The episode's setting is supported, shapes agree with the fitted feature size, every label has support."""
    if episode.k_shot == 0 and not zero_shot:
        raise MlfsicError(f"{method} does not support the 0shot setting (episode {episode.index})")
    if episode.k_shot > 0 and not few_shot:
        raise MlfsicError(f"{method} does not support the {episode.k_shot}shot setting (episode {episode.index})")
    n_labels = episode.n_labels
    if episode.label_embeddings.shape[0] != n_labels:
        raise MlfsicError(
            f"{method}: episode {episode.index} label_embeddings has {episode.label_embeddings.shape[0]} rows "
            f"for {n_labels} labels"
        )
    for field in ("query_features", "support_features"):
        array = getattr(episode, field)
        if array.ndim != 2 or (array.shape[0] > 0 and array.shape[1] != feature_dim):
            raise MlfsicError(
                f"{method}: episode {episode.index} {field} has shape {array.shape}, expected (n, {feature_dim})"
            )
        if not np.all(np.isfinite(array)):
            raise MlfsicError(f"{method}: episode {episode.index} {field} contains NaN or infinite values")
    if episode.k_shot > 0:
        targets = episode.support_targets
        if targets.shape != (episode.support_features.shape[0], n_labels):
            raise MlfsicError(
                f"{method}: episode {episode.index} support_targets has shape {targets.shape}, "
                f"expected ({episode.support_features.shape[0]}, {n_labels})"
            )
        missing = np.flatnonzero(targets.sum(axis=0) == 0)
        if missing.size:
            raise MlfsicError(
                f"{method}: episode {episode.index} label {episode.label_names[int(missing[0])]!r} "
                f"has no support image"
            )


# ----------------------------------------------------------------------------------- model selection
class KeepBest:
    """Keep what scored best on val so far (docs/architecture.md §4.3), shared by lcm and mkt.

    ``offer(score, tag, keep)`` replaces the kept payload only for a strictly higher score, calling ``keep()``
    (e.g. a deep copy of a state dict) only then; ``patience`` (0: never) offers in a row without improvement
    end training (``exhausted``). An initial ``score``/``payload`` (mkt's teacher state) competes like any offer.

    Example:
        >>> best = KeepBest(patience=2)
        >>> [best.offer(s, f"step{i}", lambda: i) for i, s in enumerate([0.3, 0.5, 0.5, 0.4])]
        [True, True, False, False]
        >>> best.score, best.tag, best.payload, best.exhausted
        (0.5, 'step1', 1, True)
    """

    def __init__(self, patience: int = 0, score: float = -math.inf, tag: object = None, payload: object = None):
        self.patience = patience
        self.score, self.tag, self.payload = score, tag, payload
        self.since_best = 0

    @property
    def found(self) -> bool:
        """Whether any offer (or the initial payload) was kept."""
        return self.payload is not None

    @property
    def exhausted(self) -> bool:
        return bool(self.patience) and self.since_best >= self.patience

    def offer(self, score: float, tag: object, keep: Callable[[], object]) -> bool:
        if score > self.score:
            self.score, self.tag, self.payload = score, tag, keep()
            self.since_best = 0
            return True
        self.since_best += 1
        return False


def val_episodes(val: SplitData, k_shot: int, n_episodes: int, n_query: int,
                 seed: int) -> list[tuple[Episode, np.ndarray]]:
    """``n_episodes`` K-shot episodes of the val split for model selection in ``fit``, with their query targets:
    the harness's default sampler (``release``: exactly K support images per label) over the val labels with at
    least K + ``n_query`` images, its seed drawn from ``seed`` and K; an episode the sampler cannot complete is
    skipped (linear-probe, tip-adapter)."""
    from mlfsic.harness.protocol.data import LabelledPool
    from mlfsic.harness.protocol.episodes import SamplerParams, episode_seed, make_episode

    targets = np.asarray(val.targets) > 0.5
    labels = np.flatnonzero(targets.sum(axis=0) >= k_shot + n_query)
    if labels.size < 2 or n_episodes < 1:
        return []
    pool = LabelledPool(dataset="val", split="val", label_names=tuple(val.label_names[j] for j in labels),
                        image_ids=np.arange(targets.shape[0], dtype=np.int64), targets=targets[:, labels],
                        annotation_sha256="")
    params = SamplerParams(protocol="release", k_shot=k_shot, n_query=n_query)
    episode_set_seed = int(numpy_rng(seed, 3, k_shot).integers(2**31))
    episodes = []
    for index in range(n_episodes):
        try:
            drawn = make_episode(pool, params, episode_set_seed, index)
        except MlfsicError:
            continue
        support, query = np.asarray(drawn["support"], np.int64), np.asarray(drawn["query"], np.int64)
        episode = Episode(
            index=index, seed=episode_seed(episode_set_seed, index), k_shot=k_shot, label_names=pool.label_names,
            label_embeddings=np.asarray(val.label_embeddings)[labels], support_features=val.features[support],
            support_local_features=None, support_targets=targets[np.ix_(support, labels)].astype(np.float32),
            query_features=val.features[query], query_local_features=None,
        )
        episodes.append((episode, targets[np.ix_(query, labels)].astype(np.float32)))
    return episodes
