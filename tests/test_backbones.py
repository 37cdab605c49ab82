"""Backbones: feature shapes, ResNet-50 against torchvision, weight lookup, image errors, SmallCNN training,
the pinned coco-moji weights (hash, features, use without training)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mlfsic.harness.backbones import kinds
from mlfsic.harness.backbones import weights as backbones
from mlfsic.harness.backbones.resnet50 import ResNet50Backbone
from mlfsic.harness.backbones.small_cnn import SmallCNN, embed_array, train_small_cnn
from mlfsic.harness.protocol.metrics import prototype_map
from mlfsic.harness.backbones.kinds import load_backbone
from mlfsic.harness.backbones.images import image_paths, read_image, read_images
from mlfsic.harness.protocol.data import Dataset
from mlfsic.harness.errors import MlfsicError


def make_dataset(root: Path, n: int, n_labels: int = 6, size: int = 96, seed: int = 0,
                 pools: tuple[tuple[int, np.ndarray], ...] = ()) -> Dataset:
    """PNG scenes: label j draws a square of colour j, so labels are visible in the pixels.

    ``pools`` ((count, label subset), ...) draws the first ``count`` images from one subset, the next
    from the next subset, and the rest from all labels (to build disjoint base / val pools).
    """
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, (n_labels, 3))
    root.mkdir(parents=True, exist_ok=True)
    targets = np.zeros((n, n_labels), dtype=bool)
    files = []
    label_pool_of = [labels for count, labels in pools for _ in range(count)]
    for i in range(n):
        pixels = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
        allowed = label_pool_of[i] if i < len(label_pool_of) else np.arange(n_labels)
        for label in rng.choice(allowed, size=int(rng.integers(1, 3)), replace=False):
            y, x = rng.integers(0, size - size // 4, 2)
            pixels[y:y + size // 4, x:x + size // 4] = colours[label]
            targets[i, label] = True
        files.append(f"img_{i:04d}.png")
        Image.fromarray(pixels).save(root / files[-1])
    return Dataset("tiny", root, np.arange(100, 100 + n, dtype=np.int64), tuple(files),
                   tuple(f"label{j}" for j in range(n_labels)), targets, "ann-sha")


def test_small_cnn_shapes_and_pooling():
    model = SmallCNN(n_labels=5).eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        global_f, local_f = model.forward_features(x)
        logits = model(x)
    assert global_f.shape == (2, 128) and local_f.shape == (2, 36, 128) and logits.shape == (2, 5)
    torch.testing.assert_close(local_f.mean(dim=1), global_f)  # global = mean of the local grid


def test_resnet50_matches_torchvision_and_weight_lookup(tmp_path, monkeypatch):
    from torchvision.models import resnet50

    torch.manual_seed(0)
    reference = resnet50(weights=None).eval()
    weights = tmp_path / "resnet50-random.pth"
    torch.save(reference.state_dict(), weights)

    backbone = load_backbone({"kind": "resnet50", "image_size": 224, "device": "cpu"}, weights)
    assert backbone.global_dim == 2048 and backbone.local_shape == (49, 2048)
    x = torch.randn(2, 3, 224, 224)
    global_f, local_f = backbone.embed(x)
    reference.fc = torch.nn.Identity()  # torchvision's own pooled layer4 output
    with torch.no_grad():
        expected = reference(x).numpy()
    np.testing.assert_allclose(global_f, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(local_f.mean(axis=1), global_f, rtol=1e-4, atol=1e-5)

    # No path and an empty hub cache: an error saying where it looked, never a download.
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    with pytest.raises(MlfsicError, match=r"hub.*checkpoints.*resnet50-\*\.pth"):
        load_backbone({"kind": "resnet50"}, None)
    # ... and found in the hub cache when it is there, with the same id as by path.
    (hub / "checkpoints").mkdir(parents=True)
    (hub / "checkpoints" / "resnet50-0676ba61.pth").write_bytes(weights.read_bytes())
    assert load_backbone({"kind": "resnet50", "image_size": 224}, None).backbone_id == backbone.backbone_id
    with pytest.raises(MlfsicError, match="not found"):
        load_backbone({"kind": "resnet50"}, tmp_path / "missing.pth")


def test_resnet50_bad_weights_file(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, bad)
    with pytest.raises(MlfsicError, match="bad.pth"):
        backbones.load_strict(ResNet50Backbone().net, backbones.read_state_dict(bad, "resnet50"), bad, "resnet50")
    with pytest.raises(MlfsicError, match="bad.pth"):
        load_backbone({"kind": "resnet50"}, bad)


def test_backbone_id_keys_kind_weights_and_size(tmp_path):
    weights_a, weights_b = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.manual_seed(0)
    torch.save(SmallCNN(3).state_dict(), weights_a)
    torch.save(SmallCNN(3).state_dict(), weights_b)
    config = {"kind": "small_cnn", "image_size": 96, "device": "cpu"}
    first = load_backbone(config, weights_a).backbone_id
    assert load_backbone(config, weights_a).backbone_id == first
    assert load_backbone(config, weights_b).backbone_id != first
    assert load_backbone({**config, "image_size": 64}, weights_a).backbone_id != first
    with pytest.raises(MlfsicError, match="not one of"):
        load_backbone({"kind": "vgg"}, weights_a)
    with pytest.raises(MlfsicError, match="small_cnn weights file not found"):
        load_backbone(config, tmp_path / "none.pt")


def test_read_image_errors_name_the_file(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(MlfsicError, match="broken.png"):
        read_image(broken, 96)
    with pytest.raises(MlfsicError, match="absent.png"):
        read_image(tmp_path / "absent.png", 96)
    grey = tmp_path / "grey.png"
    Image.new("L", (40, 30), 128).save(grey)
    assert read_image(grey, 96).shape == (96, 96, 3)  # RGB, resized


def test_prototype_map_reference_cases():
    rng = np.random.default_rng(0)
    targets = rng.random((60, 4)) < 0.3
    targets[np.arange(60), rng.integers(0, 4, 60)] = True
    one_label = np.zeros((60, 4), dtype=bool)
    one_label[np.arange(60), np.arange(60) % 4] = True
    # Features that are the labels themselves separate single-label images perfectly.
    assert prototype_map(one_label.astype(np.float32), one_label, seed=0) == pytest.approx(1.0)
    noise = prototype_map(rng.normal(size=(60, 16)).astype(np.float32), targets, seed=0)
    assert noise is not None and 0.0 < noise < 0.8
    assert prototype_map(np.zeros((1, 4), np.float32), targets[:1], seed=0) is None


def test_train_small_cnn_deterministic_and_loadable(tmp_path):
    dataset = make_dataset(tmp_path / "images", 48)
    base_rows, val_rows = np.arange(32), np.arange(32, 48)
    kwargs = dict(epochs=2, batch_size=16, lr=0.003, seed=3, image_size=96, progress=False)
    reports = []
    for name in ("a.pt", "b.pt"):
        reports.append(train_small_cnn(
            dataset, dataset.image_ids[base_rows], dataset.targets[base_rows][:, :4].astype(np.float32),
            dataset.image_ids[val_rows], dataset.targets[val_rows][:, 4:].astype(np.float32),
            out_path=tmp_path / name, **kwargs,
        ))
    first, second = reports
    assert first["train_loss"] == second["train_loss"] and len(first["train_loss"]) == 2
    assert first["val_map"] == second["val_map"] and 0.0 <= first["val_map"] <= 1.0
    assert first["n_train"] == 32 and first["n_val"] == 16 and first["seconds"] > 0
    state_a = torch.load(tmp_path / "a.pt", weights_only=True)
    state_b = torch.load(tmp_path / "b.pt", weights_only=True)
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()  # same weights, same sha256
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left no temp file

    backbone = load_backbone({"kind": "small_cnn", "image_size": 96, "device": "cpu"}, tmp_path / "a.pt")
    assert backbone.global_dim == 128 and backbone.local_shape == (36, 128)
    global_f, local_f = backbone.embed(backbone.load_images([dataset.image_root / dataset.file_names[0]]))
    assert global_f.shape == (1, 128) and local_f.shape == (1, 36, 128) and np.isfinite(global_f).all()


def test_train_small_cnn_rejects_bad_input(tmp_path):
    dataset = make_dataset(tmp_path / "images", 4)
    with pytest.raises(MlfsicError, match="targets shape"):
        train_small_cnn(dataset, dataset.image_ids, np.zeros((3, 2), np.float32), dataset.image_ids[:0],
                        np.zeros((0, 1), np.float32), tmp_path / "w.pt", epochs=1, batch_size=2, lr=0.01, seed=0,
                        image_size=96, progress=False)
    with pytest.raises(MlfsicError, match="image id 999"):
        train_small_cnn(dataset, np.array([100, 999]), np.zeros((2, 2), np.float32), dataset.image_ids[:0],
                        np.zeros((0, 1), np.float32), tmp_path / "w.pt", epochs=1, batch_size=2, lr=0.01, seed=0,
                        image_size=96, progress=False)
    with pytest.raises(MlfsicError, match="needs 2"):
        train_small_cnn(dataset, dataset.image_ids[:1], np.zeros((1, 2), np.float32), dataset.image_ids[:0],
                        np.zeros((0, 1), np.float32), tmp_path / "w.pt", epochs=1, batch_size=2, lr=0.01, seed=0,
                        image_size=96, progress=False)
    (dataset.image_root / dataset.file_names[1]).unlink()
    with pytest.raises(MlfsicError, match=dataset.file_names[1]):
        train_small_cnn(dataset, dataset.image_ids, np.zeros((4, 2), np.float32), dataset.image_ids[:0],
                        np.zeros((0, 1), np.float32), tmp_path / "w.pt", epochs=1, batch_size=2, lr=0.01, seed=0,
                        image_size=96, progress=False)
    assert tuple(kinds.KINDS) == ("small_cnn", "resnet50", "open_clip", "timm")


@pytest.mark.slow
def test_small_cnn_default_size_budget(tmp_path):
    """The coco-moji default: 6000 base images at 96 px, 8 epochs, must train in <= 4 minutes on 2 cores
    and give features that transfer to the disjoint val labels far better than a random network."""
    n_base, n_val = 6000, 1500
    base_labels, val_labels = np.arange(28), np.arange(28, 40)
    dataset = make_dataset(tmp_path / "images", n_base + n_val, n_labels=40,
                           pools=((n_base, base_labels), (n_val, val_labels)))
    base_rows, val_rows = np.arange(n_base), np.arange(n_base, n_base + n_val)
    report = train_small_cnn(
        dataset, dataset.image_ids[base_rows], dataset.targets[base_rows][:, base_labels],
        dataset.image_ids[val_rows], dataset.targets[val_rows][:, val_labels], tmp_path / "cnn.pt",
        epochs=8, batch_size=128, lr=0.002, seed=0, image_size=96, progress=False,
    )
    torch.manual_seed(0)
    val_images = read_images(image_paths(dataset, dataset.image_ids[val_rows]), 96)
    random_map = prototype_map(embed_array(SmallCNN(28), val_images), dataset.targets[val_rows][:, val_labels], 0)
    print(f"small_cnn: {report['n_train']} images x 8 epochs in {report['seconds']:.0f}s, "
          f"val mAP {report['val_map']:.3f} (random init {random_map:.3f})")
    assert report["seconds"] <= 240
    assert report["val_map"] > random_map + 0.1


# ----------------------------------------------------------------------------------------- pinned coco-moji weights
def coco_moji_backbone() -> dict:
    """The backbone block of configs/dataset/coco-moji.yaml (plain yaml: no Hydra needed for these keys)."""
    import yaml

    from mlfsic.harness.config import config_dir

    return yaml.safe_load((config_dir() / "dataset" / "coco-moji.yaml").read_text())["backbone"]


def synthetic_batch() -> np.ndarray:
    """Four fixed 96 px scenes: dark noise with coloured squares, uint8 (4, 96, 96, 3)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 60, (4, 96, 96, 3)).astype(np.uint8)
    for image in images:
        for _ in range(3):
            y, x = rng.integers(0, 72, 2)
            image[y:y + 24, x:x + 24] = rng.integers(0, 256, 3)
    return images


