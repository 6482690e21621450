"""The worker loop, and the messages it exchanges with the consumer.

State diagram of one worker::

    start ──> INIT ──(spec loaded, slots attached)──> send READY ──> IDLE
                │                                                    │ recv TASK
                └─(error)──> send INIT_FAILED ──> exit               v
    IDLE <──── send DONE / FAILED(index, error, traceback) ──── WORKING
      │ recv STOP, or the pipe closes, or the parent dies
      v
     exit

A TASK names a batch slot, a row offset and the sample indices to produce; the worker
writes the samples straight into the slot's shared memory and answers with one small
message. Samples never travel through the pipe. The worker ignores SIGINT (Ctrl-C is
the consumer's to handle) and a watchdog thread exits as soon as the parent is gone.
"""

from __future__ import annotations

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
from .failures import exception_bytes

__all__ = ["Cmd", "Status", "WorkerSpec", "quiet_native_threads", "run"]

_POLL_SECONDS = 1.0


class Cmd(IntEnum):
    """Consumer -> worker. ``(TASK, task_id, epoch, key0, key1, slot, row, indices)``
    or ``(STOP,)``."""

    TASK = 1
    STOP = 2


class Status(IntEnum):
    """Worker -> consumer. ``(READY, pid)``, ``(DONE, task_id)``,
    ``(FAILED, task_id, index, stage, exception_bytes, summary, traceback_text)``,
    ``(INIT_FAILED, summary, traceback_text)``."""

    READY = 1
    DONE = 2
    FAILED = 3
    INIT_FAILED = 4


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """Everything a worker needs, serialized once with cloudpickle at start-up."""

    source: Any
    transform: Transform
    layout: BatchLayout
    batch_size: int
    slots: tuple[SharedBlock, ...]


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


def run(payload: bytes, conn: Connection) -> None:
    """Entry point of a worker process (see the state diagram above)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_when_parent_dies()
    try:
        spec: WorkerSpec = pickle.loads(payload)
        quiet_native_threads()
        producer = Producer(spec.source, spec.transform)
        slot_views = [
            spec.layout.views(block.ndarray((block.size,), np.uint8), spec.batch_size)
            for block in spec.slots
        ]
    except BaseException as error:  # report anything, even SystemExit from user code
        conn.send((Status.INIT_FAILED, f"{type(error).__name__}: {error}", traceback.format_exc()))
        return
    conn.send((Status.READY, os.getpid()))
    keys: dict[tuple[int, int], np.ndarray] = {}
    while True:
        try:
            if not conn.poll(_POLL_SECONDS):
                continue
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message[0] == Cmd.STOP:
            return
        _, task_id, _epoch, key0, key1, slot, row, indices = message
        key = keys.get((key0, key1))
        if key is None:
            keys.clear()
            key = keys[(key0, key1)] = np.array([key0, key1], dtype=np.uint64)
        started = time.perf_counter()
        try:
            producer.fill(spec.layout, key, indices, slot_views[slot], row)
        except SampleFailure as failure:
            reply = (
                Status.FAILED,
                task_id,
                failure.index,
                failure.stage,
                exception_bytes(failure.error),
                f"{type(failure.error).__name__}: {failure.error}",
                failure.traceback,
            )
        else:
            reply = (Status.DONE, task_id, time.perf_counter() - started)
        try:
            conn.send(reply)
        except (BrokenPipeError, OSError):
            return
