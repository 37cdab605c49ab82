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
