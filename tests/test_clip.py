"""open_clip models offline, MKT on a real ViT-B-16 architecture, and the one-line errors of open_clip backbones."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlfsic.harness.backbones import open_clip as clip_models
from mlfsic.harness.errors import MlfsicError
from mlfsic.methods.api import Episode, SplitData


@pytest.fixture(scope="module")
def vit_b16() -> clip_models.ClipModel:
    """ViT-B-16-quickgelu with random weights: built offline, nothing downloaded."""
    torch.manual_seed(0)
    return clip_models.load_open_clip("ViT-B-16-quickgelu", None, allow_random=True)


def _split(tokens: torch.Tensor, clip: clip_models.ClipModel, targets: np.ndarray, labels: tuple[str, ...]) -> SplitData:
    blocks = clip.visual.transformer.resblocks
    with torch.no_grad():
        pooled, _ = clip_models.vit_finish(clip.visual, blocks[len(blocks) - clip_models.LAST_BLOCKS:], tokens)
    return SplitData(split="base", features=pooled.numpy(), local_features=tokens.numpy(), targets=targets,
                     label_names=labels, label_embeddings=np.eye(len(labels), dtype=np.float32), seed=0)


def test_token_split_reproduces_the_image_embedding(vit_b16):
    images = torch.randn(2, 3, vit_b16.image_size, vit_b16.image_size)
    with torch.no_grad():
        tokens = clip_models.vit_tokens_before(vit_b16.visual, images)
        global_features, local = clip_models.ClipImageFeatures(vit_b16.visual).forward_features(images)
        reference = vit_b16.model.encode_image(images)
    assert tokens.shape == (2, 1 + 14 * 14, 768)
    assert torch.equal(local, tokens)
    torch.testing.assert_close(global_features, reference, rtol=1e-4, atol=1e-4)


def test_mkt_scores_and_trains_one_step_on_vit_b16(vit_b16, tmp_path):
    from mlfsic.methods.clip.mkt import MKT, MktStudent

    images = torch.randn(2, 3, vit_b16.image_size, vit_b16.image_size)
    with torch.no_grad():
        tokens = clip_models.vit_tokens_before(vit_b16.visual, images)
    labels = ("dog", "boat", "cup")
    base = _split(tokens, vit_b16, np.array([[1, 0, 1], [0, 1, 0]], dtype=np.float32), labels)
    method = MKT(seed=0, stage1_steps=1, stage2_steps=1, batch_size=2, val_every=1,
                 lr_schedule="constant")  # the warmup's first step has lr 0
    method.use_clip(vit_b16)
    untrained = MktStudent(vit_b16.visual)
    method.fit(base, None)
    assert not torch.equal(method.student.proj, untrained.proj)  # stage 1 took a step
    assert method.context is not None and method.context.shape[1] == 512  # stage 2: learned prompt context
    assert method.fit_report["kept"] == "stage2-last"
    common = dict(index=0, seed=1, label_names=labels, label_embeddings=np.eye(3, dtype=np.float32),
                  query_features=base.features, query_local_features=base.local_features)
    zero = Episode(k_shot=0, support_features=np.zeros((0, 512), np.float32), support_local_features=tokens[:0].numpy(),
                   support_targets=np.zeros((0, 3), np.float32), **common)
    one = Episode(k_shot=1, support_features=base.features, support_local_features=base.local_features,
                  support_targets=np.array([[1, 0, 1], [0, 1, 0]], np.float32), **common)
    for episode in (zero, one):
        scores = method.predict(episode)
        assert scores.shape == (2, 3) and np.isfinite(scores).all()
    restored = _saved_and_loaded(method, tmp_path)
    assert not hasattr(restored, "clip")  # the model comes from the backbone, never from the checkpoint
    restored.use_clip(vit_b16)
    np.testing.assert_allclose(restored.predict(one), method.predict(one))


def _saved_and_loaded(method, tmp_path):
    """Through the harness's data-only checkpoint (``harness.sweep.checkpoint``), as a sweep stores it."""
    from mlfsic.harness.sweep.checkpoint import load_checkpoint, save_checkpoint

    save_checkpoint(tmp_path / "mkt.pt", method, {"name": "mkt", "seed": 0})
    return load_checkpoint(tmp_path / "mkt.pt")[0]


