"""One broken plug-in must not break the tool (issue 14.1).

A ``*.dist-info`` directory written under tmp_path and put on ``sys.path`` declares entry points of the
``mlfsic.methods`` group that cannot load; ``importlib.metadata`` finds it without any install.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mlfsic.harness.errors import MlfsicError
from mlfsic.methods import registry

ENTRY_POINTS = """\
[mlfsic.methods]
broken-plugin = mlfsic_no_such_module.methods:Nope
not-a-method = json:dumps
"""


def _write_broken_dist(root):
    dist_info = root / "mlfsic_broken_plugin-0.0.1.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: mlfsic-broken-plugin\nVersion: 0.0.1\n")
    (dist_info / "entry_points.txt").write_text(ENTRY_POINTS)
    return root


@pytest.fixture
def fresh_registry(monkeypatch, tmp_path):
    """The registry re-loaded with the broken distribution on sys.path; restored afterwards."""
    registry.available_methods()  # built-in modules imported (and registered) once, in the real registry
    monkeypatch.syspath_prepend(str(_write_broken_dist(tmp_path / "site")))
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_BROKEN", {})
    monkeypatch.setattr(registry, "_LOADED", False)
    return registry


def test_broken_entry_points_are_skipped_with_one_warning_each(fresh_registry, capsys):
    methods = fresh_registry.available_methods()
    assert {"random", "protonet", "laso"} <= set(methods)
    assert "broken-plugin" not in methods and "not-a-method" not in methods
    broken = fresh_registry.broken_methods()
    assert set(broken) == {"broken-plugin", "not-a-method"}
    assert broken["broken-plugin"].error.startswith("ModuleNotFoundError: No module named 'mlfsic_no_such_module'")
    assert broken["broken-plugin"].origin == "entry point mlfsic-broken-plugin 0.0.1"
    assert broken["not-a-method"].error.startswith("TypeError")
    warnings = capsys.readouterr().err.splitlines()
    assert len(warnings) == 2
    assert all(line.startswith("mlfsic: warning: skipping method plug-in") for line in warnings)
    assert any("'broken-plugin'" in line and "mlfsic_no_such_module.methods:Nope" in line for line in warnings)
    fresh_registry.available_methods()  # loaded once: no second warning
    assert capsys.readouterr().err == ""


def test_selecting_a_broken_plugin_is_a_one_line_error(fresh_registry):
    from mlfsic.harness.sweep.load import load_sweep

    with pytest.raises(MlfsicError, match="'broken-plugin' is a plug-in that failed to load") as error:
        load_sweep(["method=[random,broken-plugin]"])
    assert "\n" not in str(error.value)
    sweep = load_sweep(["method=all"])  # the working methods run
    assert "random" in sweep.methods and "broken-plugin" not in sweep.methods


def _cli(tmp_path, *args):
    site = _write_broken_dist(tmp_path / "site")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "mlfsic.harness.cli", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_cli_lists_broken_plugins_and_refuses_to_run_them(tmp_path):
    listed = _cli(tmp_path, "methods")
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line for line in listed.stdout.splitlines()[1:]}
    assert "protonet" in rows and "BROKEN: ModuleNotFoundError" in rows["broken-plugin"]
    assert "mlfsic_no_such_module.methods:Nope" in rows["broken-plugin"]
    assert "BROKEN: TypeError" in rows["not-a-method"]
    assert "Traceback" not in listed.stderr
    assert sum(line.startswith("mlfsic: warning:") for line in listed.stderr.splitlines()) == 2

    results = tmp_path / "results"
    run = _cli(tmp_path / "again", "run", "method=[broken-plugin]", f"results_dir={results}")
    assert run.returncode == 2
    errors = [line for line in run.stderr.splitlines() if line.startswith("mlfsic: error:")]
    assert len(errors) == 1 and "'broken-plugin'" in errors[0] and "Traceback" not in run.stderr
    assert not results.exists()  # nothing written, nothing submitted


OLD_API_PLUGIN = '''
import numpy as np
from mlfsic.methods.api import Method


class ConstantScores(Method):
    """Written against the earlier Method API: fit(self, base), before the val split reached fit."""

    def fit(self, base):
        pass

    def predict(self, episode):
        return np.zeros((episode.n_query, episode.n_labels))
'''


def test_a_plugin_of_the_earlier_method_api_is_refused_before_any_work(tmp_path):
    """``def fit(self, base)`` is listed as BROKEN with the signature it has and the one expected, and a
    run naming it stops with one line and exit 2 before anything is written or submitted to Ray."""
    site = tmp_path / "site"
    dist_info = site / "mlfsic_old_plugin-0.0.1.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: mlfsic-old-plugin\nVersion: 0.0.1\n")
    (dist_info / "entry_points.txt").write_text("[mlfsic.methods]\nold-api = mlfsic_old_plugin:ConstantScores\n")
    (site / "mlfsic_old_plugin.py").write_text(OLD_API_PLUGIN)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "mlfsic.harness.cli", *args], capture_output=True, text=True,
                              env=env, timeout=300)

    listed = cli("methods")
    rows = {line.split()[0]: line for line in listed.stdout.splitlines()[1:]}
    assert listed.returncode == 0 and "BROKEN: MlfsicError" in rows["old-api"], listed.stdout
    assert "fit(self, base)" in rows["old-api"] and "fit(self, base, val)" in rows["old-api"]
    results = tmp_path / "results"
    run = cli("run", "method=[old-api]", f"results_dir={results}")
    assert run.returncode == 2
    errors = [line for line in run.stderr.splitlines() if line.startswith("mlfsic: error:")]
    assert len(errors) == 1 and "'old-api'" in errors[0] and "Traceback" not in run.stderr
    assert "Started a local Ray" not in run.stderr and not results.exists()
