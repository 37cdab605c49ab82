"""The OpenMoji image-text pretraining corpus of the coco-moji CLIP teacher.

A tiny CLIP teacher (an image tower trained from scratch, the bundled MiniLM text tower) is trained
contrastively on captioned images of the OpenMoji glyphs that coco-moji does NOT use for its held-out
labels, standing in for web-scale CLIP data. Each image is a coco-moji-style scene (same backgrounds,
augmentations and distractors, ``coco_moji.scene``) of one or two corpus glyphs, captioned from their
Unicode names ("a picture of a dog face"). The regime says what the teacher may see of the val and test
(= novel) labels: ``concept-seen`` (never their coco-moji glyphs, but their concepts through other glyphs)
or ``strict`` (no glyph of their concepts at all); both lists are reviewed files in ``configs/teacher/``.

Modules, one job each:
``unicode_names``  Unicode names pinned to Unicode 14.0, the same on every Python
``glyph_set``      candidate glyphs (named, pictorial, drawable) and their caption names
``review_files``   reading and checking the reviewed exclusion files
``regimes``        the regimes: excluded codepoints and the corpus glyphs of each
``captions``       caption templates
``build``          the balanced plan, drawing, identity and summary of a corpus
``cache``          the ``.npz`` cache under a file lock

Glyphs: OpenMoji (https://openmoji.org), CC BY-SA 4.0.
"""

from mlfsic.datasets.openmoji_corpus.build import CORPUS_VERSION, Corpus, build_corpus, summary
from mlfsic.datasets.openmoji_corpus.cache import load_or_build_corpus
from mlfsic.datasets.openmoji_corpus.glyph_set import CorpusGlyph
from mlfsic.datasets.openmoji_corpus.regimes import REGIMES, corpus_glyphs, excluded_codepoints

__all__ = [
    "CORPUS_VERSION",
    "REGIMES",
    "Corpus",
    "CorpusGlyph",
    "build_corpus",
    "corpus_glyphs",
    "excluded_codepoints",
    "load_or_build_corpus",
    "summary",
]
