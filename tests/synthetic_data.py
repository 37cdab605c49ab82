"""Tiny synthetic base data and episodes with class structure, for method tests (no files, no backbone).

A ``World`` fixes base and novel labels. Each label has a low-dimensional latent vector ``z``; its word
embedding is a linear image of ``z`` (plus a little noise) and its feature centroid is another linear
image of ``z`` plus a label-specific component. So

* features carry the labels (few-shot methods can learn prototypes/classifiers),
* the embedding -> centroid relation learnt on base labels transfers to novel labels (zero-shot methods
  can learn), because novel latents lie in the span of the base latents (``latent_dim`` <= n base labels).

An image carries 1-3 labels of its split; its feature is the sum of its labels' centroids, a constant
offset (so standardisation matters) and Gaussian noise. Episodes follow ``episodic-v1`` (docs/architecture.md §5.3):
every episode label has K support and ``n_query`` query images carrying it (an image may carry other
episode labels too); the ``Episode`` has no query targets, which ``make_episode`` returns separately.

Local features (for methods with ``needs_local_features``, e.g. lcm/wvga): a grid of ``local_positions``
positions (default 9, a 3x3 grid; 0 or None for none) of D channels per image, made from the global
feature and the targets with a separate random stream, so global features and targets are exactly what
they are without local features. Each carried label occupies its own random region of about L/4
positions, which holds that label's centroid (scaled so it averages to the centroid over the grid); the
rest is noise. The grid is then shifted so that its mean over positions equals the global feature, as
the mean-pooled last feature map of a real backbone does. ``local_regions`` of ``make_local_grid``
returns the regions, so tests can check what local-feature selection keeps.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from mlfsic.methods.api import Episode, SplitData


@dataclass(frozen=True)
class World:
    base_labels: tuple[str, ...]
    novel_labels: tuple[str, ...]
    embeddings: np.ndarray  # (n_base + n_novel, E) float32, base labels first
    centroids: np.ndarray  # (n_base + n_novel, D) float32
    offset: np.ndarray  # (D,) float32
    noise: float

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])


def make_world(
    n_base_labels: int = 8,
    n_novel_labels: int = 6,
    dim: int = 32,
    emb_dim: int = 48,
    latent_dim: int = 6,
    noise: float = 1.0,
    specific: float = 0.5,
    seed: int = 1234,
) -> World:
    """``specific`` scales each label's own random centroid component (the part embeddings cannot predict)."""
    rng = np.random.default_rng(seed)
    n_all = n_base_labels + n_novel_labels
    latents = rng.normal(size=(n_all, latent_dim))
    embeddings = latents @ rng.normal(size=(latent_dim, emb_dim)) + 0.1 * rng.normal(size=(n_all, emb_dim))
    centroids = latents @ rng.normal(size=(latent_dim, dim)) / np.sqrt(latent_dim) + specific * rng.normal(size=(n_all, dim))
    return World(
        base_labels=tuple(f"base_{i}" for i in range(n_base_labels)),
        novel_labels=tuple(f"novel_{i}" for i in range(n_novel_labels)),
        embeddings=embeddings.astype(np.float32),
        centroids=centroids.astype(np.float32),
        offset=np.full(dim, 3.0, dtype=np.float32),
        noise=noise,
    )


DEFAULT_WORLD = make_world()


def _images(world: World, columns: np.ndarray, count: int, must: int | None, rng: np.random.Generator):
    """``count`` images over label columns ``columns`` (indices into the world): features (count, D) and
    multi-hot targets (count, len(columns)); each image carries column position ``must`` if given."""
    n_labels = columns.size
    targets = np.zeros((count, n_labels), dtype=np.float32)
    for row in range(count):
        n_carried = min(n_labels, int(rng.choice([1, 2, 3], p=[0.5, 0.3, 0.2])))
        carried = rng.choice(n_labels, size=n_carried, replace=False)
        if must is not None and must not in carried:
            carried[0] = must
        targets[row, carried] = 1.0
    features = targets @ world.centroids[columns] + world.offset + world.noise * rng.normal(size=(count, world.dim))
    return features.astype(np.float32), targets


