"""The SmallCNN trainer decodes the base split into a memory-mapped file, not the heap (issue 37, item 4): the
pixels are those of decoding into memory and padding the whole stack, so the trained weights do not change
(``tests/test_backbones.py`` trains it; the pinned coco-moji weights' training reads the same pixels)."""

from __future__ import annotations

import numpy as np

from mlfsic.harness.backbones import small_cnn
from mlfsic.harness.backbones.images import image_paths, read_images
from test_backbones import make_dataset


def test_decoded_images_are_the_padded_stack_memory_mapped(tmp_path, monkeypatch):
    dataset = make_dataset(tmp_path / "images", 11)
    ids = dataset.image_ids[[7, 2, 2, 10, 0]]
    monkeypatch.setattr(small_cnn, "DECODE_BLOCK", 2)  # blocks of 2, 2 and 1 images
    decoded = small_cnn.decoded_images(dataset, ids, 96, tmp_path / "base.npy", pad=small_cnn.AUGMENT_PAD)
    pad = small_cnn.AUGMENT_PAD
    expected = np.pad(read_images(image_paths(dataset, ids), 96), ((0, 0), (pad, pad), (pad, pad), (0, 0)),
                      mode="reflect")
    assert isinstance(decoded, np.memmap) and not decoded.flags.writeable
    assert decoded.dtype == np.uint8 and decoded.shape == (5, 96 + 2 * pad, 96 + 2 * pad, 3)
    np.testing.assert_array_equal(decoded, expected)
    unpadded = small_cnn.decoded_images(dataset, ids, 96, tmp_path / "plain.npy")
    np.testing.assert_array_equal(unpadded, expected[:, pad:-pad, pad:-pad])
    assert small_cnn.decoded_images(dataset, ids[:0], 96, tmp_path / "none.npy").shape == (0, 96, 96, 3)
