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
