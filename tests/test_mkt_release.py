"""MKT's switches towards the released code (github:sunanhe/MKT; methods/clip/mkt.py): ranking loss,
distillation, layer decay, lr schedule and the learned prompt tokens, each against a hand-computed value."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mlfsic.methods.baselines import hinge_rank_loss
from mlfsic.methods.clip import mkt
from mlfsic.methods.clip.mkt import (MKT, MktStudent, distill_loss, layer_decay_groups, rank_loss, release_stream_scores,
                                     scheduled_lr, violating_pairs_rank_loss)
from synthetic_data import tiny_clip


def release_formula(scores: torch.Tensor, signed: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """rank_loss.py's ranking_lossT written as loops: labels +1/-1; per image, hinge summed over (positive,
    negative) pairs / number of pairs with hinge > 0 (+1e-8); mean over the images (label-less ones dropped)."""
    losses = []
    for row, labels in zip(scores.tolist(), signed.tolist()):
        if not any(label > 0 for label in labels):
            continue
        hinges = [max(0.0, margin + row[n] - row[p]) for p, lp in enumerate(labels) if lp > 0
                  for n, ln in enumerate(labels) if ln < 0]
        losses.append(sum(hinges) / (sum(h > 0 for h in hinges) + 1e-8))
    return torch.tensor(sum(losses) / len(losses))


def test_violating_pairs_rank_loss_by_hand():
    scores = torch.tensor([[0.9, 0.2, 0.5], [0.1, 3.0, -0.5], [0.0, 0.0, 0.0]])
    positives = torch.tensor([[True, False, False], [False, True, False], [False, False, False]])
    # image 1: (1 - 0.9 + 0.2) + (1 - 0.9 + 0.5) = 0.9 over 2 violating pairs; image 2: no violation -> 0;
    # image 3 has no positive label and is left out of the mean: (0.45 + 0) / 2
    assert violating_pairs_rank_loss(scores, positives, 1.0).item() == pytest.approx(0.225, abs=1e-6)
    # the all-pairs hinge divides by every pair instead: (0.3 + 0.6 + 0 + 0) / 4
    assert hinge_rank_loss(scores, positives, 1.0).item() == pytest.approx(0.225, abs=1e-6)
    assert violating_pairs_rank_loss(scores[:1], positives[:1], 1.0).item() == pytest.approx(0.45, abs=1e-6)
    assert hinge_rank_loss(scores[:1], positives[:1], 1.0).item() == pytest.approx(0.45, abs=1e-6)
    # a row where only one of two pairs violates: release 0.3 / 1, all-pairs 0.3 / 2
    one = torch.tensor([[0.9, 0.2, -1.0]])
    first = torch.tensor([[True, False, False]])
    assert violating_pairs_rank_loss(one, first, 1.0).item() == pytest.approx(0.3, abs=1e-6)
    assert hinge_rank_loss(one, first, 1.0).item() == pytest.approx(0.15, abs=1e-6)


def test_violating_pairs_rank_loss_equals_the_release_formula():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(16, 7, generator=generator)
    positives = torch.rand(16, 7, generator=generator) < 0.3
    signed = positives.float() * 2 - 1
    torch.testing.assert_close(violating_pairs_rank_loss(scores, positives, 1.0), release_formula(scores, signed),
                               rtol=1e-5, atol=1e-6)


def test_release_rank_loss_normalises_each_stream_per_image():
    global_cos = torch.tensor([[3.0, 4.0]])
    local_cos = torch.tensor([[1.0, 0.0]])
    torch.testing.assert_close(release_stream_scores(global_cos, local_cos), torch.tensor([[0.8, 0.4]]))
    positives = torch.tensor([[True, False]])
    # release: 1 - 0.8 + 0.4 over its one violating pair; all-pairs: raw mean (2, 2), hinge 0.1 - 2 + 2
    assert rank_loss("violating-pairs", global_cos, local_cos, positives, 1.0).item() == pytest.approx(0.6)
    assert rank_loss("all-pairs", global_cos, local_cos, positives, 0.1).item() == pytest.approx(0.1)


def test_distill_loss_forms():
    student, teacher = torch.tensor([[1.0, 2.0]]), torch.tensor([[2.0, 0.0]])
    assert distill_loss("mean-raw", student, teacher).item() == pytest.approx((1.0 + 2.0) / 2)
    assert distill_loss("sum-normalised", student, teacher).item() == pytest.approx(
        abs(1 / math.sqrt(5) - 1) + 2 / math.sqrt(5), abs=1e-6)


class _Visual(nn.Module):
    """The parts of an open_clip ViT tower that MktStudent copies."""

    def __init__(self, depth: int = 3, width: int = 8) -> None:
        super().__init__()
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width))
                                                   for _ in range(depth))
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.randn(width, 4))


def test_layer_decay_gives_the_release_lr_per_block(monkeypatch):
    monkeypatch.setattr(mkt, "LAST_BLOCKS", 2)
    student = MktStudent(_Visual())
    assert len(student.blocks) == 2
    groups = layer_decay_groups(student, lr=1e-3, weight_decay=0.05, layer_decay=0.65)
    where = {id(p): g for g in groups for p in g["params"]}
    last, below = student.blocks[1][1], student.blocks[0][1]
    assert where[id(last.weight)]["lr"] == pytest.approx(1e-3 * 0.65)  # release: the last block, layer id 12 of 13
    assert where[id(below.weight)]["lr"] == pytest.approx(1e-3 * 0.65 ** 2)  # the block below it, id 11
    assert where[id(student.proj)]["lr"] == pytest.approx(1e-3)  # the rest (ln_post, proj): scale 1
    assert where[id(student.ln_post.weight)]["lr"] == pytest.approx(1e-3)
    assert where[id(student.proj)]["weight_decay"] == 0.05 and where[id(last.weight)]["weight_decay"] == 0.05
    assert where[id(last.bias)]["weight_decay"] == 0.0 and where[id(student.ln_post.weight)]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(list(student.parameters()))
    flat = layer_decay_groups(student, lr=1e-4, weight_decay=0.01, layer_decay=1.0)
    assert {g["lr"] for g in flat} == {1e-4}


def test_warmup_cosine_schedule():
    assert scheduled_lr("constant", 7, 100, 1e-3) == 1e-3
    assert scheduled_lr("warmup-cosine", 0, 100, 1e-3) == 0.0
    assert scheduled_lr("warmup-cosine", 5, 100, 1e-3) == pytest.approx(5e-4)  # half-way through the 10% warmup
    assert scheduled_lr("warmup-cosine", 10, 100, 1e-3) == pytest.approx(1e-3)
    assert scheduled_lr("warmup-cosine", 55, 100, 1e-3) == pytest.approx(1e-6 + (1e-3 - 1e-6) * 0.5)
    assert scheduled_lr("warmup-cosine", 100, 100, 1e-3) == pytest.approx(1e-6)


def test_template_prompt_learns_every_non_label_token():
    clip = tiny_clip()
    labels = ("dog", "traffic light")
    method = MKT(seed=0, prompt_tokens="template")
    method.use_clip(clip)
    tokens = clip.tokenizer(method._prompts(labels))
    slots = method._prompt_slots(labels, tokens)
    lengths = (tokens != method._pad_id()).sum(dim=1)
    for i, label in enumerate(labels):
        n_label = len(method._ids(label)) - 2
        assert int(slots.learned[i].sum()) == int(lengths[i]) - n_label  # all but the label's tokens (and padding)
        assert not slots.learned[i, 4:4 + n_label].any()  # [CLS] there is a | label | in the scene [SEP]
        assert not slots.learned[i, int(lengths[i]):].any()
    assert int(slots.rows.max()) + 1 == len(method._template()[2]) == 8  # [CLS] there is a in the scene [SEP]
    context = method._context_init()
    torch.testing.assert_close(method._text(labels, context), method._text(labels, None))  # the table as it is
    changed = context.clone()
    changed[-1] += 1.0  # the end token's row
    assert not torch.allclose(method._text(labels, changed), method._text(labels, None))

    prefix = MKT(seed=0, prompt_tokens="prefix")  # mlfsic's earlier form: the words before {label} only
    prefix.use_clip(clip)
    prefix_slots = prefix._prompt_slots(labels, tokens)
    assert prefix_slots.learned.sum(dim=1).tolist() == [3, 3] and prefix_slots.learned[:, 1:4].all()


def test_bad_switch_values_are_one_line_errors():
    from mlfsic.harness.errors import MlfsicError

    for key in ("rank_loss", "distill_loss", "lr_schedule", "prompt_tokens"):
        with pytest.raises(MlfsicError, match=key):
            MKT(seed=0, **{key: "nope"})
    with pytest.raises(MlfsicError, match="layer_decay"):
        MKT(seed=0, layer_decay=0.0)
    MKT(seed=0, prompt="{label} in the scene", prompt_tokens="template")  # no words before: fine for template
