"""The ``small_cnn`` backbone kind: a small CNN for the embedded 96 px coco-moji benchmark, and its training.

``SmallCNN``: four conv stages (32-64-128-128 channels, BN + ReLU) with a stride-2 stem, 96 -> 48 -> 24 ->
12 -> 6, so local = 6x6 -> (36, 128) and global = the average of that map (128). A linear head is used
only for training.

``train_small_cnn`` fits it with multi-label BCE on the base pool, which is how the ML-FSIC papers
pretrain their backbones on base classes (Alfassy et al. CVPR'19; Yan et al. AAAI'22), and scores the
frozen features on the disjoint val labels with ``protocol.metrics.prototype_map``.

Weights (``KIND.weights``): the pinned file of ``dataset.backbone.pinned_weights`` (coco-moji; its sha256
checked) when its record says it was trained on this dataset, split and settings; otherwise trained on
the base split and cached content-addressed under ``results/cache/backbones`` (``trained_small_cnn``).
``SmallCnnSettings`` holds every setting and its default. ``mlfsic backbone train`` (``cli/backbone.py``)
retrains a pinned file and says how close it came.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from mlfsic.harness.backbones.extractor import BackboneKind, Network, backbone_id
from mlfsic.harness.backbones.images import image_paths, read_images, to_tensor
from mlfsic.harness.backbones.weights import load_strict, pinned_record, pinned_weights, read_state_dict, save_state
from mlfsic.harness.errors import MlfsicError
from mlfsic.harness.io import file_lock, sha256_file, sha256_json, write_json_atomic
from mlfsic.harness.protocol.data import Dataset, split_pool
from mlfsic.harness.protocol.metrics import prototype_map


@dataclass(frozen=True)
class SmallCnnSettings:
    """The ``dataset.backbone`` keys of a small_cnn and their defaults (coco-moji's values), in one place.

    The training settings (``TRAINING_KEYS``) determine the weights; ``extract_batch_size`` only speeds up
    extraction. configs/dataset/coco-moji.yaml writes the training values out too, because the run id hashes
    the dataset config as written (a default filled in here would change it); tests/test_config_schema.py
    checks that it chooses exactly these values, the ones the pinned weights' record was trained with.
    """

    image_size: int = 96
    epochs: int = 8
    batch_size: int = 128
    lr: float = 0.002
    seed: int = 0
    extract_batch_size: int = 256

    TRAINING_KEYS = ("image_size", "epochs", "batch_size", "lr", "seed")

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> SmallCnnSettings:
        """The settings of a ``dataset.backbone`` mapping, unset keys at their defaults."""
        return cls(**{f.name: type(f.default)(config[f.name]) for f in fields(cls) if config.get(f.name) is not None})

    def training(self) -> dict[str, Any]:
        """``{"kind": "small_cnn", <training keys>}``: what a weights record's ``trained_on.backbone`` holds."""
        values = asdict(self)
        return {"kind": "small_cnn", **{key: values[key] for key in self.TRAINING_KEYS}}


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """Four-stage CNN for 96x96 RGB images.

    Shapes for a (B, 3, 96, 96) input: stem stride 2 -> (B, 32, 48, 48) -> pool -> stage 2 (64, 24, 24)
    -> pool -> stage 3 (128, 12, 12) -> pool -> stage 4 (128, 6, 6). ``forward_features`` returns
    global (B, 128) and local (B, 36, 128); ``forward`` returns base-label logits (B, n_labels).
    """

    feature_dim = 128

    def __init__(self, n_labels: int, channels: Sequence[int] = (32, 64, 128, 128)) -> None:
        super().__init__()
        c1, c2, c3, c4 = channels
        self.stages = nn.Sequential(
            _conv_bn_relu(3, c1, stride=2),
            nn.MaxPool2d(2),
            _conv_bn_relu(c1, c2),
            nn.MaxPool2d(2),
            _conv_bn_relu(c2, c3),
            _conv_bn_relu(c3, c3),
            nn.MaxPool2d(2),
            _conv_bn_relu(c3, c4),
            _conv_bn_relu(c4, c4),
        )
        self.head = nn.Linear(c4, n_labels)
        self.feature_dim = c4

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fmap = self.feature_map(x)  # (B, C, h, w)
        return fmap.mean(dim=(2, 3)), fmap.flatten(2).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.feature_map(x).mean(dim=(2, 3)))


