"""Feature store: stored features equal a direct forward pass, each image is forwarded once, shards are
memory-mapped, partial stores are completed, racing writers are harmless, and bad input is named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mlfsic.harness.backbones.batches import decode_workers
from mlfsic.harness.sweep import features
from mlfsic.harness.backbones.extractor import Backbone
from mlfsic.harness.backbones.kinds import load_backbone
from mlfsic.harness.backbones.small_cnn import SmallCNN
from mlfsic.harness.protocol.data import Dataset
from mlfsic.harness.errors import MlfsicError
from mlfsic.harness.sweep.features import (
    extract_shard,
    forward_passes,
    load_features,
    missing_image_ids,
    store_dir,
)


def make_dataset(root: Path, n: int) -> Dataset:
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n):
        files.append(f"{i:03d}.png")
        Image.fromarray(rng.integers(0, 256, (96, 96, 3)).astype(np.uint8)).save(root / files[-1])
    targets = rng.random((n, 3)) < 0.5
    return Dataset("tiny", root, np.arange(10, 10 + n, dtype=np.int64), tuple(files), ("a", "b", "c"), targets,
                   "annsha")


@pytest.fixture()
def setup(tmp_path) -> tuple[Backbone, Dataset, Path, list[int]]:
    torch.manual_seed(0)
    weights = tmp_path / "cnn.pt"
    model = SmallCNN(n_labels=3)
    with torch.no_grad():  # non-trivial BN statistics so eval mode differs from identity
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    torch.save(model.state_dict(), weights)
    backbone = load_backbone({"kind": "small_cnn", "image_size": 96, "device": "cpu", "extract_batch_size": 4}, weights)
    calls: list[int] = []  # images seen by the module itself, not the store's own bookkeeping
    original = backbone.module.forward_features

    def counting(x):
        calls.append(int(x.shape[0]))
        return original(x)

    backbone.module.forward_features = counting  # type: ignore[method-assign]
    return backbone, make_dataset(tmp_path / "images", 10), tmp_path / "store", calls


def test_stored_features_equal_direct_forward_and_order(setup):
    backbone, dataset, store, calls = setup
    info = extract_shard(backbone, dataset, dataset.image_ids, store, progress=False)
    assert info.n_computed == 10 and info.published and sum(calls) == 10 and calls[0] == 4  # batched

    order = np.array([17, 10, 12, 17, 19])  # shuffled, with a repeat
    global_f, local_f = load_features(store, backbone.backbone_id, dataset.annotation_sha256, order, with_local=True)
    files = dataset.file_name_of()
    images = backbone.load_images([dataset.image_root / files[i] for i in order.tolist()])
    with torch.no_grad():
        expected_global, expected_local = SmallCNN.forward_features(backbone.module, images)
    assert global_f.dtype == np.float32 and global_f.shape == (5, 128)
    assert local_f is not None and local_f.dtype == np.float16 and local_f.shape == (5, 36, 128)
    np.testing.assert_allclose(global_f, expected_global.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(local_f.astype(np.float32), expected_local.numpy(), rtol=2e-3, atol=2e-3)

    only_global, no_local = load_features(store, backbone.backbone_id, dataset.annotation_sha256, order, False)
    assert no_local is None
    np.testing.assert_array_equal(only_global, global_f)
    empty, _ = load_features(store, backbone.backbone_id, dataset.annotation_sha256, np.array([], np.int64), False)
    assert empty.shape == (0, 128)


def test_second_extraction_runs_the_backbone_zero_times(setup):
    backbone, dataset, store, calls = setup
    extract_shard(backbone, dataset, dataset.image_ids, store, progress=False)
    forwarded = sum(calls)
    again = extract_shard(backbone, dataset, dataset.image_ids, store, progress=False)
    assert sum(calls) == forwarded == 10
    assert again.n_computed == 0 and again.shard_dir is None
    assert forward_passes(store, backbone.backbone_id, dataset.annotation_sha256) == 10


def test_partial_store_is_completed_across_shards(setup):
    backbone, dataset, store, calls = setup
    ids = dataset.image_ids
    assert missing_image_ids(store, backbone.backbone_id, dataset.annotation_sha256, ids).tolist() == ids.tolist()
    extract_shard(backbone, dataset, ids[:4], store, progress=False)
    missing = missing_image_ids(store, backbone.backbone_id, dataset.annotation_sha256, ids[::-1])
    assert missing.tolist() == ids[4:][::-1].tolist()  # caller's order kept
    info = extract_shard(backbone, dataset, ids, store, progress=False)
    assert info.n_computed == 6 and sum(calls) == 10
    shards = sorted((store_dir(store, backbone.backbone_id, "annsha") / "shards").iterdir())
    assert len(shards) == 2
    global_f, _ = load_features(store, backbone.backbone_id, "annsha", ids, with_local=False)
    assert global_f.shape == (10, 128) and np.isfinite(global_f).all()
    assert forward_passes(store, backbone.backbone_id, "annsha") == 10


def test_shards_are_memory_mapped(setup):
    backbone, dataset, store, _ = setup
    info = extract_shard(backbone, dataset, dataset.image_ids[:3], store, progress=False)
    assert info.shard_dir is not None
    ids, global_map, local_map = features._open_shard(info.shard_dir, True)
    assert isinstance(global_map, np.memmap) and isinstance(local_map, np.memmap)
    assert ids.tolist() == dataset.image_ids[:3].tolist()


def test_racing_writers_first_rename_wins_and_both_forwards_count(setup, monkeypatch):
    backbone, dataset, store, calls = setup
    first = extract_shard(backbone, dataset, dataset.image_ids[:5], store, progress=False)
    published, _, _ = features._open_shard(first.shard_dir, False)
    # A second writer that checked the store before the first one published: it computes the same shard.
    monkeypatch.setattr(features, "missing_image_ids", lambda root, bid, sha, ids: np.asarray(ids, dtype=np.int64))
    second = extract_shard(backbone, dataset, dataset.image_ids[:5], store, progress=False)
    assert first.published and not second.published and second.shard_dir == first.shard_dir
    assert sum(calls) == 10
    monkeypatch.undo()
    directory = store_dir(store, backbone.backbone_id, dataset.annotation_sha256)
    assert [p.name for p in (directory / "shards").iterdir()] == [first.shard_dir.name]  # no temp dirs left
    assert forward_passes(store, backbone.backbone_id, dataset.annotation_sha256) == 10  # both really ran
    global_f, _ = load_features(store, backbone.backbone_id, dataset.annotation_sha256, dataset.image_ids[:5], False)
    assert global_f.shape == (5, 128)


def test_errors_name_the_image_or_file(setup):
    backbone, dataset, store, _ = setup
    with pytest.raises(MlfsicError, match="no features stored"):
        load_features(store, backbone.backbone_id, dataset.annotation_sha256, dataset.image_ids[:1], False)
    extract_shard(backbone, dataset, dataset.image_ids[:2], store, progress=False)
    with pytest.raises(MlfsicError, match="image id 12"):
        load_features(store, backbone.backbone_id, dataset.annotation_sha256, dataset.image_ids[:3], False)
    with pytest.raises(MlfsicError, match="image id 555"):
        extract_shard(backbone, dataset, np.array([555]), store, progress=False)
    (dataset.image_root / dataset.file_names[5]).unlink()
    with pytest.raises(MlfsicError, match=dataset.file_names[5]):
        extract_shard(backbone, dataset, dataset.image_ids, store, progress=False)
    # The failed shard left nothing behind: the images before it are still missing, none half-stored.
    assert len(missing_image_ids(store, backbone.backbone_id, dataset.annotation_sha256, dataset.image_ids)) == 8


def test_a_modified_shard_is_refused_by_readers_and_dropped_by_the_check(setup, capsys):
    """Same size, other bytes (sha256 in meta.json) and a truncated array (size): a reader refuses the
    truncated shard with one line; ``missing_image_ids`` (the driver, before extraction) drops either with
    one line, and extracting again gives the same features."""
    backbone, dataset, store, _ = setup
    info = extract_shard(backbone, dataset, dataset.image_ids, store, progress=False)
    assert info.shard_dir is not None
    before, _ = load_features(store, backbone.backbone_id, "annsha", dataset.image_ids, with_local=False)
    meta_files = (info.shard_dir / "meta.json").read_text()
    assert '"sha256"' in meta_files and '"size"' in meta_files

    data = bytearray((info.shard_dir / "global.npy").read_bytes())
    data[-8:] = b"\x00" * 8  # same size, other bytes
    (info.shard_dir / "global.npy").write_bytes(bytes(data))
    assert features.shard_problem(info.shard_dir) is None  # sizes match: readers do not hash
    assert "sha256" in features.shard_problem(info.shard_dir, full=True)
    missing = missing_image_ids(store, backbone.backbone_id, "annsha", dataset.image_ids)
    assert missing.tolist() == dataset.image_ids.tolist() and not info.shard_dir.exists()
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "feature shard" in line]
    assert str(info.shard_dir) in line and "10 images are extracted again" in line

    again = extract_shard(backbone, dataset, dataset.image_ids, store, progress=False)
    with open(again.shard_dir / "local.npy", "r+b") as handle:  # a truncated array: every reader refuses it
        handle.truncate(100)
    features._STORE_INDEX.clear()
    with pytest.raises(MlfsicError, match=r"local\.npy of 100 bytes .* re-run the same `mlfsic run`"):
        load_features(store, backbone.backbone_id, "annsha", dataset.image_ids, with_local=False)
    assert len(missing_image_ids(store, backbone.backbone_id, "annsha", dataset.image_ids)) == 10
    extract_shard(backbone, dataset, dataset.image_ids, store, progress=False)
    after, _ = load_features(store, backbone.backbone_id, "annsha", dataset.image_ids, with_local=False)
    np.testing.assert_array_equal(after, before)


def test_decode_workers_follow_the_task_cpus():
    assert [decode_workers(n) for n in (0.5, 1, 1.5, 2, 4)] == [0, 0, 0, 1, 3]


def test_features_are_bit_identical_with_and_without_decode_workers(setup, tmp_path):
    """The same images (JPEGs and PNGs of assorted sizes, so decoding and resizing both run; three batches
    of 4, 4 and 2 in a shuffled order) extracted in this process and by 2 decode workers: the stored
    arrays are the same bytes, and the backbone saw the same batches."""
    backbone, _, _, calls = setup
    rng = np.random.default_rng(7)
    root = tmp_path / "assorted"
    root.mkdir()
    files = []
    for number in range(10):
        height, width = int(rng.integers(60, 160)), int(rng.integers(60, 160))
        files.append(f"{number:03d}.{'jpg' if number % 2 else 'png'}")
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(root / files[-1])
    dataset = Dataset("assorted", root, np.arange(100, 110, dtype=np.int64), tuple(files), ("a",),
                      np.ones((10, 1), dtype=bool), "annsha")
    order = rng.permutation(dataset.image_ids)
    shards = []
    for workers in (0, 2):
        calls.clear()
        info = extract_shard(backbone, dataset, order, tmp_path / f"store-{workers}", progress=False,
                             decode_workers=workers)
        assert info.n_computed == 10 and info.shard_dir is not None and calls == [4, 4, 2]
        shards.append(info.shard_dir)
    assert shards[0].name == shards[1].name
    for name in features.SHARD_ARRAYS:
        assert (shards[0] / name).read_bytes() == (shards[1] / name).read_bytes(), name
    assert np.load(shards[1] / "ids.npy").tolist() == order.tolist()


def test_an_unreadable_image_is_one_line_with_decode_workers(setup):
    backbone, dataset, store, _ = setup
    (dataset.image_root / dataset.file_names[5]).write_bytes(b"not an image")
    with pytest.raises(MlfsicError, match=dataset.file_names[5]) as error:
        extract_shard(backbone, dataset, dataset.image_ids, store, progress=False, decode_workers=2)
    assert "\n" not in str(error.value) and str(error.value).startswith("cannot read image ")
    assert len(missing_image_ids(store, backbone.backbone_id, dataset.annotation_sha256, dataset.image_ids)) == 10
