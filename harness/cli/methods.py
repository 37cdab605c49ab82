"""``mlfsic methods [method_modules=[...]] [--card NAME]``: the registered methods, their settings, features
and origin, then the plug-ins that failed to load (each on its own line, so the table keeps its width);
``--card NAME``: one method's card: what it is, its hyperparameters as a run uses them, and its declared
deviations from its paper or released code (``methods.api.Deviation``)."""

from __future__ import annotations

from collections.abc import Iterable

from mlfsic.harness.cli.options import MethodsOptions, parse_key_values
from mlfsic.methods.registry import available_methods, broken_methods, import_method_modules


def methods_command(options: Iterable[str] | dict[str, str] = (), card: str | None = None) -> int:
    """``mlfsic methods [method_modules=[...]] [--card NAME]`` (the options: ``options.MethodsOptions``)."""
    parsed, _ = parse_key_values("methods", MethodsOptions, options)
    import_method_modules(parsed.method_modules)
    if card is not None:
        print(method_card(card))
        return 0
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


def method_card(name: str) -> str:
    """The text of ``mlfsic methods --card NAME``."""
    import inspect

    from mlfsic.harness.config import method_yaml
    from mlfsic.methods.api import constructor_defaults
    from mlfsic.methods.registry import get_method_class

    cls = get_method_class(name)
    info = available_methods()[name]
    doc = inspect.cleandoc(cls.__doc__ or "").split("\n\n")[0].replace("\n", " ")
    lines = [f"{name}  ({info.origin}; {cls.__module__}.{cls.__qualname__})",
             f"settings: {cls.settings_label()}; features: {'local' if cls.needs_local_features else 'global'}"
             + (", open_clip" if cls.needs_clip else ""), "", doc, "",
             f"hyperparameters (constructor defaults, then configs/methods/{name}.yaml):"]
    values = {**constructor_defaults(cls), **method_yaml(name)}
    lines += [f"  {key} = {values[key]!r}" for key in sorted(values)] or ["  (none)"]
    lines += ["", f"deviations from its paper / released code ({len(cls.deviations)} declared):"]
    for number, deviation in enumerate(cls.deviations, start=1):
        lines += [f"  {number}. {deviation.what}", f"     why: {deviation.why}",
                  f"     effect: {deviation.effect}" + (f" (measured on {deviation.split})" if deviation.split else "")]
    if not cls.deviations:
        lines.append("  (none declared)")
    return "\n".join(lines)
