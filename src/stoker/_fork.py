"""What a process forked (``os.fork``) from a stoker process forgets of its parent.

Ownership does not travel through ``fork`` (``shm.py``, ``loader.py``): the parent's
loaders, workers and shared memory stay the parent's. multiprocessing, though, hands the
child its own view of them: it lists the parent's workers as the child's children (and
terminates those that are daemons when the child exits), it believes the parent's
forkserver is the child's (``ChildProcessError`` when the child starts a worker: that
server is not its child), and its locks are copied as they were, held by threads that
do not exist in the child. The hook below, installed with the first shared-memory block
or worker pool, makes the child forget all of that, so that its own loaders start
cleanly and its exit touches nothing of the parent's. multiprocessing's own children
reset this themselves (they run the hook too, harmlessly).

stoker's own locks are :class:`ProcessLock` s, which the hook makes fresh in the child
(a copy held by a parent thread would block it forever), and an object whose state is
its process's own (a Keras view's pass under way) registers with :func:`forget_in_child`
to be reset there, before any code of the child runs.
"""

from __future__ import annotations

import os
import sys
import threading
import weakref
from typing import Any

__all__ = ["WORKER_NAME_PREFIX", "ProcessLock", "forget_in_child", "install"]

WORKER_NAME_PREFIX = "stoker-worker"
_installed = False
_locks: weakref.WeakSet[ProcessLock] = weakref.WeakSet()
_forgetful: weakref.WeakSet[Any] = weakref.WeakSet()


class ProcessLock:
    """A ``threading.Lock`` (``RLock`` if ``reentrant``) that is fresh, unheld, in a
    process forked from this one."""

    __slots__ = ("__weakref__", "_lock", "_reentrant")

    def __init__(self, *, reentrant: bool = False) -> None:
        # The hook is installed at the first acquire, not here (nothing happens at
        # import): a lock never taken cannot be held at a fork.
        self._reentrant = reentrant
        self._lock: Any = threading.RLock() if reentrant else threading.Lock()
        _locks.add(self)

    def _renew(self) -> None:
        self._lock = threading.RLock() if self._reentrant else threading.Lock()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if not _installed:
            install()
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> bool:
        if not _installed:
            install()
        return self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


def forget_in_child(owner: Any) -> None:
    """Have ``owner._forget_the_parent()`` run in every process forked from this one,
    right after the fork (while ``owner`` lives)."""
    install()
    _forgetful.add(owner)


def install() -> None:
    """Register the hook once per process (idempotent, cheap)."""
    global _installed
    if not _installed and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_forget_the_parent)
        _installed = True


def _fresh(lock: object) -> object:
    """A new, unheld lock of ``lock``'s kind."""
    return threading.RLock() if isinstance(lock, type(threading.RLock())) else threading.Lock()


def _forget_the_parent() -> None:
    """Runs in the child right after the fork; imports nothing (only what the parent
    had loaded can need forgetting)."""
    for lock in list(_locks):
        lock._renew()
    _forget_multiprocessing()
    failed: Exception | None = None
    for owner in list(_forgetful):
        try:
            owner._forget_the_parent()
        except Exception as error:  # the others still forget; Python reports the first
            failed = failed or error
    if failed is not None:
        raise failed


def _forget_multiprocessing() -> None:
    """multiprocessing's view of the parent: its tracker, children and forkserver."""
    tracker_module = sys.modules.get("multiprocessing.resource_tracker")
    tracker = getattr(tracker_module, "_resource_tracker", None)
    if tracker is not None and hasattr(tracker, "_lock"):
        # The tracker itself stays shared with the parent (it unlinks what a killed
        # process left once every process holding it has gone, and workers register the
        # blocks they attach with it); only its lock is the child's own, and it forgets
        # the tracker's pid: the tracker is not its child, and Python 3.12.10+ waits for
        # it at exit (ResourceTracker.__del__: ChildProcessError) unless that is None,
        # the state multiprocessing gives a child that did not start the tracker.
        tracker._lock = _fresh(tracker._lock)
        if hasattr(tracker, "_pid"):
            tracker._pid = None
    process = sys.modules.get("multiprocessing.process")
    children = getattr(process, "_children", None)
    if isinstance(children, set):
        for child in [c for c in children if str(c.name).startswith(WORKER_NAME_PREFIX)]:
            children.discard(child)
    forkserver = sys.modules.get("multiprocessing.forkserver")
    server = getattr(forkserver, "_forkserver", None)
    if server is None or getattr(server, "_forkserver_pid", None) is None:
        return
    alive = server._forkserver_alive_fd  # this copy would keep the parent's server up
    server._forkserver_pid = server._forkserver_address = server._forkserver_alive_fd = None
    server._lock = _fresh(server._lock)
    if process is not None:  # a folder of its own for the server's socket: the parent's
        process.current_process()._config.pop("tempdir", None)  # goes when it exits
    if alive is not None:
        try:
            os.close(alive)
        except OSError:
            pass
