"""Intervals, paired bootstrap and ranks of the leaderboard (docs/architecture.md §5.4, 10).

Per leaderboard cell
    ``mean_interval``: the mean and its 95% interval. With >= 3 seeds (``MIN_SEEDS``) it is the
    percentile interval of the *hierarchical* bootstrap (``cluster_bootstrap_means``): each replicate
    draws S seeds with replacement from the S seeds, then, within each drawn seed s, n_s of its episodes
    with replacement, and takes the mean of the drawn episodes,

        m*_b = sum_j sum_i y[s*_bj, i*_bji] / sum_j n_{s*_bj}

    so a rerun on new seeds (new episode sets, new method seeds) is what the interval covers, not only
    new episodes of the same seeds (Davison & Hinkley 1997, sec. 3.8, "two-stage sampling"; Field &
    Welsh 2007). With fewer seeds a seed-level spread cannot be estimated; the interval is then
    episode-level only: ``mean_ci``, the Student-t interval over episodes.
    ``paired_bootstrap``: episode-level percentile bootstrap of the mean paired difference a - b over
    shared episodes (Efron & Tibshirani, "An Introduction to the Bootstrap", 1993, ch. 13 and 16), with a
    two-sided p-value from the null-centred bootstrap distribution, (1 + #{|m*_b - m| >= |m|}) / (B + 1)
    (Davison & Hinkley 1997, ch. 4). ``hierarchical_paired_bootstrap`` is the same with the two-stage
    draws above applied to the paired differences (both methods see the same seeds and episodes).
    ``ranks_with_ties``: the method with the highest mean ranks 1; every method whose paired difference
    to it has a CI containing 0 ties with it (rank 1); the rest follow in decreasing mean with standard
    competition ranking ("1, 1, 3, 4"), methods with exactly equal means sharing a rank. Given the seed
    of every episode and >= 3 seeds, the paired intervals are hierarchical; else episode-level.

Values that are NaN (an undefined metric, e.g. the mAP of an episode without positives) are left out:
of the mean, and of every pairing (an episode is paired only where all methods of the cell have a value).
Everything is vectorised (a count matrix per block of replicates, one matrix product) and deterministic
(``numpy.random.default_rng(seed)``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import stats

from mlfsic.harness.errors import MlfsicError

# Keeps BLAS to one thread in the bootstrap loop (idle BLAS threads spin and slow the random draws that
# alternate with the products).
from threadpoolctl import threadpool_limits

_BOOTSTRAP_CHUNK = 256  # bootstrap replicates drawn per block: bounds memory at 256 x n_episodes indices
_DRAWS_PER_BLOCK = 1 << 21  # hierarchical bootstrap: episode draws per block of replicates
MIN_SEEDS = 3  # fewer seeds: intervals are episode-level only
SEED_LEVEL = "seeds+episodes"  # the interval kinds, as the csv/md/html name them
EPISODE_LEVEL = "episodes"


def mean_ci(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """(mean, half-width of the t-interval): t_{(1+c)/2, n-1} * s / sqrt(n), s with ddof=1.

    The half-width is nan for a single value.

    Example:
        >>> import numpy as np
        >>> mean, half = mean_ci(np.array([0.5, 0.6, 0.7]))
        >>> round(mean, 4), round(half, 4)
        (0.6, 0.2484)
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


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise MlfsicError(f"confidence must lie in (0, 1), got {confidence}")


