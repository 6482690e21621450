"""Photo transforms: decode encoded records and bring photographs of any size to one.

``Decode`` turns an encoded record (a JPEG, PNG, WebP, ... file's bytes, as a store's
blob field holds them) into an HxWxC uint8 image with OpenCV's decoder (libjpeg-turbo in
the opencv-python wheels: within 10 % of simplejpeg and about 1.4x Pillow's speed on
scikit-image's photographs, measured; see BENCHMARKS.md); ``RandomResizedCrop``,
``Resize`` and ``CenterCrop`` give every image one size; ``Normalize`` makes float32.
In a :class:`~stoker.augment.Compose` they run in order, each drawing its parameters
from the sample's generator with the actual size of its input:

    transform = Compose([Decode(), RandomResizedCrop(224), HorizontalFlip(),
                         Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))])

Their images keep a channel axis (HxWx1 for grey), so a batch has one layout.
``HorizontalFlip`` and ``VerticalFlip`` keep the shape and work on any image.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from .transforms import ImageTransform, Shape, _range

__all__ = [
    "CenterCrop",
    "Decode",
    "HorizontalFlip",
    "Normalize",
    "RandomResizedCrop",
    "Resize",
    "VerticalFlip",
]

_INTERPOLATIONS = {"nearest": cv2.INTER_NEAREST, "linear": cv2.INTER_LINEAR,
                   "cubic": cv2.INTER_CUBIC, "area": cv2.INTER_AREA,
                   "lanczos": cv2.INTER_LANCZOS4}
_MODES = {"rgb": getattr(cv2, "IMREAD_COLOR_RGB", None), "grey": cv2.IMREAD_GRAYSCALE}
_ALIASES = {"gray": "grey", "color": "rgb", "colour": "rgb"}
_MAGIC = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"RIFF", "WebP"),
          (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
          *((b"P" + bytes([c]), "PNM") for c in b"123456"))


def _pair(name: str, value: Any) -> tuple[int, int]:
    """(height, width) from an int (a square) or a (height, width) pair, each >= 1."""
    pair = (value, value) if isinstance(value, (int, np.integer)) else value
    try:
        height, width = (int(v) for v in pair)
        exact = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in pair)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an int or a (height, width) pair of ints, got "
                        f"{value!r}") from None
    if not exact or height < 1 or width < 1:
        raise ValueError(f"{name} must be pixels >= 1 (an int or (height, width)), got "
                         f"{value!r}")
    return height, width


def _interpolation(value: str) -> str:
    if value != "auto" and value not in _INTERPOLATIONS:
        raise ValueError(f"interpolation must be 'auto' or one of {sorted(_INTERPOLATIONS)}, "
                         f"got {value!r}")
    return value


def _resized(image: np.ndarray, height: int, width: int, interpolation: str) -> np.ndarray:
    """``image`` (HxWxC) resized to ``height`` x ``width``, keeping its channel axis;
    ``"auto"`` averages pixels (area) when shrinking and interpolates linearly when
    enlarging, so no size aliases."""
    if image.shape[:2] == (height, width):
        return image
    if interpolation == "auto":
        shrinking = height <= image.shape[0] and width <= image.shape[1]
        flag = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    else:
        flag = _INTERPOLATIONS[interpolation]
    out = cv2.resize(image, (width, height), interpolation=flag)
    return out.reshape(height, width, image.shape[2]) if out.ndim == 2 else out


def _photo(image: Any, who: str) -> np.ndarray:
    """``image`` checked as an HxWxC (or HxW) uint8 or float image, as HxWxC."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{who} expects an image array, got {type(image).__name__}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] > 4:
        what = ("an encoded record: put Decode() first" if image.ndim == 1
                else f"shape {image.shape}")
        raise ValueError(f"{who} expects an HxW or HxWxC image, got {what}")
    if image.dtype != np.uint8 and image.dtype.kind != "f":
        raise TypeError(f"{who} expects uint8 or float pixels, got {image.dtype}")
    return image


