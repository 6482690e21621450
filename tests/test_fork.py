"""A loader and ``os.fork``: a forked child's copy of a loader serves nobody and stops
nothing; the child makes loaders of its own. Each scenario is a script of its own (the
child ends as a real program does, running its exit handlers and finalizers)."""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap

import pytest

from conftest import gone, own_segments, wait_until

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork")

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


def script(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``code``; its output through files, not pipes: what outlives it (a forked
    child, multiprocessing's resource tracker) would hold a pipe open until it ends."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], stdout=out,
                              stderr=err, text=True, timeout=timeout)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(done.args, done.returncode, out.read(), err.read())


def run(child: str, start_method: str, before_fork: str = "") -> str:
    code = (f"START = {start_method!r}\n" + PRELUDE + textwrap.dedent(before_fork)
            + "pid = os.fork()\nif pid == 0:\n" + textwrap.indent(textwrap.dedent(child), "    ")
            + PARENT_GOES_ON)
    done = script(code)
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


@pytest.mark.parametrize("start_method", ["forkserver", "spawn", "fork"])
def test_the_parents_loader_is_the_childs_own_copy_and_the_parent_goes_on(start_method):
    """Iterating the parent's loader in the child took batches meant for the parent,
    which then waited forever; then it was refused. The child's copy now goes on from
    the same cursor with workers of its own, exactly, through the loop and each view,
    and its exit (finalizers, no close()) stops none of the parent's."""
    said = run("""
        print("child: none of its own yet" if loader.worker_pids == [] and
              loader.crashes == [] and loader.stats().batches == 0 else "child: parent's",
              flush=True)
        rest = [np.concatenate([a, b[:, None]], 1) for a, b in loader]
        mine = [np.concatenate(first + rest)] + epochs(loader, 2)
        same = all(np.array_equal(g, e) for g, e in zip(mine, expected, strict=True))
        print("child: copy exact" if same else "child: copy differs", flush=True)
        own = set(loader.worker_pids)
        print("child: own workers" if len(own) == 2 and not own & parents else own, flush=True)
        with stoker.Loader(data, batch_size=8, transform=noisy, seed=1, workers=0) as ref:
            later = epochs(ref, 5)[3:]  # the epochs the views serve, from the cursor
        views = [loader.tf_dataset] + ([loader.torch] if importlib.util.find_spec("torch")
                                       else [])
        for view, want in zip(views, later):
            got = np.concatenate([np.concatenate([np.asarray(a), np.asarray(b)[:, None]], 1)
                                  for a, b in view()])
            print(f"child: {view.__name__}", "exact" if np.array_equal(got, want)
                  else "differs", flush=True)
        loader.keras()
        tracker = multiprocessing.resource_tracker._resource_tracker
        print("child: tracker", "not waited for" if tracker._pid is None else tracker._pid,
              flush=True)
        sys.exit(0)
    """, start_method, before_fork="import importlib.util, multiprocessing.resource_tracker\n"
                                   "parents = set(loader.worker_pids)\n")
    assert "child: none of its own yet" in said, said
    assert "child: copy exact" in said and "child: own workers" in said, said
    assert "child: tf_dataset exact" in said, said
    assert "child: tracker not waited for" in said and "Traceback" not in said, said
    if importlib.util.find_spec("torch"):
        assert "child: torch exact" in said, said


def test_a_child_forked_while_a_parent_thread_serves_keras_gets_the_same_view_unlocked():
    """A parent thread was inside the Keras view (its lock held, waiting for a batch)
    at the fork: in the child, state_dict() waited forever on that copied lock, and
    loader.keras() was another view than the one the child's code held."""
    done = script("""
        import os, signal, sys, threading, time
        os.environ["KERAS_BACKEND"] = "numpy"
        import numpy as np, stoker
        data = stoker.from_arrays(np.arange(64 * 4, dtype=np.float32).reshape(64, 4))
        gate = threading.Event()
        def slow(sample, rng):
            time.sleep(0.2 if os.environ.get("SLOW") else 0)
            return sample
        os.environ["SLOW"] = "1"
        loader = stoker.Loader(data, batch_size=8, workers=1, transform=slow, seed=0)
        view = loader.keras()
        threading.Thread(target=lambda: view[0], daemon=True).start()
        time.sleep(0.1)
        print("parent: held", not view._lock.acquire(blocking=False), flush=True)
        pid = os.fork()
        if pid == 0:
            signal.alarm(30)  # a hang ends here
            print("child: same view", loader.keras() is view, flush=True)
            print("child: state", loader.state_dict()["batches_done"], flush=True)
            print("child: batches", len(list(loader)), flush=True)
            loader.close()
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        print("parent: child", os.waitstatus_to_exitcode(status), flush=True)
        loader.close()
        data.release()
    """)
    said = done.stdout.split("\n")
    assert said[:5] == ["parent: held True", "child: same view True", "child: state 0",
                        "child: batches 8", "parent: child 0"], done.stdout + done.stderr


@pytest.mark.parametrize("start_method", ["forkserver", "fork"])
def test_a_batch_held_across_the_fork_is_each_ones_own(start_method):
    """The processes executor lends a batch as a view of its shared-memory slot: held
    across the fork, the child's writes showed in the parent's batch, and the parent's
    next batches, made into that slot again, overwrote the child's."""
    done = script(f"""
        import os
        import numpy as np, stoker
        data = stoker.from_arrays(np.arange(256 * 4, dtype=np.float32).reshape(256, 4))
        loader = stoker.Loader(data, batch_size=8, workers=2, shuffle=False,
                               start_method={start_method!r})
        epoch = iter(loader)
        batch = next(epoch)
        assert loader._executor._lent.held, "the test needs a lent batch"
        before = batch.copy()
        wrote, went_on = os.pipe(), os.pipe()
        pid = os.fork()
        if pid == 0:
            batch += 1000.0
            os.write(wrote[1], b"x")
            os.read(went_on[0], 1)  # the parent has used every slot again since
            print("child:", "own" if np.array_equal(batch, before + 1000) else "changed",
                  flush=True)
            os._exit(0)
        os.read(wrote[0], 1)
        print("parent:", "own" if np.array_equal(batch, before) else "changed", flush=True)
        del batch
        rest = [b.copy() for b in epoch] + [b.copy() for _ in range(2) for b in loader]
        os.write(went_on[1], b"x")
        os.waitpid(pid, 0)
        print("parent: batches", len(rest), flush=True)
        loader.close()
        data.release()
    """)
    said = done.stdout.split("\n")
    assert said[:3] == ["parent: own", "child: own", "parent: batches 95"], (
        done.stdout + done.stderr)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_loader_made_before_the_fork_and_not_yet_run_serves_the_child(workers):
    """Made at import, forked, then used (a server's pre-fork pattern): after 78f417d
    the child's copy was refused even with workers=0 or no worker started."""
    done = script(f"""
        import os, sys
        import numpy as np, stoker
        data = stoker.from_arrays(np.arange(40, dtype=np.float32).reshape(20, 2))
        def noisy(sample, rng):
            return sample + rng.random(2, dtype=np.float32)
        loader = stoker.Loader(data, batch_size=4, transform=noisy, seed=3,
                               workers={workers})
        with stoker.Loader(data, batch_size=4, transform=noisy, seed=3, workers=0) as ref:
            expected = [np.concatenate(list(ref)) for _ in range(2)]
        def epochs():
            return all(np.array_equal(np.concatenate(list(loader)), e) for e in expected)
        pid = os.fork()
        if pid == 0:
            print("child", epochs(), flush=True)
            sys.exit(0)
        os.waitpid(pid, 0)
        print("parent", epochs(), flush=True)
        loader.close()
    """)
    assert done.stdout.split() == ["child", "True", "parent", "True"], (
        done.stdout + done.stderr)
    assert "Traceback" not in done.stderr, done.stderr


TORCH_ITERATOR = """
batches = iter(loader.torch())  # it takes over from the loop at its first batch
first += [np.concatenate([a.numpy(), b.numpy()[:, None]], 1) for a, b in [next(batches)]]
iterator = batches
"""


@pytest.mark.parametrize("view", ["loader", "torch"])
def test_the_parents_running_iterator_is_refused_in_the_child(view):
    """The parent's iteration, begun before the fork and going on in the child, took a
    batch meant for the parent, which then waited forever (5 runs in 8)."""
    if view == "torch":
        pytest.importorskip("torch")
    said = run("""
        try:
            next(iterator)
        except stoker.LoaderError as error:
            print("child:", error, flush=True)
        else:
            print("child: took the parent's batch", flush=True)
        os._exit(0)
    """, "forkserver", before_fork=TORCH_ITERATOR if view == "torch" else "")
    assert "child: this iteration began in process" in said, said
    assert "iterate the loader again in this process" in said, said


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


@pytest.mark.parametrize("kernel", ["pidfd", "no pidfd"])
def test_a_killed_consumers_workers_exit_while_a_child_forked_from_it_lives(kernel):
    """The workers watched the consumer through a pipe whose other end a forked child
    holds too, so they outlived a SIGKILLed consumer as long as the child lived. Without
    a pidfd (a kernel older than 5.3; here os.pidfd_open removed before the workers are
    forked from the consumer) they still did: the pipe was all they watched."""
    old_kernel = "del os.pidfd_open" if kernel == "no pidfd" else ""
    method = "fork" if kernel == "no pidfd" else None  # None: the default
    done = script(f"""
        import os, signal, sys, time
        import numpy as np, stoker
        {old_kernel}
        loader = stoker.Loader(stoker.from_arrays(np.zeros((64, 4), np.float32)),
                               batch_size=8, workers=2, start_method={method!r})
        next(iter(loader))
        child = os.fork()
        if child == 0:
            time.sleep(60)
            os._exit(0)
        print(os.getpid(), child, *loader.worker_pids, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    consumer, child, *workers = (int(pid) for pid in done.stdout.split())
    try:
        assert len(workers) == 2
        assert wait_until(lambda: all(gone(pid) for pid in workers), 10), workers
        assert not gone(child)  # the child, holding the pipes, still lives
        assert own_segments(consumer)  # the resource tracker waits for the child too
    finally:
        os.kill(child, signal.SIGKILL)
    # and then unlinks what the killed consumer made (the dataset, slots, counters)
    assert wait_until(lambda: own_segments(consumer) == set(), 20), own_segments(consumer)


def test_without_a_pidfd_a_consumer_ended_but_not_reaped_counts_as_ended():
    """The pid watch a worker falls back on: a zombie (ended, its parent not yet having
    waited for it) is not a consumer still to serve, though os.kill(pid, 0) finds it."""
    from stoker.executors._worker import _running

    child = os.fork()
    if child == 0:
        os._exit(0)
    assert wait_until(lambda: not _running(child), 10)  # a zombie until waited for
    os.kill(child, 0)  # it still exists
    os.waitpid(child, 0)
    assert not _running(child) and _running(os.getpid())


def test_a_child_forked_while_a_thread_makes_shared_memory_makes_its_own():
    """multiprocessing's resource tracker lock, held by a thread of the parent at the
    fork, was held forever in the child: its first block waited (7 of 30 children hung,
    each leaving a segment behind)."""
    done = script("""
        import os, signal, threading, time
        import numpy as np, stoker
        stop = False
        def churn():
            while not stop:
                stoker.from_arrays(np.zeros(4, np.float32)).release()
        thread = threading.Thread(target=churn, daemon=True)
        thread.start()
        hung = 0
        for _ in range(20):
            time.sleep(0.02)
            pid = os.fork()
            if pid == 0:
                signal.alarm(10)  # a child still waiting after 10 s is killed
                stoker.from_arrays(np.zeros(4, np.float32)).release()
                os._exit(0)
            hung += os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == -signal.SIGALRM
        stop = True
        thread.join()
        print("hung", hung)
    """)
    assert done.stdout.split() == ["hung", "0"], done.stdout + done.stderr


def test_a_loader_in_a_daemonic_worker_is_refused_naming_the_fix():
    """A Pool's worker (a torch DataLoader's too) may start no processes: it was
    multiprocessing's bare 'daemonic processes are not allowed to have children'."""
    done = script("""
        import multiprocessing
        import numpy as np, stoker
        def job(workers):
            data = stoker.from_arrays(np.zeros((16, 2), np.float32))
            try:
                with stoker.Loader(data, batch_size=4, workers=workers) as loader:
                    return f"{len(list(loader))} batches"
            except stoker.LoaderError as error:
                return str(error)
        with multiprocessing.get_context("fork").Pool(1) as pool:
            print(pool.apply(job, (2,)))
            print(pool.apply(job, (0,)))
    """)
    refused, inline = done.stdout.strip().splitlines()
    assert "is a daemonic worker, such as a torch DataLoader's" in refused, done.stderr
    assert "pass workers=0" in refused
    assert inline == "4 batches"


def test_a_childs_loader_over_a_source_its_parent_freed_says_so():
    """The child's workers could not attach the dataset the parent released meanwhile:
    the error guessed at a module missing in the worker."""
    done = script("""
        import os
        import numpy as np, stoker
        data = stoker.from_arrays(np.zeros((16, 2), np.float32))
        ready, go = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.read(ready, 1)  # the parent has released it
            try:
                with stoker.Loader(data, batch_size=4, workers=1) as loader:
                    list(loader)
            except stoker.LoaderError as error:
                print(str(error).splitlines()[0], flush=True)
            os._exit(0)
        data.release()
        os.write(go, b"x")
        os.waitpid(pid, 0)
    """)
    said = done.stdout.strip()
    assert "no longer exists: the process that made it (pid" in said, done.stdout + done.stderr
    assert "still running) freed it" in said and "Make the source again" in said, said
    assert "module" not in said, said


@pytest.mark.slow
@pytest.mark.ray
def test_a_ray_loader_is_refused_in_a_forked_child_which_leaves_the_parents_epoch_whole():
    """The child's end of the parent's Ray iteration abandoned the tasks in flight on
    the shared board, so the parent's actors skipped batches the parent still needed;
    and Ray's connection, copied by the fork, gave each process the other's objects."""
    pytest.importorskip("ray")
    from test_ray import only_loopback

    if not only_loopback():
        pytest.skip("Ray tests run in a private network namespace (make test)")
    done = script("""
        import os
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        import numpy as np, ray, stoker
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        data = stoker.from_arrays(np.arange(64 * 4, dtype=np.float32).reshape(64, 4))
        def noisy(sample, rng):
            return sample + rng.random(4, dtype=np.float32)
        with stoker.Loader(data, batch_size=4, transform=noisy, seed=1, workers=0) as ref:
            expected = np.concatenate(list(ref))
        loader = stoker.Loader(data, batch_size=4, transform=noisy, seed=1, workers=2,
                               backend="ray", prefetch=8)
        iterator = iter(loader)
        got = [next(iterator)]
        pid = os.fork()
        if pid == 0:
            said = []
            for attempt in (lambda: next(iterator), lambda: next(iter(loader)),
                            lambda: stoker.Loader(data, batch_size=4, workers=1,
                                                  backend="ray")):
                try:
                    attempt()
                    said.append("ran")
                except stoker.LoaderError as error:
                    said.append(str(error)[:90])
            loader.close()
            print("child", said, flush=True)
            os._exit(0)  # not Ray's exit handlers: they would stop the parent's cluster
        os.waitpid(pid, 0)
        got += list(iterator)
        print("parent", np.array_equal(np.concatenate(got), expected), loader.crashes,
              flush=True)
        loader.close()
        ray.shutdown()
    """, timeout=120)
    said = done.stdout + done.stderr
    assert re.search(r"child \[.this iteration began in process", said), said
    assert said.count(") was forked (itself or an ancestor) from process") == 2, said
    assert "parent True []" in said, said


def test_a_killed_consumers_workers_exit_when_their_watch_is_above_fd_1023():
    """A consumer with many files open (start_method="fork" copies them all into the
    workers): the watch on its pidfd went through select(), which takes no fd above
    1023, so the watchdog thread died and the workers outlived the killed consumer."""
    import resource

    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < 1200:
        pytest.skip("the test opens 1100 files: the hard RLIMIT_NOFILE here is lower")
    done = script("""
        import os, resource, signal
        import numpy as np, stoker
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
        held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
        loader = stoker.Loader(stoker.from_arrays(np.zeros((64, 4), np.float32)),
                               batch_size=8, workers=2, start_method="fork")
        next(iter(loader))
        print(*loader.worker_pids, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    workers = [int(pid) for pid in done.stdout.split()]
    try:
        assert len(workers) == 2, done.stdout + done.stderr
        assert wait_until(lambda: all(gone(pid) for pid in workers), 10), workers
    finally:
        for pid in workers:
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("reentrant", [False, True])
def test_a_process_lock_held_by_a_thread_at_the_fork_is_free_in_the_child(reentrant):
    import threading

    from stoker._fork import ProcessLock

    lock, held, done = ProcessLock(reentrant=reentrant), threading.Event(), threading.Event()

    def hold():
        with lock:
            held.set()
            done.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    held.wait(10)
    child = os.fork()
    if child == 0:
        os._exit(0 if lock.acquire(timeout=5) else 1)
    _, status = os.waitpid(child, 0)
    assert not lock.acquire(blocking=False)  # the parent's is still held by its thread
    done.set()
    thread.join()
    assert os.waitstatus_to_exitcode(status) == 0
