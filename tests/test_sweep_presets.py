"""The ablation presets ablate the shipped models: their full variant is the default run's configuration,
and every other variant changes one switch of it (configs/sweep/*_ablation.yaml)."""

from __future__ import annotations

import pytest

from mlfsic.harness.config import config_dir
from mlfsic.harness.sweep.evaluate import method_spec
from mlfsic.harness.sweep.load import load_sweep

# hyperparameters that form one switch together (the released selection rule is a mode and its theta)
SWITCH_GROUPS = ({"threshold_mode", "theta"},)


def _full_config(sweep, name: str) -> dict:
    entry = sweep.methods[name]
    return method_spec(name, entry.config, base=entry.base).config


@pytest.mark.parametrize("preset, method", [("lcm_ablation", "lcm")])
def test_ablation_full_variant_is_the_default_model_and_variants_change_one_switch(preset, method):
    default = load_sweep([f"method=[{method}]"])
    ablation = load_sweep([f"+sweep={preset}"])
    assert ablation.eval_split == "val" and ablation.fit_val  # val split, with the default run's model selection
    assert _full_config(ablation, method) == _full_config(default, method)
    assert method_spec(method, ablation.methods[method].config).fit_hash == method_spec(
        method, default.methods[method].config).fit_hash  # the very checkpoint of the default run
    full = _full_config(ablation, method)
    variants = [name for name, entry in ablation.methods.items() if entry.is_variant and entry.base == method]
    assert variants
    for name in variants:
        config = _full_config(ablation, name)
        changed = {key for key in full if config[key] != full[key]}
        assert changed, f"{name} equals {method}"
        assert len(changed) == 1 or any(changed <= group for group in SWITCH_GROUPS), (name, changed)


def test_every_preset_is_a_global_package_that_resolves():
    for path in sorted((config_dir() / "sweep").glob("*.yaml")):
        assert path.read_text().splitlines()[0] == "# @package _global_", path
        if path.stem not in ("mkt_ablation", "mkt_release"):  # need the tiny-teacher backbone
            assert load_sweep([f"+sweep={path.stem}"]).methods, path
