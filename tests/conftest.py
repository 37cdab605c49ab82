"""Shared fixtures: one local Ray instance per test session, and a tiny generated coco-moji benchmark."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent

# Small enough for a 2-core CI box, large enough that every test label has episodes to draw.
TINY_DATASET_OVERRIDES = [
    "dataset.generate.n_base=400",
    "dataset.generate.n_val=60",
    "dataset.generate.n_test=240",
    "dataset.backbone.epochs=1",
]


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray with 2 CPUs, a 100 MB object store and no dashboard, shared by all tests."""
    import ray

    if not ray.is_initialized():
        ray.init(
            address="local",  # never a cluster another process started with `ray start` on this machine
            num_cpus=2,
            object_store_memory=100 * 1024 * 1024,
            include_dashboard=False,
            log_to_driver=False,
            # workers import test-only method modules (tests/faulty_methods.py) from here
            runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])}},
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module, as the runner runs fit/evaluate tasks."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_results_dir(tmp_path_factory) -> Path:
    """A results dir shared by the runner tests, so the tiny dataset, backbone and features are made once."""
    return tmp_path_factory.mktemp("results")


def tiny_overrides(results_dir: Path, *extra: str) -> list[str]:
    return [f"results_dir={results_dir}", *TINY_DATASET_OVERRIDES, *extra]
