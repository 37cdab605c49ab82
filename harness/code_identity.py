"""Code identities: the part of a cache key that says which code made an artifact (docs/architecture.md §3.1).

Source is compared *stripped*: docstrings (the first string statement of a module, class or function body) and
comments are removed, trailing whitespace and blank lines dropped (except inside multi-line strings), so
rewording a docstring or a comment never invalidates anything, while any change to a statement does. The
stripping works on the text (``tokenize`` for comments, ``ast`` positions for docstrings), not on
``ast.dump``/``ast.unparse``, whose output differs between Python versions: a key must be the same on every
machine of a cluster and on the machine that made ``results/published``.

Three granularities:

* ``source_sha256(text)``: one module's stripped source;
* ``method_code(cls)``: a method's import closure (``METHOD_CODE_RULE`` below), module -> stripped sha256;
* ``definition_closure(module, names)``: top-level definitions of one module and, transitively, the
  definitions of that module they name (a function, a class, a constant), name -> stripped sha256. Used where
  a module is too broad a unit (the backbone kind's ``build``, the code behind a version constant).

``VERSION_PINS`` pins the hand-bumped version constants (METRIC_VERSION, SAMPLER_VERSION, checkpoint
FORMAT_VERSION) to the stripped source they version; ``tests/test_code_keys.py`` fails when that source
changes while the pin does not, so a change cannot slip past without someone deciding whether to bump.
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import inspect
import io
import sys
import textwrap
import tokenize
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlfsic.harness.io import sha256_json, sha256_text

Reader = Callable[[str], "str | None"]  # dotted module name -> its source text (None: no Python source)

# ----------------------------------------------------------------------------------------- stripping
_FSTRING_START = getattr(tokenize, "FSTRING_START", None)  # Python >= 3.12 tokenizes f-strings in pieces
_FSTRING_END = getattr(tokenize, "FSTRING_END", None)


def _char_col(line: str, byte_col: int) -> int:
    """``ast`` columns count UTF-8 bytes; ``tokenize`` columns and ``str`` indices count characters."""
    return len(line.encode("utf-8")[:byte_col].decode("utf-8", errors="ignore"))


@functools.lru_cache(maxsize=256)
def _stripped_lines(text: str) -> tuple[tuple[int, str], ...]:
    """(line number, text) of the lines left once docstrings and comments are removed; trailing whitespace
    and blank lines are dropped except where a multi-line string continues past the end of the line."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").removeprefix("\ufeff")
    lines = text.split("\n")
    try:
        tree = ast.parse(text)
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (SyntaxError, ValueError, tokenize.TokenError):  # not Python: compared as it is
        return tuple((number, line) for number, line in enumerate(lines, 1))
    spans: list[tuple[int, int, int, int]] = []  # (line, col, end line, end col), characters, 1-based lines
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                    and isinstance(first.value.value, str) and first.end_lineno is not None):
                end_col = first.end_col_offset or 0
                spans.append((first.lineno, _char_col(lines[first.lineno - 1], first.col_offset),
                              first.end_lineno, _char_col(lines[first.end_lineno - 1], end_col)))
    docstring_lines = {number for start, _, end, _ in spans for number in range(start, end + 1)}
    protected: set[int] = set()  # lines whose end lies inside a (non-docstring) string
    fstring_starts: list[int] = []
    for token in tokens:
        if token.type == tokenize.COMMENT:
            spans.append((*token.start, *token.end))
        elif token.type == tokenize.STRING and token.start[0] not in docstring_lines:
            protected.update(range(token.start[0], token.end[0]))
        elif token.type == _FSTRING_START:
            fstring_starts.append(token.start[0])
        elif token.type == _FSTRING_END and fstring_starts:
            protected.update(range(fstring_starts.pop(), token.end[0]))
    touched: set[int] = set()
    for start, col, end, end_col in sorted(spans, reverse=True):  # right to left: earlier columns stay valid
        if start == end:
            lines[start - 1] = lines[start - 1][:col] + lines[start - 1][end_col:]
        else:
            lines[start - 1] = lines[start - 1][:col]
            for number in range(start + 1, end):
                lines[number - 1] = ""
            lines[end - 1] = lines[end - 1][end_col:]
        touched.update(range(start, end + 1))
    kept = []
    for number, line in enumerate(lines, 1):
        if number in protected and number not in touched:
            kept.append((number, line))
        elif line.strip():
            kept.append((number, line.rstrip()))
    return tuple(kept)


