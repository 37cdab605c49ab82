"""The method registry: built-in methods and third-party ones from the entry-point group
``mlfsic.methods`` (docs/architecture.md §2, 4.3), in the style of timm's ``register_model``.

A plug-in package declares, in its pyproject.toml::

    [project.entry-points."mlfsic.methods"]
    my-method = "my_package.module:MyMethod"

and ``MyMethod`` subclasses ``mlfsic.methods.api.Method``.

Entry points load one by one: one that fails (missing module, import error, not a Method, a name taken)
is skipped with a one-line warning on stderr and listed by ``broken_methods()`` (``mlfsic methods``
shows it as BROKEN); selecting it is a one-line error naming it. The other methods keep working.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from mlfsic.harness.errors import MlfsicError
from mlfsic.methods.api import Method

ENTRY_POINT_GROUP = "mlfsic.methods"

# Modules of built-in methods; importing one runs its @register decorators.
BUILTIN_MODULES = (
    "mlfsic.methods.baselines",
    "mlfsic.methods.protonet",
    "mlfsic.methods.laso",
    "mlfsic.methods.lcm",
    "mlfsic.methods.clip.clip_zeroshot",
    "mlfsic.methods.clip.mkt",
    "mlfsic.methods.linear_probe",
    "mlfsic.methods.tip_adapter",
    "mlfsic.methods.clip.dualcoop",
)


@dataclass(frozen=True)
class MethodInfo:
    name: str
    cls: type[Method]
    origin: str  # "built-in", "module <name>" (method_modules) or "entry point <dist name> <version>"


@dataclass(frozen=True)
class BrokenMethod:
    """An entry point of the ``mlfsic.methods`` group that failed to load."""

    name: str
    target: str  # the entry point's value, "module:attr"
    origin: str  # "entry point <dist name> <version>"
    error: str  # one line: "<ExceptionType>: <message>"


_REGISTRY: dict[str, MethodInfo] = {}
_BROKEN: dict[str, BrokenMethod] = {}
_LOADED = False


# The Method API's calls: the number of positional arguments (besides self) each method must accept.
API_CALLS = {"fit": ("base", "val"), "predict": ("episode",)}


def _accepts(function: Callable[..., Any], n_args: int) -> bool:
    parameters = list(inspect.signature(function).parameters.values())[1:]  # without self
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters):
        return True
    positional = [p for p in parameters if p.kind in (inspect.Parameter.POSITIONAL_ONLY,
                                                      inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is inspect.Parameter.empty]
    return len(required) <= n_args <= len(positional)


# Keywords the harness passes to every constructor besides the method's hyperparameters (create_method).
CONSTRUCTOR_KEYWORDS = ("seed",)


def _accepts_keyword(function: Callable[..., Any], keyword: str) -> bool:
    parameters = inspect.signature(function).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return True
    found = parameters.get(keyword)
    return found is not None and found.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def contract_error(name: str, cls: type[Method]) -> str | None:
    """One line when ``cls`` cannot be called as the Method API calls it, else None: a constructor without
    a ``seed`` keyword (the harness builds every method as ``cls(seed=..., **hyperparameters)``), or a
    ``fit``/``predict`` that cannot take the API's arguments (e.g. a plug-in written before the val split
    reached ``fit``: ``def fit(self, base)``)."""
    where = f"method {name!r} ({cls.__module__}.{cls.__qualname__})"
    for keyword in CONSTRUCTOR_KEYWORDS:
        if not _accepts_keyword(cls.__init__, keyword):
            return (f"{where} has __init__{inspect.signature(cls.__init__)}, but the harness calls "
                    f"{cls.__qualname__}({keyword}=..., **hyperparameters); add `{keyword}: int = 0` and pass it "
                    f"to super().__init__({keyword})")
    for method, args in API_CALLS.items():
        function = getattr(cls, method)
        if not _accepts(function, len(args)):
            return (f"{where} has {method}{inspect.signature(function)}, "
                    f"but the Method API calls {method}(self, {', '.join(args)}) (mlfsic.methods.api)")
    return None


def register(name: str, origin: str | None = None) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: ``@register("protonet")`` makes the class available under that name. A class whose
    ``fit`` / ``predict`` cannot take the API's arguments is refused with one line (``contract_error``)."""

    def decorator(cls: type[Method]) -> type[Method]:
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise TypeError(f"@register({name!r}) must decorate a subclass of mlfsic.methods.api.Method")
        error = contract_error(name, cls)
        if error is not None:
            raise MlfsicError(error)
        existing = _REGISTRY.get(name)
        if existing is not None and existing.cls is not cls:
            raise MlfsicError(f"method name {name!r} is registered twice ({existing.cls} and {cls})")
        cls.name = name
        where = origin or ("built-in" if cls.__module__.startswith("mlfsic.") else f"module {cls.__module__}")
        _REGISTRY[name] = MethodInfo(name=name, cls=cls, origin=where)
        return cls

    return decorator


