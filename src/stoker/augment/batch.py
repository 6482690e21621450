"""Batch transforms that mix samples: ``MixUp`` and ``CutMix``, for ``batch_transform=``.

    loader = stoker.Loader(train, batch_size=256, transform=kanji_distort(),
                           batch_transform=MixUp(alpha=0.2, num_classes=20))

Each batch is mixed with a shuffled copy of itself, with one mixing weight ``lam`` per
batch drawn from ``Beta(alpha, alpha)`` (the papers' and timm's convention): MixUp
blends whole images, ``lam * x + (1 - lam) * x[perm]``; CutMix pastes a box of the
partner image covering ``1 - lam`` of the area (``lam`` then is the exact share kept).
Every draw comes from the batch's ``rng``, keyed by (seed, epoch, batch number), so the
mixed batches are the same for any worker count, backend and resume point.

Labels, one of three ways:

* **one-hot or soft float labels** (``(n, classes)`` floats): mixed with the same ``lam``;
* **int labels and** ``num_classes=N``: made one-hot (float32), then mixed;
* ``pairs=True``: int labels kept, and two fields added, the partner's label and the
  weight of the first (float32, one per sample): ``(x, y, y_b, lam)`` for a tuple
  sample, ``label_b`` and ``lam`` keys for a dict. The loss is then
  ``lam * loss(out, y) + (1 - lam) * loss(out, y_b)``, in a loop of one's own (Keras'
  ``fit()`` would read a third element of a tuple as sample weights).

Images keep their dtype: integer images are rounded back (a uint8 batch stays uint8, a
quarter of float32's bytes to move). Inputs are never modified; new arrays are returned.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["CutMix", "MixUp"]


def _number(name: str, value: Any, *, low: float, high: float | None = None,
            open_low: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    too_low = value <= low if open_low else value < low
    if too_low or (high is not None and value > high) or not np.isfinite(value):
        bound = f"> {low:g}" if open_low else f">= {low:g}"
        raise ValueError(f"{name} must be {bound}" + (f" and <= {high:g}" if high else "")
                         + f", got {value!r}")
    return value


class _Mixing:
    """What MixUp and CutMix share: the fields, the labels, the probability."""

    def __init__(self, alpha: float, *, num_classes: int | None, pairs: bool, p: float,
                 fields: tuple[Any, Any] | None) -> None:
        name = type(self).__name__
        self.alpha = _number(f"{name} alpha", alpha, low=0.0)
        self.p = _number(f"{name} p", p, low=0.0, high=1.0, open_low=False)
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(
                num_classes, (int, np.integer)) or num_classes < 1):
            raise ValueError(f"{name} num_classes must be an int >= 1 or None, "
                             f"got {num_classes!r}")
        if not isinstance(pairs, (bool, np.bool_)):
            raise TypeError(f"{name} pairs must be True or False, got {pairs!r}")
        if pairs and num_classes is not None:
            raise ValueError(f"{name}: pairs=True keeps the int labels; num_classes= makes "
                             "them one-hot instead. Pass one of the two")
        if fields is not None and (not isinstance(fields, tuple) or len(fields) != 2):
            raise TypeError(f"{name} fields must be (image, label): the two keys (a dict "
                            f"sample) or positions (a tuple), got {fields!r}")
        self.num_classes = None if num_classes is None else int(num_classes)
        self.pairs = bool(pairs)
        self.fields = fields

    def __repr__(self) -> str:
        extra = (f", num_classes={self.num_classes}" if self.num_classes else "") + (
            ", pairs=True" if self.pairs else "") + (f", p={self.p:g}" if self.p != 1 else "")
        return f"{type(self).__name__}(alpha={self.alpha:g}{extra})"

    def _keys(self, batch: Any) -> tuple[Any, Any]:
        name = type(self).__name__
        if self.fields is not None:
            keys = self.fields
        elif isinstance(batch, Mapping):
            keys = ("image", "label")
        elif isinstance(batch, (tuple, list)):
            keys = (0, 1)
        else:
            raise TypeError(
                f"{name} needs samples with an image and a label, (image, label) or a dict; "
                f"got a batch of one {type(batch).__name__}"
            )
        for key in keys:
            try:
                batch[key]
            except (KeyError, IndexError, TypeError):
                have = list(batch) if isinstance(batch, Mapping) else f"{len(batch)} elements"
                raise ValueError(
                    f"{name}: the batch has no field {key!r} (it has {have}); name the "
                    "image and the label with fields=(image, label)"
                ) from None
        return keys

    def __call__(self, batch: Any, rng: np.random.Generator) -> Any:
        image_key, label_key = self._keys(batch)
        images = np.asarray(batch[image_key])
        labels = np.asarray(batch[label_key])
        rows = len(images)
        applied = rng.random() < self.p  # drawn first, always: the stream does not vary
        lam = float(rng.beta(self.alpha, self.alpha))
        perm = rng.permutation(rows)
        if applied:
            images, lam = self._mix_images(images, perm, lam, rng)
        else:
            images, lam = images.copy(), 1.0
        out: dict[Any, Any] = {image_key: images}
        extra: list[tuple[str, np.ndarray]] = []
        if self.pairs:
            if labels.dtype.kind not in "iu":
                raise ValueError(f"{type(self).__name__}(pairs=True) needs int labels, got "
                                 f"{labels.dtype}; one-hot labels are mixed without pairs=")
            out[label_key] = labels.copy()
            extra = [("label_b", labels[perm]), ("lam", np.full(rows, lam, np.float32))]
        else:
            out[label_key] = self._mix_labels(labels, perm, lam)
        return _rebuild(batch, out, extra, label_key)

    def _mix_images(self, images: np.ndarray, perm: np.ndarray, lam: float,
                    rng: np.random.Generator) -> tuple[np.ndarray, float]:
        raise NotImplementedError

    def _mix_labels(self, labels: np.ndarray, perm: np.ndarray, lam: float) -> np.ndarray:
        name = type(self).__name__
        if labels.dtype.kind in "iub":
            if self.num_classes is None:
                raise ValueError(
                    f"{name} got int labels ({labels.dtype}, shape {labels.shape[1:]} per "
                    f"sample); mixing needs one-hot ones: pass {name}(num_classes=N) to make "
                    "them one-hot, pairs=True to keep them and get the partner's label and "
                    "weight, or make them one-hot floats in the transform"
                )
            flat = labels.reshape(len(labels), -1)
            if flat.shape[1] != 1:
                raise ValueError(f"{name}(num_classes=) needs one int label per sample, got "
                                 f"shape {labels.shape[1:]} per sample")
            flat = flat[:, 0]
            bad = (flat < 0) | (flat >= self.num_classes)
            if bad.any():
                raise ValueError(
                    f"{name}: label {int(flat[bad][0])} is outside 0..{self.num_classes - 1} "
                    f"(num_classes={self.num_classes})"
                )
            # written straight into one array: no identity matrix, no one-hot temporaries
            # (with thousands of classes they are most of the cost)
            mixed = np.zeros((len(flat), self.num_classes), np.float32)
            rows = np.arange(len(flat))
            mixed[rows, flat] = np.float32(lam)
            mixed[rows, flat[perm]] += np.float32(1.0 - lam)
            return mixed
        elif labels.dtype.kind == "f":
            if labels.ndim != 2:
                raise ValueError(f"{name} mixes one-hot labels of shape (classes,) per "
                                 f"sample, got {labels.shape[1:]}")
            if self.num_classes is not None and labels.shape[1] != self.num_classes:
                raise ValueError(f"{name}(num_classes={self.num_classes}) got one-hot labels "
                                 f"of {labels.shape[1]} classes")
        else:
            raise ValueError(f"{name} cannot mix labels of dtype {labels.dtype}")
        mixed = labels * np.asarray(lam, labels.dtype)
        mixed += labels[perm] * np.asarray(1.0 - lam, labels.dtype)
        return mixed


def _blend(images: np.ndarray, other: np.ndarray, lam: float) -> np.ndarray:
    """``lam * images + (1 - lam) * other`` in the images' dtype (integers rounded)."""
    if images.dtype.kind == "f":
        work = images * np.asarray(lam, images.dtype)
        work += other * np.asarray(1.0 - lam, images.dtype)
        return work
    work = images.astype(np.float32)
    work *= np.float32(lam)
    work += other.astype(np.float32) * np.float32(1.0 - lam)
    np.rint(work, out=work)
    info = np.iinfo(images.dtype) if images.dtype.kind in "iu" else None
    if info is not None:
        np.clip(work, info.min, info.max, out=work)
    return work.astype(images.dtype)


