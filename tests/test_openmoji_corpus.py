"""The OpenMoji pretraining corpus of the CLIP teacher: leakage, reviewed files, determinism, cache, errors."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import yaml

import mlfsic.datasets.openmoji_corpus.cache as cache_module
from mlfsic.datasets.coco_moji.catalogue import DISTRACTORS, GLYPHS
from mlfsic.datasets.coco_moji.generate import default_split_file, read_split
from mlfsic.datasets.openmoji_corpus import (
    CORPUS_VERSION,
    REGIMES,
    Corpus,
    build_corpus,
    corpus_glyphs,
    excluded_codepoints,
    load_or_build_corpus,
    summary,
)
from mlfsic.datasets.openmoji_corpus.build import plan_glyphs
from mlfsic.datasets.openmoji_corpus.glyph_set import candidate_glyphs
from mlfsic.datasets.openmoji_corpus.review_files import (
    CONCEPT_SEEN_FILE,
    STRICT_FILE,
    default_exclusion_file,
    read_exclusion_file,
)
from mlfsic.datasets.openmoji_corpus.unicode_names import NEWER_THAN_UNICODE_14
from mlfsic.harness.errors import MlfsicError

N_IMAGES = 64
SIZE = 64
ENTRY = re.compile(r"U\+([0-9A-F]{4,6}) (.+)")


def _split() -> dict[str, list[str]]:
    split, _ = read_split(default_split_file())
    return split


def _held_out_scene_glyphs() -> set[int]:
    split = _split()
    return {code for label in split["val"] + split["test"] for code in GLYPHS[label]}


def _file_codepoints(file_name: str) -> dict[str, set[int]]:
    """Parsed independently of the loader: {label: codepoints} of a reviewed file."""
    raw = yaml.safe_load(default_exclusion_file(file_name).read_text())
    parsed: dict[str, set[int]] = {}
    for label, entries in raw.items():
        matches = [ENTRY.fullmatch(entry) for entry in entries]
        assert all(matches), (file_name, label)
        parsed[label] = {int(match.group(1), 16) for match in matches if match}
    return parsed


@pytest.fixture(scope="module")
def corpora() -> dict[str, Corpus]:
    return {regime: build_corpus(regime, seed=0, n_images=N_IMAGES, image_size=SIZE, progress=False)
            for regime in REGIMES}


# --- leakage -------------------------------------------------------------------------------------------------


def test_the_split_is_the_one_the_reviewed_files_were_written_for():
    split = _split()
    assert split["val"] == ["cow", "zebra", "sandwich", "bear", "person", "laptop", "bed", "teddy bear", "skis"]
    assert sorted(split["test"]) == sorted(["bicycle", "boat", "stop sign", "bird", "backpack", "frisbee", "cup",
                                            "spoon", "broccoli", "chair", "keyboard", "vase"])


def test_concept_seen_file_equals_the_scene_glyphs_of_the_held_out_labels():
    split = _split()
    listed = _file_codepoints(CONCEPT_SEEN_FILE)
    assert set(listed) == set(split["val"] + split["test"])
    for label, codepoints in listed.items():
        assert codepoints == set(GLYPHS[label]), label


def test_every_reviewed_entry_carries_the_codepoints_unicode_name():
    for file_name in (CONCEPT_SEEN_FILE, STRICT_FILE):
        raw = yaml.safe_load(default_exclusion_file(file_name).read_text())
        for label, entries in raw.items():
            for entry in entries:
                match = ENTRY.fullmatch(entry)
                assert match, (file_name, label, entry)
                codepoint = int(match.group(1), 16)
                name = unicodedata.name(chr(codepoint), "").lower() or NEWER_THAN_UNICODE_14[codepoint].lower()
                assert name == match.group(2), (file_name, label, entry, name)


def test_strict_file_covers_every_held_out_label_and_adds_concept_glyphs():
    split = _split()
    strict = _file_codepoints(STRICT_FILE)
    assert set(strict) == set(split["val"] + split["test"])
    scene = _held_out_scene_glyphs()
    extra = set().union(*strict.values())
    assert extra and not extra & scene  # only glyphs beyond the scene glyphs
    for label, code in [("bird", 0x1F414), ("cup", 0x1F37A), ("person", 0x1F468), ("bear", 0x1F43C),
                        ("bicycle", 0x1F6B4), ("skis", 0x26F7), ("sandwich", 0x1F354), ("cow", 0x1F403)]:
        assert code in strict[label], (label, hex(code))


@pytest.mark.parametrize("regime", REGIMES)
def test_no_held_out_scene_glyph_reaches_the_corpus(regime, corpora):
    scene = _held_out_scene_glyphs()
    glyph_codes = {glyph.codepoint for glyph in corpus_glyphs(regime)}
    assert not glyph_codes & scene
    corpus = corpora[regime]
    assert tuple(corpus_glyphs(regime)) == corpus.glyphs
    drawn = {corpus.glyphs[i].codepoint for i in corpus.glyph_index.ravel() if i >= 0}
    assert drawn and not drawn & scene
    assert set(excluded_codepoints(regime)) >= scene


def test_strict_corpus_has_no_reviewed_concept_glyph(corpora):
    strict_extra = set().union(*_file_codepoints(STRICT_FILE).values())
    glyph_codes = {glyph.codepoint for glyph in corpus_glyphs("strict")}
    assert not glyph_codes & strict_extra
    corpus = corpora["strict"]
    assert not {corpus.glyphs[i].codepoint for i in corpus.glyph_index.ravel() if i >= 0} & strict_extra
    # the concept-seen corpus does show them (that is the difference between the regimes)
    concept_seen = {glyph.codepoint for glyph in corpus_glyphs("concept-seen")}
    assert {0x1F414, 0x1F37A, 0x1F468, 0x1F6B4} <= concept_seen


def test_strict_excludes_strictly_more_than_concept_seen():
    concept_seen, strict = excluded_codepoints("concept-seen"), excluded_codepoints("strict")
    assert set(concept_seen) < set(strict)
    strict_glyphs = {glyph.codepoint for glyph in corpus_glyphs("strict")}
    assert strict_glyphs < {glyph.codepoint for glyph in corpus_glyphs("concept-seen")}
    assert concept_seen[0x1F426] == "test label 'bird' scene glyph"
    assert strict[0x1F414] == "strict: concept of test label 'bird'"


def test_base_glyphs_and_distractors_are_in_the_concept_seen_corpus():
    split = _split()
    corpus_codes = {glyph.codepoint for glyph in corpus_glyphs("concept-seen")}
    base = {code for label in split["base"] for code in GLYPHS[label]}
    assert len(base) > 60
    assert base <= corpus_codes
    assert set(DISTRACTORS) <= corpus_codes


def test_corpus_glyphs_are_named_pictorial_and_pinned_to_unicode_14():
    candidates, skipped = candidate_glyphs()
    glyphs = corpus_glyphs("concept-seen")
    codes = [glyph.codepoint for glyph in glyphs]
    assert codes == sorted(codes) and 1300 < len(glyphs) < 1460
    assert not set(codes) & set(NEWER_THAN_UNICODE_14)
    assert all(glyph.name == glyph.name.lower() and glyph.name for glyph in glyphs)
    assert len({glyph.name for glyph in candidates}) == len(candidates)  # caption names stay distinct
    for code in (0x1F1E6, 0x1F3FB, 0x1F9B0, 0x20E3, 0x2D, 0x1F21A):  # regional A, skin tone, hair, keycap, -, CJK
        assert code in skipped and code not in codes
    names = {glyph.codepoint: glyph.name for glyph in glyphs}
    assert names[0x1F415] == "dog" and names[0x2764] == "heart" and names[0x2B1B] == "black large square"


# --- building ------------------------------------------------------------------------------------------------


def test_corpus_shapes_and_captions_name_the_drawn_glyphs(corpora):
    corpus = corpora["concept-seen"]
    assert corpus.images.shape == (N_IMAGES, SIZE, SIZE, 3) and corpus.images.dtype == np.uint8
    assert corpus.glyph_index.shape == (N_IMAGES, 2) and corpus.glyph_index.dtype == np.int32
    assert len(corpus.captions) == N_IMAGES
    assert (corpus.glyph_index[:, 0] >= 0).all()
    two = corpus.glyph_index[:, 1] >= 0
    assert 0.2 < two.mean() < 0.6
    assert (corpus.glyph_index[two, 0] != corpus.glyph_index[two, 1]).all()
    for text, row in zip(corpus.captions, corpus.glyph_index, strict=True):
        for index in row[row >= 0]:
            assert corpus.glyphs[index].name in text, (text, corpus.glyphs[index])
    assert corpus.images.std() > 10  # drawn, not blank
    info = summary(corpus)
    assert (info["n_images"], info["n_concepts"], info["regime"]) == (N_IMAGES, len(corpus.glyphs), "concept-seen")
    assert info["excluded_by_reason"]["test label 'bird' scene glyph"] == 13
    assert info["excluded_from_corpus"] == 48  # goose U+1FABF is newer than Unicode 14.0, never a candidate


def test_plan_deals_every_glyph_equally_often():
    plan = plan_glyphs(1000, 7, np.random.default_rng(0))
    counts = np.bincount(plan[plan >= 0], minlength=7)
    assert counts.max() - counts.min() <= 1
    two = plan[:, 1] >= 0
    assert (plan[two, 0] != plan[two, 1]).all()


def test_same_arguments_give_identical_corpora_and_another_seed_differs(corpora):
    first = corpora["concept-seen"]
    again = build_corpus("concept-seen", seed=0, n_images=N_IMAGES, image_size=SIZE, progress=False)
    assert np.array_equal(first.images, again.images) and first.captions == again.captions
    assert np.array_equal(first.glyph_index, again.glyph_index) and first.corpus_id == again.corpus_id
    other = build_corpus("concept-seen", seed=1, n_images=N_IMAGES, image_size=SIZE, progress=False)
    assert not np.array_equal(first.images, other.images) and first.captions != other.captions
    assert other.corpus_id != first.corpus_id != corpora["strict"].corpus_id


def test_cache_is_written_once_and_reused(tmp_path, monkeypatch, corpora):
    built = load_or_build_corpus(tmp_path, "strict", seed=0, n_images=N_IMAGES, image_size=SIZE, progress=False)
    path = tmp_path / f"{built.corpus_id}.npz"
    assert path.is_file() and path.with_suffix(".json").is_file()
    assert not list(tmp_path.glob("*.tmp"))
    assert np.array_equal(built.images, corpora["strict"].images)
    mtime = path.stat().st_mtime_ns

    def no_build(*args, **kwargs):
        raise AssertionError("the cached corpus was rebuilt")

    monkeypatch.setattr(cache_module, "build_corpus", no_build)
    loaded = load_or_build_corpus(tmp_path, "strict", seed=0, n_images=N_IMAGES, image_size=SIZE, progress=False)
    assert path.stat().st_mtime_ns == mtime
    assert np.array_equal(loaded.images, built.images) and loaded.captions == built.captions
    assert np.array_equal(loaded.glyph_index, built.glyph_index)
    assert loaded.glyphs == built.glyphs and loaded.excluded == built.excluded
    assert (loaded.corpus_id, loaded.regime, loaded.seed, loaded.image_size) == (built.corpus_id, "strict", 0, SIZE)
    assert CORPUS_VERSION in path.with_suffix(".json").read_text()


# --- errors --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('bird:\n  - "1F426 bird"\n', "'1F426 bird'"),  # no U+
        ('bird:\n  - "U+1F427 bird"\n', "'U+1F427 bird'"),  # the codepoint is the penguin
        ('bird:\n  - 42\n', "42"),
        ('pigeon:\n  - "U+1F426 bird"\n', "'pigeon'"),  # not a coco-moji category
        ('bird: "U+1F426 bird"\n', "'bird'"),  # not a list
        ("bird: [\n", "malformed"),
    ],
)
def test_malformed_exclusion_file_is_an_error_naming_file_and_entry(tmp_path, content, message):
    bad = tmp_path / "bad_exclusions.yaml"
    bad.write_text(content)
    with pytest.raises(MlfsicError, match="bad_exclusions.yaml") as error:
        read_exclusion_file(bad)
    assert message in str(error.value)


def test_stale_or_incomplete_reviewed_files_are_errors(tmp_path):
    scene = yaml.safe_load(default_exclusion_file(CONCEPT_SEEN_FILE).read_text())
    scene["cow"] = scene["cow"][:2]  # the ox is missing: the file no longer matches catalogue.GLYPHS
    stale = tmp_path / "stale.yaml"
    stale.write_text(yaml.safe_dump(scene))
    with pytest.raises(MlfsicError, match="stale.yaml.*'cow'"):
        excluded_codepoints("concept-seen", concept_seen_file=stale)
    strict = yaml.safe_load(default_exclusion_file(STRICT_FILE).read_text())
    del strict["vase"]
    incomplete = tmp_path / "incomplete.yaml"
    incomplete.write_text(yaml.safe_dump(strict))
    with pytest.raises(MlfsicError, match="incomplete.yaml.*'vase'"):
        excluded_codepoints("strict", strict_file=incomplete)


def test_unknown_regime_and_bad_arguments_are_errors(tmp_path):
    with pytest.raises(MlfsicError, match="'web'.*concept-seen, strict"):
        corpus_glyphs("web")
    with pytest.raises(MlfsicError, match="'web'"):
        build_corpus("web", 0, 8, 64, progress=False)
    with pytest.raises(MlfsicError, match="'web'"):
        load_or_build_corpus(tmp_path, "web", 0, 8, 64, progress=False)
    with pytest.raises(MlfsicError, match="n_images=0"):
        build_corpus("strict", 0, 0, 64, progress=False)
    for size in (31, 257):
        with pytest.raises(MlfsicError, match=f"image_size={size}"):
            build_corpus("strict", 0, 8, size, progress=False)
    assert not list(Path(tmp_path).iterdir())
