"""The processes executor: a pool of worker processes filling a ring of shared batch slots.

Scheduling, all of it in the consumer's thread (no background threads):

* The batch layout is learnt from worker 0, which makes the first sample (a PROBE task,
  with the crash detection, restarts and timeouts of any task): user code never runs
  in the consumer. Then the slots are created and every worker attaches to them.

* The ring has ``prefetch`` slots, one batch each. When a slot is free, the next batch
  of the plan is cut into one chunk per worker (of at least ``MIN_CHUNK`` samples), and
  each chunk is sent to the worker with the fewest samples queued. Every batch is thus
  shared by the workers and batches complete one after another at an even pace, not in
  bursts of ``workers`` batches. A batch transform needs the whole batch in one
  process, and so do samples that may become several or none (``stoker.Many``: where a
  sample's rows start depends on all before it): each batch is then one chunk, its
  slot has room for ``batch_size * max_outputs`` rows, the worker reports how many it
  made, and the ring keeps every worker on one.
* The consumer waits on the workers' pipes and process sentinels together (one
  ``poll`` object, ``_Waiter``, with a timeout), so a dead worker is noticed as soon as
  it dies, and a hung one (no progress for ``timeout`` seconds) is killed.
* A finished batch is handed over as views of its slot, with no copy, and a slot of
  the spare ones (``lend_limit``) takes its place in the ring until nothing refers to
  the batch any more; when every spare slot is lent (a consumer that keeps its
  batches), the batch is copied out instead (the caller may keep it; ``_batches.py``
  says where that memory comes from). Either way the ring is refilled with new work
  before the batch is handed over, so the workers keep going while the consumer trains.
* A chunk carries at least ``MIN_CHUNK`` samples, and at least as many as keep a
  worker busy for ``TASK_SECONDS`` at the time per sample measured so far: a cheap
  transform's batch goes to one worker whole (a task costs the consumer two messages).
* Every run (one call of ``run``) has a generation. A new run first lets the work of
  the one before finish (its slots may still be written to) and ignores its results;
  the older run, if resumed, raises LoaderError: two runs never share the ring.
* Warm epoch boundaries. While a run drains (every batch of it dispatched), the slots
  it frees get the first batches of the run expected next (``following``: the next
  epoch from its start, as the plan says). The next run adopts them when it is that
  run (same epoch, key and indices); any other run (``set_epoch``, a resume, a new
  seed) ignores them: it waits ``_AHEAD_GRACE_SECONDS`` for them, then replaces the
  workers still on them. Work made ahead is nobody's until adopted: a worker that
  dies (or hangs past ``timeout``) on it is replaced without using up
  ``max_worker_restarts`` and the work is dropped; the run it was for makes it again,
  and fails there if it must. Nothing is delivered twice or out of order: adopted
  batches are taken in plan order, and a sample failing in them is raised by the run
  it belongs to.
* Messages stay small, so a send never blocks on a full pipe (a stopped worker stops
  reading): a batch's sample indices are written into the shared index row of its slot,
  and a task names only (slot, row, count).
* ``timeout=`` is about progress, not chunks: every worker counts the samples it
  finished in a shared counter, and a worker is hung only when its counter has not
  moved for ``timeout`` seconds while it holds work.
* The consumer knows which worker holds which chunk. A crashed worker is replaced (up
  to ``max_worker_restarts``) and its chunks are recomputed by the replacement: same
  keys, same rows, so the epoch is bit-identical to an undisturbed one.
"""

from __future__ import annotations

import math
import os
import select
import time
import weakref
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

import numpy as np

from .._fork import ProcessLock
from .._system import available_memory, private_memory
from ..errors import LoaderError, WorkerCrashed, describe_exitcode
from ..layout import BatchLayout
from ..plan import split_into_chunks
from ..shm import SharedBlock
from ..stats import StatsRecorder
from ..tuning import Reading, Tuner
from . import _payload, _worker
from ._batches import BatchArrays, LentSlots, lend_limit
from ._produce import Transform
from ._spawning import WORKER_NAME_PREFIX, fork_safe_native_pools, worker_context
from .failures import rebuild_exception, transform_error
from .protocol import Following

__all__ = ["ProcessExecutor", "Tuning"]

_POLL_SECONDS = 0.5
_STOP_GRACE_SECONDS = 2.0
# The default ring: as many batch slots as fit in this much shared memory, at least 2
# (one being read while the next fills), at most 2 per worker. Every batch is already
# spread over all workers, so more slots than that only add /dev/shm use.
RING_BYTES = 256 * 2**20
# The fewest samples a task carries (unless the batch is smaller): each task costs the
# consumer a message out and one back, about 20 µs.
MIN_CHUNK = 32
# The least work a task carries, once the time per sample is known: at about 40 µs of the
# consumer's per task, a consumer core then keeps up with 50 workers.
TASK_SECONDS = 0.002
# How long a run that does not adopt the work made ahead for another waits for it to
# finish before the workers still on it are replaced (a sample of that epoch may hang).
_AHEAD_GRACE_SECONDS = 1.0
# workers="auto" grows the pool only while this much memory stays available beyond twice
# a worker's private memory.
_MEMORY_MARGIN = 256 * 2**20


