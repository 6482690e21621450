"""The built-in data set: the 2965 JIS level-1 kanji, rendered at 64x64 from Japanese
fonts that pip installs, so the main job needs nothing downloaded by hand.

Training images come from ten faces: Noto Sans CJK JP at five weights (100 to 900, a
variable font), its Simplified Chinese, Traditional Chinese and Korean forms (regional
glyph variants of the same characters), IPAexGothic and Noto Sans JP. Validation
images come from Noto Serif JP, a serif style that training never sees, so validation
accuracy measures generalisation to an unseen style, as handwriting from unseen writers
does in the question. Ink is bright on black, uint8, as in the question's ETL data.

Rendering all of it takes a few seconds; the result is cached as two stores (in
``$STOKER_CACHE``, else ``$XDG_CACHE_HOME/stoker``, else ``~/.cache/stoker``) and
memory-mapped from there. The fonts come from the ``train`` extra:
``pip install 'stoker[train]'`` (packages ``manimgx-fonts-cjk``, ``matplotlib-fontja``,
``pylopdf-fonts-jp``; SIL Open Font License and IPA Font License).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from .. import store
from .._extras import require
from ..sources import Subset

__all__ = ["TRAIN_FACES", "VALIDATION_FACES", "Face", "GlyphSet", "cache_dir", "level1_kanji",
           "load", "render"]

_VERSION = 1  # bump when the rendering changes: cached stores carry it in their name


@cache
def level1_kanji() -> tuple[str, ...]:
    """The 2965 JIS X 0208 level-1 kanji (rows 16-47), in JIS order (by reading)."""
    kanji = []
    for row in range(16, 48):
        for cell in range(1, 95):
            try:
                kanji.append(bytes([row + 0xA0, cell + 0xA0]).decode("euc_jp"))
            except UnicodeDecodeError:  # row 47 ends at cell 51
                continue
    return tuple(kanji)


@dataclass(frozen=True)
class Face:
    """A font face: a file in an installed package, a collection index, a weight."""

    package: str
    file: str
    index: int = 0
    weight: int | None = None  # for variable fonts: the 'wght' axis

    @property
    def label(self) -> str:
        """A short name for reports: the file's stem, the index and the weight."""
        name = Path(self.file).stem
        return f"{name}#{self.index}" + (f"@{self.weight}" if self.weight else "")

    def path(self) -> Path:
        """The font file, found in its installed package (ImportError naming the extra
        to install when the package is missing)."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise ImportError(
                f"the built-in kanji data set renders fonts from the package {self.package!r}, "
                "which is not installed; install them with: pip install 'stoker[train]'"
            )
        return Path(next(iter(spec.submodule_search_locations))) / self.file

    def font(self, points: int) -> Any:
        """The face as a Pillow font of ``points`` points, at its weight."""
        ImageFont = require("PIL.ImageFont", "rendering the built-in kanji")

        font = ImageFont.truetype(str(self.path()), points, index=self.index)
        if self.weight is not None:
            font.set_variation_by_axes([self.weight])
        return font


_CJK = ("manimgx_fonts_cjk", "NotoSansCJK-VF.otf.ttc")
TRAIN_FACES = (
    *(Face(*_CJK, index=0, weight=w) for w in (100, 300, 500, 700, 900)),  # JP forms
    Face(*_CJK, index=2, weight=400),  # Simplified Chinese forms
    Face(*_CJK, index=3, weight=400),  # Traditional Chinese forms
    Face(*_CJK, index=1, weight=400),  # Korean forms
    Face("matplotlib_fontja", "fonts/ipaexg.ttf"),
    Face("pylopdf_fonts_jp", "NotoSansJP-Regular.otf"),
)
VALIDATION_FACES = (Face("pylopdf_fonts_jp", "NotoSerifJP-Regular.otf"),)


@dataclass(frozen=True)
class GlyphSet:
    """Training and validation sources of (image uint8 HxWx1, label int32) samples.

    ``train`` is rendered from ``TRAIN_FACES``, ``val`` from ``VALIDATION_FACES`` (a font
    never trained on); ``classes`` holds the characters (label i is ``classes[i]``) and
    ``size`` the side of the square images in pixels.
    """

    train: Any
    val: Any
    classes: tuple[str, ...]
    size: int


def render(characters: tuple[str, ...], face: Face, size: int = 64) -> np.ndarray:
    """Each of ``characters`` in the font ``face``, centred on a ``size`` x ``size`` black
    canvas, ink bright: (N, size, size) uint8."""
    Image = require("PIL.Image", "rendering the built-in kanji")
    ImageDraw = require("PIL.ImageDraw", "rendering the built-in kanji")

    font = face.font(round(size * 0.85))
    out = np.empty((len(characters), size, size), np.uint8)
    canvas = Image.new("L", (size, size))
    draw = ImageDraw.Draw(canvas)
    for i, character in enumerate(characters):
        draw.rectangle((0, 0, size, size), fill=0)
        draw.text((size / 2, size / 2), character, fill=255, font=font, anchor="mm")
        out[i] = np.asarray(canvas)
    return out


def cache_dir() -> Path:
    """Where rendered data sets are kept."""
    if os.environ.get("STOKER_CACHE"):
        return Path(os.environ["STOKER_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "stoker"


def _write(path: Path, faces: tuple[Face, ...], size: int, classes: tuple[str, ...]) -> None:
    labels = np.arange(len(classes), dtype=np.int32)
    try:
        with store.Writer(path, classes=list(classes)) as writer:
            for face in faces:
                writer.append((render(classes, face, size)[..., None], labels))
    except FileExistsError:
        pass  # another process rendered it first: theirs is as good as ours


def _open_or_render(name: str, faces: tuple[Face, ...], size: int) -> store.StoreSource:
    path = cache_dir() / f"kanji{size}-v{_VERSION}-{name}.stoker"
    try:
        return store.open(path)
    except store.StoreError:
        if path.exists():  # damaged: removed, then rendered again (the write of a store
            # is atomic: a kill leaves no store or a whole one, never half of one)
            import shutil

            shutil.rmtree(path, ignore_errors=True)
    _write(path, faces, size, level1_kanji())
    return store.open(path)


def load(*, classes: int = 2965, size: int = 64) -> GlyphSet:
    """The data set, memory-mapped from the cache (rendered on first use): the first
    ``classes`` kanji in JIS order, as ``size`` x ``size`` images."""
    every = level1_kanji()
    if not 2 <= classes <= len(every):
        raise ValueError(f"classes must be between 2 and {len(every)}, got {classes}")
    if not 16 <= size <= 512:
        raise ValueError(f"size must be between 16 and 512 pixels, got {size}")
    train = _open_or_render("train", TRAIN_FACES, size)
    val = _open_or_render("val", VALIDATION_FACES, size)
    if classes < len(every):
        train = Subset(train, np.flatnonzero(train.arrays[1] < classes))
        val = Subset(val, np.flatnonzero(val.arrays[1] < classes))
    return GlyphSet(train, val, every[:classes], size)
