"""Metrics against independent references: sklearn for AP, scipy's t distribution for the CI, a plain
numpy bootstrap for the paired test, and a hand-counted top-k F1."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import average_precision_score

from mlfsic.harness.errors import MlfsicError
from mlfsic.harness.metrics import (
    average_precision,
    episode_map,
    f1_at_k,
    mean_ci,
    paired_bootstrap,
    per_label_ap,
    ranks_with_ties,
)


def _random_case(rng: np.random.Generator, tied: bool) -> tuple[np.ndarray, np.ndarray]:
    n = int(rng.integers(1, 40))
    n_labels = int(rng.integers(1, 8))
    scores = rng.integers(0, 4, size=(n, n_labels)).astype(float) if tied else rng.normal(size=(n, n_labels))
    targets = rng.random((n, n_labels)) < rng.uniform(0.05, 0.95)
    return scores, targets


@pytest.mark.parametrize("tied", [False, True])
def test_per_label_ap_equals_sklearn_on_random_data(tied):
    rng = np.random.default_rng(1 + tied)
    for _ in range(200):
        scores, targets = _random_case(rng, tied)
        ap = per_label_ap(scores, targets)
        for j in range(scores.shape[1]):
            if targets[:, j].any():
                assert ap[j] == pytest.approx(average_precision_score(targets[:, j], scores[:, j]), abs=1e-12)
                assert average_precision(scores[:, j], targets[:, j]) == pytest.approx(ap[j], abs=1e-15)
            else:
                assert math.isnan(ap[j])


def test_episode_map_equals_sklearn_macro_when_every_label_has_a_positive():
    rng = np.random.default_rng(7)
    checked = 0
    for _ in range(100):
        scores, targets = _random_case(rng, tied=bool(rng.integers(2)))
        if not targets.any(axis=0).all():
            continue
        expected = average_precision_score(targets, scores, average="macro")
        assert episode_map(scores, targets) == pytest.approx(expected, abs=1e-12)
        checked += 1
    assert checked > 20


@pytest.mark.parametrize(
    ("scores", "targets"),
    [
        ([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1]),  # all scores equal: AP = prevalence
        ([0.1, 0.9, 0.3, 0.2], [0, 0, 1, 0]),  # single positive
        ([0.1, 0.9, 0.3], [1, 1, 1]),  # all positive
        ([0.2], [1]),  # one image
        ([3.0, 1.0, 2.0, 2.0, 0.0], [0, 1, 1, 0, 1]),  # tie across a positive and a negative
        ([-1e9, 1e9, 0.0], [1, 0, 0]),  # positive ranked last
    ],
)
def test_degenerate_cases_equal_sklearn(scores, targets):
    expected = average_precision_score(np.asarray(targets), np.asarray(scores))
    assert average_precision(np.asarray(scores), np.asarray(targets)) == pytest.approx(expected, abs=1e-12)


def test_hand_computed_ap_values():
    assert average_precision(np.full(4, 0.5), np.array([0, 1, 0, 1])) == pytest.approx(0.5)
    # ranks: positive at 1 and 3 -> (1/1 + 2/3) / 2
    assert average_precision(np.array([0.9, 0.8, 0.7]), np.array([1, 0, 1])) == pytest.approx((1 + 2 / 3) / 2)


def test_no_positive_gives_nan_and_map_skips_it():
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.4]])
    targets = np.array([[1, 0], [0, 0], [0, 0]])
    assert math.isnan(average_precision(scores[:, 1], targets[:, 1]))
    ap = per_label_ap(scores, targets)
    assert ap[0] == 1.0 and math.isnan(ap[1])
    assert episode_map(scores, targets) == 1.0
    assert math.isnan(episode_map(scores, np.zeros_like(targets)))


def test_batched_per_label_ap_matches_loop():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 5, size=(50, 12, 4)).astype(float)
    targets = rng.random((50, 12, 4)) < 0.4
    batched = per_label_ap(scores, targets)
    looped = np.stack([per_label_ap(s, t) for s, t in zip(scores, targets)])
    np.testing.assert_array_equal(np.isnan(batched), np.isnan(looped))
    np.testing.assert_allclose(np.nan_to_num(batched), np.nan_to_num(looped), atol=1e-15)


def test_bad_inputs_raise_one_line_errors():
    with pytest.raises(MlfsicError, match="shape"):
        per_label_ap(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(MlfsicError, match="NaN"):
        per_label_ap(np.array([[np.nan, 1.0]]), np.array([[1, 0]]))
    with pytest.raises(MlfsicError, match="no images"):
        per_label_ap(np.zeros((0, 2)), np.zeros((0, 2)))
    with pytest.raises(MlfsicError, match="k must be"):
        f1_at_k(np.zeros((2, 2)), np.zeros((2, 2)), 0)


def _f1_reference(scores: np.ndarray, targets: np.ndarray, k: int) -> float:
    tp = predicted = 0
    for row_scores, row_targets in zip(scores, targets):
        ranked = sorted(range(len(row_scores)), key=lambda j: (-row_scores[j], j))[:k]
        predicted += len(ranked)
        tp += sum(int(row_targets[j]) for j in ranked)
    if tp == 0:
        return 0.0
    precision, recall = tp / predicted, tp / targets.sum()
    return 2 * precision * recall / (precision + recall)


def test_f1_at_k_against_hand_count():
    scores = np.array([[0.9, 0.8, 0.1, 0.0], [0.1, 0.2, 0.3, 0.4]])
    targets = np.array([[1, 0, 1, 0], [0, 0, 0, 1]])
    # top-3: row 0 predicts {0,1,2} -> 2 TP; row 1 predicts {3,2,1} -> 1 TP; P = 3/6, R = 3/3
    assert f1_at_k(scores, targets, 3) == pytest.approx(2 * 0.5 * 1.0 / 1.5)
    assert f1_at_k(scores, targets, 10) == pytest.approx(_f1_reference(scores, targets, 4))
    rng = np.random.default_rng(5)
    for _ in range(50):
        s, t = _random_case(rng, tied=bool(rng.integers(2)))
        for k in (1, 3, 5):
            assert f1_at_k(s, t, k) == pytest.approx(_f1_reference(s, t, k), abs=1e-12)
    assert f1_at_k(scores, np.zeros_like(targets), 3) == 0.0


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
