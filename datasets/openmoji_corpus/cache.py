"""Caching a built corpus: ``<cache_dir>/<corpus_id>.npz`` plus a ``.json`` summary beside it.

The ``.npz`` (compressed; the textured backgrounds compress well) holds the images, captions, glyph
index, glyph codepoints and names, the exclusions, and a JSON ``meta`` string with the identity; it is
read with ``allow_pickle=False``. Both files are written through ``harness.io.atomic_path`` (temp file,
then rename), the ``.npz`` first, and the build runs under ``harness.io.file_lock`` on
``.<corpus_id>.lock``: a second process asking for the same corpus waits, then reads the finished file
instead of drawing it again. A present ``.npz`` is reused; one whose stored id differs from its name is an
error (it is never overwritten).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mlfsic.datasets.openmoji_corpus.build import (
    CORPUS_VERSION,
    Corpus,
    build_corpus,
    check_arguments,
    corpus_identity,
    summary,
)
from mlfsic.datasets.openmoji_corpus.glyph_set import CorpusGlyph
from mlfsic.datasets.openmoji_corpus.regimes import corpus_glyphs
from mlfsic.harness.errors import MlfsicError
from mlfsic.harness.io import atomic_path, file_lock, write_json_atomic


def corpus_path(cache_dir: Path, corpus_id: str) -> Path:
    return Path(cache_dir) / f"{corpus_id}.npz"


def save_corpus(corpus: Corpus, path: Path) -> None:
    """Write the corpus atomically as ``path`` (.npz); its summary goes to the same name with .json."""
    meta = {"corpus_version": CORPUS_VERSION, "corpus_id": corpus.corpus_id, "regime": corpus.regime,
            "seed": corpus.seed, "image_size": corpus.image_size}
    excluded = sorted(corpus.excluded.items())
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(
            handle,
            meta=np.array(json.dumps(meta, sort_keys=True)),
            images=corpus.images,
            captions=np.array(corpus.captions, dtype=str),
            glyph_index=corpus.glyph_index,
            glyph_codepoints=np.array([glyph.codepoint for glyph in corpus.glyphs], dtype=np.int64),
            glyph_names=np.array([glyph.name for glyph in corpus.glyphs], dtype=str),
            excluded_codepoints=np.array([code for code, _ in excluded], dtype=np.int64),
            excluded_reasons=np.array([reason for _, reason in excluded], dtype=str),
        )
    write_json_atomic(path.with_suffix(".json"), summary(corpus))


def load_corpus(path: Path) -> Corpus:
    """Read a corpus written by ``save_corpus``."""
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            glyphs = tuple(CorpusGlyph(int(code), str(name))
                           for code, name in zip(data["glyph_codepoints"], data["glyph_names"], strict=True))
            return Corpus(
                regime=str(meta["regime"]),
                seed=int(meta["seed"]),
                image_size=int(meta["image_size"]),
                images=data["images"],
                captions=tuple(str(text) for text in data["captions"]),
                glyph_index=data["glyph_index"].astype(np.int32),
                glyphs=glyphs,
                corpus_id=str(meta["corpus_id"]),
                excluded={int(code): str(reason)
                          for code, reason in zip(data["excluded_codepoints"], data["excluded_reasons"], strict=True)},
            )
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as error:
        raise MlfsicError(f"openmoji corpus file {path} is not readable ({error}); remove it to rebuild") from None


def load_or_build_corpus(
    cache_dir: Path,
    regime: str,
    seed: int,
    n_images: int,
    image_size: int,
    split_file: Path | None = None,
    progress: bool = True,
) -> Corpus:
    """The corpus from ``cache_dir`` when built before, else built, saved, and returned."""
    check_arguments(regime, seed, n_images, image_size)
    glyphs = tuple(corpus_glyphs(regime, split_file))
    corpus_id = corpus_identity(regime, seed, n_images, image_size, glyphs)
    path = corpus_path(Path(cache_dir), corpus_id)
    if not path.is_file():
        with file_lock(Path(cache_dir) / f".{corpus_id}.lock"):
            if not path.is_file():
                corpus = build_corpus(regime, seed, n_images, image_size, split_file, progress)
                save_corpus(corpus, path)
                return corpus
    corpus = load_corpus(path)
    if corpus.corpus_id != corpus_id:
        raise MlfsicError(f"openmoji corpus file {path} holds corpus {corpus.corpus_id}, not {corpus_id}; remove it")
    return corpus
