"""Progress output: a bar on a terminal, plain lines in a log file (no carriage returns)."""

from __future__ import annotations

import io
import subprocess
import sys

from conftest import tiny_overrides

from mlfsic.harness.sweep.runner import _Progress


def test_progress_off_a_terminal_prints_a_line_per_tenth_and_a_summary():
    stream = io.StringIO()  # not a TTY
    bar = _Progress("sweep", 50, "tasks", enabled=True, stream=stream)
    for _ in range(50):
        bar.update(1)
    bar.close("50 chunks (0 skipped)")
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert [line.split()[1] for line in lines[:-1]] == [f"{5 * k}/50" for k in range(1, 10)]
    assert lines[0].startswith("sweep: 5/50 tasks (10%) ") and lines[0].endswith(" s")
    assert lines[-1].startswith("sweep: 50 chunks (0 skipped) in ") and lines[-1].endswith(" s")

    quiet = io.StringIO()
    bar = _Progress("sweep", 50, "tasks", enabled=False, stream=quiet)
    bar.update(50)
    bar.close("done")
    assert quiet.getvalue() == ""


def test_cli_progress_in_a_log_file_is_plain_lines(tiny_results_dir):
    command = [sys.executable, "-m", "mlfsic.harness.cli", "run", "ray.num_cpus=2", "method=[random]",
               "setting=[1shot]", "seeds=[0]", "n_episodes=20", "chunk_episodes=2", "run_id=progress",
               *tiny_overrides(tiny_results_dir)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)  # stderr is a pipe
    assert result.returncode == 0, result.stderr[-3000:]
    err = result.stderr
    assert "\r" not in err
    lines = err.splitlines()
    assert any(line.startswith("dataset: coco-moji, ") for line in lines)
    assert any(line.startswith("features: ") and " images computed (" in line for line in lines)
    assert any(line.startswith("sweep: 10 chunks (0 skipped, 10 computed), 1 fits") for line in lines)
    assert sum(line.startswith("sweep: ") and "%)" in line for line in lines) >= 5  # ~ every 10% of 11 tasks