def cluster_bootstrap_means(
    columns: np.ndarray, clusters: np.ndarray, n_boot: int = 10000, seed: int = 0
) -> np.ndarray:
    """Hierarchical (seed, then episode) bootstrap means of each column: (n_boot, K).

    ``columns`` is (N, K) (or (N,)): N episodes, K quantities; NaN marks a value that is absent, which a
    replicate skips (its mean is over the drawn episodes that have a value; NaN if none has).
    ``clusters`` (N,) names each episode's seed. Each replicate draws S of the S seeds with replacement
    and, within each drawn seed, as many episodes as it has, with replacement; all K columns share the
    draws. Vectorised as a (replicates x N) count matrix per block times the (N x K) values.
    """
    values = np.asarray(columns, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    clusters = np.asarray(clusters).ravel()
    if values.ndim != 2 or clusters.size != values.shape[0]:
        raise MlfsicError(f"cluster_bootstrap_means: {clusters.size} seed labels for values of shape {values.shape}")
    if values.shape[0] == 0:
        raise MlfsicError("cluster_bootstrap_means of no episodes")
    if n_boot < 1:
        raise MlfsicError(f"cluster_bootstrap_means: n_boot must be >= 1, got {n_boot}")
    _, inverse = np.unique(clusters, return_inverse=True)
    order = np.argsort(inverse, kind="stable")  # episodes grouped by seed
    values, inverse = values[order], inverse[order]
    sizes = np.bincount(inverse)
    offsets = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    n_seeds, n_max = sizes.size, int(sizes.max())
    present = np.isfinite(values)
    weights = np.concatenate([np.where(present, values, 0.0), present.astype(np.float64)], axis=1)
    k = values.shape[1]
    equal = bool((sizes == n_max).all())
    rng = np.random.default_rng(seed)
    out = np.empty((n_boot, k), dtype=np.float64)
    block = max(1, _DRAWS_PER_BLOCK // (n_seeds * n_max))
    with threadpool_limits(limits=1, user_api="blas"):
        _draw_blocks(out, rng, weights, sizes, offsets, equal, block, k)
    return out


def _draw_blocks(out: np.ndarray, rng: np.random.Generator, weights: np.ndarray, sizes: np.ndarray,
                 offsets: np.ndarray, equal: bool, block: int, k: int) -> None:
    """Fill ``out`` (n_boot, k) block by block: seeds, then episodes within them, counted and multiplied."""
    n_boot, n, n_seeds, n_max = out.shape[0], weights.shape[0], sizes.size, int(sizes.max())
    slots = np.arange(n_max)
    for start in range(0, n_boot, block):
        stop = min(start + block, n_boot)
        b = stop - start
        pick = rng.integers(0, n_seeds, size=(b, n_seeds))  # stage 1: seeds
        if equal:  # stage 2: episodes within each drawn seed
            flat = rng.integers(0, n_max, size=(b, n_seeds, n_max))
            flat += (offsets[pick] + n * np.arange(b)[:, None])[:, :, None]  # row in the block's count matrix
            flat = flat.ravel()
        else:
            drawn = sizes[pick][:, :, None]
            local = np.minimum((rng.random((b, n_seeds, n_max)) * drawn).astype(np.int64), drawn - 1)
            rows = offsets[pick][:, :, None] + local + n * np.arange(b)[:, None, None]
            flat = rows[slots < drawn]
        counts = np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)
        totals = counts @ weights
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start:stop] = np.where(totals[:, k:] > 0, totals[:, :k] / totals[:, k:], np.nan)