def checksums(global_f: np.ndarray, local_f: np.ndarray) -> np.ndarray:
    """Per image: sum of the global vector, its channel-weighted sum, and the position-weighted sum of the local grid
    (the weights catch permuted channels or positions, which a plain sum would not)."""
    channel_weights = np.arange(1, global_f.shape[1] + 1) / global_f.shape[1]
    position_weights = np.arange(1, local_f.shape[1] + 1) / local_f.shape[1]
    return np.stack([global_f.sum(axis=1), global_f @ channel_weights, local_f.sum(axis=2) @ position_weights], axis=1)


# Features of the shipped weights on ``synthetic_batch()`` (computed on this project's CPU machine): per image
# ``checksums`` and the three largest global values.
EXPECTED_CHECKSUMS = [
    [60.178993, 28.709765, 1098.924694],
    [60.245487, 28.651508, 1119.585458],
    [56.177376, 26.295785, 1086.130372],
    [61.296082, 29.550355, 1106.248987],
]
EXPECTED_TOP3 = [
    [3.682387, 3.798999, 4.628647],
    [4.106009, 4.162429, 5.266071],
    [3.349346, 3.450456, 4.257119],
    [3.734491, 4.163727, 4.755607],
]


def test_shipped_weights_match_the_configured_hash():
    from mlfsic.harness.io import sha256_file

    config = coco_moji_backbone()
    path = backbones.package_file(config["pinned_weights"])
    assert path.is_file() and path.with_suffix(".json").is_file()
    assert sha256_file(path) == config["pinned_sha256"]
    assert path.name == f"small_cnn-{config['pinned_sha256'][:12]}.pt"  # named by its content
    assert backbones.pinned_weights(config) == path
    assert 100_000 < path.stat().st_size < 4_000_000


