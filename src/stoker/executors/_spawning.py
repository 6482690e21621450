"""How worker processes are started, and why.

The consumer usually runs TensorFlow, whose thread pools are live by the time a loader
starts. ``fork`` from such a process copies locks that other threads may hold, which
can deadlock a child; TensorFlow warns against it and Python 3.12+ deprecates it. So
the default is ``forkserver``: a clean, single-threaded server process (started once,
preloading only numpy, OpenCV and stoker's worker module) forks the workers. Start-up
and memory of fork / forkserver / spawn are measured in ``benchmarks/bench_start.py``.

Workers never re-run the user's script. Under spawn and forkserver, multiprocessing
normally re-imports ``__main__`` in every child (so that functions defined there can be
unpickled); a script without an ``if __name__ == "__main__":`` guard then freezes or
dies at start-up, and a script that imports TensorFlow imports it again in every worker.
stoker instead serializes the transform and source with cloudpickle (functions and
classes from ``__main__`` travel by value) and drops the "import __main__" step from the
preparation data of its own worker processes, and of no other process.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing import spawn
from multiprocessing.context import BaseContext

from .._fork import WORKER_NAME_PREFIX
from .._fork import install as install_fork_hook

__all__ = [
    "START_METHODS",
    "WORKER_NAME_PREFIX",
    "default_start_method",
    "fork_safe_native_pools",
    "sweep_stale_listener_dirs",
    "worker_context",
]

START_METHODS = ("forkserver", "spawn", "fork")
_PRELOAD = ["stoker.executors._worker", "cv2"]
_filter_installed = False
_swept = False


def default_start_method() -> str:
    """``forkserver`` where the platform has it (Linux, macOS), else ``spawn`` (Windows)."""
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def _install_preparation_filter() -> None:
    """Make multiprocessing skip re-importing ``__main__`` in stoker's workers only."""
    global _filter_installed
    if _filter_installed:
        return
    original = spawn.get_preparation_data

    def get_preparation_data(name: str) -> dict:
        data = original(name)
        if name.startswith(WORKER_NAME_PREFIX):
            data.pop("init_main_from_path", None)
            data.pop("init_main_from_name", None)
        return data

    get_preparation_data.__wrapped__ = original  # type: ignore[attr-defined]
    spawn.get_preparation_data = get_preparation_data
    _filter_installed = True


def worker_context(start_method: str | None) -> BaseContext:
    """The multiprocessing context that starts stoker's workers."""
    install_fork_hook()  # a forked child forgets these workers (``_fork.py``)
    method = start_method or default_start_method()
    if method not in START_METHODS:
        raise ValueError(f"start_method must be one of {START_METHODS} or None, got {method!r}")
    if method not in multiprocessing.get_all_start_methods():
        raise ValueError(f"start_method {method!r} is not available on {sys.platform}")
    context = multiprocessing.get_context(method)
    if method == "forkserver":
        # Only effective if this process has not started its forkserver yet.
        context.set_forkserver_preload(_PRELOAD)
        sweep_stale_listener_dirs()
    if method in ("forkserver", "spawn"):
        _install_preparation_filter()
    return context


def sweep_stale_listener_dirs(root: str | None = None) -> list[str]:
    """Remove the forkserver socket folders (``pymp-*/listener-*``) of processes that
    were killed; return what was removed. Done once per process, before its forkserver
    starts.

    multiprocessing removes its folder when the process exits normally, but a SIGKILLed
    or OOM-killed consumer leaves one behind per kill, forever. A folder is stale when
    it is ours, holds nothing but ``listener-*`` sockets, and no process has any of
    them open (Linux lists the open Unix sockets of a network namespace in its
    /proc/PID/net/unix; every namespace a process of ours is in is read, since a
    program in another one, a container or ``unshare -n``, may share this /tmp);
    nothing is connected to, so a live forkserver of another program is never
    disturbed. Other platforms keep their folders.
    """
    global _swept
    if root is None:
        if _swept:
            return []
        _swept = True
    open_paths = open_unix_socket_paths()
    if open_paths is None:
        return []
    removed = []
    base = root or tempfile.gettempdir()
    try:
        entries = list(os.scandir(base))
    except OSError:
        return []
    for entry in entries:
        if not entry.name.startswith("pymp-"):
            continue
        try:
            if not entry.is_dir(follow_symlinks=False) or entry.stat().st_uid != os.getuid():
                continue
            inside = list(os.scandir(entry.path))
        except OSError:
            continue
        if not inside or not all(_stale_listener(item, open_paths) for item in inside):
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(entry.path)
    return removed


def _socket_paths(table: str) -> set[str]:
    with open(table) as lines:
        return {line.split()[-1] for line in lines.readlines()[1:] if len(line.split()) >= 8}


def open_unix_socket_paths() -> set[str] | None:
    """The paths of the Unix sockets open in this process's network namespace and in
    that of every process it can see (one table read per namespace); None where there
    is no such table (not Linux)."""
    try:
        paths = _socket_paths("/proc/net/unix")
        namespaces = {os.readlink("/proc/self/ns/net")}
    except OSError:
        return None
    try:
        pids = [entry.name for entry in os.scandir("/proc") if entry.name.isdigit()]
    except OSError:
        return paths
    for pid in pids:
        try:
            namespace = os.readlink(f"/proc/{pid}/ns/net")
            if namespace in namespaces:
                continue
            paths |= _socket_paths(f"/proc/{pid}/net/unix")
        except OSError:  # gone, or not ours to read: another of its namespace may be
            continue
        namespaces.add(namespace)
    return paths


def _stale_listener(item: os.DirEntry, open_paths: set[str]) -> bool:
    try:
        is_socket = stat.S_ISSOCK(item.stat(follow_symlinks=False).st_mode)
    except OSError:
        return False
    return is_socket and item.name.startswith("listener-") and item.path not in open_paths


@contextmanager
def fork_safe_native_pools(start_method: str) -> Iterator[None]:
    """Around starting a worker with ``fork``: park OpenCV's thread pool first.

    ``fork`` copies the pool's locks but not its threads; a child that then touches the
    pool (stoker's workers set it to one thread) can wait forever on a lock no thread
    will release (seen here after OpenCV ran multi-threaded in the parent). Setting one
    thread joins the pool's threads in this process, so the child starts clean; the
    parent's setting is restored right after the fork. forkserver and spawn start from
    a fresh process and need none of this.
    """
    cv2 = sys.modules.get("cv2") if start_method == "fork" else None
    if cv2 is None:
        yield
        return
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(threads)

