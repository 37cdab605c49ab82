"""Fits without copies (issue 37, item 4): the base and val splits' local grids reach ``fit`` as rows of the
memory-mapped feature store (``StoredLocalRows``) for a method that declares ``local_rows`` (lcm, wvga,
wvga-adapted), and the fits and scores are bit-identical to those made from the in-memory float32 copy.

The store is written on disk by ``synthetic_store``: each split spread over two shards in a shuffled order, the
pool in another order, so reading rows gathers across shards and out of store order. The peak heap of fits on
a ResNet-50-sized store is ``tests/test_bench_fit_memory.py`` (``make bench``).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from mlfsic.harness.errors import MlfsicError
from mlfsic.harness.sweep.evaluate import StoredLocalRows, split_data
from mlfsic.methods.registry import available_methods, create_method
from mlfsic.methods.torch_utils import all_finite_rows
from synthetic_data import make_episode, make_world
from synthetic_store import split_specs, write_store

pytestmark = pytest.mark.usefixtures("one_thread")

WORLD = make_world(n_base_labels=12, n_novel_labels=6, dim=32)
SMALL = {"embed_dim": 16, "heads": 2, "steps": 20, "eval_every": 10, "n_val_episodes": 2}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_store(tmp_path_factory.mktemp("store"), WORLD, split_specs(WORLD, {"base": 200, "val": 80}, 4),
                       positions=9)


def test_the_local_grid_methods_read_rows():
    reading = {name for name, info in available_methods().items() if info.cls.local_rows}
    assert {"lcm", "wvga", "wvga-adapted"} <= reading
    assert all(available_methods()[name].cls.needs_local_features for name in reading)


def test_stored_rows_index_as_the_in_memory_copy(store):
    copied = split_data(store, "base", 0, with_local=True)
    rows = split_data(store, "base", 0, with_local=True, local_rows=True)
    assert isinstance(rows.local_features, StoredLocalRows) and isinstance(copied.local_features, np.ndarray)
    np.testing.assert_array_equal(rows.features, copied.features)
    np.testing.assert_array_equal(rows.targets, copied.targets)
    memory, stored = copied.local_features, rows.local_features
    assert stored.shape == memory.shape and stored.ndim == 3 and len(stored) == len(memory)
    picked = np.array([5, 3, 3, 190, 0])
    mask = np.zeros(len(memory), dtype=bool)
    mask[::7] = True
    for index in (picked, torch.as_tensor(picked), slice(10, 40, 3), mask, 17, -1, (picked, 2), (slice(None, 5), 0, 1)):
        got = stored[index]
        expected = memory[index.numpy() if isinstance(index, torch.Tensor) else index]
        assert got.dtype == np.float32 and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(np.asarray(stored), memory)
    assert np.asarray(stored, dtype=np.float64).dtype == np.float64


def test_whole_reads_go_block_by_block(store, monkeypatch):

    rows = split_data(store, "base", 0, with_local=True, local_rows=True).local_features
    asked: list[int] = []
    features = store.features

    def counted(image_ids, with_local):
        asked.append(len(image_ids))
        return features(image_ids, with_local)

    rows.block_bytes = 9 * 32 * 4 * 50  # 50 rows
    monkeypatch.setattr(store, "features", counted)
    whole = np.asarray(rows)
    assert asked == [50, 50, 50, 50] and whole.shape == (200, 9, 32)


def test_all_finite_rows_checks_every_block():
    grid = np.ones((30, 4, 5), dtype=np.float32)
    assert all_finite_rows(grid)
    grid[29, 3, 4] = np.nan
    assert not all_finite_rows(grid)
    seven_rows = 4 * 4 * 5 * 7  # 7 rows a block: the bad row is in the last one
    assert not all_finite_rows(grid, seven_rows)
    grid[29, 3, 4] = 1.0
    assert all_finite_rows(grid, seven_rows)


def _fit_and_score(name: str, config: dict, base, val) -> tuple[list[np.ndarray], dict]:
    method = create_method(name, config, 0)
    method.fit(base, val)
    episodes = [make_episode(k, seed=seed, world=WORLD)[0] for k, seed in ((0, 2), (1, 3), (5, 4))]
    return [np.asarray(scores) for scores in method.predict_batch(episodes)], method.fit_report


@pytest.mark.parametrize("name, config", [
    ("lcm", {**SMALL, "adapt_steps": 3}),
    ("lcm", {**SMALL, "adapt_steps": 0, "tie_local_projection": False, "selection": "off"}),
    ("wvga", SMALL),
])
def test_fits_from_stored_rows_are_bit_identical(store, name, config):
    copied = [split_data(store, split, 0, with_local=True) for split in ("base", "val")]
    rows = [split_data(store, split, 0, with_local=True, local_rows=True) for split in ("base", "val")]
    scores, report = _fit_and_score(name, config, *copied)
    scores_rows, report_rows = _fit_and_score(name, config, *rows)
    assert report_rows == report
    for got, expected in zip(scores_rows, scores, strict=True):
        np.testing.assert_array_equal(got, expected)


def test_a_non_finite_stored_row_is_refused(store, monkeypatch):
    base = split_data(store, "base", 0, with_local=True, local_rows=True)
    rows = base.local_features
    read = rows._read

    def poisoned(ids):
        out = read(ids)
        out[ids == rows.image_ids[-1]] = np.inf
        return out

    monkeypatch.setattr(rows, "_read", poisoned)
    with pytest.raises(MlfsicError, match="base.local_features contains NaN or infinite values"):
        create_method("lcm", SMALL, 0).fit(replace(base, local_features=rows), None)
