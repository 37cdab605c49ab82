"""Per-episode metrics (docs/architecture.md §5.4): AP, mAP and F1@k. The leaderboard statistics (intervals, paired
bootstrap, ranks) live in ``mlfsic.harness.report.intervals``.

Per episode
    ``average_precision`` / ``per_label_ap`` / ``episode_map``: average precision exactly as
    ``sklearn.metrics.average_precision_score`` defines it,

        AP = sum_t (R_t - R_{t-1}) * P_t,

    the sum running over the *distinct* score thresholds t in decreasing order (tied scores form one
    operating point, so the order of tied items never matters). Equivalently, AP is the mean over the
    positives of the precision at the end of the positive's tie group; that form is computed here for all
    labels of an episode at once with one sort and cumulative sums (no Python loop over labels), and
    works for any leading batch dimensions, so 100k+ episodes cost a few vectorised passes.
    A label with no positive has no AP (``nan``; sklearn would warn and return 0). ``episode_map`` averages
    the labels that have a positive; in ``episodic-v1`` every label has >= Q positives, so it equals
    ``average_precision_score(targets, scores, average="macro")`` there.

    ``f1_at_k``: the overall (micro) F1 of "O-F1 top-k" as reported in multi-label recognition papers
    since ML-GCN (Chen et al., "Multi-Label Image Recognition with Graph Convolutional Networks",
    CVPR 2019): every image predicts its k highest-scoring labels; precision = sum TP / sum predicted,
    recall = sum TP / sum positives, over all images and labels of the episode. ML-GCN's code further
    dropped top-k labels with a negative logit; our methods' scores share no scale, so no threshold is
    applied. Ties at the k-th place go to the lower label index (stable sort).
"""

from __future__ import annotations

import math

import numpy as np

from mlfsic.harness.errors import MlfsicError

METRIC_VERSION = "1"  # how episodes are scored; run.json records it, and against= refuses another


def _check_pair(scores: np.ndarray, targets: np.ndarray, ndim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets)
    if scores.shape != targets.shape:
        raise MlfsicError(f"scores shape {scores.shape} differs from targets shape {targets.shape}")
    if ndim is not None and scores.ndim != ndim:
        raise MlfsicError(f"expected {ndim}-D scores and targets, got shape {scores.shape}")
    if scores.ndim == 0 or scores.shape[-1 if scores.ndim == 1 else -2] == 0:
        raise MlfsicError(f"scores of shape {scores.shape} hold no images")
    if not np.isfinite(scores).all():
        raise MlfsicError("scores contain NaN or inf")
    return scores, targets.astype(bool)


def _ap_along_images(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """AP of every column: ``scores``/``targets`` shaped (..., n, L) -> (..., L); nan without positives."""
    n = scores.shape[-2]
    order = np.argsort(-scores, axis=-2, kind="stable")
    sorted_scores = np.take_along_axis(scores, order, axis=-2)
    sorted_targets = np.take_along_axis(targets, order, axis=-2)
    true_pos = np.cumsum(sorted_targets, axis=-2, dtype=np.float64)
    # the last position of each tie group is an operating point; every item takes its group's end
    group_end = np.ones(sorted_scores.shape, dtype=bool)
    group_end[..., :-1, :] = sorted_scores[..., :-1, :] != sorted_scores[..., 1:, :]
    positions = np.arange(n, dtype=np.int64).reshape((n, 1))
    end_index = np.where(group_end, positions, n - 1)
    end_index = np.flip(np.minimum.accumulate(np.flip(end_index, axis=-2), axis=-2), axis=-2)
    precision_at_end = np.take_along_axis(true_pos, end_index, axis=-2) / (end_index + 1)
    n_pos = true_pos[..., -1, :]
    total = np.sum(np.where(sorted_targets, precision_at_end, 0.0), axis=-2)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_pos > 0, total / n_pos, np.nan)


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """AP of one label over n images (1-D inputs); sklearn's definition; nan if no positive.

    Example:
        >>> import numpy as np
        >>> round(average_precision(np.array([0.9, 0.8, 0.3, 0.1]), np.array([1, 0, 1, 0])), 4)
        0.8333
    """
    scores, targets = _check_pair(scores, targets, ndim=1)
    return float(_ap_along_images(scores[:, None], targets[:, None])[0])


