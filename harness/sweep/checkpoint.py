"""Checkpoints of fitted methods as data, never code (docs/architecture.md §4.3, §4.2 ``results/cache/checkpoints``).

A checkpoint is one ``torch.save`` file that a bare ``torch.load(path, weights_only=True)`` reads: a tree of
tensors, str/int/float/bool/None, lists and str-keyed dicts only, so loading it runs no code of whoever wrote
it (anyone who can write into a shared ``results_dir``). Its top level is::

    {"format": "mlfsic-checkpoint", "version": FORMAT_VERSION,
     "header": "<JSON: method, class, hyperparameters, config/fit hash (code included), seed, fit_s, ...>",
     "state": <the fitted method's object graph, encoded>}

Beside it, ``<name>.json`` (written last: its presence means the checkpoint is complete) holds the header
plus the checkpoint's size and sha256, checked before the file is opened.

The object graph is encoded node by node; every node that is not a plain value is a dict tagged ``"__t__"``:

    tensor      {"data": tensor, "requires_grad", "id"}        (``nn.Parameter``: kind "parameter")
    ndarray     {"bytes": uint8 tensor, "dtype": "<f4", "shape"}  numpy arrays and scalars ("npscalar")
    list/tuple/set/frozenset/dict/odict   their items (dict: "keys" and "values", keys of any encodable kind)
    dtype/device/size/np_dtype/generator  torch dtypes, devices, sizes, numpy dtypes, torch.Generator state
    object      {"class": "module:qualname", "state": {attr: node}}   via ``__getstate__``
    ref         {"id"}: the same object again (shared modules, tied weights, cycles)

Decoding builds an ``object`` only if its class is importable from an allowed module (``mlfsic.``,
``torch.``, ``open_clip.``, or the module of a registered method) AND is an ``nn.Module`` subclass, a
``Method`` subclass or a dataclass; it is made with ``cls.__new__(cls)`` and given its attributes
(``__setstate__`` where the class defines one, as ``nn.Module`` does). Nothing else is ever called. What
cannot be encoded that way is refused at save time with one line naming the method and the attribute path.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlfsic.harness.errors import MlfsicError
from mlfsic.harness.io import atomic_path, sha256_file, write_json_atomic
from mlfsic.methods.api import Method

FORMAT = "mlfsic-checkpoint"
FORMAT_VERSION = 1  # part of the checkpoint key: files of another format are never even opened
ALLOWED_PREFIXES = ("mlfsic.", "torch.", "open_clip.")
_TAG = "__t__"


class CheckpointError(MlfsicError):
    """A checkpoint file that is missing, damaged, or not in this format (one line naming the file)."""


def record_path(path: Path) -> Path:
    """The JSON record beside a checkpoint: header, size and sha256."""
    return Path(path).with_suffix(".json")


# ----------------------------------------------------------------------------------------- saving
def save_checkpoint(path: Path, method: Method, header: dict[str, Any]) -> dict[str, Any]:
    """Write ``method`` as a data-only checkpoint at ``path`` and its record beside it (last); returns the record.

    ``header`` (JSON-ready: hyperparameters, hashes, seed, fit_s, fit_report, ...) is stored in both. An
    attribute that cannot be stored as data is a one-line MlfsicError naming the method and the attribute.
    """
    path = Path(path)
    name = str(header.get("name") or header.get("method") or type(method).__name__)
    cls = type(method)
    header = {**header, "format": FORMAT, "version": FORMAT_VERSION, "class": f"{cls.__module__}:{cls.__qualname__}"}
    state = _Encoder(name, _allowed_modules()).encode(method, "method")
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, "version": FORMAT_VERSION, "header": json.dumps(header, sort_keys=True),
                    "state": state}, tmp)
    record = {**header, "checkpoint": {"size": path.stat().st_size, "sha256": sha256_file(path)}}
    write_json_atomic(record_path(path), record)
    return record


class _Encoder:
    def __init__(self, method_name: str, allowed_modules: frozenset[str]) -> None:
        self.method_name = method_name
        self.allowed_modules = allowed_modules
        self.memo: dict[int, int] = {}
        self.keep: list[Any] = []  # keeps encoded objects alive, so no id is reused meanwhile

    def refuse(self, where: str, what: str) -> MlfsicError:
        return MlfsicError(f"method {self.method_name!r}: cannot checkpoint {where} ({what}); a fitted method may hold "
                           "tensors, numpy arrays, numbers, strings, lists/tuples/dicts/sets of those, nn.Modules, "
                           "dataclasses and torch.Generator (harness/sweep/checkpoint.py)")

    def encode(self, value: Any, where: str) -> Any:
        if value is None or type(value) in (bool, int, float, str):
            return value
        seen = self.memo.get(id(value))
        if seen is not None:
            return {_TAG: "ref", "id": seen}
        number = len(self.memo)
        self.memo[id(value)] = number
        self.keep.append(value)
        node = self._node(value, where)
        node["id"] = number
        return node

    def _items(self, values: Any, where: str) -> list[Any]:
        return [self.encode(item, f"{where}[{i}]") for i, item in enumerate(values)]

    def _node(self, value: Any, where: str) -> dict[str, Any]:  # noqa: C901 - one branch per kind
        kind = type(value)
        if kind is torch.nn.Parameter:
            return {_TAG: "parameter", "data": value.detach().cpu().clone(), "requires_grad": value.requires_grad}
        if kind is torch.Tensor:
            if value.layout != torch.strided or value.is_quantized:
                raise self.refuse(where, f"a {value.layout} tensor")
            return {_TAG: "tensor", "data": value.detach().cpu().clone(), "requires_grad": value.requires_grad}
        if isinstance(value, torch.Tensor):
            raise self.refuse(where, f"a tensor subclass {kind.__module__}.{kind.__qualname__}")
        if isinstance(value, (np.ndarray, np.generic)):
            array = np.asarray(value)
            if array.dtype.kind not in "biufc" or array.dtype.fields is not None:
                raise self.refuse(where, f"a numpy array of dtype {array.dtype}")
            raw = np.ascontiguousarray(array).tobytes()
            return {_TAG: "ndarray" if kind is np.ndarray else "npscalar", "dtype": array.dtype.str,
                    "shape": list(array.shape), "bytes": torch.frombuffer(bytearray(raw), dtype=torch.uint8).clone()
                    if raw else torch.zeros(0, dtype=torch.uint8)}
        if kind is list:
            return {_TAG: "list", "items": self._items(value, where)}
        if kind is tuple:
            return {_TAG: "tuple", "items": self._items(value, where)}
        if kind is torch.Size:
            return {_TAG: "size", "items": [int(v) for v in value]}
        if kind in (set, frozenset):
            return {_TAG: kind.__name__, "items": self._items(sorted(value, key=repr), where)}
        if kind in (dict, OrderedDict):
            keys = list(value)
            return {_TAG: "odict" if kind is OrderedDict else "dict",
                    "keys": [self.encode(key, f"{where} key {key!r}") for key in keys],
                    "values": [self.encode(value[key], f"{where}[{key!r}]") for key in keys]}
        if isinstance(value, torch.dtype):
            return {_TAG: "dtype", "name": str(value).removeprefix("torch.")}
        if isinstance(value, torch.device):
            return {_TAG: "device", "name": str(value)}
        if isinstance(value, np.dtype):
            if value.kind not in "biufc" or value.fields is not None:
                raise self.refuse(where, f"numpy dtype {value}")
            return {_TAG: "np_dtype", "name": value.str}
        if kind is torch.Generator:
            return {_TAG: "generator", "device": str(value.device), "state": value.get_state()}
        return self._object(value, where)

    def _object(self, value: Any, where: str) -> dict[str, Any]:
        cls = type(value)
        problem = _class_problem(cls, self.allowed_modules)
        if problem is not None:
            raise self.refuse(where, problem)
        getstate = getattr(value, "__getstate__", None)
        state = getstate() if callable(getstate) else getattr(value, "__dict__", None)
        if not isinstance(state, dict) or not all(isinstance(key, str) for key in state):
            raise self.refuse(where, f"{cls.__qualname__} has no attribute dict (__slots__ or a custom __getstate__)")
        return {_TAG: "object", "class": f"{cls.__module__}:{cls.__qualname__}",
                "state": {key: self.encode(item, f"{where}.{key}") for key, item in state.items()}}


# ----------------------------------------------------------------------------------------- loading
def load_checkpoint(path: Path, extra_modules: tuple[str, ...] = ()) -> tuple[Method, dict[str, Any]]:
    """The fitted method and its header, after checking the file against its record (size, sha256).

    Never runs code from the file: ``torch.load(weights_only=True)`` refuses anything but data, and only
    allowed classes are instantiated. Any problem is a CheckpointError (one line naming the file, saying why).
    ``extra_modules``: modules whose classes are allowed besides the built-in prefixes and registered methods.
    """
    path = Path(path)
    problem = check_record(path)
    if problem is not None:
        raise CheckpointError(f"checkpoint {path}: {problem}")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - a pickle with code, a truncated zip, garbage: all refused
        raise CheckpointError(f"checkpoint {path}: not a data-only checkpoint, refused by "
                              f"torch.load(weights_only=True) ({type(error).__name__}: {_reason(error)})") from None
    if not (isinstance(content, dict) and content.get("format") == FORMAT and content.get("version") == FORMAT_VERSION
            and isinstance(content.get("header"), str) and "state" in content):
        raise CheckpointError(f"checkpoint {path}: not an {FORMAT} file of version {FORMAT_VERSION}")
    try:
        header = json.loads(content["header"])
        method = _Decoder(_allowed_modules() | frozenset(extra_modules)).decode(content["state"])
    except (CheckpointError, ValueError, TypeError, KeyError, AttributeError, RuntimeError, RecursionError) as error:
        raise CheckpointError(f"checkpoint {path}: cannot decode ({type(error).__name__}: {error})") from None
    if not isinstance(method, Method):
        raise CheckpointError(f"checkpoint {path}: holds a {type(method).__name__}, not a fitted method")
    return method, header


def _reason(error: Exception) -> str:
    """The line of torch's refusal that says what was refused (e.g. "... unsupported GLOBAL posix.mkdir ...")."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    chosen = next((line for line in lines if "GLOBAL" in line or "nsupported" in line), lines[0] if lines else "")
    return chosen[:200]


