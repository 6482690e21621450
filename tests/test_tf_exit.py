"""adapters/_tf_exit.py: at exit, the loaders TensorFlow reads are closed and its last
calls waited out (the Ctrl-C-during-fit() freeze itself is in test_chaos.py)."""

from __future__ import annotations

import time

import numpy as np

import stoker
from stoker.adapters import _tf_exit


def test_wind_down_closes_open_loaders_and_waits_out_tensorflows_last_calls():
    data = stoker.from_arrays(np.zeros((64, 4), np.float32))
    loader = stoker.Loader(data, batch_size=8, workers=0)
    next(iter(loader))
    _tf_exit.read_by_tensorflow(loader)
    waited = _tf_exit.wind_down()
    assert loader.closed
    assert 0 < waited <= _tf_exit.GRACE_S  # closing it was the last activity


def test_wind_down_waits_for_nothing_once_tensorflow_has_been_quiet():
    _tf_exit.wind_down()  # whatever earlier tests left open is closed (and waited out)
    with _tf_exit.tensorflow_call():
        pass
    time.sleep(_tf_exit.GRACE_S)
    assert _tf_exit.wind_down() == 0.0


def test_every_batch_tensorflow_takes_counts_as_activity():
    data = stoker.from_arrays(np.zeros((64, 4), np.float32))
    with stoker.Loader(data, batch_size=8, workers=0) as loader:
        dataset = loader.tf_dataset()
        assert loader in set(_tf_exit._loaders)
        before = _tf_exit._last_activity
        for _ in dataset.take(1):
            pass
        assert _tf_exit._last_activity > before


def test_a_forked_child_forgets_the_parents_loaders_and_lock():
    """The child's exit hook waited forever on the lock a parent thread held at the
    fork, and it closed the child's copies of loaders only the parent's TensorFlow read."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import os, signal, sys, threading, time
        import numpy as np, stoker
        from stoker.adapters import _tf_exit
        loader = stoker.Loader(stoker.from_arrays(np.zeros((64, 4), np.float32)),
                               batch_size=8, workers=0)
        _tf_exit.read_by_tensorflow(loader)
        held = threading.Event()
        def hold():
            with _tf_exit._lock:
                held.set()
                time.sleep(3)
        threading.Thread(target=hold, daemon=True).start()
        held.wait()
        pid = os.fork()
        if pid == 0:
            signal.alarm(10)  # a deadlock ends here, with SIGALRM
            _tf_exit.wind_down()
            print("child:", len(_tf_exit._loaders), loader.closed, flush=True)
            sys.exit(0)  # the atexit hook runs again
        _, status = os.waitpid(pid, 0)
        print("parent:", os.waitstatus_to_exitcode(status), loader.closed, flush=True)
        print("parent batches:", len(list(loader)), flush=True)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.stdout.split("\n")[:3] == ["child: 0 False", "parent: 0 False",
                                           "parent batches: 8"], done.stdout + done.stderr
