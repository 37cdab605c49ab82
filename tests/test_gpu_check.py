"""``make gpu-check`` (tests/gpu_check.py) without CUDA: one skip line and exit 0 (default suite, cheap);
the rehearsal of its methods-on-the-device step (both sides on the CPU, tiny: the scores must be equal);
its whole rehearsal (every step on the CPU, a GPU declared to Ray) runs the whole script (slow: ``make bench``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).with_name("gpu_check.py")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: the script would measure")
def test_gpu_check_skips_without_cuda():
    result = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == ["gpu-check: skipped: no CUDA device"]


def test_gpu_check_device_step_rehearsal_on_cpu():
    result = subprocess.run([sys.executable, str(SCRIPT), "--rehearse", "--only", "devices"], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("gpu-check: method ")]
    assert [line.split()[2] for line in lines] == ["protonet", "wvga-adapted", "lcm", "laso", "mkt", "clip-zeroshot"]
    for line in lines:  # the CPU against itself: the same checkpoint gives the same scores
        assert "max |score difference| 0.00e+00" in line and ": ok;" in line, line
    assert result.stdout.splitlines()[-1] == "gpu-check: done"


@pytest.mark.slow
def test_gpu_check_rehearsal_on_cpu():
    result = subprocess.run([sys.executable, str(SCRIPT), "--rehearse"], capture_output=True, text=True, timeout=3600)
    print(result.stdout)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("gpu-check: REHEARSAL")
    assert any(line.startswith("gpu-check: extraction resnet50 on cpu, batch 64") for line in lines)
    assert sum(line.startswith("gpu-check: method ") for line in lines) == 6
    assert any("packing: two sweeps at num_gpus=0.5" in line for line in lines)
    assert sum("records packed == alone: " in line for line in lines) == 2
    assert lines[-1] == "gpu-check: done"
