"""Chaos: workers killed at random points across many epochs (one or all at once),
Ctrl-C during Keras fit(), and many create/iterate/close cycles that must not leak."""

from __future__ import annotations

import gc
import os
import random
import signal
import threading
import time

import numpy as np
import psutil
import pytest

import stoker
from conftest import gone, noisy, own_segments, wait_until
from epochs import epochs_of
from light_transforms import flip_noise
from test_failures import run_script

pytestmark = pytest.mark.slow


def slowish(sample, rng):
    time.sleep(0.002)
    return noisy(sample, rng)


@pytest.mark.parametrize("all_at_once", [False, True])
def test_random_kills_across_epochs_change_nothing(images, all_at_once):
    """A thread kills one worker (or every worker) at random moments; the epochs are
    still bit-identical to the inline reference, every sample exactly once."""
    x, y = images
    data = stoker.from_arrays(x, y)
    rng = random.Random(all_at_once)
    with stoker.Loader(data, batch_size=8, transform=slowish, workers=2, seed=3,
                       max_worker_restarts=1000) as loader:
        stop = threading.Event()
        taken = [0]

        def chaos():
            last = -1
            while not stop.wait(rng.uniform(0.05, 0.3)):
                # At random moments, but never twice without a batch in between: on a
                # loaded machine replacements take longer to start than the 50-300 ms
                # between kills, and killing them all again before they could make
                # progress would only test how fast the machine is.
                if taken[0] == last:
                    continue
                last = taken[0]
                pids = loader.worker_pids
                for pid in (pids if all_at_once else pids[:1] and [rng.choice(pids)]):
                    try:
                        os.kill(pid, rng.choice([signal.SIGKILL, signal.SIGSEGV]))
                    except ProcessLookupError:
                        pass

        killer = threading.Thread(target=chaos, daemon=True)
        killer.start()
        try:
            got = []
            # Four epochs, and more (up to 20) until three kills have landed: how many
            # land in four depends on the machine's speed, which is not under test.
            while len(got) < 4 or (len(loader.crashes) < 3 and len(got) < 20):
                got.append([])
                for batch in loader:
                    got[-1].append(tuple(np.copy(a) for a in batch))
                    taken[0] += 1
        finally:
            stop.set()
            killer.join()
        assert len(loader.crashes) >= 3
    with stoker.Loader(data, batch_size=8, transform=slowish, workers=0, seed=3) as reference:
        expected = epochs_of(reference, len(got))
    for epoch_got, epoch_expected in zip(got, expected, strict=True):
        assert len(epoch_got) == len(epoch_expected)
        for (a, b), (c, d) in zip(epoch_got, epoch_expected, strict=True):
            np.testing.assert_array_equal(a, c)
            np.testing.assert_array_equal(b, d)
        assert sorted(np.concatenate([b for _, b in epoch_got]).tolist()) == list(range(len(x)))


FIT_SCRIPT = """
    import os, sys, time, numpy as np, stoker, keras
    def slow(sample, rng):
        time.sleep(0.005)
        image, label = sample
        return image.astype(np.float32), label
    data = stoker.from_arrays(np.zeros((4000, 8, 8, 1), np.uint8), np.zeros(4000, np.int64))
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(2, activation="softmax")])
    model.compile(loss="sparse_categorical_crossentropy")

    class Announce(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 2:
                print(os.getpid(), *loader.worker_pids, flush=True)

    if sys.argv[1] == "keras":  # closed by its with block as the interrupt unwinds
        with stoker.Loader(data, batch_size=32, transform=slow, workers=2) as loader:
            model.fit(loader.keras(), epochs=5, verbose=0, callbacks=[Announce()])
    else:  # never closed by the script: tf.data's thread is still reading it at exit
        loader = stoker.Loader(data, batch_size=32, transform=slow, workers=2)
        model.fit(loader.tf_dataset(), shuffle=False, epochs=5, verbose=0,
                  callbacks=[Announce()])
"""


@pytest.mark.parametrize("sig, feed", [(signal.SIGINT, "keras"), (signal.SIGTERM, "keras"),
                                       (signal.SIGINT, "tf_dataset")])
def test_interrupting_fit_leaves_no_process_and_no_segment(sig, feed):
    """Ctrl-C (or a kill) during fit(): the process exits, its workers and segments go.
    Before stoker wound tf.data down at exit (adapters/_tf_exit.py), Ctrl-C froze the
    process at shutdown about one time in four."""
    process = run_script(FIT_SCRIPT, args=(feed,), env_extra={"TF_CPP_MIN_LOG_LEVEL": "3"})
    try:
        pids = [int(p) for p in process.stdout.readline().split()]
        assert len(pids) == 3, process.stderr.read()[-3000:]
        process.send_signal(sig)
        if sig == signal.SIGINT:  # Python's KeyboardInterrupt unwinds fit() and the loader
            _, stderr = process.communicate(timeout=60)
            assert "KeyboardInterrupt" in stderr
        else:  # no handler: the process dies on the spot, its helpers clean up after it
            process.wait(timeout=60)
    finally:
        process.kill()
        process.wait()
    assert wait_until(lambda: all(gone(pid) for pid in pids[1:]), 10), "orphaned workers"
    assert wait_until(lambda: own_segments(pids[0]) == set(), 20), "segments left behind"


def test_many_loader_cycles_leak_nothing(images):
    """Create, iterate and close (or just drop) loaders many times: processes, file
    descriptors, shared-memory segments and memory stay flat."""
    x, y = images
    me = psutil.Process()

    def children() -> int:
        return sum(1 for c in me.children(recursive=True)
                   if "forkserver" not in " ".join(c.cmdline())
                   and "resource_tracker" not in " ".join(c.cmdline()))

    def cycle(i: int) -> None:
        data = stoker.from_arrays(x, y)
        loader = stoker.Loader(data, batch_size=64, transform=flip_noise, workers=1 + i % 2)
        next(iter(loader))
        if i % 3:
            loader.close()
        data.release() if i % 3 else None
        del loader, data  # every third one only dropped: the finalizers clean up

    for i in range(20):  # warm up: forkserver, imports, allocator pools
        cycle(i)
    gc.collect()
    fds, segments, rss = me.num_fds(), own_segments(), me.memory_info().rss
    for i in range(1000):
        cycle(i)
    gc.collect()
    assert wait_until(lambda: children() == 0, 10), "worker processes left behind"
    assert wait_until(lambda: own_segments() == segments, 10), "segments left behind"
    assert me.num_fds() <= fds + 2
    assert me.memory_info().rss - rss < 64 * 2**20, "memory grew"  # 64 KiB a cycle at most
