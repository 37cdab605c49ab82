"""Episode metrics and the statistics behind the leaderboard (DESIGN 5.4).

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

Per leaderboard cell
    ``mean_ci``: mean and half-width of the Student-t confidence interval over episodes.
    ``paired_bootstrap``: percentile bootstrap of the mean paired difference a - b over shared episodes
    (Efron & Tibshirani, "An Introduction to the Bootstrap", 1993, ch. 13 and 16), with a two-sided
    p-value from the null-centred bootstrap distribution, (1 + #{|m*_b - m| >= |m|}) / (B + 1)
    (Davison & Hinkley 1997, ch. 4).
    ``ranks_with_ties``: the method with the highest mean ranks 1; every method whose paired difference
    to it has a CI containing 0 ties with it (rank 1); the rest follow in decreasing mean with standard
    competition ranking ("1, 1, 3, 4"), methods with exactly equal means sharing a rank.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats

from mlfsic.harness.errors import MlfsicError

_BOOTSTRAP_CHUNK = 256  # bootstrap replicates drawn per block: bounds memory at 256 x n_episodes indices


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
    """AP of one label over n images (1-D inputs); sklearn's definition; nan if no positive."""
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


def mean_ci(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """(mean, half-width of the t-interval): t_{(1+c)/2, n-1} * s / sqrt(n), s with ddof=1.

    The half-width is nan for a single value.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        raise MlfsicError("mean_ci of no values")
    if not np.isfinite(values).all():
        raise MlfsicError("mean_ci: values contain NaN or inf")
    if not 0.0 < confidence < 1.0:
        raise MlfsicError(f"mean_ci: confidence must lie in (0, 1), got {confidence}")
    mean = float(values.mean())
    if values.size < 2:
        return mean, math.nan
    sem = float(values.std(ddof=1)) / math.sqrt(values.size)
    return mean, float(stats.t.ppf(0.5 + confidence / 2.0, values.size - 1)) * sem


def paired_bootstrap(
    a: np.ndarray, b: np.ndarray, n_boot: int = 10000, seed: int = 0, confidence: float = 0.95
) -> dict[str, float]:
    """Paired percentile bootstrap of mean(a - b) over the same episodes (a[i] and b[i] share episode i).

    Returns ``mean_diff``, ``ci_low``, ``ci_high`` (percentile interval at ``confidence``) and
    ``p_value`` (two-sided, null-centred, never 0). Resamples episode indices with
    ``numpy.random.default_rng(seed)`` in blocks of 256 replicates.
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise MlfsicError(f"paired_bootstrap: {a.size} values paired with {b.size}")
    if a.size == 0:
        raise MlfsicError("paired_bootstrap of no pairs")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise MlfsicError("paired_bootstrap: values contain NaN or inf")
    if n_boot < 1:
        raise MlfsicError(f"paired_bootstrap: n_boot must be >= 1, got {n_boot}")
    diff = a - b
    n = diff.size
    observed = float(diff.mean())
    rng = np.random.default_rng(seed)
    boot_means = np.empty(n_boot, dtype=np.float64)
    for start in range(0, n_boot, _BOOTSTRAP_CHUNK):
        stop = min(start + _BOOTSTRAP_CHUNK, n_boot)
        indices = rng.integers(0, n, size=(stop - start, n))
        boot_means[start:stop] = diff[indices].mean(axis=1)
    alpha = 1.0 - confidence
    ci_low, ci_high = np.quantile(boot_means, [alpha / 2.0, 1.0 - alpha / 2.0])
    # a tolerance keeps the exact-zero case (identical methods) at p = 1 despite float summation order
    extreme = np.abs(boot_means - observed) >= abs(observed) - 1e-12
    p_value = (1.0 + float(extreme.sum())) / (n_boot + 1.0)
    return {"mean_diff": observed, "ci_low": float(ci_low), "ci_high": float(ci_high), "p_value": p_value}


def ranks_with_ties(
    values: dict[str, np.ndarray], n_boot: int = 10000, seed: int = 0, confidence: float = 0.95
) -> dict[str, dict[str, Any]]:
    """Rank the methods of one cell from their per-episode values on the *same* episodes.

    ``values[method]`` is a 1-D array aligned across methods (entry i = the same episode for all).
    The best method is the one with the highest mean (name breaks exact ties). Returns per method:
    ``rank`` (int), ``mean``, ``best`` (the best method's name), ``tied_with_best`` (bool; True for the
    best itself) and ``vs_best`` (the ``paired_bootstrap`` of method - best; None for the best).
    """
    if not values:
        return {}
    arrays = {name: np.asarray(v, dtype=np.float64).ravel() for name, v in values.items()}
    sizes = {v.size for v in arrays.values()}
    if len(sizes) != 1:
        raise MlfsicError(f"ranks_with_ties: methods have different numbers of paired episodes {sorted(sizes)}")
    means = {name: float(v.mean()) for name, v in arrays.items()}
    order = sorted(means, key=lambda name: (-means[name], name))
    best = order[0]
    result: dict[str, dict[str, Any]] = {}
    for name in order:
        if name == best:
            comparison, tied = None, True
        else:
            comparison = paired_bootstrap(arrays[name], arrays[best], n_boot=n_boot, seed=seed, confidence=confidence)
            tied = comparison["ci_low"] <= 0.0 <= comparison["ci_high"]
        result[name] = {"mean": means[name], "best": best, "tied_with_best": tied, "vs_best": comparison}
    # tied methods share rank 1; the others rank by mean after them (standard competition ranking)
    n_tied = sum(1 for name in order if result[name]["tied_with_best"])
    rest = [name for name in order if not result[name]["tied_with_best"]]
    for name in order:
        if result[name]["tied_with_best"]:
            result[name]["rank"] = 1
    for position, name in enumerate(rest):
        earlier = [other for other in rest[:position] if means[other] == means[name]]
        result[name]["rank"] = result[earlier[0]]["rank"] if earlier else n_tied + position + 1
    return result
