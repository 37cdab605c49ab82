"""The sweep is resolved once (harness.sweep): typed fields, the run id derivation, episode-set records."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from mlfsic.harness.config import compose_config, to_container
from mlfsic.harness.sweep import Sweep, load_sweep, resolve_sweep

# Run ids computed by the code before the Sweep existed (harness.runner.derive_run_id on the composed
# config): the same command must keep its run dir, so resuming an old run still works.
RUN_IDS_BEFORE_THE_SWEEP = [
    ([], "coco-moji-06bc8b7bfc9f"),
    (["method=[protonet,laso]", "setting=[1shot]", "seeds=[0,1]", "n_episodes=50", "+method_args.protonet.lr=0.01",
      "results_dir=/tmp/some/results", "ray.num_cpus=2", "resources.num_cpus=2", "max_retries=1"],
     "coco-moji-99cee7164fbe"),
    (["seed=3", "dataset.generate.n_base=400", "dataset.backbone.epochs=1", "save_scores=true"],
     "coco-moji-f1b1d72edbd5"),
]


@pytest.mark.parametrize("overrides,run_id", RUN_IDS_BEFORE_THE_SWEEP)
def test_run_id_is_unchanged_for_identical_configs(overrides, run_id):
    assert load_sweep(overrides).run_id == run_id


def test_run_id_ignores_execution_options_only():
    base = load_sweep(["method=[random]"]).run_id
    assert load_sweep(["method=[random]", "ray.num_cpus=1", "resources.num_cpus=2", "max_retries=0"]).run_id == base
    assert load_sweep(["method=[random]", "n_episodes=10"]).run_id != base
    assert load_sweep(["method=[random]", "run_id=mine"]).run_id == "mine"


def test_sweep_is_typed_frozen_and_keeps_the_resolved_config(tmp_path):
    cfg = compose_config(["method=random", "setting=1shot", "seeds=[2,0]", f"results_dir={tmp_path / 'r'}",
                          "resources.num_gpus=0.5", "ray.address=auto", "n_way=5"])
    sweep = resolve_sweep(cfg)
    assert isinstance(sweep, Sweep)
    assert list(sweep.methods) == ["random"] and sweep.methods["random"].base == "random"
    assert sweep.settings == ("1shot",) and sweep.seeds == (2, 0) and sweep.n_way == 5
    assert sweep.results_dir == (tmp_path / "r").resolve() and sweep.results_dir.is_absolute()
    assert sweep.resources.num_gpus == 0.5 and sweep.resources.num_cpus == 1.0
    assert sweep.ray.address == "auto"
    assert Path(sweep.dataset["root"]).is_absolute()
    assert sweep.config == to_container(cfg)  # run.json["config"]: the resolved config as composed
    with pytest.raises(dataclasses.FrozenInstanceError):
        sweep.n_episodes = 3  # type: ignore[misc]
    assert not (tmp_path / "r").exists()  # resolving writes nothing


def test_seed_overrides_seeds():
    assert load_sweep(["method=[random]", "seed=7"]).seeds == (7,)
