"""The options of the ``key=value`` subcommands, declared once, and the one parser of them.

Two kinds of subcommands take ``key=value`` arguments (docs/architecture.md §4.1):

* ``run``, ``episodes``, ``backbone train``, ``teacher train``: every key is a key of the run config, given as
  a Hydra override (``harness.config``); their ``out=`` is split off by ``split_out_option``.
* ``leaderboard``, ``claims``, ``methods``, ``explain``, ``data prepare openmoji-corpus``, ``data check``,
  ``data split``: their own options, each declared once in a dataclass below (``SCHEMAS``): the field's name,
  type, default and ``field(metadata={"help": ...})``. ``parse_key_values`` turns the arguments into an
  instance of it and ``options_epilog`` writes the ``--help`` listing from it, so a new option is one field.
  Some of them also pass other keys on: ``explain`` a key with a ``.`` or a leading ``+`` (a run-config
  override, e.g. ``+method_args.lcm.steps=20``), ``data check`` / ``data split`` / ``data prepare`` any other key
  (a key of the dataset config: ``root=DIR`` is ``dataset.root=DIR``).

A value is read by OmegaConf's grammar for its field's type (``IntegerNode``, ``FloatNode``, ``BooleanNode``:
``true``/``false``/``yes``/``no``/``1``/``0``; a list: ``[a,b]``, or ``a,b``); a string or a path is taken as
given. Every error is one line (``mlfsic: error: ...``, exit 2), the same for every subcommand::

    unknown claims option 'ablations' (did you mean ablation?); known: ablation, ranking, out
    explain option seed='x': expected an integer
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from mlfsic.harness.errors import MlfsicError

T = TypeVar("T")


# ------------------------------------------------------------------------------------------- schemas
@dataclass(frozen=True)
class LeaderboardOptions:
    """``mlfsic leaderboard DIR... [key=value ...]`` (harness.cli.leaderboard)."""

    out: Path | None = field(default=None, metadata={"help": "where the board and the site go (default: the first "
                             "DIR when it is a run dir, <suite_dir>/site for a suite dir; publish=true: "
                             "results/published, or results/published_suites/<suite> for a suite dir)"})
    against: str | None = field(default=None, metadata={"help": "published|RUN_DIR: rank the runs together with "
                                "a reference run, on its episode sets"})
    publish: bool = field(default=False, metadata={"help": "copy one complete run (no DIR: the default sweep's) "
                          "into out= as the reference against=published reads; a suite dir: every member"})


@dataclass(frozen=True)
class ClaimsOptions:
    """``mlfsic claims [key=value ...]`` (studies.lcm_tomm2024.claims)."""

    ablation: Path | None = field(default=None, metadata={"help": "the ablation run, a val-split run of "
                                  "+sweep=lcm_ablation (default: results/published_ablation); none: only the "
                                  "ranking claims (a backbone without an ablation run)"})
    ranking: Path | None = field(default=None, metadata={"help": "the ranking run (default: results/published)"})
    out: Path | None = field(default=None, metadata={"help": "where claims.{csv,json,md} go (default: claims/ "
                             "next to the ablation dir, or the ranking dir with ablation=none)"})


@dataclass(frozen=True)
class MethodsOptions:
    """``mlfsic methods [key=value ...]`` (harness.cli.methods)."""

    method_modules: list[str] = field(default_factory=list, metadata={"help": "import these modules first (on "
                                      "PYTHONPATH), so the methods they @register are listed: [a,b], a,b or a"})


@dataclass(frozen=True)
class CorpusOptions:
    """``mlfsic data prepare openmoji-corpus [key=value ...]``: the tiny teacher's corpus; the defaults are the
    pinned teacher's (``harness.backbones.open_clip.TEACHER_DEFAULTS``)."""

    regime: str = field(default="concept-seen", metadata={"help": "which glyphs of coco-moji's val and test labels the "
                        "corpus leaves out (datasets/openmoji_corpus/regimes.py)", "choices": ("concept-seen", "strict")})
    seed: int = field(default=0, metadata={"help": "the corpus's seed", "min": 0})
    n_images: int = field(default=24000, metadata={"help": "images in the corpus", "min": 1})
    image_size: int = field(default=96, metadata={"help": "image side in pixels", "min": 1})
    results_dir: Path = field(default=Path("results"), metadata={"help": "the corpus goes to "
                              "<results_dir>/cache/corpus"})


