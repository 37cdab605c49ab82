"""Per-episode metrics against independent references: sklearn for AP and a hand-counted top-k F1.
The leaderboard's intervals are tested in test_intervals.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from mlfsic.harness.errors import MlfsicError
from mlfsic.harness.protocol.metrics import average_precision, episode_map, f1_at_k, per_label_ap


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
