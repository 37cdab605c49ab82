"""The tiny CLIP teacher: shipped files pinned by hash, deterministic training, a run never trains it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mlfsic.harness.backbones import kinds as backbones
from mlfsic.harness.backbones import weights
from mlfsic.harness.backbones import open_clip as clip_models
from mlfsic.harness.errors import MlfsicError
from mlfsic.harness.io import sha256_file
from mlfsic.harness.backbones.open_clip import open_clip_weights, teacher_settings, teacher_trained_on
from mlfsic.harness.backbones.tiny_teacher import train_teacher

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "backbone"
TEACHERS = ("tiny-teacher", "tiny-teacher-strict")


def _config(name: str) -> dict:
    return yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())


@pytest.mark.parametrize("name", TEACHERS)
def test_shipped_teacher_matches_its_hash_and_record(name):
    config = _config(name)
    path = weights.pinned_weights(config)
    assert path is not None and sha256_file(path) == config["pinned_sha256"]
    assert path.name == f"tiny_teacher-{config['regime']}-{config['pinned_sha256'][:12]}.pt"  # named by content
    record = weights.pinned_record(path)
    assert record["trained_on"] == teacher_trained_on(teacher_settings(config))
    assert record["training"]["seconds"] <= 30 * 60  # the 2-core training budget
    state = torch.load(path, weights_only=True)
    assert not any(key.startswith("text.transformer.") for key in state)  # MiniLM is not copied


def test_pinned_teacher_features_are_its_image_embeddings():
    config = {**_config("tiny-teacher"), "device": "cpu"}
    weights, report = open_clip_weights(config)
    assert report["pinned"] is True and report["regime"] == "concept-seen" and "not CLIP" in report["stand_in"]
    backbone = backbones.load_backbone(config, weights)
    assert backbone.global_dim == clip_models.TINY_TEACHER_EMBED_DIM and backbone.local_shape == (65, 192)
    images = torch.randn(3, 3, 96, 96)
    global_features, local = backbone.embed(images)
    clip = clip_models.load_tiny_teacher(weights)
    with torch.no_grad():
        np.testing.assert_allclose(global_features, clip.model.encode_image(images).numpy(), rtol=1e-4, atol=1e-5)
    assert local.shape == (3, 65, 192)


def test_a_teacher_whose_corpus_saw_a_sweep_label_is_refused():
    """The pinned corpus held out the packaged split's val/novel labels; another split's may be in it."""
    config = _config("tiny-teacher")
    open_clip_weights(config, {"base": ["dog"], "val": ["cow"], "test": ["bird"]})  # held out: fine
    with pytest.raises(MlfsicError, match="'dog' .* may be in its corpus"):
        open_clip_weights(config, {"base": ["cow"], "val": ["dog"], "test": ["bird"]})


def test_a_run_never_trains_the_teacher():
    config = {**_config("tiny-teacher"), "epochs": 5}
    with pytest.raises(MlfsicError, match="trained with other settings \\(epochs\\); a run never trains the teacher"):
        open_clip_weights(config)
    with pytest.raises(MlfsicError, match="sha256 .* does not match"):
        open_clip_weights({**_config("tiny-teacher"), "pinned_sha256": "0" * 64})


def test_teacher_training_is_deterministic(tmp_path):
    settings = {**teacher_settings(_config("tiny-teacher")), "corpus_images": 48, "epochs": 1, "batch_size": 16,
                "warmup_steps": 1}
    reports = [train_teacher(settings, tmp_path / f"t{i}.pt", tmp_path / "corpus", progress=False) for i in range(2)]
    assert sha256_file(tmp_path / "t0.pt") == sha256_file(tmp_path / "t1.pt")
    assert reports[0]["steps"] == 3 and reports[0]["corpus"]["regime"] == "concept-seen"
    untrained = clip_models.trained_state(clip_models.build_tiny_teacher())
    trained = torch.load(tmp_path / "t0.pt", weights_only=True)
    assert set(trained) == set(untrained)
    assert not torch.equal(trained["visual.proj"], untrained["visual.proj"])
    clip_models.load_tiny_teacher(tmp_path / "t0.pt")  # loads back into the architecture


@pytest.mark.slow
def test_teacher_train_command_reproduces_the_pinned_file(tmp_path, capsys):
    """~15 min on 2 cores: the shipped concept-seen teacher is retrained byte for byte (same machine type)."""
    from mlfsic.harness.cli import main

    assert main(["teacher", "train", f"results_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "same sha256: yes" in out, out
