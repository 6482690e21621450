"""Failures with real processes and real signals: each raises the right error within a
bounded time and leaves no process and no shared memory behind."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import psutil
import pytest

import stoker
from conftest import gone, noisy, own_segments, wait_until
from stoker.errors import RemoteTraceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fails_on_17(sample, rng):
    image, label = sample
    if label == 17:
        raise KeyError(f"bad label {label}")
    return image, label


@pytest.mark.parametrize("workers", [0, 2])
def test_transform_error_names_the_sample_and_keeps_the_cause(images, workers):
    data = stoker.from_arrays(*images)
    with stoker.Loader(data, batch_size=16, transform=fails_on_17, workers=workers) as loader:
        with pytest.raises(stoker.TransformError) as caught:
            list(loader)
    error = caught.value
    assert error.index == 17 and "sample 17" in str(error) and "fails_on_17" in str(error)
    assert isinstance(error.__cause__, KeyError)
    if workers:
        assert isinstance(error.__cause__.__cause__, RemoteTraceback)
        assert "fails_on_17" in error.__cause__.__cause__.text


def test_the_loader_is_usable_after_a_transform_error(images):
    data = stoker.from_arrays(*images)
    with stoker.Loader(data, batch_size=16, transform=fails_on_17, workers=2) as loader:
        with pytest.raises(stoker.TransformError):
            list(loader)
        with pytest.raises(stoker.TransformError):
            list(loader)


def shape_changes_at_40(sample, rng):
    image, label = sample
    return (image[:4] if label == 40 else image), label


def returns_none_at_40(sample, rng):
    return None if sample[1] == 40 else sample


def float16_labels(sample, rng):
    image, label = sample
    return image, (np.float16(label) if label == 40 else label)


@pytest.mark.parametrize(("transform", "match"), [
    (shape_changes_at_40, r"shape \(4, 8, 1\)"),
    (returns_none_at_40, "tuple of 2"),
    (float16_labels, "dtype float16"),
])
@pytest.mark.parametrize("workers", [0, 2])
def test_a_transform_changing_its_output_mid_epoch_is_an_error(images, transform, match, workers):
    data = stoker.from_arrays(*images)
    with stoker.Loader(data, batch_size=16, transform=transform, workers=workers) as loader:
        with pytest.raises(stoker.TransformError, match=match) as caught:
            list(loader)
    assert caught.value.index == 40


class Unreadable:
    """What numpy cannot read: a CUDA tensor, one that requires grad."""

    def __array__(self, dtype=None, copy=None):
        raise TypeError("can't convert cuda:0 device type tensor to numpy")


class StrRaises(Exception):
    def __str__(self):
        raise RuntimeError("the message cannot be formatted")


def unreadable_at(victim, many=False):
    def transform(sample, rng):
        image, label = sample
        out = (Unreadable() if label == victim else image, label)
        return stoker.Many([out]) if many else out
    return transform


def str_raises_at(victim):
    def transform(sample, rng):
        if sample[1] == victim:
            raise StrRaises("x")
        return sample
    return transform


@pytest.mark.parametrize("case", ["later sample", "first sample", "Many", "str raises"])
@pytest.mark.parametrize("workers", [0, 2])
def test_what_the_transform_gives_or_raises_is_named_whatever_it_is(images, case, workers):
    """An output numpy cannot read (its __array__ raises TypeError), on any sample, and an
    exception whose __str__ raises, are that sample's TransformError (they killed the
    worker: WorkerCrashed with no index; inline, a bare TypeError)."""
    victim = 0 if case == "first sample" else 40
    transform = (str_raises_at(victim) if case == "str raises"
                 else unreadable_at(victim, many=case == "Many"))
    data = stoker.from_arrays(*images)
    with stoker.Loader(data, batch_size=16, transform=transform, workers=workers,
                       shuffle=False, max_outputs=2 if case == "Many" else None) as loader:
        with pytest.raises(stoker.TransformError) as caught:
            list(loader)
        assert not loader.crashes
    error = caught.value
    assert error.index == victim and f"sample {victim}" in str(error)
    if case == "str raises":
        assert "StrRaises: <its str() raised RuntimeError>" in str(error)
    else:
        assert ("element 0 is a Unreadable that numpy cannot read (TypeError: can't convert "
                "cuda:0") in str(error)
        assert "cpu().numpy()" in str(error)


def test_a_transform_returning_none_from_the_start_says_so(images):
    data = stoker.from_arrays(*images)

    def forgot_return(sample, rng):
        sample[0].sum()

    with stoker.Loader(data, batch_size=16, transform=forgot_return, workers=2) as loader:
        with pytest.raises(stoker.TransformError, match="forget `return`"):
            next(iter(loader))


def test_writing_into_a_shared_sample_gets_a_hint(images):
    data = stoker.from_arrays(*images)

    def in_place(sample, rng):
        sample[0][0] = 0
        return sample

    with stoker.Loader(data, batch_size=16, transform=in_place, workers=2) as loader:
        with pytest.raises(stoker.TransformError, match=r"image.copy\(\)"):
            next(iter(loader))


def test_a_source_that_raises_is_reported_with_its_index():
    class Broken:
        def __len__(self):
            return 20

        def __getitem__(self, i):
            if i == 13:
                raise OSError("disk read failed")
            return np.zeros(3, np.float32)

    with stoker.Loader(Broken(), batch_size=4, workers=2) as loader:
        with pytest.raises(stoker.TransformError, match="reading it from the source") as caught:
            list(loader)
    assert caught.value.index == 13 and isinstance(caught.value.__cause__, OSError)


def slow(sample, rng):
    time.sleep(0.002)
    return noisy(sample, rng)


def kill_after_first_batch(loader, sig):
    iterator = iter(loader)
    next(iterator)
    os.kill(loader.worker_pids[0], sig)
    started = time.monotonic()
    return iterator, started


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_worker_raises_worker_crashed_quickly(images, sig):
    data = stoker.from_arrays(*images)
    with stoker.Loader(data, batch_size=8, transform=slow, workers=2) as loader:
        iterator, started = kill_after_first_batch(loader, sig)
        with pytest.raises(stoker.WorkerCrashed) as caught:
            for _ in iterator:
                pass
        assert time.monotonic() - started < 10
        pids = loader.worker_pids
        crashed = loader.crashes
    assert caught.value.exitcode == -sig and caught.value.signal == sig
    assert "max_worker_restarts" in str(caught.value)
    assert not pids  # the pool was shut down
    assert [code for _, code in crashed] == [-sig]
    assert loader.crashes == crashed  # the record outlives close() (it was emptied)


def segfault(sample, rng):
    if sample[1] == 50:
        import ctypes

        ctypes.string_at(0)
    return sample


def exits(sample, rng):
    if sample[1] == 50:
        os._exit(3)
    return sample


@pytest.mark.parametrize(("transform", "exitcode"), [(segfault, -signal.SIGSEGV), (exits, 3)])
def test_native_crashes_and_exits_raise_worker_crashed(images, transform, exitcode):
    data = stoker.from_arrays(*images)
    with stoker.Loader(data, batch_size=8, transform=transform, workers=2) as loader:
        with pytest.raises(stoker.WorkerCrashed) as caught:
            list(loader)
    assert caught.value.exitcode == exitcode


def test_a_crash_after_a_resume_names_the_batch_of_the_epoch(images):
    """Red-team finding: the batch named was the run's (counted from the resume point),
    not the epoch's; sample 50 is in batch 6 of batch_size 8 whatever came before."""
    data = stoker.from_arrays(*images)
    with stoker.Loader(data, batch_size=8, transform=exits, workers=2, shuffle=False) as loader:
        epoch = iter(loader)
        for _ in range(3):
            next(epoch)
        del epoch  # the cursor stays at batch 3; the next run starts there
        with pytest.raises(stoker.WorkerCrashed, match="while producing batch 6 of epoch 0"):
            list(loader)


