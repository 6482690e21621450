"""The workers="auto" / prefetch="auto" policy (``tuning.py``), on simulated loaders: a pool
of ``n`` workers making ``per_worker`` samples/s each, a consumer that takes at most
``consumer`` samples/s. The executor's side (resizing a real pool, bit-identical batches)
is further down, on real worker processes."""

from __future__ import annotations

import functools
import itertools
import os
import signal
import time
from collections.abc import Callable

import numpy as np
import pytest

import stoker
import stoker._system
from conftest import gone
from epochs import assert_same, epochs_of, held_after_the_first_batch
from light_transforms import flip_noise, spin_noise
from stoker.stats import StatsRecorder
from stoker.tuning import Change, Reading, Tuner

BATCH = 64


class Simulated:
    """Cumulative counters of a loader whose rate is ``rate(workers)``."""

    def __init__(self, tuner: Tuner, rate: Callable[[int], float], consumer: float,
                 ready_after: int = 0) -> None:
        self.tuner, self.rate, self.consumer = tuner, rate, consumer
        self.time = self.wait = self.busy = 0.0
        self.batches = self.samples = 0
        self.full_takes = 0
        self.ready_after = ready_after
        self.history: list[int] = []
        self.changes: list[Change] = []

    def step(self, *, full: bool = False) -> Change | None:
        n, slots = self.tuner.workers, self.tuner.slots
        rate = self.rate(n)
        seconds = BATCH / rate
        self.time += seconds
        self.batches += 1
        self.samples += BATCH
        self.wait += max(0.0, seconds - BATCH / self.consumer)
        self.busy += BATCH / (self.rate(1) if n else rate)  # each sample's work
        self.full_takes += full
        change = self.tuner.observe(Reading(
            self.time, self.batches, self.samples, self.wait, self.busy, self.full_takes,
            n, slots, ready=self.batches > self.ready_after))
        if change is not None:
            self.changes.append(change)
        self.history.append(self.tuner.workers)
        return change

    def run(self, seconds: float) -> None:
        end = self.time + seconds
        while self.time < end:
            self.step()


def linear(per_worker: float, cores: int) -> Callable[[int], float]:
    """n workers make n times one worker's rate, up to the cores (then no better)."""
    return lambda n: per_worker * min(n, cores)


def test_an_input_bound_loader_grows_to_what_pays_and_stays_there() -> None:
    tuner = Tuner(workers=1, slots=2, max_workers=8)
    # 4 cores' worth of work helps; the consumer takes up to 10k samples/s
    loader = Simulated(tuner, lambda n: min(10_000.0, linear(1_000.0, 4)(n)), 10_000.0)
    loader.run(60)
    assert tuner.workers == 4, [str(d) for d in tuner.decisions]
    kinds = [d.reason.split(":")[0] for d in tuner.decisions]
    assert "trying" in kinds and "kept" in kinds and "undone" in kinds
    # the 5th worker was tried and undone; later tries back off (not every window)
    fifth = sum(1 for c in loader.changes if c.to == 5)
    assert 1 <= fifth <= 6
    assert loader.history[-1] == 4


def test_a_model_bound_loader_hands_back_the_workers_it_does_not_need() -> None:
    tuner = Tuner(workers=8, slots=16, max_workers=8)
    # each worker makes 1k samples/s; the model takes only 2.5k
    loader = Simulated(tuner, lambda n: min(2_500.0, 1_000.0 * n), 2_500.0)
    loader.run(120)
    assert tuner.workers == 3, [str(d) for d in tuner.decisions]  # 2.5k / 3k: 83 % busy


