"""The one exception type the CLI turns into a one-line message and a non-zero exit code, and the one
format of a bad config value (``invalid_value``)."""

from __future__ import annotations

from typing import Any


class MlfsicError(Exception):
    """Bad input or a failed precondition. The message names the file, field or label at fault."""


def show_value(value: Any) -> str:
    """A value as it is typed in an override: ``[0,x]``, ``null``, ``true``, ``{method:protonet}``."""
    if value is None:
        return "null"
    if value == "":
        return "''"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(show_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{show_value(v)}" for k, v in value.items()) + "}"
    return str(value).replace("\n", "\\n")  # the message stays one line


def invalid_value(key: str, value: Any, expected: str, problem: str | None = None) -> MlfsicError:
    """``<key>=<value>: <problem>; expected <what is accepted>`` -- one line.

    Example:
        >>> str(invalid_value("n_episodes", 0, "an integer >= 1"))
        'n_episodes=0: expected an integer >= 1'
    """
    where = f"{key}={show_value(value)}"
    return MlfsicError(f"{where}: {problem}; expected {expected}" if problem else f"{where}: expected {expected}")
