"""The lcm / wvga methods (methods/lcm.py): LCM importance, selection, the cross-interaction block, the
zero-shot path, model selection, bad inputs; a slow benchmark prints predict episodes/s and fit seconds
at the default coco-moji size.

Fast tests use tiny dimensions and a few training steps (a few seconds in all).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from mlfsic.harness.errors import MlfsicError
from mlfsic.methods.lcm import (
    LCM,
    WVGA,
    CrossInteraction,
    WVGAAdapted,
    alignment_logits,
    alignment_loss_and_grad,
    position_importance,
    select_positions,
    training_rows,
    with_word_prototypes,
)
from mlfsic.methods.registry import create_method
from mlfsic.methods.torch_utils import torch_generator
from synthetic_data import coco_moji_sized_episodes, make_base_data, make_episode, make_world

pytestmark = pytest.mark.usefixtures("one_thread")  # the runner gives each task one thread

TINY = {"embed_dim": 16, "heads": 2, "steps": 40, "eval_every": 20, "n_val_episodes": 3}


@pytest.fixture(scope="module")
def base():
    return make_base_data(n=200, seed=0)


@pytest.fixture(scope="module")
def val():
    return dataclasses.replace(make_base_data(n=80, seed=5), split="val", label_names=tuple(f"val_{i}" for i in range(8)))


@pytest.fixture(scope="module")
def fitted(base):
    method = create_method("lcm", TINY, seed=0)
    method.fit(base, None)
    return method


def fit(base, **config) -> LCM:
    method = create_method("lcm", {**TINY, **config}, seed=0)
    method.fit(base, None)
    return method


# ------------------------------------------------------------------------------------------- LCM scores
def test_closed_form_alignment_gradient_matches_autograd():
    generator = torch.Generator().manual_seed(0)
    visual = torch.randn(5, 8, generator=generator, dtype=torch.float64, requires_grad=True)
    words = torch.randn(4, 8, generator=generator, dtype=torch.float64)
    targets = (torch.rand(5, 4, generator=generator) > 0.5).double()
    loss = F.binary_cross_entropy_with_logits(alignment_logits(visual, words, 20.0), targets)
    (expected,) = torch.autograd.grad(loss, visual)
    per_image, grad = alignment_loss_and_grad(visual.detach(), words, targets, 20.0)
    torch.testing.assert_close(per_image.sum() / targets.numel(), loss.detach())
    torch.testing.assert_close(grad, expected)


@pytest.mark.parametrize("steps", [1, 3])
def test_first_order_importance_ranks_positions_like_exact_leave_one_out(fitted, steps):
    """|dL/drho * rho| against the exact loss change of removing each position (Spearman over all
    support positions of an episode), with the fitted method's projection and word prototypes."""
    episode, _ = make_episode(5, seed=11)
    local = torch.as_tensor(episode.support_local_features)
    targets = torch.as_tensor(episode.support_targets)
    with torch.no_grad():
        words = fitted.word_prototypes(episode.label_embeddings)
        weight, bias = fitted._pooled_projection()
    first = position_importance(local, weight, bias, words, targets, "first_order", steps=steps)
    exact = position_importance(local, weight, bias, words, targets, "exact", steps=steps)
    assert first.shape == exact.shape == local.shape[:2]
    rho = spearmanr(first.flatten().numpy(), exact.flatten().numpy()).statistic
    print(f"Spearman(first-order, exact leave-one-out), {local.shape[0]}x{local.shape[1]} positions, steps={steps}: {rho:.3f}")
    assert rho >= 0.8


def test_exact_importance_is_the_leave_one_out_loss_change():
    """One step, rho = 1: the exact score equals a direct recomputation with one position zeroed."""
    generator = torch.Generator().manual_seed(1)
    local = torch.randn(3, 4, 6, generator=generator)
    weight, bias = torch.randn(5, 6, generator=generator), torch.randn(5, generator=generator)
    words = torch.randn(2, 5, generator=generator)
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])

    def loss(rho):
        pooled = (rho.unsqueeze(-1) * local).mean(dim=1)
        return F.binary_cross_entropy_with_logits(alignment_logits(pooled @ weight.T + bias, words, 20.0), targets)

    full = loss(torch.ones(3, 4))
    expected = torch.zeros(3, 4)
    for i in range(3):
        for position in range(4):
            rho = torch.ones(3, 4)
            rho[i, position] = 0.0
            expected[i, position] = (loss(rho) - full).abs()
    got = position_importance(local, weight, bias, words, targets, "exact", steps=1)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-7)