@pytest.mark.parametrize("arguments,named", [
    ({"val_every": 0}, "val_every"), ({"top_k": 0}, "top_k"), ({"lr": 0.0}, "lr"),
    ({"prompt": "{label} {x}"}, "prompt"), ({"prompt": "{label} only", "prompt_tokens": "prefix"}, "prompt"),
    ({"prompt": "no placeholder"}, "prompt"), ({"mix": 2.0}, "mix"), ({"rank_loss": "hinge"}, "rank_loss"),
])
def test_mkt_bad_hyperparameters_are_one_line_errors(arguments, named):
    from mlfsic.methods.clip.mkt import MKT

    with pytest.raises(MlfsicError, match=named):
        MKT(seed=0, **arguments)


def test_weights_of_another_model_are_a_one_line_error(tmp_path):
    torch.manual_seed(0)
    wrong = tmp_path / "tiny.pt"
    torch.save({"visual.proj": torch.zeros(3, 3)}, wrong)
    with pytest.raises(MlfsicError, match="do not fit model 'ViT-B-16-quickgelu'") as error:
        clip_models.load_open_clip("ViT-B-16-quickgelu", wrong)
    assert "\n" not in str(error.value)
    with pytest.raises(MlfsicError, match="tiny-teacher weights .* do not fit the model"):
        clip_models.load_tiny_teacher(wrong)


@pytest.mark.parametrize("overrides,named", [
    (["dataset.backbone.model=ViT-Q-99"], "dataset.backbone.model=ViT-Q-99"),
    (["dataset.backbone.model=ViT-B-16-quickgelu"], "dataset.backbone.weights"),
    (["dataset.backbone.model=ViT-B-16-quickgelu", "dataset.backbone.weights=/no/such/openai.pt"], "/no/such/openai.pt"),
], ids=["unknown-model", "no-weights", "missing-weights-file"])
def test_bad_open_clip_backbone_is_a_one_line_error(overrides, named, tmp_path, capsys, monkeypatch):
    import mlfsic.harness.sweep.runner as runner
    from mlfsic.harness.cli import main

    monkeypatch.setattr(runner, "run_sweep", lambda *a, **k: pytest.fail("a sweep was started"))
    assert main(["run", f"results_dir={tmp_path / 'r'}", "+backbone=tiny-teacher", *overrides]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mlfsic: error: ") and err.count("\n") == 1 and named in err, err
    assert not (tmp_path / "r").exists()


def test_clip_methods_need_an_open_clip_backbone(tmp_path, capsys, monkeypatch):
    import mlfsic.harness.sweep.runner as runner
    from mlfsic.harness.cli import main
    from mlfsic.harness.config import compose_config
    from mlfsic.harness.sweep.spec import resolve_sweep

    monkeypatch.setattr(runner, "run_sweep", lambda *a, **k: pytest.fail("a sweep was started"))
    assert main(["run", f"results_dir={tmp_path / 'r'}", "method=[mkt]"]) == 2
    assert "needs an open_clip backbone" in capsys.readouterr().err
    assert main(["run", f"results_dir={tmp_path / 'r'}", "embeddings.encoder=clip"]) == 2
    assert "embeddings.encoder=clip" in capsys.readouterr().err
    default = resolve_sweep(compose_config([f"results_dir={tmp_path / 'r'}"]))
    assert "mkt" not in default.methods and "clip-zeroshot" not in default.methods and "protonet" in default.methods
    clip = resolve_sweep(compose_config([f"results_dir={tmp_path / 'r'}", "+backbone=tiny-teacher"]))
    assert {"mkt", "clip-zeroshot", "protonet"} <= set(clip.methods)