def _rebuild(batch: Any, out: dict[Any, Any], extra: list[tuple[str, np.ndarray]],
             label_key: Any) -> Any:
    """The batch with its fields replaced (and ``extra`` ones added, after the rest)."""
    if isinstance(batch, Mapping):
        result = {key: out.get(key, value) for key, value in batch.items()}
        for name, value in extra:
            key = f"{label_key}_b" if name == "label_b" and isinstance(label_key, str) else name
            if key in result:
                raise ValueError(f"the batch already has a field {key!r}, which "
                                 "pairs=True adds; rename it")
            result[key] = value
        return result
    result = [out.get(position, value) for position, value in enumerate(batch)]
    return tuple(result) + tuple(value for _, value in extra)


class MixUp(_Mixing):
    """MixUp (Zhang et al., 2018): each batch blended with a shuffled copy of itself,
    ``lam * x + (1 - lam) * x[perm]``, ``lam ~ Beta(alpha, alpha)`` once per batch.

    Args:
        alpha: the Beta distribution's parameter (0.2-0.4 is usual for ImageNet).
        num_classes: make int labels one-hot (float32) with this many classes.
        pairs: keep int labels and add the partner's label and ``lam`` (module doc).
        p: the probability that a batch is mixed (else it passes with ``lam = 1``).
        fields: ``(image, label)``: their keys or positions; default ``("image",
            "label")`` for dict samples, ``(0, 1)`` for tuples.
    """

    def __init__(self, alpha: float = 0.2, *, num_classes: int | None = None,
                 pairs: bool = False, p: float = 1.0,
                 fields: tuple[Any, Any] | None = None) -> None:
        super().__init__(alpha, num_classes=num_classes, pairs=pairs, p=p, fields=fields)

    def _mix_images(self, images: np.ndarray, perm: np.ndarray, lam: float,
                    rng: np.random.Generator) -> tuple[np.ndarray, float]:
        return _blend(images, images[perm], lam), lam


