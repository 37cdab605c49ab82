"""dualcoop (methods/dualcoop.py): positive and negative learned prompt contexts on the pinned tiny teacher,
class-specific region aggregation, the Asymmetric Loss, val selection, 0-shot prediction and checkpoints."""

from __future__ import annotations

import dataclasses
import importlib.resources
import inspect

import numpy as np
import pytest
import torch
import yaml

import mlfsic.methods.clip.dualcoop as dualcoop  # registers "dualcoop"
from mlfsic.harness.errors import MlfsicError
from mlfsic.harness.sweep.checkpoint import load_checkpoint, save_checkpoint
from mlfsic.methods.clip.mkt import learned_context
from mlfsic.methods.registry import available_methods, create_method
from mlfsic.methods.torch_utils import torch_generator
from synthetic_data import clip_view, make_base_data, make_episode, tiny_clip

pytestmark = pytest.mark.usefixtures("one_thread")  # the runner gives each task one thread

QUICK = {"steps": 6, "val_every": 3, "batch_size": 16}


@pytest.fixture(scope="module")
def base():
    return clip_view(make_base_data(n=48, seed=0), tiny_clip())


@pytest.fixture(scope="module")
def val():
    data = make_base_data(n=24, seed=5)
    data = dataclasses.replace(data, split="val", label_names=tuple(f"val_{i}" for i in range(len(data.label_names))))
    return clip_view(data, tiny_clip(), seed=1)


@pytest.fixture(scope="module")
def zero_shot_episode():
    episode, _ = make_episode(0, seed=3)
    return clip_view(episode, tiny_clip(), seed=2)


def fitted(base, val=None, seed: int = 0, **arguments) -> dualcoop.DualCoOp:
    method = create_method("dualcoop", {**QUICK, **arguments}, seed)
    method.use_clip(tiny_clip())
    method.fit(base, val)
    return method


@pytest.fixture(scope="module")
def with_val(base, val):
    return fitted(base, val)


def test_registered_zero_shot_only_with_clip_and_local_features():
    cls = available_methods()["dualcoop"].cls
    assert cls is dualcoop.DualCoOp
    assert cls.zero_shot and not cls.few_shot and cls.needs_clip and cls.needs_local_features
    assert cls.supports("0shot") and not cls.supports("1shot") and not cls.supports("5shot")


def test_fit_with_val_and_zero_shot_scores(with_val, zero_shot_episode):
    report = with_val.fit_report
    assert [point["step"] for point in report["val_curves"]["lr=0.0005"]] == [0, 3, 6]
    assert report["kept"]["step"] in (0, 3, 6) and report["val_map"] == max(
        point["val_map"] for point in report["val_curves"]["lr=0.0005"])
    # contexts from the words "there is a" / "there is no"; regions: the class token and 8 x 8 patches (96 / 12 px)
    assert report["n_ctx"] == 3 and report["regions"] == 65
    assert with_val.ctx_pos.shape == with_val.ctx_neg.shape == (3, 384)  # MiniLM's token width
    assert not with_val.ctx_pos.requires_grad
    scores = with_val.predict(zero_shot_episode)
    assert scores.shape == (zero_shot_episode.n_query, zero_shot_episode.n_labels)
    assert scores.dtype == np.float64 and np.isfinite(scores).all()
    assert np.unique(scores).size > 1


def test_kshot_is_refused(with_val):
    episode, _ = make_episode(1, seed=4)
    with pytest.raises(MlfsicError, match="does not support the 1shot"):
        with_val.predict(clip_view(episode, tiny_clip()))


def test_same_seed_same_scores_other_seed_other_contexts(base, zero_shot_episode):
    first, second = fitted(base, seed=0), fitted(base, seed=0)
    assert torch.equal(first.ctx_pos, second.ctx_pos) and torch.equal(first.ctx_neg, second.ctx_neg)
    np.testing.assert_array_equal(first.predict(zero_shot_episode), second.predict(zero_shot_episode))
    np.testing.assert_array_equal(first.predict(zero_shot_episode), first.predict(zero_shot_episode))
    other = fitted(base, seed=1)  # other batches and label subsets
    assert not torch.equal(first.ctx_pos, other.ctx_pos)


