"""The leaderboard's intervals against independent references: scipy's t distribution for the CI, a plain
numpy bootstrap for the paired test."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from mlfsic.harness.errors import MlfsicError
from mlfsic.harness.report.intervals import (
    EPISODE_LEVEL,
    SEED_LEVEL,
    cluster_bootstrap_means,
    hierarchical_paired_bootstrap,
    mean_ci,
    mean_interval,
    paired_bootstrap,
    ranks_with_ties,
)


def test_mean_ci_against_scipy_t_by_hand():
    values = np.array([0.61, 0.55, 0.72, 0.48, 0.66, 0.59, 0.70])
    n = values.size
    mean = values.sum() / n
    s = math.sqrt(((values - mean) ** 2).sum() / (n - 1))
    half = stats.t.ppf(0.975, n - 1) * s / math.sqrt(n)
    got_mean, got_half = mean_ci(values)
    assert got_mean == pytest.approx(mean, abs=1e-15)
    assert got_half == pytest.approx(half, rel=1e-12)
    low, high = stats.t.interval(0.9, n - 1, loc=mean, scale=stats.sem(values))
    assert mean_ci(values, 0.9)[1] == pytest.approx((high - low) / 2, rel=1e-12)
    assert math.isnan(mean_ci(np.array([0.5]))[1])
    with pytest.raises(MlfsicError):
        mean_ci(np.array([]))


def test_paired_bootstrap_against_plain_numpy():
    rng = np.random.default_rng(11)
    a = rng.normal(0.6, 0.05, size=40)
    b = a - 0.01 + rng.normal(0, 0.02, size=40)
    n_boot = 2000
    got = paired_bootstrap(a, b, n_boot=n_boot, seed=4)
    diff = a - b
    idx = np.random.default_rng(4).integers(0, diff.size, size=(n_boot, diff.size))
    boot = diff[idx].mean(axis=1)
    assert got["mean_diff"] == pytest.approx(diff.mean(), abs=1e-15)
    assert got["ci_low"] == pytest.approx(np.percentile(boot, 2.5), abs=1e-12)
    assert got["ci_high"] == pytest.approx(np.percentile(boot, 97.5), abs=1e-12)
    extreme = (np.abs(boot - diff.mean()) >= abs(diff.mean())).sum()
    assert got["p_value"] == pytest.approx((1 + extreme) / (n_boot + 1), abs=1e-12)
    # the percentile interval agrees with the normal approximation on this well-behaved sample
    sem = diff.std(ddof=1) / math.sqrt(diff.size)
    assert got["ci_low"] == pytest.approx(diff.mean() - 1.96 * sem, abs=0.3 * sem)
    assert got["ci_high"] == pytest.approx(diff.mean() + 1.96 * sem, abs=0.3 * sem)
    assert paired_bootstrap(a, b, n_boot=n_boot, seed=4) == got


def test_paired_bootstrap_identical_and_clearly_different():
    a = np.linspace(0.3, 0.9, 30)
    same = paired_bootstrap(a, a.copy(), n_boot=500)
    assert same["mean_diff"] == 0.0 and same["p_value"] == 1.0
    far = paired_bootstrap(a + 0.2, a, n_boot=500)
    assert far["ci_low"] > 0 and far["p_value"] == pytest.approx(1 / 501)


def test_ranks_with_ties():
    rng = np.random.default_rng(2)
    base = rng.uniform(0.4, 0.8, size=60)
    values = {
        "best": base + 0.10,
        "tied": base + 0.10 - rng.normal(0.0, 0.05, size=60) * 0.1,  # within noise of best
        "worse": base,
        "worst": base - 0.10,
        "also_worst": base - 0.10,
    }
    ranks = ranks_with_ties(values, n_boot=1000)
    best = max(values, key=lambda m: values[m].mean())
    assert ranks[best]["rank"] == 1 and ranks[best]["vs_best"] is None
    assert ranks["tied"]["tied_with_best"] and ranks["tied"]["rank"] == 1
    assert not ranks["worse"]["tied_with_best"] and ranks["worse"]["rank"] == 3
    assert ranks["worst"]["rank"] == ranks["also_worst"]["rank"] == 4
    assert ranks["worse"]["vs_best"]["ci_high"] < 0
    with pytest.raises(MlfsicError, match="different numbers"):
        ranks_with_ties({"a": np.ones(3), "b": np.ones(4)})
    assert ranks_with_ties({}) == {}


# ---------------------------------------------------------------- seed-level (hierarchical) intervals


def _two_stage_loop(by_seed: list[np.ndarray], n_boot: int, seed: int) -> np.ndarray:
    """Seed-then-episode bootstrap means, written as plain loops (independent of the harness code)."""
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for b in range(n_boot):
        total, count = 0.0, 0
        for s in rng.integers(0, len(by_seed), size=len(by_seed)):
            values = by_seed[s]
            drawn = values[rng.integers(0, values.size, size=values.size)]
            total += drawn.sum()
            count += drawn.size
        means[b] = total / count
    return means


def _seeded_values(rng: np.random.Generator, sizes: list[int], seed_sd: float, episode_sd: float = 0.05,
                   level: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    offsets = rng.normal(0.0, seed_sd, size=len(sizes))
    values = np.concatenate([level + offsets[s] + rng.normal(0.0, episode_sd, size=n) for s, n in enumerate(sizes)])
    clusters = np.repeat([f"es-{s}" for s in range(len(sizes))], sizes)
    return values, clusters


@pytest.mark.parametrize("sizes", [[40, 40, 40, 40, 40], [30, 45, 60, 25, 50]])
def test_hierarchical_intervals_match_a_plain_loop(sizes):
    rng = np.random.default_rng(21)
    a, clusters = _seeded_values(rng, sizes, seed_sd=0.03)
    b = a - 0.01 + np.concatenate([rng.normal(0.0, 0.02) + rng.normal(0.0, 0.02, size=n) for n in sizes])
    bounds = np.cumsum([0] + sizes)
    split = lambda v: [v[bounds[s]:bounds[s + 1]] for s in range(len(sizes))]  # noqa: E731

    got = mean_interval(a, clusters, n_boot=20000, seed=1)
    loop = _two_stage_loop(split(a), 4000, seed=2)
    low, high = np.percentile(loop, [2.5, 97.5])
    assert got["interval"] == SEED_LEVEL and got["n_seeds"] == len(sizes) and got["n"] == a.size
    assert got["mean"] == pytest.approx(a.mean(), abs=1e-15)
    half = (high - low) / 2
    assert got["half_width"] == pytest.approx(half, rel=0.08)
    assert got["ci_low"] == pytest.approx(low, abs=0.15 * half)
    assert got["ci_high"] == pytest.approx(high, abs=0.15 * half)

    paired = hierarchical_paired_bootstrap(a, b, clusters, n_boot=20000, seed=1)
    loop = _two_stage_loop(split(a - b), 4000, seed=3)
    low, high = np.percentile(loop, [2.5, 97.5])
    half = (high - low) / 2
    assert paired["mean_diff"] == pytest.approx((a - b).mean(), abs=1e-15)
    assert (paired["ci_high"] - paired["ci_low"]) / 2 == pytest.approx(half, rel=0.08)
    assert paired["ci_low"] == pytest.approx(low, abs=0.15 * half)
    assert paired["ci_high"] == pytest.approx(high, abs=0.15 * half)
    assert hierarchical_paired_bootstrap(a, b, clusters, n_boot=20000, seed=1) == paired  # deterministic


def test_a_strong_seed_effect_widens_the_hierarchical_interval_not_the_naive_one():
    sizes = [100] * 5
    calm, clusters = _seeded_values(np.random.default_rng(4), sizes, seed_sd=0.0)
    stormy, _ = _seeded_values(np.random.default_rng(4), sizes, seed_sd=0.08)
    naive_calm, naive_stormy = mean_ci(calm)[1], mean_ci(stormy)[1]
    seed_calm = mean_interval(calm, clusters, n_boot=4000)["half_width"]
    seed_stormy = mean_interval(stormy, clusters, n_boot=4000)["half_width"]
    # without a seed effect the two agree up to the two-stage bootstrap's extra within-seed share
    assert seed_calm < 2.5 * naive_calm
    # with one, only the hierarchical interval reflects that a rerun on new seeds moves the mean
    assert seed_stormy > 4.0 * naive_stormy
    assert seed_stormy > 4.0 * seed_calm
    assert naive_stormy < 0.25 * 0.08  # the t-interval over episodes stays far below the seed spread


def test_fewer_than_three_seeds_fall_back_to_episode_level():
    rng = np.random.default_rng(8)
    values, clusters = _seeded_values(rng, [30, 30], seed_sd=0.05)
    got = mean_interval(values, clusters)
    mean, half = mean_ci(values)
    assert got["interval"] == EPISODE_LEVEL and got["half_width"] == half and got["mean"] == mean
    other = values + rng.normal(0.0, 0.01, size=values.size)
    ranks = ranks_with_ties({"a": values, "b": other}, n_boot=500, seed=2, clusters=clusters)
    loser = min(ranks, key=lambda m: ranks[m]["mean"])
    winner = max(ranks, key=lambda m: ranks[m]["mean"])
    arrays = {"a": values, "b": other}
    assert ranks[loser]["interval"] == EPISODE_LEVEL
    expected = paired_bootstrap(arrays[loser], arrays[winner], n_boot=500, seed=2)
    assert ranks[loser]["vs_best"] == {**expected, "p_adjusted": expected["p_value"]}  # one comparison: unadjusted


def test_holm_adjustment_matches_its_definition_and_drives_the_marks():
    """Holm (1979) against a direct reading of the definition, on random families; then a cell of several
    methods whose raw p is below 0.05 but whose Holm-adjusted p is not is marked tied, not worse."""
    from mlfsic.harness.report.intervals import holm_adjust

    rng = np.random.default_rng(3)
    for _ in range(20):
        p = {f"m{i}": float(v) for i, v in enumerate(rng.uniform(0, 0.2, size=int(rng.integers(1, 7))))}
        ordered = sorted(p.values())
        m = len(ordered)
        for name, value in p.items():
            i = ordered.index(value)
            assert holm_adjust(p)[name] == pytest.approx(max(min(1.0, (m - j) * ordered[j]) for j in range(i + 1)))
        assert all(holm_adjust(p)[n] >= p[n] for n in p)
    clusters = np.repeat(np.arange(4), 60)
    base = rng.normal(0.5, 0.05, size=240)
    values = {"best": base + 0.02, **{f"other{i}": base + rng.normal(0.0, 0.06, size=240) for i in range(5)}}
    ranks = ranks_with_ties(values, n_boot=2000, seed=0, clusters=clusters)
    for result in ranks.values():
        if result["vs_best"] is None:
            continue
        assert result["tied_with_best"] == (result["vs_best"]["p_adjusted"] >= 0.05)
        assert result["vs_best"]["p_adjusted"] >= result["vs_best"]["p_value"]


def test_ranks_use_the_hierarchical_paired_interval():
    sizes = [50] * 4
    rng = np.random.default_rng(5)
    a, clusters = _seeded_values(rng, sizes, seed_sd=0.02, episode_sd=0.01)
    # b differs from a by a seed-dependent amount: -0.01 on average, but +0.05 / -0.07 from seed to seed
    b = a + np.repeat([0.05, -0.07, 0.04, -0.06], sizes) + rng.normal(0.0, 0.005, size=a.size)
    naive = paired_bootstrap(b, a, n_boot=2000, seed=0)
    assert naive["ci_high"] < 0  # over episodes alone, b looks significantly worse
    ranks = ranks_with_ties({"a": a, "b": b}, n_boot=2000, seed=0, clusters=clusters)
    assert ranks["b"]["interval"] == SEED_LEVEL
    # the same draws; summed in another order, so equal to the last bits only
    expected = hierarchical_paired_bootstrap(b, a, clusters, n_boot=2000, seed=0)
    assert ranks["b"]["vs_best"] == pytest.approx({**expected, "p_adjusted": expected["p_value"]})
    assert ranks["b"]["vs_best"]["ci_low"] < 0 < ranks["b"]["vs_best"]["ci_high"]
    assert ranks["b"]["tied_with_best"] and ranks["b"]["rank"] == 1
    # the mean's interval of each method comes from the same draws
    assert ranks["a"]["mean_interval"] == mean_interval(a, clusters, n_boot=2000, seed=0)


def test_undefined_values_are_counted_and_left_out():
    rng = np.random.default_rng(9)
    values, clusters = _seeded_values(rng, [20, 20, 20], seed_sd=0.02)
    holed = values.copy()
    holed[[3, 25]] = np.nan
    got = mean_interval(holed, clusters, n_boot=1000)
    assert got["n"] == 58 and got["n_undefined"] == 2
    assert got["mean"] == pytest.approx(np.delete(values, [3, 25]).mean(), abs=1e-15)
    assert np.isfinite([got["ci_low"], got["ci_high"]]).all()
    assert mean_interval(holed)["half_width"] == mean_ci(np.delete(values, [3, 25]))[1]
    ranks = ranks_with_ties({"a": holed, "b": values - 0.1}, n_boot=500, clusters=clusters)
    assert ranks["b"]["n_paired"] == 58
    assert ranks["b"]["mean"] == pytest.approx(np.delete(values, [3, 25]).mean() - 0.1, abs=1e-12)
    replicates = cluster_bootstrap_means(np.stack([holed, values], axis=1), clusters, n_boot=200)
    assert replicates.shape == (200, 2) and np.isfinite(replicates).all()
    assert math.isnan(mean_interval(np.full(4, np.nan))["mean"])
    with pytest.raises(MlfsicError, match="share no episode"):
        ranks_with_ties({"a": np.array([np.nan, 1.0]), "b": np.array([1.0, np.nan])})
