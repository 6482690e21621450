"""The worker loop, and the messages it exchanges with the consumer.

State diagram of one worker::

    start ──> INIT ──(spec loaded)──> send Ready ──> IDLE
                │                                     │ recv Probe / Attach / Task
                └─(error)──> send InitFailed ──> exit v
    IDLE <── send Layout / Done / Failed(index, error, traceback) ── WORKING
      │ recv Stop, or the pipe closes, or the parent dies
      v
     exit

The batch layout is learnt here, never in the consumer: a Probe asks one worker to make
the first sample and answer with its ``BatchLayout`` (or the failure), under the same
crash detection and timeouts as any task. The consumer then creates the batch slots and
sends Attach (the layout and the slots) to every worker, and to every replacement first
thing. A Task names a batch slot, a row offset and the sample indices to produce; the
worker writes the samples straight into the slot's shared memory and answers with one
small message. Samples never travel through the pipe. With a batch transform, or samples
that may become several or none (``stoker.Many``), a Task is a whole batch: the worker
makes its samples from row 0 of the slot (or in its own memory when the batch transform
changes the fields), runs the batch transform, writes its output into the slot and
answers with the rows it made. The worker ignores SIGINT (Ctrl-C is the consumer's to
handle) and a watchdog thread exits as soon as the parent is gone.
"""

from __future__ import annotations

import importlib
import os
import pickle
import select
import signal
import threading
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

import numpy as np

from ..errors import describe
from ..layout import BatchLayout
from ..shm import SharedBlock
from ._produce import Producer, SampleFailure, Transform
from .failures import failure_record

__all__ = [
    "Attach",
    "Done",
    "Failed",
    "InitFailed",
    "Layout",
    "Probe",
    "Ready",
    "Stop",
    "Task",
    "WorkerSpec",
    "quiet_native_threads",
    "run",
]

_POLL_SECONDS = 1.0
_WATCH_S = 0.5  # how often a worker without a pidfd looks whether its consumer lives


# -- consumer -> worker ----------------------------------------------------------------
# Every message is small (no samples, no index arrays), so no send can block on a full
# pipe: a task's indices are ``count`` entries from ``row`` of its slot's index row.


class Task(NamedTuple):
    """Produce samples into rows ``row:row + count`` of batch slot ``slot``. With a batch
    transform, or samples that may become several or none (``max_outputs``), a task is
    a whole batch, ``number`` in its epoch (which keys a batch transform's RNG), and its
    rows start at row 0 of the slot, as many as its samples made."""

    task_id: int
    epoch: int
    key0: int
    key1: int
    slot: int
    row: int
    count: int
    number: int = 0


class Probe(NamedTuple):
    """Make the first of samples ``indices`` that the transform keeps and answer with its
    ``BatchLayout`` (``Layout``)."""

    task_id: int
    key0: int
    key1: int
    indices: tuple[int, ...]


class Attach(NamedTuple):
    """The batch layout, the ring's slots and the index block, sent once per worker;
    the samples' layout (the batch transform's input, else the batch layout); the rows
    of a slot and the most samples one sample may become (None: one)."""

    layout: BatchLayout
    slots: tuple[SharedBlock, ...]
    index_block: SharedBlock
    sample_layout: BatchLayout
    rows: int
    max_outputs: int | None


class Stop(NamedTuple):
    """Exit now."""


# -- worker -> consumer ----------------------------------------------------------------


class Ready(NamedTuple):
    """Loaded the source and transform; ``timeout=`` counts from here."""

    pid: int


class Done(NamedTuple):
    """A task finished, after ``busy_seconds`` of work; a whole-batch task made ``rows``
    rows (-1: as many as it had samples)."""

    task_id: int
    busy_seconds: float
    rows: int = -1


class Layout(NamedTuple):
    """A probe's answer: the batch layout, and the samples' (they differ when a batch
    transform changes the batch); the most samples one sample may become (None: one)."""

    task_id: int
    layout: BatchLayout
    sample_layout: BatchLayout
    max_outputs: int | None


class Failed(NamedTuple):
    """A task (or probe) failed on sample ``index`` (``failures.failure_record``)."""

    task_id: int
    index: int
    stage: str
    exception_bytes: bytes | None
    summary: str
    traceback_text: str


