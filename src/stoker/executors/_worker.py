"""The worker loop, and the messages it exchanges with the consumer.

State diagram of one worker::

    start ──> INIT ──(spec loaded)──> send READY ──> IDLE
                │                                     │ recv PROBE / ATTACH / TASK
                └─(error)──> send INIT_FAILED ──> exit v
    IDLE <── send LAYOUT / DONE / FAILED(index, error, traceback) ── WORKING
      │ recv STOP, or the pipe closes, or the parent dies
      v
     exit

The batch layout is learnt here, never in the consumer: a PROBE asks one worker to make
the first sample and answer with its ``BatchLayout`` (or the failure), under the same
crash detection and timeouts as any task. The consumer then creates the batch slots and
sends ATTACH (the layout and the slots) to every worker, and to every replacement first
thing. A TASK names a batch slot, a row offset and the sample indices to produce; the
worker writes the samples straight into the slot's shared memory and answers with one
small message. Samples never travel through the pipe. The worker ignores SIGINT (Ctrl-C is
the consumer's to handle) and a watchdog thread exits as soon as the parent is gone.
"""

from __future__ import annotations

import importlib
import os
import pickle
import signal
import threading
import time
import traceback
from dataclasses import dataclass
from enum import IntEnum
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from ..layout import BatchLayout
from ..shm import SharedBlock
from ._produce import Producer, SampleFailure, Transform
from .failures import failure_record

__all__ = ["Cmd", "Status", "WorkerSpec", "quiet_native_threads", "run"]

_POLL_SECONDS = 1.0


class Cmd(IntEnum):
    """Consumer -> worker. ``(TASK, task_id, epoch, key0, key1, slot, row, count)`` (the
    indices are ``count`` entries from ``row`` of the slot's row in the index block),
    ``(PROBE, task_id, key0, key1, index)``, ``(ATTACH, layout, slots, index_block)`` or
    ``(STOP,)``. Every message is small, so no send can block on a full pipe."""

    TASK = 1
    STOP = 2
    PROBE = 3
    ATTACH = 4


class Status(IntEnum):
    """Worker -> consumer. ``(READY, pid)``, ``(DONE, task_id, busy_seconds)``,
    ``(LAYOUT, task_id, layout)``,
    ``(FAILED, task_id, index, stage, exception_bytes, summary, traceback_text)``,
    ``(INIT_FAILED, summary, traceback_text)``."""

    READY = 1
    DONE = 2
    FAILED = 3
    INIT_FAILED = 4
    LAYOUT = 5


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What a worker needs to start, serialized once with cloudpickle; the layout and
    the batch slots come later (ATTACH)."""

    source: Any
    transform: Transform
    batch_size: int
    preload: tuple[str, ...] = ()  # modules whose global RNG a legacy transform may use
    progress: SharedBlock | None = None  # one sample counter per worker id


def _exit_when_parent_dies() -> None:
    import multiprocessing

    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        parent.join()
        os._exit(0)

    threading.Thread(target=watch, name="stoker-parent-watchdog", daemon=True).start()


def quiet_native_threads() -> None:
    """The worker processes are the parallelism: keep OpenCV to one thread per worker
    (its own pool on top of N workers oversubscribes the cores and is a known source of
    loader hangs, albumentations#1825). Imported here, so that it holds however the
    worker was started and whenever the transform imports OpenCV."""
    import cv2

    cv2.setNumThreads(1)


def run(payload: bytes, conn: Connection, worker_id: int = 0) -> None:
    """Entry point of a worker process (see the state diagram above)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_when_parent_dies()
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
        conn.send((Status.INIT_FAILED, f"{type(error).__name__}: {error}", traceback.format_exc()))
        return
    conn.send((Status.READY, os.getpid()))
    keys: dict[tuple[int, int], np.ndarray] = {}
    layout: BatchLayout | None = None
    slots: tuple[SharedBlock, ...] = ()
    slot_views: list[list[np.ndarray]] = []
    index_rows = np.zeros((0, 0), np.int64)
    while True:
        try:
            if not conn.poll(_POLL_SECONDS):
                continue
            message = conn.recv()
        except (EOFError, OSError):
            return
        command = message[0]
        if command == Cmd.STOP:
            return
        if command == Cmd.ATTACH:
            _, layout, slots, index_block = message
            slot_views = [layout.views(block.ndarray((block.size,), np.uint8), spec.batch_size)
                          for block in slots]
            index_rows = index_block.ndarray((len(slots), spec.batch_size), np.int64)
            continue
        if command == Cmd.PROBE:
            _, task_id, key0, key1, index = message
            reply = _probe(producer, np.array([key0, key1], dtype=np.uint64), task_id, index)
        else:
            _, task_id, _epoch, key0, key1, slot, row, count = message
            indices = index_rows[slot, row:row + count]
            key = keys.get((key0, key1))
            if key is None:
                keys.clear()
                key = keys[(key0, key1)] = np.array([key0, key1], dtype=np.uint64)
            started = time.perf_counter()
            try:
                producer.fill(layout, key, indices, slot_views[slot], row)
            except SampleFailure as failure:
                reply = _failed(task_id, failure)
            else:
                reply = (Status.DONE, task_id, time.perf_counter() - started)
        try:
            conn.send(reply)
        except (BrokenPipeError, OSError):
            return


def _failed(task_id: int, failure: SampleFailure) -> tuple:
    return (Status.FAILED, task_id, *failure_record(failure))


def _probe(producer: Producer, key: np.ndarray, task_id: int, index: int) -> tuple:
    """The layout of the first sample, or why it could not be made."""
    try:
        return (Status.LAYOUT, task_id, producer.layout_of(key, index))
    except SampleFailure as failure:
        return _failed(task_id, failure)
