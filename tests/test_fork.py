"""A loader and ``os.fork``: a forked child's copy of a loader serves nobody and stops
nothing; the child makes loaders of its own. Each scenario is a script of its own (the
child ends as a real program does, running its exit handlers and finalizers)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="no os.fork")

PRELUDE = """
import gc, os, sys
import numpy as np
import stoker

x = np.arange(64 * 4, dtype=np.float32).reshape(64, 4)
y = np.arange(64)
data = stoker.from_arrays(x, y)

def noisy(sample, rng):
    return sample[0] + rng.random(4, dtype=np.float32), sample[1]

def epochs(loader, count):
    return [np.concatenate([np.concatenate([a, b[:, None]], 1) for a, b in loader])
            for _ in range(count)]

with stoker.Loader(data, batch_size=8, transform=noisy, seed=1, workers=0) as reference:
    expected = epochs(reference, 3)
loader = stoker.Loader(data, batch_size=8, transform=noisy, seed=1, workers=2,
                       start_method=START)
iterator = iter(loader)
first = [np.concatenate([a, b[:, None]], 1) for a, b in [next(iterator)]]  # mid-epoch
"""

PARENT_GOES_ON = """
os.waitpid(pid, 0)
rest = first + [np.concatenate([a, b[:, None]], 1) for a, b in iterator]
got = [np.concatenate(rest)] + epochs(loader, 2)
assert all(np.array_equal(g, e) for g, e in zip(got, expected, strict=True)), "batches"
assert loader.crashes == [], loader.crashes
assert os.path.exists("/dev/shm/" + data._block.name), "the dataset was unlinked"
loader.close()
data.release()
print("parent: exact")
"""


def run(child: str, start_method: str) -> str:
    code = (f"START = {start_method!r}\n" + PRELUDE
            + "pid = os.fork()\nif pid == 0:\n" + textwrap.indent(textwrap.dedent(child), "    ")
            + PARENT_GOES_ON)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "parent: exact" in done.stdout, done.stdout + done.stderr
    return done.stdout + done.stderr


@pytest.mark.parametrize("start_method", ["forkserver", "spawn", "fork"])
def test_a_child_that_drops_the_parents_loader_and_exits_stops_none_of_its_workers(
        start_method):
    """The child's copies of the loader and the dataset collected, then the child's
    normal exit (finalizers, atexit, multiprocessing's own exit, which terminates the
    daemon children it lists): the parent's workers, slots and dataset went on (it was
    WorkerCrashed by SIGTERM or an AssertionError, and the dataset unlinked)."""
    said = run("""
        del iterator, loader, data
        gc.collect()
        sys.exit(0)
    """, start_method)
    assert "Traceback" not in said, said


def test_the_parents_loader_is_refused_in_the_child_and_the_parent_goes_on():
    """Iterating the parent's loader in the child took batches meant for the parent,
    which then waited forever."""
    said = run("""
        try:
            next(iter(loader))
        except stoker.LoaderError as error:
            print("child:", error, flush=True)
        for view in (loader.keras, loader.tf_dataset, loader.torch):
            try:
                view()
            except stoker.LoaderError:
                pass
            else:
                print("child: a view was made", flush=True)
        os._exit(0)
    """, "forkserver")
    assert "child: this Loader was made in process" in said, said
    assert "make a new Loader here" in said and "a view was made" not in said, said


@pytest.mark.parametrize("start_method", ["forkserver", "spawn", "fork"])
def test_a_forked_child_makes_and_runs_loaders_of_its_own(start_method):
    """After the parent started workers, a loader made in the child failed to start
    (forkserver: ChildProcessError, the parent's server not being its child); it runs,
    on the parent's shared dataset, and the child's exit leaves the parent exact."""
    said = run("""
        with stoker.Loader(data, batch_size=8, transform=noisy, seed=1, workers=2,
                           start_method=START) as own:
            mine = epochs(own, 3)
        same = all(np.array_equal(g, e) for g, e in zip(mine, expected, strict=True))
        print("child: own loader exact" if same else "child: own loader differs", flush=True)
        sys.exit(0)
    """, start_method)
    assert "child: own loader exact" in said, said
    assert "Traceback" not in said, said
