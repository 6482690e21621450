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

__all__ = ["LoaderStats", "StatsRecorder"]

_INPUT_BOUND_WAIT = 0.10  # the consumer waiting more than this share of the time


@dataclass(frozen=True, slots=True)
class LoaderStats:
    """What a loader did since it was created (or since ``stats(reset=True)``).

    ``elapsed_s`` runs from the first batch request to the last delivery; ``wait_s`` is
    the part of it the consumer spent blocked on the loader; ``worker_busy_s`` is the
    time workers spent making samples (for ``workers=0``, the consumer made them:
    equal to ``wait_s``); ``queue_depth`` is the mean number of finished batches
    waiting when the consumer asked for the next one.
    """

    batches: int
    samples: int
    elapsed_s: float
    wait_s: float
    worker_busy_s: float
    workers: int
    queue_depth: float

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def wait_fraction(self) -> float:
        """Share of the consumer's time spent waiting for data (0: never)."""
        return self.wait_s / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def worker_utilisation(self) -> float:
        """Share of the workers' time spent working (1: always busy)."""
        capacity = self.elapsed_s * max(self.workers, 1)
        return self.worker_busy_s / capacity if capacity > 0 else 0.0

    @property
    def input_bound(self) -> bool:
        return self.wait_fraction > _INPUT_BOUND_WAIT

    def balanced_workers(self) -> int:
        """Workers that would make data as fast as the consumer uses it: the work of
        making the batches divided by the consumer's own (non-waiting) time."""
        consuming = self.elapsed_s - self.wait_s
        if consuming <= 0:
            return max(self.workers, 1) * 2
        return max(1, math.ceil(self.worker_busy_s / consuming))

    def verdict(self, usable_cpus: int | None = None) -> str:
        """One line: model-bound, or input-bound and what would balance it."""
        share = f"waited for data {self.wait_fraction:.0%} of the time"
        if not self.input_bound:
            return (f"model-bound: the loader kept up ({share}, workers busy "
                    f"{self.worker_utilisation:.0%}); more workers would not help")
        needed = self.balanced_workers()
        advice = f"about {needed} workers would balance it"
        if usable_cpus is not None and needed > usable_cpus:
            advice += (f", more than the {usable_cpus} usable cores: make the transform "
                       "cheaper (stoker.augment) or add machines")
        return f"input-bound: the model {share} with {self.workers} workers; {advice}"

    def __str__(self) -> str:
        return (f"{self.batches} batches, {self.samples} samples, {self.samples_per_s:.0f} "
                f"samples/s, waited {self.wait_fraction:.0%}, workers busy "
                f"{self.worker_utilisation:.0%}, queue depth {self.queue_depth:.1f}")


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
    last_delivery: float | None = None
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

    def worker_busy(self, seconds: float) -> None:
        self.worker_busy_s += seconds

    def queue(self, depth: int) -> None:
        self.depth_total += depth
        self.depth_count += 1

    def snapshot(self) -> LoaderStats:
        elapsed = (self.last_delivery - self.first_request
                   if self.first_request is not None and self.last_delivery is not None
                   else 0.0)
        busy = self.worker_busy_s if self.workers else self.wait_s
        depth = self.depth_total / self.depth_count if self.depth_count else 0.0
        return LoaderStats(self.batches, self.samples, elapsed, self.wait_s, busy,
                           self.workers, depth)

    def reset(self) -> None:
        workers = self.workers
        self.__init__()
        self.workers = workers
