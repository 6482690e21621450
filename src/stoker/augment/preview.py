"""See what you train on: a grid of originals and their augmentations, as a PNG.

Row ``i`` shows image ``i`` in its first column and ``augmentations`` results of the
recipe beside it, each drawn with the generator a Loader with seed ``seed`` would give
sample ``i`` in successive epochs, so the grid shows exactly what training will see.
A header names the columns ("original", "epoch 0", ...) under a title line (the recipe
and the seed).
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..plan import Purpose, SampleRng, epoch_key

__all__ = ["grid", "load_recipe", "write_png"]

_GAP = 2  # pixels between cells
_SEPARATOR = 6  # wider gap after the originals' column
_LINE = 16  # pixels per header line
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_TEXT_SCALE = 0.4
_SMALLEST_SCALE = 0.3  # below this, labels are unreadable: epoch numbers instead


def _as_display(image: np.ndarray) -> np.ndarray:
    """Any supported image as uint8 HxW (grey) or HxWx3 (colour, BGR for OpenCV)."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.dtype != np.uint8:
        image = np.clip(np.rint(image.astype(np.float32) * 255), 0, 255).astype(np.uint8)
    if image.ndim == 3:
        image = cv2.cvtColor(image[:, :, :3], cv2.COLOR_RGB2BGR) if image.shape[2] >= 3 else \
            image[:, :, 0]
    return image


def _text(canvas: np.ndarray, text: str, left: int, baseline: int, width: int,
          scale: float = _TEXT_SCALE) -> None:
    """``text`` on ``canvas`` in white, cut short (ending in "..") to fit ``width``."""
    white = (255, 255, 255) if canvas.ndim == 3 else 255
    shown = text
    while shown and cv2.getTextSize(shown + (".." if shown != text else ""), _FONT, scale,
                                    1)[0][0] > width:
        shown = shown[:-1]
    shown += ".." if shown != text and shown else ""
    cv2.putText(canvas, shown, (left, baseline), _FONT, scale, white, 1, cv2.LINE_AA)


def _column_labels(augmentations: int, cell_w: int) -> list[str]:
    """"original", "epoch 0", ... when they fit a cell at a readable size, else the
    epoch numbers alone (the title then says what they are)."""
    labels = ["original", *(f"epoch {e}" for e in range(augmentations))]
    widest = max(cv2.getTextSize(label, _FONT, 1.0, 1)[0][0] for label in labels)
    if widest * _SMALLEST_SCALE <= cell_w - 2:
        return labels
    return ["", *(str(e) for e in range(augmentations))]


# The largest grid made: a PNG viewers open, in memory a few hundred MiB at most.
MAX_SIDE = 32767
MAX_PIXELS = 2**26


def grid_shape(image_shape: tuple[int, ...], rows: int, *, augmentations: int = 8,
               zoom: int = 2, labels: bool = True) -> tuple[int, int]:
    """(height, width) in pixels of the grid of ``rows`` images of ``image_shape``."""
    height, width = image_shape[:2]
    header = 2 * _LINE if labels else 0
    return (header + rows * (height * zoom + _GAP) + _GAP,
            (augmentations + 1) * (width * zoom + _GAP) + _SEPARATOR)


