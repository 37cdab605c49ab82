"""LaSO's switches (methods/laso.py; Alfassy et al., CVPR 2019): each loss switch changes what is trained and
what the fit report lists, the released MLP episode classifier works for 1shot and 5shot episodes and is
query-independent, fitting and predicting are deterministic per seed, and ``predict_batch`` (the episode
classifiers of a chunk trained together) gives ``predict``'s scores. The release switches (real_weight,
classifier_schedule with max_union_pairs, pair_rule, setops_optimizer, reconstruction) each do what the
release does and change the result. Tiny synthetic data only, but for a slow benchmark of predict
throughput at the coco-moji size."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
import torch

from mlfsic.harness.errors import MlfsicError
from mlfsic.methods import laso
from mlfsic.methods.laso import LOSS_TERMS, LaSO
from mlfsic.methods.registry import create_method
from synthetic_data import coco_moji_sized_episodes, make_base_data, make_episode, make_world

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"steps": 30, "classifier_epochs": 1, "hidden_dim": 32, "episode_steps": 10, "max_union_pairs": 20,
        "episode_epochs": 3}
MLFSIC = {"real_weight": "half", "classifier_schedule": "full_batch", "pair_rule": "uniform",
          "setops_optimizer": "adam", "reconstruction": "mlfsic"}
RELEASE = {"real_weight": "release", "classifier_schedule": "release", "max_union_pairs": 0,
           "pair_rule": "shared_label", "setops_optimizer": "sgd", "reconstruction": "release"}
SWITCHES = {  # switch -> the loss terms it adds
    "reconstruction_classification": {"reconstruction_classification"},
    "symmetric_subtraction": {"symmetric_subtraction"},
    "symmetric_classification": {"symmetric_intersection", "symmetric_union"},
}


@pytest.fixture(scope="module")
def base():
    return make_base_data(n=160, seed=0)


@pytest.fixture(scope="module")
def default(base) -> LaSO:
    return fitted(base)


def fitted(base, seed: int = 0, **overrides) -> LaSO:
    method = create_method("laso", {**TINY, **overrides}, seed)
    method.fit(base, None)
    return method


def union_weights(method: LaSO) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in method.union.parameters()])


def test_defaults_report_every_published_term(default):
    assert set(default.fit_report["loss_terms"]) == set(LOSS_TERMS)
    assert all(np.isfinite(value) for value in default.fit_report["loss_terms"].values())


@pytest.mark.parametrize("switch", sorted(SWITCHES))
def test_each_loss_switch_changes_training(switch, base, default):
    off = fitted(base, **{switch: False})
    assert set(off.fit_report["loss_terms"]) == set(LOSS_TERMS) - SWITCHES[switch]
    assert not torch.equal(union_weights(off), union_weights(default)), f"{switch}=False trains the same networks"
    episode, _ = make_episode(5, seed=1)
    assert not np.allclose(off.predict(episode), default.predict(episode))


def test_zero_weights_drop_reconstruction_and_symmetry(base):
    method = fitted(base, reconstruction_weight=0.0, symmetry_weight=0.0)
    assert not {"reconstruction", "symmetry"} & set(method.fit_report["loss_terms"])


def test_base_classifier_is_fixed_unless_trained_jointly(base):
    def classifier_after(jointly: bool) -> torch.Tensor:
        method = fitted(base, train_classifier_jointly=jointly)
        return torch.cat([p.detach().flatten() for p in method.classifier.parameters()])

    pretrained = fitted(base, steps=0).classifier
    pretrained_weights = torch.cat([p.detach().flatten() for p in pretrained.parameters()])
    assert torch.equal(classifier_after(False), pretrained_weights)
    assert not torch.equal(classifier_after(True), pretrained_weights)


@pytest.mark.parametrize("k_shot", [1, 5])
def test_mlp_classifier_scores_episodes(k_shot, default, base):
    episode, _ = make_episode(k_shot, seed=3)
    scores = default.predict(episode)
    assert scores.shape == (episode.n_query, episode.n_labels) and np.all(np.isfinite(scores))
    assert np.all((scores >= 0.0) & (scores <= 1.0))
    permutation = np.random.default_rng(0).permutation(episode.n_query)  # eval-mode batch norm
    permuted = dataclasses.replace(episode, query_features=episode.query_features[permutation].copy())
    np.testing.assert_allclose(default.predict(permuted), scores[permutation], rtol=1e-5, atol=1e-6)
    logistic = fitted(base, episode_classifier="logistic")
    assert not np.allclose(logistic.predict(episode), scores)


def test_mlp_classifier_hyperparameters_change_scores(default, base):
    episode, _ = make_episode(1, seed=4)
    scores = default.predict(episode)
    for overrides in ({"episode_dropout": 0.0}, {"episode_hidden_dim": 16}, {"union_augmentation": False}):
        other = fitted(base, **overrides)
        assert not np.allclose(other.predict(episode), scores), overrides


def test_single_support_image_falls_back_to_logistic(default):
    episode, _ = make_episode(1, seed=5, n_way=1)
    single = dataclasses.replace(
        episode, support_features=episode.support_features[:1], support_targets=episode.support_targets[:1]
    )
    scores = default.predict(single)
    assert scores.shape == (single.n_query, 1) and np.all(np.isfinite(scores))


def test_deterministic_per_seed(base, default):
    episode, _ = make_episode(5, seed=6)
    scores = default.predict(episode)
    np.testing.assert_array_equal(default.predict(episode), scores)
    again = fitted(base, seed=0)
    assert again.fit_report == default.fit_report
    np.testing.assert_array_equal(again.predict(episode), scores)
    other = fitted(base, seed=1)
    assert not np.allclose(other.predict(episode), scores)


def test_bad_switch_values_are_one_line_errors():
    with pytest.raises(MlfsicError, match="episode_classifier"):
        LaSO(episode_classifier="svm")
    with pytest.raises(MlfsicError, match="episode_dropout"):
        LaSO(episode_dropout=1.0)


def chunk(k_shot: int) -> list:
    """A chunk of episodes with differing support counts (n_way 3, 4 and 6), three of the same size (so
    they train together, with different seeds), and for 1shot a single-image episode (logistic)."""
    episodes = [make_episode(k_shot, seed=seed, n_way=n_way)[0]
                for seed, n_way in ((10, 6), (11, 4), (12, 6), (13, 3), (14, 6), (15, 4))]
    if k_shot == 1:
        single, _ = make_episode(1, seed=16, n_way=1)
        episodes.append(dataclasses.replace(
            single, support_features=single.support_features[:1], support_targets=single.support_targets[:1]))
    return episodes


@pytest.mark.parametrize("k_shot", [1, 5])
def test_predict_batch_equals_predict(k_shot, default, monkeypatch):
    episodes = chunk(k_shot)
    rows = [default._episode_data(0, episode).inputs.shape[0] for episode in episodes]
    assert len(set(rows)) >= 3 and max(rows.count(n) for n in rows) >= 3  # differing sizes, a group of three
    monkeypatch.setattr(laso, "SUB_BATCH", 2)  # the group of three trains as two sub-batches
    one_at_a_time = [default.predict(episode) for episode in episodes]
    batched = default.predict_batch(episodes)
    backwards = default.predict_batch(episodes[::-1])[::-1]
    for episode, single, together, reversed_ in zip(episodes, one_at_a_time, batched, backwards):
        assert together.shape == (episode.n_query, episode.n_labels)
        np.testing.assert_allclose(together, single, rtol=0, atol=1e-4)
        np.testing.assert_allclose(reversed_, single, rtol=0, atol=1e-4)


def test_predict_batch_with_other_hidden_sizes(base):
    """A hidden size that is not a multiple of LANES trains one episode at a time; one that is, batched."""
    episodes = chunk(5)[:3]
    for hidden in (20, 16, 48):
        method = fitted(base, episode_hidden_dim=hidden)
        for single, together in zip([method.predict(e) for e in episodes], method.predict_batch(episodes)):
            np.testing.assert_allclose(together, single, rtol=0, atol=1e-4)


@pytest.mark.slow
def test_benchmark_predict_batch_at_coco_moji_size():
    """coco-moji default size on one thread (6000 base images over 42 labels, D = 128; episodes of 12
    labels, episodic-v1: 1shot ~7 / 5shot ~31 support images, ~47 queries): episodes/s of ``predict``
    one at a time and of ``predict_batch`` on one chunk of 100 (as the runner's evaluate task calls it),
    and the largest score difference between them."""
    world = make_world(n_base_labels=42, n_novel_labels=12, dim=128, emb_dim=384, latent_dim=30, noise=2.0, seed=7)
    method = create_method("laso", {}, seed=0)
    method.fit(make_base_data(n=6000, seed=0, world=world, local_positions=None), None)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for k_shot in (1, 5):
            episodes = coco_moji_sized_episodes(world, k_shot, 100, positions=4)
            start = time.perf_counter()
            single = [method.predict(episode) for episode in episodes]
            single_per_s = len(episodes) / (time.perf_counter() - start)
            start = time.perf_counter()
            batched = method.predict_batch(episodes)
            batched_per_s = len(episodes) / (time.perf_counter() - start)
            difference = max(float(np.abs(a - b).max()) for a, b in zip(single, batched))
            print(f"laso {k_shot}shot: predict {single_per_s:.1f} episodes/s, predict_batch {batched_per_s:.1f} "
                  f"episodes/s (x{batched_per_s / single_per_s:.1f}); max |batched - predict| {difference:.2g}")
            assert difference <= 1e-4
    finally:
        torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------ release switches
@pytest.fixture(scope="module")
def released(base) -> LaSO:
    return fitted(base, **RELEASE)


def test_release_fake_batch_size_matches_the_release():
    """alfassy/datasets.py ~693-698 on the release's episodes: 16 labels, 1-shot 16 and 5-shot 80 images."""
    assert laso.release_fake_batch_size(16, 16 * 15 // 2, 1) == 30
    assert laso.release_fake_batch_size(80, 80 * 79 // 2, 5) == 39
    assert laso.release_fake_batch_size(3, 1, 1) == 1  # never more than the pairs


@pytest.mark.parametrize("schedule", ["full_batch", "release"])
def test_real_weight_gives_real_rows_their_share(schedule, default):
    episode, _ = make_episode(1, seed=3)
    n_support = episode.support_features.shape[0]
    saved = default.real_weight, default.classifier_schedule
    for real_weight in ("release", "half"):
        default.real_weight, default.classifier_schedule = real_weight, schedule
        try:
            plan = default._episode_data(0, episode).plan
        finally:
            default.real_weight, default.classifier_schedule = saved
        for rows, weights in zip(plan.rows, plan.weights):
            n_rows = weights.shape[0]
            is_real = torch.arange(n_rows) < n_support if rows is None else rows < n_support
            real_rows, fake_rows = int(is_real.sum()), int((~is_real).sum())
            assert float(weights.sum()) == pytest.approx(1.0)
            expected = real_rows / n_rows if real_weight == "release" else 0.5
            if rows is None:  # full batch: the release's batch of 4 real + fakeBatchSize synthetic rows
                fake_batch = laso.release_fake_batch_size(n_support, fake_rows, episode.k_shot)
                expected = 4 / (4 + fake_batch) if real_weight == "release" else 0.5
            assert float(weights[is_real].sum()) == pytest.approx(expected), (real_weight, schedule)


def test_release_schedule_draws_class_balanced_minibatches(released):
    episode, _ = make_episode(5, seed=7)
    data = released._episode_data(0, episode)
    n_support = episode.support_features.shape[0]
    n_pairs = n_support * (n_support - 1) // 2  # max_union_pairs=0: every support pair
    assert data.inputs.shape[0] == n_support + n_pairs
    fake_batch = laso.release_fake_batch_size(n_support, n_pairs, 5)
    batches_per_epoch = -(-n_support // 4)
    assert len(data.plan.rows) == released.episode_epochs * batches_per_epoch
    drawn = torch.zeros(episode.n_labels)
    for rows in data.plan.rows:
        real, fake = rows[rows < n_support], rows[rows >= n_support]
        assert 1 <= real.numel() <= 4 and fake.numel() == fake_batch and fake.unique().numel() == fake_batch
        drawn += torch.as_tensor(episode.support_targets)[real].gt(0.5).float().sum(dim=0)
    # class balancing: every label is drawn; a random draw of images would follow the label frequencies
    assert drawn.min() > 0 and drawn.max() / drawn.min() < 3.0


def test_release_schedule_changes_scores_and_predict_batch_equals_predict(released, monkeypatch):
    episodes = chunk(5)[:4] + chunk(1)[-1:]
    monkeypatch.setattr(laso, "SUB_BATCH", 2)
    one_at_a_time = [released.predict(episode) for episode in episodes]
    for single, together in zip(one_at_a_time, released.predict_batch(episodes)):
        np.testing.assert_allclose(together, single, rtol=0, atol=1e-4)
    released.classifier_schedule = "full_batch"
    try:
        assert not np.allclose(released.predict(episodes[0]), one_at_a_time[0])
    finally:
        released.classifier_schedule = RELEASE["classifier_schedule"]


def test_max_union_pairs_zero_uses_every_pair(default):
    default.max_union_pairs = 0
    try:
        first, second = default._union_pairs(31, episode_seed=1)
    finally:
        default.max_union_pairs = TINY["max_union_pairs"]
    assert first.size == 31 * 30 // 2 and np.all(first < second)


def test_shared_label_pairs_share_a_label_and_balance_labels(base):
    count = 2000
    first, second = laso.shared_label_pairs(base.targets, count, np.random.default_rng(0))
    labels = base.targets > 0.5
    assert first.shape == second.shape == (count,)
    assert np.all((labels[first] & labels[second]).any(axis=1))
    uniform = np.random.default_rng(0).integers(len(labels), size=count)
    assert not np.all((labels[uniform] & labels[np.roll(uniform, 1)]).any(axis=1))  # uniform pairs do not
    balanced, random = labels[first].sum(axis=0), labels[uniform].sum(axis=0)
    assert balanced.min() / balanced.max() > random.min() / random.max()


def test_pair_rule_optimiser_and_reconstruction_change_training(base):
    earlier = union_weights(fitted(base, **MLFSIC))
    for switch, value in (("pair_rule", "shared_label"), ("setops_optimizer", "sgd"), ("reconstruction", "release")):
        other = fitted(base, **{**MLFSIC, switch: value})
        assert not torch.equal(union_weights(other), earlier), switch


def test_predict_params_do_not_change_the_fit(base, default):
    other = fitted(base, real_weight="release", classifier_schedule="release", max_union_pairs=0)
    assert torch.equal(union_weights(other), union_weights(default))
    assert set(LaSO.predict_params) >= {"real_weight", "classifier_schedule", "max_union_pairs", "episode_epochs"}


def test_sgd_runs_the_release_schedule():
    method = LaSO(setops_optimizer="sgd", steps=100, batch_size=128)
    assert method._setops_batches() == (16, 800)  # the release's batch of 16, as many pairs as Adam's
    parameter = torch.nn.Parameter(torch.zeros(3))
    optimiser, schedule = method._setops_optimiser([parameter], n_images=40, batch_size=16)
    assert isinstance(optimiser, torch.optim.SGD) and optimiser.defaults["momentum"] == 0.9
    assert optimiser.defaults["weight_decay"] == 1e-4
    epoch_steps = 4 * 40 // 16
    lrs = []
    for step in range(3 * epoch_steps):
        schedule(step, 1.0)
        lrs.append(optimiser.param_groups[0]["lr"])
    assert lrs[0] > 1e-4 and lrs[-1] == pytest.approx(2e-3) and lrs == sorted(lrs)  # linear warm-up
    for step in range(3 * epoch_steps, 20 * epoch_steps):
        schedule(step, 1.0)  # a flat loss: the plateau rule halves the rate
    assert optimiser.param_groups[0]["lr"] < 2e-3


def test_release_reconstruction_is_the_released_formula():
    """res_setops.py ~295-310: out_a = U(S(a, I(b, a)), I(a, b)), out_b = U(S(b, I(a, b)), I(b, a))."""
    generator = torch.Generator().manual_seed(0)
    fx, fy = torch.randn(5, 8, generator=generator), torch.randn(5, 8, generator=generator)
    dim, labels = fx.shape[1], torch.zeros(5, 3)
    method = LaSO(reconstruction="release")
    method.intersection, method.union, method.subtraction = (laso.mlp([2 * dim, 8, dim], generator) for _ in range(3))
    method.classifier = laso.linear(dim, 3, generator)

    def op(network, a, b):
        return network(torch.cat([a, b], dim=1))

    i, u, s = method.intersection, method.union, method.subtraction
    out_a, out_b = op(u, op(s, fx, op(i, fy, fx)), op(i, fx, fy)), op(u, op(s, fy, op(i, fx, fy)), op(i, fy, fx))
    expected = 2.0 * torch.nn.functional.mse_loss(torch.cat([out_a, out_b]), torch.cat([fx, fy]))
    torch.testing.assert_close(method._pair_loss_terms(fx, fy, labels, labels)["reconstruction"], expected)
    method.reconstruction = "mlfsic"
    assert not torch.allclose(method._pair_loss_terms(fx, fy, labels, labels)["reconstruction"], expected)


def test_bad_release_switch_values_are_one_line_errors():
    for switch in ("real_weight", "classifier_schedule", "pair_rule", "setops_optimizer", "reconstruction"):
        with pytest.raises(MlfsicError, match=switch):
            LaSO(**{switch: "nope"})
    with pytest.raises(MlfsicError, match="max_union_pairs"):
        LaSO(max_union_pairs=-1)