class _Reshaping(ImageTransform):
    """A transform whose output differs from its input in shape or dtype: it draws with
    the shape of the image it gets and applies at once (never ahead, on a stack)."""

    preserves_shape = False

    def transform_image(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        image = _photo(image, type(self).__name__)
        return self.apply(image, self.draw(rng, image.shape))

    def transform_batch(self, images: np.ndarray, rngs: Any) -> np.ndarray:
        raise TypeError(f"{type(self).__name__} changes the image's shape or dtype, so it "
                        "runs one image at a time (the loader does so)")


class Decode(_Reshaping):
    """An encoded image (the bytes of a JPEG, PNG, WebP, BMP or TIFF file, as a uint8
    array or bytes) to pixels: HxWx3 RGB (``mode="rgb"``) or HxWx1 (``mode="grey"``),
    uint8. A record that does not decode raises a ValueError saying what it is."""

    def __init__(self, mode: str = "rgb") -> None:
        mode = _ALIASES.get(mode, mode) if isinstance(mode, str) else mode
        if mode not in _MODES:
            raise ValueError(f"mode must be 'rgb' or 'grey', got {mode!r}")
        self.mode = mode

    def transform_image(self, image: Any, rng: np.random.Generator) -> np.ndarray:
        return self.decode(image)

    def decode(self, record: Any) -> np.ndarray:
        """The pixels of one encoded record."""
        if isinstance(record, (bytes, bytearray, memoryview)):
            record = np.frombuffer(record, np.uint8)
        if not isinstance(record, np.ndarray) or record.dtype != np.uint8 or record.ndim != 1:
            got = (f"an array of shape {record.shape} {record.dtype}"
                   if isinstance(record, np.ndarray) else type(record).__name__)
            hint = (" (already pixels: leave Decode out)" if isinstance(record, np.ndarray)
                    and record.ndim in (2, 3) else "")
            raise TypeError(f"Decode expects an encoded record (a 1-D uint8 array or bytes, "
                            f"as a store's blob field holds them), got {got}{hint}")
        problem = undecodable(record)
        image = None
        if not problem:
            if self.mode == "rgb" and _MODES["rgb"] is None:  # OpenCV before 4.10
                image = cv2.imdecode(record, cv2.IMREAD_COLOR)
                if image is not None:
                    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
            else:
                image = cv2.imdecode(record, _MODES[self.mode])
            if image is None:
                problem = ("the decoder refused it (corrupt or truncated)" if signature(record)
                           else "its first bytes are not those of a JPEG, PNG, WebP, BMP, "
                           "TIFF or PNM file, and the decoder refused it")
        if problem:
            start = record[:8].tobytes().hex(" ")
            raise ValueError(f"an encoded record of {len(record)} bytes (starting {start or '-'}) "
                             f"does not decode: {problem}. Check the file it came from; "
                             "stoker verify checks that the store holds what was written")
        return image[:, :, None] if image.ndim == 2 else image


def signature(record: np.ndarray) -> str | None:
    """The image format ``record``'s first bytes announce (JPEG, PNG, ...), or None."""
    head = record[:12].tobytes()
    if head.startswith(b"RIFF") and head[8:12] != b"WEBP":
        return None
    return next((name for magic, name in _MAGIC if head.startswith(magic)), None)


def undecodable(record: np.ndarray, *, known: bool = False, thorough: bool = False) -> str:
    """Why ``record`` is surely not a whole image ("" when it may be one); with
    ``known``, also one in no format stoker knows by its first bytes; ``thorough``
    walks a JPEG's segments even when its last 4 KiB hold an end marker (what ingest
    does, once per file)."""
    if len(record) == 0:
        return "it is empty"
    kind = signature(record)
    if kind is None and known:
        return ("its first bytes are not those of a JPEG, PNG, WebP, BMP, TIFF or PNM "
                "file")
    if kind == "JPEG" and not _jpeg_ends(record, thorough=thorough):
        return "the JPEG has no end marker after its last scan: truncated"
    if kind == "PNG" and b"IEND\xaeB`\x82" not in record[-4096:].tobytes() and (
            not thorough or b"IEND\xaeB`\x82" not in record.tobytes()):
        return "the PNG has no IEND chunk: truncated"
    return ""


def _jpeg_ends(record: np.ndarray, *, thorough: bool) -> bool:
    """Whether a JPEG reaches its end-of-image marker. Quick: an end marker in the last
    4 KiB. Else (bytes after the image, or a cut), or with ``thorough``, the segments
    are walked from the start, so an embedded thumbnail's end does not count and data
    after the image (a phone's motion photo) does not matter."""
    if not thorough and b"\xff\xd9" in record[-4096:].tobytes():
        return True
    data = record.tobytes()
    size, position = len(data), 2  # after the start-of-image marker
    while position + 2 <= size:
        if data[position] != 0xFF:
            return False  # no marker where one must be
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker == 0xD9:
            return True
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            position += 2
            continue
        if position + 4 > size:
            return False
        position += 2 + int.from_bytes(data[position + 2:position + 4], "big")
        if marker == 0xDA:  # entropy-coded data, to the next marker proper
            while True:
                position = data.find(b"\xff", position)
                if position < 0 or position + 1 >= size:
                    return False
                following = data[position + 1]
                if following == 0x00 or 0xD0 <= following <= 0xD7:
                    position += 2  # a stuffed 0xFF or a restart marker
                    continue
                if following == 0xFF:
                    position += 1
                    continue
                break
    return False


class RandomResizedCrop(_Reshaping):
    """A random part of the image resized to ``size``: its area a fraction in ``scale``
    of the image's, its width/height in ``ratio`` (log-uniform), anywhere in the image;
    after 10 draws that do not fit, the largest central crop within ``ratio``. The
    recipe of the ImageNet papers (and torchvision's), drawn from the sample's rng.
    ``interpolation``: ``"auto"`` (area when shrinking, linear when enlarging),
    ``"linear"``, ``"area"``, ``"cubic"``, ``"lanczos"`` or ``"nearest"``."""

    uniforms = 4  # per attempt: area, log-ratio, top, left

    def __init__(self, size: int | Sequence[int], scale: Sequence[float] = (0.08, 1.0),
                 ratio: Sequence[float] = (3 / 4, 4 / 3), interpolation: str = "auto") -> None:
        self.size = _pair("size", size)
        self.scale = _bounds("scale", scale, 0.0, 1.0)
        self.ratio = _bounds("ratio", ratio, 1e-3, 1e3)
        self.interpolation = _interpolation(interpolation)
        self._log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))

    def draw(self, rng: np.random.Generator, shape: Shape) -> tuple[int, int, int, int]:
        height, width = shape[:2]
        area = height * width
        for _ in range(10):
            u = rng.random(self.uniforms)
            target = area * (self.scale[0] + (self.scale[1] - self.scale[0]) * u[0])
            aspect = math.exp(self._log_ratio[0] + (self._log_ratio[1] - self._log_ratio[0])
                              * u[1])
            w = round(math.sqrt(target * aspect))
            h = round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                return int(u[2] * (height - h + 1)), int(u[3] * (width - w + 1)), h, w
        aspect = width / height
        if aspect < self.ratio[0]:
            w, h = width, round(width / self.ratio[0])
        elif aspect > self.ratio[1]:
            w, h = round(height * self.ratio[1]), height
        else:
            w, h = width, height
        h, w = max(1, min(h, height)), max(1, min(w, width))
        return (height - h) // 2, (width - w) // 2, h, w

    def apply(self, image: np.ndarray, params: tuple[int, int, int, int]) -> np.ndarray:
        top, left, h, w = params
        return _resized(image[top:top + h, left:left + w], *self.size, self.interpolation)


