"""Seeded image transforms: each draws its parameters from the ``numpy.random.Generator``
it is given and applies a kernel from :mod:`stoker.augment.functional`.

A transform is called as ``t(sample, rng)``, where the sample is an image, an
``(image, *rest)`` tuple or a dict with an ``"image"`` entry: the image is transformed,
the rest passed through. So a transform goes straight to ``Loader(transform=...)``.

Subclasses implement ``from_uniforms(u, shape)`` (their parameters from ``uniforms``
numbers in [0, 1), a pure function; ``draw(rng, shape)`` takes those numbers from the
rng in one call) and ``apply(image, params)`` (pure, on the working image of
:func:`~stoker.augment.functional.as_working`): the loader's batch path draws for
every sample first and applies the kernels to the whole batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import functional as F

__all__ = [
    "GaussianBlur",
    "ImageTransform",
    "Rotate",
    "ScaleTranslate",
    "Sharpen",
    "Shear",
    "SineWarp",
    "Smooth",
]

Shape = tuple[int, ...]


def _range(name: str, value: Sequence[float], *, low: float | None = None) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a (low, high) pair of numbers, got {value!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise ValueError(
            f"{name} must be a finite (low, high) pair with low <= high, got {value!r}"
        )
    if low is not None and lo < low:
        raise ValueError(f"{name} must not go below {low}, got {value!r}")
    return lo, hi


def _scaled(u: float, bounds: tuple[float, float]) -> float:
    lo, hi = bounds
    return lo + (hi - lo) * u


class ImageTransform:
    """Base class: a random image operation, callable on one sample with its rng."""

    image_key = "image"
    #: Whether the output has the input's shape and dtype (so parameters can be drawn
    #: ahead for a whole stack); photo transforms such as ``Decode`` and crops do not.
    preserves_shape = True
    #: How many U(0, 1) numbers :meth:`from_uniforms` turns into parameters.
    uniforms = 0

    def from_uniforms(self, u: Sequence[float], shape: Shape) -> Any:
        """The parameters for one image of working shape ``shape`` from ``u``, a sequence
        of ``uniforms`` numbers in [0, 1): a pure function, so a recipe can draw every
        number it needs in one generator call."""
        return None

    def draw(self, rng: np.random.Generator, shape: Shape) -> Any:
        """The random parameters for one image of ``shape`` (the working shape), drawn
        from ``rng``."""
        if self.uniforms == 0:
            return self.from_uniforms((), shape)
        if self.uniforms == 1:
            return self.from_uniforms((rng.random(),), shape)
        return self.from_uniforms(rng.random(self.uniforms).tolist(), shape)

    def apply(self, image: np.ndarray, params: Any) -> np.ndarray:
        """Apply with ``params`` to a working image (uint8 or float32, HxW or HxWxC)."""
        raise NotImplementedError

    def apply_batch(self, images: np.ndarray, params: Sequence[Any]) -> np.ndarray:
        """Apply to a stack of working images, ``params[i]`` to ``images[i]``. Subclasses
        with a kernel that takes the whole stack at once override this; the result must
        be identical to :meth:`apply` image by image."""
        out = np.empty_like(images)
        for row, p in enumerate(params):
            out[row] = self.apply(images[row], p)
        return out

    def transform_image(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One image in, one image out, same dtype and shape, its parameters drawn from
        ``rng``."""
        work = F.as_working(image)
        return F.from_working(self.apply(work, self.draw(rng, work.shape)), image)

    def transform_batch(self, images: np.ndarray, rngs: Iterable[np.random.Generator]
                        ) -> np.ndarray:
        """A stack of images (N, H, W[, C]), each with its own rng, in one go: every
        image's parameters are drawn first (``rngs`` may hand out one generator re-keyed
        per image), then the kernels run over the stack. Bit-identical to calling
        :meth:`transform_image` on each image with its rng."""
        work = F.as_working_batch(images)
        shape = work.shape[1:]
        params = [self.draw(rng, shape) for rng in rngs]
        if len(params) != len(work):
            raise ValueError(f"transform_batch got {len(work)} images but {len(params)} rngs")
        return F.from_working(self.apply_batch(work, params), images)

    def image_of(self, sample: Any) -> np.ndarray:
        """The image in ``sample``: the sample itself, its first element, or its
        ``image_key`` entry."""
        if isinstance(sample, np.ndarray):
            return sample
        if isinstance(sample, tuple) and sample:
            return sample[0]
        if isinstance(sample, dict) and self.image_key in sample:
            return sample[self.image_key]
        if isinstance(sample, dict):
            raise TypeError(
                f"{type(self).__name__} transforms a dict sample's {self.image_key!r} entry, "
                f"and this one has {sorted(map(str, sample))}: name the image field "
                f"{self.image_key!r} (store.save(path, {{'{self.image_key}': images, "
                "'label': labels}), or rename it in a transform of your own first)"
            )
        raise TypeError(
            f"{type(self).__name__} expects an image array, an (image, ...) tuple or a dict "
            f"with an {self.image_key!r} entry; got {type(sample).__name__}"
        )

    def with_image(self, sample: Any, image: np.ndarray) -> Any:
        """``sample`` with its image replaced by ``image``; the rest passed through."""
        if isinstance(sample, np.ndarray):
            return image
        if isinstance(sample, tuple):
            return (image, *sample[1:])
        out = dict(sample)
        out[self.image_key] = image
        return out

    def image_field(self, kind: str, keys: Sequence[Any]) -> int | None:
        """Which field of samples of this structure (``kind`` "array", "tuple" or
        "dict", fields ``keys``) :meth:`with_image` replaces, passing the rest through
        as they are; a loader then gathers the other fields straight into the batch.
        None for a subclass that reads or writes samples its own way."""
        cls = type(self)
        if cls.image_of is not ImageTransform.image_of or (
                cls.with_image is not ImageTransform.with_image):
            return None
        if kind in ("array", "tuple"):
            return 0
        if kind == "dict" and self.image_key in keys:
            return list(keys).index(self.image_key)
        return None

    def __call__(self, sample: Any, rng: np.random.Generator) -> Any:
        return self.with_image(sample, self.transform_image(self.image_of(sample), rng))

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


