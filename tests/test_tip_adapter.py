"""tip-adapter (methods/tip_adapter.py): Tip-Adapter's cache of the support features on a zero-shot classifier,
multi-label; alpha/beta (and the zero-shot head) chosen on val."""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources

import numpy as np
import pytest
import torch
import yaml
from mlfsic.harness.errors import MlfsicError
from mlfsic.harness.protocol.metrics import episode_map
from mlfsic.harness.sweep.checkpoint import load_checkpoint, save_checkpoint
from mlfsic.methods.baselines import WordVectorZeroShot
from mlfsic.methods.registry import create_method
from mlfsic.methods.tip_adapter import TipAdapter, cache_logits  # registers tip-adapter
from synthetic_data import clip_view, make_base_data, make_episode, make_world

pytestmark = pytest.mark.usefixtures("one_thread")  # the runner gives each task one thread

HEAD_EPOCHS = 5  # the learned zero-shot head (wordvec-zeroshot's model): few epochs keep the tests quick


def val_split(n: int = 120, world=None):
    """A val split with its own label names (the synthetic world's base labels under other names)."""
    data = make_base_data(n=n, seed=5, local_positions=None, **({"world": world} if world is not None else {}))
    return dataclasses.replace(data, split="val", label_names=tuple(f"val_{i}" for i in range(len(data.label_names))))


@pytest.fixture(scope="module")
def base():
    return make_base_data(n=200, seed=0, local_positions=None)


@pytest.fixture(scope="module")
def fitted(base):
    method = TipAdapter(seed=0, head_epochs=HEAD_EPOCHS, n_val_episodes=8)
    method.fit(base, val_split())
    return method


def episode(k_shot: int, seed: int, **kwargs):
    return make_episode(k_shot, seed=seed, local_positions=None, **kwargs)


def without_support(ep):
    """The episode as a 0shot method sees it (same queries and labels, no support)."""
    return dataclasses.replace(ep, k_shot=0, support_features=ep.support_features[:0],
                               support_targets=ep.support_targets[:0], support_local_features=None)


def test_registered_kshot_only_and_config_file():
    method = create_method("tip-adapter", {}, seed=0)
    assert isinstance(method, TipAdapter) and method.name == "tip-adapter"
    assert TipAdapter.supports("1shot") and TipAdapter.supports("5shot") and not TipAdapter.supports("0shot")
    assert not TipAdapter.needs_clip and not TipAdapter.needs_local_features  # runs on every backbone
    values = yaml.safe_load((importlib.resources.files("mlfsic.configs") / "methods" / "tip-adapter.yaml").read_text())
    assert values in (None, {})


@pytest.mark.parametrize("kwargs", [{"zero_shot_head": "clip"}, {"features": "raw"}, {"alpha": -1.0},
                                    {"beta_grid": [0.0]}, {"val_shots": []}, {"head_epochs": 0},
                                    {"cache_values": "max"}])
def test_bad_hyperparameters_are_one_line_errors(kwargs):
    with pytest.raises(MlfsicError, match="tip-adapter"):
        TipAdapter(seed=0, **kwargs)


def test_shapes_finite_and_rejects_0shot(fitted):
    for k_shot in (1, 5):
        for n_way in (None, 3):
            ep, _ = episode(k_shot, seed=k_shot, n_way=n_way)
            scores = fitted.predict(ep)
            assert scores.shape == (ep.n_query, ep.n_labels) and scores.dtype == np.float64
            assert np.isfinite(scores).all()
    zero, _ = episode(0, seed=1)
    with pytest.raises(MlfsicError, match="does not support the 0shot"):
        fitted.predict(zero)


def test_batched_equals_one_at_a_time(fitted):
    """A chunk of episodes of mixed K and label counts scores each episode as it scores alone."""
    shapes = [(1, None), (5, 3), (1, 4), (5, None), (3, 2)]  # (K, n_way)
    episodes = [episode(k, seed=s, n_way=w)[0] for s, (k, w) in enumerate(shapes)]
    batched = fitted.predict_batch(episodes)
    assert fitted.predict_report == {"episodes": len(episodes)}
    for ep, scores in zip(episodes, batched):
        np.testing.assert_allclose(scores, fitted.predict(ep), rtol=1e-12, atol=1e-12)
    # reversed order: the same scores per episode
    for ep, scores in zip(episodes[::-1], fitted.predict_batch(episodes[::-1])):
        np.testing.assert_allclose(scores, fitted.predict(ep), rtol=1e-12, atol=1e-12)


def test_deterministic_for_a_seed(base, fitted):
    ep, _ = episode(5, seed=3)
    again = TipAdapter(seed=0, head_epochs=HEAD_EPOCHS, n_val_episodes=8)
    again.fit(base, val_split())
    assert again.fit_report == fitted.fit_report
    np.testing.assert_array_equal(again.predict(ep), fitted.predict(ep))
    np.testing.assert_array_equal(fitted.predict(ep), fitted.predict(ep))