def test_select_positions_thresholds_and_keeps_one_per_image():
    scores = torch.tensor([[1e-9, 1e-8, 5e-3, 0.0], [0.0, 0.0, 0.0, 0.0], [0.2, 0.1, 0.05, 0.3]])
    released = select_positions(scores)  # sigmoid(1e8 * s) >= 0.65  <=>  s >= ~6.2e-9
    assert released.tolist() == [[False, True, True, False], [True, False, False, False], [True, True, True, True]]
    relative = select_positions(scores, theta=0.5, threshold_mode="relative")
    assert relative[2].tolist() == [True, False, False, True]
    assert bool(relative.any(dim=1).all())  # the argmax survives even an all-zero row
    # only the argmax passes theta > 1, except in the all-zero row, whose scores all tie with its maximum
    assert select_positions(scores, theta=1.01, threshold_mode="relative").sum(dim=1).tolist() == [1, 4, 1]
    with pytest.raises(MlfsicError, match="threshold_mode"):
        select_positions(scores, threshold_mode="max")


# -------------------------------------------------------------------------------- cross-interaction
def _naive_pair_attention(block: CrossInteraction, words, tokens, keep, pair_image, pair_label):
    """The block for one pair at a time, written out head by head."""
    heads, head_dim = block.heads, block.dim // block.heads
    outputs, maps = [], []
    for i, j in zip(pair_image.tolist(), pair_label.tolist()):
        word, toks = words[j], tokens[i]
        if block.channel_attention:
            gate = torch.sigmoid(block.gate_out(F.relu(block.gate_in(toks + word))))
            toks = toks * gate + toks
        q = block.query(block.norm_q(word))
        normed = block.norm_kv(toks)
        k, v = block.key(normed), block.value(normed)
        attended, residual, weights = [], [], []
        for h in range(heads):
            sl = slice(h * head_dim, (h + 1) * head_dim)
            logits = (k[:, sl] @ q[sl]) / math.sqrt(head_dim)
            logits = logits.masked_fill(~keep[i], -math.inf)
            a = torch.softmax(logits, dim=0)
            weights.append(a)
            attended.append(a @ v[:, sl])
            residual.append(a @ toks[:, sl])
        t = block.out(torch.cat(attended))
        if block.visual_residual:
            t = t + torch.cat(residual)
        outputs.append(block.norm_out(t + block.mlp_out(F.gelu(block.mlp_in(block.norm_mlp(t))))))
        maps.append(torch.stack(weights))
    return torch.stack(outputs), torch.stack(maps)