def load_small_cnn(path: Path) -> SmallCNN:
    """A ``SmallCNN`` with the state dict ``train_small_cnn`` saved (head size read from the file)."""
    state = read_state_dict(path, "small_cnn")
    if "head.weight" not in state:
        raise MlfsicError(f"small_cnn weights {path} have no 'head.weight' entry")
    module = SmallCNN(n_labels=int(state["head.weight"].shape[0]))
    load_strict(module, state, path, "small_cnn")
    return module


# ----------------------------------------------------------------------------------------- training
AUGMENT_PAD = 8
DECODE_BLOCK = 256  # images decoded (and padded) at a time into the memory-mapped file of ``decoded_images``


def decoded_images(dataset: Dataset, image_ids: np.ndarray, image_size: int, path: Path, pad: int = 0) -> np.ndarray:
    """uint8 (n, S + 2 pad, S + 2 pad, 3): the images decoded (``read_images``) and reflect-padded by ``pad`` px,
    written ``DECODE_BLOCK`` images at a time into the .npy file ``path`` and returned memory-mapped (read-only),
    so the decoded split lives on disk, not in the heap. The values are those of ``np.pad`` of the whole stack
    (padding is per image)."""
    paths = image_paths(dataset, image_ids)  # checks every id before any decoding
    side = image_size + 2 * pad
    if not paths:
        return np.zeros((0, side, side, 3), dtype=np.uint8)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(len(paths), side, side, 3))
    for start in range(0, len(paths), DECODE_BLOCK):
        images = read_images(paths[start:start + DECODE_BLOCK], image_size)
        out[start:start + len(images)] = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect") \
            if pad else images
    out.flush()
    del out
    return np.load(path, mmap_mode="r")


def _augmented_batch(padded: np.ndarray, index: np.ndarray, size: int, generator: torch.Generator) -> np.ndarray:
    """Random crop (from images pre-padded by ``AUGMENT_PAD`` px, reflect) and random horizontal flip.

    Works on uint8 (n, S + 2 pad, S + 2 pad, 3) arrays with slicing, which is ~20x cheaper than the same
    on float tensors and keeps the 2-core training budget for the network.
    """
    n = len(index)
    offsets = torch.randint(0, 2 * AUGMENT_PAD + 1, (n, 2), generator=generator).tolist()
    flips = (torch.rand(n, generator=generator) < 0.5).tolist()
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for row, (source, (dy, dx), flip) in enumerate(zip(index.tolist(), offsets, flips)):
        crop = padded[source, dy:dy + size, dx:dx + size]
        out[row] = crop[:, ::-1] if flip else crop
    return out