def test_the_loader_starts_new_workers_after_a_crash(images):
    data = stoker.from_arrays(*images)
    with stoker.Loader(data, batch_size=8, transform=slow, workers=2, seed=4) as loader:
        iterator, _ = kill_after_first_batch(loader, signal.SIGKILL)
        with pytest.raises(stoker.WorkerCrashed):
            list(iterator)
        loader.set_epoch(0)
        labels = np.concatenate([labels for _, labels in loader])
    assert sorted(labels.tolist()) == list(range(len(images[0])))


@pytest.mark.parametrize("workers", [1, 2])
def test_restarted_workers_recompute_exactly_what_was_lost(images, workers):
    data = stoker.from_arrays(*images)
    with stoker.Loader(data, batch_size=8, transform=slow, seed=9, workers=0) as loader:
        reference = [tuple(b) for b in loader]
    with stoker.Loader(
        data, batch_size=8, transform=slow, seed=9, workers=workers, max_worker_restarts=2
    ) as loader:
        iterator = iter(loader)
        got = [next(iterator)]
        first = loader.worker_pids[0]
        os.kill(first, signal.SIGKILL)
        # Batches the worker sent before it died are delivered first; take them until
        # its death is seen and it is replaced (a later batch of the ring is its, so the
        # death is always seen), else the second kill could hit the dead one again.
        got.append(next(iterator))
        while first in loader.worker_pids:
            got.append(next(iterator))
        os.kill(loader.worker_pids[-1], signal.SIGKILL)
        got.extend(iterator)
        assert len(loader._executor.crashes) == 2
    assert len(got) == len(reference)
    for (a, b), (c, d) in zip(got, reference, strict=True):
        assert np.array_equal(a, c) and np.array_equal(b, d)


