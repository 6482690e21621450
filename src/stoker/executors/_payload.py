"""What a worker process is sent to start: the source and transform, pickled once, with
every large numpy array in them held once in shared memory instead of in the bytes.

A 400 MiB array captured by a transform (a lookup table, a set of backgrounds) or held
by a plain-array source would otherwise travel inside the pickled bytes and be unpickled
in every worker: the bytes plus one copy per worker, and the bytes again in the consumer
for replacements. Here such an array is copied once into a shared block owned by the
executor, and travels as the block's name:

* every worker maps the same pages **copy-on-write** (``MAP_PRIVATE``), so a transform
  that writes into its array writes into its own copy, as it would with a pickled one,
  and no worker sees another's writes;
* a ``numpy.memmap`` travels as its file, offset and shape and is mapped again in the
  worker (copy-on-write too), never read into memory;
* with too little room in /dev/shm an array is pickled by value, as before, with a
  warning.

The blocks belong to the executor and are unlinked with its batch slots, after its
workers are joined (shm.py's ownership rules).
"""

from __future__ import annotations

import io
import mmap
import warnings
from typing import Any

import cloudpickle
import numpy as np

from ..shm import SharedBlock, map_private

__all__ = ["SHARE_MIN_BYTES", "dumps"]

# Arrays from this size up are shared; below it a copy per worker costs less than a
# mapping (and keeps the payload self-contained).
SHARE_MIN_BYTES = 1 << 20


def dumps(obj: Any) -> tuple[bytes, list[SharedBlock]]:
    """``obj`` pickled with cloudpickle, its large arrays moved to shared blocks; the
    blocks are the caller's to release once every process that loads the bytes is gone."""
    buffer = io.BytesIO()
    pickler = _Pickler(buffer)
    try:
        pickler.dump(obj)
    except BaseException:
        for block in pickler.blocks:
            block.release()
        raise
    return buffer.getvalue(), pickler.blocks


class _Pickler(cloudpickle.Pickler):
    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file, protocol=cloudpickle.DEFAULT_PROTOCOL)
        self.blocks: list[SharedBlock] = []
        self._warned = False

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, np.ndarray) and obj.nbytes >= SHARE_MIN_BYTES:
            reduced = self._reduce_array(obj)
            if reduced is not None:
                return reduced
        return super().reducer_override(obj)

    def _reduce_array(self, array: np.ndarray) -> tuple | None:
        if array.dtype.hasobject:
            return None
        if isinstance(array, np.memmap):
            reduced = _reduce_memmap(array)
            if reduced is not None:
                return reduced
        try:
            block = SharedBlock.create(array.nbytes, purpose="a large array of the transform "
                                       "or source")
        except OSError as error:
            if not self._warned:
                self._warned = True
                warnings.warn(
                    f"{error} The array is pickled into every worker instead (one copy each).",
                    ResourceWarning,
                    stacklevel=2,
                )
            return None
        self.blocks.append(block)
        order = "F" if array.flags.f_contiguous and not array.flags.c_contiguous else "C"
        view = block.ndarray((array.nbytes,), np.uint8)
        target = np.ndarray(array.shape, array.dtype, buffer=view, order=order)
        np.copyto(target, array, casting="no")
        del target, view
        return (_shared_array,
                (block.name, array.shape, array.dtype, order, bool(array.flags.writeable)))


def _shared_array(
    name: str, shape: tuple[int, ...], dtype: np.dtype, order: str, writeable: bool
) -> np.ndarray:
    """In the worker: the array, mapped copy-on-write from its shared block."""
    flat = map_private(name)
    array = np.ndarray(shape, dtype, buffer=flat, order=order)
    array.flags.writeable = writeable
    return array


def _reduce_memmap(array: np.memmap) -> tuple | None:
    """A memmap as (file, offset, shape), when it is one contiguous run of its file."""
    base = getattr(array, "_mmap", None)
    filename = getattr(array, "filename", None)
    if not isinstance(base, mmap.mmap) or filename is None or not array.flags.c_contiguous:
        return None
    # numpy maps the file from the allocation-granularity boundary below ``offset``.
    mapped_from = array.offset - array.offset % mmap.ALLOCATIONGRANULARITY
    try:
        start = np.frombuffer(base, np.uint8, count=1).ctypes.data
    except (TypeError, ValueError):
        return None
    file_offset = mapped_from + (array.ctypes.data - start)
    return (_memmap_array, (str(filename), array.dtype, file_offset, array.shape,
                            bool(array.flags.writeable)))


def _memmap_array(
    filename: str, dtype: np.dtype, offset: int, shape: tuple[int, ...], writeable: bool
) -> np.ndarray:
    """In the worker: the same part of the same file, mapped again (copy-on-write)."""
    return np.memmap(filename, dtype=dtype, mode="c" if writeable else "r", offset=offset,
                     shape=shape)
