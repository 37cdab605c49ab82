"""Progress output: a bar on a terminal, plain lines in a log file (no carriage returns), there with a
heartbeat line at least every ``HEARTBEAT_S`` (tasks done, in flight, failed, elapsed)."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from conftest import tiny_overrides

from mlfsic.harness.sweep.driver import collect, progress
from mlfsic.harness.sweep.driver.planning import Plan, Task
from mlfsic.harness.sweep.driver.progress import Progress, duration_text
from mlfsic.harness.sweep.store import read_run_json

HEARTBEAT = re.compile(r"^sweep: (\d+)/(\d+) tasks done, (\d+) in flight, (\d+) failed, (\d+h)?(\d+m)?\d+s elapsed$")


def test_progress_off_a_terminal_prints_a_line_per_tenth_and_a_summary():
    stream = io.StringIO()  # not a TTY
    bar = Progress("sweep", 50, "tasks", enabled=True, stream=stream)
    for _ in range(50):
        bar.update(1)
    bar.close("50 chunks (0 skipped)")
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert [line.split()[1] for line in lines[:-1]] == [f"{5 * k}/50" for k in range(1, 10)]
    assert lines[0].startswith("sweep: 5/50 tasks (10%) ") and lines[0].endswith(" s")
    assert lines[-1].startswith("sweep: 50 chunks (0 skipped) in ") and lines[-1].endswith(" s")

    quiet = io.StringIO()
    bar = Progress("sweep", 50, "tasks", enabled=False, stream=quiet)
    bar.update(50)
    bar.close("done")
    assert quiet.getvalue() == ""


def test_a_heartbeat_comes_when_nothing_was_printed_for_the_interval():
    stream = io.StringIO()  # not a TTY
    bar = Progress("sweep", 12, "tasks", enabled=True, stream=stream, heartbeat_s=0.3)
    bar.heartbeat(in_flight=12)
    assert stream.getvalue() == ""  # too early
    time.sleep(0.35)
    bar.done = 3
    bar.heartbeat(in_flight=2, failed=1)
    bar.heartbeat(in_flight=2, failed=1)  # just printed: nothing
    assert stream.getvalue().splitlines() == ["sweep: 3/12 tasks done, 2 in flight, 1 failed, 0s elapsed"]
    bar.update(1)  # a tenth line restarts the interval
    time.sleep(0.1)
    bar.heartbeat(in_flight=1)
    assert len(stream.getvalue().splitlines()) == 2

    quiet = io.StringIO()
    off = Progress("sweep", 12, "tasks", enabled=False, stream=quiet, heartbeat_s=0.0)
    off.heartbeat(in_flight=1)
    assert quiet.getvalue() == ""
    assert [duration_text(s) for s in (0.4, 42, 245, 3725)] == ["0s", "42s", "4m05s", "1h02m05s"]


def test_fewer_than_ten_tasks_print_a_line_per_task():
    stream = io.StringIO()
    bar = Progress("sweep", 3, "tasks", enabled=True, stream=stream)
    for _ in range(3):
        bar.update(1)
    assert [line.split()[1] for line in stream.getvalue().splitlines()] == ["1/3", "2/3"]  # 3/3: the summary's


def test_collect_prints_heartbeats_while_tasks_run(monkeypatch, capsys, tmp_path):
    """``collect.collect`` off a terminal, on stand-ins for ``ray.wait``/``ray.get``: two tasks, one failing after
    ~0.6 s, the other after ~1.2 s; a heartbeat interval of 0.2 s."""
    monkeypatch.setattr(progress, "HEARTBEAT_S", 0.2)
    monkeypatch.setattr(collect, "COLLECT_ROUND_S", 0.05)
    start = time.time()
    done_at = {"fit": start + 0.6, "chunk": start + 1.2}

    def wait(refs, num_returns, timeout):
        time.sleep(timeout)
        ready = [ref for ref in refs if time.time() >= done_at[ref]]
        return ready, [ref for ref in refs if ref not in ready]

    monkeypatch.setattr(collect.ray, "wait", wait)
    monkeypatch.setattr(collect.ray, "get", lambda ref: f"ValueError: {ref} failed")  # a string: a failed task
    plan = Plan(run_path=tmp_path, dataset="coco-moji", pending={
        "fit": Task("fit", "protonet", 0, ("1shot",)),
        "chunk": Task("evaluate", "protonet", 1, ("1shot",), "protonet__1shot__seed1__abc__chunk0000")})
    collect.collect([plan], progress=True)
    lines = capsys.readouterr().err.splitlines()  # pytest's capture: not a TTY
    beats = [HEARTBEAT.match(line).groups()[:4] for line in lines if HEARTBEAT.match(line)]
    assert ("0", "2", "2", "0") in beats and ("1", "2", "1", "1") in beats, lines
    assert len(plan.failures) == 2


def test_cli_progress_in_a_log_file_is_plain_lines(tiny_results_dir):
    command = [sys.executable, "-m", "mlfsic.harness.cli", "run", "ray.num_cpus=2", "method=[random]",
               "setting=[1shot]", "seeds=[0]", "n_episodes=20", "chunk_episodes=2", "run_id=progress",
               *tiny_overrides(tiny_results_dir)]
    # stderr is a pipe; a heartbeat interval of 0: one line per collection round
    result = subprocess.run(command, capture_output=True, text=True, timeout=900,
                            env={**os.environ, "MLFSIC_HEARTBEAT_S": "0"})
    assert result.returncode == 0, result.stderr[-3000:]
    err = result.stderr
    assert "\r" not in err
    lines = err.splitlines()
    assert any(line.startswith("dataset: coco-moji, ") for line in lines)
    assert any(line.startswith("features: ") and " images computed (" in line for line in lines)
    assert any(line.startswith("sweep: 10 chunks (0 skipped, 10 computed), 1 fits") for line in lines)
    assert sum(line.startswith("sweep: ") and "%)" in line for line in lines) >= 5  # ~ every 10% of 11 tasks
    assert any(HEARTBEAT.match(line) and "/11 tasks done, " in line for line in lines)
    # run.json records the command that resumes the run, and every cell it planned
    info = read_run_json(Path(result.stdout.strip().splitlines()[-1]))
    assert info["invocations"][-1]["argv"] == command[3:] and info["invocations"][-1]["cwd"] == os.getcwd()
    assert info["planned_cells"] == ["random__1shot__seed0"]
