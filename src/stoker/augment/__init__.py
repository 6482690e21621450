"""Seeded, composable image augmentation on OpenCV and numpy.

Every transform is called as ``t(sample, rng)`` with the ``numpy.random.Generator`` the
loader gives each sample, so results are reproducible for any number of workers. The
kernels follow Pillow's arithmetic (see :mod:`stoker.augment.functional`), so moving off
PIL changes the speed, not the pictures.

    from stoker.augment import kanji_distort
    loader = stoker.Loader(source, batch_size=256, transform=kanji_distort())

Photographs kept encoded in a store: ``Compose([Decode(), RandomResizedCrop(224),
HorizontalFlip(), Normalize(mean, std)])`` (:mod:`stoker.augment.photo`).

``MixUp`` and ``CutMix`` work on whole batches: ``Loader(..., batch_transform=MixUp())``.
"""

from . import functional
from .batch import CutMix, MixUp
from .compose import Compose, Lambda, OneOf, RandomApply
from .photo import (
    CenterCrop,
    Decode,
    HorizontalFlip,
    Normalize,
    RandomResizedCrop,
    Resize,
    VerticalFlip,
)
from .recipes import kanji_distort
from .transforms import (
    GaussianBlur,
    ImageTransform,
    Rotate,
    ScaleTranslate,
    Sharpen,
    Shear,
    SineWarp,
    Smooth,
)

__all__ = [
    "CenterCrop",
    "Compose",
    "CutMix",
    "Decode",
    "GaussianBlur",
    "HorizontalFlip",
    "ImageTransform",
    "Lambda",
    "MixUp",
    "Normalize",
    "OneOf",
    "RandomApply",
    "RandomResizedCrop",
    "Resize",
    "Rotate",
    "ScaleTranslate",
    "Sharpen",
    "Shear",
    "SineWarp",
    "Smooth",
    "VerticalFlip",
    "functional",
    "kanji_distort",
]