def grid(images: np.ndarray, transform: Callable[[Any, np.random.Generator], Any], *,
         augmentations: int = 8, seed: int = 0, zoom: int = 2, title: str | None = None,
         labels: bool = True) -> np.ndarray:
    """The preview grid as a uint8 array: one row per image, the original first.

    ``images`` are the originals; ``transform`` is called as ``transform(image, rng)``
    with the generator a Loader seeded ``seed`` gives the sample in epochs 0 to
    ``augmentations - 1``; each cell is ``zoom`` times the image's size. With ``labels``
    a header names the columns ("original", "epoch 0", ...) under a line with ``title``
    (e.g. the recipe's name) and the seed.

    Size: ``rows * (H * zoom + 2) + 2`` by ``(augmentations + 1) * (W * zoom + 2) + 6``,
    plus ``2 * 16`` rows of header with ``labels``.
    """
    if len(images) == 0:
        raise ValueError("preview needs at least one image")
    if augmentations < 1 or zoom < 1:
        raise ValueError("augmentations and zoom must be >= 1")
    height, width = np.asarray(images[0]).shape[:2]
    cell_h, cell_w = height * zoom, width * zoom
    colour = _as_display(images[0]).ndim == 3
    rows = len(images)
    header = 2 * _LINE if labels else 0
    shape = grid_shape((height, width), rows, augmentations=augmentations, zoom=zoom,
                       labels=labels)
    canvas = np.full(shape + ((3,) if colour else ()), 96, np.uint8)
    if labels:
        names = _column_labels(augmentations, cell_w)
        heading = f"{title or 'preview'}, seed {seed}"
        if not names[0]:
            heading += f": the originals, then epochs 0-{augmentations - 1}"
        _text(canvas, heading, _GAP, _LINE - 4, shape[1] - 2 * _GAP)
        scale = min(_TEXT_SCALE, max(_SMALLEST_SCALE, (cell_w - 2) / max(
            cv2.getTextSize(name, _FONT, 1.0, 1)[0][0] for name in names)))
        for column, name in enumerate(names):
            left = _GAP + column * (cell_w + _GAP) + (_SEPARATOR - _GAP if column else 0)
            _text(canvas, name, left + 1, 2 * _LINE - 4, cell_w - 1, scale)
    sample_rng = SampleRng.create()
    for row, image in enumerate(images):
        cells = [image] + [
            transform(image, sample_rng.for_sample(epoch_key(seed, epoch, Purpose.SAMPLES), row))
            for epoch in range(augmentations)
        ]
        for column, cell in enumerate(cells):
            shown = _as_display(cell)
            if shown.shape[:2] != (height, width):
                raise ValueError(
                    f"the recipe changed the image size from {(height, width)} to "
                    f"{shown.shape[:2]}; preview shows same-size augmentations only"
                )
            if colour and shown.ndim == 2:
                shown = cv2.cvtColor(shown, cv2.COLOR_GRAY2BGR)
            big = cv2.resize(shown, (cell_w, cell_h), interpolation=cv2.INTER_NEAREST)
            top = header + _GAP + row * (cell_h + _GAP)
            left = _GAP + column * (cell_w + _GAP) + (_SEPARATOR - _GAP if column else 0)
            canvas[top:top + cell_h, left:left + cell_w] = big
    return canvas


def write_png(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write ``image`` as a PNG, atomically: a reader never sees a half-written file."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"preview writes PNG files; give a path ending in .png, not {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"OpenCV could not encode a {image.shape} {image.dtype} image as PNG")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(encoded.tobytes())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_recipe(spec: str) -> Callable[[Any, np.random.Generator], Any]:
    """A transform named ``module:callable`` (or a bare name in ``stoker.augment``); the
    callable is called without arguments when it is a recipe factory such as
    ``kanji_distort``, and used as it is when it already is a transform."""
    module_name, _, attribute = spec.rpartition(":")
    module_name = module_name or "stoker.augment"
    try:
        module = importlib.import_module(module_name)
        target = getattr(module, attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(
            f"cannot find recipe {spec!r} ({error}); give module:callable, e.g. "
            "stoker.augment:kanji_distort or mypackage.recipes:make_recipe"
        ) from None
    from .transforms import ImageTransform

    if isinstance(target, ImageTransform):
        return target
    if not callable(target):
        raise ValueError(f"recipe {spec!r} is a {type(target).__name__}, not a transform")
    try:
        inspect.signature(target).bind()
    except TypeError:
        return target  # needs arguments: a transform f(sample, rng) itself
    except ValueError:
        pass  # no signature to read (a builtin): treat it as a factory
    made = target()
    if not callable(made):
        raise ValueError(f"recipe {spec!r} returned {type(made).__name__}, not a transform")
    return made
