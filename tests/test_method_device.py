"""Methods on their task's device (issue 37, item 1): ``Method.use_device`` and ``uses_device``.

On the CPU the device changes nothing: each method that computes on ``self.device`` (lcm, wvga, wvga-adapted,
laso, protonet; mkt and clip-zeroshot through ``clip_on``) gives bit-identical scores fitted and predicted
with the default device and with an explicit ``use_device("cpu")`` (the published numbers cannot move). The
device is never part of a checkpoint, and the harness records the device each fit computed on. The CPU-vs-GPU
comparison is ``tests/gpu_check.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlfsic.harness.sweep.checkpoint import load_checkpoint, save_checkpoint
from mlfsic.harness.sweep.driver.planning import Plan
from mlfsic.harness.sweep.driver.run_record import devices_record
from mlfsic.harness.sweep.evaluate import compute_device
from mlfsic.methods.api import Method
from mlfsic.methods.registry import available_methods, create_method
from synthetic_data import clip_view, make_base_data, make_episode, tiny_clip

pytestmark = pytest.mark.usefixtures("one_thread")

# Small but covering each path: lcm's selection and adaptation, wvga-adapted's adaptation without the mask,
# laso's batched and one-at-a-time episode classifiers, protonet's episodic training.
ON_DEVICE: dict[str, dict] = {
    "protonet": {"n_episodes": 20, "hidden_dim": 32, "embed_dim": 16},
    "laso": {"steps": 20, "classifier_epochs": 1, "hidden_dim": 32, "episode_steps": 10, "max_union_pairs": 20},
    "lcm": {"embed_dim": 16, "heads": 2, "steps": 20, "eval_every": 10, "n_val_episodes": 2, "adapt_steps": 5},
    "wvga": {"embed_dim": 16, "heads": 2, "steps": 20, "eval_every": 10, "n_val_episodes": 2},
    "wvga-adapted": {"embed_dim": 16, "heads": 2, "steps": 20, "eval_every": 10, "n_val_episodes": 2,
                     "adapt_steps": 5},
    # on the tiny teacher's features: mkt's two stages (constant lr: the warmup's first step is 0), its K-shot mix
    "mkt": {"stage1_steps": 6, "stage2_steps": 3, "batch_size": 16, "lr_schedule": "constant"},
    "clip-zeroshot": {},
}


@pytest.fixture(scope="module")
def base():
    return make_base_data(n=160, seed=0)


def needs_clip(name: str) -> bool:
    return available_methods()[name].cls.needs_clip


def episodes(name: str) -> list:
    """A chunk of K-shot episodes (zero-shot ones for a zero-shot-only method) as ``name`` sees them: open_clip
    features where it needs the model."""
    shots = ((1, 3), (5, 4), (1, 5)) if available_methods()[name].cls.few_shot else ((0, 3), (0, 4))
    drawn = [make_episode(k_shot, seed=seed)[0] for k_shot, seed in shots]
    return [clip_view(episode, tiny_clip(), seed=i) for i, episode in enumerate(drawn)] if needs_clip(name) else drawn


def created(name: str) -> Method:
    method = create_method(name, ON_DEVICE[name], 0)
    if needs_clip(name):
        method.use_clip(tiny_clip())
    return method


def fit_and_score(name: str, base, device: str | None) -> list[np.ndarray]:
    method = created(name)
    if device is not None:
        method.use_device(device)
    method.fit(clip_view(base, tiny_clip()) if needs_clip(name) else base, None)
    return [np.asarray(scores) for scores in method.predict_batch(episodes(name))]


def test_the_listed_methods_declare_the_device():
    declared = {name for name, info in available_methods().items() if info.cls.uses_device}
    assert set(ON_DEVICE) <= declared
    assert not Method.uses_device and Method.device == torch.device("cpu")


@pytest.mark.parametrize("name", sorted(ON_DEVICE))
def test_explicit_cpu_device_gives_identical_scores(name, base):
    default = fit_and_score(name, base, None)
    explicit = fit_and_score(name, base, "cpu")
    for got, expected in zip(explicit, default, strict=True):
        assert got.dtype == expected.dtype and isinstance(got, np.ndarray)
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("name", sorted(ON_DEVICE))
def test_device_is_not_in_the_checkpoint(name, base, tmp_path):
    method = created(name)
    method.use_device("cpu")
    method.fit(clip_view(base, tiny_clip()) if needs_clip(name) else base, None)
    assert "device" not in method.__getstate__()
    save_checkpoint(tmp_path / "fit.pt", method, {"name": name, "seed": 0})
    reloaded, _ = load_checkpoint(tmp_path / "fit.pt")
    assert "device" not in vars(reloaded) and reloaded.device == torch.device("cpu")
    if needs_clip(name):
        reloaded.use_clip(tiny_clip())
    reloaded.use_device("cpu")  # as the harness does before predict_batch
    episode = episodes(name)[0]
    np.testing.assert_array_equal(reloaded.predict(episode), method.predict(episode))


def test_compute_device_and_the_run_json_record(tmp_path):
    assert compute_device(available_methods()["lcm"].cls, "cuda") == "cuda"
    assert compute_device(available_methods()["random"].cls, "cuda") == "cpu"  # ignores the device: CPU
    plan = Plan(run_path=tmp_path, dataset="d")
    plan.fit_devices["lcm/seed0"] = "cuda"
    plan.chunk_devices["lcm__1shot__seed0"] = {"cuda": 3}
    assert devices_record(plan) == {"fits": {"lcm/seed0": "cuda"}, "evaluate_chunks": {"lcm__1shot__seed0": {"cuda": 3}},
                                    "dtype": "float32", "mixed_precision": False}


def test_a_sweep_records_the_device_of_each_fit_and_chunk(ray_session, tiny_results_dir):
    """Through Ray on the CPU: run.json's ``devices`` names every fit and counts every computed chunk, all "cpu";
    the checkpoint's record says where the fit ran (a cached fit reports it from there)."""
    import json

    from conftest import tiny_overrides

    from mlfsic.harness.sweep.load import load_sweep
    from mlfsic.harness.sweep.runner import run_sweep

    sweep = load_sweep(tiny_overrides(tiny_results_dir, "n_episodes=20", "chunk_episodes=10", "setting=[1shot]",
                                      "seeds=[0]", "method=[random,protonet]", "+method_args.protonet.n_episodes=50"))
    outcome = run_sweep(sweep, progress=False)
    assert outcome.failures == []
    devices = json.loads((outcome.run_path / "run.json").read_text())["devices"]
    assert devices == {"fits": {"protonet/seed0": "cpu", "random/seed0": "cpu"},
                       "evaluate_chunks": {"protonet__1shot__seed0": {"cpu": 2}, "random__1shot__seed0": {"cpu": 2}},
                       "dtype": "float32", "mixed_precision": False}
    records = [json.loads(path.read_text()) for path in (tiny_results_dir / "cache" / "checkpoints").glob("*.json")]
    assert {record["name"]: record["device"] for record in records if record["name"] in ("random", "protonet")} == {
        "random": "cpu", "protonet": "cpu"}


def test_clip_model_on_the_cpu_is_the_shared_model_itself():
    """``on_device.clip_on``: the CPU gives the worker's model itself (no copy: the CPU path is unchanged); another
    device gets one copy, kept for the process, and the shared model stays where it was."""
    from mlfsic.methods.clip import on_device

    clip = tiny_clip()
    assert on_device.model_device(clip) == torch.device("cpu")
    assert on_device.clip_on(clip, "cpu") is clip and on_device.clip_on(clip, torch.device("cpu")) is clip
    assert clip.model not in on_device._COPIES
    text = on_device.encode_text(clip, ["There is a dog in the scene"])
    torch.testing.assert_close(text, clip.encode_text(["There is a dog in the scene"]), rtol=0, atol=0)
    assert text.device == torch.device("cpu") and text.shape == (1, 256)
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(1))
