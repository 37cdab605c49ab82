"""Captions from glyph names: a few plain templates, one picked per image by the image's generator.

The templates mimic short alt-text captions ("a picture of a dog face", "a cat face and a rocket"). The
article is "an" before a vowel letter and "a" otherwise; plural names ("books") keep the article, which
is harmless noise at the scale of web captions.
"""

from __future__ import annotations

import numpy as np

SINGLE_TEMPLATES: tuple[str, ...] = (
    "{a}",
    "a picture of {a}",
    "an emoji of {a}",
    "a drawing of {a}",
    "there is {a} in the scene",
    "{a} on a patterned background",
)
PAIR_TEMPLATES: tuple[str, ...] = (
    "{a} and {b}",
    "a picture of {a} and {b}",
    "an emoji of {a} next to {b}",
    "a drawing of {a} with {b}",
    "there are {a} and {b} in the scene",
)


def with_article(name: str) -> str:
    return f"{'an' if name[:1] in 'aeiou' else 'a'} {name}"


def caption(names: list[str], rng: np.random.Generator) -> str:
    """A caption naming one or two glyphs, in the given order."""
    if len(names) == 1:
        return SINGLE_TEMPLATES[int(rng.integers(len(SINGLE_TEMPLATES)))].format(a=with_article(names[0]))
    if len(names) == 2:
        template = PAIR_TEMPLATES[int(rng.integers(len(PAIR_TEMPLATES)))]
        return template.format(a=with_article(names[0]), b=with_article(names[1]))
    raise ValueError(f"a corpus caption names one or two glyphs, not {len(names)}")
