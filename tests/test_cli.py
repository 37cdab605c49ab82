"""The ``mlfsic`` command: listing, one-line errors and exit codes (run as a real subprocess)."""

from __future__ import annotations

import subprocess
import sys


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


def test_bad_setting_and_unknown_method_name_the_value(tmp_path):
    result = _mlfsic("run", "setting=[oneshot]", f"results_dir={tmp_path}")
    assert result.returncode == 2 and "'oneshot'" in result.stderr
    result = _mlfsic("run", "method=[nope]", f"results_dir={tmp_path}")
    assert result.returncode == 2 and "unknown method 'nope'" in result.stderr


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
    assert result.returncode == 2 and "unknown option 'bogus'" in result.stderr

    overrides = [f"results_dir={tmp_path}", f"dataset.root={out}", "setting=[1shot]", "seed=0", "n_episodes=10"]
    first = _mlfsic("episodes", *overrides)
    second = _mlfsic("episodes", *overrides)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout  # same id and path: the existing set is reused
    episode_set_id, setting, seed, path = first.stdout.split()
    assert (setting, seed) == ("1shot", "seed0") and path.endswith(f"{episode_set_id}.json")
