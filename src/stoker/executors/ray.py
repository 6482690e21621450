"""The Ray executor: the same plan, source and transform, run by Ray actors on the
cluster that ``ray.init()`` connected to (a local one is started if none is).

* **Data, once.** An in-memory source (``from_arrays``, or a split of one) is put in
  Ray's object store once per Ray session, and later loaders over the same arrays (the
  validation split, say) reuse it; each actor maps it zero-copy, read-only. A store
  (``stoker.store``) travels as its path and is memory-mapped on each node, so it must
  be on storage every node sees. Any other source is pickled into the object store once.
* **Work.** A Ray task makes several consecutive batches of the plan
  (``produce(key, indices, sizes)``; ``prefetch // (2 * workers)`` of them, as a task
  costs about a millisecond whatever it does) and goes to the actor with the fewest
  tasks queued; at most ``prefetch`` batches are in flight (backpressure; by default 8
  per actor within 256 MiB, at least 2 per actor) and batches are taken in plan order.
  A run's first tasks make 1, then 2 batches, so its first batch waits for one only;
  a task makes at most ``MAX_PER_TASK``.
* **Batches, by the shortest way.** An actor on the consumer's node writes its batch
  into a slot of the executor's landing block in shared memory (``Landing``) and
  replies with a few bytes, as a process worker does; an actor on another node (or one
  that cannot map the block) returns the arrays through the object store. Either way
  the consumer copies the batch out at once, so the slot or the object is free again
  and the consumer may keep or modify what it got. A slot serves one task at a time;
  when tasks are abandoned (an epoch left early), their slots are never used again: a
  running actor task is not interrupted, and may still write. The executor moves to a
  fresh landing block instead, and the old one goes when nothing maps it.
* **Failures.** Ray restarts a dead actor (``max_restarts``) and retries its tasks
  (``max_task_retries``); a batch depends only on (seed, epoch, indices), so a retried
  batch is the same bytes, and each batch is taken once. Every reply names the process
  that made it, so restarts are seen, recorded in ``crashes`` and counted against
  ``max_worker_restarts`` (a total, as with processes). An actor on the consumer's node
  counts its finished samples on the progress board (``Board``, shared memory, as
  process workers do): one that finishes none for ``timeout`` seconds is killed, and
  restarted, the same way. One on another node is judged by its replies, ``timeout``
  per batch of its tasks (a task replies once, with all its batches).
* **Abandoned work.** Tasks of an epoch left early are never cancelled in Ray (a
  cancelled actor task leaves a gap in the actor's ordered queue, and Ray held the next
  tasks 30 s for it): the board's issue moves on, and an actor skips the batches of an
  abandoned task it has not begun; one on another node makes them for nobody.
"""

from __future__ import annotations

import copy
import os
import time
import traceback
import warnings
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._fork import ProcessLock
from ..errors import LoaderError, WorkerCrashed
from ..layout import BatchLayout
from ..mixing import Combined
from ..shm import SharedBlock, map_shared
from ..sources import ArraySource, Subset, _ArrayFields
from ..stats import StatsRecorder
from ._batches import BatchArrays
from ._produce import Producer, SampleFailure, Transform
from ._worker import InitFailed, quiet_native_threads
from .failures import failure_record, rebuild_exception, transform_error
from .processes import RING_BYTES
from .protocol import Following

try:
    import ray
    import ray.exceptions
except ImportError as error:  # pragma: no cover - exercised in a subprocess test
    raise ModuleNotFoundError(
        "backend='ray' needs Ray, which is not installed here: pip install 'stoker[ray]' "
        "(on every node of the cluster)",
        name="ray",
    ) from error

__all__ = ["Landing", "ObjectStoreArrays", "RayExecutor", "cluster_cpus", "connect",
           "portable", "ray_prefetch"]

_POLL_SECONDS = 0.5
MAX_PER_TASK = 4  # batches: a quarter of a task's cost each; more delays the first and timeouts