def stripped_source(text: str) -> str:
    """``text`` without docstrings, comments, trailing whitespace and blank lines.

    Example:
        >>> print(stripped_source('def f(x):\\n    \"\"\"Twice x.\"\"\"\\n\\n    return 2 * x  # doubled\\n'))
        def f(x):
            return 2 * x
    """
    return "\n".join(line for _, line in _stripped_lines(text))


@functools.lru_cache(maxsize=1024)
def source_sha256(text: str) -> str:
    """sha256 of ``stripped_source(text)``: equal for two sources that differ only in docstrings, comments and
    blank lines."""
    return sha256_text(stripped_source(text))


# ----------------------------------------------------------------------------------------- modules
@functools.lru_cache(maxsize=4096)
def module_file(name: str) -> Path | None:
    """The ``.py`` file of module ``name`` (imported or importable), None when it has none or does not exist.
    Finding a submodule imports its parent packages (never the module itself)."""
    module = sys.modules.get(name)
    file = getattr(module, "__file__", None) if module is not None else None
    if file is None and module is None:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError, AttributeError):
            return None
        file = spec.origin if spec is not None else None
    if file and str(file).endswith(".py") and Path(file).is_file():
        return Path(file)
    return None


def module_source(name: str) -> str | None:
    """The source text of module ``name``, None without one. ``method_code`` and ``definition_closure`` read
    through this function (tests replace it to edit a module without touching the file)."""
    path = module_file(name)
    return path.read_text(encoding="utf-8-sig") if path is not None else None


def _reader(read: Reader | None) -> Reader:
    return read if read is not None else module_source  # looked up at call time, so it can be replaced


def module_code(name: str, read: Reader | None = None) -> str:
    """The stripped sha256 of module ``name``; a module without source is an error."""
    text = _reader(read)(name)
    if text is None:
        raise ValueError(f"no Python source for module {name}")
    return source_sha256(text)