@dataclass(frozen=True)
class _EpisodeSizeOptions:
    """K + Q, the images a val or novel label needs: shared by ``data check`` and ``data split``."""

    max_shot: int | None = field(default=None, metadata={"help": "K (default: the run config's largest "
                                 "setting, 5)", "min": 0})
    n_query: int | None = field(default=None, metadata={"help": "Q (default: the run config's n_query, 4)",
                                "min": 1})


@dataclass(frozen=True)
class DataCheckOptions(_EpisodeSizeOptions):
    """``mlfsic data check NAME [key=value ...]``; any other key is a key of the dataset config."""

    open_images: bool = field(default=True, metadata={"help": "open every image with PIL (false: skip that, a "
                              "faster check)"})


@dataclass(frozen=True)
class DataSplitOptions(_EpisodeSizeOptions):
    """``mlfsic data split NAME [key=value ...]``; any other key is a key of the dataset config."""

    seed: int = field(default=0, metadata={"help": "the split's seed", "min": 0})
    out: Path | None = field(default=None, metadata={"help": "the split file (default: the dataset's "
                             "split_file, DIR/split.json)"})
    parts: str | None = field(default=None, metadata={"help": "base/val/test label shares, e.g. 65/15/20 "
                              "(default: 65/15/20)"})
    force: bool = field(default=False, metadata={"help": "replace a split file that holds another split"})


@dataclass(frozen=True)
class ExplainOptions:
    """``mlfsic explain [key=value ...]`` (harness.cli.explain); a key with a ``.`` or a leading ``+`` is a
    run-config override (``overrides``), e.g. ``dataset.generate.n_base=400`` or ``+method_args.lcm.steps=20``."""

    method: str = field(default="lcm", metadata={"help": "an LCM-family method: lcm, wvga or a variant "
                        "(+variants.<name>...)"})
    setting: str = field(default="1shot", metadata={"help": "<K>shot, K >= 1"})
    seed: int = field(default=0, metadata={"help": "the method's seed and the episode set's seed", "min": 0})
    episode: int = field(default=0, metadata={"help": "the episode index in the sweep's episode set", "min": 0})
    n_images: int = field(default=4, metadata={"help": "support images shown (rows)", "min": 1})
    max_labels: int = field(default=4, metadata={"help": "label columns", "min": 1})
    dataset: str = field(default="coco-moji", metadata={"help": "as in mlfsic run"})
    split: str = field(default="val", metadata={"help": "test shows novel-split episodes (never choose "
                       "hyperparameters on them)", "choices": ("val", "test")})
    results_dir: str | None = field(default=None, metadata={"help": "as in mlfsic run (default: results)"})
    out: str | None = field(default=None, metadata={"help": "the PNG (measure=attention: the .json) (default: "
                            "<results_dir>/explain/...)"})
    measure: str | None = field(default=None, metadata={"help": "boxes: kept_inside_box_fraction, attention: "
                                "attention_transfer, over n_episodes episodes, instead of a figure",
                                "choices": ("boxes", "attention")})
    n_episodes: int = field(default=50, metadata={"help": "episodes a measure= averages over", "min": 1})
    theta: float | None = field(default=None, metadata={"help": "the selection threshold applied to the fitted "
                                "method (default: as fitted)"})
    threshold_mode: str | None = field(default=None, metadata={"help": "sigmoid|relative, applied to the fitted "
                                       "method (default: as fitted)"})
    overrides: tuple[str, ...] = field(default=(), metadata={"internal": "the run-config overrides: keys with a "
                                       "'.' or a leading '+'"})

    @property
    def k_shot(self) -> int:
        from mlfsic.harness.protocol.episodes import parse_setting

        return parse_setting(self.setting)


