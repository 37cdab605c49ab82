"""The Method API (DESIGN 4.3): one class per method, registered under a name.

A method declares which settings it supports (``zero_shot`` / ``few_shot``: any K >= 1), whether it
needs local features, and implements::

    fit(base: BaseData) -> None            # train on the base split only
    predict(episode: Episode) -> ndarray   # scores (n_query, n_labels), higher = more likely

Constructor arguments are the method's hyperparameters; ``configs/methods/<name>.yaml`` holds the
values the harness uses, and ``seed`` is always passed. A fitted method is checkpointed by pickling
the whole object (``torch.save``), so methods keep their state in plain attributes and modules.

Setting names are ``0shot``, ``1shot``, ``5shot`` (any ``Kshot``): the same strings in configs,
records and file names.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

from mlfsic.harness.data import BaseData, Episode
from mlfsic.harness.errors import MlfsicError

_SETTING_PATTERN = re.compile(r"^(\d+)shot$")


def parse_setting(setting: str) -> int:
    """``"5shot"`` -> 5, ``"0shot"`` -> 0; anything else is an error naming the setting."""
    match = _SETTING_PATTERN.match(str(setting))
    if match is None:
        raise MlfsicError(f"setting {setting!r} is not of the form '<K>shot' (e.g. 0shot, 1shot, 5shot)")
    return int(match.group(1))


class Method(ABC):
    """Base class of every method. Subclasses set the class attributes and implement fit/predict."""

    name: ClassVar[str] = ""  # set by @register
    zero_shot: ClassVar[bool] = False  # supports 0shot (labels known only by name/embedding)
    few_shot: ClassVar[bool] = True  # supports Kshot for K >= 1
    needs_local_features: ClassVar[bool] = False  # wants (n, L, C) local features in BaseData/Episode
    transductive: ClassVar[bool] = False  # scores of one query may depend on the other queries

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    @classmethod
    def supports(cls, setting: str) -> bool:
        k_shot = parse_setting(setting)
        return cls.zero_shot if k_shot == 0 else cls.few_shot

    @classmethod
    def settings_label(cls) -> str:
        parts = (["0shot"] if cls.zero_shot else []) + (["Kshot"] if cls.few_shot else [])
        return ",".join(parts)

    @abstractmethod
    def fit(self, base: BaseData) -> None:
        """Train on the base split. Never sees an image carrying a non-base label."""

    @abstractmethod
    def predict(self, episode: Episode) -> np.ndarray:
        """Return scores of shape (episode.n_query, episode.n_labels); higher means more likely."""
