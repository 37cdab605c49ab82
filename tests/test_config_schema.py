"""One config schema (harness.config_schema): every run-config key's type and default are declared once, the yaml
files only choose, and what the library refuses reads as the one-line errors of the rest of the harness."""

from __future__ import annotations

import pytest
import yaml

from mlfsic.harness.config import compose_config, config_dir, to_container
from mlfsic.harness.errors import MlfsicError
from mlfsic.harness import config_schema as schema
from mlfsic.harness.sweep.spec import resolve_sweep


def _documented_defaults() -> dict:
    """The ``#: key: default`` lines of configs/config.yaml, read as yaml."""
    lines = (config_dir() / "config.yaml").read_text().splitlines()
    return yaml.safe_load("\n".join(line[3:] for line in lines if line.startswith("#: ") or line == "#:"))


def test_config_yaml_only_chooses_and_documents_the_schemas_defaults():
    written = yaml.safe_load((config_dir() / "config.yaml").read_text())
    assert written == {"defaults": [schema.SCHEMA_NAME, {"dataset": "coco-moji"}, "_self_"]}  # no value of its own
    assert _documented_defaults() == schema.defaults()  # the documentation says what the schema holds


def test_composition_fills_in_the_schemas_defaults():
    composed = to_container(compose_config([]))
    assert {key: value for key, value in composed.items() if key != "dataset"} == schema.defaults()
    assert tuple(composed) == schema.top_level_keys()


def test_every_value_says_what_it_accepts():
    assert "resources.fit.num_gpus" in schema.leaf_keys() and "resources.fit" not in schema.leaf_keys()
    for key in schema.leaf_keys():
        assert schema.schema_field(key).metadata.get("expected"), key


def test_small_cnn_settings_are_the_ones_coco_moji_chooses():
    """SmallCnnSettings holds the small_cnn defaults; coco-moji.yaml writes the same values out, because they are
    part of the run id's hash and of the pinned weights' record (datasets/coco_moji/weights)."""
    from mlfsic.harness.backbones.small_cnn import SmallCnnSettings

    backbone = yaml.safe_load((config_dir() / "dataset" / "coco-moji.yaml").read_text())["backbone"]
    defaults = SmallCnnSettings().training()
    assert {key: backbone[key] for key in defaults} == defaults
    assert "extract_batch_size" not in backbone  # not a training key: its default stays in SmallCnnSettings only
    from mlfsic.harness.backbones.weights import package_file, pinned_record

    record = pinned_record(package_file(backbone["pinned_weights"]))
    assert record["trained_on"]["backbone"] == defaults  # the shipped weights were trained with these settings


@pytest.mark.parametrize(("overrides", "message"), [
    (["n_episode=5"], r"^n_episode=5: unknown config key 'n_episode' \(did you mean n_episodes\?\); expected one of "
                      r"method, "),
    (["ray.num_cpu=2"], r"^ray.num_cpu=2: unknown config key 'ray.num_cpu' \(did you mean ray.num_cpus\?\); "
                        r"expected one of ray.address, ray.num_cpus, ray.object_store_memory$"),
    (["resources.fitt.num_gpus=1"], r"unknown config key 'resources.fitt' \(did you mean resources.fit\?\)"),
    (["n_episodes=many"], r"^n_episodes=many: 'many' is not an integer; expected an integer >= 1$"),
    (["n_episodes=1.5"], r"^n_episodes=1.5: 1.5 is not an integer; expected an integer >= 1$"),
    (["ray.num_cpus=x"], r"^ray.num_cpus=x: 'x' is not an integer; expected null \(all cores\) or an integer >= 1$"),
    (["save_scores=1"], r"^save_scores=1: 1 is not a boolean; expected true or false$"),
    (["fit_val=no"], r"^fit_val=no: 'no' is not a boolean; expected true or false$"),
    (["~ray.num_cpus"], r"^ray.num_cpus: the config key is missing \(deleted with ~ray.num_cpus\?\); expected a value"),
    (["~resources.fit"], r"^resources.fit: the config key is missing \(deleted with ~resources.fit\?\)"),
])
def test_the_schemas_refusals_are_one_line_errors(overrides, message):
    with pytest.raises(MlfsicError, match=message):
        resolve_sweep(compose_config(overrides))


def test_a_config_recorded_before_a_key_existed_composes_again():
    """``sweep.store`` derives a run's command from its recorded config: keys added since are deleted (``~key``)."""
    from mlfsic.harness.sweep.store import _derived_overrides

    recorded = to_container(compose_config(["ray.num_cpus=2"]))
    del recorded["resources"]["extract"], recorded["resources"]["fit"]
    assert _derived_overrides(recorded) == ["ray.num_cpus=2", "~resources.extract", "~resources.fit"]


def test_a_plain_mapping_is_checked_by_the_same_schema():
    config = to_container(compose_config(["method=[random]"]))
    with pytest.raises(MlfsicError, match=r"^n_query=four: 'four' is not an integer; expected an integer >= 1$"):
        resolve_sweep({**config, "n_query": "four"})
    with pytest.raises(MlfsicError, match=r"^ray.object_store_memory: the config key is missing"):
        resolve_sweep({**config, "ray": {"address": None, "num_cpus": None}})
    with pytest.raises(MlfsicError, match=r"^bogus=1: unknown config key 'bogus'"):
        resolve_sweep({**config, "bogus": 1})
    with pytest.raises(MlfsicError, match=r"^protocol=episodic: 'episodic' is not known; expected one of release, "):
        resolve_sweep({**config, "protocol": "episodic"})
    typed = resolve_sweep({**config, "resources": {**config["resources"], "num_cpus": "2"}})  # read as the schema types it
    assert typed.resources.fit.num_cpus == 2.0 and typed.config["resources"]["num_cpus"] == "2"  # recorded as given
