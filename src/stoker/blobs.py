"""Blobs: a field of variable-length byte records, such as encoded images (JPEG, PNG).

A fixed-shape field is one array with a row per sample; a blob field is two arrays:
``offsets`` (``count + 1`` int64, non-decreasing, from 0) and ``data`` (uint8), record
``i`` being ``data[offsets[i]:offsets[i + 1]]``. In a store both are memory-mapped
``.npy`` files, so a record read by a worker is a view into the page cache, copied by
nobody until it is decoded.

Writing a store takes a blob field as a :class:`Blobs`, as any list of ``bytes``
(``[path.read_bytes() for path in files]``) or as a list of :class:`Record` (what a blob
field's samples are, so a store's records can be saved again through any source):
``stoker.store.save("photos.stoker", {"image": jpegs, "label": labels})``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["Blobs", "BytesList", "Record", "as_blobs", "is_blob_list"]

_BYTES = (bytes, bytearray, memoryview)


class Record(np.ndarray):
    """One record of a blob field: a read-only 1-D uint8 array (a view of the store's
    data). It is a plain numpy array in every way; its type says where it came from, so
    a list of records is saved as a blob field again."""


class Blobs:
    """Variable-length byte records over one offsets array and one data array.

    ``blobs[i]`` is record ``i``, a read-only uint8 array (a view, no copy);
    ``blobs[a:b]`` and ``blobs[indices]`` are :class:`Blobs` of those records.
    """

    def __init__(self, offsets: np.ndarray, data: np.ndarray, *, check: bool = True) -> None:
        offsets = np.asarray(offsets)
        if offsets.dtype.kind in "iu" and offsets.dtype != np.int64:
            offsets = offsets.astype(np.int64)  # sums of narrower offsets would wrap
        data = np.asarray(data)
        if check:
            problem = offsets_problem(offsets, len(data) if data.ndim == 1 else -1)
            if problem:
                raise ValueError(f"blob offsets {problem}")
            if data.dtype != np.uint8 or data.ndim != 1:
                raise ValueError(f"blob data must be a 1-D uint8 array, got {data.shape} "
                                 f"{data.dtype}")
        self.offsets = offsets
        self.data = data

    @classmethod
    def from_bytes(cls, records: Sequence[Any]) -> Blobs:
        """Records from a sequence of bytes-like objects or uint8 arrays (copied into
        one array)."""
        arrays = [_as_bytes_array(r) for r in records]
        offsets = np.zeros(len(arrays) + 1, np.int64)
        np.cumsum([a.size for a in arrays], out=offsets[1:])
        data = np.concatenate(arrays) if arrays else np.empty(0, np.uint8)
        return cls(offsets, data, check=False)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, (int, np.integer)):
            position = int(index)
            if position < 0:
                position += len(self)
            if not 0 <= position < len(self):
                raise IndexError(f"record {index} of {len(self)}")
            view = self.data[self.offsets[position]:self.offsets[position + 1]].view(Record)
            view.flags.writeable = False
            return view
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step == 1:
                stop = max(start, stop)
                offsets = self.offsets[start:stop + 1]
                data = self.data[offsets[0]:offsets[-1]]
                return Blobs(offsets - offsets[0], data, check=False)
            index = np.arange(start, stop, step)
        rows = np.asarray(index)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        if rows.ndim != 1 or rows.dtype.kind not in "iu":
            raise TypeError(f"Blobs are indexed by an int, a slice or a 1-D integer array, got "
                            f"{type(index).__name__}")
        return Blobs.from_bytes([self[int(row)] for row in rows])

    @property
    def nbytes(self) -> int:
        """The bytes of the records (not counting the offsets)."""
        return int(self.offsets[-1] - self.offsets[0])

    @property
    def sizes(self) -> np.ndarray:
        """Each record's length in bytes."""
        return np.diff(self.offsets)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __repr__(self) -> str:
        return f"<Blobs: {len(self)} records, {self.nbytes} bytes>"


def offsets_problem(offsets: np.ndarray, data_length: int) -> str:
    """What is wrong with ``offsets`` for data of ``data_length`` bytes ("" if nothing)."""
    if offsets.ndim != 1 or len(offsets) < 1 or offsets.dtype.kind not in "iu":
        return f"must be a 1-D integer array of count + 1 entries, got {offsets.shape} " \
               f"{offsets.dtype}"
    if offsets[0] != 0:
        return f"start at {offsets[0]}, not 0"
    steps = np.diff(offsets.astype(np.int64, copy=False))
    if len(steps) and steps.min() < 0:
        return f"decrease at record {int(np.argmax(steps < 0))}"
    if int(offsets[-1]) != data_length:
        return f"end at {int(offsets[-1])}, but the data holds {data_length} bytes"
    return ""


def _as_bytes_array(record: Any) -> np.ndarray:
    """A bytes-like object or a uint8 array as a 1-D uint8 array (no copy if it can)."""
    if isinstance(record, memoryview) and not record.contiguous:
        record = record.tobytes()
    if isinstance(record, _BYTES):
        return np.frombuffer(record, np.uint8)
    array = np.asarray(record)
    if array.dtype != np.uint8 or array.ndim != 1:
        raise TypeError(f"a record is bytes or a 1-D uint8 array, got {array.shape} "
                        f"{array.dtype}")
    return np.ascontiguousarray(array)


def is_blob_list(value: Any) -> bool:
    """Whether ``value`` is a field of byte records: :class:`Blobs`, or a non-empty list or
    tuple of bytes-like objects or :class:`Record`."""
    if isinstance(value, Blobs):
        return True
    return (isinstance(value, (list, tuple)) and len(value) > 0
            and all(isinstance(item, (*_BYTES, Record)) for item in value))


class BytesList:
    """A list of records seen as a blob field without joining them: what ``store.save``
    is given is written a chunk at a time (each chunk :class:`Blobs`), so a list of a
    dataset's files costs no second copy of it."""

    def __init__(self, records: Sequence[Any]) -> None:
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: Any) -> Any:
        """Record ``index`` (an int), or the records at a slice or an index array as
        :class:`Blobs`."""
        if isinstance(index, (int, np.integer)):
            return Blobs.from_bytes([self.records[index]])[0]
        if isinstance(index, slice):
            return Blobs.from_bytes(self.records[index])
        return Blobs.from_bytes([self.records[int(i)] for i in np.asarray(index).reshape(-1)])

    @property
    def nbytes(self) -> int:
        return sum(memoryview(r).nbytes for r in self.records)

    def blobs(self) -> Blobs:
        """All the records, joined."""
        return Blobs.from_bytes(self.records)


def as_blobs(value: Any) -> Blobs | BytesList:
    """``value`` (see :func:`is_blob_list`) as a blob field: :class:`Blobs` as it is, a
    list of records as a :class:`BytesList` (joined a chunk at a time when written)."""
    return value if isinstance(value, Blobs) else BytesList(value)