@functools.lru_cache(maxsize=1024)
def _import_statements(text: str) -> tuple[tuple[int, str, tuple[str, ...]], ...]:
    """(level, module, names) of every import statement, module level or inside a function; ``import a.b``
    is (0, "a.b", ())."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return ()
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((0, alias.name, ()) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.append((node.level, node.module or "", tuple(alias.name for alias in node.names)))
    return tuple(found)


def _existing_module(name: str) -> str | None:
    """``name`` or its longest prefix that is a module with a source file."""
    while name:
        if module_file(name) is not None:
            return name
        name = name.rpartition(".")[0]
    return None


def imported_modules(name: str, text: str, wanted: Callable[[str], bool] = lambda module: True) -> list[str]:
    """The modules (with a source file) that module ``name``'s source ``text`` imports: ``from a import b``
    counts ``a.b`` when that is a module, else ``a``; relative imports are resolved against ``name``. Only
    imports whose module ``wanted`` accepts are looked up (looking one up may import its parent packages)."""
    package = name if (module_file(name) or Path("x")).name == "__init__.py" else name.rpartition(".")[0]
    out: list[str] = []
    for level, module, names in _import_statements(text):
        if level:
            try:
                module = importlib.util.resolve_name("." * level + module, package)
            except (ImportError, ValueError):
                continue
        if not wanted(module):
            continue
        targets = [f"{module}.{alias}" if alias != "*" and module_file(f"{module}.{alias}") is not None
                   else module for alias in names] or [module]
        for target in targets:
            resolved = _existing_module(target)
            if resolved is not None and resolved not in out:
                out.append(resolved)
    return out


def _within(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def import_closure(roots: Iterable[str], follow: Callable[[str], bool], include: Callable[[str], bool],
                   exclude: Iterable[str] = (), read: Reader | None = None) -> dict[str, str]:
    """module -> stripped sha256 over ``roots`` and, transitively, the imports of every root and of every
    module ``follow`` accepts; an import is kept when ``include`` or ``follow`` accepts it (a kept module
    that ``follow`` refuses is hashed but its own imports are not followed). Modules in ``exclude`` are
    neither hashed nor followed; a module without source is left out."""
    read = _reader(read)
    excluded = set(exclude)

    def kept(module: str) -> bool:
        return follow(module) or include(module)

    found: dict[str, str] = {}
    todo = [(root, True) for root in roots]
    while todo:
        name, is_root = todo.pop()
        if name in found or name in excluded:
            continue
        text = read(name)
        if text is None:
            continue
        found[name] = source_sha256(text)
        if is_root or follow(name):
            todo.extend((target, False) for target in imported_modules(name, text, kept)
                        if target not in found and kept(target))
    return dict(sorted(found.items()))


# ----------------------------------------------------------------------------------------- methods
# The rule (docs/architecture.md §3.1). A method's code is the import closure of its class's module, of the
# modules of its base classes and of its ``code_modules``:
FOLLOWED = ("mlfsic.methods", "mlfsic.harness.protocol")  # imports followed transitively
INCLUDED = ("mlfsic",)  # any other mlfsic module imported on the way is hashed, its imports not followed
EXCLUDED = ("mlfsic.methods.registry",)  # name -> class table: looks classes up, runs no code of theirs
# A plug-in method outside mlfsic also follows its own top-level package (``my_pkg.method`` follows
# ``my_pkg.*``); a one-file module follows nothing of its own beyond ``code_modules``.
METHOD_CODE_RULE = "import closure v1"  # part of every method key: change it when the rule changes


def _own_package(module: str) -> str | None:
    top = module.partition(".")[0]
    return top if "." in module and top != "mlfsic" else None


def method_code(cls: type, read: Reader | None = None) -> dict[str, str]:
    """Module -> stripped sha256 of every module of the method class ``cls``'s code (the rule above)."""
    read = _reader(read)
    own = _own_package(cls.__module__)
    followed = FOLLOWED + ((own,) if own else ())
    roots = [cls.__module__]
    roots += [base.__module__ for base in cls.__mro__[1:]
              if _within(base.__module__, ("mlfsic",) + ((own,) if own else ())) and base.__module__ not in roots]
    roots += [module for module in getattr(cls, "code_modules", ()) if module not in roots]
    code = import_closure(roots, follow=lambda name: _within(name, followed),
                          include=lambda name: _within(name, INCLUDED), exclude=EXCLUDED, read=read)
    if cls.__module__ not in code:  # defined where no source file is (a notebook, ``__main__``): the class
        try:
            code[cls.__module__] = source_sha256(textwrap.dedent(inspect.getsource(cls)))
        except (OSError, TypeError):
            code[cls.__module__] = sha256_text(cls.__qualname__)
    return code


