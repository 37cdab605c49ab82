"""The package as a wheel (issue 33.4): every module of the source tree and the data the default run needs
(configs, pinned weights, the published reference runs) are in it, with no hand-kept package list
(setup.py finds the sub-packages); installed outside the checkout it runs ``against=published``
(``make bench``: a fresh virtual environment and the coco-moji generation take minutes).
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from test_readme_paths import readme_method_module

REPO = Path(__file__).resolve().parents[1]
ROOTS = ("harness", "methods", "datasets", "configs", "results", "studies")
DATA = ("configs/config.yaml", "configs/dataset/coco-moji.yaml", "configs/splits/coco.json",
        "results/published/run.json", "results/published/records.parquet", "results/published/label_ap.parquet",
        "results/published_ablation/run.json", "studies/lcm_tomm2024/README.md")


def build_wheel(out: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "--no-deps",
                    "--no-build-isolation", str(REPO), "-w", str(out)], check=True, capture_output=True, timeout=600)
    wheels = sorted(out.glob("mlfsic-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def source_files() -> set[str]:
    """``mlfsic/<root>/...`` for every tracked-or-not module of the roots (not caches)."""
    files = set()
    for root in ROOTS:
        for path in (REPO / root).rglob("*.py"):
            if "__pycache__" not in path.parts:
                files.add(f"mlfsic/{path.relative_to(REPO).as_posix()}")
    return files


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


def test_the_wheel_holds_every_module_and_the_data_of_the_default_run(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(source_files() - names)
    assert not missing, f"modules left out of the wheel: {missing}"
    for item in DATA:
        assert f"mlfsic/{item}" in names, item
    pinned = [name for name in names if name.startswith("mlfsic/datasets/coco_moji/weights/small_cnn-")]
    assert any(name.endswith(".pt") for name in pinned) and any(name.endswith(".json") for name in pinned)
    assert not any("/runs/" in name or "/cache/" in name or "__pycache__" in name for name in names)


@pytest.mark.slow
def test_the_installed_wheel_ranks_against_published_outside_the_checkout(wheel, tmp_path):
    """A new virtual environment outside the checkout, the wheel installed into it (its dependencies come
    from this environment's site-packages through a .pth line, so nothing is downloaded), then a small sweep
    with ``against=published`` from a folder that is not the checkout."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "mlfsic_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
                    "--target", str(site), str(wheel)], check=True, timeout=600)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    where = subprocess.run([str(python), "-c", "import mlfsic.harness, mlfsic.harness.sweep.spec as s; "
                            "print(mlfsic.harness.__file__); print(s.PUBLISHED_DIR)"],
                           check=True, capture_output=True, text=True, cwd=work, env=env).stdout.splitlines()
    assert all(str(site) in line for line in where), where  # the wheel's files, not the checkout's
    readme_method_module(work)  # README's one-file method, imported from the working folder
    run = subprocess.run([str(python), "-m", "mlfsic.harness.cli", "run", "method_modules=[my_method]",
                          "method=[my-method]", "against=published", "n_episodes=20", "seeds=[0]", "setting=[1shot]",
                          "run_id=wheel", f"results_dir={work / 'results'}"], capture_output=True, text=True, cwd=work,
                         env={**env, "PYTHONPATH": "."}, timeout=1800)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Prefix comparison" in (work / "results" / "runs" / "wheel" / "leaderboard.md").read_text()
