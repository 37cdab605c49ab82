"""Weight files of backbones (docs/architecture.md §7): pinned files shipped in the package, state dicts.

A pinned file lives inside the installed ``mlfsic`` package, is named by its content hash and is checked
against ``dataset.backbone.pinned_sha256`` (``pinned_weights``), so every machine benchmarks on the same
features; beside it, ``<stem>.json`` records what it was trained on and the training report
(``pinned_record``). State dicts are read with ``torch.load(weights_only=True)`` (no code runs) and saved
byte-reproducibly (``save_state``). This module imports nothing of its siblings.
"""

from __future__ import annotations

import importlib.resources
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mlfsic.harness.errors import MlfsicError
from mlfsic.harness.io import atomic_path, sha256_file


def package_file(relative: str) -> Path:
    """A file of the installed ``mlfsic`` package from its package-relative path (``datasets/coco_moji/...``).

    The first part names the subpackage (``datasets`` -> ``mlfsic.datasets``), so the path resolves the
    same in a checkout, an editable install and a wheel. An absolute path is returned as it is.
    """
    path = Path(relative).expanduser()
    if path.is_absolute():
        return path
    top, *rest = path.parts
    if not rest:
        raise MlfsicError(f"dataset.backbone.pinned_weights {relative!r} is not a path inside the mlfsic package "
                          "(e.g. datasets/coco_moji/weights/<file>.pt)")
    try:
        root = importlib.resources.files(f"mlfsic.{top}")
    except ModuleNotFoundError:
        raise MlfsicError(f"dataset.backbone.pinned_weights {relative!r}: mlfsic has no subpackage {top!r}") from None
    return Path(str(root)).joinpath(*rest)


def pinned_weights(config: Mapping[str, Any]) -> Path | None:
    """The pinned weights file of a backbone config, checked against its sha256; None when none is pinned."""
    relative = config.get("pinned_weights")
    if not relative:
        return None
    return checked_pinned_file(package_file(str(relative)), config, f"dataset.backbone.pinned_weights={relative}")


def checked_pinned_file(path: Path, config: Mapping[str, Any], named: str) -> Path:
    """``path`` when it exists and its sha256 is ``config["pinned_sha256"]``, else a one-line error (``named``:
    the setting that named the file)."""
    expected = str(config.get("pinned_sha256") or "")
    if not path.is_file():
        raise MlfsicError(f"pinned backbone weights not found: {path} ({named})")
    actual = sha256_file(path)
    if actual != expected:
        raise MlfsicError(f"pinned backbone weights {path}: sha256 {actual} does not match "
                          f"dataset.backbone.pinned_sha256 {expected or '(not set)'}")
    return path


def pinned_record(weights: Path) -> dict[str, Any]:
    """The ``<stem>.json`` beside pinned weights: ``trained_on`` (dataset, annotation sha256, split, settings)
    and ``training`` (the training report)."""
    path = weights.with_suffix(".json")
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise MlfsicError(f"cannot read the record of pinned backbone weights {path}: {error}") from None
    if not isinstance(record, dict) or not isinstance(record.get("trained_on"), dict):
        raise MlfsicError(f"record of pinned backbone weights {path} has no 'trained_on' mapping")
    return record


def read_state_dict(path: Path, kind: str) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a bad file
        reason = (str(error).splitlines() or [type(error).__name__])[0]  # an empty file: an empty message
        raise MlfsicError(f"cannot read {kind} weights {path}: {reason}") from None
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise MlfsicError(f"{kind} weights {path} do not hold a state dict")
    return dict(state)


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], path: Path, kind: str) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0] if lines else "mismatch"
        raise MlfsicError(f"{kind} weights {path} do not fit the model: {detail[:200]}") from None


def save_state(state: dict[str, torch.Tensor], path: Path) -> None:
    """Save trained parameters atomically, through a file object: the archive's inner folder is then always
    "archive" (a path would put the random temp file name there), so equal weights give equal bytes and the
    same sha256. Used for the SmallCNN and the tiny teacher."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        torch.save(state, handle)
