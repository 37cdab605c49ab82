"""Label embeddings: MiniLM against sentence-transformers, GloVe parsing, the hf path and the cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mlfsic.harness import embeddings
from mlfsic.harness.embeddings import label_embeddings, minilm_model_dir
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
