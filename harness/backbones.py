"""Image backbones (docs/architecture.md §7): frozen feature extractors giving a global vector and a local grid per image.

Every backbone module implements ``forward_features(x) -> (global (B, D), local (B, L, C))``; the
local grid is the last convolutional feature map flattened row-major (L = h * w positions of C
channels), which is what the local-feature methods (WVGA, LCM) attend over.

``SmallCNN``
    For the embedded 96 px coco-moji benchmark: four conv stages (32-64-128-128 channels, BN + ReLU)
    with a stride-2 stem, 96 -> 48 -> 24 -> 12 -> 6, so local = 6x6 -> (36, 128) and global = the
    average of that map (128). A linear head is used only for training. ``train_small_cnn`` fits it on
    the base split with multi-label BCE, which is how the ML-FSIC papers pretrain their backbones on
    base classes (Alfassy et al. CVPR'19; Yan et al. AAAI'22).
``ResNet50Backbone``
    torchvision ResNet-50 (He et al., CVPR 2016) with ImageNet weights from a ``.pth`` file or the
    torch hub cache (never downloaded). Images are resized to 224x224 without cropping (a centre crop
    can cut off labelled objects at the border of a multi-label image) and ImageNet-normalised;
    global = average-pooled layer4 (2048), local = the 7x7 layer4 map -> (49, 2048).

``load_backbone(config, weights_path)`` returns a ``Backbone``: the module plus image loading and a
``backbone_id`` = sha256 of (kind, weights file sha256, image size), which keys the feature store, so
features are recomputed exactly when the weights or the input resolution change.
"""

from __future__ import annotations

import glob
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm import tqdm

from mlfsic.harness.data import Dataset
from mlfsic.harness.errors import MlfsicError
from mlfsic.harness.io import atomic_path, sha256_file, sha256_json

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
KINDS = ("small_cnn", "resnet50")


# ----------------------------------------------------------------------------------------- modules
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


class ResNet50Backbone(nn.Module):
    """torchvision ResNet-50 trunk; ``forward_features`` gives (B, 2048) and (B, 49, 2048) at 224 px."""

    feature_dim = 2048

    def __init__(self, weights_path: Path | None = None) -> None:
        super().__init__()
        from torchvision.models import resnet50

        self.net = resnet50(weights=None)
        if weights_path is not None:
            _load_strict(self.net, _read_state_dict(Path(weights_path), "resnet50"), Path(weights_path), "resnet50")

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        net = self.net
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        fmap = net.layer4(net.layer3(net.layer2(net.layer1(x))))  # (B, 2048, 7, 7)
        return fmap.mean(dim=(2, 3)), fmap.flatten(2).transpose(1, 2)


def find_resnet50_weights(weights_path: Path | None) -> Path:
    """The given ``.pth`` file, else ``torch.hub.get_dir()/checkpoints/resnet50-*.pth``; never downloads."""
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise MlfsicError(f"ResNet-50 weights file not found: {path}")
        return path
    pattern = str(Path(torch.hub.get_dir()) / "checkpoints" / "resnet50-*.pth")
    candidates = sorted(glob.glob(pattern))
    if not candidates:
        raise MlfsicError(
            f"no ResNet-50 weights: dataset.backbone.weights is not set and nothing matches {pattern} "
            "(put torchvision's resnet50-*.pth there or pass dataset.backbone.weights=/path/to/resnet50.pth; "
            "nothing is downloaded)"
        )
    return Path(candidates[0])


def _read_state_dict(path: Path, kind: str) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a bad file
        raise MlfsicError(f"cannot read {kind} weights {path}: {str(error).splitlines()[0]}") from None
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise MlfsicError(f"{kind} weights {path} do not hold a state dict")
    return dict(state)


def _load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], path: Path, kind: str) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0] if lines else "mismatch"
        raise MlfsicError(f"{kind} weights {path} do not fit the model: {detail[:200]}") from None


