"""Leaving the interpreter safely while TensorFlow still reads a loader.

tf.data reads a Python generator (``from_generator``, which Keras also uses for a
PyDataset on the TensorFlow backend) from threads of its own. When the interpreter
shuts down, CPython (before 3.14) ends any such thread on the spot as it tries to run
Python again; a moment later the shutdown's garbage collection destroys tf.data's
iterator, whose destructor waits for that thread forever (tensorflow#21277, #22632).
Ctrl-C during ``fit()`` froze the process like this about one time in four.

The way out: every loader TensorFlow reads is registered here, and an ``atexit`` hook,
which runs before the shutdown ends any thread, closes those still open (a TF thread
waiting inside one ends with a LoaderError, so tf.data winds its generator down) and
then waits, with the GIL released, until TensorFlow has had ``GRACE_S`` seconds since
its last call into stoker to make its last few calls (finishing and finalizing the
generator: microseconds of work each). A process that exits well after its training
ended waits for nothing.
"""

from __future__ import annotations

import atexit
import os
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from .._fork import ProcessLock

if TYPE_CHECKING:
    from ..loader import Loader

__all__ = ["GRACE_S", "read_by_tensorflow", "tensorflow_call"]

GRACE_S = 0.5

_loaders: weakref.WeakSet[Loader] = weakref.WeakSet()
_lock = ProcessLock()  # fresh in a forked child
_last_activity = 0.0
_hook_registered = False


def read_by_tensorflow(loader: Loader) -> None:
    """Note that TensorFlow's threads may read ``loader``; see the module docstring."""
    global _hook_registered
    with _lock:
        _loaders.add(loader)
        if not _hook_registered:
            atexit.register(wind_down)
            if hasattr(os, "register_at_fork"):
                os.register_at_fork(after_in_child=_forget_the_parent)
            _hook_registered = True


def _forget_the_parent() -> None:
    """In a forked child: the parent's loaders are not read by the child's TensorFlow
    (the child's copies register again when it makes views of them)."""
    global _last_activity
    _loaders.clear()
    _last_activity = 0.0


@contextmanager
def tensorflow_call() -> Iterator[None]:
    """Wrap every call TensorFlow makes into stoker: its start and end are activity."""
    _touch()
    try:
        yield
    finally:
        _touch()


def _touch() -> None:
    global _last_activity
    _last_activity = time.monotonic()


def wind_down() -> float:
    """Close the loaders TensorFlow reads and wait out TensorFlow's last calls; return
    the seconds waited. Runs at exit; safe to call more than once."""
    with _lock:
        loaders = list(_loaders)
    for loader in loaders:
        if not loader.closed:
            loader.close()
            _touch()
    wait = _last_activity + GRACE_S - time.monotonic()
    if wait > 0:
        time.sleep(wait)
        return wait
    return 0.0
