"""The layout of a sample, and so of a batch: its structure (a bare array, a tuple or a
dict), and the shape and dtype of every field.

The layout is read off the first transformed sample. Every later sample must match it
exactly: a different shape or dtype is an error that names the field, never a silent
cast (the question's float16 labels lost every integer above 2048 that way).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import describe
from .many import Many
from .shm import aligned

__all__ = ["BatchLayout", "Field", "LayoutMismatch"]

_ARRAY, _TUPLE, _DICT = "array", "tuple", "dict"


class LayoutMismatch(ValueError):
    """A sample whose structure, shape or dtype differs from the loader's layout."""


@dataclass(frozen=True, slots=True)
class Field:
    """One leaf of a sample: its name (for messages), per-sample shape and dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def _fix(leaf: np.ndarray, field: Any) -> str:
    """What makes samples of differing shapes fit one batch, in the caller's terms."""
    if leaf.shape == field.shape:
        return f"cast to one dtype in the transform, e.g. .astype(np.{field.dtype})"
    if leaf.ndim == 1 and len(field.shape) == 1 and leaf.dtype == field.dtype == np.uint8:
        return ("these look like encoded records of differing lengths, such as JPEG files: "
                "decode them and give every image one size in the transform, e.g. "
                "Compose([Decode(), RandomResizedCrop(224)])")
    if leaf.ndim == len(field.shape) in (2, 3) and leaf.shape[2:] == field.shape[2:]:
        return ("images of differing sizes: give every image one size in the transform, "
                "e.g. RandomResizedCrop(224), Resize((224, 224)) or Resize(256) then "
                "CenterCrop(224)")
    return "resize or cast in the transform"


def _as_leaf(value: Any, name: str) -> np.ndarray:
    if value is None:
        raise LayoutMismatch(
            f"{name} is None: the transform must return the sample (did it forget `return`?)"
        )
    if isinstance(value, Many):
        raise LayoutMismatch(
            f"{name} is a stoker.Many: Many holds several samples and is what a transform "
            "returns, never a part of a sample or batch"
        )
    try:
        array = np.asarray(value)
    except ValueError as error:  # ragged nesting
        array = np.empty(0, dtype=object)
        if not isinstance(value, (tuple, list, Mapping)):
            raise LayoutMismatch(f"{name} cannot be an array: {error}") from error
    except Exception as error:  # its own __array__ refused (a CUDA or grad tensor, ...)
        raise LayoutMismatch(
            f"{name} is a {type(value).__name__} that numpy cannot read ({describe(error)}); "
            "return numpy arrays or CPU tensors (e.g. tensor.detach().cpu().numpy())"
        ) from error
    if array.dtype == object and isinstance(value, (tuple, list, Mapping)):
        raise LayoutMismatch(
            f"{name} is itself a {type(value).__name__} of mixed shapes; a sample's fields "
            "are arrays or scalars. To make several samples of one, return "
            "stoker.Many([sample_a, sample_b]) from the transform"
        )
    if array.dtype == object or array.dtype.kind in "OUSV":
        raise LayoutMismatch(
            f"{name} has dtype {array.dtype} ({type(value).__name__}); samples must hold "
            "numeric numpy arrays or scalars (convert images with np.asarray(img))"
        )
    return array