def test_a_stopped_worker_is_treated_as_hung_after_the_timeout(images):
    data = stoker.from_arrays(*images)
    with stoker.Loader(data, batch_size=8, transform=slow, workers=2, timeout=2) as loader:
        iterator, started = kill_after_first_batch(loader, signal.SIGSTOP)
        with pytest.raises(stoker.WorkerCrashed, match="no progress for 2 s"):
            list(iterator)
        assert time.monotonic() - started < 15


class _BlocksWhenLoaded:
    """A transform that blocks forever when a worker unpickles it (as a module that
    waits on a lock or a network share might)."""

    def __init__(self):
        self.loaded = False

    def __call__(self, sample, rng):
        return sample

    def __setstate__(self, state):
        time.sleep(3600)


def test_a_worker_that_never_starts_is_an_error_not_a_hang(images):
    def workers() -> set[int]:
        """Descendant processes other than multiprocessing's long-lived helpers."""
        found = set()
        for child in psutil.Process().children(recursive=True):
            try:
                if not any(helper in " ".join(child.cmdline())
                           for helper in ("forkserver", "resource_tracker")):
                    found.add(child.pid)
            except psutil.NoSuchProcess:
                pass
        return found

    data = stoker.from_arrays(*images)
    before = workers()
    started = time.monotonic()
    with stoker.Loader(data, batch_size=8, transform=_BlocksWhenLoaded(), workers=2,
                       start_timeout=2) as loader:
        with pytest.raises(stoker.LoaderError, match=r"did not start within 2 s"):
            next(iter(loader))
    assert time.monotonic() - started < 20
    assert wait_until(lambda: not any(gone(pid) is False for pid in workers() - before), 10)


