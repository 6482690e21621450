"""Loader statistics, and the verdict they support: is training input-bound or model-bound?

The loader records, per delivered batch, how long the consumer waited for it; workers
report how long each chunk took them; the executor notes how many finished batches were
queued when the consumer asked. ``loader.stats()`` returns a :class:`LoaderStats`
snapshot; :meth:`LoaderStats.verdict` turns it into one line a user can act on.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from .tuning import Decision

__all__ = ["LoaderStats"]

_INPUT_BOUND_WAIT = 0.10  # the consumer waiting more than this share of the time
MIN_BATCHES = 10  # batches after the first needed to judge at all


def plural(count: int, word: str) -> str:
    """``1 batch``, ``2 batches``, ``3 workers``."""
    if count == 1:
        return f"{count} {word}"
    return f"{count} {word}{'es' if word.endswith(('s', 'ch', 'sh', 'x')) else 's'}"


@dataclass(frozen=True, slots=True)
class LoaderStats:
    """What a loader did since it was created (or since ``stats(reset=True)``).

    ``batches`` and ``samples`` count everything delivered. The rest leaves out the
    start-up (``startup_s``: from the first request to the first batch, when workers
    start and the first batch is made) and describes the steady part after it:
    ``elapsed_s`` runs from the first delivery to the last, over ``judged_batches``
    batches of ``judged_samples`` samples; ``wait_s`` is the part of it the consumer
    spent blocked on the loader; ``worker_busy_s`` is the time workers spent making
    samples (for ``workers=0``, the consumer made them: equal to ``wait_s``);
    ``queue_depth`` is the mean number of finished batches waiting when the consumer
    asked for the next one. With ``workers="auto"`` / ``prefetch="auto"``, ``workers`` is
    the pool now, ``worker_capacity_s`` the worker-seconds it had (the utilisation's
    denominator), and ``tuning`` the decisions made, oldest first (``tuning.py``).
    """

    batches: int
    samples: int
    elapsed_s: float
    wait_s: float
    worker_busy_s: float
    workers: int
    queue_depth: float
    startup_s: float = 0.0
    judged_batches: int | None = None  # None: all of them (a snapshot made by hand)
    judged_samples: int | None = None
    worker_capacity_s: float | None = None  # None: elapsed_s * workers
    tuning: tuple[Decision, ...] = ()

    @property
    def _judged(self) -> tuple[int, int]:
        return (self.batches if self.judged_batches is None else self.judged_batches,
                self.samples if self.judged_samples is None else self.judged_samples)

    @property
    def judgeable(self) -> bool:
        """Whether enough batches were timed (``MIN_BATCHES`` after the first) for the
        rates to mean anything: over a few prefetched batches they read as any number."""
        return (self._judged[0] >= MIN_BATCHES and math.isfinite(self.elapsed_s)
                and self.elapsed_s > 0)

    @property
    def samples_per_s(self) -> float:
        """Steady throughput: samples after the first batch per second."""
        return self._judged[1] / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def wait_fraction(self) -> float:
        """Share of the consumer's time spent waiting for data (0: never)."""
        return self.wait_s / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def worker_utilisation(self) -> float:
        """Share of the workers' time spent working (1: always busy)."""
        capacity = (self.worker_capacity_s if self.worker_capacity_s is not None
                    else self.elapsed_s * max(self.workers, 1))
        return min(1.0, self.worker_busy_s / capacity) if capacity > 0 else 0.0

    @property
    def input_bound(self) -> bool:
        """Whether the consumer waited for data long enough to call it input-bound."""
        return self.wait_fraction > _INPUT_BOUND_WAIT

    def balanced_workers(self) -> int:
        """Workers that would make data as fast as the consumer uses it: the work of
        making the batches divided by the consumer's own (non-waiting) time."""
        consuming = self.elapsed_s - self.wait_s
        if consuming <= 0:
            return max(self.workers, 1) * 2
        return max(1, math.ceil(self.worker_busy_s / consuming))

    def verdict(self, usable_cpus: int | None = None) -> str:
        """One line a user can act on: not enough data to judge yet, model-bound, or
        input-bound and what would balance it, never more workers than there are
        cores (``usable_cpus``: this machine's usable cores unless given)."""
        judged = self._judged[0]
        if judged < MIN_BATCHES:
            return (f"not enough data to judge: {plural(judged, 'batch')} after the first "
                    f"(start-up excluded); it takes {MIN_BATCHES}")
        if not self.judgeable:
            return (f"not enough data to judge: no time measured after the first batch "
                    f"({plural(judged, 'batch')})")
        share = f"waited for data {self.wait_fraction:.0%} of the time"
        if not self.input_bound:
            return (f"model-bound: the loader kept up ({share}, workers busy "
                    f"{self.worker_utilisation:.0%}); more workers would not help")
        if usable_cpus is None:
            from ._system import usable_cpu_count

            usable_cpus = usable_cpu_count()
        needed = self.balanced_workers()
        where = f"input-bound: the model {share} with {plural(self.workers, 'worker')}"
        if self.workers and needed <= self.workers:
            return (f"{where}, busy {self.worker_utilisation:.0%}: making samples is not "
                    "what holds it up but moving batches to the model (the consumer's "
                    "side); more workers would not help")
        if needed > usable_cpus:
            return (f"{where}; it would take about {needed} workers, more than the "
                    f"{plural(usable_cpus, 'usable core')}: make the transform cheaper "
                    "(stoker.augment) or add machines (backend='ray')")
        return f"{where}; about {needed} workers would balance it (workers={needed})"

    def __str__(self) -> str:
        judged = self._judged[0]
        if judged < MIN_BATCHES:
            rates = (f"too few batches after the first to time ({judged}; it takes "
                     f"{MIN_BATCHES})")
        elif not self.judgeable:  # a snapshot with no time after the first batch
            rates = f"no time measured after the first batch ({judged} batches)"
        else:
            rates = (f"{self.samples_per_s:.0f} samples/s, waited {self.wait_fraction:.0%}, "
                     f"workers busy {self.worker_utilisation:.0%}")
        return (f"{plural(self.batches, 'batch')}, {plural(self.samples, 'sample')}, "
                f"{rates}, queue depth {self.queue_depth:.1f}, start-up {self.startup_s:.2f} s")


