"""Unicode names of emoji codepoints, pinned to Unicode 14.0 so the corpus is the same on every Python.

Python's ``unicodedata`` follows the Unicode version of the interpreter: 14.0.0 on Python 3.11, 15.0.0 on
3.12, 15.1.0 on 3.13. OpenMoji 17 already draws some emoji that Unicode added after 14.0 (goose, moose,
shaking face, ...): they have no name on Python 3.11 but one on newer interpreters, which would silently
grow the corpus (and change its id) with the Python version. ``unicode14_name`` therefore answers None for
the codepoints in ``NEWER_THAN_UNICODE_14`` on any Python, so the corpus uses exactly the Unicode 14.0
repertoire that Python 3.11, the oldest supported, knows.

``NEWER_THAN_UNICODE_14`` lists every non-private-use codepoint that OpenMoji 17 ships as a single-codepoint
glyph and Python 3.11's ``unicodedata`` cannot name, with its Unicode 15.0 name as Python 3.13's
``unicodedata`` gives it ("" for the ones added in Unicode 16.0 or later, which 3.13 cannot name either).
``reviewed_name`` uses those names too, so a reviewed exclusion file may name a newer glyph that coco-moji
draws (U+1FABF goose).
"""

from __future__ import annotations

import unicodedata

UNICODE_VERSION = "14.0.0"

NEWER_THAN_UNICODE_14: dict[int, str] = {
    0x1F6D8: "", 0x1F6DC: "WIRELESS", 0x1FA75: "LIGHT BLUE HEART", 0x1FA76: "GREY HEART",
    0x1FA77: "PINK HEART", 0x1FA87: "MARACAS", 0x1FA88: "FLUTE", 0x1FA89: "", 0x1FA8A: "", 0x1FA8E: "",
    0x1FA8F: "", 0x1FAAD: "FOLDING HAND FAN", 0x1FAAE: "HAIR PICK", 0x1FAAF: "KHANDA", 0x1FABB: "HYACINTH",
    0x1FABC: "JELLYFISH", 0x1FABD: "WING", 0x1FABE: "", 0x1FABF: "GOOSE", 0x1FAC6: "", 0x1FAC8: "",
    0x1FACD: "", 0x1FACE: "MOOSE", 0x1FACF: "DONKEY", 0x1FADA: "GINGER ROOT", 0x1FADB: "PEA POD",
    0x1FADC: "", 0x1FADF: "", 0x1FAE8: "SHAKING FACE", 0x1FAE9: "", 0x1FAEA: "", 0x1FAEF: "",
    0x1FAF7: "LEFTWARDS PUSHING HAND", 0x1FAF8: "RIGHTWARDS PUSHING HAND",
}


def unicode14_name(codepoint: int) -> str | None:
    """The Unicode 14.0 name of a codepoint (upper case, as ``unicodedata`` spells it), or None."""
    if codepoint in NEWER_THAN_UNICODE_14:
        return None
    return unicodedata.name(chr(codepoint), None)


def reviewed_name(codepoint: int) -> str | None:
    """The name a reviewed exclusion entry must carry: Unicode 14.0, else the newer name listed above."""
    return unicode14_name(codepoint) or NEWER_THAN_UNICODE_14.get(codepoint) or None