@pytest.mark.parametrize("channel_attention", [False, True])
def test_cross_interaction_shapes_and_reference(channel_attention):
    """words (N, H), tokens (n_s, L, H), keep (n_s, L), pairs (P,) -> z (P, H), attention (P, h, L)."""
    n_labels, n_support, positions, dim, heads = 3, 4, 5, 8, 2
    generator = torch_generator(0, 9)
    block = CrossInteraction(dim, heads, 2, channel_attention, False, 4, True, generator)
    words = torch.randn(n_labels, dim, generator=generator)
    tokens = torch.randn(n_support, positions, dim, generator=generator)
    keep = torch.rand(n_support, positions, generator=generator) > 0.4
    keep[:, 0] = True
    targets = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]])
    pair_image, pair_label = torch.nonzero(targets, as_tuple=True)
    with torch.no_grad():
        z, attention = block(words, tokens, keep, pair_image, pair_label)
        expected_z, expected_attention = _naive_pair_attention(block, words, tokens, keep, pair_image, pair_label)
    pairs = int(targets.sum())
    assert z.shape == (pairs, dim) and attention.shape == (pairs, heads, positions)
    torch.testing.assert_close(attention.sum(dim=-1), torch.ones(pairs, heads))
    assert bool((attention[~keep[pair_image].unsqueeze(1).expand_as(attention)] == 0).all())
    torch.testing.assert_close(z, expected_z, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(attention, expected_attention, rtol=1e-5, atol=1e-6)


def test_tied_tokens_average_to_the_projected_global_feature(fitted):
    episode, _ = make_episode(1, seed=4)
    with torch.no_grad():
        tokens = fitted._tokens(torch.as_tensor(episode.support_local_features))
        projected = fitted.net.vis_fc(fitted._std_global(episode.support_features))
    torch.testing.assert_close(tokens.mean(dim=1), projected, rtol=1e-4, atol=1e-4)


# -------------------------------------------------------------------------------------- zero-shot
def test_zero_shot_prototype_is_the_projected_word_vector(fitted):
    episode, _ = make_episode(0, seed=6)
    with torch.no_grad():
        embeddings = torch.as_tensor(episode.label_embeddings)
        words = fitted.net.tex_fc(F.normalize(embeddings, dim=1) * math.sqrt(embeddings.shape[1]))
        torch.testing.assert_close(fitted.word_prototypes(episode.label_embeddings), words)
        queries = fitted.net.vis_fc(
            (torch.as_tensor(episode.query_features) - fitted.feature_mean) / fitted.feature_std
        )
        expected = torch.sigmoid(alignment_logits(queries, words, 20.0).double()).numpy()
    np.testing.assert_allclose(fitted.predict(episode), expected, rtol=1e-6, atol=1e-9)


# ------------------------------------------------------------------------------ switches and config
def test_switches_run_and_change_the_scores(base):
    episode, _ = make_episode(5, seed=2)
    for switch in ("channel_attention", "dynamic_conv"):
        method = fit(base, **{switch: True})
        on = method.predict(episode)
        setattr(method.net.block, switch, False)  # the same fitted weights without the component
        off = method.predict(episode)
        assert np.isfinite(on).all() and not np.allclose(on, off), switch

    method = fit(base, threshold_mode="relative", theta=0.5)
    scores = {}
    for selection in ("first_order", "exact", "off"):
        method.selection = selection
        scores[selection] = method.predict(episode)
    assert not np.allclose(scores["first_order"], scores["off"])
    assert not np.allclose(scores["exact"], scores["off"])
    method.selection = "first_order"
    kept = method.explain(episode)["keep"]
    assert 0 < kept.mean() < 1 and kept.any(axis=1).all()

    method.combine = "mean"  # 5-shot: several support images per label, averaged instead of softmax-weighted
    assert not np.allclose(method.predict(episode), scores["first_order"])


def test_released_threshold_keeps_nearly_everything(fitted):
    """theta = 0.65 on sigmoid(1e8 * score) (the released code) drops only near-zero scores."""
    episode, _ = make_episode(5, seed=2)
    info = fitted.explain(episode)
    assert info["keep"].mean() > 0.9


def test_wvga_is_lcm_with_other_defaults():
    assert issubclass(WVGA, LCM) and WVGA.zero_shot and WVGA.few_shot and WVGA.needs_local_features
    lcm_params = inspect.signature(LCM.__init__).parameters
    for cls, expected in ((WVGA, {"selection", "adapt_steps"}), (WVGAAdapted, {"selection"})):
        params = inspect.signature(cls.__init__).parameters
        assert list(params) == list(lcm_params)
        # channel attention and dynamic conv are already off in lcm (as released); wvga does not fine-tune
        assert {k for k in lcm_params if lcm_params[k].default != params[k].default} == expected, cls
    assert inspect.signature(WVGA.__init__).parameters["adapt_steps"].default == 0
    method = create_method("wvga", {"embed_dim": 16, "heads": 2}, seed=0)
    assert (method.selection, method.channel_attention, method.dynamic_conv, method.adapt_steps) == ("off", False, False, 0)
    assert create_method("wvga", {"selection": "first_order", "heads": 2, "embed_dim": 16}, 0).selection == "first_order"
    assert create_method("wvga-adapted", {"embed_dim": 16, "heads": 2}, seed=0).adapt_steps > 0


def test_wvga_records_no_test_time_adaptation_and_wvga_adapted_does(base):
    episode, _ = make_episode(5, seed=2)
    reports = {}
    for name in ("wvga", "wvga-adapted"):
        method = create_method(name, {**TINY, "adapt_steps": 0} if name == "wvga" else {**TINY, "adapt_steps": 3}, 0)
        method.fit(base, None)
        method.predict_batch([episode])
        reports[name] = method.predict_report
    assert reports["wvga"] == {}
    assert reports["wvga-adapted"]["adapted_episodes"] == 1 and reports["wvga-adapted"]["adapt_steps"] == 3


def test_release_training_batches_draw_rows_with_replacement_and_score_every_label():
    rng = np.random.default_rng(0)
    eligible = np.array([0, 1, 2, 4, 5, 6, 7, 8])  # label 3 has too few images
    rows, scored = training_rows(rng, eligible, n_labels=9, n_way=8, batches="release")
    assert len(rows) == 8 and set(rows) <= set(eligible) and len(set(rows)) < 8  # ~5 distinct of 8 draws
    assert list(scored) == list(range(9))  # every base label is scored, covered or not
    rows, scored = training_rows(rng, eligible, n_labels=9, n_way=5, batches="all_labels")
    assert list(rows) == list(scored) and len(set(rows)) == 5 and set(rows) <= set(eligible)


def test_a_label_without_support_is_scored_against_its_word_prototype():
    prototypes = torch.arange(6.0).reshape(3, 2)
    words = -torch.ones(3, 2)
    support_targets = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 1.0]])  # label 1: no support image
    out = with_word_prototypes(prototypes, support_targets, words)
    assert torch.equal(out, torch.tensor([[0.0, 1.0], [-1.0, -1.0], [4.0, 5.0]]))