# the dataclass of each key=value subcommand, by its name in messages and --help
SCHEMAS: dict[str, type] = {
    "leaderboard": LeaderboardOptions, "claims": ClaimsOptions, "methods": MethodsOptions,
    "explain": ExplainOptions, "data prepare openmoji-corpus": CorpusOptions, "data check": DataCheckOptions,
    "data split": DataSplitOptions,
}


# -------------------------------------------------------------------------------------------- parser
def option_fields(schema: type) -> list[dataclasses.Field]:
    """The ``key=value`` options of ``schema``: its fields but those marked ``metadata={"internal": ...}``."""
    return [f for f in dataclasses.fields(schema) if "internal" not in f.metadata]


def option_names(schema: type) -> list[str]:
    return [f.name for f in option_fields(schema)]


def unknown_option(command: str, key: str, known: Sequence[str], extra: str = "") -> MlfsicError:
    """The one message of an unknown key, for every subcommand (``extra``: what else is accepted).

    Example:
        >>> str(unknown_option("claims", "ablations", ["ablation", "ranking", "out"]))
        "unknown claims option 'ablations' (did you mean ablation?); known: ablation, ranking, out"
    """
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return MlfsicError(f"unknown {command} option {key!r}{hint}; known: {', '.join(known)}{extra}")


def bad_value(command: str, key: str, value: str, expected: str) -> MlfsicError:
    """The one message of a value of the wrong type or range.

    Example:
        >>> str(bad_value("explain", "seed", "x", "an integer"))
        "explain option seed='x': expected an integer"
    """
    return MlfsicError(f"{command} option {key}={value!r}: expected {expected}")


def key_values(options: Iterable[str]) -> dict[str, str]:
    """``["a=1", "b=x"]`` -> ``{"a": "1", "b": "x"}``; an item without ``=`` is a one-line error.

    Example:
        >>> key_values(["method=lcm", "out=fig.png"])
        {'method': 'lcm', 'out': 'fig.png'}
    """
    values = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or not key:
            raise MlfsicError(f"expected key=value, got {option!r}")
        values[key] = value
    return values


def parse_key_values(command: str, schema: type[T], options: Iterable[str] | dict[str, str],
                     passes: Callable[[str], bool] | None = None, extra: str = "") -> tuple[T, dict[str, str]]:
    """``key=value`` arguments (or their dict) -> (an instance of ``schema``, the keys ``passes`` lets through).

    A key that is no option of ``schema`` and that ``passes`` does not take is ``unknown_option`` (``extra``
    says what else is accepted); a value ``schema``'s type for it does not read, ``bad_value``.

    Example:
        >>> parse_key_values("claims", ClaimsOptions, ["out=x"])
        (ClaimsOptions(ablation=None, ranking=None, out=PosixPath('x')), {})
        >>> parse_key_values("explain", ExplainOptions, ["seed=3", "+method_args.lcm.steps=5"],
        ...                  passes=lambda key: "." in key or key.startswith("+"))[0].seed
        3
    """
    values = options if isinstance(options, dict) else key_values(options)
    fields = {f.name: f for f in option_fields(schema)}
    hints = typing.get_type_hints(schema)
    parsed: dict[str, Any] = {}
    passed: dict[str, str] = {}
    for key, value in values.items():
        if key in fields:
            parsed[key] = _convert(command, key, value, hints[key], fields[key].metadata)
        elif passes is not None and passes(key):
            passed[key] = value
        else:
            raise unknown_option(command, key, list(fields), extra)
    return schema(**parsed), passed