DEFAULT_LOCAL_POSITIONS = 9


def make_local_grid(
    world: World, columns: np.ndarray, features: np.ndarray, targets: np.ndarray, positions: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Local grid (n, L, D) float32 whose mean over L is ``features`` (n, D), and the label regions
    (n, n_labels, L) bool: ``regions[i, j]`` marks the positions holding label ``j`` of image ``i``
    (all False where the image does not carry the label)."""
    n, dim = features.shape
    size = max(1, positions // 4)
    regions = np.zeros((n, columns.size, positions), dtype=bool)
    structured = world.noise * rng.normal(size=(n, positions, dim))
    for row in range(n):
        for label in np.flatnonzero(targets[row] > 0.5):
            where = rng.choice(positions, size=size, replace=False)
            regions[row, label, where] = True
            structured[row, where] += world.centroids[columns[label]] * (positions / size)
    local = features[:, None, :] + structured - structured.mean(axis=1, keepdims=True)
    return local.astype(np.float32), regions


def make_base_data(
    n: int = 300, seed: int = 0, world: World = DEFAULT_WORLD, local_positions: int | None = DEFAULT_LOCAL_POSITIONS
) -> SplitData:
    """Base split: ``n`` images over the world's base labels (every label guaranteed an image), with a
    local grid of ``local_positions`` positions per image (None or 0: ``local_features=None``)."""
    rng = np.random.default_rng([seed, 1])
    columns = np.arange(len(world.base_labels))
    features, targets = _images(world, columns, n, None, rng)
    for label in np.flatnonzero(targets.sum(axis=0) == 0):  # only possible for tiny n
        targets[label % n, label] = 1.0
        features[label % n] += world.centroids[label]
    local = None
    if local_positions:
        local, _ = make_local_grid(world, columns, features, targets, local_positions, np.random.default_rng([seed, 1, 7]))
    return SplitData(
        split="base",
        features=features,
        local_features=local,
        targets=targets,
        label_names=world.base_labels,
        label_embeddings=world.embeddings[columns].copy(),
        seed=seed,
    )


def make_episode(
    k_shot: int, seed: int = 0, n_query: int = 4, n_way: int | None = None, world: World = DEFAULT_WORLD,
    local_positions: int | None = DEFAULT_LOCAL_POSITIONS,
) -> tuple[Episode, np.ndarray]:
    """An episode over the world's novel labels (all, or ``n_way`` of them) and its query targets (n_q, N);
    support and query local grids of ``local_positions`` positions (None or 0: no local features)."""
    rng = np.random.default_rng([seed, 2])
    n_novel = len(world.novel_labels)
    chosen = np.sort(rng.choice(n_novel, size=n_way or n_novel, replace=False))
    columns = len(world.base_labels) + chosen

    def draw(per_label: int) -> tuple[np.ndarray, np.ndarray]:
        parts = [_images(world, columns, per_label, position, rng) for position in range(columns.size)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    support_features, support_targets = draw(k_shot) if k_shot > 0 else (
        np.zeros((0, world.dim), np.float32), np.zeros((0, columns.size), np.float32))
    query_features, query_targets = draw(n_query)
    support_local = query_local = None
    if local_positions:
        local_rng = np.random.default_rng([seed, 2, 7])
        support_local, _ = make_local_grid(world, columns, support_features, support_targets, local_positions, local_rng)
        query_local, _ = make_local_grid(world, columns, query_features, query_targets, local_positions, local_rng)
    episode = Episode(
        index=seed,
        seed=int(np.random.SeedSequence([seed, 3]).generate_state(1)[0]),
        k_shot=k_shot,
        label_names=tuple(world.novel_labels[i] for i in chosen),
        label_embeddings=world.embeddings[columns].copy(),
        support_features=support_features,
        support_local_features=support_local,
        support_targets=support_targets,
        query_features=query_features,
        query_local_features=query_local,
    )
    return episode, query_targets


# -------------------------------------------------------------------------- coco-moji-sized episodes
def coco_moji_sized_pool(world: World, n_images: int, positions: int, seed: int):
    """Images over the world's 12 novel labels with 1-4 labels each (coco-moji's 40/29/20/11 %)."""
    rng = np.random.default_rng(seed)
    columns = len(world.base_labels) + np.arange(len(world.novel_labels))
    targets = np.zeros((n_images, columns.size), np.float32)
    for row in range(n_images):
        carried = rng.choice(columns.size, size=rng.choice([1, 2, 3, 4], p=[0.4, 0.29, 0.2, 0.11]), replace=False)
        targets[row, carried] = 1.0
    features = (targets @ world.centroids[columns] + world.offset
                + world.noise * rng.normal(size=(n_images, world.dim))).astype(np.float32)
    local, _ = make_local_grid(world, columns, features, targets, positions, rng)
    return features, local, targets


def coco_moji_sized_episodes(world: World, k_shot: int, n_episodes: int, positions: int = 36,
                             protocol: str = "release") -> list[Episode]:
    """Episodes drawn by the harness's sampler (``protocol``, the default's by default) from a pool of 2000
    synthetic images over the world's 12 novel labels (1-4 labels per image, coco-moji's 40/29/20/11 %)."""
    from mlfsic.harness.protocol.data import LabelledPool
    from mlfsic.harness.protocol.episodes import SamplerParams, make_episode as draw

    features, local, targets = coco_moji_sized_pool(world, 2000, positions, seed=1)
    pool = LabelledPool(dataset="synthetic", split="test", label_names=world.novel_labels,
                        image_ids=np.arange(len(targets), dtype=np.int64), targets=targets > 0.5, annotation_sha256="")
    embeddings = world.embeddings[len(world.base_labels):]
    episodes = []
    for index in range(n_episodes):
        drawn = draw(pool, SamplerParams(protocol=protocol, k_shot=k_shot, n_query=4), 0, index)
        support, query = np.asarray(drawn["support"], dtype=np.int64), np.asarray(drawn["query"], dtype=np.int64)
        episodes.append(Episode(
            index=index, seed=index, k_shot=k_shot, label_names=world.novel_labels, label_embeddings=embeddings,
            support_features=features[support], support_local_features=local[support],
            support_targets=targets[support], query_features=features[query], query_local_features=local[query],
        ))
    return episodes


# ----------------------------------------------------------------------------------------- open_clip views
@functools.lru_cache(maxsize=1)
def tiny_clip():
    """The pinned tiny teacher (``harness.backbones.open_clip``), loaded once per test process: the model that
    methods with ``needs_clip`` get, and that computes their features (``clip_view``)."""
    import importlib.resources

    import yaml

    from mlfsic.harness.backbones.open_clip import load_tiny_teacher
    from mlfsic.harness.backbones.weights import pinned_weights

    config = yaml.safe_load((importlib.resources.files("mlfsic.configs") / "backbone" / "tiny-teacher.yaml").read_text())
    return load_tiny_teacher(pinned_weights(config))


def clip_view(data: SplitData | Episode, clip, seed: int = 0) -> SplitData | Episode:
    """``data`` with its features replaced by what an open_clip backbone stores for deterministic noise images
    (global: projected embedding; local: tokens entering the last block), one image per row. For methods with
    ``needs_clip``, which score the features against the model's text tower; targets and labels are kept."""
    import dataclasses

    import torch

    from mlfsic.harness.backbones.open_clip import ClipImageFeatures

    module = ClipImageFeatures(clip.visual)

    def encode(n: int, part: int) -> tuple[np.ndarray, np.ndarray]:
        pixels = np.random.default_rng([seed, part, 11]).normal(size=(max(n, 1), 3, clip.image_size, clip.image_size))
        with torch.no_grad():
            global_features, tokens = module.forward_features(torch.from_numpy(pixels.astype(np.float32)))
        return global_features.numpy()[:n], tokens.numpy()[:n]  # n = 0: empty arrays of the right widths

    if isinstance(data, SplitData):
        features, local = encode(len(data.features), 0)
        return dataclasses.replace(data, features=features, local_features=local)
    support, support_local = encode(len(data.support_features), 1)
    query, query_local = encode(len(data.query_features), 2)
    return dataclasses.replace(data, support_features=support, support_local_features=support_local,
                               query_features=query, query_local_features=query_local)