@dataclass(frozen=True, slots=True)
class BatchLayout:
    """Structure and fields of a sample; builds, fills and reads batches of it."""

    kind: str
    keys: tuple[str, ...]
    fields: tuple[Field, ...]

    @classmethod
    def of(cls, sample: Any) -> BatchLayout:
        """The layout of one sample (a numpy array or scalar, a tuple/list, or a dict)."""
        if isinstance(sample, Mapping):
            if not sample:
                raise LayoutMismatch("the sample is an empty dict")
            keys = tuple(sample)
            for key in keys:
                if not isinstance(key, str):
                    raise LayoutMismatch(f"dict samples need string keys, got {key!r}")
            leaves = [_as_leaf(sample[k], f"field {k!r}") for k in keys]
            kind = _DICT
        elif isinstance(sample, Sequence) and not isinstance(sample, (str, bytes)):
            if not sample:
                raise LayoutMismatch("the sample is an empty tuple")
            keys = tuple(str(i) for i in range(len(sample)))
            leaves = [_as_leaf(v, f"element {i}") for i, v in enumerate(sample)]
            kind = _TUPLE
        else:
            keys = ("",)
            leaves = [_as_leaf(sample, "the sample")]
            kind = _ARRAY
        fields = tuple(
            Field(_field_name(kind, k), leaf.shape, leaf.dtype)
            for k, leaf in zip(keys, leaves, strict=True)
        )
        return cls(kind, keys, fields)

    def leaves(self, sample: Any) -> list[np.ndarray]:
        """The fields of ``sample`` as arrays, checked against this layout."""
        if self.kind == _TUPLE and type(sample) is tuple and len(sample) == len(self.fields):
            # Fast path (once per sample): arrays and numpy scalars of the right kind.
            leaves = []
            for field, value in zip(self.fields, sample, strict=True):
                if not (
                    isinstance(value, (np.ndarray, np.generic))
                    and value.dtype == field.dtype
                    and value.shape == field.shape
                ):
                    break
                leaves.append(value)
            else:
                return leaves
        values = self._values(sample)
        leaves = []
        for field, value in zip(self.fields, values, strict=True):
            leaf = _as_leaf(value, field.name)
            if leaf.shape != field.shape or leaf.dtype != field.dtype:
                raise LayoutMismatch(
                    f"{field.name} has shape {leaf.shape} and dtype {leaf.dtype}, but the "
                    f"first sample had shape {field.shape} and dtype {field.dtype}; every "
                    f"sample must have the same shape and dtype ({_fix(leaf, field)})"
                )
            leaves.append(leaf)
        return leaves

    def _values(self, sample: Any) -> list[Any]:
        """The fields of ``sample`` in layout order, its structure checked."""
        if self.kind == _DICT:
            if not isinstance(sample, Mapping) or tuple(sample) != self.keys:
                got = tuple(sample) if isinstance(sample, Mapping) else type(sample).__name__
                raise LayoutMismatch(
                    f"the sample has keys {got}, but the first sample had {self.keys}"
                )
            values = [sample[k] for k in self.keys]
        elif self.kind == _TUPLE:
            if (
                not isinstance(sample, Sequence)
                or isinstance(sample, (str, bytes))
                or len(sample) != len(self.keys)
            ):
                got = (
                    f"{len(sample)} elements"
                    if isinstance(sample, Sequence)
                    else type(sample).__name__
                )
                raise LayoutMismatch(
                    f"the sample is {got}, but the first sample was a tuple of {len(self.keys)}"
                )
            values = list(sample)
        else:
            values = [sample]
        return values

    def batch_leaves(self, batch: Any, rows: int) -> list[np.ndarray]:
        """The fields of a whole ``batch`` of ``rows`` samples (a batch transform's output)
        as arrays, checked against this layout: structure, ``(rows, *shape)``, dtype."""
        leaves = []
        for field, value in zip(self.fields, self._values(batch), strict=True):
            leaf = _as_leaf(value, field.name)
            if leaf.ndim == 0 or leaf.shape[0] != rows:
                raise LayoutMismatch(
                    f"{field.name} has shape {leaf.shape}, but the batch has {rows} rows; a "
                    "batch transform must return one row per sample for every field"
                )
            if leaf.shape != (rows, *field.shape) or leaf.dtype != field.dtype:
                raise LayoutMismatch(
                    f"{field.name} has shape {leaf.shape} and dtype {leaf.dtype}, but "
                    f"{rows} rows of shape {field.shape} and dtype {field.dtype} were "
                    "expected (what the batch transform returned for the first batch); it "
                    "must return the same structure, shapes and dtypes for every batch"
                )
            leaves.append(leaf)
        return leaves

    @classmethod
    def of_batch(cls, batch: Any, rows: int) -> BatchLayout:
        """The layout of one row of ``batch``, a batch transform's output: its structure,
        and each field's shape after the batch axis of ``rows``."""
        def row(value: Any, name: str) -> Any:
            leaf = _as_leaf(value, name)
            if leaf.ndim == 0 or leaf.shape[0] != rows:
                raise LayoutMismatch(
                    f"{name} has shape {leaf.shape}, but the batch has {rows} rows; a batch "
                    "transform must return one row per sample for every field (the batch "
                    "axis first), in a tuple, dict or array as a sample is"
                )
            return leaf[0]

        if isinstance(batch, Mapping):
            return cls.of({k: row(v, f"field {k!r}") for k, v in batch.items()})
        if isinstance(batch, Sequence) and not isinstance(batch, (str, bytes)):
            return cls.of(tuple(row(v, f"element {i}") for i, v in enumerate(batch)))
        return cls.of(row(batch, "the batch"))

    def offsets(self, batch_size: int) -> list[int]:
        """Byte offset of each field's batch array inside one packed batch buffer."""
        offsets, position = [], 0
        for field in self.fields:
            offsets.append(position)
            position = aligned(position + field.nbytes * batch_size)
        return offsets

    def batch_nbytes(self, batch_size: int) -> int:
        return aligned(sum(aligned(f.nbytes * batch_size) for f in self.fields))

    def views(self, buffer: Any, batch_size: int) -> list[np.ndarray]:
        """Arrays of ``batch_size`` samples per field, laid over ``buffer`` (no copy)."""
        return [
            np.ndarray((batch_size, *f.shape), dtype=f.dtype, buffer=buffer, offset=offset)
            for f, offset in zip(self.fields, self.offsets(batch_size), strict=True)
        ]

    def empty(self, batch_size: int) -> list[np.ndarray]:
        return [np.empty((batch_size, *f.shape), dtype=f.dtype) for f in self.fields]

    def zeros(self, batch_size: int) -> Any:
        """A batch of zeros with this structure (for frameworks that peek at a spec)."""
        return self.assemble([np.zeros((batch_size, *f.shape), f.dtype) for f in self.fields])

    def assemble(self, arrays: list[np.ndarray]) -> Any:
        """Batch arrays back into the sample's structure: array, tuple or dict."""
        if self.kind == _DICT:
            return dict(zip(self.keys, arrays, strict=True))
        if self.kind == _TUPLE:
            return tuple(arrays)
        return arrays[0]


def _field_name(kind: str, key: str) -> str:
    if kind == _DICT:
        return f"field {key!r}"
    if kind == _TUPLE:
        return f"element {key}"
    return "the sample"
