"""The two regimes: which glyphs the teacher may see, relative to the coco-moji label split.

* ``concept-seen`` (default): never the exact glyphs coco-moji draws for a val or test (= novel) label
  (``concept_seen_exclusions.yaml``, which must equal ``catalogue.GLYPHS`` of those labels); the concepts
  may still appear through other glyphs and names, as in web-scale CLIP data.
* ``strict``: additionally none of the reviewed concept glyphs of those labels (``strict_exclusions.yaml``:
  synonyms, close relatives, glyphs whose name carries the label word).

Base-label glyphs and coco-moji distractors stay allowed in both: the base labels are trained on anyway.
The labels come from the split file (default ``configs/splits/coco.json`` restricted to the drawable
labels, via ``coco_moji.generate.read_split``); every val and test label must have a key in each file
the regime uses, so a new split cannot silently skip the review.
"""

from __future__ import annotations

from pathlib import Path

from mlfsic.datasets.coco_moji.catalogue import GLYPHS
from mlfsic.datasets.coco_moji.generate import default_split_file, read_split
from mlfsic.datasets.openmoji_corpus.glyph_set import CorpusGlyph, candidate_glyphs
from mlfsic.datasets.openmoji_corpus.review_files import (
    CONCEPT_SEEN_FILE,
    STRICT_FILE,
    default_exclusion_file,
    read_exclusion_file,
)
from mlfsic.harness.errors import MlfsicError

REGIMES: tuple[str, ...] = ("concept-seen", "strict")
HELD_OUT_SPLITS: tuple[str, ...] = ("val", "test")


def check_regime(regime: str) -> None:
    if regime not in REGIMES:
        raise MlfsicError(f"unknown corpus regime {regime!r}; accepted: {', '.join(REGIMES)}")


def held_out_labels(split_file: Path | None = None) -> dict[str, list[str]]:
    """{"val": labels, "test": labels} of the split, restricted to the drawable labels."""
    split, _ = read_split(Path(split_file) if split_file is not None else default_split_file())
    return {name: split[name] for name in HELD_OUT_SPLITS}


def _required(exclusions: dict[str, tuple[int, ...]], path: Path, label: str) -> tuple[int, ...]:
    if label not in exclusions:
        raise MlfsicError(f"exclusion file {path} has no entry for held-out label {label!r}; review it and add it")
    return exclusions[label]


def excluded_codepoints(
    regime: str,
    split_file: Path | None = None,
    concept_seen_file: Path | None = None,
    strict_file: Path | None = None,
) -> dict[int, str]:
    """{codepoint: why} of every glyph the regime keeps from the teacher, e.g. "val label 'cow' scene glyph".

    A codepoint excluded for several reasons keeps the first: scene glyphs before strict concepts, val
    before test, labels in split order. The file arguments default to the reviewed files in ``configs``.
    """
    check_regime(regime)
    held_out = held_out_labels(split_file)
    scene_path = Path(concept_seen_file) if concept_seen_file is not None else default_exclusion_file(CONCEPT_SEEN_FILE)
    scene_glyphs = read_exclusion_file(scene_path)
    excluded: dict[int, str] = {}
    for split_name, labels in held_out.items():
        for label in labels:
            listed = _required(scene_glyphs, scene_path, label)
            if sorted(listed) != sorted(GLYPHS[label]):
                raise MlfsicError(
                    f"exclusion file {scene_path}: label {label!r} lists "
                    f"{', '.join(f'U+{c:04X}' for c in listed)} but coco-moji draws "
                    f"{', '.join(f'U+{c:04X}' for c in GLYPHS[label])} (catalogue.GLYPHS); update the file"
                )
            for codepoint in listed:
                excluded.setdefault(codepoint, f"{split_name} label {label!r} scene glyph")
    if regime == "strict":
        strict_path = Path(strict_file) if strict_file is not None else default_exclusion_file(STRICT_FILE)
        concepts = read_exclusion_file(strict_path)
        for split_name, labels in held_out.items():
            for label in labels:
                for codepoint in _required(concepts, strict_path, label):
                    excluded.setdefault(codepoint, f"strict: concept of {split_name} label {label!r}")
    return excluded


def corpus_glyphs(regime: str, split_file: Path | None = None) -> list[CorpusGlyph]:
    """The glyphs the regime's corpus draws, sorted by codepoint."""
    return glyphs_outside(excluded_codepoints(regime, split_file))


def glyphs_outside(excluded: dict[int, str]) -> list[CorpusGlyph]:
    """The candidate glyphs not in ``excluded`` (``excluded_codepoints``), sorted by codepoint."""
    candidates, _ = candidate_glyphs()
    return [glyph for glyph in candidates if glyph.codepoint not in excluded]
