"""The loader's contract, written once and run over every executor and start method."""

import random

import numpy as np
import pytest

import stoker
from conftest import gone, noisy, wait_until
from epochs import assert_same, epochs_of

RUNNERS = [
    pytest.param({"workers": 0}, id="inline"),
    pytest.param({"workers": 1}, id="processes-1"),
    pytest.param({"workers": 2}, id="processes-2"),
    pytest.param({"workers": 4}, id="processes-4"),
    pytest.param({"workers": 2, "start_method": "spawn"}, id="spawn-2"),
    pytest.param({"workers": 2, "start_method": "fork"}, id="fork-2"),
]


@pytest.fixture
def reference(images):
    data = stoker.from_arrays(*images)
    with stoker.Loader(data, batch_size=32, transform=noisy, seed=11, workers=0) as loader:
        return epochs_of(loader, 2)


@pytest.mark.parametrize("runner", RUNNERS)
def test_batches_are_bit_identical_to_the_inline_reference(images, reference, runner):
    data = stoker.from_arrays(*images)
    with stoker.Loader(data, batch_size=32, transform=noisy, seed=11, **runner) as loader:
        assert_same(epochs_of(loader, 2), reference)


@pytest.mark.parametrize("runner", RUNNERS[:3])
def test_every_index_exactly_once_per_epoch_in_a_new_order(images, runner):
    data = stoker.from_arrays(*images)
    with stoker.Loader(data, batch_size=32, transform=noisy, seed=1, **runner) as loader:
        orders = []
        for _ in range(3):
            labels = np.concatenate([labels for _, labels in loader])
            assert sorted(labels.tolist()) == list(range(len(images[0])))
            orders.append(labels)
        assert not np.array_equal(orders[0], orders[1])
        assert not np.array_equal(orders[1], orders[2])
        assert loader.epoch == 3


def test_len_remainder_and_dtypes(images):
    data = stoker.from_arrays(*images)
    with stoker.Loader(data, batch_size=50, workers=2) as loader:
        sizes = [len(labels) for _, labels in loader]
        assert len(loader) == 5 and sizes == [50, 50, 50, 50, 3]
    with stoker.Loader(data, batch_size=50, workers=2, drop_remainder=True) as loader:
        batches = list(loader)
        assert len(loader) == 4 and [len(b[1]) for b in batches] == [50] * 4
        assert batches[0][0].dtype == np.uint8 and batches[0][1].dtype == np.int64
        assert batches[0][0].shape == (50, 8, 8, 1)


def test_dict_samples_give_dict_batches(images):
    x, y = images
    data = stoker.from_arrays(image=x, label=y)

    def scale(sample, rng):
        return {"image": sample["image"].astype(np.float32) / 255, "label": sample["label"]}

    with stoker.Loader(data, batch_size=64, transform=scale, workers=2) as loader:
        batch = next(iter(loader))
    assert set(batch) == {"image", "label"} and batch["image"].dtype == np.float32


def test_same_seed_same_batches_other_seed_other_batches(images):
    data = stoker.from_arrays(*images)
    runs = []
    for seed in (5, 5, 6):
        with stoker.Loader(data, batch_size=64, transform=noisy, seed=seed, workers=2) as loader:
            runs.append(epochs_of(loader, 1))
    assert_same(runs[0], runs[1])
    assert not np.array_equal(runs[0][0][0][1], runs[2][0][0][1])


def test_set_epoch_replays_an_epoch(images):
    data = stoker.from_arrays(*images)
    with stoker.Loader(data, batch_size=64, transform=noisy, workers=2) as loader:
        first = epochs_of(loader, 3)
        loader.set_epoch(1)
        assert_same(epochs_of(loader, 1), first[1:2])


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_epoch_gives_the_undisturbed_batches(images, workers):
    data = stoker.from_arrays(*images)
    with stoker.Loader(data, batch_size=32, transform=noisy, seed=3, workers=workers) as full:
        undisturbed = epochs_of(full, 2)
    with stoker.Loader(data, batch_size=32, transform=noisy, seed=3, workers=workers) as first:
        list(first)  # epoch 0
        iterator = iter(first)
        for _ in range(3):
            next(iterator)
        state = first.state_dict()
    assert state["epoch"] == 1 and state["batches_done"] == 3
    with stoker.Loader(data, batch_size=32, transform=noisy, seed=99, workers=workers) as second:
        second.load_state_dict(state)
        rest = [tuple(np.copy(a) for a in batch) for batch in second]
    assert_same([rest], [undisturbed[1][3:]])


def test_load_state_dict_refuses_a_different_configuration(images):
    data = stoker.from_arrays(*images)
    with stoker.Loader(data, batch_size=32, workers=0) as loader:
        state = loader.state_dict()
    with stoker.Loader(data, batch_size=16, workers=0) as other:
        with pytest.raises(ValueError, match="batch_size=32"):
            other.load_state_dict(state)
        with pytest.raises(ValueError, match="version"):
            other.load_state_dict({**state, "version": 99})


