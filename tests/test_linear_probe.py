"""linear-probe (methods/linear_probe.py): per-label logistic regression on support features, solved per episode,
batched across a chunk, with L2 strength and class balancing chosen per K on val episodes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import mlfsic.methods.linear_probe as linear_probe  # registers "linear-probe"
from mlfsic.harness.errors import MlfsicError
from mlfsic.harness.protocol.metrics import episode_map
from mlfsic.harness.sweep.checkpoint import load_checkpoint, save_checkpoint
from mlfsic.methods.registry import available_methods, create_method
from synthetic_data import coco_moji_sized_episodes, make_base_data, make_episode, make_world

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def base():
    return make_base_data(n=160, seed=0, local_positions=None)


@pytest.fixture(scope="module")
def val():
    data = make_base_data(n=120, seed=5, local_positions=None)
    return dataclasses.replace(data, split="val", label_names=tuple(f"val_{i}" for i in range(len(data.label_names))))


@pytest.fixture(scope="module")
def fitted(base, val):
    method = linear_probe.LinearProbe(seed=0, n_val_episodes=6)
    method.fit(base, val)
    return method


def episodes(k_shot: int, count: int, start: int = 0, n_way: int | None = None):
    return [make_episode(k_shot, seed=start + i, n_way=n_way, local_positions=None) for i in range(count)]


def test_registered_with_declared_settings():
    info = available_methods()["linear-probe"]
    assert info.cls is linear_probe.LinearProbe
    cls = info.cls
    assert cls.few_shot and not cls.zero_shot and not cls.needs_local_features
    assert cls.supports("1shot") and cls.supports("5shot") and not cls.supports("0shot")


@pytest.mark.parametrize("k_shot", [1, 5])
def test_scores_shape_finite_deterministic(fitted, base, val, k_shot):
    episode, _ = make_episode(k_shot, seed=3, local_positions=None)
    scores = fitted.predict(episode)
    assert scores.shape == (episode.n_query, episode.n_labels) and scores.dtype == np.float64
    assert np.isfinite(scores).all() and (scores >= 0).all() and (scores <= 1).all()
    np.testing.assert_array_equal(fitted.predict(episode), scores)
    again = linear_probe.LinearProbe(seed=0, n_val_episodes=6)
    again.fit(base, val)
    assert again.fit_report == fitted.fit_report
    np.testing.assert_array_equal(again.predict(episode), scores)
    # a query's scores do not depend on the other queries
    order = np.random.default_rng(0).permutation(episode.n_query)
    permuted = dataclasses.replace(episode, query_features=episode.query_features[order].copy())
    np.testing.assert_allclose(fitted.predict(permuted), scores[order], rtol=0, atol=1e-12)


def test_zero_shot_and_bad_input_are_one_line_errors(fitted):
    episode, _ = make_episode(0, seed=1, local_positions=None)
    with pytest.raises(MlfsicError, match="does not support"):
        fitted.predict(episode)
    episode, _ = make_episode(1, seed=1, local_positions=None)
    with pytest.raises(MlfsicError, match="query_features"):
        fitted.predict(dataclasses.replace(episode, query_features=np.zeros((4, 7), np.float32)))
    with pytest.raises(MlfsicError, match="balance"):
        linear_probe.LinearProbe(balance="maybe")
    with pytest.raises(MlfsicError, match="l2"):
        linear_probe.LinearProbe(l2_grid=[0.1, 0.0])


def test_batched_equals_one_at_a_time(fitted):
    """A chunk mixing K (so L2 strengths), support sizes (the harness's sampler: co-occurring labels share
    support images) and label counts: each episode's scores as alone."""
    world = make_world(n_novel_labels=12)  # the default world's feature size, 12 novel labels
    # episodic-v1's supports vary in size (the release rule's are always N x K)
    sampled = (coco_moji_sized_episodes(world, 1, 6, positions=4, protocol="episodic-v1")
               + coco_moji_sized_episodes(world, 5, 6, positions=4, protocol="episodic-v1"))
    chunk = sampled + [e for e, _ in episodes(2, 3, start=20, n_way=4)]
    assert len({e.support_features.shape[0] for e in chunk if e.n_labels == 12}) > 4  # padding is exercised
    batched = fitted.predict_batch(chunk)
    assert fitted.predict_report["episodes"] == len(chunk) and fitted.predict_report["max_grad_norm"] < 1e-10
    alone = [fitted.predict(e) for e in chunk]
    for one, together in zip(alone, batched):
        np.testing.assert_allclose(together, one, rtol=0, atol=1e-12)
    # and in a different order and company
    reversed_scores = fitted.predict_batch(chunk[::-1])[::-1]
    for one, together in zip(alone, reversed_scores):
        np.testing.assert_allclose(together, one, rtol=0, atol=1e-12)


