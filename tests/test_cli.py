"""The ``mlfsic`` command: listing, one-line errors and exit codes (run as a real subprocess)."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _mlfsic(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlfsic.harness.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_methods_lists_builtins_and_the_entry_point_plugin():
    result = _mlfsic("methods")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    names = {line.split()[0] for line in lines[1:]}
    assert {"random", "protonet", "laso", "wordvec-zeroshot", "example-cosine"} <= names
    plugin = next(line for line in lines if line.startswith("example-cosine"))
    assert "entry point mlfsic-example-plugin" in plugin and "Kshot" in plugin


def test_bad_override_is_a_one_line_error(tmp_path):
    result = _mlfsic("run", "no_such_key=1", f"results_dir={tmp_path}")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("mlfsic: error:")
    assert "no_such_key" in result.stderr


# (override, the key the one-line error must name). Every documented key; FILE is an existing file.
BAD_OVERRIDES = [
    ("seeds=[x]", "seeds=[x]"),
    ("seeds=[0,0]", "seeds"),
    ("seeds=[]", "seeds"),
    ("seeds=-1", "seeds"),
    ("seed=abc", "seed=abc"),
    ("n_episodes=0", "n_episodes"),
    ("n_episodes=many", "n_episodes"),
    ("n_query=-2", "n_query"),
    ("n_way=0", "n_way"),
    ("n_way=all", "n_way"),
    ("setting=[oneshot]", "setting"),
    ("setting=[1]", "setting"),
    ("setting=1shot,5shot", "setting"),
    ("method=[nope]", "method"),
    ("method=[all,protonet]", "method"),
    ("method=[]", "method"),
    ("method_modules=[no_such_module_xyz]", "method_modules"),
    ("dataset=nope", "dataset=nope"),
    ("dataset=coco", "dataset.root"),
    ("dataset.backbone.kind=vgg", "dataset.backbone.kind"),
    ("dataset.split_file=nope.json", "dataset.split_file"),
    ("dataset.generate.n_base=x", "dataset.generate.n_base"),
    ("protocol=episodic-v2", "protocol"),
    ("eval_split=train", "eval_split"),
    ("chunk_episodes=0", "chunk_episodes"),
    ("max_retries=-1", "max_retries"),
    ("max_retries=often", "max_retries"),
    ("save_scores=yes", "save_scores"),
    ("run_id=../escape", "run_id"),
    ("resources.num_cpus=0", "resources.num_cpus"),
    ("resources.num_gpus=-1", "resources.num_gpus"),
    ("resources.num_gpus=1.5", "resources.num_gpus"),
    ("resources.num_gpus=one", "resources.num_gpus"),
    ("resources.fit.num_gpus=-1", "resources.fit.num_gpus"),
    ("resources.evaluate.num_cpus=0", "resources.evaluate.num_cpus"),
    ("resources.extract.num_gpus=1.5", "resources.extract.num_gpus"),
    ("+resources.fit.memory=1", "resources.fit.memory"),
    ("+resources.memory=1", "resources.memory"),
    ("ray.num_cpus=0", "ray.num_cpus"),
    ("ray.object_store_memory=1000", "ray.object_store_memory"),
    ("ray.address=''", "ray.address"),
    ("ray.bogus=1", "ray.bogus"),
    ("embeddings.encoder=word2vec", "embeddings.encoder"),
    ("embeddings.encoder=hf", "embeddings.path"),
    ("+method_args.nope.lr=1", "method_args.nope"),
    ("+method_args.protonet.nope=1", "method_args.protonet.nope"),
    ("+method_args.protonet.lr=abc", "method_args.protonet.lr"),
    ("+method_args.protonet.embed_dim=1.5", "method_args.protonet.embed_dim"),
    ("+method_args.laso.union_augmentation=maybe", "method_args.laso.union_augmentation"),
    ("+method_args.protonet.seed=3", "method_args.protonet.seed"),
    ("method_args.protonet.lr=0.1", "method_args.protonet.lr"),
    ("+variants.p32.embed_dim=32", "variants.p32"),
    ("+variants.p32.method=nope", "variants.p32.method"),
    ("+variants.protonet.method=protonet", "variants.protonet"),
    ("+variants.a__b.method=protonet", "variants.a__b"),
    ("+variants.p32={method:protonet,embed_dim:wide}", "variants.p32.embed_dim"),
    ("+variants.p32={method:protonet,nope:1}", "variants.p32.nope"),
    ("+sweep=nope", "sweep=nope"),
    ("results_dir=FILE", "results_dir"),
    ("no_such_key=1", "no_such_key"),
    ("+no_such_key=1", "no_such_key"),
    ("~seeds", "seeds"),
    ("seeds=[0,1", "seeds=[0,1"),
    ("seeds", "seeds"),
    ("=3", "'=3'"),
    ("seeds=${oops}", "seeds"),
]


@pytest.fixture
def no_sweep(monkeypatch):
    """Fails the test if a sweep is ever started: every bad override must stop before the runner."""
    import mlfsic.harness.sweep.runner as runner

    def refuse(*args, **kwargs):
        raise AssertionError("run_sweep was called")

    monkeypatch.setattr(runner, "run_sweep", refuse)


@pytest.mark.parametrize("override,key", BAD_OVERRIDES, ids=[o for o, _ in BAD_OVERRIDES])
def test_bad_override_is_one_line_naming_the_key(override, key, tmp_path, capsys, no_sweep):
    from mlfsic.harness.cli import main

    existing_file = tmp_path / "a-file"
    existing_file.write_text("not a directory")
    results = tmp_path / "results"
    override = override.replace("FILE", str(existing_file))
    argv = ["run", f"results_dir={results}", override] if not override.startswith("results_dir") else ["run", override]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("mlfsic: error: ") and err.count("\n") == 1, err
    assert key in err and "Traceback" not in err
    assert "expected" in err  # what is accepted
    assert not results.exists()  # nothing written


def test_episodes_command_validates_the_same_way(tmp_path, capsys):
    from mlfsic.harness.cli import main

    assert main(["episodes", f"results_dir={tmp_path / 'r'}", "n_query=zero"]) == 2
    assert "n_query=zero" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_leaderboard_of_a_missing_run_dir_fails_cleanly(tmp_path):
    result = _mlfsic("leaderboard", str(tmp_path / "missing"))
    assert result.returncode == 2 and result.stderr.startswith("mlfsic: error:")


def test_data_prepare_and_episodes_commands(tmp_path):
    out = tmp_path / "moji"
    result = _mlfsic("data", "prepare", "coco-moji", f"out={out}", "seed=3", "n_base=120", "n_val=30", "n_test=90",
                     f"preview={tmp_path / 'sheet.png'}")
    assert result.returncode == 0, result.stderr
    assert (out / "annotations.json").is_file() and (tmp_path / "sheet.png").is_file()
    assert str(out) in result.stdout
    result = _mlfsic("data", "prepare", "coco-moji", f"out={out}", "bogus=1")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "unknown data prepare option 'bogus'; known: out, seed, image_size, n_base" in result.stderr
    result = _mlfsic("data", "prepare", "nope")
    assert result.returncode == 2 and "unknown dataset 'nope'; known: coco, coco-format, coco-moji" in result.stderr

    overrides = [f"results_dir={tmp_path}", f"dataset.root={out}", "setting=[1shot]", "seed=0", "n_episodes=10"]
    first = _mlfsic("episodes", *overrides)
    second = _mlfsic("episodes", *overrides)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout  # same id and path: the existing set is reused
    episode_set_id, setting, seed, path = first.stdout.split()
    assert (setting, seed) == ("1shot", "seed0") and path.endswith(f"{episode_set_id}.json")


def test_methods_card_prints_what_a_method_is_and_its_declared_deviations():
    from mlfsic.harness.cli.methods import method_card
    from mlfsic.methods.registry import get_method_class

    text = method_card("linear-probe")
    cls = get_method_class("linear-probe")
    assert text.startswith("linear-probe  (built-in; mlfsic.methods.linear_probe.LinearProbe)")
    assert "l2_grid = [" in text and f"({len(cls.deviations)} declared)" in text and len(cls.deviations) >= 1
    assert all(d.what in text and d.effect in text for d in cls.deviations)
    assert "(none declared)" in method_card("random") or "declared):" in method_card("random")
    listed = _mlfsic("methods", "--card", "no-such-method")
    assert listed.returncode == 2 and listed.stderr.count("\n") == 1 and "unknown method 'no-such-method'" in listed.stderr