def test_a_trial_that_does_not_pay_is_undone_and_retried_ever_more_rarely() -> None:
    tuner = Tuner(workers=2, slots=4, max_workers=2 + 1)
    # input-bound and busy, but a third worker adds nothing (2 cores)
    loader = Simulated(tuner, linear(1_000.0, 2), 10_000.0)
    loader.run(300)
    assert tuner.workers == 2
    starts = [d.seconds for d in tuner.decisions if d.after == 3]
    spacing = [b - a for a, b in itertools.pairwise(starts)]
    assert len(spacing) >= 4
    # the back-off doubles, up to its cap (64 windows)
    assert all(b > 1.5 * a or b > 60 for a, b in itertools.pairwise(spacing)), spacing
    assert all(d.reason.startswith(("trying", "undone")) for d in tuner.decisions)


def test_nothing_is_judged_before_every_worker_is_ready_or_within_a_window() -> None:
    tuner = Tuner(workers=1, slots=2, max_workers=4)
    loader = Simulated(tuner, linear(1_000.0, 4), 10_000.0, ready_after=10**9)
    loader.run(30)
    assert tuner.decisions == [] and tuner.workers == 1
    tuner = Tuner(workers=1, slots=2, max_workers=4, window_s=1e9)
    loader = Simulated(tuner, linear(1_000.0, 4), 10_000.0)
    loader.run(30)
    assert tuner.decisions == []


def test_counters_that_start_again_begin_a_new_window() -> None:
    tuner = Tuner(workers=1, slots=2, max_workers=4)
    loader = Simulated(tuner, linear(1_000.0, 4), 10_000.0)
    loader.run(0.9)
    # stats(reset=True): every counter back to zero
    loader.samples = loader.batches = 0
    loader.wait = loader.busy = 0.0
    assert loader.step() is None
    loader.run(60)
    assert tuner.workers == 4


def test_a_new_phase_of_training_clears_the_back_off() -> None:
    rate = {"cores": 2}
    tuner = Tuner(workers=2, slots=4, max_workers=4, max_backoff=1024)
    loader = Simulated(tuner, lambda n: 1_000.0 * min(n, rate["cores"]), 10_000.0)
    loader.run(200)  # a third worker never pays: backed off far
    assert tuner.workers == 2
    rate["cores"] = 4  # the work gets twice as cheap per worker... as if cores came free
    loader.rate = lambda n: 2_000.0 * min(n, rate["cores"])
    loader.run(40)
    assert tuner.workers == 4, [str(d) for d in tuner.decisions[-4:]]


def test_a_bursty_consumer_gets_a_deeper_ring_within_the_budget() -> None:
    tuner = Tuner(workers=2, slots=4, max_workers=2, max_slots=6, tune_workers=False,
                  tune_prefetch=True)
    loader = Simulated(tuner, lambda n: 1_000.0, 1_500.0)  # waits 33 % of the time
    end = loader.time + 60
    while loader.time < end:
        loader.step(full=loader.batches % 10 == 0)
    assert tuner.slots == 6 and tuner.workers == 2
    assert [d.after for d in tuner.decisions] == [5, 6]
    assert all(d.kind == "prefetch" for d in tuner.decisions)
    # never full: no slot is added
    tuner = Tuner(workers=2, slots=4, max_workers=2, max_slots=6, tune_workers=False,
                  tune_prefetch=True)
    Simulated(tuner, lambda n: 1_000.0, 1_500.0).run(60)
    assert tuner.slots == 4


def test_a_refused_change_is_not_asked_for_again_soon() -> None:
    tuner = Tuner(workers=1, slots=2, max_workers=4)
    loader = Simulated(tuner, linear(1_000.0, 4), 10_000.0)
    change = None
    while change is None:
        change = loader.step()
    assert change.to == 2
    reading = Reading(loader.time, loader.batches, loader.samples, loader.wait, loader.busy,
                      0, 2, 2, True)
    tuner.refused(change, "not enough memory", reading)
    assert tuner.workers == 1
    assert tuner.decisions[-1].reason == "refused: not enough memory"
    loader.run(tuner.max_backoff * tuner.window_s * 0.5)
    assert tuner.workers == 1


