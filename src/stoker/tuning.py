"""``workers="auto"`` and ``prefetch="auto"``: the loader sizes its pool and ring while it runs.

A pure policy, fed by the executor after every delivered batch with the loader's
cumulative counters (``Reading``); it answers with a ``Change`` to make, or None. The
executor makes it (starts or retires a worker, adds a slot) and the decision is
recorded in ``loader.stats().tuning``. Nothing here can change a batch: every sample
depends on (seed, epoch, index) only, so any pool size gives the same bytes.

How it decides, one window at a time (at least ``window_s`` seconds and
``window_batches`` batches, counted from when every worker is ready, after a
transient of ``settle_batches`` following each change):

* the rate (samples/s), the consumer's wait share and the workers' utilisation of the
  window are its verdict on the current size;
* input-bound (the consumer waited more than 10 %) with the workers busy (over 75 %):
  try one worker more, up to the usable cores and the memory budget, and keep it only
  if the rate rose by more than ``tolerance``;
* the work would fit in one worker fewer (utilisation with ``n - 1`` under 90 %), or the
  consumer waited while the workers idled (the hand-over, not the work, is the limit):
  try one worker fewer, and keep it unless the rate fell by more than ``tolerance``
  (a core handed back to the training process is worth a rate within noise);
* a trial that did not pay is undone, and that direction is not tried again for a
  number of windows that doubles with each failure (``backoff``); a rate that moves by
  more than ``regime_change`` from what the current size was judged at (the model or
  the transform changed cost: a new phase of training) clears the back-off;
* ``prefetch="auto"``: a window in which the consumer waited after the ring had been
  full (every slot holding a finished batch, so the workers stood still) means a
  bursty consumer that a deeper ring absorbs: one slot more, within the byte budget.
  The ring does not shrink: a slot costs shared memory only, within that budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Change", "Decision", "Reading", "Tuner"]

INPUT_BOUND_WAIT = 0.10  # the consumer's wait share above which more workers may help
BUSY = 0.75  # the workers' utilisation above which they are the bottleneck
FITS_IN_FEWER = 0.90  # the utilisation n - 1 workers would have, at most, to try them
STARVED_WAIT = 0.05  # a wait share worth a deeper ring when the ring had been full


@dataclass(frozen=True, slots=True)
class Reading:
    """The loader's cumulative counters at one delivered batch."""

    time: float  # perf_counter of the delivery
    batches: int
    samples: int
    wait_s: float  # the consumer's time blocked on the loader
    busy_s: float  # the workers' time making samples
    full_takes: int  # deliveries made from a ring with every slot finished
    workers: int  # workers in the pool now (retiring ones not counted)
    slots: int
    ready: bool  # every worker started and attached


@dataclass(frozen=True, slots=True)
class Change:
    """What the executor is asked to do: a new worker count or ring size."""

    kind: str  # "workers" or "prefetch"
    to: int
    reason: str


@dataclass(frozen=True, slots=True)
class Decision:
    """A change made (or undone), as ``stats().tuning`` shows it."""

    batch: int  # the loader's batch count when it was made
    seconds: float  # since the tuner's first reading
    kind: str
    before: int
    after: int
    reason: str

    def __str__(self) -> str:
        return (f"batch {self.batch} ({self.seconds:.1f} s): {self.kind} {self.before} -> "
                f"{self.after}: {self.reason}")


@dataclass(frozen=True, slots=True)
class _Window:
    rate: float
    wait: float
    utilisation: float
    full: bool

    def __str__(self) -> str:
        return (f"{self.rate:.0f} samples/s, waited {self.wait:.0%}, workers busy "
                f"{self.utilisation:.0%}")