def per_label_ap(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """AP per label: (n, L) scores and multi-hot targets -> (L,); nan for a label without positives.

    Leading batch dimensions are allowed: (E, n, L) -> (E, L).
    """
    scores, targets = _check_pair(scores, targets)
    if scores.ndim < 2:
        raise MlfsicError(f"expected (n, L) scores, got shape {scores.shape}")
    return _ap_along_images(scores, targets)


def episode_map(scores: np.ndarray, targets: np.ndarray) -> float:
    """mAP of one episode: mean AP over the labels with >= 1 positive (all of them in episodic-v1).

    nan when no label has a positive.
    """
    ap = per_label_ap(scores, targets)
    if ap.ndim != 1:
        raise MlfsicError(f"episode_map takes one episode's (n, L) scores, got shape {np.shape(scores)}")
    defined = ap[~np.isnan(ap)]
    return float(defined.mean()) if defined.size else math.nan


def f1_at_k(scores: np.ndarray, targets: np.ndarray, k: int) -> float:
    """Overall (micro) F1 when each of the n images predicts its top-k of L labels (O-F1 top-k).

    k larger than L predicts every label. 0.0 when there is no true positive.
    """
    scores, targets = _check_pair(scores, targets, ndim=2)
    if k < 1:
        raise MlfsicError(f"f1_at_k: k must be >= 1, got {k}")
    n_labels = scores.shape[1]
    k = min(k, n_labels)
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    true_pos = float(np.take_along_axis(targets, top, axis=1).sum())
    n_predicted = float(top.size)
    n_positive = float(targets.sum())
    if true_pos == 0.0:
        return 0.0
    precision = true_pos / n_predicted
    recall = true_pos / n_positive
    return 2.0 * precision * recall / (precision + recall)


def prototype_map(features: np.ndarray, targets: np.ndarray, seed: int) -> float | None:
    """Nearest-prototype mAP of frozen features on labels the network never trained on.

    The val labels are disjoint from the base labels, so the BCE head cannot score them. We measure
    what the few-shot methods rely on, transfer of the frozen features to unseen labels, with the
    simplest training-free few-shot classifier (Snell et al., "Prototypical Networks", NeurIPS 2017,
    multi-label form): the val images are split in two halves (seeded); a label's prototype is the
    mean L2-normalised feature of the images in one half that carry it; the other half's images are
    scored by cosine similarity to each prototype; macro AP (``sklearn.metrics.average_precision_score``)
    over labels with positives on both sides; the two directions are averaged. A linear probe would
    need its own hyperparameters and training time; prototypes need neither. None if no label qualifies.
    """
    from sklearn.metrics import average_precision_score

    n = len(features)
    if n < 2:
        return None
    normed = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    order = np.random.default_rng(seed).permutation(n)
    halves = (order[: n // 2], order[n // 2:])
    scores = []
    for support, query in (halves, halves[::-1]):
        y_support, y_query = targets[support] > 0, targets[query] > 0
        usable = y_support.any(axis=0) & y_query.any(axis=0)
        if not usable.any():
            continue
        counts = y_support[:, usable].sum(axis=0)
        prototypes = (y_support[:, usable].T.astype(np.float32) @ normed[support]) / counts[:, None]
        prototypes /= np.maximum(np.linalg.norm(prototypes, axis=1, keepdims=True), 1e-12)
        similarity = normed[query] @ prototypes.T
        scores.append(float(average_precision_score(y_query[:, usable], similarity, average="macro")))
    return float(np.mean(scores)) if scores else None