def test_lr_grid_is_chosen_on_val(base, val):
    method = fitted(base, val, steps=3, val_every=3, lr_grid=[0.0005, 0.01])
    curves = method.fit_report["val_curves"]
    assert sorted(curves) == ["lr=0.0005", "lr=0.01"]
    best = max(point["val_map"] for curve in curves.values() for point in curve)
    assert method.fit_report["val_map"] == best and method.fit_report["kept"]["lr"] in (0.0005, 0.01)
    assert curves["lr=0.0005"][0] == curves["lr=0.01"][0]  # both start from the same contexts
    without_val = fitted(base, None, steps=1, lr_grid=[0.0005, 0.01])  # no val: lr, no grid
    assert list(without_val.fit_report["loss_curves"]) == ["lr=0.0005"]


def test_no_val_keeps_the_last_step(base):
    method = fitted(base, None, steps=2)
    assert method.fit_report["kept"]["step"] == 2 and method.fit_report["val_map"] is None
    assert "no val split" in method.fit_report["kept"]["note"]


def test_training_lowers_the_asl_loss(base):
    method = fitted(base, None, steps=25, val_every=5, labels_per_step=8, lr=0.002, positive_init="", negative_init="")
    report = method.fit_report["base_asl"]
    generator = torch_generator(0, 0)  # the initial contexts, drawn as fit draws them
    start_pos = method._context_init("", 8, generator)
    start_neg = method._context_init("", 8, generator)
    before = method.asl_loss(base, start_pos, start_neg)
    after = method.asl_loss(base)
    assert before == pytest.approx(report["start"], rel=1e-4) and after == pytest.approx(report["kept"], rel=1e-4)
    assert after < 0.9 * before, (before, after)  # 1.50 -> 1.27 on these noise images (a label-prior fit)
    losses = [point["loss"] for point in method.fit_report["loss_curves"]["lr=0.002"]]
    assert losses[-1] < losses[0]


def test_checkpoint_round_trip(with_val, zero_shot_episode, tmp_path):
    scores = with_val.predict(zero_shot_episode)  # fills the text cache, which is not stored
    path = tmp_path / "dualcoop.pt"
    save_checkpoint(path, with_val, {"name": "dualcoop", "seed": 0})
    assert torch.load(path, weights_only=True)["format"] == "mlfsic-checkpoint"
    reloaded, header = load_checkpoint(path)
    assert type(reloaded) is dualcoop.DualCoOp and header["name"] == "dualcoop"
    assert not hasattr(reloaded, "clip") and not hasattr(reloaded, "_texts")
    assert torch.equal(reloaded.ctx_pos, with_val.ctx_pos) and torch.equal(reloaded.ctx_neg, with_val.ctx_neg)
    assert reloaded.fit_report == with_val.fit_report
    reloaded.use_clip(tiny_clip())
    np.testing.assert_array_equal(reloaded.predict(zero_shot_episode), scores)


def test_random_contexts_and_patch_regions_only(base, zero_shot_episode):
    """The paper's zero-shot form: N(0, 0.02) contexts of n_ctx tokens, the patch tokens as the only regions."""
    method = fitted(base, None, steps=1, positive_init="", negative_init="", n_ctx=5, global_region=False)
    assert method.ctx_pos.shape == (5, 384) and method.ctx_neg.shape == (5, 384)
    assert not torch.equal(method.ctx_pos, method.ctx_neg)
    assert method.fit_report["regions"] == 64
    assert np.isfinite(method.predict(zero_shot_episode)).all()