def _percentile_interval(replicates: np.ndarray, confidence: float) -> tuple[float, float]:
    finite = replicates[np.isfinite(replicates)]
    if finite.size == 0:
        return math.nan, math.nan
    alpha = 1.0 - confidence
    low, high = np.quantile(finite, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


def _null_centred_p(replicates: np.ndarray, observed: float) -> float:
    finite = replicates[np.isfinite(replicates)]
    # a tolerance keeps the exact-zero case (identical methods) at p = 1 despite float summation order
    extreme = np.abs(finite - observed) >= abs(observed) - 1e-12
    return (1.0 + float(extreme.sum())) / (finite.size + 1.0)


def n_seeds_of(clusters: np.ndarray | None) -> int:
    return 0 if clusters is None else int(np.unique(np.asarray(clusters).ravel()).size)


def mean_interval(
    values: np.ndarray, clusters: np.ndarray | None = None, n_boot: int = 10000, seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Mean of the defined values and its interval; NaN values are counted and left out.

    Returns ``mean``, ``ci_low``, ``ci_high``, ``half_width`` ((high - low) / 2), ``interval``
    (``SEED_LEVEL`` with >= ``MIN_SEEDS`` seeds among the defined values: the percentile interval of
    ``cluster_bootstrap_means``; else ``EPISODE_LEVEL``: the t-interval of ``mean_ci``), ``n`` (defined
    values), ``n_undefined`` and ``n_seeds`` (seeds with a defined value).
    """
    _check_confidence(confidence)
    values = np.asarray(values, dtype=np.float64).ravel()
    defined = np.isfinite(values)
    result: dict[str, Any] = {"n": int(defined.sum()), "n_undefined": int((~defined).sum())}
    if clusters is not None:
        clusters = np.asarray(clusters).ravel()
        if clusters.size != values.size:
            raise MlfsicError(f"mean_interval: {clusters.size} seed labels for {values.size} values")
    n_seeds = n_seeds_of(None if clusters is None else clusters[defined])
    result["n_seeds"] = n_seeds
    if not defined.any():
        return {**result, "mean": math.nan, "ci_low": math.nan, "ci_high": math.nan, "half_width": math.nan,
                "interval": EPISODE_LEVEL}
    if n_seeds >= MIN_SEEDS:
        assert clusters is not None
        replicates = cluster_bootstrap_means(values, clusters, n_boot=n_boot, seed=seed)[:, 0]
        return {**result, **_seed_level_mean(values, replicates, confidence)}
    mean, half = mean_ci(values[defined], confidence)
    return {**result, "mean": mean, "ci_low": mean - half, "ci_high": mean + half, "half_width": half,
            "interval": EPISODE_LEVEL}


def _seed_level_mean(values: np.ndarray, replicates: np.ndarray, confidence: float) -> dict[str, Any]:
    low, high = _percentile_interval(replicates, confidence)
    return {"mean": float(np.nanmean(values)), "ci_low": low, "ci_high": high, "half_width": (high - low) / 2.0,
            "interval": SEED_LEVEL}


def hierarchical_paired_bootstrap(
    a: np.ndarray, b: np.ndarray, clusters: np.ndarray, n_boot: int = 10000, seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, float]:
    """``paired_bootstrap`` with seed-then-episode draws (``cluster_bootstrap_means``) of a - b.

    ``clusters[i]`` is the seed of the shared episode i. Same returned fields as ``paired_bootstrap``.
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise MlfsicError(f"hierarchical_paired_bootstrap: {a.size} values paired with {b.size}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise MlfsicError("hierarchical_paired_bootstrap: values contain NaN or inf")
    return _hierarchical_differences((a - b)[:, None], clusters, n_boot, seed, confidence)[0]


def paired_difference(
    a: np.ndarray, b: np.ndarray, clusters: np.ndarray, n_boot: int = 10000, seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """The paired interval of a - b the reports use: ``hierarchical_paired_bootstrap`` over the seeds
    ``clusters`` with >= ``MIN_SEEDS`` of them, else ``paired_bootstrap`` over episodes; the result's
    fields plus ``interval`` (``SEED_LEVEL`` or ``EPISODE_LEVEL``)."""
    if n_seeds_of(clusters) >= MIN_SEEDS:
        result = hierarchical_paired_bootstrap(a, b, clusters, n_boot=n_boot, seed=seed, confidence=confidence)
        return {**result, "interval": SEED_LEVEL}
    return {**paired_bootstrap(a, b, n_boot=n_boot, seed=seed, confidence=confidence), "interval": EPISODE_LEVEL}


def _hierarchical_differences(
    diffs: np.ndarray, clusters: np.ndarray, n_boot: int, seed: int, confidence: float
) -> list[dict[str, float]]:
    """Paired intervals of the columns of ``diffs`` (NaN = not paired there) from one set of draws."""
    _check_confidence(confidence)
    if not np.isfinite(diffs).any(axis=0).all():
        raise MlfsicError("paired bootstrap of no pairs")
    return _differences_from(diffs, cluster_bootstrap_means(diffs, clusters, n_boot=n_boot, seed=seed), confidence)


def _differences_from(diffs: np.ndarray, replicates: np.ndarray, confidence: float) -> list[dict[str, float]]:
    out = []
    for column in range(diffs.shape[1]):
        observed = float(np.nanmean(diffs[:, column]))
        low, high = _percentile_interval(replicates[:, column], confidence)
        out.append({"mean_diff": observed, "ci_low": low, "ci_high": high,
                    "p_value": _null_centred_p(replicates[:, column], observed)})
    return out


def holm_adjust(p_values: Mapping[str, float]) -> dict[str, float]:
    """Holm's step-down adjustment of a family of p-values (Holm, "A simple sequentially rejective multiple
    test procedure", Scand. J. Statist. 1979): the i-th smallest of m becomes max over j <= i of
    min(1, (m - j + 1) p_(j)).

    Used for a cell's comparisons of every method with its best: it controls the chance of marking any
    method of the cell significantly worse by accident (family-wise error) under any dependence between
    the comparisons, which share the best method's episodes; Benjamini-Hochberg controls only the expected
    share of false marks and needs positive dependence to do even that.

    Example:
        >>> {k: round(v, 3) for k, v in sorted(holm_adjust({"a": 0.01, "b": 0.04, "c": 0.03}).items())}
        {'a': 0.03, 'b': 0.06, 'c': 0.06}
    """
    order = sorted(p_values, key=lambda name: (p_values[name], name))
    adjusted, running = {}, 0.0
    for position, name in enumerate(order):
        running = max(running, min(1.0, (len(order) - position) * float(p_values[name])))
        adjusted[name] = running
    return adjusted


def ranks_with_ties(
    values: dict[str, np.ndarray], n_boot: int = 10000, seed: int = 0, confidence: float = 0.95,
    clusters: np.ndarray | None = None,
) -> dict[str, dict[str, Any]]:
    """Rank the methods of one cell from their per-episode values on the *same* episodes.

    ``values[method]`` is a 1-D array aligned across methods (entry i = the same episode for all); NaN
    marks an undefined value, and an episode is paired only where every method has a value.
    ``clusters`` (optional, aligned) names each episode's seed: with >= ``MIN_SEEDS`` seeds among the
    paired episodes the paired intervals are hierarchical (seed-then-episode draws shared by all
    methods), else episode-level (``paired_bootstrap`` over the paired episodes). The best method is the
    one with the highest mean over the paired episodes (name breaks exact ties). Returns per method:
    ``rank`` (int), ``mean``, ``best`` (the best method's name), ``tied_with_best`` (bool; True for the
    best itself: its difference from the best is not significant at ``1 - confidence`` after Holm's
    adjustment over the cell's comparisons, ``holm_adjust``), ``vs_best`` (the paired bootstrap of method -
    best with ``p_adjusted``; None for the best), ``interval``
    (``SEED_LEVEL`` or ``EPISODE_LEVEL``), ``n_paired``, and ``mean_interval``: the ``mean_interval``
    of the method's own defined values, from the same draws.
    """
    if not values:
        return {}
    _check_confidence(confidence)
    arrays = {name: np.asarray(v, dtype=np.float64).ravel() for name, v in values.items()}
    sizes = {v.size for v in arrays.values()}
    if len(sizes) != 1:
        raise MlfsicError(f"ranks_with_ties: methods have different numbers of paired episodes {sorted(sizes)}")
    names = sorted(arrays)
    matrix = np.stack([arrays[name] for name in names], axis=1)  # (N, M)
    shared = np.isfinite(matrix).all(axis=1)
    if not shared.any():
        raise MlfsicError("ranks_with_ties: the methods share no episode on which all of them have a value")
    if clusters is not None:
        clusters = np.asarray(clusters).ravel()
        if clusters.size != shared.size:
            raise MlfsicError(f"ranks_with_ties: {clusters.size} seed labels for {shared.size} episodes")
    hierarchical = clusters is not None and n_seeds_of(clusters[shared]) >= MIN_SEEDS
    means = {name: float(matrix[shared, j].mean()) for j, name in enumerate(names)}
    order = sorted(means, key=lambda name: (-means[name], name))
    best, others = order[0], order[1:]
    column = {name: j for j, name in enumerate(names)}
    if hierarchical:
        assert clusters is not None
        diffs = np.stack([np.where(shared, matrix[:, column[name]] - matrix[:, column[best]], np.nan)
                          for name in others], axis=1).reshape(shared.size, len(others)) if others \
            else np.empty((shared.size, 0))  # a cell of one method: its mean interval only
        # one set of seed-then-episode draws for every mean and every paired difference of the cell
        replicates = cluster_bootstrap_means(np.concatenate([matrix, diffs], axis=1), clusters, n_boot=n_boot,
                                             seed=seed)
        comparisons = dict(zip(others, _differences_from(diffs, replicates[:, len(names):], confidence)))
    else:
        comparisons = {name: paired_bootstrap(matrix[shared, column[name]], matrix[shared, column[best]],
                                              n_boot=n_boot, seed=seed, confidence=confidence) for name in others}
    adjusted = holm_adjust({name: comparison["p_value"] for name, comparison in comparisons.items()})
    result: dict[str, dict[str, Any]] = {}
    for name in order:
        own = matrix[:, column[name]]
        if hierarchical and n_seeds_of(clusters[np.isfinite(own)]) >= MIN_SEEDS:
            defined = np.isfinite(own)
            interval = {"n": int(defined.sum()), "n_undefined": int((~defined).sum()),
                        "n_seeds": n_seeds_of(clusters[defined]),
                        **_seed_level_mean(own, replicates[:, column[name]], confidence)}
        else:
            interval = mean_interval(own, clusters, n_boot=n_boot, seed=seed, confidence=confidence)
        comparison = comparisons.get(name)
        tied = comparison is None or adjusted[name] >= 1.0 - confidence
        if comparison is not None:
            comparison = {**comparison, "p_adjusted": adjusted[name]}
        result[name] = {"mean": means[name], "best": best, "tied_with_best": tied, "vs_best": comparison,
                        "interval": SEED_LEVEL if hierarchical else EPISODE_LEVEL, "n_paired": int(shared.sum()),
                        "mean_interval": interval}
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