def _convert(command: str, key: str, value: str, kind: Any, metadata: typing.Mapping[str, Any]) -> Any:
    """``value`` read as ``kind`` by OmegaConf's grammar; its ``min`` and ``choices`` checked."""
    from omegaconf import BooleanNode, FloatNode, IntegerNode
    from omegaconf.errors import ValidationError

    kind = _strip_optional(kind)
    if kind in (int, float, bool):
        node = {int: IntegerNode, float: FloatNode, bool: BooleanNode}[kind]
        try:
            result = node(value=value)._value()
        except ValidationError:
            raise bad_value(command, key, value, _expected(kind)) from None
        if "min" in metadata and result < metadata["min"]:
            raise bad_value(command, key, value, f"{_expected(kind)} >= {metadata['min']}")
        return result
    if typing.get_origin(kind) is list:
        return _list_value(command, key, value)
    if "choices" in metadata and value not in metadata["choices"]:
        raise bad_value(command, key, value, f"one of {', '.join(metadata['choices'])}")
    if kind is Path:
        if not value:
            raise bad_value(command, key, value, "a path")
        return Path(value).expanduser()
    return value


def _list_value(command: str, key: str, value: str) -> list[str]:
    """``[a,b]`` (OmegaConf's grammar), ``a,b`` or ``a`` -> the strings; ``''`` or ``[]``: none."""
    import yaml
    from omegaconf._utils import get_yaml_loader

    try:
        loaded = yaml.load(value, Loader=get_yaml_loader()) if value.strip().startswith("[") else value
    except yaml.YAMLError:
        raise bad_value(command, key, value, "a list [a,b]") from None
    if isinstance(loaded, list):
        return [str(item).strip() for item in loaded if str(item).strip()]
    return [part.strip() for part in str(loaded).split(",") if part.strip()]


def _strip_optional(kind: Any) -> Any:
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        inner = [arg for arg in typing.get_args(kind) if arg is not type(None)]
        return inner[0] if len(inner) == 1 else str
    return kind


def _expected(kind: Any) -> str:
    return {int: "an integer", float: "a number", bool: "true or false"}[kind]


# ---------------------------------------------------------------------------------------------- help
def type_name(kind: Any) -> str:
    """How ``--help`` names a field's type: int, float, bool, str, path, list, with ``|none`` when optional."""
    inner = _strip_optional(kind)
    name = "list" if typing.get_origin(inner) is list else {Path: "path"}.get(inner, getattr(inner, "__name__",
                                                                                          str(inner)))
    return name + ("|none" if inner is not kind else "")


def default_text(f: dataclasses.Field) -> str:
    """A field's default as ``--help`` shows it (``key=value`` syntax; ``none``: unset)."""
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    if default is None:
        return "none"
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, list):
        return "[" + ",".join(map(str, default)) + "]"
    return str(default)


def options_epilog(schema: type, passes: str = "") -> str:
    """The ``--help`` text of ``schema``'s options: ``key=TYPE (default: D)`` then the help, one per option;
    ``passes``: a closing paragraph on the keys passed on. A field without help is an error here, so a new
    option cannot go undocumented."""
    hints = typing.get_type_hints(schema)
    lines = ["options (key=value):"]
    for f in option_fields(schema):
        if not f.metadata.get("help"):
            raise TypeError(f"{schema.__name__}.{f.name} has no field(metadata={{'help': ...}})")
        extra = f", >= {f.metadata['min']}" if "min" in f.metadata else ""
        extra += f", one of {'|'.join(f.metadata['choices'])}" if "choices" in f.metadata else ""
        lines.append(f"  {f.name}={type_name(hints[f.name])} (default: {default_text(f)}{extra})")
        lines.append(f"      {f.metadata['help']}")
    if passes:
        lines += ["", passes]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ train commands
def split_out_option(overrides: list[str], expected: str) -> tuple[Path | None, list[str]]:
    """``out=PATH`` (where to write the files to ship) apart from the Hydra overrides of a train command."""
    out: Path | None = None
    hydra_overrides = []
    for override in overrides:
        if override.startswith("out="):
            if not override[4:]:
                raise MlfsicError(f"out= needs {expected}")
            out = Path(override[4:]).expanduser()
        else:
            hydra_overrides.append(override)
    return out, hydra_overrides