@dataclass(repr=False)
class Rotate(ImageTransform):
    """Rotate by U(degrees) counter-clockwise about the centre (``PIL.Image.rotate``)."""

    degrees: tuple[float, float] = (-15.0, 15.0)

    def __post_init__(self) -> None:
        self.degrees = _range("degrees", self.degrees)

    uniforms = 1

    def from_uniforms(self, u: Sequence[float], shape: Shape) -> float:
        return _scaled(u[0], self.degrees)

    def apply(self, image: np.ndarray, params: float) -> np.ndarray:
        return F._affine(image, F.rotation_matrix(params, image.shape[1], image.shape[0]))


@dataclass(repr=False)
class Shear(ImageTransform):
    """Shear by y ~ U(y_shear) and x ~ U(x_shear), drawn in that order, with Pillow's
    affine convention (the question's ``(1, x_shear, 0, y_shear, 1, 0)``)."""

    x_shear: tuple[float, float] = (-0.2, 0.2)
    y_shear: tuple[float, float] = (-0.2, 0.2)

    def __post_init__(self) -> None:
        self.x_shear = _range("x_shear", self.x_shear)
        self.y_shear = _range("y_shear", self.y_shear)

    uniforms = 2

    def from_uniforms(self, u: Sequence[float], shape: Shape) -> tuple[float, float]:
        return _scaled(u[1], self.x_shear), _scaled(u[0], self.y_shear)

    def apply(self, image: np.ndarray, params: tuple[float, float]) -> np.ndarray:
        return F._affine(image, F.shear_matrix(*params))


