"""The method registry: built-in methods and third-party ones from the entry-point group
``mlfsic.methods`` (DESIGN 2, 4.3), in the style of timm's ``register_model``.

A plug-in package declares, in its pyproject.toml::

    [project.entry-points."mlfsic.methods"]
    my-method = "my_package.module:MyMethod"

and ``MyMethod`` subclasses ``mlfsic.methods.api.Method``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from mlfsic.harness.errors import MlfsicError
from mlfsic.methods.api import Method

ENTRY_POINT_GROUP = "mlfsic.methods"

# Modules of built-in methods; importing one runs its @register decorators.
BUILTIN_MODULES = (
    "mlfsic.methods.reference",
    "mlfsic.methods.protonet",
    "mlfsic.methods.laso",
)


@dataclass(frozen=True)
class MethodInfo:
    name: str
    cls: type[Method]
    origin: str  # "built-in" or "entry point <dist name> <version>"


_REGISTRY: dict[str, MethodInfo] = {}
_LOADED = False


def register(name: str, origin: str = "built-in") -> Callable[[type[Method]], type[Method]]:
    """Class decorator: ``@register("protonet")`` makes the class available under that name."""

    def decorator(cls: type[Method]) -> type[Method]:
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise TypeError(f"@register({name!r}) must decorate a subclass of mlfsic.methods.api.Method")
        existing = _REGISTRY.get(name)
        if existing is not None and existing.cls is not cls:
            raise MlfsicError(f"method name {name!r} is registered twice ({existing.cls} and {cls})")
        cls.name = name
        _REGISTRY[name] = MethodInfo(name=name, cls=cls, origin=origin)
        return cls

    return decorator


def _load_entry_points() -> None:
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = entry_point.dist
        origin = f"entry point {dist.name} {dist.version}" if dist is not None else "entry point"
        try:
            cls = entry_point.load()
        except Exception as error:  # a broken plug-in must not take the harness down
            raise MlfsicError(f"entry point {entry_point.name!r} ({entry_point.value}) failed to load: {error}")
        if entry_point.name in _REGISTRY and _REGISTRY[entry_point.name].cls is cls:
            _REGISTRY[entry_point.name] = MethodInfo(entry_point.name, cls, origin)
            continue
        register(entry_point.name, origin=origin)(cls)


def available_methods() -> dict[str, MethodInfo]:
    """All registered methods by name (built-ins first, then entry points), loading them once."""
    global _LOADED
    if not _LOADED:
        for module in BUILTIN_MODULES:
            importlib.import_module(module)
        _load_entry_points()
        _LOADED = True
    return dict(sorted(_REGISTRY.items()))


def get_method_class(name: str) -> type[Method]:
    methods = available_methods()
    if name not in methods:
        raise MlfsicError(f"unknown method {name!r}; registered: {', '.join(methods)}")
    return methods[name].cls


def create_method(name: str, config: Mapping[str, Any], seed: int) -> Method:
    """Instantiate method ``name`` with hyperparameters ``config``; unknown keys are a clear error."""
    cls = get_method_class(name)
    try:
        return cls(seed=seed, **dict(config))
    except TypeError as error:
        raise MlfsicError(f"method {name!r}: bad config {dict(config)}: {error}") from None