@dataclass
class Tuner:
    """The policy of the module docstring. ``tune_workers`` / ``tune_prefetch`` say
    which of the two it may change; bounds are inclusive."""

    workers: int
    slots: int
    min_workers: int = 1
    max_workers: int = 1
    max_slots: int = 2
    tune_workers: bool = True
    tune_prefetch: bool = False
    window_s: float = 1.0
    window_batches: int = 16
    settle_batches: int = 4
    tolerance: float = 0.05
    regime_change: float = 0.25
    max_backoff: int = 64
    decisions: list[Decision] = field(default_factory=list)
    _start: Reading | None = field(default=None, repr=False)
    _first_time: float | None = field(default=None, repr=False)
    _settle: int = field(default=0, repr=False)
    _judged: _Window | None = field(default=None, repr=False)  # the current size's verdict
    _trial: tuple[int, _Window] | None = field(default=None, repr=False)  # (from, its verdict)
    _blocked: dict[int, int] = field(default_factory=lambda: {1: 0, -1: 0}, repr=False)
    _backoff: dict[int, int] = field(default_factory=lambda: {1: 2, -1: 2}, repr=False)

    def __post_init__(self) -> None:
        if not 1 <= self.min_workers <= self.max_workers:
            raise ValueError(f"need 1 <= min_workers <= max_workers, got "
                             f"{self.min_workers}, {self.max_workers}")
        self.max_slots = max(self.max_slots, self.slots)

    # -- the readings -------------------------------------------------------------------

    def observe(self, reading: Reading) -> Change | None:
        """Take one delivered batch's counters; return a change to make, or None."""
        if self._first_time is None:
            self._first_time = reading.time
        start = self._start
        if (start is None or reading.samples < start.samples or reading.time < start.time
                or reading.workers != self.workers or reading.slots != self.slots):
            # the first reading, stats(reset=True), or a size not yet in effect
            self._restart(reading, settle=start is not None and reading.samples >= start.samples)
            return None
        if not reading.ready:
            self._restart(reading, settle=True)
            return None
        if self._settle > 0:
            self._settle -= 1
            self._start = reading
            return None
        elapsed = reading.time - start.time
        batches = reading.batches - start.batches
        if elapsed < self.window_s or batches < self.window_batches:
            return None
        window = _Window(
            rate=(reading.samples - start.samples) / elapsed,
            wait=min(1.0, (reading.wait_s - start.wait_s) / elapsed),
            utilisation=min(1.0, (reading.busy_s - start.busy_s) / (elapsed * self.workers)),
            full=reading.full_takes > start.full_takes,
        )
        self._start = reading
        for direction in (1, -1):
            self._blocked[direction] = max(0, self._blocked[direction] - 1)
        return self._decide(window, reading)

    def _restart(self, reading: Reading, *, settle: bool) -> None:
        self._start = reading
        self._settle = self.settle_batches if settle else 0

    # -- the decisions ------------------------------------------------------------------

    def _decide(self, window: _Window, reading: Reading) -> Change | None:
        if self._trial is not None:
            return self._conclude(window, reading)
        judged = self._judged
        if judged is not None and judged.rate > 0 and abs(
                window.rate / judged.rate - 1) > self.regime_change:
            self._blocked = {1: 0, -1: 0}  # a new phase: every direction is worth a try
            self._backoff = {1: 2, -1: 2}
        self._judged = window
        if self.tune_prefetch and self.slots < self.max_slots and window.full and (
                window.wait > STARVED_WAIT):
            return self._make(reading, "prefetch", self.slots + 1,
                              f"the ring was full, then the consumer waited ({window})")
        if not self.tune_workers:
            return None
        n = self.workers
        if (window.wait > INPUT_BOUND_WAIT and window.utilisation > BUSY
                and n < self.max_workers and not self._blocked[1]):
            return self._try(reading, window, n + 1, f"input-bound with busy workers ({window})")
        if n > self.min_workers and not self._blocked[-1]:
            if window.utilisation * n / (n - 1) < FITS_IN_FEWER:
                return self._try(reading, window, n - 1,
                                 f"the work fits in {n - 1} ({window})")
            if window.wait > INPUT_BOUND_WAIT and window.utilisation < BUSY:
                return self._try(reading, window, n - 1,
                                 f"the consumer waited while workers idled ({window})")
        return None

    def _try(self, reading: Reading, window: _Window, to: int, reason: str) -> Change:
        self._trial = (self.workers, window)
        return self._make(reading, "workers", to, f"trying: {reason}")

    def _conclude(self, window: _Window, reading: Reading) -> Change | None:
        before_n, before = self._trial  # type: ignore[misc]
        self._trial = None
        direction = 1 if self.workers > before_n else -1
        ratio = window.rate / before.rate if before.rate > 0 else 1.0
        kept = (ratio > 1 + self.tolerance if direction > 0
                else ratio >= 1 - self.tolerance)
        if kept:
            self._judged = window
            self._backoff[direction] = 2
            self._backoff[-direction] = 2
            # Just moved one way: going straight back needs the rate to have moved.
            self._blocked[-direction] = max(self._blocked[-direction], self._backoff[-direction])
            self.decisions.append(Decision(
                reading.batches, reading.time - (self._first_time or reading.time),
                "workers", before_n, self.workers,
                f"kept: {window.rate:.0f} samples/s against {before.rate:.0f}"))
            return None
        self._judged = before
        self._blocked[direction] = self._backoff[direction]
        self._backoff[direction] = min(self.max_backoff, 2 * self._backoff[direction])
        return self._make(reading, "workers", before_n,
                          f"undone: {window.rate:.0f} samples/s against {before.rate:.0f}")

    def _make(self, reading: Reading, kind: str, to: int, reason: str) -> Change:
        before = self.workers if kind == "workers" else self.slots
        if kind == "workers":
            self.workers = to
        else:
            self.slots = to
        self.decisions.append(Decision(
            reading.batches, reading.time - (self._first_time or reading.time),
            kind, before, to, reason))
        return Change(kind, to, reason)

    def refused(self, change: Change, why: str, reading: Reading) -> None:
        """The executor could not make ``change`` (the memory budget): the size stays,
        and that direction is not asked for again for a long while."""
        if change.kind == "workers":
            before = self._trial[0] if self._trial is not None else self.workers
            self.workers = before
            self._trial = None
            self._blocked[1 if change.to > before else -1] = self.max_backoff
        else:
            before = self.slots - 1
            self.slots = self.max_slots = before
        self.decisions.append(Decision(
            reading.batches, reading.time - (self._first_time or reading.time),
            change.kind, change.to, before, f"refused: {why}"))