def test_shipped_weights_give_the_stored_features():
    from mlfsic.harness.backbones.images import to_tensor

    config = coco_moji_backbone()
    backbone = load_backbone({**config, "device": "cpu"}, backbones.pinned_weights(config))
    global_f, local_f = backbone.embed(to_tensor(synthetic_batch()))
    assert global_f.shape == (4, 128) and local_f.shape == (4, 36, 128)
    np.testing.assert_allclose(checksums(global_f, local_f), np.array(EXPECTED_CHECKSUMS), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.sort(global_f, axis=1)[:, -3:], np.array(EXPECTED_TOP3), rtol=0, atol=1e-4)


def test_pinned_hash_mismatch_is_one_line_naming_file_and_both_hashes(tmp_path):
    config = coco_moji_backbone()
    wrong = "0" * 64
    with pytest.raises(MlfsicError) as error:
        backbones.pinned_weights({**config, "pinned_sha256": wrong})
    message = str(error.value)
    assert "\n" not in message and Path(config["pinned_weights"]).name in message
    assert wrong in message and config["pinned_sha256"] in message
    with pytest.raises(MlfsicError, match="pinned backbone weights not found"):
        backbones.pinned_weights({**config, "pinned_weights": str(tmp_path / "absent.pt")})


def _pinned_dataset(record: dict, annotation_sha256: str | None = None) -> tuple[Dataset, dict]:
    trained_on = record["trained_on"]
    dataset = Dataset(trained_on["dataset"], Path("/nonexistent"), np.zeros(0, np.int64), (), (),
                      np.zeros((0, 0), bool), annotation_sha256 or trained_on["annotation_sha256"])
    return dataset, {"base": list(trained_on["base"]), "val": list(trained_on["val"]), "test": []}