def run_script(body: str, timeout: float = 120, env_extra: dict | None = None,
               args: tuple[str, ...] = (), **popen):
    script = textwrap.dedent(body)
    env = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "src"), "PYTHONUNBUFFERED": "1",
           **(env_extra or {})}
    return subprocess.Popen(
        [sys.executable, "-c", script, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=env, **popen,
    )


SLOW_LOOP = """
    import os, sys, time, numpy as np, stoker
    def slow(sample, rng):
        time.sleep(0.01)
        return sample
    data = stoker.from_arrays(np.zeros((10000, 4), np.float32), np.arange(10000))
    with stoker.Loader(data, batch_size=16, transform=slow, workers=2) as loader:
        for i, batch in enumerate(loader):
            if i == 1:
                print(os.getpid(), *loader.worker_pids, flush=True)
"""


def test_ctrl_c_in_the_consumer_leaves_nothing_behind():
    process = run_script(SLOW_LOOP)
    pids = [int(p) for p in process.stdout.readline().split()]
    assert len(pids) == 3, process.stderr.read()
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert "KeyboardInterrupt" in stderr
    assert wait_until(lambda: all(gone(pid) for pid in pids[1:]), 10)
    assert own_segments(pids[0]) == set()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_workers_exit_when_the_consumer_dies(sig):
    process = run_script(SLOW_LOOP)
    pids = [int(p) for p in process.stdout.readline().split()]
    assert len(pids) == 3, process.stderr.read()
    process.send_signal(sig)
    process.wait(timeout=30)
    assert wait_until(lambda: all(gone(pid) for pid in pids[1:]), 10), "orphaned workers"
    assert wait_until(lambda: own_segments(pids[0]) == set(), 20), "segments left behind"


def test_a_killed_consumers_forkserver_folder_is_swept_and_a_live_one_kept(tmp_path):
    env = {"TMPDIR": str(tmp_path)}

    def started() -> tuple[subprocess.Popen, list[int]]:
        process = run_script(SLOW_LOOP, env_extra=env)
        pids = [int(p) for p in process.stdout.readline().split()]
        assert len(pids) == 3, process.stderr.read()
        return process, pids

    def folders() -> set[str]:
        return {p.name for p in tmp_path.glob("pymp-*")}

    killed, pids = started()
    killed.kill()
    killed.wait(timeout=30)
    assert wait_until(lambda: all(gone(pid) for pid in pids[1:]), 10)
    stale = folders()
    assert len(stale) == 1  # what SIGKILL leaves: multiprocessing cannot remove it
    live, _ = started()
    try:
        mine = folders() - stale
        assert folders() == mine and len(mine) == 1  # the stale one went, its own stayed
        third = run_script("""
            import numpy as np, stoker
            with stoker.Loader(stoker.from_arrays(np.zeros((8, 2))), batch_size=4,
                               workers=1) as loader:
                print(len(list(loader)))
        """, env_extra=env)
        out, err = third.communicate(timeout=120)
        assert out.strip() == "2", err
        assert mine <= folders()  # a live forkserver's folder is never touched
    finally:
        live.send_signal(signal.SIGINT)
        live.communicate(timeout=30)
    assert wait_until(lambda: folders() == set(), 10)


def test_a_live_forkserver_in_another_network_namespace_is_kept(tmp_path):
    """A program in another network namespace (a container, ``unshare -n``) sharing this
    /tmp: its listener is not in our /proc/net/unix, yet its folder is live."""
    import shutil as _shutil

    if _shutil.which("unshare") is None or subprocess.run(
            ["unshare", "-n", "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot create a network namespace here (needs root)")
    env = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "src"), "PYTHONUNBUFFERED": "1",
           "TMPDIR": str(tmp_path)}
    live = subprocess.Popen(["unshare", "-n", sys.executable, "-c", textwrap.dedent(SLOW_LOOP)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        pids = [int(p) for p in live.stdout.readline().split()]
        assert len(pids) == 3, live.stderr.read()
        theirs = {p.name for p in tmp_path.glob("pymp-*")}
        assert len(theirs) == 1
        from stoker.executors._spawning import sweep_stale_listener_dirs

        assert sweep_stale_listener_dirs(str(tmp_path)) == []
        assert {p.name for p in tmp_path.glob("pymp-*")} == theirs
    finally:
        live.send_signal(signal.SIGINT)
        live.communicate(timeout=30)


@pytest.mark.parametrize("start_method", ["spawn", "forkserver"])
def test_a_script_without_a_main_guard_runs_and_is_not_re_imported(start_method, tmp_path):
    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent(f"""
        import random, numpy as np, stoker
        print("script ran", flush=True)
        def distort(sample):
            image, label = sample
            return image + random.random() + np.random.random(), label
        data = stoker.from_arrays(np.zeros((64, 3), np.float32), np.arange(64))
        sums = []
        for workers in (0, 2):
            with stoker.Loader(data, batch_size=8, transform=distort, workers=workers,
                               start_method={start_method!r}) as loader:
                sums.append(sum(float(x.sum()) for x, _ in loader))
        print("sums equal", sums[0] == sums[1], flush=True)
    """))
    env = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "src")}
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("script ran") == 1
    assert "sums equal True" in result.stdout