def check_record(path: Path) -> str | None:
    """Why the checkpoint at ``path`` does not match its record (missing, size, sha256), or None."""
    record_file = record_path(path)
    if not Path(path).is_file():
        return "the file is missing"
    try:
        record = json.loads(record_file.read_text())
        expected = record["checkpoint"]
        size, digest = int(expected["size"]), str(expected["sha256"])
    except FileNotFoundError:
        return f"its record {record_file.name} is missing"
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"its record {record_file.name} is unreadable ({type(error).__name__})"
    actual = Path(path).stat().st_size
    if actual != size:
        return f"{actual} bytes where its record says {size} (truncated or replaced)"
    if sha256_file(path) != digest:
        return "its sha256 does not match its record (modified or replaced)"
    return None


def read_record(path: Path) -> dict[str, Any]:
    """The JSON record beside a checkpoint (call ``check_record`` first)."""
    return json.loads(record_path(path).read_text())


class _Decoder:
    def __init__(self, allowed_modules: frozenset[str]) -> None:
        self.allowed_modules = allowed_modules
        self.memo: dict[int, Any] = {}

    def decode(self, node: Any) -> Any:  # noqa: C901 - one branch per kind
        if node is None or type(node) in (bool, int, float, str):
            return node
        if not (isinstance(node, dict) and isinstance(node.get(_TAG), str)):
            raise TypeError(f"unexpected node of type {type(node).__name__}")
        kind = node[_TAG]
        if kind == "ref":
            return self.memo[int(node["id"])]
        number = int(node["id"])
        if kind in ("tensor", "parameter"):
            data = node["data"]
            if not isinstance(data, torch.Tensor):
                raise TypeError(f"{kind} node without a tensor")
            value: Any = (torch.nn.Parameter(data, requires_grad=bool(node["requires_grad"])) if kind == "parameter"
                          else data.requires_grad_(bool(node["requires_grad"])))
        elif kind in ("ndarray", "npscalar"):
            dtype = np.dtype(str(node["dtype"]))
            if dtype.kind not in "biufc":
                raise TypeError(f"numpy dtype {dtype} is not numeric")
            raw = node["bytes"].numpy().tobytes()
            array = np.frombuffer(raw, dtype=dtype).reshape([int(n) for n in node["shape"]]).copy()
            value = array if kind == "ndarray" else array[()]
        elif kind == "list":
            value = []
            self.memo[number] = value
            value.extend(self.decode(item) for item in node["items"])
        elif kind in ("tuple", "set", "frozenset"):
            items = [self.decode(item) for item in node["items"]]
            value = {"tuple": tuple, "set": set, "frozenset": frozenset}[kind](items)
        elif kind == "size":
            value = torch.Size(int(n) for n in node["items"])
        elif kind in ("dict", "odict"):
            value = OrderedDict() if kind == "odict" else {}
            self.memo[number] = value
            for key, item in zip(node["keys"], node["values"], strict=True):
                value[self.decode(key)] = self.decode(item)
        elif kind == "dtype":
            value = getattr(torch, str(node["name"]), None)
            if not isinstance(value, torch.dtype):
                raise TypeError(f"unknown torch dtype {node['name']!r}")
        elif kind == "device":
            value = torch.device(str(node["name"]))
        elif kind == "np_dtype":
            value = np.dtype(str(node["name"]))
            if value.kind not in "biufc":
                raise TypeError(f"numpy dtype {value} is not numeric")
        elif kind == "generator":
            value = torch.Generator(device=str(node["device"]))
            value.set_state(node["state"])
        elif kind == "object":
            value = self._object(node, number)
        else:
            raise TypeError(f"unknown node kind {kind!r}")
        self.memo[number] = value
        return value

    def _object(self, node: dict[str, Any], number: int) -> Any:
        cls = _resolve_class(str(node["class"]), self.allowed_modules)
        value = cls.__new__(cls)
        self.memo[number] = value  # before its state: a cycle back to it finds it
        state = {str(key): self.decode(item) for key, item in node["state"].items()}
        if "__setstate__" in _defined_by(cls):
            value.__setstate__(state)
        else:
            value.__dict__.update(state)
        return value