def _load_entry_points() -> None:
    """Load every entry point of the group on its own: a broken plug-in must not take the harness down."""
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = entry_point.dist
        origin = f"entry point {dist.name} {dist.version}" if dist is not None else "entry point"
        try:
            cls = entry_point.load()
            if entry_point.name in _REGISTRY and _REGISTRY[entry_point.name].cls is cls:
                _REGISTRY[entry_point.name] = MethodInfo(entry_point.name, cls, origin)
            else:
                register(entry_point.name, origin=origin)(cls)
        except Exception as error:  # noqa: BLE001 - any failure of third-party code: skip that plug-in
            broken = BrokenMethod(entry_point.name, entry_point.value, origin, _one_line(error))
            _BROKEN[entry_point.name] = broken
            print(f"mlfsic: warning: skipping method plug-in {broken.name!r} ({broken.target}, {broken.origin}): "
                  f"{broken.error}", file=sys.stderr)


def _load() -> None:
    global _LOADED
    if not _LOADED:
        for module in BUILTIN_MODULES:
            importlib.import_module(module)
        _LOADED = True  # before the entry points: a failing one is reported once, not on every call
        _load_entry_points()


def available_methods() -> dict[str, MethodInfo]:
    """All registered methods by name (built-ins, one-file modules, entry points), loading them once."""
    _load()
    return dict(sorted(_REGISTRY.items()))


def broken_methods() -> dict[str, BrokenMethod]:
    """Entry points that failed to load, by name (skipped by ``available_methods``)."""
    _load()
    return {name: info for name, info in sorted(_BROKEN.items()) if name not in _REGISTRY}


def get_method_class(name: str) -> type[Method]:
    methods = available_methods()
    if name not in methods:
        broken = broken_methods().get(name)
        if broken is not None:
            raise MlfsicError(f"method {name!r} is a plug-in that failed to load ({broken.target}, {broken.origin}): "
                              f"{broken.error}; fix or uninstall it, or leave it out of method=[...]")
        raise MlfsicError(f"unknown method {name!r}; registered: {', '.join(methods)}; {unimported_hint(name)}")
    return methods[name].cls


def unimported_hint(name: str, folders: Sequence[str] | None = None) -> str:
    """What to do about a method name no imported module registered: the one-file module on the path that
    registers it (``method_modules=[that_module]``), or how a method of one's own is made known.

    ``folders``: where to look for ``*.py`` files (default: the current folder and ``sys.path``'s folders,
    not descending); a file is read only as text, never imported.
    """
    pattern = re.compile(r"""register\(\s*['"]""" + re.escape(name) + r"""['"]""")
    for folder in folders if folders is not None else ["", *sys.path]:
        directory = Path(folder or ".")
        if not directory.is_dir() or "site-packages" in directory.parts:
            continue
        for path in sorted(directory.glob("*.py")):
            try:
                if pattern.search(path.read_text(errors="replace")):
                    return f"{path} registers it: add method_modules=[{path.stem}]"
            except OSError:
                continue
    return (f"a method of your own is imported with method_modules=[my_module] (a module on PYTHONPATH that "
            f"@register('{name}')s it), or installed as a package with an entry point of group {ENTRY_POINT_GROUP}")


def import_method_modules(modules: Sequence[str]) -> None:
    """Import one-file method modules (``method_modules``) so their ``@register`` decorators run.

    A module that is not found, fails to import, or registers a method the API cannot call is a one-line
    error saying which (the contract check of ``register`` runs at import, before any Ray task).
    """
    for module in modules:
        try:
            importlib.import_module(module)
        except MlfsicError as error:  # a contract violation found by @register
            raise MlfsicError(f"method_modules: {module}: {error}") from None
        except ModuleNotFoundError as error:
            if error.name and module.startswith(error.name):
                raise MlfsicError(f"method_modules: no module named {module!r} on the path (cwd {Path.cwd()}); "
                                  f"expected {module.replace('.', '/')}.py in the current folder with PYTHONPATH=. "
                                  "(or an installed module)") from None
            raise MlfsicError(f"method_modules: importing {module!r} failed: {_one_line(error)}") from None
        except Exception as error:  # noqa: BLE001 - any import-time failure of user code is a config error
            raise MlfsicError(f"method_modules: importing {module!r} failed: {_one_line(error)}") from None


def _one_line(error: BaseException) -> str:
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def create_method(name: str, config: Mapping[str, Any], seed: int) -> Method:
    """Instantiate method ``name`` with hyperparameters ``config``; unknown keys are a clear error."""
    cls = get_method_class(name)
    try:
        return cls(seed=seed, **dict(config))
    except TypeError as error:
        raise MlfsicError(f"method {name!r}: bad config {dict(config)}: {error}") from None