def _bounds(name: str, value: Sequence[float], low: float, high: float) -> tuple[float, float]:
    """A (low, high) pair as ``transforms._range`` reads it, strictly above ``low`` and at
    most ``high``."""
    lo, hi = _range(name, value)
    if not (low < lo and hi <= high):
        raise ValueError(f"{name} must be a pair {low:g} < low <= high <= {high:g}, got "
                         f"{value!r}")
    return lo, hi


class Resize(_Reshaping):
    """Resize to ``size``: an int sets the shorter side (the aspect ratio kept, as
    torchvision's ``Resize(int)``), a (height, width) pair sets both; ``interpolation``
    as :class:`RandomResizedCrop`'s."""

    def __init__(self, size: int | Sequence[int], interpolation: str = "auto") -> None:
        self.shorter = isinstance(size, (int, np.integer)) and not isinstance(size, bool)
        self.size = _pair("size", size)
        self.interpolation = _interpolation(interpolation)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) an image of ``height`` x ``width`` is resized to."""
        if not self.shorter:
            return self.size
        side = self.size[0]
        if height <= width:
            return side, max(1, round(width * side / height))
        return max(1, round(height * side / width)), side

    def apply(self, image: np.ndarray, params: None) -> np.ndarray:
        return _resized(image, *self.output_size(*image.shape[:2]), self.interpolation)


class CenterCrop(_Reshaping):
    """The central ``size`` (an int for a square, or (height, width)) of the image; an
    image smaller than that is an error (put ``Resize`` before it)."""

    def __init__(self, size: int | Sequence[int]) -> None:
        self.size = _pair("size", size)

    def apply(self, image: np.ndarray, params: None) -> np.ndarray:
        (height, width), (h, w) = image.shape[:2], self.size
        if h > height or w > width:
            raise ValueError(f"CenterCrop({h}x{w}) of an image of {height}x{width}: the image "
                             f"is smaller; put Resize({max(h, w)}) before it")
        top, left = (height - h) // 2, (width - w) // 2
        return image[top:top + h, left:left + w]


class Normalize(_Reshaping):
    """``(image - mean) / std`` per channel as float32, with ``mean`` and ``std`` in
    units of the full range (uint8 pixels are divided by 255 first), as torchvision's
    ``ToTensor`` + ``Normalize``; one number applies to every channel."""

    def __init__(self, mean: float | Sequence[float], std: float | Sequence[float]) -> None:
        self.mean = _per_channel("mean", mean)
        self.std = _per_channel("std", std)
        if (self.std <= 0).any():
            raise ValueError(f"std must be > 0, got {std!r}")
        # per image: x * scale - shift, uint8 pixels divided by 255 first (index True)
        self._scale = [(1.0 / (unit * self.std)).astype(np.float32) for unit in (1.0, 255.0)]
        self._shift = (self.mean / self.std).astype(np.float32)

    def apply(self, image: np.ndarray, params: None) -> np.ndarray:
        channels = image.shape[2]
        if len(self.mean) not in (1, channels) or len(self.std) not in (1, channels):
            raise ValueError(f"Normalize has {len(self.mean)} means and {len(self.std)} stds "
                             f"for an image of {channels} channels")
        scale = np.broadcast_to(self._scale[image.dtype == np.uint8], (channels,))
        shift = np.broadcast_to(self._shift, (channels,))
        # OpenCV's per-channel scalars: the float32 product, then the float32 difference,
        # as numpy's `x * scale - shift` rounds them (bit for bit), in a tenth of its time.
        out = cv2.multiply(image.astype(np.float32), _scalar(scale))
        return cv2.subtract(out, _scalar(shift)).reshape(image.shape)


def _flippable(image: Any, who: str) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim not in (2, 3) or image.size == 0:
        got = getattr(image, "shape", type(image).__name__)
        raise ValueError(f"{who} expects an HxW or HxWxC image, got {got}")
    return image


def _scalar(values: np.ndarray) -> tuple[float, ...]:
    """Per-channel values as an OpenCV scalar (four entries)."""
    return (*(float(v) for v in values), *(0.0,) * (4 - len(values)))


_CV_FLIPS = {np.dtype(t) for t in (np.uint8, np.int8, np.uint16, np.int16, np.int32,
                                   np.float32, np.float64)}


def _mirrored(image: np.ndarray, axis: int) -> np.ndarray:
    """A copy of ``image`` mirrored along ``axis`` (0 rows, 1 columns): OpenCV's flip
    where it takes the dtype (50x numpy's strided copy), else numpy's."""
    if image.dtype in _CV_FLIPS and (image.ndim == 2 or image.shape[2] <= 4):
        return cv2.flip(image, 1 if axis == 1 else 0).reshape(image.shape)
    return np.ascontiguousarray(np.flip(image, axis))


def _per_channel(name: str, value: float | Sequence[float]) -> np.ndarray:
    values = np.atleast_1d(np.asarray(value, np.float64))
    if values.ndim != 1 or not 1 <= len(values) <= 4 or not np.isfinite(values).all():
        raise ValueError(f"{name} must be a number or one per channel, got {value!r}")
    return values


class _Flip(ImageTransform):
    """Mirrors any image (HxW or HxWxC, any dtype, even one pixel wide) as it is, with no
    conversion: a flip moves pixels and changes none."""

    uniforms = 1
    _axis = 1  # the image axis mirrored: 1 (width) left-right, 0 (height) top-bottom

    def __init__(self, p: float = 0.5) -> None:
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 <= p <= 1:
            raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
        self.p = float(p)

    def transform_image(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        image = _flippable(image, type(self).__name__)
        flipped = self.draw(rng, image.shape)
        return _mirrored(image, self._axis) if flipped else image

    def transform_batch(self, images: np.ndarray, rngs: Any) -> np.ndarray:
        if not isinstance(images, np.ndarray) or images.ndim not in (3, 4):
            raise ValueError(f"expected a stack of images (N, H, W[, C]), got "
                             f"{getattr(images, 'shape', type(images).__name__)}")
        params = [self.draw(rng, images.shape[1:]) for rng in rngs]
        if len(params) != len(images):
            raise ValueError(f"transform_batch got {len(images)} images but {len(params)} "
                             "rngs")
        return self.apply_batch(images, params)

    def from_uniforms(self, u: Sequence[float], shape: Shape) -> bool:
        return bool(u[0] < self.p)

    def apply(self, image: np.ndarray, params: bool) -> np.ndarray:
        return _mirrored(image, self._axis) if params else image

    def apply_batch(self, images: np.ndarray, params: Sequence[bool]) -> np.ndarray:
        out = images.copy()
        for row in np.flatnonzero(params):
            out[row] = _mirrored(images[row], self._axis)
        return out


class HorizontalFlip(_Flip):
    """Mirror left-right with probability ``p``."""

    _axis = 1


class VerticalFlip(_Flip):
    """Mirror top-bottom with probability ``p``."""

    _axis = 0
