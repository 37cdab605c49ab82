"""Image input for the backbones (docs/architecture.md §7): files of a dataset's images, decoding and normalisation.

Images are decoded to RGB uint8 arrays of a fixed square size (resized bilinearly, never cropped: a crop
can cut off labelled objects at the border of a multi-label image), then turned into ImageNet-normalised
float32 (n, 3, H, W) tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mlfsic.harness.protocol.data import Dataset
from mlfsic.harness.errors import MlfsicError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
