"""Intervals, paired bootstrap and ranks of the leaderboard (DESIGN 5.4, 10).

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