def test_prompt_tokens_and_trimmed_padding():
    method = dualcoop.DualCoOp(seed=0)
    method.use_clip(tiny_clip())
    labels = ("traffic light", "dog")
    tokens = method._tokens(labels, 4)
    placeholder = tiny_clip().tokenizer(["X"])[0, 1]
    assert (tokens[:, 1:5] == placeholder).all()
    full = tiny_clip().tokenizer([f"X X X X {label}." for label in labels])
    assert tokens.shape[1] < full.shape[1] and torch.equal(tokens, full[:, :tokens.shape[1]])
    context = torch.randn(4, 384, generator=torch.Generator().manual_seed(0)) * 0.02
    model = tiny_clip().model
    with torch.no_grad(), learned_context(model, context):
        torch.testing.assert_close(model.encode_text(tokens), model.encode_text(full), rtol=1e-5, atol=1e-5)
    with pytest.raises(MlfsicError, match="does not fit"):
        method._tokens(("a " * 40,), 4)


def test_region_aggregation_and_loss():
    regions = torch.nn.functional.normalize(torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]), dim=-1)  # (1, 2, 2)
    positive = torch.tensor([[1.0, 0.0]])
    negative = torch.tensor([[0.0, 1.0]])
    mean_pos, mean_neg = dualcoop.region_logits(regions, positive, negative, scale=10.0, attention_scale=0.0)
    assert mean_pos.item() == pytest.approx(5.0) and mean_neg.item() == pytest.approx(5.0)  # uniform weights
    sharp_pos, sharp_neg = dualcoop.region_logits(regions, positive, negative, scale=10.0, attention_scale=50.0)
    assert sharp_pos.item() == pytest.approx(10.0, abs=1e-6) and sharp_neg.item() == pytest.approx(0.0, abs=1e-6)
    targets = torch.tensor([[1.0, 0.0]])
    right = dualcoop.dual_asl(torch.tensor([[9.0, -9.0]]), torch.zeros(1, 2), targets)
    wrong = dualcoop.dual_asl(torch.tensor([[-9.0, 9.0]]), torch.zeros(1, 2), targets)
    assert right.item() < 1e-3 < wrong.item()
    # gamma 0 and no margin: binary cross-entropy of sigmoid(s+ - s-)
    logits = torch.tensor([[0.3, -1.2]])
    plain = dualcoop.dual_asl(logits, torch.zeros(1, 2), targets, gamma_neg=0.0, gamma_pos=0.0, clip=0.0)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="sum")
    assert plain.item() == pytest.approx(bce.item(), rel=1e-5)


def test_bad_input_is_a_one_line_error(with_val, base, zero_shot_episode):
    with pytest.raises(MlfsicError, match="query_features"):
        with_val.predict(dataclasses.replace(zero_shot_episode, query_features=np.zeros((4, 7), np.float32)))
    with pytest.raises(MlfsicError, match="query_local_features"):
        with_val.predict(dataclasses.replace(zero_shot_episode, query_local_features=None))
    method = create_method("dualcoop", QUICK, 0)
    method.use_clip(tiny_clip())
    with pytest.raises(MlfsicError, match="base.local_features"):
        method.fit(dataclasses.replace(base, local_features=base.local_features[:, :, :10]), None)


@pytest.mark.parametrize("arguments,named", [
    ({"n_ctx": 0}, "n_ctx"), ({"steps": -1}, "steps"), ({"lr": 0.0}, "lr"), ({"lr_grid": [0.001, -1.0]}, "lr_grid"),
    ({"asl_clip": 1.0}, "asl_clip"), ({"negative_init": ""}, "negative_init"),
    ({"labels_per_step": 0}, "labels_per_step"), ({"positive_init": "{label}", "negative_init": "no"}, "placeholder"),
])
def test_bad_hyperparameters_are_one_line_errors(arguments, named):
    with pytest.raises(MlfsicError, match=named):
        dualcoop.DualCoOp(seed=0, **arguments)


def test_config_file_holds_only_constructor_arguments():
    path = importlib.resources.files("mlfsic.configs") / "methods" / "dualcoop.yaml"
    values = yaml.safe_load(path.read_text()) or {}
    parameters = inspect.signature(dualcoop.DualCoOp.__init__).parameters
    for key, value in values.items():
        assert key in parameters and key != "seed" and value != parameters[key].default, key
