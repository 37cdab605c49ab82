"""Conformance of every registered method (docs/architecture.md §4.3), parametrised over the registry as timm does.

For each method (built-in and entry-point plug-ins) and each setting it supports (0shot, 1shot, 5shot):
scores are finite with shape (n_query, n_labels); two fresh instances with the same seed give identical
scores and predicting twice gives identical scores; permuting the queries permutes the scores (a query's
scores may not depend on the other queries) unless the method declares ``transductive = True``.
Methods are fitted on tiny synthetic base data with small hyperparameters (``TINY_CONFIG``).
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import inspect

import numpy as np
import pytest
import torch
import yaml


from mlfsic.harness.errors import MlfsicError
from mlfsic.harness.sweep.checkpoint import load_checkpoint, save_checkpoint
from mlfsic.methods.api import Episode, Method
from mlfsic.methods.registry import available_methods, create_method
from synthetic_data import clip_view, make_base_data, make_episode, tiny_clip

pytestmark = pytest.mark.usefixtures("one_thread")  # the runner gives each task one thread

SETTINGS = ("0shot", "1shot", "5shot")
TINY_CONFIG: dict[str, dict] = {
    "wordvec-zeroshot": {"epochs": 2},
    "protonet": {"n_episodes": 20, "hidden_dim": 32, "embed_dim": 16},
    "laso": {"steps": 20, "classifier_epochs": 1, "hidden_dim": 32, "episode_steps": 10, "max_union_pairs": 20},
    "lcm": {"embed_dim": 16, "heads": 2, "steps": 20, "eval_every": 10, "n_val_episodes": 2},
    "wvga": {"embed_dim": 16, "heads": 2, "steps": 20, "eval_every": 10, "n_val_episodes": 2},
    "wvga-adapted": {"embed_dim": 16, "heads": 2, "steps": 20, "eval_every": 10, "n_val_episodes": 2, "adapt_steps": 5},
    "mkt": {"stage1_steps": 4, "stage2_steps": 2, "val_every": 2, "batch_size": 32},
    "dualcoop": {"steps": 4, "val_every": 2, "batch_size": 32},
}
METHODS = sorted(available_methods())
BUILTIN = sorted(name for name, info in available_methods().items() if info.origin == "built-in")
CASES = [(name, setting) for name in METHODS for setting in SETTINGS if available_methods()[name].cls.supports(setting)]


@pytest.fixture(scope="module")
def base():
    return make_base_data(n=160, seed=0)


def data_for(name: str, data):
    """Synthetic data as method ``name`` sees it: open_clip features for methods that need the model."""
    return clip_view(data, tiny_clip()) if available_methods()[name].cls.needs_clip else data


def episode_for(name: str, k_shot: int, seed: int):
    episode, targets = make_episode(k_shot, seed=seed)
    return data_for(name, episode), targets


def created(name: str, seed: int = 0) -> Method:
    method = create_method(name, TINY_CONFIG.get(name, {}), seed)
    if method.needs_clip:
        method.use_clip(tiny_clip())
    return method


def fitted(name: str, base, seed: int = 0) -> Method:
    method = created(name, seed)
    method.fit(data_for(name, base), None)
    return method


@pytest.mark.parametrize("name", METHODS)
def test_fit_takes_a_val_split(name, base):
    """``fit(base, val)``: a method given the val split (its own labels and images) still fits and predicts."""
    val = dataclasses.replace(make_base_data(n=60, seed=5), split="val", label_names=tuple(f"val_{i}" for i in range(8)))
    method = created(name)
    method.fit(data_for(name, base), data_for(name, val))
    setting = "1shot" if method.few_shot else "0shot"
    episode, _ = episode_for(name, k_of(setting), seed=3)
    assert np.isfinite(np.asarray(method.predict(episode), dtype=np.float64)).all()


def k_of(setting: str) -> int:
    return int(setting.removesuffix("shot"))


def test_registry_holds_builtins_and_plugin():
    assert {"random", "wordvec-zeroshot", "protonet", "laso", "example-cosine"} <= set(METHODS)


@pytest.mark.parametrize("name", METHODS)
def test_supports_matches_declaration(name):
    cls = available_methods()[name].cls
    assert cls.supports("0shot") is cls.zero_shot
    assert cls.supports("1shot") is cls.few_shot and cls.supports("5shot") is cls.few_shot
    assert cls.zero_shot or cls.few_shot, f"{name} supports no setting"
    with pytest.raises(MlfsicError):
        cls.supports("five-shot")


def test_episode_has_no_query_targets():
    names = {field.name for field in dataclasses.fields(Episode)}
    assert "query_targets" not in names
    assert [n for n in names if "target" in n] == ["support_targets"]
    episode, _ = make_episode(1)
    assert not hasattr(episode, "query_targets")


@pytest.mark.parametrize("name,setting", CASES)
def test_scores_shape_finite_deterministic_equivariant(name, setting, base):
    episode, _ = episode_for(name, k_of(setting), seed=3)
    first = fitted(name, base)
    scores = np.asarray(first.predict(episode))
    assert scores.shape == (episode.n_query, episode.n_labels)
    assert np.all(np.isfinite(scores))
    np.testing.assert_array_equal(np.asarray(first.predict(episode)), scores, err_msg="predict twice differs")
    second = fitted(name, base)
    np.testing.assert_array_equal(np.asarray(second.predict(episode)), scores, err_msg="same seed, other scores")

    if getattr(first, "transductive", False):
        return
    permutation = np.random.default_rng(0).permutation(episode.n_query)
    permuted = dataclasses.replace(episode, query_features=episode.query_features[permutation].copy())
    if episode.query_local_features is not None:  # a query is its global and local features together
        permuted = dataclasses.replace(permuted, query_local_features=episode.query_local_features[permutation].copy())
    np.testing.assert_allclose(np.asarray(first.predict(permuted)), scores[permutation], rtol=1e-5, atol=1e-6)


PARTIAL = [name for name in BUILTIN if not all(available_methods()[name].cls.supports(s) for s in SETTINGS)]


@pytest.mark.parametrize("name", PARTIAL)
def test_builtin_rejects_unsupported_settings(name, base):
    cls = available_methods()[name].cls
    unsupported = [s for s in SETTINGS if not cls.supports(s)]
    method = fitted(name, base)
    for setting in unsupported:
        episode, _ = episode_for(name, k_of(setting), seed=1)
        with pytest.raises(MlfsicError, match="does not support"):
            method.predict(episode)


@pytest.mark.parametrize("name", METHODS)
def test_checkpoint_roundtrip_is_data_only(name, base, tmp_path):
    """The harness stores a fitted method as data (``harness.sweep.checkpoint``): a bare
    ``torch.load(weights_only=True)`` reads the file, and the decoded method scores identically."""
    method = fitted(name, base)
    setting = "1shot" if method.supports("1shot") else "0shot"
    episode, _ = episode_for(name, k_of(setting), seed=5)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, method, {"name": name, "seed": 0})
    assert torch.load(path, weights_only=True)["format"] == "mlfsic-checkpoint"
    reloaded, header = load_checkpoint(path)
    assert type(reloaded) is type(method) and header["name"] == name
    assert not hasattr(reloaded, "clip")  # the open_clip model comes from the backbone, never from a checkpoint
    if reloaded.needs_clip:
        reloaded.use_clip(tiny_clip())
    np.testing.assert_array_equal(reloaded.predict(episode), method.predict(episode))


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_bad_input_is_one_line_error(name, base):
    method = fitted(name, base)
    setting = "1shot" if method.supports("1shot") else "0shot"
    episode, _ = episode_for(name, k_of(setting), seed=2)
    wrong_dim = dataclasses.replace(episode, query_features=np.zeros((4, 7), np.float32))
    with pytest.raises(MlfsicError, match="query_features"):
        method.predict(wrong_dim)
    if setting == "1shot":
        no_support = episode.support_targets.copy()
        no_support[:, 0] = 0.0
        with pytest.raises(MlfsicError, match=episode.label_names[0]):
            method.predict(dataclasses.replace(episode, support_targets=no_support))
    broken = dataclasses.replace(data_for(name, base), targets=base.targets[:-1])
    with pytest.raises(MlfsicError, match="base.targets"):
        created(name).fit(broken, None)


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_config_file_holds_constructor_arguments(name):
    """``configs/methods/<name>.yaml`` exists and every key is a typed constructor keyword argument whose
    value differs from its default: the constructor signature is the one home of a method's defaults."""
    path = importlib.resources.files("mlfsic.configs") / "methods" / f"{name}.yaml"
    values = yaml.safe_load(path.read_text()) or {}
    parameters = inspect.signature(available_methods()[name].cls.__init__).parameters
    for key, value in values.items():
        assert key in parameters and key != "seed", f"{path}: {key!r} is not a constructor argument"
        default = parameters[key].default
        assert isinstance(value, type(default)) or (isinstance(default, float) and isinstance(value, int)), key
        assert value != default, f"{path}: {key!r} repeats the constructor default {default!r}; drop it"
    create_method(name, values, seed=0)


@pytest.mark.parametrize("name", METHODS)
def test_use_device_before_fit_and_predict(name, base):
    """The harness calls ``use_device`` with the task's device before ``fit`` and before ``predict``: on the CPU
    every method scores as without the call; a method that ignores the device (``uses_device`` False: every
    plug-in written before the hook, e.g. example-cosine) keeps working, on the CPU, even when its task was
    given a GPU."""
    setting = "1shot" if available_methods()[name].cls.supports("1shot") else "0shot"
    episode, _ = episode_for(name, k_of(setting), seed=3)
    expected = np.asarray(fitted(name, base).predict(episode))
    devices = ["cpu"] if available_methods()[name].cls.uses_device else ["cpu", "cuda"]
    for device in devices:  # torch.device("cuda") is only a name here: an ignoring method never touches it
        method = created(name)
        method.use_device(device)
        assert method.device == torch.device(device)
        method.fit(data_for(name, base), None)
        method.use_device(device)
        np.testing.assert_array_equal(np.asarray(method.predict(episode)), expected, err_msg=f"device {device}")
        assert "device" not in method.__getstate__()  # never part of a checkpoint