@dataclass(repr=False)
class ScaleTranslate(ImageTransform):
    """Resize to an independent random width and height, paste at a random offset on black.

    ``size`` is the half-open range of the new side as a fraction of the old one; the
    default, [25/64, 63/64), is the question's ``random.randrange(25, 63)`` on 64-pixel
    images. The offset is uniform over the positions that keep the image inside.
    """

    size: tuple[float, float] = (25 / 64, 63 / 64)

    def __post_init__(self) -> None:
        self.size = _range("size", self.size, low=0.0)
        if self.size[1] > 1.0:
            raise ValueError(f"size fractions must be at most 1, got {self.size!r}")

    def _bounds(self, side: int) -> tuple[int, int]:
        lo = max(1, round(self.size[0] * side))
        return lo, max(lo + 1, round(self.size[1] * side)) - lo

    uniforms = 4

    def from_uniforms(self, u: Sequence[float], shape: Shape) -> tuple[int, int, int, int]:
        height, width = shape[:2]
        # floor(u * n) is uniform over 0..n-1.
        u_width, u_height, u_left, u_top = u[:4]
        low, span = self._bounds(width)
        new_width = low + int(u_width * span)
        low, span = self._bounds(height)
        new_height = low + int(u_height * span)
        left = int(u_left * max(1, width - new_width))
        top = int(u_top * max(1, height - new_height))
        return new_width, new_height, left, top

    def apply(self, image: np.ndarray, params: tuple[int, int, int, int]) -> np.ndarray:
        return F._scale_translate(image, *params)


@dataclass(repr=False)
class SineWarp(ImageTransform):
    """Roll each column by ``factor * (H/3) * sin(-2π·x·2/W)`` pixels, factor = ±U(amplitude)
    with either sign equally likely (the question's sine distortion, exactly)."""

    amplitude: tuple[float, float] = (0.15, 0.2)

    def __post_init__(self) -> None:
        self.amplitude = _range("amplitude", self.amplitude)

    uniforms = 2

    def from_uniforms(self, u: Sequence[float], shape: Shape) -> float:
        return (-1.0 if u[0] < 0.5 else 1.0) * _scaled(u[1], self.amplitude)

    def apply(self, image: np.ndarray, params: float) -> np.ndarray:
        return F._sine_warp(image, params)

    def apply_batch(self, images: np.ndarray, params: Sequence[float]) -> np.ndarray:
        return F._sine_warp_batch(images, list(params))


@dataclass(repr=False)
class GaussianBlur(ImageTransform):
    """Blur with radius U(radius), Pillow's meaning of radius (the Gaussian's sigma)."""

    radius: tuple[float, float] = (0.5, 1.2)

    def __post_init__(self) -> None:
        self.radius = _range("radius", self.radius, low=0.0)

    uniforms = 1

    def from_uniforms(self, u: Sequence[float], shape: Shape) -> float:
        return _scaled(u[0], self.radius)

    def apply(self, image: np.ndarray, params: float) -> np.ndarray:
        return F._gaussian_blur(image, params)


class Sharpen(ImageTransform):
    """Pillow's ``ImageFilter.SHARPEN`` (deterministic; draws nothing)."""

    def apply(self, image: np.ndarray, params: None) -> np.ndarray:
        return F._filter3x3(image, F.SHARPEN_KERNEL)

    def apply_batch(self, images: np.ndarray, params: Sequence[None]) -> np.ndarray:
        return F._filter3x3_batch(images, F.SHARPEN_KERNEL)


class Smooth(ImageTransform):
    """Pillow's ``ImageFilter.SMOOTH`` (deterministic; draws nothing)."""

    def apply(self, image: np.ndarray, params: None) -> np.ndarray:
        return F._filter3x3(image, F.SMOOTH_KERNEL)

    def apply_batch(self, images: np.ndarray, params: Sequence[None]) -> np.ndarray:
        return F._filter3x3_batch(images, F.SMOOTH_KERNEL)