@pytest.mark.parametrize("l2,balance", [(0.001, True), (0.1, False), (10.0, True)])
def test_solution_is_the_regularised_optimum(base, l2, balance):
    """The Newton solution has a vanishing gradient in the primal (w, b) = (X^T a, b), checked with autograd."""
    method = linear_probe.LinearProbe(l2_grid=[], l2=l2, balance="on" if balance else "off")
    method.fit(base, None)
    episode, _ = make_episode(5, seed=4, local_positions=None)
    x = method._normalise(episode.support_features)
    y = torch.as_tensor(episode.support_targets > 0.5, dtype=torch.float64)
    problem = linear_probe._Problem(0, x, y, method._normalise(episode.query_features), l2, balance)
    # recover (w, b) from the logits of more random probes than unknowns (least squares, exact here)
    probes = torch.randn(64, x.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    probe_problem = dataclasses.replace(problem, query=probes)
    (logits,), grad_norm = linear_probe.solve_logistic([probe_problem], method.newton_steps)
    assert grad_norm < 1e-12
    design = torch.cat([probes, torch.ones(64, 1, dtype=torch.float64)], dim=1)
    solution = torch.linalg.lstsq(design, logits).solution  # (D + 1, N)
    w = solution[:-1].clone().requires_grad_(True)
    b = solution[-1].clone().requires_grad_(True)
    n_pos, n_neg = y.sum(0), (1 - y).sum(0)
    weights = torch.where(y > 0, 0.5 / n_pos, 0.5 / n_neg) if balance else torch.full_like(y, 1.0 / y.shape[0])
    z = x @ w + b
    loss = (weights * torch.nn.functional.binary_cross_entropy_with_logits(z, y, reduction="none")).sum()
    loss = loss + 0.5 * l2 * w.square().sum() + 0.5 * linear_probe.BIAS_L2 * b.square().sum()
    loss.backward()
    assert w.grad.norm() < 1e-9 and b.grad.norm() < 1e-9


def separable_episode(k_shot: int, seed: int, n_labels: int = 5, dim: int = 32, n_query: int = 6):
    """An episode of single-label images in tight clusters around far-apart centroids (+ a common offset)."""
    rng = np.random.default_rng(seed)
    centroids = 3.0 * rng.normal(size=(n_labels, dim)) + 2.0

    def draw(per_label: int):
        labels = np.repeat(np.arange(n_labels), per_label)
        features = centroids[labels] + 0.1 * rng.normal(size=(labels.size, dim))
        return features.astype(np.float32), np.eye(n_labels, dtype=np.float32)[labels]

    support, support_targets = draw(k_shot)
    query, query_targets = draw(n_query)
    episode = make_episode(k_shot, seed=seed, local_positions=None)[0]
    names = tuple(f"label_{j}" for j in range(n_labels))
    return dataclasses.replace(
        episode, label_names=names, label_embeddings=np.zeros((n_labels, 4), np.float32),
        support_features=support, support_targets=support_targets, query_features=query), query_targets


def test_separable_data_gives_high_ap():
    """Separable labels: perfect ranking on single-label clusters; high mAP on the multi-label synthetic world
    with little noise (1shot is harder there: a single support image of a label also carries others)."""
    world = make_world(noise=0.1, specific=2.0, seed=7)
    method = linear_probe.LinearProbe()
    method.fit(make_base_data(n=100, seed=0, world=world, local_positions=None), None)
    for k_shot in (1, 5):
        for seed in range(3):
            episode, targets = separable_episode(k_shot, seed)
            assert episode_map(method.predict(episode), targets) == 1.0
    expected = {1: 0.9, 5: 0.97}
    for k_shot in (1, 5):
        maps = []
        for seed in range(5):
            episode, targets = make_episode(k_shot, seed=seed, world=world, local_positions=None)
            maps.append(episode_map(method.predict(episode), targets))
        assert np.mean(maps) > expected[k_shot], (k_shot, maps)


def test_val_selection_is_recorded(fitted):
    report = fitted.fit_report
    assert set(report["chosen"]) == {"1shot", "5shot"} and "note" not in report
    for setting, k_shot in (("1shot", 1), ("5shot", 5)):
        grid = report["val_grid"][setting]
        assert len(grid) == 2 * len(fitted.l2_grid)  # every l2 x balance on/off
        assert {row["l2"] for row in grid} == set(fitted.l2_grid)
        best = max(row["val_map"] for row in grid)
        chosen = report["chosen"][setting]
        assert chosen["val_map"] == best and chosen["val_episodes"] == 6
        assert fitted.chosen[k_shot] == {"l2": chosen["l2"], "balance": chosen["balance"]}
        assert all(0.0 < row["val_map"] <= 1.0 for row in grid)
    assert fitted.setting_for(1) == fitted.chosen[1] and fitted.setting_for(2) == fitted.chosen[1]
    assert fitted.setting_for(4) == fitted.chosen[5] and fitted.setting_for(10) == fitted.chosen[5]


def test_without_val_uses_defaults_and_says_so(base):
    method = linear_probe.LinearProbe(l2=0.5, balance="off")
    method.fit(base, None)
    assert method.chosen == {1: {"l2": 0.5, "balance": False}, 5: {"l2": 0.5, "balance": False}}
    assert "constructor defaults" in method.fit_report["note"] and "no val split" in method.fit_report["note"]
    assert method.fit_report["chosen"]["1shot"]["val_map"] is None


def test_fixed_balance_searches_only_l2(base, val):
    method = linear_probe.LinearProbe(balance="off", l2_grid=[0.01, 1.0], n_val_episodes=3)
    method.fit(base, val)
    assert [(r["l2"], r["balance"]) for r in method.fit_report["val_grid"]["5shot"]] == [(0.01, False), (1.0, False)]


def test_checkpoint_round_trip(fitted, tmp_path):
    """The chosen values survive the harness's data-only checkpoint (weights_only torch.load)."""
    path = tmp_path / "linear-probe.pt"
    save_checkpoint(path, fitted, {"name": "linear-probe", "seed": 0})
    assert torch.load(path, weights_only=True)["format"] == "mlfsic-checkpoint"
    reloaded, header = load_checkpoint(path)
    assert type(reloaded) is linear_probe.LinearProbe and header["name"] == "linear-probe"
    assert reloaded.chosen == fitted.chosen and reloaded.fit_report == fitted.fit_report
    assert reloaded.l2_grid == fitted.l2_grid and reloaded.val_shots == fitted.val_shots
    chunk = [e for e, _ in episodes(1, 2) + episodes(5, 2, start=5)]
    for one, other in zip(reloaded.predict_batch(chunk), fitted.predict_batch(chunk)):
        np.testing.assert_array_equal(one, other)


def test_created_from_config():
    method = create_method("linear-probe", {"l2_grid": [0.1, 1.0], "n_val_episodes": 10}, seed=3)
    assert method.seed == 3 and method.l2_grid == [0.1, 1.0] and method.n_val_episodes == 10