def test_alpha_zero_is_the_zero_shot_classifier(base):
    """alpha = 0: the score is wordvec-zeroshot's (same seed and epochs) divided by a constant, so every label
    ranks its queries exactly as wordvec-zeroshot does."""
    method = TipAdapter(seed=0, alpha=0.0, head_epochs=HEAD_EPOCHS, zero_shot_head="learned")
    method.fit(base, None)
    reference = WordVectorZeroShot(seed=0, epochs=HEAD_EPOCHS)
    reference.fit(base, None)
    for k_shot in (1, 5):
        ep, _ = episode(k_shot, seed=10 + k_shot)
        expected = reference.predict(without_support(ep)) / (reference.scale * method.spread["learned"])
        np.testing.assert_allclose(method.predict(ep), expected, rtol=1e-5, atol=1e-6)


def test_cache_term_is_tip_adapters():
    """exp(-beta (1 - cos)) @ L, per label, by hand on a 2-image cache."""
    cosine = torch.tensor([[1.0, 0.0], [0.5, 0.5]], dtype=torch.float64)
    values = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]], dtype=torch.float64)
    expected = np.array([[1.0, np.exp(-2.0), 1.0 + np.exp(-2.0)], [np.exp(-1.0), np.exp(-1.0), 2 * np.exp(-1.0)]])
    np.testing.assert_allclose(cache_logits(cosine, values, 2.0).numpy(), expected, rtol=1e-12)