def test_adaptation_warm_up_changes_the_adapted_scores_only_when_set(fitted):
    episode, _ = make_episode(5, seed=2)
    fitted.adapt_steps, fitted.adapt_warmup_steps = 5, 0
    constant = fitted.predict(episode)
    fitted.adapt_warmup_steps = 5
    warm = fitted.predict(episode)
    fitted.adapt_steps, fitted.adapt_warmup_steps = LCM().adapt_steps, 0
    assert np.isfinite(warm).all() and not np.allclose(constant, warm)


# ---------------------------------------------------------------------------------- model selection
def test_fit_report_keeps_the_best_val_checkpoint(base, val):
    method = create_method("lcm", {**TINY, "patience": 0}, seed=0)
    method.fit(base, val)
    report = method.fit_report
    steps = [entry["step"] for entry in report["val_curve"]]
    assert steps == [20, 40]
    best = max(report["val_curve"], key=lambda entry: entry["val_map"])
    assert report["kept_step"] == best["step"] and report["val_map"] == best["val_map"]
    assert {"val_map_0shot", "val_map_1shot"} <= set(best)
    again = create_method("lcm", {**TINY, "patience": 0}, seed=0)
    again.fit(base, val)
    assert again.fit_report == report  # deterministic from the seed

    no_val = create_method("lcm", TINY, seed=0)
    no_val.fit(base, None)
    assert no_val.fit_report["val_map"] is None and no_val.fit_report["kept_step"] == TINY["steps"]
    assert no_val.fit_report["val_curve"] == []


# ------------------------------------------------------------------------------------- bad inputs
def test_bad_inputs_are_one_line_errors(fitted, base, val):
    episode, _ = make_episode(1, seed=3)
    wrong_size = dataclasses.replace(episode, label_embeddings=np.zeros((episode.n_labels, 7), np.float32))
    with pytest.raises(MlfsicError, match="label_embeddings") as error:
        fitted.predict(wrong_size)
    assert "\n" not in str(error.value)
    with pytest.raises(MlfsicError, match="support_local_features is None"):
        fitted.predict(dataclasses.replace(episode, support_local_features=None))
    no_support = episode.support_targets.copy()
    no_support[:, 2] = 0.0
    with pytest.raises(MlfsicError, match=f"{episode.label_names[2]}.*has no support image"):
        fitted.predict(dataclasses.replace(episode, support_targets=no_support))
    with pytest.raises(MlfsicError, match="base.local_features is None"):
        create_method("lcm", TINY, 0).fit(dataclasses.replace(base, local_features=None), None)
    with pytest.raises(MlfsicError, match="val.local_features is None"):
        create_method("lcm", TINY, 0).fit(base, dataclasses.replace(val, local_features=None))
    with pytest.raises(MlfsicError, match="val.label_embeddings has size 5"):
        create_method("lcm", TINY, 0).fit(base, dataclasses.replace(val, label_embeddings=val.label_embeddings[:, :5]))
    with pytest.raises(MlfsicError, match="selection"):
        create_method("lcm", {"selection": "second_order"}, 0)
    with pytest.raises(MlfsicError, match="combine"):
        create_method("lcm", {"combine": "max"}, 0)
    # zero-shot needs no local features
    zero, _ = make_episode(0, seed=3)
    assert np.isfinite(fitted.predict(dataclasses.replace(zero, support_local_features=None))).all()


# -------------------------------------------------------------------------------------- benchmark
@pytest.mark.slow
def test_benchmark_predict_and_fit_at_coco_moji_size():
    """coco-moji default size on one thread: 6000 base images over 42 labels, D = C = 128, L = 36,
    E = 384; episodes of 12 labels, episodic-v1 (1shot ~7 / 5shot ~31 support images, ~45 queries)."""
    world = make_world(n_base_labels=42, n_novel_labels=12, dim=128, emb_dim=384, latent_dim=30, noise=2.0, seed=7)
    base = make_base_data(n=6000, seed=0, world=world, local_positions=36)
    episodes = {k_shot: coco_moji_sized_episodes(world, k_shot, 100) for k_shot in (0, 1, 5)}
    for name in ("lcm", "wvga"):
        method = create_method(name, {}, seed=0)
        start = time.perf_counter()
        method.fit(base, None)
        fit_s = time.perf_counter() - start
        line = [f"{name}: fit {fit_s:.1f} s ({method.steps} steps)"]
        for k_shot, chosen in episodes.items():
            method.predict(chosen[0])
            start = time.perf_counter()
            method.predict_batch(chosen)  # one chunk, as the runner's evaluate task calls it
            per_s = len(chosen) / (time.perf_counter() - start)
            n_support = np.mean([e.support_features.shape[0] for e in chosen])
            n_query = np.mean([e.n_query for e in chosen])
            adapted = f", adaptation {method.adapt_steps} steps" if k_shot else ""
            line.append(f"{k_shot}shot {per_s:.0f} episodes/s ({n_support:.1f} support, {n_query:.1f} queries{adapted})")
        print("; ".join(line))
        assert fit_s < 120
