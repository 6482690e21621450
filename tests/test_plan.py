import random

import numpy as np
import pytest

from stoker.plan import (
    Purpose,
    SampleRng,
    batch_bounds,
    epoch_key,
    epoch_order,
    num_batches,
    split_indices,
    split_into_chunks,
)


def test_order_is_a_permutation_keyed_by_seed_and_epoch():
    a = epoch_order(1000, seed=3, epoch=0, shuffle=True)
    assert sorted(a.tolist()) == list(range(1000))
    assert np.array_equal(a, epoch_order(1000, seed=3, epoch=0, shuffle=True))
    assert not np.array_equal(a, epoch_order(1000, seed=3, epoch=1, shuffle=True))
    assert not np.array_equal(a, epoch_order(1000, seed=4, epoch=0, shuffle=True))
    assert np.array_equal(epoch_order(5, seed=3, epoch=7, shuffle=False), np.arange(5))


@pytest.mark.parametrize(("n", "size", "drop", "expected"), [
    (10, 3, False, [(0, 3), (3, 6), (6, 9), (9, 10)]),
    (10, 3, True, [(0, 3), (3, 6), (6, 9)]),
    (9, 3, True, [(0, 3), (3, 6), (6, 9)]),
    (2, 5, False, [(0, 2)]),
    (2, 5, True, []),
])
def test_batch_bounds_keep_or_drop_the_remainder(n, size, drop, expected):
    assert batch_bounds(n, size, drop) == expected
    assert num_batches(n, size, drop) == len(expected)


def test_chunks_cover_the_range_once_and_evenly():
    for length in (1, 7, 128, 129):
        for parts in (1, 2, 3, 8, 200):
            chunks = split_into_chunks(length, parts)
            covered = [i for start, stop in chunks for i in range(start, stop)]
            assert covered == list(range(length))
            sizes = [stop - start for start, stop in chunks]
            assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


def test_split_is_disjoint_complete_and_deterministic():
    a, b = split_indices(101, 0.8, seed=5)
    assert len(a) == 81 and len(b) == 20
    assert set(a).isdisjoint(b) and set(a) | set(b) == set(range(101))
    a2, b2 = split_indices(101, 0.8, seed=5)
    assert np.array_equal(a, a2) and np.array_equal(b, b2)
    assert not np.array_equal(a, split_indices(101, 0.8, seed=6)[0])
    head, tail = split_indices(10, 0.7, seed=0, shuffle=False)
    assert head.tolist() == list(range(7)) and tail.tolist() == [7, 8, 9]


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.5, 1.5, 0.001])
def test_split_refuses_fractions_that_leave_a_part_empty(fraction):
    with pytest.raises(ValueError, match=r"fraction|empty"):
        split_indices(100, fraction, seed=0)


def test_sample_rng_depends_only_on_key_and_index():
    key = epoch_key(1, 2, Purpose.SAMPLES)
    rng = SampleRng.create()
    first = rng.for_sample(key, 7).random(4)
    rng.for_sample(key, 8).random(100)  # disturb the shared generator
    again = rng.for_sample(key, 7).random(4)
    assert np.array_equal(first, again)
    fresh = SampleRng.create().for_sample(key, 7).random(4)
    assert np.array_equal(first, fresh)
    assert not np.array_equal(first, rng.for_sample(key, 6).random(4))
    other_epoch = rng.for_sample(epoch_key(1, 3, Purpose.SAMPLES), 7).random(4)
    assert not np.array_equal(first, other_epoch)


def test_seed_globals_makes_legacy_draws_reproducible():
    key = epoch_key(0, 0, Purpose.SAMPLES)
    rng = SampleRng.create()
    rng.seed_globals(key, 3)
    first = (random.random(), np.random.random())
    rng.seed_globals(key, 4)
    rng.seed_globals(key, 3)
    assert (random.random(), np.random.random()) == first