def embed_array(module: SmallCNN, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Global features (n, D) of uint8 images (n, S, S, 3) with the module in eval mode."""
    module.eval()
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = to_tensor(images[start:start + batch_size]).contiguous(memory_format=torch.channels_last)
            chunks.append(module.forward_features(batch)[0].numpy())
    if not chunks:
        return np.zeros((0, module.feature_dim), dtype=np.float32)
    return np.concatenate(chunks).astype(np.float32)


def train_small_cnn(
    dataset: Dataset,
    image_ids: np.ndarray,
    targets: np.ndarray,
    val_ids: np.ndarray,
    val_targets: np.ndarray,
    out_path: Path,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    image_size: int,
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``SmallCNN`` on the base pool with multi-label BCE; save its state dict atomically.

    Adam with a cosine learning-rate decay over all steps and weight decay 1e-4; augmentation: random
    horizontal flip and a random crop after 8 px reflect padding. The base images are decoded once, into a
    memory-mapped file of a temporary directory (``tempfile``: ``TMPDIR``; 37.6 KB an image at 96 px), so the
    trainer's heap does not grow with the base split; each batch reads its rows from there (the same pixels as
    decoding into memory: the same weights). The val images, scored once at the end, are decoded into memory.
    Deterministic for a seed (same threads, same machine). Returns train loss per epoch, val mAP
    (``prototype_map``: nearest-prototype transfer to the disjoint val labels), timings and sizes.
    """
    started = time.perf_counter()
    targets = np.asarray(targets, dtype=np.float32)
    image_ids = np.asarray(image_ids)
    if targets.ndim != 2 or targets.shape[0] != len(image_ids):
        raise MlfsicError(f"train_small_cnn: targets shape {targets.shape} does not match {len(image_ids)} image ids")
    if len(image_ids) < 2:
        raise MlfsicError(f"train_small_cnn: the base pool has {len(image_ids)} image(s); BatchNorm training needs 2+")
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise MlfsicError(f"train_small_cnn: epochs ({epochs}), batch_size ({batch_size}) and lr ({lr}) must be positive")

    with tempfile.TemporaryDirectory(prefix="mlfsic-small-cnn-") as scratch:
        return _train(dataset, image_ids, targets, np.asarray(val_ids), val_targets, out_path, epochs, batch_size, lr,
                      seed, image_size, progress, started, Path(scratch))


def _train(dataset: Dataset, image_ids: np.ndarray, targets: np.ndarray, val_ids: np.ndarray, val_targets: np.ndarray,
           out_path: Path, epochs: int, batch_size: int, lr: float, seed: int, image_size: int, progress: bool,
           started: float, scratch: Path) -> dict[str, Any]:
    """``train_small_cnn`` after its checks, with the decoded images in files under ``scratch``."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    padded = decoded_images(dataset, image_ids, image_size, scratch / "base.npy", pad=AUGMENT_PAD)
    val_images = read_images(image_paths(dataset, val_ids), image_size)  # the smaller split, in memory as before
    load_seconds = time.perf_counter() - started

    model = SmallCNN(n_labels=targets.shape[1]).to(memory_format=torch.channels_last)  # ~1.4x faster on CPU
    optimiser = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    full, tail = divmod(len(image_ids), batch_size)
    steps_per_epoch = full + (1 if tail >= 2 else 0)  # a 1-image tail batch is skipped (BatchNorm)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=epochs * steps_per_epoch)
    target_tensor = torch.from_numpy(targets)
    losses: list[float] = []
    bar = tqdm(total=epochs * steps_per_epoch, desc="train small_cnn", disable=not progress)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(image_ids), generator=generator)
        total, seen = 0.0, 0
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size]
            if len(index) < 2:  # BatchNorm needs two samples
                continue
            batch = to_tensor(_augmented_batch(padded, index.numpy(), image_size, generator))
            batch = batch.contiguous(memory_format=torch.channels_last)
            loss = F.binary_cross_entropy_with_logits(model(batch), target_tensor[index])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            scheduler.step()
            loss_value = float(loss.detach())
            total += loss_value * len(index)
            seen += len(index)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}", refresh=False)
        losses.append(total / max(seen, 1))
    bar.close()
    train_seconds = time.perf_counter() - started - load_seconds

    val_map = prototype_map(embed_array(model, val_images), np.asarray(val_targets), seed) if len(val_images) else None
    model.eval()
    save_state(model.state_dict(), out_path)
    return {
        "kind": "small_cnn",
        "epochs": int(epochs),
        "n_train": int(len(image_ids)),
        "n_val": int(len(val_images)),
        "n_base_labels": int(targets.shape[1]),
        "image_size": int(image_size),
        "train_loss": [round(x, 6) for x in losses],
        "val_map": None if val_map is None else round(val_map, 6),
        "val_eval": "nearest-prototype, 2-fold over val images (cosine, macro AP)",
        "load_seconds": round(load_seconds, 3),
        "train_seconds": round(train_seconds, 3),
        "seconds": round(time.perf_counter() - started, 3),
    }


# ----------------------------------------------------------------------------------------- weights
def small_cnn_trained_on(dataset: Dataset, split: dict[str, list[str]], config: Mapping[str, Any]) -> dict[str, Any]:
    """What determines trained small_cnn weights: dataset annotations, base/val labels and training settings."""
    return {"dataset": dataset.name, "annotation_sha256": dataset.annotation_sha256, "base": list(split["base"]),
            "val": list(split["val"]), "backbone": SmallCnnSettings.of(config).training()}


def _differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Names of the entries (``backbone.<key>`` inside the settings) where two ``trained_on`` records differ."""
    names = [key for key in current if key != "backbone" and recorded.get(key) != current[key]]
    settings = recorded.get("backbone") if isinstance(recorded.get("backbone"), dict) else {}
    return names + [f"backbone.{key}" for key, value in current["backbone"].items() if settings.get(key) != value]


def trained_small_cnn(
    dataset: Dataset, split: dict[str, list[str]], config: Mapping[str, Any], cache_root: Path, progress: bool = True,
    retrain: bool = False,
) -> tuple[Path, dict[str, Any]]:
    """The small_cnn trained on the base split, cached under ``cache_root/backbones`` (``retrain``: train anyway).

    The cache key is the training input (``small_cnn_trained_on``: annotations, base/val labels, training
    settings) and the code that trains it (this file and ``images.py``), so a change of either trains anew;
    extraction-only keys (device, extract_batch_size) do not.
    """
    from mlfsic.harness.backbones import images

    settings = SmallCnnSettings.of(config)
    code = [sha256_file(file) for file in (images.__file__, __file__)]
    key = sha256_json({**small_cnn_trained_on(dataset, split, config), "code": code})
    path = cache_root / "backbones" / f"small_cnn-{key[:20]}.pt"
    report_path = path.with_suffix(".json")
    with file_lock(path.with_suffix(".lock")):  # two sweeps sharing a results dir train it once
        if not retrain and path.is_file() and report_path.is_file():
            return path, json.loads(report_path.read_text())
        base = split_pool(dataset, "base", split["base"])
        val = split_pool(dataset, "val", split["val"])
        report = train_small_cnn(
            dataset, base.image_ids, base.targets.astype(np.float32), val.image_ids, val.targets.astype(np.float32),
            out_path=path, epochs=settings.epochs, batch_size=settings.batch_size, lr=settings.lr, seed=settings.seed,
            image_size=settings.image_size, progress=progress,
        )
        write_json_atomic(report_path, report)
    return path, report


def _weights(dataset: Dataset, split: dict[str, list[str]], config: Mapping[str, Any], cache_root: Path,
             progress: bool = True) -> tuple[Path, dict[str, Any]]:
    """The pinned file when its record says it was trained on this dataset, split and settings (report
    ``pinned: true``); otherwise trained and cached (``pinned: false``, with ``pinned_unused`` saying why when
    a pinned file was not used)."""
    pinned = pinned_weights(config)
    unused = None
    if pinned is not None:
        record = pinned_record(pinned)
        differing = _differences(record["trained_on"], small_cnn_trained_on(dataset, split, config))
        if not differing:
            return pinned, {"kind": "small_cnn", "pinned": True, "weights_file": str(config["pinned_weights"]),
                            "weights_sha256": str(config["pinned_sha256"]), "training": record.get("training", {})}
        unused = f"{pinned.name} was trained with another {', '.join(differing)}; trained on this dataset instead"
    path, report = trained_small_cnn(dataset, split, config, cache_root, progress)
    report = {**report, "pinned": False, "weights_sha256": sha256_file(path)}
    return path, report if unused is None else {**report, "pinned_unused": unused}


def _weights_file(weights: Path | None) -> Path:
    if weights is None or not Path(weights).is_file():
        raise MlfsicError(f"small_cnn weights file not found: {weights} (train it with train_small_cnn)")
    return Path(weights)


def _identify(config: Mapping[str, Any], weights: Path | None) -> str:
    return backbone_id("small_cnn", sha256_file(_weights_file(weights)), SmallCnnSettings.of(config).image_size)


def _build(config: Mapping[str, Any], weights: Path | None) -> Network:
    settings = SmallCnnSettings.of(config)
    path = _weights_file(weights)
    return Network(module=load_small_cnn(path), weights=path, image_size=settings.image_size,
                   batch_size=settings.extract_batch_size)


def _config_weights(config: Mapping[str, Any]) -> Path | None:
    """The pinned file (its sha256 checked: a mismatch is an error), None when none is pinned."""
    return pinned_weights(config)


KIND = BackboneKind(name="small_cnn", weights=_weights, identify=_identify, build=_build,
                    config_weights=_config_weights, trains_on_base=True,
                    keys=(*(f.name for f in fields(SmallCnnSettings)), "pinned_weights", "pinned_sha256"))
