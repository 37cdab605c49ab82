"""``mlfsic methods [method_modules=[...]]``: the registered methods, their settings, features and origin,
then the plug-ins that failed to load (each on its own lines, so the table keeps its width)."""

from __future__ import annotations

import difflib

from mlfsic.harness.errors import MlfsicError
from mlfsic.methods.registry import available_methods, broken_methods, import_method_modules

OPTIONS = ("method_modules",)


def parse_module_list(value: str) -> list[str]:
    """``[a,b]``, ``a,b`` or ``a`` -> the module names.

    Example:
        >>> parse_module_list("[my_method, other]")
        ['my_method', 'other']
    """
    return [part.strip() for part in value.strip().removeprefix("[").removesuffix("]").split(",") if part.strip()]


def methods_command(options: dict[str, str] | None = None) -> int:
    options = options or {}
    for key in options:
        if key not in OPTIONS:
            close = difflib.get_close_matches(key, OPTIONS, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise MlfsicError(f"mlfsic methods: unknown option {key!r}{hint}; expected {', '.join(OPTIONS)}=[...]")
    import_method_modules(parse_module_list(options.get("method_modules", "")))
    rows = [(info.name, info.cls.settings_label(),
             ("local" if info.cls.needs_local_features else "global") + (", open_clip" if info.cls.needs_clip else ""),
             info.origin) for info in available_methods().values()]
    header = ("method", "settings", "features", "origin")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    for row in [header] + rows:
        print("  ".join(str(value).ljust(width) for value, width in zip(row, widths)).rstrip())
    broken = broken_methods()
    if broken:
        print(f"BROKEN plug-ins ({len(broken)}, failed to load and skipped; fix or uninstall them):")
        for info in broken.values():
            print(f"{info.name}  BROKEN: {info.error}  [{info.origin}, {info.target}]")
    return 0
