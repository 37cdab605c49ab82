"""``mlfsic methods``: the registered methods, their settings, features and origin, and broken plug-ins."""

from __future__ import annotations

from mlfsic.methods.registry import available_methods, broken_methods


def methods_command() -> int:
    rows = [(info.name, info.cls.settings_label(),
             ("local" if info.cls.needs_local_features else "global") + (", open_clip" if info.cls.needs_clip else ""),
             info.origin) for info in available_methods().values()]
    rows += [(info.name, f"BROKEN: {info.error}", "-", f"{info.origin} ({info.target})")
             for info in broken_methods().values()]
    header = ("method", "settings", "features", "origin")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    for row in [header] + rows:
        print("  ".join(str(value).ljust(width) for value, width in zip(row, widths)).rstrip())
    return 0
