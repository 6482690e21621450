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
"""

from __future__ import annotations

import os
import sys
import threading

__all__ = ["WORKER_NAME_PREFIX", "install"]

WORKER_NAME_PREFIX = "stoker-worker"
_installed = False


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