@pytest.mark.parametrize("bounds", [(0, 4), (3, 2)])
def test_bad_bounds_are_refused(bounds: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="min_workers"):
        Tuner(workers=1, slots=2, min_workers=bounds[0], max_workers=bounds[1])


# -- a real pool resized while it runs ----------------------------------------------------

IMAGES = np.random.default_rng(5).integers(0, 255, (600, 8, 8), dtype=np.uint8)
LABELS = np.arange(600, dtype=np.int64)


@pytest.fixture(scope="module")
def data():
    source = stoker.from_arrays(IMAGES, LABELS)
    yield source
    source.release()


def reference(data, epochs: int, **options):
    with stoker.Loader(data, batch_size=32, transform=flip_noise, seed=9, workers=0,
                       **options) as loader:
        return epochs_of(loader, epochs)


@pytest.mark.parametrize("start_method", ["forkserver", "fork", "spawn"])
def test_resizing_the_pool_and_ring_at_any_moment_changes_no_batch(data, start_method):
    """Grow and shrink the pool (and deepen the ring) between any two batches, with
    chunks in flight: every batch is the inline reference's, exactly once, in order."""
    choices = np.random.default_rng(1)
    with stoker.Loader(data, batch_size=32, transform=flip_noise, seed=9, workers="auto",
                       prefetch="auto", start_method=start_method) as loader:
        executor = loader._get_executor()  # white box: resize it by hand
        cores = executor._tuning.max_workers
        sizes = []

        def resize(epoch, number):
            if choices.random() < 0.5:
                executor._resize(int(choices.integers(1, cores + 1)))
            if choices.random() < 0.1 and len(executor._slot_views) < 12:
                executor._grow_ring()
            sizes.append(executor.workers)
            # What the user sees follows the pool, not the count it started with.
            assert loader.workers == executor.workers
            assert f"workers={executor.workers} (auto)" in repr(loader)

        assert loader.workers == cores  # "auto" starts with every usable core
        got = epochs_of(loader, 3, during=resize)
        assert executor.workers == len([w for w in executor._resources.workers
                                        if not w.retiring])
    assert_same(got, reference(data, 3))
    if cores > 1:
        assert len(set(sizes)) > 1


def test_a_retiring_worker_killed_with_chunks_in_flight_has_them_made_again(data, tmp_path):
    gate = tmp_path / "open"
    held = held_after_the_first_batch(data, gate, batch_size=32, seed=9)
    with stoker.Loader(data, batch_size=32, transform=held, seed=9, workers="auto",
                       max_worker_restarts=1) as loader:
        executor = loader._get_executor()
        iterator = iter(loader)
        got = [tuple(np.copy(a) for a in next(iterator))]
        if executor.workers < 2:
            pytest.skip("needs 2 usable cores")
        executor._resize(1)
        (leaving,) = [w for w in executor._resources.workers if w.retiring]
        assert leaving.tasks  # it still holds chunks of the ring (held at the gate)
        os.kill(leaving.process.pid, signal.SIGKILL)
        gate.touch()
        got += [tuple(np.copy(a) for a in batch) for batch in iterator]
        assert loader.crashes and loader.crashes[0][0] == leaving.worker_id
        assert len(loader.worker_pids) == 1 and executor.workers == 1
    with stoker.Loader(data, batch_size=32, transform=flip_noise, seed=9, workers=0) as loader:
        assert_same([got], [[tuple(np.copy(a) for a in b) for b in loader]])


