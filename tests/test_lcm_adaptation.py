"""Test-time support adaptation of lcm / wvga (methods/lcm_adaptation.py, ``LCM.predict_batch``).

* the batched steps equal an independent single-episode reference written the released way (nn.Parameter
  copies, ``torch.optim.Adam``, a gradient hook on the mask for the EMA scores, in-place renormalisation);
* a chunk predicted together equals its episodes predicted one at a time, in any order;
* the fitted model is never mutated; ``adapt_steps=0`` is the unadapted model;
* hyperparameters only prediction reads share one checkpoint key.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mlfsic.harness.sweep.evaluate import method_spec
from mlfsic.methods.lcm import alignment_logits
from mlfsic.methods.lcm_adaptation import adapt_to_supports, ema_weight, renormalise_mask
from mlfsic.methods.registry import create_method
from synthetic_data import make_base_data, make_episode

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"embed_dim": 16, "heads": 2, "steps": 40, "eval_every": 20, "n_val_episodes": 3, "adapt_steps": 12,
        "adapt_lr": 1e-2}


@pytest.fixture(scope="module")
def fitted():
    method = create_method("lcm", TINY, seed=0)
    method.fit(make_base_data(n=200, seed=0), None)
    return method


def _reference_adaptation(method, episode, steps: int, lr: float):
    """One episode, the released way: copies of vis_fc / tex_fc and a purify mask as nn.Parameters, one
    torch.optim.Adam over them, the mask renormalised in place before every forward but the first, and a
    gradient hook on the mask that keeps the EMA of |grad * mask| (``Model.hook`` / ``Model.meta_train``)."""
    vis_fc, tex_fc = copy.deepcopy(method.net.vis_fc), copy.deepcopy(method.net.tex_fc)
    local = torch.as_tensor(episode.support_local_features)
    targets = torch.as_tensor(episode.support_targets)
    words = method._words(episode.label_embeddings, episode.label_names)
    mask = torch.nn.Parameter(torch.ones(local.shape[:2]))
    state = {"scores": None, "iters": 0}

    def hook(grad):
        change = (grad * mask).abs().detach()
        alpha = min(1 - 1 / (state["iters"] + 1), 0.95)
        state["scores"] = change if state["scores"] is None else alpha * state["scores"] + (1 - alpha) * change

    mask.register_hook(hook)
    optimiser = torch.optim.Adam([mask, *vis_fc.parameters(), *tex_fc.parameters()], lr=lr)
    for _ in range(steps):
        state["iters"] += 1
        if state["iters"] > 1:
            with torch.no_grad():
                low = mask.min(dim=1, keepdim=True).values
                spread = mask.max(dim=1, keepdim=True).values - low
                scaled = (mask - low) / spread
                second = scaled.sort(dim=1).values[:, 1:2]
                # a constant row (every gradient of the image had one sign: Adam's first step moves all by
                # lr) would divide by zero in the released code; it is left as it is
                mask.copy_(torch.where(spread > 0, torch.where(scaled > 0, scaled, second), mask))
        pooled = (mask.unsqueeze(-1) * local).mean(dim=1)
        visual = vis_fc((pooled - method.feature_mean) / method.feature_std)
        loss = F.binary_cross_entropy_with_logits(alignment_logits(visual, tex_fc(words), method.scale), targets)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return vis_fc, tex_fc, state["scores"]


def test_renormalise_and_ema_follow_the_released_code():
    rho = torch.tensor([[0.2, 0.6, 1.0, 0.2], [3.0, 3.0, 3.0, 3.0]])
    out = renormalise_mask(rho)
    torch.testing.assert_close(out[0], torch.tensor([0.0, 0.5, 1.0, 0.0]))  # tied minima: second-smallest is 0
    torch.testing.assert_close(out[1], rho[1])  # constant row left as it is
    assert renormalise_mask(torch.tensor([[0.0, 0.5, 1.0]])).tolist() == [[0.5, 0.5, 1.0]]
    assert np.allclose([ema_weight(t) for t in (1, 2, 3, 100)], [0.0, 2 / 3, 0.75, 0.95])


@pytest.mark.parametrize("pairs, steps", [(((5, 1), (1, 2), (3, 3)), 3), (((5, 1),), 12), (((1, 2),), 12)])
def test_batched_adaptation_equals_the_released_single_episode_loop(fitted, pairs, steps):
    """Three episodes of different support sizes adapted as one padded batch, or one episode alone over
    more steps. (The released renormalisation turns the mask nearly binary by the gradients' signs, so a
    rounding difference between a batched and a single matrix product can flip a position after a few
    steps: the batch is compared over 3 steps, long runs one episode at a time.)"""
    episodes = [make_episode(k, seed=s)[0] for k, s in pairs]
    sizes = [e.support_features.shape[0] for e in episodes]
    n_max = max(sizes)
    n, positions, channels = len(episodes), fitted.dims["L"], fitted.dims["C"]
    support_global, support_local = torch.zeros(n, n_max, fitted.dims["D"]), torch.zeros(n, n_max, positions, channels)
    targets, image_mask = torch.zeros(n, n_max, episodes[0].n_labels), torch.zeros(n, n_max, dtype=torch.bool)
    for b, e in enumerate(episodes):
        support_global[b, :sizes[b]] = torch.as_tensor(e.support_features)
        support_local[b, :sizes[b]] = torch.as_tensor(e.support_local_features)
        targets[b, :sizes[b]] = torch.as_tensor(e.support_targets)
        image_mask[b, :sizes[b]] = True
    words = torch.stack([fitted._words(e.label_embeddings, e.label_names) for e in episodes])
    net = fitted.net
    before = copy.deepcopy(net.state_dict())
    adapted = adapt_to_supports(net.vis_fc.weight, net.vis_fc.bias, net.tex_fc.weight, net.tex_fc.bias,
                                fitted.feature_mean, fitted.feature_std, support_global, support_local, targets,
                                image_mask, words, steps=steps, lr=1e-2, scale=fitted.scale)
    for key, value in net.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    for b, episode in enumerate(episodes):
        vis_fc, tex_fc, scores = _reference_adaptation(fitted, episode, steps=steps, lr=1e-2)
        torch.testing.assert_close(adapted.vis_weight[b], vis_fc.weight.detach(), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(adapted.vis_bias[b], vis_fc.bias.detach(), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(adapted.tex_weight[b], tex_fc.weight.detach(), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(adapted.scores[b, :sizes[b]], scores, rtol=1e-3, atol=1e-9)
    assert (adapted.last_loss < adapted.first_loss).all()
    assert not (adapted.vis_weight[0] == net.vis_fc.weight).all()


@pytest.mark.parametrize("name", ["lcm", "wvga"])
def test_a_chunk_predicted_together_equals_its_episodes_alone(fitted, name, monkeypatch):
    """Episodes of several label sets and counts (grouped by count, words stacked per episode) and
    several sub-batches (SUB_BATCH = 2) against one at a time, in both orders."""
    import mlfsic.methods.lcm_adaptation as adaptation

    monkeypatch.setattr(adaptation, "SUB_BATCH", 2)
    method = copy.deepcopy(fitted)
    if name == "wvga":
        method.selection = "off"
    else:
        method.threshold_mode, method.theta = "relative", 0.5
    episodes = [make_episode(k, seed=s, n_way=w)[0] for k, s, w in
                ((5, 1, None), (1, 2, 3), (0, 3, None), (5, 4, 3), (2, 5, None), (3, 6, 3))]
    alone = [method.predict(e) for e in episodes]
    together = method.predict_batch(episodes)
    backwards = method.predict_batch(episodes[::-1])[::-1]
    # 100 Adam steps amplify float reduction-order differences (batched vs one episode): about 3e-4 relative
    # on an AMD EPYC, under 1e-4 on the machine the test was written on
    for a, t, r in zip(alone, together, backwards):
        np.testing.assert_allclose(t, a, rtol=1e-3, atol=1e-5)
        np.testing.assert_allclose(r, a, rtol=1e-3, atol=1e-5)
    report = method.predict_report
    assert report["adapted_episodes"] == 5 and report["adapt_steps"] == 12 and report["sub_batch"] == 2
    assert report["support_loss_last"] < report["support_loss_first"]
    assert (report["kept_fraction"] == 1.0) == (name == "wvga")
    assert report["kept_fraction"] > 0


def test_adaptation_moves_the_scores_and_zero_steps_is_the_fitted_model(fitted):
    episode, _ = make_episode(5, seed=7)
    adapted = fitted.predict(episode)
    unadapted = copy.deepcopy(fitted)
    unadapted.adapt_steps, unadapted.selection = 0, "off"
    with torch.no_grad():
        plain = torch.sigmoid(unadapted._episode_logits(
            episode.support_features, episode.support_local_features, episode.support_targets,
            episode.label_embeddings, episode.label_names, episode.query_features, select=False).double()).numpy()
    np.testing.assert_array_equal(unadapted.predict(episode), plain)
    assert not np.allclose(adapted, plain)
    assert math.isclose(float(np.mean(fitted.predict(episode))), float(np.mean(adapted)))  # deterministic


def test_prediction_only_hyperparameters_share_the_checkpoint_key():
    base = method_spec("lcm", {})
    for change in ({"adapt_steps": 0}, {"adapt_lr": 1e-4}, {"theta": 0.8, "threshold_mode": "relative"},
                   {"selection": "off"}):
        variant = method_spec("lcm-x", change, base="lcm")
        assert variant.fit_hash == base.fit_hash and variant.config_hash != base.config_hash, change
    for change in ({"heads": 4}, {"word_vectors": "random"}, {"cross_interaction": False}):
        assert method_spec("lcm-x", change, base="lcm").fit_hash != base.fit_hash, change
    protonet = method_spec("protonet", {})
    assert protonet.fit_hash == protonet.config_hash  # no prediction-only hyperparameters


@pytest.mark.parametrize("visual_residual, channel_attention", [(True, False), (False, False), (True, True)])
def test_block_over_episodes_equals_the_block_per_episode(visual_residual, channel_attention):
    from mlfsic.methods.lcm import CrossInteraction
    from mlfsic.methods.torch_utils import torch_generator

    block = CrossInteraction(16, 2, 2, channel_attention, False, 4, visual_residual, torch_generator(0, 0))
    generator = torch.Generator().manual_seed(1)
    words, tokens = torch.randn(3, 4, 16, generator=generator), torch.randn(3, 5, 6, 16, generator=generator)
    keep = torch.rand(3, 5, 6, generator=generator) > 0.3
    keep[..., 0] = True
    targets = torch.rand(3, 5, 4, generator=generator) > 0.5
    pair_b, pair_i, pair_j = torch.nonzero(targets, as_tuple=True)
    with torch.no_grad():
        z, attention = block.forward_episodes(words, tokens, keep, pair_b, pair_i, pair_j)
        for b in range(3):
            mine = pair_b == b
            z_b, attention_b = block(words[b], tokens[b], keep[b], pair_i[mine], pair_j[mine])
            torch.testing.assert_close(z[mine], z_b, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(attention[mine], attention_b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("tie_local_projection", [True, False])
def test_the_adapted_path_without_steps_equals_the_fitted_model(tie_local_projection):
    """adapt_lr = 0: the batched prototype path (tokens, pairs, combination, query scores) against the
    unbatched one of the fitted weights, for tied and separate local projections."""
    method = create_method("lcm", {**TINY, "tie_local_projection": tie_local_projection, "selection": "off",
                                   "adapt_steps": 1, "adapt_lr": 0.0}, seed=0)
    method.fit(make_base_data(n=200, seed=0), None)
    episodes = [make_episode(k, seed=s)[0] for k, s in ((5, 1), (1, 2), (3, 3))]
    batched = method.predict_batch(episodes)
    for episode, scores in zip(episodes, batched):
        with torch.no_grad():
            plain = torch.sigmoid(method._episode_logits(
                episode.support_features, episode.support_local_features, episode.support_targets,
                episode.label_embeddings, episode.label_names, episode.query_features, select=False).double()).numpy()
        np.testing.assert_allclose(scores, plain, rtol=1e-5, atol=1e-7)


def test_fit_ignores_prediction_only_hyperparameters():
    base = make_base_data(n=200, seed=0)
    fits = []
    for change in ({}, {"adapt_steps": 0, "selection": "exact", "theta": 0.9, "threshold_mode": "relative"}):
        method = create_method("lcm", {**TINY, **change}, seed=0)
        method.fit(base, None)
        fits.append(method)
    for key, value in fits[0].net.state_dict().items():
        torch.testing.assert_close(fits[1].net.state_dict()[key], value, rtol=0, atol=0)
    assert fits[0].fit_report == fits[1].fit_report


def test_a_loaded_checkpoint_takes_and_checks_the_variants_prediction_values(fitted, tmp_path):
    from mlfsic.harness.errors import MlfsicError
    from mlfsic.harness.sweep.evaluate import load_fitted

    from mlfsic.harness.sweep.checkpoint import save_checkpoint

    path = tmp_path / "lcm.pt"
    save_checkpoint(path, fitted, {"name": "lcm", "seed": 0})
    variant = method_spec("lcm-x", {**TINY, "adapt_steps": 7, "selection": "off"}, base="lcm")
    loaded = load_fitted(str(path), variant)
    assert (loaded.adapt_steps, loaded.selection, loaded.adapt_lr) == (7, "off", TINY["adapt_lr"])
    with pytest.raises(MlfsicError, match="selection"):
        load_fitted(str(path), method_spec("lcm-y", {**TINY, "selection": "first-order"}, base="lcm"))
