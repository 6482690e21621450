"""Composition: ``Compose`` (in sequence), ``OneOf`` (one, by weight), ``RandomApply`` (with
probability p), and ``Lambda`` for any ``f(image, rng)`` of the user's own.

Compositions are image transforms themselves: they draw every random parameter first
(children in order) and then apply, so one image and a whole batch consume the rng
identically.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .transforms import ImageTransform, Shape

__all__ = ["Compose", "Lambda", "OneOf", "RandomApply", "as_image_transform"]


def as_image_transform(item: Any) -> ImageTransform:
    """An :class:`ImageTransform` as is; a plain ``f(image, rng)`` wrapped in :class:`Lambda`."""
    if isinstance(item, ImageTransform):
        return item
    if callable(item):
        return Lambda(item)
    raise TypeError(
        f"expected an image transform or a callable f(image, rng), got {type(item).__name__}"
    )


def _children(transforms: Sequence[Any], owner: str) -> tuple[ImageTransform, ...]:
    if isinstance(transforms, ImageTransform) or callable(transforms):
        raise TypeError(f"{owner} takes a list of transforms, e.g. {owner}([Rotate(), Smooth()])")
    children = tuple(as_image_transform(t) for t in transforms)
    if not children:
        raise ValueError(f"{owner} needs at least one transform")
    reshaping = [t for t in children if not t.preserves_shape]
    if reshaping and owner != "Compose":
        raise TypeError(
            f"{owner} draws its choice ahead for images of one shape, and "
            f"{type(reshaping[0]).__name__} changes the shape: put {owner} after the step "
            "that gives every image one size (e.g. Compose([Decode(), "
            f"RandomResizedCrop(224), {owner}(...)]))"
        )
    return children


def _normalizes(transform: ImageTransform) -> bool:
    from .photo import Normalize

    return isinstance(transform, Normalize) or any(
        _normalizes(t) for t in getattr(transform, "transforms", ()))


def _keeps_range(transform: ImageTransform) -> bool:
    """Whether ``transform`` takes any float values as they are (moves or resamples
    pixels without clipping them to [0, 1], as the Pillow-faithful kernels do)."""
    from .photo import Normalize, _Flip, _Reshaping

    if isinstance(transform, Normalize):
        return False  # a second one would normalize twice
    if isinstance(transform, (_Reshaping, _Flip, Lambda)):
        return True
    children = getattr(transform, "transforms", None)
    return children is not None and all(_keeps_range(t) for t in children)


def _clipping(transform: ImageTransform) -> ImageTransform | None:
    """The first transform in ``transform`` (itself, or one it holds) that clips."""
    if _keeps_range(transform):
        return None
    for child in getattr(transform, "transforms", ()):
        found = _clipping(child)
        if found is not None:
            return found
    return transform


def _refuse_after_normalize(transforms: Sequence[ImageTransform]) -> None:
    """Normalized images hold values outside [0, 1], which the image kernels clip."""
    for position, transform in enumerate(transforms):
        if _normalizes(transform):
            later = [c for t in transforms[position + 1:] if (c := _clipping(t)) is not None]
            if later:
                raise TypeError(
                    f"{type(later[0]).__name__} after Normalize: the image kernels take "
                    "float images in [0, 1] and clip to that range, and normalized ones "
                    "go beyond it. Put Normalize last (flips, crops and resizes may "
                    "follow it)"
                )
            return


class Lambda(ImageTransform):
    """A user function ``fn(image, rng) -> image`` as a transform.

    Its draw takes one 63-bit seed from the rng; apply gives ``fn`` a generator made from
    it, so ``fn`` stays reproducible wherever it runs.
    """

    def __init__(self, fn: Callable[[np.ndarray, np.random.Generator], np.ndarray]) -> None:
        if not callable(fn):
            raise TypeError(f"Lambda needs a callable f(image, rng), got {type(fn).__name__}")
        self.fn = fn

    def draw(self, rng: np.random.Generator, shape: Shape) -> int:
        return int(rng.integers(1 << 63))

    def apply(self, image: np.ndarray, params: int) -> np.ndarray:
        out = self.fn(image, np.random.default_rng(params))
        if not isinstance(out, np.ndarray) or out.shape[:2] != image.shape[:2]:
            raise ValueError(
                f"{getattr(self.fn, '__name__', self.fn)!r} must return an image of shape "
                f"{image.shape}, got {getattr(out, 'shape', type(out).__name__)}"
            )
        return out.astype(image.dtype, copy=False).reshape(image.shape)


class Compose(ImageTransform):
    """Apply every transform of ``transforms`` in order."""

    def __init__(self, transforms: Sequence[Any]) -> None:
        self.transforms = _children(transforms, "Compose")
        # With a transform that changes the shape (Decode, a crop), each draws from the
        # rng with the shape of what it gets, in order, one image at a time.
        self.preserves_shape = all(t.preserves_shape for t in self.transforms)
        _refuse_after_normalize(self.transforms)

    def transform_image(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.preserves_shape:
            return super().transform_image(image, rng)
        for transform in self.transforms:
            image = transform.transform_image(image, rng)
        return image

    def transform_batch(self, images: np.ndarray, rngs: Any) -> np.ndarray:
        if not self.preserves_shape:
            raise TypeError("this Compose changes the image's shape or dtype, so it runs one "
                            "image at a time (the loader does so)")
        return super().transform_batch(images, rngs)

    def draw(self, rng: np.random.Generator, shape: Shape) -> list[Any]:
        return [t.draw(rng, shape) for t in self.transforms]

    def apply(self, image: np.ndarray, params: list[Any]) -> np.ndarray:
        for transform, p in zip(self.transforms, params, strict=True):
            image = transform.apply(image, p)
        return image

    def apply_batch(self, images: np.ndarray, params: Sequence[Any]) -> np.ndarray:
        for position, transform in enumerate(self.transforms):
            images = transform.apply_batch(images, [p[position] for p in params])
        return images


class OneOf(ImageTransform):
    """Apply exactly one of the transforms, chosen with probability proportional to
    ``weights`` (equal by default)."""

    def __init__(self, transforms: Sequence[Any], weights: Sequence[float] | None = None
                 ) -> None:
        self.transforms = _children(transforms, "OneOf")
        if weights is None:
            weights = [1.0] * len(self.transforms)
        weights = [float(w) for w in weights]
        if len(weights) != len(self.transforms):
            raise ValueError(
                f"OneOf got {len(self.transforms)} transforms but {len(weights)} weights"
            )
        if any(not np.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"OneOf weights must be >= 0 and not all 0, got {weights}")
        self.weights = tuple(weights)
        total = sum(weights)
        self._cumulative = [c / total for c in itertools.accumulate(weights)]
        self._cumulative[-1] = 1.0

    def draw(self, rng: np.random.Generator, shape: Shape) -> tuple[int, Any]:
        # The last cumulative weight is exactly 1.0 and rng.random() < 1, so the index
        # is always in range.
        index = bisect.bisect_right(self._cumulative, rng.random())
        return index, self.transforms[index].draw(rng, shape)

    def apply(self, image: np.ndarray, params: tuple[int, Any]) -> np.ndarray:
        index, inner = params
        return self.transforms[index].apply(image, inner)

    def apply_batch(self, images: np.ndarray, params: Sequence[Any]) -> np.ndarray:
        rows: list[list[int]] = [[] for _ in self.transforms]
        inner: list[list[Any]] = [[] for _ in self.transforms]
        for row, (index, p) in enumerate(params):
            rows[index].append(row)
            inner[index].append(p)
        out = None
        for transform, chosen, chosen_params in zip(self.transforms, rows, inner, strict=True):
            if len(chosen) == len(images):
                return transform.apply_batch(images, chosen_params)
            if chosen:
                if out is None:
                    out = np.empty_like(images)
                out[chosen] = transform.apply_batch(images[chosen], chosen_params)
        return images.copy() if out is None else out


class RandomApply(ImageTransform):
    """Apply ``transform`` with probability ``p``, else leave the image as it is."""

    def __init__(self, transform: Any, p: float = 0.5) -> None:
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"RandomApply probability p must be in [0, 1], got {p!r}")
        self.transform = _children([transform], "RandomApply")[0]
        self.p = float(p)

    def draw(self, rng: np.random.Generator, shape: Shape) -> tuple[bool, Any]:
        if rng.random() < self.p:
            return True, self.transform.draw(rng, shape)
        return False, None

    def apply(self, image: np.ndarray, params: tuple[bool, Any]) -> np.ndarray:
        applied, inner = params
        return self.transform.apply(image, inner) if applied else image

    def apply_batch(self, images: np.ndarray, params: Sequence[Any]) -> np.ndarray:
        rows = [i for i, (applied, _) in enumerate(params) if applied]
        if not rows:
            return images
        out = images.copy()
        out[rows] = self.transform.apply_batch(images[rows], [params[r][1] for r in rows])
        return out

