"""Where the memory of a delivered batch comes from.

A batch handed to the consumer is its own: it may keep it, write into it, take views of
it or hand it to a framework. Made fresh every time, a 1 MiB array costs 256 page
faults whenever the allocator has given such blocks back to the system (glibc does,
after allocation patterns like those of a Keras ``fit()``): measured, that tripled the
consumer's CPU per batch. So each field keeps a few buffers of a whole batch and hands
out a view of the rows a batch needs; a buffer is used again only once its reference
count shows that nothing refers to it any more (no array, view or buffer export: numpy
points every view at the buffer that owns the memory), else a new array is made.

Every array handed out starts on a 64-byte boundary: TensorFlow turns such a numpy
array into a tensor without copying it (its kernels need that alignment, and it copies
anything less aligned; numpy's own allocations are only 16-byte aligned).

The processes executor hands a finished batch over without any copy when it can
(``LentSlots``): the arrays are views of the shared-memory slot the workers wrote it
into, and the slot stays out of the ring, by the same rule, until nothing refers to it
(the consumer dropped the batch; TensorFlow, which keeps the array alive for as long as
the tensor made from it lives, is done with it). Only a few slots are lent at once, in
slots of their own beyond the ring: a consumer that keeps its batches gets copies from
then on, as above, and the workers always have the whole ring.
"""

from __future__ import annotations

import sys

import numpy as np

from .._fork import forget_in_child
from ..layout import BatchLayout
from ..shm import prepare_privatize, privatize

__all__ = ["BatchArrays", "LentSlots", "lend_limit"]

# Buffers kept per field: batches a consumer and its framework hold at once (Keras and
# tf.data hold two or three), within a budget of memory.
_KEEP = 8
_KEEP_BYTES = 64 * 2**20
ALIGNMENT = 64  # bytes: what TensorFlow takes without a copy (EIGEN_MAX_ALIGN_BYTES)


def aligned_empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised array of ``shape`` and ``dtype`` whose data starts on an
    ``ALIGNMENT``-byte boundary; its ``base`` is the uint8 block that owns the memory."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    return _aligned_view(np.empty(nbytes + ALIGNMENT, np.uint8), shape, dtype)


def _aligned_view(block: np.ndarray, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An array of ``shape`` and ``dtype`` at the first ``ALIGNMENT``-byte boundary of
    the uint8 ``block`` (which has room for it: ``aligned_empty``'s)."""
    start = -block.ctypes.data % ALIGNMENT
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    return block[start:start + nbytes].view(dtype).reshape(shape)


def _references(buffers: list[np.ndarray], index: int) -> int:
    return sys.getrefcount(buffers[index])


# What _references() counts for a buffer that only the list holds (measured, not assumed).
_IDLE = _references([np.empty(1)], 0)


class BatchArrays:
    """Arrays for the batches of ``layout`` (up to ``rows`` samples each)."""

    def __init__(self, layout: BatchLayout, rows: int) -> None:
        self._layout = layout
        self.rows = rows
        nbytes = max(1, layout.batch_nbytes(rows))
        self._keep = max(2, min(_KEEP, _KEEP_BYTES // nbytes))
        self._buffers: list[list[np.ndarray]] = [[] for _ in layout.fields]
        self.reused = 0  # arrays handed out in a buffer used before

    def take(self, count: int) -> list[np.ndarray]:
        """One array per field of ``count`` rows, that nothing else refers to."""
        arrays = []
        for buffers, field in zip(self._buffers, self._layout.fields, strict=True):
            array = None
            for index in range(len(buffers)):
                if _references(buffers, index) == _IDLE:
                    array = _aligned_view(buffers[index], (count, *field.shape), field.dtype)
                    self.reused += 1
                    break
            if array is None:
                if len(buffers) < self._keep and count <= self.rows:
                    # The list holds the block that owns the memory: every array
                    # handed out, and every view of one, refers to it (numpy's base).
                    buffers.append(aligned_empty((self.rows, *field.shape), field.dtype).base)
                    array = _aligned_view(buffers[-1], (count, *field.shape), field.dtype)
                else:
                    array = aligned_empty((count, *field.shape), field.dtype)
            arrays.append(array)
        return arrays

    def copy(self, views: list[np.ndarray], count: int) -> list[np.ndarray]:
        """The first ``count`` rows of ``views`` (a batch slot), copied into ``take``'s."""
        arrays = self.take(count)
        for array, view in zip(arrays, views, strict=True):
            np.copyto(array, view[:count])
        return arrays


def lend_limit(batch_nbytes: int) -> int:
    """How many batch slots may be lent to the consumer at once: as many batches as
    ``BatchArrays`` keeps buffers for (Keras and tf.data hold two to four)."""
    return min(_KEEP, _KEEP_BYTES // max(1, batch_nbytes))


class LentSlots:
    """The batch slots whose views the consumer holds (see the module docstring).

    A slot's fields are views of one array (``np.frombuffer`` over the block), which
    numpy makes the ``base`` of every view taken of them: its reference count tells
    whether anything outside the executor still refers to the slot's memory.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._owners: dict[int, np.ndarray] = {}  # slot -> the array its views point at
        self._idle: dict[int, int] = {}  # slot -> its owner's references when not lent
        self.lent = 0  # batches handed over without a copy
        self.copied = 0  # batches that could not be, and were copied
        prepare_privatize()
        forget_in_child(self)

    def _forget_the_parent(self) -> None:
        """In a forked child: the batches lent to the parent's consumer, which the child
        holds copies of, become the child's own memory (the parent uses their slots
        again; the child may write into its copies). No slot is lent here any more."""
        for owner in self._owners.values():
            privatize(owner)
        self._owners.clear()
        self._idle.clear()

    @property
    def held(self) -> frozenset[int]:
        return frozenset(self._owners)

    def lend(self, slot: int, views: list[np.ndarray], count: int) -> list[np.ndarray] | None:
        """Views of the first ``count`` rows of ``slot`` (its field ``views``), the slot
        now lent; None (nothing lent) when ``limit`` slots already are or the fields
        do not share one owner."""
        owner = views[0].base if views else None
        if (len(self._owners) >= self.limit or not isinstance(owner, np.ndarray)
                or any(view.base is not owner for view in views)):
            self.copied += 1
            return None
        self._owners[slot] = owner
        del owner
        self._idle[slot] = _references_of(self._owners, slot)
        self.lent += 1
        return [view[:count] for view in views]

    def reclaim(self) -> list[int]:
        """The lent slots nothing outside the executor refers to any more, no longer
        lent (in the order they were lent)."""
        free = [slot for slot in self._owners
                if _references_of(self._owners, slot) <= self._idle[slot]]
        for slot in free:
            del self._owners[slot], self._idle[slot]
        return free

    def clear(self) -> None:
        """The slots are gone (the pool shut down): views still held keep their mapping
        alive (``shm.py``), and no slot of a new ring is lent."""
        self._owners.clear()
        self._idle.clear()


def _references_of(owners: dict[int, np.ndarray], slot: int) -> int:
    return sys.getrefcount(owners[slot])
