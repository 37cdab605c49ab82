"""README's paths as a new user walks them (issue 38): the one-file method of "Your own method in one file",
``mlfsic methods`` listing it, the up-front plug-in checks, backbone keys on any dataset, a dataset yaml of
one's own, and (``make bench``: it needs the published run's dataset and features, a cold results dir) the
"Rank your method" commands exactly as README writes them.

The method module is README's own code block, written to a temporary folder: a README edit that breaks it
fails here.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from mlfsic.harness.errors import MlfsicError

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_method_module(folder: Path) -> Path:
    """README's ``my_method.py`` code block, written into ``folder``."""
    block = re.search(r"```python\n(# my_method\.py.*?)```", README.read_text(), re.S)
    assert block is not None, "README lost its '# my_method.py' code block"
    path = folder / "my_method.py"
    path.write_text(block.group(1))
    return path


def readme_rank_commands() -> list[str]:
    """The ``mlfsic ...`` lines of README's "Rank your method" block (without ``PYTHONPATH=.`` and comments)."""
    section = README.read_text().split("## Rank your method", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None
    lines = [line.split("#", 1)[0].strip() for line in block.group(1).splitlines()]
    return [line.removeprefix("PYTHONPATH=. ") for line in lines if line.startswith("PYTHONPATH=. mlfsic")]


def _mlfsic(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [".", os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "mlfsic.harness.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=1800)


def test_mlfsic_methods_lists_the_readme_one_file_method(tmp_path):
    readme_method_module(tmp_path)
    listed = _mlfsic(tmp_path, "methods", "method_modules=[my_method]")
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.startswith("my-method "))
    assert "Kshot" in row and "module my_method" in row
    width = max(len(line) for line in listed.stdout.splitlines())
    assert width < 100  # no row stretches the table
    unknown = _mlfsic(tmp_path, "methods", "method_module=[my_method]")
    assert unknown.returncode == 2 and unknown.stderr.count("\n") == 1 and "did you mean method_modules" in unknown.stderr


def test_a_method_whose_module_was_not_imported_names_method_modules(tmp_path, monkeypatch):
    from mlfsic.harness.sweep.load import load_sweep

    readme_method_module(tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MlfsicError) as error:
        load_sweep(["method=[my-method]", f"results_dir={tmp_path / 'results'}"])
    message = str(error.value)
    assert "\n" not in message and "unknown method 'my-method'" in message
    assert "my_method.py registers it: add method_modules=[my_method]" in message
    with pytest.raises(MlfsicError, match=r"method_modules=\[my_module\]"):  # nothing on the path registers it
        load_sweep(["method=[their-method]", f"results_dir={tmp_path / 'results'}"])


NO_SEED = '''
import numpy as np
from mlfsic.methods.api import Method, register

@register("no-seed")
class NoSeed(Method):
    def __init__(self, temperature: float = 1.0):
        super().__init__(0)

    def fit(self, base, val):
        pass

    def predict(self, episode):
        return np.zeros((episode.n_query, episode.n_labels))
'''


def test_a_constructor_without_seed_is_refused_before_ray_starts(tmp_path):
    (tmp_path / "no_seed.py").write_text(NO_SEED)
    results = tmp_path / "results"
    run = _mlfsic(tmp_path, "run", "method_modules=[no_seed]", "method=[no-seed]", f"results_dir={results}")
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("mlfsic: error: method_modules: no_seed: "), run.stderr
    assert "NoSeed(seed=..., **hyperparameters)" in run.stderr and "add `seed: int = 0`" in run.stderr
    assert not results.exists()  # refused before Ray, before anything is written


def test_a_missing_method_module_is_one_line(tmp_path):
    run = _mlfsic(tmp_path, "methods", "method_modules=[my_methd]")
    assert run.returncode == 2 and run.stderr.count("\n") == 1
    assert "no module named 'my_methd' on the path" in run.stderr and "PYTHONPATH=." in run.stderr


def test_the_pinned_small_cnn_is_identified_before_work_against_published():
    """The crash of issue 38: ``against=published`` on a cold results dir identifies the pinned SmallCNN from
    the config (no backbone step yet) and must get the published backbone id."""
    from mlfsic.harness.config import compose_config, to_container
    from mlfsic.harness.sweep.against_run import expected_backbone_id, load_reference
    from mlfsic.harness.sweep.spec import PUBLISHED_DIR

    reference = load_reference(PUBLISHED_DIR)
    backbone = to_container(compose_config([]))["dataset"]["backbone"]
    assert reference.backbone_pinned
    assert expected_backbone_id(backbone, reference) == reference.backbone_id


# ----------------------------------------------------------------------------------------- backbone keys
def _backbone(*overrides: str) -> dict:
    from mlfsic.harness.config import compose_config, to_container

    return to_container(compose_config(list(overrides)))["dataset"]["backbone"]


def test_a_kind_switched_on_a_dataset_starts_from_its_own_defaults():
    assert _backbone("dataset.backbone.kind=resnet50") == {"kind": "resnet50"}  # not coco-moji's 96 px
    assert _backbone("dataset.backbone.kind=resnet50", "dataset.backbone.image_size=448") == {
        "kind": "resnet50", "image_size": 448}
    assert _backbone("dataset=coco", "dataset.backbone.kind=small_cnn") == {"kind": "small_cnn"}  # not 224 px
    teacher = _backbone("+backbone=tiny-teacher")
    assert teacher["kind"] == "open_clip" and "image_size" not in teacher and teacher["epochs"] == 4
    assert _backbone()["image_size"] == 96  # the dataset's own kind keeps its yaml


def test_every_kind_key_is_settable_without_plus_and_another_kind_key_is_refused(tmp_path):
    from mlfsic.harness.backbones.resnet50 import ResNet50Settings
    from mlfsic.harness.sweep.load import load_sweep

    weights = tmp_path / "resnet50.pth"
    weights.write_bytes(b"not read before the backbone step")
    sweep = load_sweep(["dataset.backbone.kind=resnet50", f"dataset.backbone.weights={weights}",
                        f"results_dir={tmp_path / 'results'}", "method=[random]"])
    assert sweep.dataset.backbone.as_dict() == {"kind": "resnet50", "weights": str(weights)}
    assert ResNet50Settings.of(sweep.dataset.backbone.as_dict()).image_size == 224
    with pytest.raises(MlfsicError) as error:
        load_sweep(["dataset.backbone.kind=resnet50", "dataset.backbone.epochs=3", f"results_dir={tmp_path}"])
    assert "dataset.backbone.epochs=3: a key of small_cnn, open_clip, not of resnet50" in str(error.value)
    with pytest.raises(MlfsicError, match="weights=.*a key of resnet50, open_clip, timm, not of small_cnn"):
        load_sweep([f"dataset.backbone.weights={weights}", f"results_dir={tmp_path}"])
    with pytest.raises(MlfsicError, match="unknown key of a small_cnn backbone .did you mean epochs"):
        load_sweep(["dataset.backbone.epoch=3", f"results_dir={tmp_path}"])


def test_a_dataset_yaml_of_ones_own_is_a_path(tmp_path):
    from mlfsic.harness.config import config_dir
    from mlfsic.harness.sweep.load import load_sweep

    own = tmp_path / "shapes.yaml"
    own.write_text((config_dir() / "dataset" / "coco-moji.yaml").read_text().replace("name: coco-moji", "name: shapes"))
    sweep = load_sweep([f"dataset={own}", "dataset.generate.n_test=300", f"results_dir={tmp_path / 'results'}"])
    assert sweep.dataset.name == "shapes" and sweep.dataset.settings["generate"]["n_test"] == 300
    with pytest.raises(MlfsicError, match=r"dataset=.*absent\.yaml: file .* not found; expected a dataset name"):
        load_sweep([f"dataset={tmp_path / 'absent.yaml'}"])


# ----------------------------------------------------------------------------------------- the full walk
@pytest.mark.slow
def test_readme_rank_your_method_commands_on_a_cold_results_dir(tmp_path):
    """Every ``mlfsic`` line of README's "Rank your method", as written, into a fresh results dir: the quick
    prefix check, the full comparison with the published run and the one-seed one; each completes and ranks
    ``my-method`` among the published methods. (Slow: coco-moji generation and extraction, ~2 minutes.)"""
    readme_method_module(tmp_path)
    commands = readme_rank_commands()
    assert any("n_episodes=100" in c for c in commands) and any(c.endswith("against=published") for c in commands)
    for command in commands:
        args = shlex.split(command)[1:]
        if args[0] == "run":
            args.append(f"results_dir={tmp_path / 'results'}")
        result = _mlfsic(tmp_path, *args)
        assert result.returncode == 0, (command, result.stderr[-3000:])
        if args[0] != "run":
            continue
        run_dir = Path(result.stdout.strip().splitlines()[-1])
        board = pd.read_csv(run_dir / "leaderboard.csv")
        assert "my-method" in set(board["method"]) and {"laso", "protonet"} <= set(board["method"]), command
        assert ("Prefix comparison" in (run_dir / "leaderboard.md").read_text()) == ("n_episodes=100" in command)