@dataclass
class StatsRecorder:
    """The mutable counters behind :class:`LoaderStats` (owned by one loader)."""

    workers: int = 0
    batches: int = 0
    samples: int = 0
    wait_s: float = 0.0
    worker_busy_s: float = 0.0
    depth_total: float = 0.0
    depth_count: int = 0
    first_request: float | None = None
    first_delivery: float | None = None
    last_delivery: float | None = None
    at_first: tuple[int, float, float] = (0, 0.0, 0.0)  # samples, wait, busy then
    capacity_s: float = 0.0  # worker-seconds before the pool's last resize
    resized: float | None = None  # when the pool last changed size (after the first batch)
    tuning: list[Decision] = field(default_factory=list)  # the tuner's, shared
    _request: float = field(default=0.0, repr=False)

    def requested(self) -> None:
        self._request = time.perf_counter()
        if self.first_request is None:
            self.first_request = self._request

    def delivered(self, samples: int) -> None:
        now = time.perf_counter()
        self.wait_s += now - self._request
        self.batches += 1
        self.samples += samples
        self.last_delivery = now
        if self.first_delivery is None:
            self.first_delivery = self.resized = now
            self.at_first = (self.samples, self.wait_s, self.worker_busy_s)

    def set_workers(self, workers: int) -> None:
        """The pool changed size (``workers="auto"``): the utilisation counts each size
        for the time it lasted."""
        now = time.perf_counter()
        if self.resized is not None:
            self.capacity_s += (now - self.resized) * self.workers
            self.resized = now
        self.workers = workers

    def worker_busy(self, seconds: float) -> None:
        self.worker_busy_s += seconds

    def queue(self, depth: int) -> None:
        self.depth_total += depth
        self.depth_count += 1

    def snapshot(self) -> LoaderStats:
        if self.first_delivery is None or self.last_delivery is None:
            return LoaderStats(0, 0, 0.0, 0.0, 0.0, self.workers, 0.0, 0.0, 0, 0,
                               tuning=tuple(self.tuning))
        samples_then, wait_then, busy_then = self.at_first
        elapsed = self.last_delivery - self.first_delivery
        wait = self.wait_s - wait_then
        busy = self.worker_busy_s - busy_then if self.workers else wait
        depth = self.depth_total / self.depth_count if self.depth_count else 0.0
        startup = self.first_delivery - (self.first_request or self.first_delivery)
        since = self.resized if self.resized is not None else self.first_delivery
        capacity = self.capacity_s + max(0.0, self.last_delivery - since) * self.workers
        return LoaderStats(self.batches, self.samples, elapsed, wait, busy, self.workers,
                           depth, startup, self.batches - 1, self.samples - samples_then,
                           capacity if self.workers else None, tuple(self.tuning))

    def reset(self) -> None:
        workers, tuning = self.workers, self.tuning
        self.__init__()
        self.workers = workers
        self.tuning = tuning  # the decisions stay: what the tuner did is not a counter
