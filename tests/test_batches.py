"""The memory of delivered batches is used again only when nothing refers to it: a
batch, a view of it, a buffer export or a tensor sharing it keeps it from being reused,
on every executor."""

from __future__ import annotations

import gc

import numpy as np
import pytest

import stoker
from stoker.executors._batches import BatchArrays
from stoker.layout import BatchLayout

X = np.random.default_rng(0).integers(0, 256, (300, 8, 8, 1), dtype=np.uint8)
Y = np.arange(300, dtype=np.int64)


def layout():
    return BatchLayout.of((X[0], Y[0]))


def test_a_buffer_is_used_again_only_once_nothing_refers_to_it():
    arrays = BatchArrays(layout(), 32)
    first = arrays.take(32)
    assert [a.shape for a in first] == [(32, 8, 8, 1), (32,)]
    second = arrays.take(32)  # the first is alive: other memory
    assert not np.shares_memory(first[0], second[0])
    kept = {"view": first[0][::2], "export": memoryview(first[1])}
    del first
    third = arrays.take(20)  # the first's buffers are still referred to by their views
    assert not np.shares_memory(third[0], kept["view"])
    assert not np.shares_memory(third[1], np.asarray(kept["export"]))
    del kept, second, third
    gc.collect()
    reused = arrays.reused
    again = arrays.take(32)
    assert arrays.reused == reused + 2  # both fields
    assert again[0].flags.writeable and again[0].shape == (32, 8, 8, 1)


def test_no_more_buffers_than_kept_and_fresh_arrays_beyond():
    arrays = BatchArrays(layout(), 32)
    held = [arrays.take(32) for _ in range(12)]
    memories = [batch[0] for batch in held]
    for i, a in enumerate(memories):
        for b in memories[i + 1:]:
            assert not np.shares_memory(a, b)
    assert len(arrays._buffers[0]) == 8


def test_a_torch_tensor_sharing_a_batch_keeps_it():
    torch = pytest.importorskip("torch")
    arrays = BatchArrays(layout(), 16)
    tensor = torch.from_numpy(arrays.take(16)[0])
    tensor.fill_(7)
    arrays.take(16)[0].fill(1)  # dropped at once: its buffer may be used again
    arrays.take(16)[0].fill(1)
    assert int(tensor.min()) == 7 and int(tensor.max()) == 7


@pytest.mark.parametrize("workers", [0, 2])
def test_held_views_of_every_batch_survive_later_epochs(workers):
    def noisy(sample, rng):
        image, label = sample
        return image ^ rng.integers(0, 256, image.shape, dtype=np.uint8), label

    source = stoker.from_arrays(X, Y)
    try:
        with stoker.Loader(source, batch_size=32, transform=noisy, seed=1, workers=0) as ref:
            expected = [[(b[0].copy(), b[1].copy()) for b in ref] for _ in range(3)]
        with stoker.Loader(source, batch_size=32, transform=noisy, seed=1,
                           workers=workers) as loader:
            held = []  # the images of every batch, as views; the labels dropped
            for _ in range(3):
                for images, _labels in loader:
                    held.append(images[1:])
                    images[0] = 0  # the consumer writes into its batch: allowed
            reused = (loader._executor._arrays.reused if loader._executor._arrays else 0)
        flat = [b for epoch in expected for b in epoch]
        assert len(held) == len(flat)
        for view, (images, _) in zip(held, flat, strict=True):
            np.testing.assert_array_equal(view, images[1:])
        assert reused > 0  # the labels' buffers (dropped at once) were used again
    finally:
        source.release()


def test_aligned_empty_starts_on_a_64_byte_boundary_and_its_base_owns_the_memory():
    from stoker.executors._batches import ALIGNMENT, aligned_empty

    for shape, dtype in [((7, 3), np.float32), ((0, 5), np.int64), ((), np.int16),
                         ((13,), np.uint8), ((2, 1, 3), np.float64)]:
        array = aligned_empty(shape, dtype)
        assert array.shape == shape and array.dtype == dtype
        assert array.ctypes.data % ALIGNMENT == 0 or array.size == 0  # no data to align
        assert array.base is not None and array.base.base is None  # the owner, as a view's
        assert array[1:].base is array.base if array.ndim else True


