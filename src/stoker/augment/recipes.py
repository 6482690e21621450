"""Ready-made recipes. ``kanji_distort`` is the question's augmentation, on OpenCV."""

from __future__ import annotations

from typing import Any

import numpy as np

from .compose import Compose, OneOf
from .transforms import (
    GaussianBlur,
    Rotate,
    ScaleTranslate,
    Shape,
    Sharpen,
    Shear,
    SineWarp,
    Smooth,
)

__all__ = ["KanjiDistort", "kanji_distort"]


class KanjiDistort(Compose):
    """``Compose([OneOf(geometry), OneOf(filters)])`` with one generator call per image.

    Same operations, same parameters and same distribution as the composition it is;
    only the drawing is fused: every number an image needs comes from one
    ``rng.random(n)`` (scalar draws cost about a microsecond each, a tenth of the work).
    """

    def __init__(self) -> None:
        self.geometry = OneOf([SineWarp(), Rotate(), Shear(), ScaleTranslate()])
        self.filters = OneOf([GaussianBlur(), Sharpen(), Smooth()])
        super().__init__([self.geometry, self.filters])
        self._geometry = self.geometry.transforms
        self._filters = self.filters.transforms
        self.uniforms = 2 + max(t.uniforms for t in self._geometry) + max(
            t.uniforms for t in self._filters)
        self._filter_offset = 2 + max(t.uniforms for t in self._geometry)

    def draw(self, rng: np.random.Generator, shape: Shape) -> list[Any]:
        u = rng.random(self.uniforms).tolist()
        geometry = int(u[0] * len(self._geometry))
        filters = int(u[1] * len(self._filters))
        return [
            (geometry, self._geometry[geometry].from_uniforms(u[2:], shape)),
            (filters, self._filters[filters].from_uniforms(u[self._filter_offset:], shape)),
        ]

    def __repr__(self) -> str:
        return "kanji_distort()"


def kanji_distort() -> KanjiDistort:
    """The question's v2 ``distort_sample``: one of sine warp, rotate, shear or
    scale-and-translate, then one of blur, sharpen or smooth, each equally likely, with
    the question's parameter ranges.

    Works on uint8 or float [0, 1] images, HxW or HxWx1; pass it straight to
    ``Loader(transform=kanji_distort())`` for (image, label) samples.
    """
    return KanjiDistort()
