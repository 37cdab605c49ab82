"""The Method API: everything a method author touches, in one module (docs/architecture.md, "Methods").

    from mlfsic.methods.api import Deviation, Episode, Method, SplitData, register

A method is one class, registered under a name with ``@register("name")``. It declares which settings
it supports (``zero_shot`` / ``few_shot``: any K >= 1), whether it needs local features, and implements::

    fit(base: SplitData, val: SplitData | None) -> None   # train on base; val only for model selection
    predict(episode: Episode) -> ndarray                  # scores (n_query, n_labels), higher = more likely

``val`` holds the val split (its own labels and images) for model selection and early stopping; it is
None when the val split is the one being evaluated (``eval_split=val``). The evaluated (novel) split
never reaches ``fit``; the leakage check of every sweep proves it and records it in run.json.

Constructor arguments are the method's hyperparameters, with their defaults in the signature;
``configs/methods/<name>.yaml`` holds only the values a benchmark run uses that differ from those
defaults, and ``seed`` is always passed. A fitted method is checkpointed as data, never as a pickle
(``harness.sweep.checkpoint``: tensors, numpy arrays, numbers, strings, containers, nn.Modules, dataclasses,
``torch.Generator``), so methods keep their state in plain attributes and modules. A method may set
``fit_report`` (a small JSON-ready dict, e.g. the kept epoch and its val mAP): run.json records it.
The harness scores a chunk of episodes with ``predict_batch`` (default: ``predict`` per episode), so a
method that trains per episode can batch that training; ``predict_params`` names the hyperparameters
only prediction reads, which variants may change without a new fit.

Device: before ``fit`` and before ``predict``/``predict_batch`` the harness calls ``use_device(device)`` with
the torch device of the Ray task (``"cuda"`` when the task was given a GPU, else ``"cpu"``), stored as
``self.device`` (default ``torch.device("cpu")``). A method that computes there sets ``uses_device = True``
and moves its modules and batches to ``self.device`` itself; it keeps its random draws on the CPU (so the
CPU path draws the same numbers) and returns CPU numpy scores. A method that ignores the device (the
default, every plug-in written before it existed) keeps working on the CPU. Arithmetic stays float32: no
mixed precision. The device is not part of the checkpoint (``__getstate__`` drops it, as ``clip``) nor of
its key: checkpoints hold CPU tensors, so a fit made on a GPU loads on a CPU-only machine and vice versa.

Local grids of the base and val splits: a method that declares ``local_rows`` receives
``SplitData.local_features`` as ``LocalRows``: the rows stay in the memory-mapped feature store and are read when
indexed (``local[rows]`` gives those rows as a new float32 ndarray, exactly the values an in-memory copy holds),
so a fit's heap does not grow with the base split (a COCO-sized ResNet-50 grid is ~15 GB as float32). Any other
method gets the whole grid as an in-memory float32 ndarray, as before ``local_rows`` existed. Episodes always
carry in-memory float32 ndarrays (a chunk's support and query images are few).

Setting names are ``0shot``, ``1shot``, ``5shot`` (any ``Kshot``): the same strings in configs,
records and file names.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np
import torch

from mlfsic.harness.protocol.episodes import parse_setting


@dataclass(frozen=True)
class Deviation:
    """One way a method differs from its paper or its authors' released code, declared as data so that
    ``mlfsic methods --card NAME`` and the site's method cards show it without opening the code.

    ``what``: the difference (what the release or paper does, what mlfsic does); ``why``; ``effect``: its
    measured effect with the numbers (or "not measured" and why); ``split``: where it was measured (``val``;
    never the evaluated novel split), or "" when not measured.
    """

    what: str
    why: str
    effect: str
    split: str = ""


# Reads and checks that go over many rows of a ``LocalRows`` take about this many bytes of float32 rows at a time
# (``harness.sweep.evaluate.StoredLocalRows``, ``torch_utils.all_finite_rows``): never a grid-sized temporary.
LOCAL_ROWS_BLOCK_BYTES = 64 * 2**20


class LocalRows(Protocol):
    """The (n, L, C) local grids of a split, read from the feature store row by row (``SplitData.local_features``
    of a method with ``local_rows``). ``rows[index]`` (an int, a slice, an integer array or a boolean mask over
    the n images, optionally followed by indices of the other axes) returns a new float32 ndarray holding those
    rows in the order asked, as ``ndarray[index]`` would; ``np.asarray(rows)`` reads them all into memory (the
    copy ``local_rows`` exists to avoid: use it only where the whole grid is needed at once)."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def ndim(self) -> int: ...

    def __len__(self) -> int: ...

    def __getitem__(self, index: Any) -> np.ndarray: ...

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray: ...


@dataclass(frozen=True)
class SplitData:
    """What ``Method.fit`` receives of one label split (``split`` = "base" or "val").

    Shapes: n images, N labels of the split, D global feature size, L local positions, C local channels,
    E word-embedding size. An image is in a split only if all its labels are split labels.
    """

    split: str
    features: np.ndarray  # (n, D) float32, global features
    # (n, L, C) float32, or None if the method did not ask; ``LocalRows`` (read from the store when indexed) if
    # the method declares ``local_rows``
    local_features: np.ndarray | LocalRows | None
    targets: np.ndarray  # (n, N) float32 multi-hot
    label_names: tuple[str, ...]
    label_embeddings: np.ndarray  # (N, E) float32
    seed: int