def test_an_abandoned_epoch_continues_cleanly(images, reference):
    data = stoker.from_arrays(*images)
    with stoker.Loader(data, batch_size=32, transform=noisy, seed=11, workers=2) as loader:
        taken = []
        for batch in loader:
            taken.append(tuple(np.copy(a) for a in batch))
            if len(taken) == 2:
                break
        assert loader.epoch == 0
        # the prefetched batches of the abandoned loop are dropped, and the next loop
        # continues after the last batch taken
        assert_same([taken + epochs_of(loader, 1)[0]], reference[:1])
        assert_same(epochs_of(loader, 1), reference[1:])


def legacy_distort(sample):
    """A transform in the style of the question: draws from the global generators."""
    image, label = sample
    shift = random.randint(-2, 2)
    noise = np.random.randint(0, 20, size=image.shape)
    return np.clip(np.roll(image, shift, axis=0) + noise, 0, 255).astype(np.uint8), label


@pytest.mark.parametrize("workers", [1, 2])
def test_legacy_transforms_become_reproducible(images, workers):
    data = stoker.from_arrays(*images)
    random.seed(123)
    np.random.seed(123)
    before = (random.random(), np.random.random())
    random.seed(123)
    np.random.seed(123)
    with stoker.Loader(data, batch_size=40, transform=legacy_distort, workers=0) as loader:
        inline = epochs_of(loader, 1)
    assert (random.random(), np.random.random()) == before, "the caller's global RNGs moved"
    with stoker.Loader(data, batch_size=40, transform=legacy_distort, workers=workers) as loader:
        assert_same(epochs_of(loader, 1), inline)


def test_workers_none_uses_usable_cores(images):
    from stoker._system import usable_cpu_count

    data = stoker.from_arrays(*images)
    with stoker.Loader(data, batch_size=32) as loader:
        assert loader.workers == usable_cpu_count() >= 1


def test_close_is_idempotent_and_stops_workers(images):
    data = stoker.from_arrays(*images)
    loader = stoker.Loader(data, batch_size=32, workers=2)
    next(iter(loader))
    pids = loader.worker_pids
    assert len(pids) == 2
    loader.close()
    loader.close()
    assert wait_until(lambda: all(gone(pid) for pid in pids), 5)
    with pytest.raises(RuntimeError, match="closed"):
        list(loader)


def test_a_forgotten_loader_is_cleaned_up_by_the_garbage_collector(images):
    import gc

    data = stoker.from_arrays(*images)
    loader = stoker.Loader(data, batch_size=32, workers=2)
    next(iter(loader))
    pids = loader.worker_pids
    del loader
    gc.collect()
    assert wait_until(lambda: all(gone(pid) for pid in pids), 5)


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"batch_size": 0}, ValueError, "batch_size must be >= 1"),
    ({"batch_size": 2.5}, TypeError, "batch_size must be an int"),
    ({"batch_size": 8, "workers": -1}, ValueError, "workers must be >= 0"),
    ({"batch_size": 8, "workers": 10**6}, ValueError,
     r"workers=1000000 is more than 32 worker processes for each of this machine's"),
    ({"batch_size": 8, "prefetch": 0}, ValueError, "prefetch"),
    ({"batch_size": 8, "backend": "threads"}, ValueError, "backend must be one of"),
    ({"batch_size": 8, "backend": "inline", "workers": 2}, ValueError, "inline"),
    ({"batch_size": 8, "start_method": "magic"}, ValueError, "start_method"),
    ({"batch_size": 8, "backend": "ray", "workers": 0}, ValueError, "workers must be >= 1"),
    ({"batch_size": 8, "backend": "ray", "start_method": "fork"}, ValueError, "Ray starts"),
    ({"batch_size": 8, "timeout": 0}, ValueError, "timeout"),
    ({"batch_size": 8, "start_timeout": -1}, ValueError, "start_timeout"),
    ({"batch_size": 500, "drop_remainder": True}, ValueError, "larger than the source"),
    ({"batch_size": 8, "transform": 3}, TypeError, "callable"),
    ({"batch_size": 8, "transform": lambda a, b, c: a}, TypeError, "signature"),
])
def test_bad_arguments_are_refused_at_construction(images, kwargs, error, match):
    data = stoker.from_arrays(*images)
    with pytest.raises(error, match=match):
        stoker.Loader(data, **kwargs)


