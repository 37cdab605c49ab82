"""``load_sweep(overrides)``: the command line's Hydra overrides -> a resolved, validated ``Sweep``.

Composition (``harness/config.py``), then, with ``against=``, the reference run's episode keys for those the
user did not set (``against_run``), then validation (``spec.resolve_sweep``). Every command that runs or
inspects a sweep starts here.
"""

from __future__ import annotations

from collections.abc import Sequence

from mlfsic.harness.config import compose_config, to_container
from mlfsic.harness.sweep.against_run import EPISODE_KEYS, load_reference, with_reference_episodes
from mlfsic.harness.sweep.spec import Sweep, resolve_against, resolve_sweep


def load_sweep(overrides: Sequence[str] = ()) -> Sweep:
    """``resolve_sweep(compose_config(overrides))``; with ``against``, the episode keys the user did not
    set (``reference_run.EPISODE_KEYS``: setting, seeds, n_episodes, ...) are the reference run's."""
    cfg = compose_config(list(overrides))
    if cfg.get("against") is None:
        return resolve_sweep(cfg)
    config = to_container(cfg)
    path = resolve_against(config["against"])
    assert path is not None
    defaults = to_container(compose_config([]))
    named = {override_key(o) for o in overrides}
    given = {key for key in (*EPISODE_KEYS, "seed") if key in named or config.get(key) != defaults.get(key)}
    return resolve_sweep(with_reference_episodes(config, given, load_reference(path)))


def override_key(override: str) -> str:
    """The top-level key an override sets: ``+seeds=[0]`` -> ``seeds``, ``dataset.root=x`` -> ``dataset``."""
    return override.lstrip("+~").split("=", 1)[0].split(".", 1)[0].strip()