# ----------------------------------------------------------------------------------------- classes
def _allowed_modules() -> frozenset[str]:
    """The modules of every registered method (built-ins, one-file modules, plug-ins)."""
    from mlfsic.methods.registry import available_methods

    return frozenset(info.cls.__module__ for info in available_methods().values())


def _module_allowed(module: str, allowed_modules: frozenset[str]) -> bool:
    return module in allowed_modules or module.startswith(ALLOWED_PREFIXES) or module in ("torch", "open_clip")


def _class_problem(cls: type, allowed_modules: frozenset[str]) -> str | None:
    """Why objects of ``cls`` may not be in a checkpoint, or None."""
    name = f"{cls.__module__}.{cls.__qualname__}"
    if not _module_allowed(cls.__module__, allowed_modules):
        return f"an object of {name}, whose module is not mlfsic, torch, open_clip or a registered method's"
    if not (issubclass(cls, (torch.nn.Module, Method)) or dataclasses.is_dataclass(cls)):
        return f"an object of {name}, which is not an nn.Module, a Method or a dataclass"
    if "<locals>" in cls.__qualname__:
        return f"an object of {name}, a class defined inside a function"
    return None


def _resolve_class(path: str, allowed_modules: frozenset[str]) -> type:
    module_name, _, qualname = path.partition(":")
    if not _module_allowed(module_name, allowed_modules):
        raise CheckpointError(f"class {path} is not from an allowed module")
    if module_name in sys.modules:
        module = sys.modules[module_name]
    elif module_name.startswith(("torch.", "open_clip.")) and not module_name.endswith("__main__"):
        module = importlib.import_module(module_name)  # library code; mlfsic's and methods' are imported already
    else:
        raise CheckpointError(f"class {path}: module {module_name} is not imported")
    value: Any = module
    for part in qualname.split("."):
        value = getattr(value, part, None)
    if not isinstance(value, type) or f"{value.__module__}:{value.__qualname__}" != path:
        raise CheckpointError(f"class {path} does not exist")
    problem = _class_problem(value, allowed_modules)
    if problem is not None:
        raise CheckpointError(f"refused {problem}")
    return value


def _defined_by(cls: type) -> set[str]:
    """Names defined by ``cls`` or a base class other than ``object``."""
    return {name for klass in cls.__mro__ if klass is not object for name in vars(klass)}