def test_cache_values_mean_gives_every_label_the_same_weight(base):
    """``mean``: each label's column of the cache values sums to 1 (the paper's one-hot values give each class
    K); ``sum``: the multi-hot targets as they are. Per label the cache terms differ by a constant factor."""
    ep, _ = episode(5, seed=6)
    targets = torch.as_tensor(ep.support_targets, dtype=torch.float64)
    assert targets.sum(dim=0).max() > 5  # multi-label supports: some label has more than K images
    mean, total = TipAdapter(seed=0), TipAdapter(seed=0, cache_values="sum")
    np.testing.assert_allclose(mean._cache_values(ep).sum(dim=0).numpy(), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(total._cache_values(ep).numpy(), targets.numpy())
    cosine = torch.rand(7, targets.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ratio = cache_logits(cosine, total._cache_values(ep), 5.5) / cache_logits(cosine, mean._cache_values(ep), 5.5)
    np.testing.assert_allclose(ratio.numpy(), np.broadcast_to(targets.sum(dim=0).numpy(), ratio.shape), rtol=1e-12)


def test_separable_data_gives_high_ap():
    """Well-separated labels: with 5 shots the cache ranks the queries almost perfectly, far above the
    zero-shot term alone (1-shot stays lower: a support image carries 1-3 labels, and its cache entry votes
    for all of them)."""
    world = make_world(noise=0.2, specific=2.0, seed=7)
    base = make_base_data(n=300, seed=0, world=world, local_positions=None)
    method = TipAdapter(seed=0, head_epochs=HEAD_EPOCHS, n_val_episodes=8)
    method.fit(base, val_split(world=world))
    zero_shot = TipAdapter(seed=0, alpha=0.0, head_epochs=HEAD_EPOCHS)
    zero_shot.fit(base, None)
    for k_shot, floor in ((1, 0.75), (5, 0.93)):
        drawn = [episode(k_shot, seed=s, world=world) for s in range(6)]
        tip = np.mean([episode_map(method.predict(e), t) for e, t in drawn])
        alone = np.mean([episode_map(zero_shot.predict(e), t) for e, t in drawn])
        assert tip > floor and tip > alone + 0.05, (k_shot, tip, alone)


def test_val_selection_is_recorded(fitted):
    report = fitted.fit_report
    assert set(report["chosen"]) == {"1shot", "5shot"} and "note" not in report
    grid_size = len(fitted.alpha_grid) * len(fitted.beta_grid)  # one head: embeddings and features differ in size
    for setting, k_shot in (("1shot", 1), ("5shot", 5)):
        rows, chosen = report["val_grid"][setting], report["chosen"][setting]
        assert len(rows) == grid_size and chosen["val_episodes"] == 8
        best = max(rows, key=lambda row: row["val_map"])
        assert chosen["val_map"] == best["val_map"] and 0.0 <= chosen["val_map"] <= 1.0
        assert {key: chosen[key] for key in ("head", "alpha", "beta")} == fitted.chosen[k_shot]
        assert set(chosen["zero_shot_val_map"]) == {"learned"}
        assert len(chosen["cache_only_val_map"]) == len(fitted.beta_grid)
    assert fitted.setting_for(2) == fitted.chosen[1] and fitted.setting_for(3) == fitted.chosen[1]  # ties: smaller K
    assert fitted.setting_for(4) == fitted.chosen[5] and fitted.setting_for(20) == fitted.chosen[5]


def test_without_val_the_paper_defaults_are_used_and_noted(base):
    method = TipAdapter(seed=0, head_epochs=HEAD_EPOCHS)
    method.fit(base, None)
    assert method.chosen == {1: {"head": "learned", "alpha": 1.0, "beta": 5.5},
                             5: {"head": "learned", "alpha": 1.0, "beta": 5.5}}
    assert "paper defaults" in method.fit_report["note"] and method.fit_report["chosen"]["1shot"]["val_map"] is None
    ep, _ = episode(1, seed=2)
    assert np.isfinite(method.predict(ep)).all()


def test_checkpoint_round_trip(fitted, tmp_path):
    path = tmp_path / "tip.pt"
    save_checkpoint(path, fitted, {"name": "tip-adapter", "seed": 0})
    assert torch.load(path, weights_only=True)["format"] == "mlfsic-checkpoint"
    reloaded, header = load_checkpoint(path)
    assert type(reloaded) is TipAdapter and header["name"] == "tip-adapter"
    assert reloaded.chosen == fitted.chosen and reloaded.fit_report == fitted.fit_report
    for k_shot in (1, 5):
        ep, _ = episode(k_shot, seed=20 + k_shot)
        np.testing.assert_array_equal(reloaded.predict(ep), fitted.predict(ep))


def test_label_embeddings_head_needs_matching_sizes(base):
    with pytest.raises(MlfsicError, match="zero_shot_head=label_embeddings"):
        TipAdapter(seed=0, zero_shot_head="label_embeddings").fit(base, None)
    method = TipAdapter(seed=0, head_epochs=HEAD_EPOCHS)
    method.fit(base, None)
    ep, _ = episode(1, seed=4)
    with pytest.raises(MlfsicError, match="label_embeddings have size"):
        method.predict(dataclasses.replace(ep, label_embeddings=ep.label_embeddings[:, :7]))


# --------------------------------------------------------------------------- the tiny CLIP teacher (open_clip)
@functools.lru_cache(maxsize=1)
def tiny_clip():
    from mlfsic.harness.backbones.open_clip import load_tiny_teacher
    from mlfsic.harness.backbones.weights import pinned_weights

    path = importlib.resources.files("mlfsic.configs") / "backbone" / "tiny-teacher.yaml"
    config = yaml.safe_load(path.read_text())
    return load_tiny_teacher(pinned_weights(config))


def clip_text(data, clip):
    """``data`` with the text tower's label embeddings, as ``embeddings.encoder=clip`` gives them."""
    from mlfsic.harness.backbones.embeddings import PROMPT

    return dataclasses.replace(data, label_embeddings=clip.encode_text(
        [PROMPT.format(label=name.replace("_", " ")) for name in data.label_names]).numpy())


def test_tiny_teacher_with_clip_text_embeddings_is_the_papers_tip_adapter(base):
    """On open_clip features with the text tower's label embeddings (embeddings.encoder=clip): the
    label_embeddings head is clip-zeroshot's classifier, so alpha = 0 gives clip-zeroshot's scores up to a
    constant, and ``auto`` chooses between it and the learned head on val."""
    from mlfsic.methods.clip.clip_zeroshot import ClipZeroShot

    clip = tiny_clip()
    clip_base = clip_text(clip_view(base, clip), clip)
    ep, _ = make_episode(5, seed=3, local_positions=None)
    ep = clip_text(clip_view(ep, clip), clip)

    exact = TipAdapter(seed=0, alpha=0.0, zero_shot_head="label_embeddings")
    exact.fit(clip_base, None)
    assert not hasattr(exact, "learned_head") and set(exact.spread) == {"label_embeddings"}
    reference = ClipZeroShot(seed=0)
    reference.use_clip(clip)
    reference.fit(clip_base, None)
    spaced = tuple(name.replace("_", " ") for name in ep.label_names)  # the prompt clip_text gave the labels
    expected = reference.predict(dataclasses.replace(without_support(ep), label_names=spaced))
    np.testing.assert_allclose(exact.predict(ep) * exact.spread["label_embeddings"], expected, rtol=1e-5, atol=1e-6)

    auto = TipAdapter(seed=0, head_epochs=HEAD_EPOCHS, n_val_episodes=4)
    auto.fit(clip_base, clip_text(clip_view(val_split(60), clip), clip))
    rows = auto.fit_report["val_grid"]["1shot"]
    assert {row["head"] for row in rows} == {"learned", "label_embeddings"}
    assert len(rows) == 2 * len(auto.alpha_grid) * len(auto.beta_grid)
    scores = auto.predict(ep)
    assert scores.shape == (ep.n_query, ep.n_labels) and np.isfinite(scores).all()
