"""Option parsing shared by the subcommands: ``key=value`` lists and the ``out=`` of the train commands."""

from __future__ import annotations

from pathlib import Path

from mlfsic.harness.errors import MlfsicError


def key_values(options: list[str]) -> dict[str, str]:
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
