"""The leaderboard's intervals against independent references: scipy's t distribution for the CI, a plain
numpy bootstrap for the paired test."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from mlfsic.harness.errors import MlfsicError
from mlfsic.harness.report.intervals import mean_ci, paired_bootstrap, ranks_with_ties


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