def test_a_released_source_says_so(images):
    """Red-team finding: after release(), data[3] was "tuple index out of range" and a
    Loader failed in its workers with "a module it needs may be missing"."""
    data = stoker.from_arrays(*images)
    train, _ = data.split(0.5)
    data.release()
    assert data.released
    for call in (lambda: data[3], lambda: train[0], lambda: stoker.Loader(data, batch_size=8),
                 lambda: stoker.Loader(train, batch_size=8)):
        with pytest.raises(ValueError, match=r"freed by release\(\); make it again"):
            call()


def test_an_unpicklable_transform_is_refused_with_advice(images):
    import threading

    lock = threading.Lock()

    def locked(sample, rng):
        with lock:
            return sample

    data = stoker.from_arrays(*images)
    with pytest.raises(TypeError, match=r"cannot be sent to worker processes.*workers=0"):
        stoker.Loader(data, batch_size=8, transform=locked, workers=2)
    with stoker.Loader(data, batch_size=8, transform=locked, workers=0) as loader:
        assert len(next(iter(loader))[1]) == 8


def test_a_plain_python_list_source_works_with_workers():
    samples = [(np.full((2, 2), i, np.float32), i) for i in range(30)]
    with stoker.Loader(samples, batch_size=7, workers=2, shuffle=False) as loader:
        labels = np.concatenate([labels for _, labels in loader])
    assert labels.tolist() == list(range(30))


def _opencv_sample(sample, rng):
    import cv2

    image, label = sample
    return cv2.GaussianBlur(image, (3, 3), 0).reshape(image.shape), label


def test_fork_workers_start_after_opencv_ran_threaded_in_the_parent(images):
    """fork copies OpenCV's pool locks without its threads; workers must still start."""
    import cv2

    big = np.random.default_rng(0).random((1024, 1024), np.float32)
    x, y = images
    for _ in range(3):
        for _ in range(20):  # OpenCV's own thread pool, busy in this process
            cv2.warpAffine(big, np.eye(2, 3), (1024, 1024))
            cv2.resize(big, (700, 700))
        with stoker.Loader(stoker.from_arrays(x, y), batch_size=16, workers=2,
                           transform=_opencv_sample, start_method="fork", timeout=20) as loader:
            assert sum(len(labels) for _, labels in loader) == len(x)


@pytest.mark.parametrize("count", [1, 2, 3, 7])
@pytest.mark.parametrize("workers", [0, 2])
def test_shards_are_disjoint_and_together_cover_every_epoch(images, count, workers):
    x, y = images
    data = stoker.from_arrays(x, y)
    for epoch in (0, 1):
        seen = []
        for index in range(count):
            with stoker.Loader(data, batch_size=16, shard=(index, count), seed=5,
                               workers=workers) as loader:
                loader.set_epoch(epoch)
                labels = np.concatenate([b for _, b in loader])
                assert len(labels) == loader.samples_per_epoch
                assert abs(len(labels) - len(x) / count) < 1
                seen.append(labels)
        everything = np.concatenate(seen)
        assert sorted(everything.tolist()) == list(range(len(x)))  # disjoint and complete


def test_shards_follow_the_unsharded_order_and_refuse_bad_arguments(images):
    x, y = images
    data = stoker.from_arrays(x, y)
    whole = stoker.Loader(data, batch_size=1000, seed=2)
    order = whole.epoch_batches(3)[0]
    part = stoker.Loader(data, batch_size=1000, seed=2, shard=(1, 4))
    np.testing.assert_array_equal(part.epoch_batches(3)[0], order[1::4])
    assert part.state_dict()["shard"] == [1, 4]
    with pytest.raises(ValueError, match="shard"):
        stoker.Loader(data, batch_size=1000, seed=2, shard=(0, 2)).load_state_dict(
            part.state_dict())
    for shard, error, match in (((4, 4), ValueError, "below the count"),
                                ((0, 0), ValueError, "shard count must be >= 1"),
                                (3, TypeError, r"\(index, count\)"),
                                # they unpack, but not as (index, count): a dict gave its keys
                                ({0: 1, 1: 2}, TypeError, r"a tuple such as \(rank, world_size\)"),
                                ({1, 3}, TypeError, r"\(index, count\)"),
                                (iter([1, 3]), TypeError, r"\(index, count\)")):
        with pytest.raises(error, match=match):
            stoker.Loader(data, batch_size=8, seed=2, shard=shard)
    with pytest.raises(ValueError, match="explicit seed"):
        stoker.Loader(data, batch_size=8, seed=None, shard=(0, 2))
    whole.close()
    part.close()
    data.release()


def test_every_executor_implements_the_protocol(images):
    from stoker.executors.protocol import Executor

    for workers in (0, 1):
        with stoker.Loader(stoker.from_arrays(*images), batch_size=64, workers=workers) as loader:
            next(iter(loader))
            assert isinstance(loader._executor, Executor)
            assert loader.layout is loader._executor.layout
            assert len(loader.worker_pids) == workers and loader.crashes == []
