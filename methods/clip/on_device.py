"""The sweep's open_clip model (``Method.use_clip``) on a method's device (``Method.use_device``).

The harness hands every task of a worker one CPU ``harness.backbones.open_clip.ClipModel``. A method that
computes elsewhere (mkt, clip-zeroshot) takes ``clip_on(clip, device)``: the model itself on the CPU (no copy, so
the CPU path is unchanged), else one copy of the open_clip model moved to ``device``, made once per process and
device and kept while the shared model lives; the shared model stays on the CPU for the worker's other tasks.
The helpers live here, not on ``ClipModel``, because that class is part of the open_clip backbone's feature
identity (``extractor.preprocessing_identity``): moving text to a device must not re-key stored features.
"""

from __future__ import annotations

import copy
import dataclasses
import weakref
from collections.abc import Sequence

import torch
from torch import nn

from mlfsic.harness.backbones.open_clip import ClipModel

# shared model -> {device: its copy there}; an entry goes with its model
_COPIES: weakref.WeakKeyDictionary[nn.Module, dict[str, ClipModel]] = weakref.WeakKeyDictionary()


def model_device(clip: ClipModel) -> torch.device:
    return next(clip.model.parameters()).device


def clip_on(clip: ClipModel, device: torch.device | str) -> ClipModel:
    """``clip`` on ``device``: itself where it is already there, else its copy there (made once, then kept)."""
    device, here = torch.device(device), model_device(clip)
    if device.type == here.type and device.index in (None, here.index):
        return clip
    copies = _COPIES.setdefault(clip.model, {})
    if str(device) not in copies:
        copies[str(device)] = dataclasses.replace(clip, model=copy.deepcopy(clip.model).to(device))
    return copies[str(device)]


def tokenize(clip: ClipModel, texts: Sequence[str]) -> torch.Tensor:
    """Token ids (B, context) of ``texts`` on the model's device."""
    return clip.tokenizer(list(texts)).to(model_device(clip))


def encode_text(clip: ClipModel, texts: Sequence[str]) -> torch.Tensor:
    """Projected, L2-normalised text embeddings (B, E) on the model's device, no gradient (``ClipModel.encode_text``
    with the tokens moved there)."""
    with torch.inference_mode():
        return nn.functional.normalize(clip.model.encode_text(tokenize(clip, texts)).float(), dim=-1)