# ----------------------------------------------------------------------------------------- definitions
def _bound_names(node: ast.stmt) -> list[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    targets: list[ast.expr] = []
    if isinstance(node, ast.Assign):
        targets = list(node.targets)
    elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
        targets = [node.target]
    names = []
    while targets:  # ``a = b = 1``, ``a, (b, *c) = ...``; ``x[k] = v`` and ``x.y = v`` bind nothing new
        target = targets.pop()
        if isinstance(target, ast.Name):
            names.append(target.id)
        elif isinstance(target, (ast.Tuple, ast.List)):
            targets.extend(target.elts)
        elif isinstance(target, ast.Starred):
            targets.append(target.value)
    return names


def _top_statements(body: list[ast.stmt]) -> Iterable[ast.stmt]:
    """Module-level statements, looking into ``if``/``try``/``with`` blocks."""
    for node in body:
        if isinstance(node, (ast.If, ast.Try, ast.With)):
            for block in ("body", "orelse", "finalbody"):
                yield from _top_statements(getattr(node, block, []))
            for handler in getattr(node, "handlers", []):
                yield from _top_statements(handler.body)
        else:
            yield node


@functools.lru_cache(maxsize=256)
def _definitions(text: str) -> dict[str, tuple[tuple[tuple[int, int], ...], frozenset[str]]]:
    """Top-level name -> (line ranges of the statements binding it, decorators included; names they use)."""
    table: dict[str, tuple[list[tuple[int, int]], set[str]]] = {}
    for node in _top_statements(ast.parse(text).body):
        first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
        used = {leaf.id for leaf in ast.walk(node) if isinstance(leaf, ast.Name)}
        for name in _bound_names(node):
            ranges, names = table.setdefault(name, ([], set()))
            ranges.append((first, node.end_lineno or node.lineno))
            names.update(used - {name})
    return {name: (tuple(ranges), frozenset(names)) for name, (ranges, names) in table.items()}


def definition_closure(module: str, names: Iterable[str], follow: bool = True,
                       read: Reader | None = None) -> dict[str, str]:
    """``module:name`` -> stripped sha256 of the top-level definitions ``names`` of ``module`` and (with
    ``follow``), transitively, of the top-level definitions of the same module that they name. Imported
    names are not followed. A name the module does not define is an error (a stale root)."""
    text = _reader(read)(module)
    if text is None:
        raise ValueError(f"no Python source for module {module}")
    table = _definitions(text)
    lines = _stripped_lines(text)
    found: dict[str, str] = {}
    todo = list(names)
    for name in todo:
        if name not in table:
            raise ValueError(f"{module} defines no top-level {name!r}")
    while todo:
        name = todo.pop()
        if name in found or name not in table:
            continue
        ranges, used = table[name]
        found[name] = sha256_text("\n".join(line for number, line in lines
                                            if any(start <= number <= end for start, end in ranges)))
        if follow:
            todo.extend(sorted(used))
    return {f"{module}:{name}": found[name] for name in sorted(found)}


def object_code(obj: Any, read: Reader | None = None) -> dict[str, str]:
    """The definition closure of a top-level function or class ``obj`` in its module; for anything else
    (a lambda, a nested function) the stripped source of ``obj`` itself, or its qualified name without one."""
    while isinstance(obj, functools.partial):  # its arguments are configuration, not code
        obj = obj.func
    module = getattr(obj, "__module__", None) or ""
    name = getattr(obj, "__qualname__", None) or type(obj).__qualname__  # never a repr: it may hold an address
    text = _reader(read)(module) if module else None
    if text is not None and name in _definitions(text):
        return definition_closure(module, [name], read=read)
    try:
        return {f"{module}:{name}": source_sha256(textwrap.dedent(inspect.getsource(obj)))}
    except (OSError, TypeError):
        return {f"{module}:{name}": sha256_text(name)}


# ----------------------------------------------------------------------------------------- version pins
@dataclass(frozen=True)
class VersionPin:
    """A hand-bumped version constant and the stripped-source identity of the code it versions.

    ``source`` is ``sha256_json(definition_closure(module, roots))`` (``current``). When the code changes: bump the
    constant if the change alters what the constant promises (``meaning``), then set ``version`` and
    ``source`` here to the values ``tests/test_code_keys.py`` prints.
    """

    module: str
    constant: str
    roots: tuple[str, ...]
    version: Any
    source: str
    meaning: str

    def current(self, read: Reader | None = None) -> tuple[Any, str]:
        """The constant's value and the stripped-source identity of ``roots`` now."""
        version = getattr(importlib.import_module(self.module), self.constant)
        return version, sha256_json(definition_closure(self.module, self.roots, read=read))


VERSION_PINS: Mapping[str, VersionPin] = {
    pin.constant: pin for pin in (
        VersionPin("mlfsic.harness.protocol.metrics", "METRIC_VERSION",
                   ("average_precision", "per_label_ap", "episode_map", "f1_at_k"), "1",
                   "cd6d883ec556009b24af7b837bcbd9daad80cc5f7615e9e0ad7d849e8a6769c8",
                   "any number an episode is scored with (run.json records it; against= refuses another)"),
        VersionPin("mlfsic.harness.protocol.episodes", "SAMPLER_VERSION", ("build_episode_set", "make_episode"),
                   # re-pinned without a bump when the release rule was added (2026-12-07): it is a new
                   # protocol name, part of its sets' ids, and episodic-v1 / rest-of-pool draw the same ids
                   "1", "60cb2b3896ae59152f5d5b8ad26ee823a737701336e687432af38bd82aa755c8",
                   "the drawn image ids of any episode (part of every episode-set id, compared by against=)"),
        VersionPin("mlfsic.harness.sweep.checkpoint", "FORMAT_VERSION", ("save_checkpoint", "load_checkpoint"),
                   1, "489107ff9b4fbac302fe4f5bbb846ec2058334018436405ef974b4e8f3538e96",
                   "the checkpoint file format (part of every checkpoint key: older files are never opened)"),
    )
}
