"""Sources: what a loader reads samples from.

A source is anything with ``__len__`` and ``__getitem__(i) -> sample``, where a sample
is a numpy array, a tuple or a dict of numpy arrays/scalars. Two kinds are fast paths:

* ``from_arrays`` copies arrays into one shared-memory block, once; workers attach to
  it by name and read without copying (pickling an ``ArraySource`` sends only names).
* ``Subset`` is a view through an index array (``split`` makes two of them).

Any other source is serialized to each worker once, when the workers start.

Stoker's sources of fixed-shape arrays (``from_arrays``, a store without encoded
records, a ``Subset`` of either) are recognised by ``rows_of``: without a transform, a
worker fills a batch of them with one ``np.take`` per field instead of a call per sample.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ._checks import boolean, integer
from .blobs import as_blobs, is_blob_list
from .plan import split_indices
from .shm import SharedBlock, aligned

__all__ = ["ArraySource", "Source", "Subset", "as_source", "from_arrays", "split"]


@runtime_checkable
class Source(Protocol):
    """The source protocol: a length and random access by integer index."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...


def structured(kind: str, names: Any, values: list[Any]) -> Any:
    """``values`` (one per field) in a sample's structure: the value itself for
    ``"array"``, a dict keyed by ``names`` for ``"dict"``, else a tuple."""
    if kind == "array":
        return values[0]
    if kind == "dict":
        return dict(zip(names, values, strict=True))
    return tuple(values)


class _Splittable:
    def split(
        self, fraction: float, *, seed: int = 0, shuffle: bool = True
    ) -> tuple[Subset, Subset]:
        """Two disjoint views: ``round(fraction * len)`` samples, then the rest.

        Deterministic for a given ``seed``; no sample is in both parts.
        """
        return split(self, fraction, seed=seed, shuffle=shuffle)


class _ArrayFields(_Splittable):
    """Samples made of equal-length arrays, one per field (``_kind``, ``_names`` and
    ``_arrays`` set by the subclass): random access and the arrays themselves."""

    _kind: str
    _names: Any
    _arrays: list[np.ndarray]

    def __getitem__(self, index: int) -> Any:
        arrays = self._arrays
        if not arrays:  # an ArraySource after release()
            raise ValueError(_RELEASED)
        if self._kind == "array":
            return arrays[0][index]
        return structured(self._kind, self._names, [array[index] for array in arrays])

    @property
    def arrays(self) -> Any:
        """The read-only arrays, in the samples' structure."""
        return structured(self._kind, self._names, self._arrays)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self._arrays)


class ArraySource(_ArrayFields):
    """Equal-length numpy arrays held once in shared memory.

    Samples are ``x[i]`` for one array, ``(x[i], y[i], ...)`` for several positional
    arrays, ``{"image": x[i], ...}`` for keyword arrays. Rows are read-only views: a
    transform that wants to modify an image must copy it first.
    """

    def __init__(
        self,
        block: SharedBlock,
        specs: tuple[tuple[str, tuple[int, ...], str, int], ...],
        kind: str,
    ) -> None:
        self._block = block
        self._specs = specs
        self._kind = kind
        self._arrays = []
        for _, shape, dtype, offset in specs:
            array = block.ndarray(shape, np.dtype(dtype), offset)
            array.flags.writeable = False
            self._arrays.append(array)
        self._length = specs[0][1][0]
        self._names = tuple(name for name, *_ in specs)

    def __len__(self) -> int:
        return self._length

    def release(self) -> None:
        """Free the shared memory now (the owner only). Loaders using it must be closed."""
        self._arrays = []
        self._block.release()

    @property
    def released(self) -> bool:
        """Whether ``release()`` freed the samples (nothing can read them any more)."""
        return not self._arrays

    def __reduce__(self):
        return (ArraySource, (self._block, self._specs, self._kind))

    def __repr__(self) -> str:
        fields = ", ".join(f"{n or 'x'}: {s[1:]} {d}" for n, s, d, _ in self._specs)
        return f"<ArraySource {self._length} samples ({fields}) in {self._block.name}>"