class InitFailed(NamedTuple):
    """Loading the source or transform failed; the worker exits."""

    summary: str
    traceback_text: str
    ours: bool = False  # stoker's own error (a store replaced, ...), which names its fix

    @classmethod
    def of(cls, error: BaseException, traceback_text: str) -> InitFailed:
        """The record of ``error``: stoker's own errors name their fix, and the consumer
        adds no guess about a missing module to them."""
        return cls(describe(error), traceback_text, type(error).__module__.startswith("stoker."))


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What a worker needs to start, serialized once with cloudpickle; the layout and
    the batch slots come later (``Attach``)."""

    source: Any
    transform: Transform
    batch_size: int
    preload: tuple[str, ...] = ()  # modules whose global RNG a legacy transform may use
    progress: SharedBlock | None = None  # one sample counter per worker id


def _exit_when_parent_dies(consumer: int | None) -> None:
    """Exit as soon as the consumer (process ``consumer``) ends, however it ends. Watched
    through a pidfd where Linux has one: the pipe multiprocessing gives a child to see
    its parent end stays open while any process forked from the consumer holds a copy
    of it (``_fork.py``), and a killed consumer's workers then lived on."""
    import multiprocessing

    parent = multiprocessing.parent_process()
    watched: int | None = None
    if consumer is not None and hasattr(os, "pidfd_open"):
        try:
            watched = os.pidfd_open(consumer)
        except ProcessLookupError:  # gone already
            os._exit(0)
        except OSError:  # an older kernel: polled below
            watched = None
    if watched is None and parent is None and consumer is None:
        return

    def watch() -> None:
        if watched is not None:  # readable once the process has ended
            poller = select.poll()  # not select(): it takes no fd above 1023
            poller.register(watched, select.POLLIN)
            while not poller.poll():
                pass
        else:  # no pidfd: the pipe, and the consumer's pid every _WATCH_S (the pipe
            while True:  # alone stays open while a process forked from it lives)
                if parent is not None:
                    parent.join(_WATCH_S)
                    if not parent.is_alive():
                        break
                else:
                    time.sleep(_WATCH_S)
                if consumer is not None and not _running(consumer):
                    break
        os._exit(0)

    threading.Thread(target=watch, name="stoker-parent-watchdog", daemon=True).start()


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists and has not ended (a zombie, ended but not yet
    reaped by its parent, has: read from /proc where there is one)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def quiet_native_threads() -> None:
    """The worker processes are the parallelism: keep OpenCV to one thread per worker
    (its own pool on top of N workers oversubscribes the cores and is a known source of
    loader hangs, albumentations#1825). Imported here, so that it holds however the
    worker was started and whenever the transform imports OpenCV."""
    import cv2

    cv2.setNumThreads(1)


def run(payload: bytes, conn: Connection, worker_id: int = 0,
        consumer: int | None = None) -> None:
    """Entry point of a worker process (see the state diagram above); ``consumer`` is
    the pid of the process it works for."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_when_parent_dies(consumer)
    try:
        spec: WorkerSpec = pickle.loads(payload)
        quiet_native_threads()
        for name in spec.preload:  # imported before the first sample, so it is seeded too
            importlib.import_module(name)
        producer = Producer(spec.source, spec.transform, in_worker=True)
        if spec.progress is not None:
            producer.progress = (spec.progress.ndarray((spec.progress.size // 8,), np.int64),
                                 worker_id)
    except BaseException as error:  # report anything, even SystemExit from user code
        conn.send(InitFailed.of(error, traceback.format_exc()))
        return
    conn.send(Ready(os.getpid()))
    keys: dict[tuple[int, int], np.ndarray] = {}
    layout: BatchLayout | None = None
    slot_views: list[list[np.ndarray]] = []
    index_rows = np.zeros((0, 0), np.int64)
    while True:
        try:
            if not conn.poll(_POLL_SECONDS):
                continue
            message = conn.recv()
        except (EOFError, OSError):
            return
        reply: Done | Layout | Failed
        if isinstance(message, Task):
            indices = index_rows[message.slot, message.row:message.row + message.count]
            key = keys.get((message.key0, message.key1))
            if key is None:
                keys.clear()
                key = keys[(message.key0, message.key1)] = np.array(
                    [message.key0, message.key1], dtype=np.uint64)
            started = time.perf_counter()
            try:
                if producer.transform.batch is None and producer.max_outputs is None:
                    producer.fill(layout, key, indices, slot_views[message.slot], message.row)
                    rows = -1
                else:  # a whole batch, from row 0 of its slot
                    rows = producer.make_batch(layout, key, message.number, indices,
                                               slot_views[message.slot])
            except SampleFailure as failure:
                reply = _failed(message.task_id, failure)
            else:
                reply = Done(message.task_id, time.perf_counter() - started, rows)
        elif isinstance(message, Probe):
            key = np.array([message.key0, message.key1], dtype=np.uint64)
            reply = _probe(producer, key, message.task_id, message.indices)
        elif isinstance(message, Attach):
            layout = message.layout
            producer.sample_layout = message.sample_layout
            producer.max_outputs = message.max_outputs
            slots = message.slots  # kept: the views below map them
            slot_views = [layout.views(block.ndarray((block.size,), np.uint8), message.rows)
                          for block in slots]
            index_rows = message.index_block.ndarray((len(slots), spec.batch_size), np.int64)
            continue
        else:  # Stop
            return
        try:
            conn.send(reply)
        except (BrokenPipeError, OSError):
            return


def _failed(task_id: int, failure: SampleFailure) -> Failed:
    return Failed(task_id, *failure_record(failure))


def _probe(producer: Producer, key: np.ndarray, task_id: int,
           indices: tuple[int, ...]) -> Layout | Failed:
    """The layout of the first sample, or why it could not be made."""
    try:
        layout = producer.layout_of(key, indices)
        assert producer.sample_layout is not None
        return Layout(task_id, layout, producer.sample_layout, producer.max_outputs)
    except SampleFailure as failure:
        return _failed(task_id, failure)