def ray_prefetch(workers: int, batch_nbytes: int) -> int:
    """The batches in flight when ``prefetch`` is None: 8 per actor within
    ``RING_BYTES``, so that each task can make several (``prefetch // (2 * workers)``)
    and still leave each actor one task queued behind the running one. A Ray task costs
    about a millisecond; four batches per task make that a quarter."""
    return max(2, 2 * workers, min(8 * workers, RING_BYTES // max(batch_nbytes, 1)))


# -- the cluster --------------------------------------------------------------------


_connected_in: list[int] = []  # the process stoker saw connected to Ray
_live: weakref.WeakSet[RayExecutor] = weakref.WeakSet()
_kept: list[Any] = []  # in a forked child: the parent's Ray objects, never released


def _keep_the_parents() -> None:
    """In a child forked from a connected process: keep the copies of the parent's
    executors (actor handles, task references) and placed datasets for the child's
    life. Releasing one would tell Ray, through the copied connection, that the
    parent's actors and objects are out of scope, and Ray would kill and free them."""
    _kept.extend(_live)
    _kept.extend(_placed.values())


def connect() -> None:
    """Use the Ray cluster this process is connected to; connect (``RAY_ADDRESS``) or
    start a local one if there is none, as ``ray.init()`` does. Refused in a process
    forked from a connected one: the copied connection is the parent's, and using it
    from two processes gives each the other's objects."""
    if not ray.is_initialized():
        ray.init()
    elif _connected_in and _connected_in[0] != os.getpid():
        raise LoaderError(
            f"this process ({os.getpid()}) was forked (itself or an ancestor) from process "
            f"{_connected_in[0]}, which is connected to Ray: Ray's connection does not "
            "survive a fork (the two processes would take each other's objects), so "
            "backend='ray' cannot run here; use backend='processes' (or workers=0) in "
            "this process, or start it with multiprocessing's 'spawn' and connect it to "
            "Ray itself (and end this one with os._exit(): Ray's exit handlers, copied "
            "from the connected process, hang here)"
        )
    if not _connected_in and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_keep_the_parents)
    _connected_in[:] = [os.getpid()]


def cluster_cpus() -> int:
    """The CPUs of the whole cluster: the default number of workers."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def _session() -> tuple[str, str]:
    context = ray.get_runtime_context()
    return context.gcs_address, context.get_job_id()


# -- the data, once in the object store -------------------------------------------------


class ObjectStoreArrays(_ArrayFields):
    """The arrays of a ``from_arrays`` source, held in Ray's object store.

    Pickles as a reference: each worker maps the arrays on first use, zero-copy and
    read-only, so a node holds them once however many actors read them.
    """

    def __init__(self, kind: str, names: Any, length: int, ref: Any,
                 arrays: list[np.ndarray] | None = None) -> None:
        self._kind = kind
        self._names = names
        self._length = length
        self._ref = ref
        self._loaded = arrays

    @property
    def _arrays(self) -> list[np.ndarray]:  # type: ignore[override]
        if self._loaded is None:
            self._loaded = list(ray.get(self._ref))
        return self._loaded

    def __len__(self) -> int:
        return self._length

    def __reduce__(self):
        return (ObjectStoreArrays, (self._kind, self._names, self._length, self._ref))

    def __repr__(self) -> str:
        return f"<ObjectStoreArrays {self._length} samples in Ray's object store>"


_placed: weakref.WeakKeyDictionary[ArraySource, tuple[tuple[str, str], ObjectStoreArrays]] = (
    weakref.WeakKeyDictionary()
)
_placed_lock = ProcessLock()


def portable(source: Any) -> Any:
    """``source`` as Ray workers on any node can read it (see the module docstring)."""
    if isinstance(source, ArraySource):
        session = _session()
        with _placed_lock:
            placed = _placed.get(source)
            if placed is None or placed[0] != session:
                arrays = list(source._arrays)
                ref = ray.put(arrays)
                placed = (session, ObjectStoreArrays(source._kind, source._names, len(source),
                                                     ref, arrays))
                _placed[source] = placed
        return placed[1]
    if isinstance(source, Subset):
        return Subset(portable(source.base), source.indices)
    if isinstance(source, Combined):  # concat / mix: the sources inside travel the same way
        combined = copy.copy(source)
        combined.sources = [portable(inner) for inner in source.sources]
        return combined
    return source


# -- where a batch lands ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Landing:
    """Where an actor on node ``node_id`` writes its batch: ``offset`` bytes into the
    shared-memory block ``name``, room for ``rows`` samples of the batch layout."""

    name: str
    node_id: str
    offset: int
    rows: int


@dataclass(frozen=True, slots=True)
class Board:
    """The executor's progress board on node ``node_id``: shared memory of int64s, the
    first the current *issue* (bumped when tasks in flight are abandoned), then one
    count of finished samples per actor; ``index`` is this actor's. An actor that maps
    it counts its samples there (``timeout=`` is then about progress, as with
    processes) and skips the batches of a task whose issue is past."""

    name: str
    node_id: str
    index: int


class _Board:
    """The consumer's side of the board: ``workers`` sample counters and the issue."""

    def __init__(self, workers: int, node_id: str) -> None:
        self.node_id = node_id
        self.block = SharedBlock.create(8 * (1 + workers),
                                        purpose="progress of the Ray actors on this node")
        self.words = self.block.ndarray((1 + workers,), np.int64)  # zeros: fresh

    @property
    def issue(self) -> int:
        return int(self.words[0])

    def abandon(self) -> None:
        """The tasks in flight are abandoned: actors skip their batches not yet begun."""
        self.words[0] += 1

    def samples(self, worker_id: int) -> int:
        return int(self.words[1 + worker_id])

    def release(self) -> None:
        self.words = None  # type: ignore[assignment]
        self.block.release()


class _LandingSlots:
    """The executor's landing block on the consumer's node: ``count`` slots of ``rows``
    samples of ``layout``, each lent to one task at a time."""

    def __init__(self, layout: BatchLayout, rows: int, count: int, node_id: str) -> None:
        self.layout = layout
        self.rows = rows
        self.node_id = node_id
        self.count = count
        self.slot_nbytes = layout.batch_nbytes(rows)
        self.block = SharedBlock.create(self.slot_nbytes * count,
                                        purpose="batch slots of the Ray actors on this node")
        self._bytes = self.block.ndarray((self.block.size,), np.uint8)
        self._free = list(range(count - 1, -1, -1))

    def lend(self) -> Landing | None:
        """A free slot, or None (the batch then comes through the object store)."""
        if not self._free:
            return None
        return Landing(self.block.name, self.node_id, self._free.pop() * self.slot_nbytes,
                       self.rows)

    def views(self, landing: Landing) -> list[np.ndarray]:
        """The batch arrays over ``landing``'s slot."""
        start = landing.offset
        return self.layout.views(self._bytes[start:start + self.slot_nbytes], self.rows)

    def give_back(self, landing: Landing) -> None:
        """``landing``'s batch is copied out: its slot may be lent again."""
        if landing.name == self.block.name:
            self._free.append(landing.offset // self.slot_nbytes)

    def release(self) -> None:
        self._bytes = None  # type: ignore[assignment]
        self.block.release()


# -- the actor ------------------------------------------------------------------------


class _LoadFailed(Exception):
    """An actor could not load the source or transform; ``record`` says why, typed, so
    that the consumer tells stoker's own refusals (a store replaced) from a missing
    module."""

    def __init__(self, record: InitFailed) -> None:
        super().__init__(record.summary)
        self.record = record

    def __reduce__(self):
        return (_LoadFailed, (self.record,))


def _could_not_start(record: InitFailed) -> LoaderError:
    """The consumer's error for an actor that could not load the source or transform."""
    hint = ("" if record.ours else
            " The source or transform failed to load in the actor: the modules they need "
            "must be importable on every node (install them there, or pass "
            "ray.init(runtime_env={'py_modules': [...]}) or {'working_dir': ...}), and a "
            "store must be at the same path on every node.")
    return LoaderError(f"a Ray worker could not start: {record.summary.rstrip('.')}.{hint}"
                       f"\n\nTraceback in the worker:\n{record.traceback_text.rstrip()}")


class BatchActor:
    """One Ray worker: makes whole batches with the same ``Producer`` as every executor."""

    def __init__(self) -> None:
        quiet_native_threads()
        self._producer: Producer | None = None
        self._keys: dict[tuple[int, int], np.ndarray] = {}
        self._mapped: dict[str, np.ndarray] = {}  # the landing block, mapped here
        self._board: tuple[str, np.ndarray | None] | None = None  # (name, its int64s)
        self._where = (os.getpid(), ray.get_runtime_context().get_node_id(),
                       _started_at(os.getpid()))

    def _load(self, arguments: list[Any]) -> Producer:
        """The producer, made from ``arguments`` (the refs of the source and the transform)
        on first use: every call carries them, so an actor Ray restarted (which re-runs
        only ``__init__``) loads them again from its first retried task."""
        if self._producer is None:
            try:
                source, transform = ray.get(arguments)
                if transform.draws_from_torch():
                    import torch  # noqa: F401  seeded per sample from the first one on
                self._producer = Producer(source, transform, in_worker=True)
            except (Exception, SystemExit) as error:  # report anything, as workers do
                # Unpickling them raised: Ray wraps that error, text only, in its own.
                inner = getattr(error, "client_exc", None)
                if isinstance(inner, BaseException):
                    record = InitFailed.of(inner, error.traceback_str or traceback.format_exc())
                else:
                    record = InitFailed.of(error, traceback.format_exc())
                raise _LoadFailed(record) from None
        return self._producer

    def ready(self, arguments: list[Any], board: Board | None
              ) -> tuple[tuple[int, str, str | None], bool, InitFailed | None]:
        """Load the source and transform; where this actor runs: (pid, Ray node id, the
        process's start time), whether it counts its progress on ``board``, and why it
        could not load them (None when it did)."""
        try:
            producer = self._load(arguments)
        except _LoadFailed as failed:
            return self._where, False, failed.record
        return self._where, self._count_on(board, producer) is not None, None

    def _count_on(self, board: Board | None, producer: Producer) -> np.ndarray | None:
        """The board's int64s, with ``producer`` counting its samples there, or None where
        this actor cannot map it (another node, a container with its own /dev/shm)."""
        if board is None or board.node_id != self._where[1]:
            producer.progress = None
            return None
        if self._board is None or self._board[0] != board.name:
            try:
                words = map_shared(board.name).view(np.int64)
            except OSError:
                words = None
            self._board = (board.name, words)
        words = self._board[1]
        producer.progress = None if words is None else (words, 1 + board.index)
        return words

    def probe(self, arguments: list[Any], key0: int, key1: int,
              indices: tuple[int, ...], board: Board | None) -> tuple:
        """``(where, True, (batch layout, sample layout, max_outputs))`` of the first of
        samples ``indices`` that the transform keeps, or ``(where, False, failure)``: the
        batch layout is learnt here, never in the consumer."""
        key = np.array([key0, key1], dtype=np.uint64)
        try:
            producer = self._load(arguments)
            self._count_on(board, producer)
            layout = producer.layout_of(key, indices)
            return (self._where, True, (layout, producer.sample_layout, producer.max_outputs))
        except SampleFailure as failure:
            return (self._where, False, failure_record(failure))

    def _landing_views(self, landing: Landing | None, layout: BatchLayout,
                       rows: int) -> list[np.ndarray] | None:
        """The batch arrays over ``landing``'s slot, or None where this actor cannot
        write there: no landing, another node, too few rows, or a block it cannot map
        (a container with its own /dev/shm)."""
        if landing is None or landing.node_id != self._where[1] or rows > landing.rows:
            return None
        buffer = self._mapped.get(landing.name)
        if buffer is None:
            try:
                buffer = map_shared(landing.name)
            except OSError:
                return None
            # Only the newest block: the executor moves to a new one and lets the old go.
            self._mapped = {landing.name: buffer}
        nbytes = layout.batch_nbytes(landing.rows)
        if landing.offset + nbytes > len(buffer):
            return None
        return layout.views(buffer[landing.offset:landing.offset + nbytes], landing.rows)

    def produce(self, arguments: list[Any], key0: int, key1: int, indices: np.ndarray,
                sizes: tuple[int, ...], layouts: tuple[BatchLayout, BatchLayout, int | None],
                number: int, landings: tuple[Landing | None, ...], board: Board | None,
                issue: int) -> tuple:
        """Make the consecutive batches ``number``, ``number + 1``, ... whose indices are
        ``indices`` cut into ``sizes``; batch ``j`` goes into ``landings[j]``'s slot where
        this actor can write there. Replies ``(where, results)``: per batch ``(True,
        (busy_seconds, arrays, rows))`` (``arrays`` None when written into the slot), up
        to the first sample that failed, ``(False, failure)``: the transform's errors are
        the consumer's to raise, not Ray's to retry, or up to the first batch begun after
        the board's issue moved past ``issue`` (the consumer abandoned the task: it is
        never cancelled, as Ray's ordered actor queue then waits 30 s for the gap).
        ``where`` (pid, node) tells the consumer when Ray restarted the actor."""
        key = self._keys.get((key0, key1))
        if key is None:
            self._keys.clear()
            key = self._keys[(key0, key1)] = np.array([key0, key1], dtype=np.uint64)
        # the batch's layout, the samples' (batch_transform=), the most samples one makes
        layout, sample_layout, max_outputs = layouts
        results: list[tuple] = []
        start = 0
        words = None
        for j, size in enumerate(sizes):
            started = time.perf_counter()
            batch_indices = indices[start:start + size]
            start += size
            try:
                producer = self._load(arguments)
                if j == 0:
                    words = self._count_on(board, producer)
                if words is not None and words[0] != issue:
                    break  # abandoned: nobody takes this batch
                producer.sample_layout = sample_layout
                producer.max_outputs = max_outputs
                capacity = producer.capacity(size)
                landed = self._landing_views(landings[j], layout, capacity)
                out = layout.empty(capacity) if landed is None else landed
                rows = producer.make_batch(layout, key, number + j, batch_indices, out)
            except SampleFailure as failure:
                results.append((False, failure_record(failure)))
                break
            if landed is not None:
                out = None
            elif rows != len(out[0]):
                out = [array[:rows] for array in out]
            results.append((True, (time.perf_counter() - started, out, rows)))
        return (self._where, results)


_RemoteBatchActor = ray.remote(BatchActor)


def _started_at(pid: int) -> str | None:
    """When process ``pid`` started (its /proc start time), to tell it from a later
    process that reuses the pid; None where that cannot be read."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _kill(pid: int, started_at: str | None) -> None:
    """SIGKILL a hung actor's process, on its node. ``ray.kill`` asks the actor itself
    to exit, which a stopped or deadlocked process never does; a killed one is what Ray
    knows how to recover from (restart, retry its tasks). Only if ``pid`` is still the
    process that reported it: after a restart the pid may belong to anything."""
    import signal

    if _started_at(pid) != started_at:
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


_remote_kill = ray.remote(num_cpus=0, max_retries=0)(_kill)


# -- the executor -----------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Actor:
    worker_id: int
    handle: Any
    pid: int | None = None
    node_id: str | None = None
    started_at: str | None = None  # tells this pid's process from a later one
    queued: int = 0  # its tasks not yet replied, abandoned ones included
    last_progress: float = field(default_factory=time.monotonic)  # its last sign of life
    on_board: bool = False  # it counts its samples on the board (timeout= per sample)
    samples: int = 0  # its count on the board when last looked at
    abandoned: list[_InFlight] = field(default_factory=list)  # tasks nobody takes


@dataclass(slots=True, eq=False)
class _InFlight:
    """One task: ``count`` consecutive batches of the run from ``first`` on."""

    ref: Any
    actor: _Actor
    first: int = 0
    count: int = 1
    landings: tuple[Landing | None, ...] = ()
    since: float = field(default_factory=time.monotonic)
    results: list[tuple] | None = None  # its reply, once fetched
    ready_behind: int = 0  # batches of later tasks ready when its reply was fetched


class RayExecutor:
    """Runs the plan on ``workers`` Ray actors; see the module docstring for how."""

    def __init__(
        self,
        *,
        source: Any,
        transform: Transform,
        probe: tuple[tuple[int, ...], np.ndarray],
        workers: int,
        prefetch: int | None,
        max_worker_restarts: int = 0,
        timeout: float | None = None,
        start_timeout: float = 120.0,
        stats: StatsRecorder | None = None,
    ) -> None:
        self.workers = workers
        self._source = source
        self._transform = transform
        self._probe = probe
        self._layout: BatchLayout | None = None
        # + the samples' layout, and the most samples one may become
        self._layouts: tuple[BatchLayout, BatchLayout, int | None] | None = None
        self._arrays: BatchArrays | None = None  # the memory of delivered batches
        self._batch_rows = 0
        self._prefetch_option = prefetch  # None: sized once the batch's bytes are known
        self._prefetch = max(2, 2 * workers) if prefetch is None else prefetch
        self._max_restarts = max_worker_restarts
        self._timeout = timeout
        self._start_timeout = start_timeout
        self._stats = stats
        self._lock = ProcessLock(reentrant=True)  # fresh in a forked child
        self._closed = False
        self._stopped = False  # close() was called by the loader: nothing runs again
        self._actors: list[_Actor] = []
        self._arguments: list[Any] = []
        self._in_flight: dict[int, _InFlight] = {}  # each batch of the run: its task
        self._generation = 0
        self._restarts_used = 0
        self.crashes: list[tuple[int, int | None]] = []
        self._node_id: str | None = None  # the consumer's Ray node
        self._landing: _LandingSlots | None = None
        self._board: _Board | None = None
        self.landed = 0  # batches that came through the landing block
        self.shipped = 0  # batches that came through the object store
        self._pid = os.getpid()  # whose actors, board and slots they are (not a fork's)
        _live.add(self)

    # -- life cycle ---------------------------------------------------------------

    @property
    def pids(self) -> list[int]:
        return [actor.pid for actor in self._actors if actor.pid is not None]

    def start(self) -> None:
        """Create the actors and wait until each has loaded the source and transform."""
        if self._actors:
            return
        connect()
        self._node_id = ray.get_runtime_context().get_node_id()
        if self._board is None:
            try:
                self._board = _Board(self.workers, self._node_id)
            except OSError:  # no room in /dev/shm: progress is judged per task
                self._board = None
        available = cluster_cpus()
        if self.workers > available:
            warnings.warn(
                f"workers={self.workers} but the Ray cluster has {available} CPUs: the other "
                "actors wait for CPUs to appear (an autoscaler, or nodes joining)",
                stacklevel=4,
            )
        # Held for the executor's life, and handed to the actors with every call, not to
        # their constructor: Ray logs an error-level line for each actor with max_restarts
        # > 0 whose constructor takes objects from the store ("if they go out of scope,
        # the restart will fail"), and a restarted actor reloads them from its next call.
        self._arguments = [ray.put(portable(self._source)), ray.put(self._transform)]
        options = {
            "num_cpus": 1,
            "max_restarts": self._max_restarts,
            "max_task_retries": -1,
        }
        self._actors = [
            _Actor(worker_id, _RemoteBatchActor.options(**options).remote())
            for worker_id in range(self.workers)
        ]
        ready = {actor.handle.ready.remote(self._arguments, self._board_for(actor)): actor
                 for actor in self._actors}
        waiting = list(ready)
        deadline = time.monotonic() + self._start_timeout
        while waiting and time.monotonic() < deadline:
            if self._stopped:  # close() from another thread: do not wait out the start
                self._shutdown()
                raise LoaderError("the loader was closed while its workers were starting")
            done, waiting = ray.wait(
                waiting, num_returns=len(waiting),
                timeout=max(0.0, min(_POLL_SECONDS, deadline - time.monotonic())))
            for ref in done:
                try:
                    where, ready[ref].on_board, failed = ray.get(ref)
                except ray.exceptions.RayError as error:  # the actor itself did not start
                    self._shutdown()
                    raise LoaderError(
                        f"a Ray worker could not start: {_first_line(error)}. The actor "
                        "failed before it could load the source and transform: stoker must "
                        "be importable on every node, in the driver's version (install it "
                        "there, or pass ray.init(runtime_env={'py_modules': [...]}))."
                        f"\n\n{error}"
                    ) from None
                if failed is not None:
                    self._shutdown()
                    raise _could_not_start(failed)
                self._note_where(ready[ref], where)
        if waiting:
            self._shutdown()
            raise LoaderError(
                f"{len(waiting)} of {self.workers} Ray workers did not start within "
                f"{self._start_timeout:g} s (start_timeout); the cluster has {available} CPUs "
                "and each worker takes one. Lower workers=, add nodes, or raise start_timeout."
            )

    def _board_for(self, actor: _Actor) -> Board | None:
        if self._board is None or self._node_id is None:
            return None
        return Board(self._board.block.name, self._node_id, actor.worker_id)

    @property
    def layout(self) -> BatchLayout:
        """The batch layout, learnt from actor 0 (starting the actors if needed)."""
        with self._lock:
            self._check_open()
            self._closed = False
            self.start()
            if self._layout is None:
                self._layouts = self._learn_layout()
                self._layout = self._layouts[0]
            return self._layout

    def _check_open(self) -> None:
        if self._stopped:
            raise LoaderError("the loader was closed while another thread was reading from it")

    def _learn_layout(self) -> tuple[BatchLayout, BatchLayout, int | None]:
        indices, key = self._probe
        actor = self._actors[0]
        flight = _InFlight(actor.handle.probe.remote(
            self._arguments, int(key[0]), int(key[1]), indices, self._board_for(actor)), actor)
        while True:
            if self._closed:
                raise LoaderError("the loader was closed while its workers were starting")
            ready, _ = ray.wait([flight.ref], timeout=_POLL_SECONDS)
            if not ready:
                self._check_progress(flight, -1, 0)
                continue
            ok, payload = self._reply(flight, "make the first sample", "making the first "
                                      "sample")
            if not ok:
                index, stage, data, summary, traceback_text = payload
                error = rebuild_exception(data, summary, traceback_text)
                raise transform_error(index, stage, error, traceback_text, 0) from error
            return payload

    def close(self) -> None:
        """Kill the actors; an epoch running in another thread ends with a LoaderError.
        The cluster itself is left running (it may be the user's, and is shut down at
        exit if stoker started it)."""
        self._stopped = True
        self._shutdown()

    def _shutdown(self) -> None:
        """Kill the actors (after a crash too: a later run may start new ones, unless
        close() was called). In a process forked from the owner, nothing: what there is
        to stop or abandon is the owner's, still at work."""
        self._closed = True
        if os.getpid() != self._pid:
            return
        with self._lock:
            actors, self._actors = self._actors, []
            self._arguments = []
            self._cancel_in_flight()
            for actor in actors:
                try:
                    ray.kill(actor.handle)
                except Exception:  # the actor or the whole cluster is gone already
                    pass
            if self._landing is not None:  # the actors' own mappings outlive the name
                self._landing.release()
                self._landing = None
            if self._board is not None:
                self._board.release()
                self._board = None
            self._closed = True  # again: a run that reset it meanwhile must still end

    def _cancel_in_flight(self) -> None:
        """Abandon the tasks in flight. None is cancelled in Ray (a cancelled actor task
        leaves a gap in the actor's ordered queue, which then stalls the next tasks for
        30 s): an actor on the board skips the batches of an abandoned task it has not
        begun, one on another node makes them for nobody. A task still running may
        write into its landing slot: if any had one, the next batches land in a fresh
        block."""
        landed = False
        tasks = {id(flight): flight for flight in self._in_flight.values()}
        for batch, flight in self._in_flight.items():
            landing = flight.landings[batch - flight.first]
            if flight.results is not None:  # replied, so it writes no more: the slot is free
                if landing is not None and self._landing is not None:
                    self._landing.give_back(landing)
            else:
                landed = landed or landing is not None
        for flight in tasks.values():
            if flight.results is None:
                flight.actor.abandoned.append(flight)  # still queued until it replies
            else:
                flight.actor.queued -= 1  # a task partly taken: its actor is free of it
        self._in_flight.clear()
        if tasks and self._board is not None:
            self._board.abandon()
        if landed and self._landing is not None:
            self._landing.release()
            self._landing = None

    def _look_at(self, actor: _Actor, now: float) -> None:
        """Signs of life of ``actor`` since the last look: samples counted on the board,
        abandoned tasks that replied."""
        if actor.on_board and self._board is not None:
            samples = self._board.samples(actor.worker_id)
            if samples != actor.samples:
                actor.samples = samples
                actor.last_progress = max(actor.last_progress, now)
        if actor.abandoned:
            refs = [flight.ref for flight in actor.abandoned]
            done, _ = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
            if done:
                done_refs = set(done)
                actor.queued -= len(done)
                actor.abandoned = [f for f in actor.abandoned if f.ref not in done_refs]
                actor.last_progress = max(actor.last_progress, now)

    def _lend(self, actor: _Actor, layouts: tuple[BatchLayout, BatchLayout, int | None]
              ) -> Landing | None:
        """A landing slot for a batch of ``actor``'s, if it runs on the consumer's node."""
        if actor.node_id is None or actor.node_id != self._node_id or not self._batch_rows:
            return None
        if self._landing is not None and self._landing.count < self._prefetch:
            self._landing.release()  # a deeper run (prefetch sized by bytes): a new block
            self._landing = None
        if self._landing is None or self._landing.rows < self._batch_rows:
            if self._landing is not None:
                self._landing.release()
            try:
                self._landing = _LandingSlots(layouts[0], self._batch_rows, self._prefetch,
                                              self._node_id)
            except OSError:  # no room in /dev/shm: the object store, as for other nodes
                self._landing = None
                return None
        return self._landing.lend()

    # -- one epoch ----------------------------------------------------------------

    def run(
        self, epoch: int, key: np.ndarray, batches: Sequence[np.ndarray],
        following: Following | None = None, first_batch: int = 0,
    ) -> Iterator[list[np.ndarray]]:
        """Yield the batches of ``batches`` (index arrays; the first is batch
        ``first_batch`` of the epoch) in order, as fresh arrays.
        Starting a run ends the one before it: its batches in flight are cancelled, and
        it raises LoaderError if resumed. (``following`` is not used: the next epoch's
        first tasks start on time with ``prefetch`` batches in flight.)"""
        with self._lock:
            self._generation += 1
            generation = self._generation
            self._check_open()
            self._cancel_in_flight()  # an abandoned epoch's work
            self._closed = False
            self.start()
            if self._layouts is None:
                self._layouts = self._learn_layout()
                self._layout = self._layouts[0]
            layouts = self._layouts
        key0, key1 = int(key[0]), int(key[1])
        if batches:  # the first batch of a run is a full one (only the last is short)
            self._batch_rows = max(self._batch_rows, len(batches[0]) * (layouts[2] or 1))
        workers = max(1, len(self._actors))
        if self._prefetch_option is None and self._batch_rows:
            self._prefetch = ray_prefetch(workers, layouts[0].batch_nbytes(self._batch_rows))
        per_task = min(MAX_PER_TASK, max(1, self._prefetch // (2 * workers)))
        next_submit = next_batch = tasks = 0
        try:
            while next_batch < len(batches):
                out = None
                with self._lock:  # released at every yield and after every bounded wait
                    if self._closed or self._stopped or not self._actors:
                        raise LoaderError(
                            "the loader was closed while another thread was reading from it"
                        )
                    if self._generation != generation:
                        raise LoaderError(
                            "a newer iteration of this loader started, which ended this one"
                        )
                    while next_submit < len(batches):
                        # 1, 2, 4 ...: the run's first batch waits for one batch only
                        count = min(per_task, 2 ** min(tasks, 2), len(batches) - next_submit)
                        if next_submit - next_batch + count > self._prefetch:
                            break
                        self._submit(batches[next_submit:next_submit + count], next_submit,
                                     first_batch, key0, key1, layouts)
                        next_submit += count
                        tasks += 1
                    flight = self._in_flight[next_batch]
                    ready = flight.results is not None or ray.wait(
                        [flight.ref], timeout=_POLL_SECONDS, fetch_local=True)[0]
                    if ready:
                        out = self._take(next_batch, epoch, first_batch)
                        next_batch += 1
                    else:
                        self._check_progress(flight, first_batch + next_batch, epoch,
                                             flight.first + flight.count - next_batch)
                if out is not None:
                    yield out
        finally:
            if os.getpid() == self._pid:  # a forked child's copy abandons nothing
                with self._lock:
                    if self._generation == generation:  # never a newer run's batches
                        self._cancel_in_flight()

    def _submit(self, batches: Sequence[np.ndarray], first: int, first_batch: int,
                key0: int, key1: int,
                layouts: tuple[BatchLayout, BatchLayout, int | None]) -> None:
        """One task: the consecutive ``batches`` of the run from ``first`` on, to the
        actor with the fewest tasks queued."""
        now = time.monotonic()
        for each in self._actors:
            if each.abandoned:
                self._look_at(each, now)
        actor = min(self._actors, key=lambda a: (a.queued, a.worker_id))
        landings = tuple(self._lend(actor, layouts) for _ in batches)
        indices = batches[0] if len(batches) == 1 else np.concatenate(batches)
        ref = actor.handle.produce.remote(
            self._arguments, key0, key1, indices, tuple(len(b) for b in batches), layouts,
            first_batch + first, landings, self._board_for(actor),
            0 if self._board is None else self._board.issue)
        flight = _InFlight(ref, actor, first, len(batches), landings)
        for batch in range(first, first + len(batches)):
            self._in_flight[batch] = flight
        actor.queued += 1

    def _take(self, batch: int, epoch: int, first_batch: int) -> list[np.ndarray]:
        """Batch ``batch`` of the run (from batch ``first_batch`` of its epoch), its
        task's reply fetched the first time."""
        flight = self._in_flight.pop(batch)
        number = first_batch + batch  # in the epoch: what messages name
        position = batch - flight.first
        if position == flight.count - 1:  # the task's last batch: its actor is free of it
            flight.actor.queued -= 1
        try:
            if flight.results is None:
                if self._stats is not None:  # one look at the others per task: ~50 µs
                    flight.ready_behind = self._batches_ready(flight) - flight.count
                head = first_batch + flight.first  # the task's batches, in the epoch
                flight.results = self._fetch(flight, head, epoch, head + flight.count - 1)
            if self._stats is not None:  # this batch and its task's later ones are ready
                self._stats.queue(flight.count - position + flight.ready_behind)
            return self._receive(flight, position, number, epoch)
        finally:  # its task has ended, whatever it replied: the slot may be lent again
            landing = flight.landings[position]
            if landing is not None and self._landing is not None:
                self._landing.give_back(landing)

    def _batches_ready(self, head: _InFlight) -> int:
        """The batches in flight whose tasks have replied (``head``'s included)."""
        remaining: dict[int, list] = {}
        for flight in self._in_flight.values():
            remaining.setdefault(id(flight), [flight, 0])[1] += 1
        pending = [flight.ref for flight, _ in remaining.values()
                   if flight.results is None and flight is not head]
        done, _ = ray.wait(pending, num_returns=len(pending), timeout=0, fetch_local=False)
        done_refs = set(done)
        return head.count + sum(count for flight, count in remaining.values()
                                if flight is not head and (flight.results is not None
                                                           or flight.ref in done_refs))

    def _fetch(self, flight: _InFlight, batch: int, epoch: int, last: int) -> list[tuple]:
        """The reply to ``flight``'s task (batches ``batch`` to ``last`` of the epoch): a
        result per batch, up to a failure."""
        what = (f"batch {batch} of epoch {epoch}" if last == batch
                else f"batches {batch}-{last} of epoch {epoch}")
        (results,) = self._reply(flight, f"produce {what}", f"producing {what}")
        return results

    def _reply(self, flight: _InFlight, do: str, doing: str) -> list[Any]:
        """What ``flight``'s (finished) task returned after where its actor runs (noted,
        with the sign of life). Its actor's death is a crash, Ray giving up the end of
        the loader; ``do``/``doing`` say what the task was for in the error."""
        try:
            where, *reply = ray.get(flight.ref)
        except ray.exceptions.RayActorError as error:
            self._record_crash(flight.actor, f"died while {doing}: {_first_line(error)}",
                               final=True, cause=error)
            raise  # not reached: a final crash raises
        except ray.exceptions.RayError as error:
            self._shutdown()
            if isinstance(getattr(error, "cause", None), _LoadFailed):  # a restarted actor
                raise _could_not_start(error.cause.record) from None
            raise LoaderError(f"Ray could not {do}: {error}") from error
        self._note_where(flight.actor, where)
        flight.actor.last_progress = time.monotonic()
        return reply

    def _receive(self, flight: _InFlight, position: int, batch: int, epoch: int
                 ) -> list[np.ndarray]:
        """Batch ``position`` of ``flight``'s reply, copied out of the landing slot or
        the object store (either is free again at once, and the consumer may write to
        what it got), or the error it ended in."""
        if position >= len(flight.results):
            raise LoaderError(f"the task of batch {batch} of epoch {epoch} replied "
                              f"{len(flight.results)} of {flight.count} batches (a bug in "
                              "stoker)")
        ok, payload = flight.results[position]
        if not ok:
            index, stage, data, summary, traceback_text = payload
            error = rebuild_exception(data, summary, traceback_text)
            raise transform_error(index, stage, error, traceback_text, epoch) from error
        busy, arrays, count = payload
        if self._stats is not None:
            self._stats.worker_busy(busy)
        if self._arrays is None or self._arrays.rows < count:
            self._arrays = BatchArrays(self._layout, max(count, self._batch_rows))
        if arrays is not None:
            self.shipped += 1
            return self._arrays.copy(list(arrays), count)
        landing, slots = flight.landings[position], self._landing
        if landing is None or slots is None or landing.name != slots.block.name:
            raise LoaderError(f"batch {batch} of epoch {epoch} was written into a landing "
                              "slot this executor no longer has (a bug in stoker)")
        self.landed += 1
        return self._arrays.copy(slots.views(landing), count)

    # -- failures -------------------------------------------------------------------

    def _note_where(self, actor: _Actor, where: tuple[int, str, str | None]) -> None:
        """A reply from another process than before: Ray restarted the actor."""
        known = (actor.pid, actor.node_id, actor.started_at)
        if actor.pid is not None and tuple(where) != known:
            self._record_crash(actor, "was restarted by Ray")
        actor.pid, actor.node_id, actor.started_at = where

    def _record_crash(self, actor: _Actor, what: str, *, final: bool = False,
                      cause: BaseException | None = None) -> None:
        """Record a crash of ``actor``. Past the restarts allowed, or when Ray gave up on
        the actor (``final``), close and raise WorkerCrashed saying ``what`` happened."""
        self.crashes.append((actor.worker_id, None))
        self._restarts_used += 1
        if final or self._restarts_used > self._max_restarts:
            self._shutdown()
            raise WorkerCrashed(
                f"Ray worker {actor.worker_id} (pid {actor.pid}) {what}; "
                f"{_restart_advice(self._max_restarts)}. "
                f"Crashes so far (worker, exit code): {self.crashes}",
                exitcode=None, worker_id=actor.worker_id, crashes=tuple(self.crashes),
            ) from cause

    def _check_progress(self, flight: _InFlight, batch: int, epoch: int,
                        left: int = 1) -> None:
        """The batch at the head of the plan is in the oldest task taken of its actor.
        An actor on the board hangs when it has finished no sample for ``timeout``
        seconds since the task was sent or its last sign of life, as a process worker;
        one on another node when its tasks have not replied within ``timeout`` per batch
        of them (its abandoned ones ahead of ``flight`` included). Kill it, and Ray
        restarts it and retries its tasks (or the crash is final). ``batch`` is the
        head's number in the epoch, ``left`` the batches of its task from it on."""
        if self._timeout is None:
            return
        actor = flight.actor
        now = time.monotonic()
        self._look_at(actor, now)
        waiting = now - max(flight.since, actor.last_progress)
        batches = 1 if actor.on_board else flight.count + sum(
            f.count for f in actor.abandoned)
        limit = self._timeout * batches
        if waiting <= limit:
            return
        what = ("the first sample" if batch == -1 else f"batch {batch} of epoch {epoch}"
                if left == 1 else f"batches {batch}-{batch + left - 1} of epoch {epoch}")
        detail = "" if batches == 1 else (
            f" (timeout={self._timeout:g} s for each of the {batches} batches of its tasks:"
            " on another node than the consumer, an actor's progress is seen by its replies)")
        self._record_crash(actor, f"made no progress for {limit:g} s and was killed while "
                                  f"making {what}{detail}")
        if actor.pid is not None and actor.node_id is not None:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            on_its_node = NodeAffinitySchedulingStrategy(actor.node_id, soft=False)
            _remote_kill.options(scheduling_strategy=on_its_node).remote(actor.pid,
                                                                         actor.started_at)
        else:
            ray.kill(actor.handle, no_restart=False)
        actor.pid = None  # the restart it causes is counted here, not again on its reply
        # Restarting takes a new process, imports and the source: start_timeout's time.
        actor.last_progress = time.monotonic() + self._start_timeout


def _restart_advice(max_restarts: int) -> str:
    if max_restarts:
        return f"all {max_restarts} restarts allowed by max_worker_restarts are used up"
    return ("pass max_worker_restarts=N to have Ray restart crashed workers and recompute "
            "their batches")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0].rstrip(".") if text else type(error).__name__