def test_close_stops_joining_and_retired_workers(data, tmp_path):
    gate = tmp_path / "open"
    held = held_after_the_first_batch(data, gate, batch_size=32, seed=9)
    with stoker.Loader(data, batch_size=32, transform=held, seed=9,
                       workers="auto") as loader:
        executor = loader._get_executor()
        iterator = iter(loader)
        next(iterator)
        if executor.workers < 2:
            pytest.skip("needs 2 usable cores")
        first = list(loader.worker_pids)
        executor._resize(1)
        (leaving,) = [w for w in executor._resources.workers if w.retiring]
        assert leaving.tasks  # held at the gate: it cannot have finished them
        executor._resize(2)  # the retiring one stays: nothing started, nothing stopped
        assert loader.worker_pids == first
        assert not any(w.retiring for w in executor._resources.workers)
        gate.touch()
        executor._resize(1)
        for _ in range(4):  # the pump sees its chunks finish, then it is asked to stop
            next(iterator)
        assert len(loader.worker_pids) == 1
        executor._resize(2)  # a new worker starts, and close() comes before it is ready
        assert [w.joining for w in executor._resources.workers] == [False, True]
        every = set(first) | set(loader.worker_pids)
    assert len(every) == 3
    assert all(gone(pid) for pid in every)


def test_the_tuner_hands_back_workers_a_slow_model_does_not_need_and_takes_them_again(data):
    """Real decisions on a real pool: a consumer slow enough (25 ms a batch against well
    under 1 ms of work) leaves the workers idle, so the pool shrinks; then a consumer that
    takes batches at once, with a transform that keeps a worker busy, makes it try more.
    The batches stay the reference's throughout."""
    if stoker._system.usable_cpu_count() < 2:
        pytest.skip("needs 2 usable cores")
    slow = functools.partial(spin_noise, seconds=0.0005)
    phase = {"consumer": 0.025}
    with stoker.Loader(data, batch_size=32, transform=slow, seed=9,
                       workers="auto") as loader:
        def consume(epoch, number):
            time.sleep(phase["consumer"])
            stats = loader.stats()
            assert loader.workers == stats.workers
            if stats.workers == 1 and phase["consumer"]:
                phase["consumer"] = 0.0  # shrunk: now the workers are the bottleneck

        def kinds():
            return [(d.before, d.after, d.reason.split(":")[0]) for d in loader.stats().tuning]

        # Epochs until the tuner has tried growing again: each step takes a window of
        # 1 s or more, so a fixed epoch count would race the clock (12 epochs once ended
        # on the very batch the growth was tried at). 60 epochs is over 10 s of windows.
        got = []
        while (1, 2, "trying") not in kinds() and len(got) < 60:
            got += epochs_of(loader, 1, during=consume)
        tuning = kinds()
    assert (2, 1, "trying") in tuning, tuning
    assert (1, 2, "trying") in tuning, tuning
    with stoker.Loader(data, batch_size=32, transform=slow, seed=9, workers=0) as loader:
        assert_same(got, epochs_of(loader, len(got)))


def test_the_utilisation_counts_each_pool_size_for_the_time_it_lasted() -> None:
    recorder = StatsRecorder(workers=4)
    recorder.requested()
    recorder.delivered(10)
    recorder.first_delivery -= 2.0  # 2 s at 4 workers ...
    recorder.resized = recorder.first_delivery
    recorder.resized += 2.0
    recorder.capacity_s = 8.0
    recorder.workers = 1  # ... then 1 worker from the resize to the last delivery
    recorder.worker_busy(4.0)
    stats = recorder.snapshot()
    since = recorder.last_delivery - recorder.resized
    assert stats.worker_capacity_s == pytest.approx(8.0 + since)
    assert stats.worker_utilisation == pytest.approx(4.0 / (8.0 + since))


@pytest.mark.parametrize(("options", "match"), [
    ({"workers": "auto", "backend": "inline"}, "workers=\"auto\" .* backend='processes'"),
    ({"prefetch": "auto", "backend": "inline"}, "prefetch=\"auto\" .* backend='processes'"),
    ({"workers": "many"}, "workers must be an int, None or \"auto\", got 'many'"),
    ({"prefetch": "AUTO"}, "prefetch must be an int, None or \"auto\""),
])
def test_auto_is_refused_where_it_cannot_work(data, options, match):
    with pytest.raises(ValueError, match=match):
        stoker.Loader(data, batch_size=32, **options)