def ring_slots(prefetch: int | None, workers: int, slot_nbytes: int) -> int:
    """How many batch slots the ring has: ``prefetch`` if given, else the default above."""
    if prefetch is not None:
        return prefetch
    return max(2, min(2 * workers, RING_BYTES // max(slot_nbytes, 1)))


@dataclass(frozen=True, slots=True)
class Tuning:
    """What ``workers="auto"`` / ``prefetch="auto"`` let the executor change (``tuning.py``
    decides how): the pool between 1 and ``max_workers``, the ring within ``RING_BYTES``."""

    workers: bool
    prefetch: bool
    max_workers: int


def max_slots(tuning: Tuning | None, slot_nbytes: int) -> int:
    """The deepest ring ``prefetch="auto"`` may grow to: 4 slots per worker at most,
    within the ring's byte budget, at least 2."""
    if tuning is None or not tuning.prefetch:
        return 0
    return max(2, min(4 * tuning.max_workers, RING_BYTES // max(slot_nbytes, 1)))


@dataclass(slots=True)
class _Task:
    task_id: int
    batch: int
    slot: int
    row: int
    indices: np.ndarray
    epoch: int
    key: tuple[int, int]
    generation: int = 0
    layout: Any = None  # a probe's answer: (batch layout, sample layout, max_outputs)
    number: int = 0  # the batch's number in its epoch (keys a batch transform's RNG)
    rows: int = -1  # a whole batch's rows, once made (-1: one per sample)


@dataclass(slots=True)
class _Ahead:
    """The first batches of the run expected next, dispatched while the last one drained."""

    epoch: int
    key: tuple[int, int]
    tag: int  # the generation its tasks carry until a run adopts them (negative)
    plan: Sequence[np.ndarray]  # that run's batches; the first len(slot_of) are dispatched
    slot_of: dict[int, int] = field(default_factory=dict)
    remaining: dict[int, int] = field(default_factory=dict)  # chunks still to finish
    rows: dict[int, int] = field(default_factory=dict)  # whole batches' rows, once made
    failed: bool = False  # a sample failed: the run itself recomputes and raises it

    @property
    def dispatched(self) -> int:
        return len(self.slot_of)

    def matches(self, epoch: int, key: tuple[int, int], batches: Sequence[np.ndarray],
                first_batch: int) -> bool:
        """Whether the run of ``batches`` (from batch ``first_batch`` of its epoch) is the
        one these batches were made for: the plan's batches from the epoch's start."""
        count = self.dispatched
        return (not self.failed and first_batch == 0 and epoch == self.epoch
                and key == self.key
                and len(batches) >= count
                and all(np.array_equal(self.plan[i], batches[i]) for i in range(count)))


@dataclass(slots=True, eq=False)
class _Worker:
    worker_id: int
    process: BaseProcess
    conn: Connection
    tasks: dict[int, _Task] = field(default_factory=dict)
    queued: int = 0
    last_progress: float = field(default_factory=time.monotonic)
    started: float = field(default_factory=time.monotonic)
    ready: bool = False
    samples_done: int = -1  # its progress counter when last looked at
    retiring: bool = False  # workers="auto" shrinks the pool: no new work, stops when idle
    joining: bool = False  # workers="auto" grew the pool by it: no work until it is ready


class _Waiter:
    """Waits on the workers' pipes and sentinels with one ``poll`` object, kept while the
    pool is the same (``multiprocessing.connection.wait`` builds a new selector and
    registers every object at each call: most of the consumer's CPU per batch)."""

    def __init__(self) -> None:
        self._workers: list[_Worker] | None = None
        self._poll: Any = None
        self._owners: dict[int, tuple[_Worker, bool]] = {}  # fd -> (worker, is its pipe)

    def wait(self, workers: list[_Worker], timeout: float
             ) -> tuple[list[_Worker], list[_Worker]]:
        """(workers with a message or an EOF on their pipe, workers whose process ended),
        after at most ``timeout`` seconds."""
        if not hasattr(select, "poll"):  # Windows: the portable, slower way
            by_conn = {w.conn: w for w in workers}
            by_sentinel = {w.process.sentinel: w for w in workers}
            ready = wait([*by_conn, *by_sentinel], timeout=timeout)
            return ([by_conn[o] for o in ready if o in by_conn],
                    [by_sentinel[o] for o in ready if o in by_sentinel])
        if workers != self._workers:
            self._poll = select.poll()
            self._owners = {}
            for worker in workers:
                for fd, is_pipe in ((worker.conn.fileno(), True),
                                    (worker.process.sentinel, False)):
                    self._poll.register(fd, select.POLLIN)
                    self._owners[fd] = (worker, is_pipe)
            self._workers = list(workers)
        events = self._poll.poll(timeout * 1000)
        readable, ended = [], []
        for fd, _ in events:
            worker, is_pipe = self._owners[fd]
            (readable if is_pipe else ended).append(worker)
        return readable, ended


@dataclass(slots=True)
class _Resources:
    """What must be cleaned up, kept apart from the executor so a finalizer can reach it."""

    workers: list[_Worker] = field(default_factory=list)
    slots: list[SharedBlock] = field(default_factory=list)
    retired: list[_Worker] = field(default_factory=list)  # asked to stop, not yet joined
    pid: int = field(default_factory=os.getpid)  # whose workers they are (not a fork's)

    def reap(self) -> None:
        """Close what retired workers that have exited leave (their pipes)."""
        for worker in [w for w in self.retired if not w.process.is_alive()]:
            self.retired.remove(worker)
            worker.process.join(0)
            worker.conn.close()
            try:
                worker.process.close()
            except ValueError:
                pass

    def shutdown(self) -> None:
        """Stop the workers (ask, then terminate, then kill), then free the slots. In a
        process forked from the owner (its copy, collected or at exit) nothing: the
        workers and slots are the owner's, still at work."""
        if os.getpid() != self.pid:
            return
        workers, self.workers = self.workers + self.retired, []
        self.retired = []
        for worker in workers:
            try:
                worker.conn.send(_worker.Stop())
            except (OSError, ValueError):
                pass
        _join_all(workers, _STOP_GRACE_SECONDS)
        for worker in workers:
            if worker.process.is_alive():
                worker.process.terminate()
        _join_all(workers, _STOP_GRACE_SECONDS)
        for worker in workers:
            if worker.process.is_alive():
                worker.process.kill()
        _join_all(workers, _STOP_GRACE_SECONDS)
        for worker in workers:
            worker.conn.close()
            try:
                worker.process.close()
            except ValueError:
                pass
        slots, self.slots = self.slots, []
        for slot in slots:
            slot.release()


def _failure(failed: _worker.Failed, epoch: int) -> BaseException:
    """The consumer-side error for a worker's Failed record (its cause attached)."""
    error = rebuild_exception(failed.exception_bytes, failed.summary, failed.traceback_text)
    raised = transform_error(failed.index, failed.stage, error, failed.traceback_text, epoch)
    raised.__cause__ = error
    raised.__suppress_context__ = True
    return raised


def _made_ahead(task: _Task) -> bool:
    """Work made ahead for a run not yet started (tagged -1 - generation; probes are -1)."""
    return task.generation < -1


def _join_all(workers: list[_Worker], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    for worker in workers:
        try:
            worker.process.join(max(0.0, deadline - time.monotonic()))
        except ValueError:
            pass


class ProcessExecutor:
    """Runs the plan on ``workers`` processes; see the module docstring for how."""

    # Set on an executor before it starts, these give the hand-over before batches were
    # lent and chunks sized by time (the "before" rows of benchmarks/bench_consumer.py).
    lend_batches = True
    task_seconds = TASK_SECONDS

    def __init__(
        self,
        *,
        source: Any,
        transform: Transform,
        probe: tuple[tuple[int, ...], np.ndarray],
        batch_size: int,
        workers: int,
        prefetch: int | None,
        start_method: str | None = None,
        max_worker_restarts: int = 0,
        timeout: float | None = None,
        start_timeout: float = 120.0,
        stats: StatsRecorder | None = None,
        tuning: Tuning | None = None,
    ) -> None:
        self.workers = workers  # in the pool now, retiring ones not counted
        self._tuning = tuning
        self._tuner: Tuner | None = None
        self._full_takes = 0  # deliveries from a ring whose every slot held a finished batch
        self._slot_nbytes = 0
        self._stats = stats
        self._source = source
        self._transform = transform
        self._probe = probe
        self._layout: BatchLayout | None = None
        self._sample_layout: BatchLayout | None = None
        self._max_outputs: int | None = transform.max_outputs
        self._attach: _worker.Attach | None = None
        self._batch_size = batch_size
        self._prefetch = prefetch
        self._start_method = start_method
        self._max_restarts = max_worker_restarts
        self._timeout = timeout
        self._start_timeout = start_timeout
        self._lock = ProcessLock(reentrant=True)  # fresh in a forked child
        self._closed = False  # the pool was shut down: the run in progress must end
        self._stopped = False  # close() was called: nothing runs again
        self._resources = _Resources()
        self._finalizer = weakref.finalize(self, self._resources.shutdown)
        self._slot_views: list[list[np.ndarray]] = []
        self._index_rows = np.zeros((0, 0), np.int64)
        self._progress = np.zeros(0, np.int64)
        self._tasks: dict[int, _Task] = {}
        self._next_task_id = 0
        self._restarts_used = 0
        self.crashes: list[tuple[int, int | None]] = []
        self._payload: bytes | None = None
        self._context = None
        self._dirty = False
        self._generation = 0
        self._ahead: _Ahead | None = None
        self._waiter = _Waiter()
        self._arrays: BatchArrays | None = None  # the memory of delivered batches
        self._lent = LentSlots(0)  # slots whose batch the consumer holds (no copy)
        self._busy_s = 0.0  # workers' time on the samples of finished tasks
        self._busy_samples = 0
        self.adopted_batches = 0  # batches made ahead that their run delivered
        self._dropped: set[int] = set()  # tags of work made ahead and lost with a worker

    # -- life cycle ---------------------------------------------------------------

    @property
    def started(self) -> bool:
        return bool(self._resources.workers)

    @property
    def layout(self) -> BatchLayout:
        """The batch layout, learnt from a worker (starting the pool if needed)."""
        with self._lock:
            self.start()
            assert self._layout is not None
            return self._layout

    def start(self) -> None:
        """Start the workers, learn the layout from one, create the batch slots and
        attach every worker to them (done lazily by ``run`` and ``layout``)."""
        if self.started:
            return
        self._check_open()
        self._context = worker_context(self._start_method)
        self._closed = False
        try:
            # A legacy transform that uses torch may draw from torch's generator, which
            # is seeded per sample once torch is imported: such workers import it before
            # their first sample (others do not pay its 2 s and 130 MiB).
            preload = ("torch",) if self._transform.draws_from_torch() else ()
            ids = max(self.workers, self._tuning.max_workers if self._tuning else 0)
            progress = SharedBlock.create(8 * ids, purpose="progress counters")
            self._resources.slots.append(progress)
            self._progress = progress.ndarray((ids,), np.int64)  # zeros: fresh
            spec = _worker.WorkerSpec(self._source, self._transform, self._batch_size, preload,
                                      progress)
            self._payload, shared = _payload.dumps(spec)
            self._resources.slots.extend(shared)  # released after the workers are joined
            for worker_id in range(self.workers):
                self._resources.workers.append(self._spawn(worker_id))
            if self._layout is None:
                self._layout, self._sample_layout, self._max_outputs = self._learn_layout()
            assert self._sample_layout is not None
            rows = self._batch_size * (self._max_outputs or 1)  # a slot's, and a batch's most
            nbytes = self._layout.batch_nbytes(rows)
            ring = (self._tuner.slots if self._tuner is not None  # a pool started again
                    else ring_slots(self._prefetch, self.workers, nbytes))
            spare = lend_limit(nbytes) if self.lend_batches else 0
            try:
                slots = SharedBlock.create_many(
                    nbytes, ring + spare, purpose="batch slots",
                    advice="Lower prefetch= (fewer slots) or batch_size= (smaller ones). ")
            except OSError:
                if not spare:
                    raise
                spare = 0  # no room for spare slots: every batch is copied out
                slots = SharedBlock.create_many(
                    nbytes, ring, purpose="batch slots",
                    advice="Lower prefetch= (fewer slots) or batch_size= (smaller ones). ")
            self._resources.slots.extend(slots)
            self._lent = LentSlots(spare)
            self._slot_nbytes = nbytes
            self._slot_views = [
                self._layout.views(s.ndarray((s.size,), np.uint8), rows) for s in slots
            ]
            # Room for the indices of the deepest ring prefetch="auto" may grow to, and the
            # spare slots.
            most = max(ring, max_slots(self._tuning, nbytes)) + spare
            index_block = SharedBlock.create(8 * most * self._batch_size,
                                             purpose="batch indices")
            self._resources.slots.append(index_block)
            self._index_rows = index_block.ndarray((most, self._batch_size), np.int64)
            self._attach = _worker.Attach(self._layout, tuple(slots), index_block,
                                          self._sample_layout, rows, self._max_outputs)
            self._arrays = BatchArrays(self._layout, rows)
            for worker in list(self._resources.workers):
                self._send(worker, self._attach)
            if self._tuning is not None and self._tuner is None:
                self._tuner = Tuner(
                    workers=self.workers, slots=ring, min_workers=1,
                    max_workers=self._tuning.max_workers,
                    max_slots=max_slots(self._tuning, nbytes),
                    tune_workers=self._tuning.workers, tune_prefetch=self._tuning.prefetch,
                    decisions=self._stats.tuning if self._stats is not None else [])
        except BaseException:
            self._attach = None
            self._resources.shutdown()
            self._tasks.clear()
            raise

    def _learn_layout(self) -> tuple[BatchLayout, BatchLayout, int | None]:
        """Worker 0 makes the first sample and answers with its layout (and the batch
        transform's output layout for it, and max_outputs)."""
        indices, key = self._probe
        task = _Task(self._next_task_id, -1, -1, 0, np.array(indices, dtype=np.int64), 0,
                     (int(key[0]), int(key[1])), -1)
        self._next_task_id += 1
        self._assign(self._resources.workers[0], task)
        while True:
            if self._closed or self._stopped:
                raise LoaderError("the loader was closed while its workers were starting")
            done, failed = self._pump()
            if failed:
                raise _failure(failed[0][1], 0)
            for finished in done:
                if finished.batch == -1:
                    return finished.layout  # type: ignore[attr-defined]

    def _spawn(self, worker_id: int) -> _Worker:
        parent_conn, child_conn = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=_worker.run,
            args=(self._payload, child_conn, worker_id, os.getpid()),
            name=f"{WORKER_NAME_PREFIX}-{worker_id}",
            daemon=True,
        )
        with fork_safe_native_pools(self._start_method):
            process.start()
        child_conn.close()
        worker = _Worker(worker_id, process, parent_conn)
        if self._attach is not None:  # a replacement: the slots first
            self._send(worker, self._attach)
        return worker

    # -- workers="auto", prefetch="auto" -----------------------------------------------

    def _tune(self, free_slots: deque[int]) -> None:
        """Show the tuner the counters as of the last delivery; make what it asks for.
        A new slot joins ``free_slots`` (the run's)."""
        stats, tuner = self._stats, self._tuner
        if tuner is None or stats is None or stats.last_delivery is None:
            return
        pool = self._resources.workers
        reading = Reading(
            time=stats.last_delivery, batches=stats.batches, samples=stats.samples,
            wait_s=stats.wait_s, busy_s=stats.worker_busy_s, full_takes=self._full_takes,
            workers=self.workers, slots=len(self._slot_views) - self._lent.limit,
            ready=all(w.ready for w in pool))
        change = tuner.observe(reading)
        if change is None:
            return
        if change.kind == "prefetch":
            try:
                free_slots.append(self._grow_ring())
            except OSError as error:  # /dev/shm is full: the ring stays as it is
                tuner.refused(change, f"no shared memory for another slot ({error})", reading)
            return
        if change.to > self.workers:
            why = self._cannot_grow()
            if why:
                tuner.refused(change, why, reading)
                return
        self._resize(change.to)

    def _cannot_grow(self) -> str:
        """Why the pool may not grow by a worker now ("" if it may): the memory budget, a
        worker's private memory twice over plus 256 MiB left available."""
        available = available_memory()
        pool = [w for w in self._resources.workers if w.ready]
        private = private_memory(pool[0].process.pid) if pool else None
        if available is None or private is None:
            return ""
        if available < 2 * private + _MEMORY_MARGIN:
            return (f"{available / 2**20:.0f} MiB available, a worker takes "
                    f"{private / 2**20:.0f} MiB of its own")
        return ""

    def _resize(self, workers: int) -> None:
        """Grow the pool (a retiring worker stays, else a new one starts and gets work
        once ready) or shrink it (the worker with the highest id gets no new work and
        stops when it has finished its chunks)."""
        pool = self._resources.workers
        while self.workers < workers:
            leaving = [w for w in pool if w.retiring]
            if leaving:
                leaving[0].retiring = False
            else:
                taken = {w.worker_id for w in pool}
                worker_id = min(i for i in range(len(self._progress)) if i not in taken)
                worker = self._spawn(worker_id)
                worker.joining = True
                pool.append(worker)
            self.workers += 1
        while self.workers > max(workers, 1):
            active = [w for w in pool if not w.retiring]
            max(active, key=lambda w: w.worker_id).retiring = True
            self.workers -= 1
        self._retire_idle()
        if self._stats is not None:
            self._stats.set_workers(self.workers)

    def _retire_idle(self) -> None:
        """Stop the retiring workers that have no chunk left (joined at shutdown)."""
        for worker in [w for w in self._resources.workers if w.retiring and not w.tasks]:
            self._send(worker, _worker.Stop())
            self._resources.workers.remove(worker)
            self._resources.retired.append(worker)
        self._resources.reap()

    def _grow_ring(self) -> int:
        """One batch slot more; every worker maps it (a new Attach, before any task for
        it, in pipe order). Returns its number."""
        assert self._attach is not None and self._layout is not None
        (block,) = SharedBlock.create_many(
            self._slot_nbytes, 1, purpose="batch slots",
            advice="Lower prefetch= (fewer slots) or batch_size= (smaller ones). ")
        self._resources.slots.append(block)
        self._slot_views.append(
            self._layout.views(block.ndarray((block.size,), np.uint8), self._attach.rows))
        self._attach = self._attach._replace(slots=(*self._attach.slots, block))
        for worker in self._resources.workers:
            self._send(worker, self._attach)
        return len(self._slot_views) - 1

    def _send(self, worker: _Worker, message: tuple) -> bool:  # one of _worker's messages
        try:
            worker.conn.send(message)
        except (OSError, ValueError):
            return False
        return True

    def close(self) -> None:
        """Stop every worker and free the slots. Idempotent, and safe from any thread:
        an epoch running in another thread (Keras' enqueuer) is let finish its current
        step, then ends with a LoaderError instead of reading freed memory."""
        self._stopped = self._closed = True
        self._shutdown()

    def _shutdown(self) -> None:
        """Stop the workers and free the slots (after a crash, too: a later run may start
        a new pool, unless close() was called)."""
        self._closed = True
        with self._lock:
            self._resources.shutdown()
            self._tasks.clear()
            self._slot_views = []
            self._lent.clear()
            self._index_rows = np.zeros((0, 0), np.int64)
            self._progress = np.zeros(0, np.int64)
            self._attach = None
            self._payload = None
            self._dirty = False
            self._ahead = None
            self._closed = True  # again: a run that reset it meanwhile must still end

    def _check_open(self) -> None:
        if self._stopped:
            raise LoaderError("the loader was closed while another thread was reading from it")

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self._resources.workers]

    # -- one epoch ----------------------------------------------------------------

    def run(
        self, epoch: int, key: np.ndarray, batches: Sequence[np.ndarray],
        following: Following | None = None, first_batch: int = 0,
    ) -> Iterator[list[np.ndarray]]:
        """Yield the batches of ``batches`` (index arrays; the first is batch
        ``first_batch`` of the epoch) in order, as fresh arrays. Starting a run ends the
        one before it; while this one drains, the first batches of ``following()`` are
        made (module docstring)."""
        key_words = (int(key[0]), int(key[1]))
        with self._lock:
            self._check_open()
            self._generation += 1
            generation = self._generation
            adopted = self._adopt(epoch, key_words, batches, first_batch, generation)
            if self._dirty:
                self._drain()
            self._check_open()
            self._closed = False
            self.start()
            self._dirty = True
        pending = deque(range(len(batches)))
        free_slots = deque(slot for slot in range(len(self._slot_views))
                           if slot not in self._lent.held)
        remaining: dict[int, int] = {}
        slot_of: dict[int, int] = {}
        rows_of: dict[int, int] = {}  # whole batches' rows, as their workers made them
        if adopted is not None:
            for _ in range(adopted.dispatched):
                pending.popleft()
            slot_of.update(adopted.slot_of)
            remaining.update(adopted.remaining)
            rows_of.update(adopted.rows)
            held = set(adopted.slot_of.values())
            free_slots = deque(slot for slot in free_slots if slot not in held)
        ahead: _Ahead | None = None
        next_batch = 0
        while next_batch < len(batches):
            out = None
            with self._lock:  # released at every yield and after every bounded wait
                if self._closed or self._stopped:
                    raise LoaderError(
                        "the loader was closed while another thread was reading from it"
                    )
                if self._generation != generation:
                    raise LoaderError(
                        "a newer iteration of this loader started, which ended this one"
                    )
                free_slots.extend(self._lent.reclaim())
                while pending and self._room(free_slots):
                    batch = pending.popleft()
                    slot = free_slots.popleft()
                    slot_of[batch] = slot
                    remaining[batch] = self._dispatch(batch, batches[batch], slot, epoch,
                                                      key_words, generation,
                                                      first_batch + batch)
                if following is not None and self._room(free_slots):  # draining: the next run
                    ahead = self._dispatch_ahead(ahead, following, free_slots, generation)
                if remaining.get(next_batch) == 0:
                    finished = sum(1 for left in remaining.values() if left == 0)
                    if self._stats is not None:
                        self._stats.queue(finished)
                    if finished >= len(self._slot_views) - self._lent.limit:  # stood still
                        self._full_takes += 1
                    slot = slot_of.pop(next_batch)
                    del remaining[next_batch]
                    count = rows_of.pop(next_batch, -1)
                    if count < 0:
                        count = len(batches[next_batch])
                    out = self._lent.lend(slot, self._slot_views[slot], count)
                    if out is None:
                        out = self._arrays.copy(self._slot_views[slot], count)
                        free_slots.append(slot)
                    self._tune(free_slots)
                    next_batch += 1
                    if next_batch == len(batches):
                        self._dirty = False
                        self._ahead = ahead  # for the next run to adopt
                else:
                    done, failed = self._pump()
                    for task in done:
                        if task.generation == generation:
                            remaining[task.batch] -= 1
                            rows_of[task.batch] = task.rows
                        elif ahead is not None and task.generation == ahead.tag:
                            ahead.remaining[task.batch] -= 1
                            ahead.rows[task.batch] = task.rows
                    if ahead is not None and any(f[0].generation == ahead.tag for f in failed):
                        ahead.failed = True
                    failed = [f for f in failed if f[0].generation == generation]
                    if failed:
                        raise _failure(failed[0][1], epoch)
            if out is not None:
                yield out

    def _adopt(self, epoch: int, key: tuple[int, int], batches: Sequence[np.ndarray],
               first_batch: int, generation: int) -> _Ahead | None:
        """The batches made ahead for this run, now its own; or None, and then whatever
        was made ahead must finish before its slots are used again."""
        ahead, self._ahead = self._ahead, None
        for worker in list(self._resources.workers):
            # Died between the runs, with no pump to see it, idle or on work made ahead:
            # that is still nobody's work (dropped, no restart used), not this run's
            # crash once adopted or once this run gave the dead worker tasks.
            if worker.process.exitcode is not None and all(
                    ahead is not None and t.generation == ahead.tag
                    for t in worker.tasks.values()):
                self._handle_death(worker)
        if ahead is None:
            return None
        if self._dirty or ahead.tag in self._dropped or not ahead.matches(
                epoch, key, batches, first_batch):
            self._dirty = True  # drained before this run starts
            return None
        for task in self._tasks.values():
            if task.generation == ahead.tag:
                task.generation = generation
        self.adopted_batches += ahead.dispatched
        return ahead

    def _dispatch_ahead(self, ahead: _Ahead | None, following: Following,
                        free_slots: deque[int], generation: int) -> _Ahead:
        """Fill the free slots with the next batches of the run expected next."""
        if ahead is None:
            epoch, key, plan = following()
            ahead = _Ahead(epoch, (int(key[0]), int(key[1])), -1 - generation, plan)
        while ahead.dispatched < len(ahead.plan) and self._room(free_slots):
            batch = ahead.dispatched
            slot = free_slots.popleft()
            ahead.slot_of[batch] = slot
            ahead.remaining[batch] = self._dispatch(batch, ahead.plan[batch], slot, ahead.epoch,
                                                    ahead.key, ahead.tag, batch)
        return ahead

    def _room(self, free_slots: deque[int]) -> bool:
        """Whether the ring takes another batch: of the free slots, as many as the spare
        slots not lent stay out of it (the ring is ``prefetch`` slots of work)."""
        return len(free_slots) > self._lent.limit - len(self._lent.held)

    def _dispatch(
        self, batch: int, indices: np.ndarray, slot: int, epoch: int, key: tuple[int, int],
        generation: int, number: int,
    ) -> int:
        """Send one batch's chunks to the least-loaded workers; return the chunk count.
        ``batch`` is its place in its run, ``number`` in its epoch."""
        self._index_rows[slot, :len(indices)] = indices  # read by the workers from here
        # One chunk per worker, each of at least MIN_CHUNK samples: with many workers a
        # batch goes to some of them and the next batches in the ring to the others, so
        # the consumer's messages per batch stop growing with the pool. A batch
        # transform needs the whole batch, and so do samples that may become several or
        # none (where a sample's rows start depends on every sample before it): one
        # chunk, one worker.
        active = [w for w in self._resources.workers if not w.retiring]
        parts = (1 if self._transform.batch is not None or self._max_outputs is not None else
                 min(len(active), max(1, len(indices) // self._chunk())))
        # A worker the pool just grew by gets work once it has started (the others would
        # otherwise wait for its start-up); at the pool's start, every worker does.
        ready = [w for w in active if not w.joining] or active
        chunks = split_into_chunks(len(indices), parts)
        for start, stop in chunks:
            task = _Task(self._next_task_id, batch, slot, start, indices[start:stop], epoch, key,
                         generation, number=number)
            self._next_task_id += 1
            worker = min(ready, key=lambda w: (w.queued, w.worker_id))
            self._assign(worker, task)
        return len(chunks)

    def _chunk(self) -> int:
        """The fewest samples a task carries (module docstring)."""
        if self._busy_samples == 0 or self._busy_s <= 0:
            return MIN_CHUNK
        per_sample = self._busy_s / self._busy_samples
        return max(MIN_CHUNK, math.ceil(self.task_seconds / per_sample))

    def _assign(self, worker: _Worker, task: _Task) -> None:
        if not worker.tasks:
            worker.last_progress = time.monotonic()
        worker.tasks[task.task_id] = task
        worker.queued += len(task.indices)
        self._tasks[task.task_id] = task
        message: _worker.Probe | _worker.Task
        if task.batch == -1:
            message = _worker.Probe(task.task_id, *task.key,
                                    tuple(int(i) for i in task.indices))
        else:
            message = _worker.Task(task.task_id, task.epoch, *task.key, task.slot, task.row,
                                   len(task.indices), task.number)
        # A send to a dead worker fails; the task stays its own, and the pump, which sees
        # the death (sentinel, EOF) and first reads what the worker sent before it died,
        # hands its unfinished tasks on.
        self._send(worker, message)

    # -- waiting --------------------------------------------------------------------

    def _pump(self) -> tuple[list[_Task], list[tuple[_Task, _worker.Failed]]]:
        """Wait (bounded) for messages or deaths; return finished and failed tasks."""
        workers = self._resources.workers
        if not workers:
            raise LoaderError("the loader was closed while another thread was reading from it")
        readable, dead = self._waiter.wait(workers, _POLL_SECONDS)
        done: list[_Task] = []
        failed: list[tuple[_Task, _worker.Failed]] = []
        for worker in readable:
            # One message per worker and wait: a pipe with more is readable at once again.
            try:
                self._receive(worker, worker.conn.recv(), done, failed)
            except (EOFError, OSError):
                dead.append(worker)
        for worker in dict.fromkeys(dead):
            if worker in self._resources.workers:
                self._handle_death(worker, done=done, failed=failed)
            elif worker in self._resources.retired:
                self._resources.reap()
        self._retire_idle()
        self._check_started()
        if self._timeout is not None:
            now = time.monotonic()
            for worker in self._resources.workers:
                done_so_far = int(self._progress[worker.worker_id])
                if done_so_far != worker.samples_done:  # it finished a sample since
                    worker.samples_done = done_so_far
                    worker.last_progress = now
            for worker in list(self._resources.workers):
                # A worker still starting is judged by start_timeout, not timeout.
                if worker.ready and worker.tasks and now - worker.last_progress > self._timeout:
                    worker.process.kill()
                    worker.process.join(_STOP_GRACE_SECONDS)
                    self._handle_death(worker, hung=True, done=done, failed=failed)
        return done, failed

    def _check_started(self) -> None:
        """A worker that never reports ready (stuck loading the source or transform, or
        on a lock copied by fork) must not hang the loader."""
        now = time.monotonic()
        for worker in self._resources.workers:
            if not worker.ready and now - worker.started > self._start_timeout:
                self._shutdown()
                raise LoaderError(
                    f"worker {worker.worker_id} did not start within {self._start_timeout:g} s "
                    "(start_timeout): loading the source or the transform in the worker "
                    "blocked or is very slow. Check what they import or do when unpickled; "
                    "with start_method='fork', a lock held by another thread of this process "
                    "is a common cause (use the default start method). Raise start_timeout "
                    "if loading is merely slow."
                )

    def _receive(self, worker: _Worker, message: Any, done: list, failed: list) -> None:
        if isinstance(message, _worker.Ready):
            worker.ready = True
            worker.joining = False
            worker.last_progress = time.monotonic()  # timeout= counts from here
            return
        if isinstance(message, _worker.InitFailed):
            self._shutdown()
            hint = ("" if message.ours else " The source or transform failed to load in the "
                    "worker process (a module it needs may be missing there).")
            raise LoaderError(
                f"a worker could not start: {message.summary.rstrip('.')}.{hint}\n\n"
                f"Traceback in the worker:\n{message.traceback_text.rstrip()}"
            )
        task = self._tasks.pop(message.task_id, None)
        if task is None:  # a task of a pool that close() already cleared
            return
        del worker.tasks[task.task_id]
        worker.queued -= len(task.indices)
        worker.last_progress = time.monotonic()
        if isinstance(message, _worker.Layout):
            task.layout = (message.layout, message.sample_layout, message.max_outputs)
            done.append(task)
        elif isinstance(message, _worker.Done):
            task.rows = message.rows
            done.append(task)
            self._busy_s += message.busy_seconds
            self._busy_samples += len(task.indices)
            if self._stats is not None:
                self._stats.worker_busy(message.busy_seconds)
        else:
            failed.append((task, message))

    def _handle_death(self, worker: _Worker, *, hung: bool = False,
                      done: list | None = None, failed: list | None = None) -> None:
        """Replace a dead worker and give it the dead one's chunks, or raise WorkerCrashed.
        Given ``done`` and ``failed`` (the pump's), what it finished and sent before it
        died is read into them first: those chunks are not lost. (Without them it is
        left unread and its chunks are made again: nobody would count them done.)"""
        worker.process.join(_STOP_GRACE_SECONDS)
        exitcode = worker.process.exitcode
        if done is not None and failed is not None:
            try:
                while worker.conn.poll(0):
                    self._receive(worker, worker.conn.recv(), done, failed)
            except (EOFError, OSError):
                pass
        worker.conn.close()
        what = (
            f"made no progress for {self._timeout} s and was killed"
            if hung
            else describe_exitcode(exitcode)
        )
        if not worker.ready and not hung:
            what += " during start-up"
        lost = list(worker.tasks.values())
        ahead = [task for task in lost if _made_ahead(task)]
        for task in ahead:  # nobody's work yet: dropped, made again by its own run
            self._tasks.pop(task.task_id, None)
            self._dropped.add(task.generation)
        lost = [task for task in lost if not _made_ahead(task)]
        if not lost and (ahead or worker.ready):  # lost no run's work: not its crash
            # (a death at start-up is counted, or a worker that cannot start would be
            # started again forever)
            index = self._resources.workers.index(worker)
            if worker.retiring:  # it was leaving the pool anyway
                del self._resources.workers[index]
            else:
                self._resources.workers[index] = self._spawn(worker.worker_id)
            return
        self.crashes.append((worker.worker_id, exitcode))
        if self._restarts_used < self._max_restarts:
            self._restarts_used += 1
            replacement = self._spawn(worker.worker_id)
            replacement.retiring = worker.retiring  # it finishes the chunks, then stops
            index = self._resources.workers.index(worker)
            self._resources.workers[index] = replacement
            for task in lost:
                self._assign(replacement, task)
            return
        pid = worker.process.pid
        detail = ""
        if lost and lost[0].batch == -1:
            detail = " while making the first sample (to learn the batch layout)"
        elif lost:
            detail = f" while producing batch {lost[0].number} of epoch {lost[0].epoch}"
        self._shutdown()
        if self._max_restarts:
            advice = (
                f"all {self._max_restarts} restarts allowed by max_worker_restarts are used up"
            )
        else:
            advice = (
                "pass max_worker_restarts=N to replace crashed workers and recompute their "
                "samples"
            )
        raise WorkerCrashed(
            f"worker {worker.worker_id} (pid {pid}) {what}{detail}; {advice}. "
            f"Crashes so far (worker, exit code): {self.crashes}",
            exitcode=exitcode,
            worker_id=worker.worker_id,
            crashes=tuple(self.crashes),
        )

    def _drain(self) -> None:
        """Let the work of an abandoned epoch finish (or restart the pool if that fails).
        Work made ahead for a run that did not come gets ``_AHEAD_GRACE_SECONDS``; the
        workers still on it then are replaced (it may hang)."""
        deadline = time.monotonic() + _AHEAD_GRACE_SECONDS
        try:
            while self._tasks:
                if self._stopped:
                    raise LoaderError("the loader was closed")
                if time.monotonic() > deadline:
                    for worker in list(self._resources.workers):
                        if worker.tasks and all(_made_ahead(t) for t in worker.tasks.values()):
                            worker.process.kill()
                            worker.process.join(_STOP_GRACE_SECONDS)
                            self._handle_death(worker)
                self._pump()
        except LoaderError:
            self._shutdown()
            self._check_open()
        self._dirty = False
        self._dropped.clear()