# ----------------------------------------------------------------------------------------- images
def read_image(path: Path, image_size: int) -> np.ndarray:
    """An RGB image as uint8 (image_size, image_size, 3), resized (bilinear) when its size differs."""
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
            if rgb.size != (image_size, image_size):
                rgb = rgb.resize((image_size, image_size), Image.Resampling.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise MlfsicError(f"cannot read image {path}: {error}") from None


def read_images(paths: Sequence[Path], image_size: int) -> np.ndarray:
    """uint8 (n, image_size, image_size, 3)."""
    out = np.empty((len(paths), image_size, image_size, 3), dtype=np.uint8)
    for row, path in enumerate(paths):
        out[row] = read_image(path, image_size)
    return out


def to_tensor(images: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """uint8 (n, H, W, 3) -> normalised float32 (n, 3, H, W)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - mean_t) / std_t


def image_paths(dataset: Dataset, image_ids: np.ndarray) -> list[Path]:
    """Files of ``image_ids``; an id not in the dataset is an error naming it."""
    file_of = dataset.file_name_of()
    paths = []
    for image_id in np.asarray(image_ids).tolist():
        if image_id not in file_of:
            raise MlfsicError(f"image id {image_id} is not in dataset {dataset.name!r}")
        paths.append(Path(dataset.image_root) / file_of[image_id])
    return paths


# ----------------------------------------------------------------------------------------- the Backbone
@dataclass
class Backbone:
    """A frozen feature extractor as the feature store uses it.

    ``module.forward_features`` maps a normalised (B, 3, S, S) batch to global (B, D) and local (B, L, C).
    """

    kind: str
    module: nn.Module
    image_size: int
    backbone_id: str
    global_dim: int
    local_shape: tuple[int, int]  # (L, C)
    batch_size: int = 64
    device: str = "cpu"

    def load_images(self, paths: Sequence[Path]) -> torch.Tensor:
        return to_tensor(read_images(paths, self.image_size))

    def embed(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Global float32 (B, D) and local float32 (B, L, C) for a normalised batch."""
        with torch.inference_mode():
            batch = images.to(self.device).contiguous(memory_format=torch.channels_last)
            global_f, local_f = self.module.forward_features(batch)
        return global_f.float().cpu().numpy(), local_f.float().cpu().numpy()


def backbone_id(kind: str, weights_sha256: str, image_size: int) -> str:
    return sha256_json({"kind": kind, "weights_sha256": weights_sha256, "image_size": int(image_size)})


def identify_backbone(config: Mapping[str, Any], weights_path: Path | None) -> str:
    """The ``backbone_id`` that ``load_backbone(config, weights_path)`` has, without building the network."""
    kind = str(config.get("kind"))
    if kind == "small_cnn":
        if weights_path is None or not Path(weights_path).is_file():
            raise MlfsicError(f"small_cnn weights file not found: {weights_path} (train it with train_small_cnn)")
        return backbone_id(kind, sha256_file(Path(weights_path)), int(config.get("image_size", 96)))
    if kind == "resnet50":
        return backbone_id(kind, sha256_file(find_resnet50_weights(weights_path)), int(config.get("image_size", 224)))
    raise MlfsicError(f"dataset.backbone.kind {kind!r} is not one of {', '.join(KINDS)}")


def load_backbone(config: Mapping[str, Any], weights_path: Path | None) -> Backbone:
    """Build the configured backbone (``config["kind"]``: small_cnn | resnet50) in eval mode.

    ``small_cnn`` needs ``weights_path`` (the state dict ``train_small_cnn`` saved); ``resnet50``
    takes ``weights_path`` or the torch hub cache. ``config["device"]`` (optional) picks the device,
    default CUDA when available.
    """
    kind = str(config.get("kind"))
    if kind not in KINDS:
        raise MlfsicError(f"dataset.backbone.kind {kind!r} is not one of {', '.join(KINDS)}")
    device = str(config.get("device") or ("cuda" if torch.cuda.is_available() else "cpu"))
    if kind == "small_cnn":
        image_size = int(config.get("image_size", 96))
        if weights_path is None or not Path(weights_path).is_file():
            raise MlfsicError(f"small_cnn weights file not found: {weights_path} (train it with train_small_cnn)")
        path = Path(weights_path)
        state = _read_state_dict(path, "small_cnn")
        if "head.weight" not in state:
            raise MlfsicError(f"small_cnn weights {path} have no 'head.weight' entry")
        module: nn.Module = SmallCNN(n_labels=int(state["head.weight"].shape[0]))
        _load_strict(module, state, path, "small_cnn")
        batch_size = int(config.get("extract_batch_size", 256))
    else:
        image_size = int(config.get("image_size", 224))
        path = find_resnet50_weights(weights_path)
        module = ResNet50Backbone()
        _load_strict(module.net, _read_state_dict(path, "resnet50"), path, "resnet50")
        batch_size = int(config.get("extract_batch_size", 32))
    module.eval().to(device).to(memory_format=torch.channels_last)  # faster convolutions on CPU
    with torch.inference_mode():
        probe_global, probe_local = module.forward_features(torch.zeros(1, 3, image_size, image_size, device=device))
    return Backbone(
        kind=kind,
        module=module,
        image_size=image_size,
        backbone_id=identify_backbone(config, path),
        global_dim=int(probe_global.shape[1]),
        local_shape=(int(probe_local.shape[1]), int(probe_local.shape[2])),
        batch_size=batch_size,
        device=device,
    )


# ----------------------------------------------------------------------------------------- training
AUGMENT_PAD = 8


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


def prototype_map(features: np.ndarray, targets: np.ndarray, seed: int) -> float | None:
    """Nearest-prototype mAP of frozen features on labels the network never trained on.

    The val labels are disjoint from the base labels, so the BCE head cannot score them. We measure
    what the few-shot methods rely on, transfer of the frozen features to unseen labels, with the
    simplest training-free few-shot classifier (Snell et al., "Prototypical Networks", NeurIPS 2017,
    multi-label form): the val images are split in two halves (seeded); a label's prototype is the
    mean L2-normalised feature of the images in one half that carry it; the other half's images are
    scored by cosine similarity to each prototype; macro AP (``sklearn.metrics.average_precision_score``)
    over labels with positives on both sides; the two directions are averaged. A linear probe would
    need its own hyperparameters and training time; prototypes need neither. None if no label qualifies.
    """
    from sklearn.metrics import average_precision_score

    n = len(features)
    if n < 2:
        return None
    normed = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    order = np.random.default_rng(seed).permutation(n)
    halves = (order[: n // 2], order[n // 2:])
    scores = []
    for support, query in (halves, halves[::-1]):
        y_support, y_query = targets[support] > 0, targets[query] > 0
        usable = y_support.any(axis=0) & y_query.any(axis=0)
        if not usable.any():
            continue
        counts = y_support[:, usable].sum(axis=0)
        prototypes = (y_support[:, usable].T.astype(np.float32) @ normed[support]) / counts[:, None]
        prototypes /= np.maximum(np.linalg.norm(prototypes, axis=1, keepdims=True), 1e-12)
        similarity = normed[query] @ prototypes.T
        scores.append(float(average_precision_score(y_query[:, usable], similarity, average="macro")))
    return float(np.mean(scores)) if scores else None


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
    image_size: int = 96,
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``SmallCNN`` on the base pool with multi-label BCE; save its state dict atomically.

    Adam with a cosine learning-rate decay over all steps and weight decay 1e-4; augmentation: random
    horizontal flip and a random crop after 8 px reflect padding. Images are decoded once into memory.
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

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    train_images = read_images(image_paths(dataset, image_ids), image_size)
    pad = ((0, 0), (AUGMENT_PAD, AUGMENT_PAD), (AUGMENT_PAD, AUGMENT_PAD), (0, 0))
    padded = np.pad(train_images, pad, mode="reflect")
    del train_images
    val_images = read_images(image_paths(dataset, np.asarray(val_ids)), image_size)
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
    with atomic_path(out_path) as tmp:
        torch.save(model.state_dict(), tmp)
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