@dataclass(frozen=True)
class Episode:
    """One evaluation episode as a method sees it. There is deliberately no query-target field.

    ``support_*`` arrays have zero rows in the zero-shot setting. ``seed`` is the episode's own seed
    (from ``numpy.random.SeedSequence``) for methods that train or sample per episode.
    """

    index: int
    seed: int
    k_shot: int
    label_names: tuple[str, ...]
    label_embeddings: np.ndarray  # (N, E) float32
    support_features: np.ndarray  # (n_s, D) float32
    support_local_features: np.ndarray | None  # (n_s, L, C) float32
    support_targets: np.ndarray  # (n_s, N) float32 multi-hot
    query_features: np.ndarray  # (n_q, D) float32
    query_local_features: np.ndarray | None  # (n_q, L, C) float32

    @property
    def n_labels(self) -> int:
        return len(self.label_names)

    @property
    def n_query(self) -> int:
        return int(self.query_features.shape[0])


class Method(ABC):
    """Base class of every method. Subclasses set the class attributes and implement fit/predict."""

    name: ClassVar[str] = ""  # set by @register
    zero_shot: ClassVar[bool] = False  # supports 0shot (labels known only by name/embedding)
    few_shot: ClassVar[bool] = True  # supports Kshot for K >= 1
    needs_local_features: ClassVar[bool] = False  # wants (n, L, C) local features in SplitData/Episode
    # Reads SplitData.local_features by rows: the harness hands fit ``LocalRows`` (rows read from the feature store
    # when indexed) instead of an in-memory float32 copy of the whole grid.
    local_rows: ClassVar[bool] = False
    transductive: ClassVar[bool] = False  # scores of one query may depend on the other queries
    needs_clip: ClassVar[bool] = False  # gets the sweep's open_clip model through ``use_clip`` (open_clip backbones)
    # Computes on ``self.device`` (the task's device, set by ``use_device``); False: on the CPU whatever the task
    # was given. run.json records the device each fit and chunk computed on from it.
    uses_device: ClassVar[bool] = False
    # The device the harness gave this method (``use_device``); the class default until it is called, and again
    # after a checkpoint is loaded (the device is never stored in a checkpoint).
    device: torch.device = torch.device("cpu")
    # Hyperparameters that only ``predict`` reads (an attribute of the same name): they are left out of the
    # checkpoint key, so variants that differ only in them share one fit; the harness sets them on the
    # loaded method. ``fit`` must not depend on them.
    predict_params: ClassVar[tuple[str, ...]] = ()
    # Modules (dotted names) holding more of the method's code than its class file: part of its code hash.
    code_modules: ClassVar[tuple[str, ...]] = ()
    # How it differs from its paper / released code (``Deviation``): printed by ``mlfsic methods --card``.
    deviations: ClassVar[tuple[Deviation, ...]] = ()

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.fit_report: dict[str, Any] = {}

    def use_clip(self, clip: Any) -> None:
        """Called before ``fit`` and before ``predict`` with the backbone's ``harness.backbones.open_clip.ClipModel``
        (image and text towers, tokenizer) when ``needs_clip``; it is not part of the checkpoint."""
        self.clip = clip

    def use_device(self, device: torch.device | str) -> None:
        """Called before ``fit`` and before ``predict``/``predict_batch`` with the torch device of the task
        (``"cuda"`` or ``"cpu"``), stored as ``self.device``; it is not part of the checkpoint. Only a method with
        ``uses_device`` computes there; any other keeps computing on the CPU."""
        self.device = torch.device(device)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("clip", None)  # the model comes from the backbone, never from a checkpoint
        state.pop("device", None)  # the task's device, never the checkpoint's: a fit made on a GPU loads on a CPU
        return state

    @classmethod
    def supports(cls, setting: str) -> bool:
        k_shot = parse_setting(setting)
        return cls.zero_shot if k_shot == 0 else cls.few_shot

    @classmethod
    def settings_label(cls) -> str:
        parts = (["0shot"] if cls.zero_shot else []) + (["Kshot"] if cls.few_shot else [])
        return ",".join(parts)

    @abstractmethod
    def fit(self, base: SplitData, val: SplitData | None) -> None:
        """Train on the base split; ``val`` (or None) is for model selection and early stopping only."""

    @abstractmethod
    def predict(self, episode: Episode) -> np.ndarray:
        """Return scores of shape (episode.n_query, episode.n_labels); higher means more likely."""

    def predict_batch(self, episodes: list[Episode]) -> list[np.ndarray]:
        """Scores of several independent episodes (a chunk), one array per episode, as ``predict`` gives
        them. Override to batch per-episode training across episodes; the result of an episode must not
        depend on the other episodes of the batch (within float tolerance). A method may then set
        ``predict_report`` (a small JSON-ready dict about the chunk, e.g. adaptation steps): run.json's
        ``predict_reports`` aggregates it per cell."""
        return [self.predict(episode) for episode in episodes]


def register(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: ``@register("protonet")`` makes the class available under that name.

    The registry itself (built-ins and the ``mlfsic.methods`` entry points) is ``mlfsic.methods.registry``.
    """
    from mlfsic.methods import registry

    return registry.register(name)


def hyperparameters(cls: type[Method]) -> dict[str, inspect.Parameter]:
    """The named constructor arguments of a method class but ``seed`` (the harness passes each method its seed):
    the hyperparameters a config may set. The one place the harness reads a method's signature."""
    parameters = inspect.signature(cls.__init__).parameters
    return {name: parameter for name, parameter in parameters.items() if name not in ("self", "seed")
            and parameter.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}


def constructor_defaults(cls: type[Method]) -> dict[str, Any]:
    """The hyperparameters that have a default, with it (a method's configuration before its yaml)."""
    return {name: parameter.default for name, parameter in hyperparameters(cls).items()
            if parameter.default is not inspect.Parameter.empty}
