"""Warm epoch boundaries: while an epoch drains, the workers start on the next epoch's
first batches; only the run they were made for delivers them, in plan order, and any
other run (a moved cursor, a new seed) ignores them."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

import stoker
from conftest import wait_until
from epochs import assert_same, epochs_of
from stoker.plan import Purpose, SampleRng, epoch_key

X = np.arange(200 * 6, dtype=np.float32).reshape(200, 6)
Y = np.arange(200, dtype=np.int64)


def noisy(sample, rng):
    x, y = sample
    return x + rng.random(x.shape, dtype=np.float32), y


@pytest.fixture(scope="module")
def data():
    source = stoker.from_arrays(X, Y)
    yield source
    source.release()


def reference(data, epochs: int, *, seed: int = 3, first: int = 0, **options):
    with stoker.Loader(data, batch_size=16, transform=noisy, seed=seed, workers=0,
                       **options) as loader:
        loader.set_epoch(first)
        return epochs_of(loader, epochs)


def test_the_next_epoch_is_started_while_this_one_drains(data):
    with stoker.Loader(data, batch_size=16, transform=noisy, seed=3, workers=2,
                       prefetch=4) as loader:
        first = epochs_of(loader, 1)
        ahead = loader._executor._ahead  # white box: what the workers made meanwhile
        assert ahead is not None and ahead.epoch == 1 and 1 <= ahead.dispatched <= 3
        made_ahead = ahead.dispatched
        rest = epochs_of(loader, 2)
        assert loader._executor._ahead.epoch == 3
        assert made_ahead < loader._executor.adopted_batches <= 2 * made_ahead + 3
    assert_same(first + rest, reference(data, 3))


def test_a_moved_cursor_or_a_new_seed_ignores_what_was_made_ahead(data):
    with stoker.Loader(data, batch_size=16, transform=noisy, seed=3, workers=2,
                       prefetch=4) as loader:
        epochs_of(loader, 1)
        loader.set_epoch(5)
        assert_same(epochs_of(loader, 1), reference(data, 1, first=5))
        assert loader._executor.adopted_batches == 0
        # set_epoch to the epoch expected anyway (as with DistributedSampler) adopts them.
        loader.set_epoch(6)
        assert_same(epochs_of(loader, 1), reference(data, 1, first=6))
        with stoker.Loader(data, batch_size=16, transform=noisy, seed=11, workers=0) as other:
            other.set_epoch(7)
            state = other.state_dict()
        loader.load_state_dict(state)  # another seed, another epoch
        assert_same(epochs_of(loader, 2), reference(data, 2, seed=11, first=7))
        # Mid-epoch: the position (epoch 9, batch 4) of a run that never started.
        with stoker.Loader(data, batch_size=16, transform=noisy, seed=3, workers=0) as other:
            other.set_epoch(9)
            iterator = iter(other)
            for _ in range(4):
                next(iterator)
            state = other.state_dict()
        loader.load_state_dict(state)
        assert_same(epochs_of(loader, 1), [reference(data, 1, first=9)[0][4:]])


def test_an_epoch_left_early_discards_what_it_made(data):
    with stoker.Loader(data, batch_size=16, transform=noisy, seed=3, workers=2,
                       prefetch=4) as loader:
        iterator = iter(loader)
        taken = [tuple(np.copy(a) for a in next(iterator)) for _ in range(11)]
        iterator.close()  # 2 batches short of the epoch's end: the drain had begun
        rest = epochs_of(loader, 2)
    expected = reference(data, 2)
    assert_same([taken, rest[0], rest[1]], [expected[0][:11], expected[0][11:], expected[1]])


def _failing_only_early_in_epoch_one(seed: int) -> float | None:
    """A threshold on a sample's first uniform that fails a sample in epoch 1's first
    batch and none in epoch 0 (for this seed), if there is one."""
    rng = SampleRng.create()
    with stoker.Loader(stoker.from_arrays(X, Y), batch_size=16, seed=seed, workers=0) as plan:
        batches = [plan.epoch_batches(e) for e in (0, 1)]

    def first_uniform(epoch, index):
        return rng.for_sample(epoch_key(seed, epoch, Purpose.SAMPLES), int(index)).random()

    early = min(first_uniform(1, i) for i in batches[1][0])
    safe = min(first_uniform(0, i) for b in batches[0] for i in b)
    later = min(first_uniform(1, i) for b in batches[1][1:] for i in b)
    return early + 1e-12 if early < safe and early < later else None


class FailsBelow:
    """Fails (raises, exits the worker or hangs) on the samples whose first uniform is
    below ``threshold``."""

    def __init__(self, threshold: float, how: str = "raise") -> None:
        self.threshold = threshold
        self.how = how

    def __call__(self, sample, rng):
        if rng.random() < self.threshold:
            if self.how == "exit":
                os._exit(3)
            if self.how == "hang":
                time.sleep(1000)
            raise ValueError("this sample is bad")
        return sample


def _bad_in_epoch_one() -> tuple[int, float]:
    return next((s, t) for s in range(200) if (t := _failing_only_early_in_epoch_one(s))
                is not None)


def test_a_failure_in_a_batch_made_ahead_is_raised_by_its_own_epoch(data):
    seed, threshold = _bad_in_epoch_one()
    with stoker.Loader(data, batch_size=16, transform=FailsBelow(threshold), seed=seed,
                       workers=2, prefetch=4) as loader:
        # Epoch 0 is whole: the sample that fails in epoch 1's first batch was made (and
        # failed) while epoch 0 drained, and that is epoch 1's to raise, not epoch 0's.
        assert len(epochs_of(loader, 1)[0]) == len(loader)
        assert loader._executor._ahead.dispatched >= 1
        with pytest.raises(stoker.TransformError, match="sample") as caught:
            epochs_of(loader, 1)
        assert caught.value.epoch == 1


def test_a_worker_killed_while_making_the_next_epoch_is_replaced(data):
    with stoker.Loader(data, batch_size=16, transform=noisy, seed=3, workers=2,
                       prefetch=4, max_worker_restarts=1) as loader:
        first = epochs_of(loader, 1)
        os.kill(loader.worker_pids[0], signal.SIGKILL)
        rest = epochs_of(loader, 2)
        # a crash if it was idle; none if it was still on work made ahead (nobody's yet)
        assert len(loader.crashes) <= 1
    assert_same(first + rest, reference(data, 3))


def slow_noisy(sample, rng):
    time.sleep(0.02)
    return noisy(sample, rng)


def test_a_worker_killed_on_work_made_ahead_between_epochs_costs_nothing(data):
    """Killed while the consumer is between epochs, on the next epoch's work: no run saw
    the death, and the next run adopted that work (making it its own) before its first
    wait did, so the death was its crash (WorkerCrashed with max_worker_restarts=0)."""
    small = stoker.from_arrays(X[:64], Y[:64])
    with stoker.Loader(small, batch_size=16, transform=slow_noisy, seed=3, workers=2,
                       prefetch=4) as loader:
        first = epochs_of(loader, 1)
        victim = next(w for w in loader._executor._resources.workers if w.worker_id == 0)
        assert victim.tasks, "the test needs worker 0 on work made ahead"
        os.kill(victim.process.pid, signal.SIGKILL)
        assert wait_until(lambda: victim.process.exitcode is not None, 5)
        rest = epochs_of(loader, 2)
        assert loader.crashes == [] and loader._executor._restarts_used == 0
        pool = {w.worker_id: w.process.pid for w in loader._executor._resources.workers}
        assert sorted(pool) == [0, 1] and pool[0] != victim.process.pid  # replaced
    assert_same(first + rest, reference(small, 3))  # slow_noisy makes what noisy makes
    small.release()


def test_a_worker_killed_idle_between_epochs_costs_nothing(data):
    """Killed while it had nothing to do (prefetch=1: the other worker made the one batch
    made ahead): the next run gave it tasks, then counted its death as its own crash,
    WorkerCrashed with max_worker_restarts=0, naming a batch the worker never had."""
    one = stoker.from_arrays(X[:64], Y[:64])
    try:
        with stoker.Loader(one, batch_size=16, transform=noisy, seed=3, workers=2,
                           prefetch=1) as loader:
            first = epochs_of(loader, 1)
            idle = [w for w in loader._executor._resources.workers if not w.tasks]
            assert idle, "the test needs a worker with nothing to do"
            victim = idle[0]
            os.kill(victim.process.pid, signal.SIGKILL)
            assert wait_until(lambda: victim.process.exitcode is not None, 5)
            rest = epochs_of(loader, 3)
            assert loader.crashes == [] and loader._executor._restarts_used == 0
            pool = {w.worker_id: w.process.pid for w in loader._executor._resources.workers}
            assert sorted(pool) == [0, 1] and victim.process.pid not in pool.values()
        assert_same(first + rest, reference(one, 4))
    finally:
        one.release()


def test_a_crash_in_work_made_ahead_is_not_this_epochs_and_costs_no_restart(data):
    seed, threshold = _bad_in_epoch_one()
    with stoker.Loader(data, batch_size=16, transform=FailsBelow(threshold, "exit"),
                       seed=seed, workers=2, prefetch=4) as loader:
        assert len(epochs_of(loader, 1)[0]) == len(loader)  # max_worker_restarts=0
        assert loader.crashes == []
        with pytest.raises(stoker.WorkerCrashed, match="batch 0 of epoch 1"):
            epochs_of(loader, 1)  # epoch 1's own crash is an error, as always
    with stoker.Loader(data, batch_size=16, transform=FailsBelow(threshold, "exit"),
                       seed=seed, workers=2, prefetch=4, max_worker_restarts=1) as loader:
        epochs_of(loader, 1)
        loader.set_epoch(0)  # the work made for epoch 1 is discarded, not redone
        iterator = iter(loader)
        first = [tuple(np.copy(a) for a in next(iterator))]
        os.kill(loader.worker_pids[0], signal.SIGKILL)  # the one restart is still there
        rest = [tuple(np.copy(a) for a in batch) for batch in iterator]
        assert [worker for worker, _ in loader.crashes] == [0]
    with stoker.Loader(data, batch_size=16, transform=FailsBelow(threshold, "exit"),
                       seed=seed, workers=0) as reference_loader:
        assert_same([first + rest], epochs_of(reference_loader, 1))


def test_a_hang_in_work_made_ahead_does_not_block_another_epoch(data):
    seed, threshold = _bad_in_epoch_one()
    with stoker.Loader(data, batch_size=16, transform=FailsBelow(threshold, "hang"),
                       seed=seed, workers=2, prefetch=4) as loader:
        epochs_of(loader, 1)
        loader.set_epoch(0)  # not epoch 1: its hanging sample is nobody's
        again = epochs_of(loader, 1)
        assert len(again[0]) == len(loader) and loader.crashes == []


@pytest.mark.parametrize("restarts", [0, 1])
def test_what_a_worker_finished_before_dying_on_work_made_ahead_is_kept(data, restarts):
    """A worker that sent its last chunks of this epoch, then died on the next epoch's
    sample: the chunks it sent are this epoch's, not lost work (a slow consumer, as in
    training, leaves them unread in the pipe when the death is noticed)."""
    seed, threshold = _bad_in_epoch_one()
    with stoker.Loader(data, batch_size=16, transform=FailsBelow(threshold, "exit"),
                       seed=seed, workers=2, prefetch=6,
                       max_worker_restarts=restarts) as loader:
        got = []
        for batch in loader:
            got.append(tuple(np.copy(a) for a in batch))
            time.sleep(0.05)  # a training step
        assert loader.crashes == [] and loader._executor._restarts_used == 0
    with stoker.Loader(data, batch_size=16, transform=FailsBelow(threshold, "exit"),
                       seed=seed, workers=0) as reference_loader:
        assert_same([got], epochs_of(reference_loader, 1))
