"""Ready-made recipes. ``kanji_distort`` is the question's augmentation, on OpenCV."""

from __future__ import annotations

from .compose import Compose, OneOf
from .transforms import GaussianBlur, Rotate, ScaleTranslate, Sharpen, Shear, SineWarp, Smooth

__all__ = ["kanji_distort"]


def kanji_distort() -> Compose:
    """The question's v2 ``distort_sample``: one of sine warp, rotate, shear or
    scale-and-translate, then one of blur, sharpen or smooth, each equally likely, with
    the question's parameter ranges.

    Works on uint8 or float [0, 1] images, HxW or HxWx1; pass it straight to
    ``Loader(transform=kanji_distort())`` for (image, label) samples.
    """
    return Compose([
        OneOf([SineWarp(), Rotate(), Shear(), ScaleTranslate()]),
        OneOf([GaussianBlur(), Sharpen(), Smooth()]),
    ])