def field_arrays(
    arrays: tuple[Any, ...] | list[Any], named: Mapping[str, Any], *, caller: str,
    refuse_kinds: str = "OUSV", allow_empty: bool = False, blobs: bool = False,
) -> tuple[str, list[tuple[str, Any]]]:
    """``(kind, [(name, array)])`` of what ``from_arrays`` takes: arrays positionally
    (one: "array" samples; several: "tuple") or by name ("dict"), each converted to one
    numeric array with a row per sample, all of one length. The one reading of such
    input, shared by ``from_arrays`` and ``store.save``; errors name the field and the fix.
    With ``blobs`` (a store), a list of ``bytes`` is a :class:`~stoker.blobs.Blobs` field.
    """
    if arrays and named:
        raise TypeError(f"{caller} takes arrays either positionally or by name, not both")
    if not arrays and not named:
        raise TypeError(f"{caller} needs at least one array, e.g. {caller}(x, y)")
    if len(arrays) == 1 and isinstance(arrays[0], Mapping):
        names = ", ".join(f"{name}=..." for name in list(arrays[0])[:3])
        raise TypeError(f"{caller} takes the arrays of a dict by name: {caller}(**fields), "
                        f"here {caller}({names}), for dict samples")
    if named:
        kind, items = "dict", [(str(name), value) for name, value in named.items()]
        if len({name for name, _ in items}) != len(items):
            raise ValueError(f"{caller} got two fields with the same name: "
                             f"{[name for name, _ in items]}")
    else:
        kind = "array" if len(arrays) == 1 else "tuple"
        items = [(str(i), a) for i, a in enumerate(arrays)]
    converted = []
    for name, value in items:
        label = f"array {name!r}" if kind == "dict" else f"array {name}"
        if is_blob_list(value):
            if not blobs:
                raise TypeError(
                    f"{label} is a list of bytes (encoded records such as JPEG files); "
                    f"{caller} holds arrays of one shape. Keep encoded records in a store, "
                    "which holds them as they are: stoker.store.save(path, {...}) or "
                    "stoker ingest FOLDER --encoded, then stoker.store.open(path) and "
                    "stoker.augment.Decode() in the transform"
                )
            converted.append((name, as_blobs(value)))
            continue
        try:
            array = np.asarray(value)
        except ValueError as error:  # numpy's "inhomogeneous shape"
            records = blobs and isinstance(value, (list, tuple)) and all(
                isinstance(v, np.ndarray) and v.ndim == 1 and v.dtype == np.uint8
                for v in value)
            fix = ("for encoded records (files' bytes) give bytes, e.g. [r.tobytes() for r "
                   "in records], or stoker.blobs.Blobs.from_bytes(records)" if records else
                   "resize or pad them first, or use a source of your own that returns one "
                   "sample at a time")
            raise ValueError(
                f"{label} cannot be made one array ({error}); every sample of a field needs "
                f"the same shape and dtype: {fix}"
            ) from None
        if array.dtype.hasobject or array.dtype.kind in refuse_kinds:
            raise TypeError(
                f"{label} has dtype {array.dtype}; {caller} needs numeric arrays "
                "(stack lists of images with np.stack)"
            )
        if array.ndim == 0:
            raise ValueError(
                f"{label} is a scalar; {caller} needs arrays with one row per sample"
            )
        converted.append((name, array))
    lengths = {len(a) for _, a in converted}
    if len(lengths) != 1:
        described = ", ".join(f"{n}: {len(a)}" for n, a in converted)
        raise ValueError(f"{caller} needs arrays of equal length, got lengths {described}")
    if lengths == {0} and not allow_empty:
        raise ValueError(f"{caller} got empty arrays (0 samples); there is nothing to load")
    return kind, converted


def from_arrays(*arrays: Any, **named: Any) -> ArraySource:
    """Place equal-length arrays in shared memory once and return them as a source.

    ``from_arrays(x, y)`` gives ``(x[i], y[i])`` samples, ``from_arrays(image=x,
    label=y)`` gives dict samples, ``from_arrays(x)`` gives ``x[i]``. The arrays are
    copied; drop your own references afterwards to hold the data only once. ``arrays``
    (positional) or ``named`` (keywords) give the fields, not both.
    """
    kind, converted = field_arrays(arrays, named, caller="from_arrays", refuse_kinds="OUSV")
    converted = [(name if kind == "dict" else "", array) for name, array in converted]
    specs, position = [], 0
    for name, array in converted:
        specs.append((name, array.shape, array.dtype.str, position))
        position = aligned(position + array.nbytes)
    block = SharedBlock.create(position, purpose="dataset")
    for (_, shape, dtype, offset), (_, array) in zip(specs, converted, strict=True):
        block.ndarray(shape, np.dtype(dtype), offset)[...] = array
    return ArraySource(block, tuple(specs), kind)


class Subset(_Splittable):
    """A view of ``base`` through ``indices``: sample ``i`` is ``base[indices[i]]``."""

    def __init__(self, base: Any, indices: np.ndarray) -> None:
        given = np.asarray(indices)
        if given.dtype == bool:  # a mask: the rows it keeps (as an int would take 0 and 1)
            if given.shape != (len(base),):
                raise ValueError(f"a boolean mask for a Subset has one entry per sample of "
                                 f"its base ({len(base)}), got shape {given.shape}")
            indices = np.flatnonzero(given)
        elif given.size and given.dtype.kind not in "iu":
            raise TypeError(f"Subset takes integer indices or a boolean mask, got "
                            f"{given.dtype} ({given.ravel()[:3].tolist()} ...)")
        if isinstance(base, Subset):
            indices = base.indices[indices]
            base = base.base
        self.base = base
        self.indices = np.asarray(indices, dtype=np.int64)
        self.indices.flags.writeable = False

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Any:
        return self.base[int(self.indices[index])]

    @property
    def classes(self) -> Any:
        return getattr(self.base, "classes", None)

    @property
    def arrays(self) -> Any:
        """This subset's rows of the base's arrays, in the samples' structure: new
        arrays (a copy), for a base made of arrays (``from_arrays``, a store)."""
        base_arrays = getattr(self.base, "arrays", None)
        if base_arrays is None:
            raise AttributeError(f"the base of this subset has no arrays: {self.base!r}")
        if isinstance(base_arrays, dict):
            return {name: array[self.indices] for name, array in base_arrays.items()}
        if isinstance(base_arrays, tuple):
            return tuple(array[self.indices] for array in base_arrays)
        return base_arrays[self.indices]

    def __repr__(self) -> str:
        return f"<Subset of {len(self)} from {self.base!r}>"


