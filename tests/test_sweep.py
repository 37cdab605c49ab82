"""The sweep is resolved once (harness.sweep): typed fields, the run id derivation, episode-set records."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from mlfsic.harness.config import compose_config, to_container
from mlfsic.harness.sweep.load import load_sweep
from mlfsic.harness.sweep.spec import Sweep, resolve_sweep

# Run ids of three commands, pinned: the same command must keep its run dir, so resuming a run still works.
# A change of the default configs that moves them must be deliberate (it starts new run dirs); last moved by
# the default protocol becoming the release rule (protocol: release, 2026-12-07).
RUN_IDS_BEFORE_THE_SWEEP = [
    ([], "coco-moji-a87e4565701b"),
    (["method=[protonet,laso]", "setting=[1shot]", "seeds=[0,1]", "n_episodes=50", "+method_args.protonet.lr=0.01",
      "results_dir=/tmp/some/results", "ray.num_cpus=2", "resources.num_cpus=2", "max_retries=1"],
     "coco-moji-709e60a2084d"),
    (["seed=3", "dataset.generate.n_base=400", "dataset.backbone.epochs=1", "save_scores=true"],
     "coco-moji-cf2c4cd82cd8"),
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
    assert sweep.dataset.root.is_absolute() and Path(sweep.dataset.as_dict()["root"]).is_absolute()
    assert sweep.config == to_container(cfg)  # run.json["config"]: the resolved config as composed
    with pytest.raises(dataclasses.FrozenInstanceError):
        sweep.n_episodes = 3  # type: ignore[misc]
    assert not (tmp_path / "r").exists()  # resolving writes nothing


def test_each_stage_asks_for_its_own_resources_with_the_top_level_keys_as_defaults():
    """A stage's own key wins; else num_cpus is resources.num_cpus for every stage and num_gpus is
    resources.num_gpus for extract and fit, 0 for evaluate (configs/config.yaml)."""
    from mlfsic.harness.sweep.spec import TaskResources

    default = load_sweep(["method=[random]"]).resources
    assert default.extract == default.fit == default.evaluate == TaskResources(num_cpus=1.0, num_gpus=0.0)
    gpu = load_sweep(["method=[random]", "resources.num_gpus=0.5", "resources.num_cpus=2"]).resources
    assert gpu.extract == gpu.fit == TaskResources(num_cpus=2.0, num_gpus=0.5)
    assert gpu.evaluate == TaskResources(num_cpus=2.0, num_gpus=0.0)
    assert gpu.key("fit", "num_gpus") == "resources.num_gpus" and gpu.key("evaluate", "num_gpus") == "resources.evaluate.num_gpus"
    own = load_sweep(["method=[random]", "resources.num_gpus=0.5", "resources.fit.num_gpus=0",
                      "resources.evaluate.num_cpus=0.5", "resources.extract.num_gpus=1"]).resources
    assert own.as_record() == {"extract": {"num_cpus": 1.0, "num_gpus": 1.0}, "fit": {"num_cpus": 1.0, "num_gpus": 0.0},
                               "evaluate": {"num_cpus": 0.5, "num_gpus": 0.0}}
    assert own.key("extract", "num_gpus") == "resources.extract.num_gpus" and own.key("fit", "num_cpus") == "resources.num_cpus"
    # execution options: the run id is the one of the default resources
    assert load_sweep(["method=[random]", "resources.fit.num_gpus=0.5"]).run_id == load_sweep(["method=[random]"]).run_id


def test_seed_overrides_seeds():
    assert load_sweep(["method=[random]", "seed=7"]).seeds == (7,)


def test_sweep_preset_resolves_to_variants():
    sweep = load_sweep(["+sweep=protonet_ablation", "+method_args.protonet.n_episodes=100", "seeds=[0]"])
    assert list(sweep.methods) == ["protonet-e32", "protonet-e128"]
    assert sweep.settings == ("1shot", "5shot") and sweep.seeds == (0,)
    e32, e128 = sweep.methods["protonet-e32"], sweep.methods["protonet-e128"]
    assert e32.base == e128.base == "protonet" and e32.is_variant
    # base yaml, then method_args.<base>, then the variant's own values
    assert e32.config == {"n_episodes": 100, "embed_dim": 32} and e128.config["embed_dim"] == 128
    assert sweep.config["variants"]["protonet-e32"] == {"method": "protonet", "embed_dim": 32}  # run.json["config"]
    assert sweep.run_id != load_sweep(["method=[protonet]", "setting=[1shot,5shot]", "seeds=[0]"]).run_id


def test_variant_hashes_cover_the_merged_hyperparameters_not_the_name():
    from mlfsic.harness.sweep.evaluate import method_spec

    sweep = load_sweep(["+sweep=protonet_ablation", "method=[protonet,protonet-e32,protonet-e128]"])
    specs = {name: method_spec(m.name, m.config, base=m.base) for name, m in sweep.methods.items()}
    assert specs["protonet-e32"].method == "protonet" and specs["protonet-e32"].name == "protonet-e32"
    assert specs["protonet-e32"].config["embed_dim"] == 32  # every hyperparameter spelled out
    assert specs["protonet-e32"].config_hash != specs["protonet"].config_hash
    # embed_dim=128 is protonet's default: the same model, so the same checkpoint
    assert specs["protonet-e128"].config_hash == specs["protonet"].config_hash
    assert specs["protonet"].base == ""


def test_all_runs_registered_methods_and_variants():
    sweep = load_sweep(["+variants.p16.method=random", "method=all"])
    assert "p16" in sweep.methods and "random" in sweep.methods and sweep.methods["p16"].base == "random"


def test_method_args_of_a_variant_points_to_variants():
    from mlfsic.harness.errors import MlfsicError

    with pytest.raises(MlfsicError, match=r"variants\.protonet-e32\.<hyperparameter>"):
        load_sweep(["+sweep=protonet_ablation", "+method_args.protonet-e32.lr=0.1"])
    with pytest.raises(MlfsicError, match="variants of variants"):
        load_sweep(["+sweep=protonet_ablation", "+variants.x.method=protonet-e32"])


def test_fit_val_only_with_eval_split_val_and_run_id_unchanged_when_off():
    from mlfsic.harness.errors import MlfsicError
    from mlfsic.harness.sweep.evaluate import fit_splits

    assert load_sweep(["eval_split=val", "fit_val=true"]).fit_val
    with pytest.raises(MlfsicError, match="fit_val"):
        load_sweep(["fit_val=true"])
    assert load_sweep(["fit_val=false"]).run_id == load_sweep([]).run_id  # a key that is off leaves the run id
    assert fit_splits("val") == ("base",) and fit_splits("val", fit_val=True) == ("base", "val")
    assert fit_splits("test") == ("base", "val")


def test_predict_reports_sum_counts_and_weight_the_rest_by_adapted_episodes(tmp_path):
    import pandas as pd

    from mlfsic.harness.sweep.store import ChunkResult, predict_reports, write_chunk

    empty = pd.DataFrame()
    for chunk, (episodes, kept) in enumerate([(100, 1.0), (50, 0.4)]):
        report = {"adapted_episodes": episodes, "adapt_steps": 10, "kept_fraction": kept}
        write_chunk(tmp_path, f"lcm__5shot__seed0__abc__chunk{chunk:04d}", ChunkResult(empty, empty, None, report=report))
    write_chunk(tmp_path, "protonet__5shot__seed0__abc__chunk0000", ChunkResult(empty, empty, None))
    names = ["lcm__5shot__seed0__abc__chunk0000", "lcm__5shot__seed0__abc__chunk0001",
             "protonet__5shot__seed0__abc__chunk0000"]
    reports = predict_reports(tmp_path, names)
    assert list(reports) == ["lcm__5shot__seed0"]  # a method without predict_report has none
    assert reports["lcm__5shot__seed0"] == {"chunks": 2, "adapted_episodes": 150, "adapt_steps": 10,
                                            "kept_fraction": round((100 * 1.0 + 50 * 0.4) / 150, 6)}