class CutMix(_Mixing):
    """CutMix (Yun et al., 2019): a box of each image replaced by the same box of a
    shuffled partner. The box covers ``1 - lam`` of the image, ``lam ~ Beta(alpha,
    alpha)``, centred uniformly and clipped at the borders; the labels are mixed by the
    share actually kept. Images are ``(n, height, width)`` or ``(n, height, width,
    channels)``.

    Args:
        alpha: the Beta distribution's parameter (1.0, as in the paper: a uniform share).
        num_classes: make int labels one-hot (float32) with this many classes.
        pairs: keep int labels and add the partner's label and ``lam`` (module doc).
        p: the probability that a batch is mixed (else it passes with ``lam = 1``).
        fields: ``(image, label)``: their keys or positions; default ``("image",
            "label")`` for dict samples, ``(0, 1)`` for tuples.
    """

    def __init__(self, alpha: float = 1.0, *, num_classes: int | None = None,
                 pairs: bool = False, p: float = 1.0,
                 fields: tuple[Any, Any] | None = None) -> None:
        super().__init__(alpha, num_classes=num_classes, pairs=pairs, p=p, fields=fields)

    def _mix_images(self, images: np.ndarray, perm: np.ndarray, lam: float,
                    rng: np.random.Generator) -> tuple[np.ndarray, float]:
        if images.ndim not in (3, 4):
            raise ValueError(f"CutMix cuts boxes out of (height, width[, channels]) images, "
                             f"got images of shape {images.shape[1:]}")
        height, width = images.shape[1:3]
        side = np.sqrt(1.0 - lam)
        cut_h, cut_w = int(height * side), int(width * side)
        cy, cx = int(rng.integers(height)), int(rng.integers(width))
        y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h - cut_h // 2, height)
        x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w - cut_w // 2, width)
        mixed = images.copy()
        mixed[:, y0:y1, x0:x1] = images[perm, y0:y1, x0:x1]
        return mixed, 1.0 - (y1 - y0) * (x1 - x0) / (height * width)