@pytest.mark.parametrize("workers", [0, 2])
def test_every_delivered_batch_is_64_byte_aligned(workers):
    # TensorFlow makes a tensor of such an array without a copy (tf_dataset, keras()).
    source = stoker.from_arrays(X[:, :3, :5], Y.astype(np.int16))
    try:
        with stoker.Loader(source, batch_size=7, seed=2, workers=workers) as loader:
            held = []
            for _ in range(2):
                for images, labels in loader:
                    assert images.ctypes.data % 64 == 0 and labels.ctypes.data % 64 == 0
                    held.append(images)  # held: the next batches are fresh arrays
    finally:
        source.release()


def _slot_of(loader, array):
    """The batch slot of the processes executor whose memory ``array`` is in, or None."""
    for slot, views in enumerate(loader._executor._slot_views):
        if any(np.shares_memory(array, view) for view in views):
            return slot
    return None


def test_a_batch_is_a_view_of_its_slot_which_waits_until_nothing_refers_to_it():
    source = stoker.from_arrays(X, Y)
    try:
        with stoker.Loader(source, batch_size=10, seed=4, workers=0) as ref:
            expected = [(b[0].copy(), b[1].copy()) for _ in range(2) for b in ref]
        with stoker.Loader(source, batch_size=10, seed=4, workers=2, prefetch=2) as loader:
            batches = (batch for _ in range(2) for batch in loader)
            kept = next(batches)
            slot = _slot_of(loader, kept[0])
            assert slot is not None and _slot_of(loader, kept[1]) == slot  # no copy
            seen: list = [None]  # the kept one's, once dropped
            for _ in range(10):  # the kept one's slot is never filled again meanwhile
                batch = next(batches)
                assert _slot_of(loader, batch[0]) != slot
                seen.append((batch[0].copy(), batch[1].copy()))
                batch[0][:] = 255  # the consumer writes into its batch: allowed
                del batch
            copy = (kept[0].copy(), kept[1].copy())
            del kept
            again = []
            for batch in batches:
                again.append(_slot_of(loader, batch[0]))
                seen.append((batch[0].copy(), batch[1].copy()))
            assert slot in again  # dropped: its slot is in the ring again
            seen[0] = copy
        for (a, b), (c, d) in zip(seen, expected, strict=True):
            np.testing.assert_array_equal(a, c)
            np.testing.assert_array_equal(b, d)
    finally:
        source.release()


def test_a_consumer_that_keeps_its_batches_gets_copies_once_the_spare_slots_are_lent():
    source = stoker.from_arrays(X, Y)
    try:
        with stoker.Loader(source, batch_size=10, seed=4, workers=0) as ref:
            expected = list(ref)
        with stoker.Loader(source, batch_size=10, seed=4, workers=2, prefetch=2) as loader:
            kept = list(loader)  # never waits on a slot the consumer holds
            lent = loader._executor._lent
            assert 0 < lent.limit < len(kept)
            assert (lent.lent, lent.copied) == (lent.limit, len(kept) - lent.limit)
            assert len({_slot_of(loader, b[0]) for b in kept[:lent.limit]}) == lent.limit
            assert all(_slot_of(loader, b[0]) is None for b in kept[lent.limit:])
            assert_batches_equal(kept, expected)
            more = list(loader)  # the slots stay lent to the first epoch's batches
            assert all(_slot_of(loader, b[0]) is None for b in more)
            del kept
            gc.collect()
            third = list(loader)
            assert _slot_of(loader, third[0][0]) is not None  # lent again
    finally:
        source.release()


def assert_batches_equal(got, expected):
    assert len(got) == len(expected)
    for (a, b), (c, d) in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)


def test_lent_slots_outlive_close_and_hold_their_values():
    """A batch kept after the loader closed still reads its values (the mapping goes
    with the last view: shm.py), and /dev/shm has nothing left (the conftest checks)."""
    source = stoker.from_arrays(X, Y)
    try:
        with stoker.Loader(source, batch_size=10, seed=4, workers=0) as ref:
            first = next(iter(ref))
        with stoker.Loader(source, batch_size=10, seed=4, workers=2) as loader:
            kept = next(iter(loader))
            assert _slot_of(loader, kept[0]) is not None
        np.testing.assert_array_equal(kept[0], first[0])
        np.testing.assert_array_equal(kept[1], first[1])
    finally:
        source.release()