@dataclass(frozen=True)
class Rows:
    """A source whose samples are the rows of fixed-shape arrays, as they are: sample
    ``i`` is row ``indices[i]`` (``i`` itself without ``indices``) of each of ``arrays``,
    in a structure of ``kind`` with field ``names`` (its ``BatchLayout`` has one field
    per array, in order)."""

    kind: str
    names: tuple[Any, ...]
    arrays: list[np.ndarray]
    indices: np.ndarray | None

    def gather(self, chosen: np.ndarray, out: list[np.ndarray]) -> bool:
        """Samples ``chosen`` into ``out`` (one array per field, a row per sample), one
        ``np.take`` per field: the values ``source[i]`` has. False, with nothing
        written, for an index out of range (the caller reads those one at a time, so
        that the error names the sample)."""
        if self.indices is not None:
            if chosen.min() < 0 or chosen.max() >= len(self.indices):
                return False
            chosen = self.indices[chosen]
        length = len(self.arrays[0])
        if chosen.min() < 0 or chosen.max() >= length:
            return False
        for array, target in zip(self.arrays, out, strict=True):
            np.take(array, chosen, axis=0, out=target, mode="clip")  # in range: checked
        return True


def rows_of(source: Any) -> Rows | None:
    """``source`` as ``Rows`` when it is one of stoker's own sources of fixed-shape
    arrays (``from_arrays``, a store without encoded records, a ``Subset`` of either)
    whose ``__getitem__`` is stoker's; None for anything else (a wrapper, a subclass
    that reads samples its own way, encoded records), which is read one sample at a
    time. Decided by type, never by a method a user's class may happen to have."""
    indices = None
    if isinstance(source, Subset) and type(source).__getitem__ is Subset.__getitem__:
        source, indices = source.base, source.indices
    if not (isinstance(source, _ArrayFields)
            and type(source).__getitem__ is _ArrayFields.__getitem__):
        return None
    arrays = source._arrays
    if not arrays or not all(type(array) in (np.ndarray, np.memmap) for array in arrays):
        return None
    return Rows(source._kind, tuple(source._names), list(arrays), indices)


def as_source(obj: Any) -> Any:
    """``obj`` itself if it can serve as a source, else a TypeError saying what is missing."""
    if isinstance(obj, Mapping) or not (hasattr(obj, "__len__") and hasattr(obj, "__getitem__")):
        raise TypeError(
            f"a source needs __len__ and __getitem__(index) -> sample; got {type(obj).__name__}. "
            "Wrap numpy arrays with stoker.from_arrays(x, y)."
        )
    if len(obj) == 0:
        raise ValueError("the source is empty (0 samples); there is nothing to load")
    if getattr(obj, "released", False) or getattr(getattr(obj, "base", None), "released",
                                                   False):
        raise ValueError(_RELEASED)
    return obj


_RELEASED = ("this source's shared memory was freed by release(); make it again with "
             "stoker.from_arrays(...) (release() is for the end, after its loaders closed)")


def split(
    source: Any, fraction: float, *, seed: int = 0, shuffle: bool = True
) -> tuple[Subset, Subset]:
    """Split any source into two disjoint, deterministic views (see ``plan.split_indices``):
    the first holds ``round(fraction * len(source))`` samples. With ``shuffle`` the
    samples are assigned by a permutation from ``seed``, else the first part is a prefix."""
    if isinstance(fraction, (bool, np.bool_)) or not isinstance(
            fraction, (int, float, np.integer, np.floating)):
        raise TypeError(f"split fraction must be a number strictly between 0 and 1 (the "
                        f"first part's share: split(0.8) for 80 % and 20 %), got {fraction!r} "
                        f"({type(fraction).__name__})")
    integer("split seed", seed, 0, also=" (the same split every run: a random one would mix "
            "validation samples into training on a restart)" if seed is None else "")
    boolean("split shuffle", shuffle)
    source = as_source(source)
    first, second = split_indices(len(source), fraction, seed=seed, shuffle=shuffle)
    return Subset(source, first), Subset(source, second)
