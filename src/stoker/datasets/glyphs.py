"""The built-in data set: characters rendered at 64x64 from the fonts matplotlib ships.

62 classes (digits, upper- and lower-case letters). Training images come from 17 fonts
(DejaVu Sans and Sans Mono, STIX, Computer Modern) at three sizes; validation images
from the DejaVu Serif family, which training never sees, so validation accuracy
measures generalisation to an unseen style. Ink is bright on black, uint8, as in the
question's kanji. Rendering takes about a second; nothing is downloaded.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..sources import ArraySource, from_arrays

__all__ = ["CLASSES", "GlyphSet", "load"]

CLASSES = tuple(string.digits + string.ascii_uppercase + string.ascii_lowercase)
TRAIN_FONTS = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf", "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf",
    "DejaVuSansMono-Oblique.ttf", "DejaVuSansMono-BoldOblique.ttf", "STIXGeneral.ttf",
    "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf", "cmr10.ttf",
    "cmb10.ttf", "cmss10.ttf", "cmtt10.ttf", "cmti10.ttf",
)
VALIDATION_FONTS = (
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf",
    "DejaVuSerif-BoldItalic.ttf",
)


@dataclass(frozen=True)
class GlyphSet:
    """Training and validation sources of (image uint8 HxWx1, label int32) samples."""

    train: ArraySource
    val: ArraySource
    classes: tuple[str, ...]


def _font_dir() -> Path:
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError(
            "the built-in glyph data set renders fonts that matplotlib ships; "
            "install them with: pip install 'stoker[train]'"
        ) from error
    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def render(character: str, font_path: Path, points: int, size: int = 64) -> np.ndarray:
    """One character, centred on a size x size black canvas, ink bright."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(str(font_path), points)
    canvas = Image.new("L", (size, size))
    draw = ImageDraw.Draw(canvas)
    left, top, right, bottom = draw.textbbox((0, 0), character, font=font)
    draw.text(((size - (right - left)) / 2 - left, (size - (bottom - top)) / 2 - top),
              character, fill=255, font=font)
    return np.asarray(canvas, np.uint8)


def _render_set(fonts: tuple[str, ...], points: tuple[int, ...], classes: int, size: int):
    directory = _font_dir()
    images, labels = [], []
    for font in fonts:
        for pt in points:
            for label, character in enumerate(CLASSES[:classes]):
                images.append(render(character, directory / font, pt, size))
                labels.append(label)
    return np.stack(images)[..., None], np.asarray(labels, np.int32)


def load(*, classes: int = len(CLASSES), size: int = 64) -> GlyphSet:
    """Render the data set into shared memory (first ``classes`` characters only)."""
    if not 2 <= classes <= len(CLASSES):
        raise ValueError(f"classes must be between 2 and {len(CLASSES)}, got {classes}")
    train = from_arrays(*_render_set(TRAIN_FONTS, (34, 40, 46), classes, size))
    val = from_arrays(*_render_set(VALIDATION_FONTS, (40,), classes, size))
    return GlyphSet(train, val, CLASSES[:classes])