def test_backbone_weights_uses_the_pinned_file_without_training(tmp_path, monkeypatch):
    from mlfsic.harness.backbones import small_cnn as backbone_training

    def no_training(*args, **kwargs):
        raise AssertionError("trained although pinned weights fit")

    monkeypatch.setattr(backbone_training, "train_small_cnn", no_training)
    config = coco_moji_backbone()
    pinned = backbones.pinned_weights(config)
    dataset, split = _pinned_dataset(backbones.pinned_record(pinned))
    path, report = kinds.backbone_weights(dataset, split, config, tmp_path, progress=False)
    assert path == pinned and not any(tmp_path.iterdir())
    assert report["pinned"] is True and report["weights_sha256"] == config["pinned_sha256"]
    assert report["weights_file"] == config["pinned_weights"] and report["training"]["val_map"] > 0

    # Another dataset (or other settings): trained and cached as before, and the report says why.
    trained = tmp_path / "trained.pt"
    trained.write_bytes(b"weights")
    monkeypatch.setattr(backbone_training, "trained_small_cnn", lambda *args, **kwargs: (trained, {"kind": "small_cnn"}))
    other, split = _pinned_dataset(backbones.pinned_record(pinned), annotation_sha256="other")
    path, report = kinds.backbone_weights(other, split, {**config, "epochs": 1}, tmp_path, progress=False)
    assert path == trained and report["pinned"] is False
    assert "annotation_sha256" in report["pinned_unused"] and "backbone.epochs" in report["pinned_unused"]


def test_train_command_retrains_into_the_cache_and_compares(tmp_path, capsys):
    """`mlfsic backbone train` on a tiny coco-moji: trains into the cache, compares with the pinned file,
    writes out= as small_cnn-<sha[:12]>.pt with its record, and leaves the shipped file alone."""
    from mlfsic.harness.cli.backbone import train_command
    from mlfsic.harness.io import sha256_file

    config = coco_moji_backbone()
    shipped = backbones.pinned_weights(config)
    assert train_command(["dataset=coco-moji", f"results_dir={tmp_path}", "dataset.generate.n_base=60",
                          "dataset.generate.n_val=30", "dataset.generate.n_test=30", "dataset.backbone.epochs=1",
                          f"out={tmp_path / 'out'}"]) == 0
    printed = capsys.readouterr().out
    cached = list((tmp_path / "cache" / "backbones").glob("small_cnn-*.pt"))
    assert len(cached) == 1
    sha = sha256_file(cached[0])
    assert (tmp_path / "out" / f"small_cnn-{sha[:12]}.pt").read_bytes() == cached[0].read_bytes()
    record = backbones.pinned_record(tmp_path / "out" / f"small_cnn-{sha[:12]}.pt")
    assert record["trained_on"]["backbone"]["epochs"] == 1 and "val_map" in record["training"]
    assert "same sha256: no" in printed and "max |feature difference| on 60 base images" in printed
    assert "val mAP (nearest-prototype): retrained" in printed
    assert sha256_file(shipped) == config["pinned_sha256"]
    with pytest.raises(MlfsicError, match="only a small_cnn"):
        train_command(["dataset=coco-moji", f"results_dir={tmp_path}", "dataset.backbone.kind=resnet50"])
