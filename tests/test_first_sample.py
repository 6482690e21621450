"""User code never runs in the consumer (workers > 0): the batch layout is learnt from
a worker, so a transform that kills, exits or hangs on the very first sample is a
WorkerCrashed in the consumer, as on the millionth, and resources created lazily by a
source or transform stay in the workers."""

from __future__ import annotations

import ctypes
import os
import sys
import threading
import time

import numpy as np
import pytest

import stoker
from conftest import gone, wait_until


def segfault(sample, rng):
    ctypes.string_at(0)


def exit_zero(sample, rng):
    os._exit(0)


def exit_three(sample, rng):
    sys.exit(3)


def hang(sample, rng):
    time.sleep(3600)


def data():
    return stoker.from_arrays(np.zeros((40, 4), np.float32), np.arange(40))


@pytest.mark.parametrize(("transform", "what"), [
    (segfault, "SIGSEGV"), (exit_zero, "exited with code 0"), (exit_three, "exited with code 3"),
])
@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
def test_a_transform_that_kills_its_process_on_the_first_sample(transform, what, start_method):
    with stoker.Loader(data(), batch_size=8, transform=transform, workers=2,
                       start_method=start_method) as loader:
        started = time.monotonic()
        with pytest.raises(stoker.WorkerCrashed, match=what) as caught:
            list(loader)
        assert "first sample" in str(caught.value)
        assert time.monotonic() - started < 60
        pids = loader.worker_pids
    assert wait_until(lambda: all(gone(pid) for pid in pids), 10)


def test_a_transform_that_hangs_on_the_first_sample_is_caught_by_timeout():
    with stoker.Loader(data(), batch_size=8, transform=hang, workers=2, timeout=3) as loader:
        started = time.monotonic()
        with pytest.raises(stoker.WorkerCrashed, match="no progress for 3"):
            loader.layout  # noqa: B018  (what Keras' shape peeks ask for first)
        assert time.monotonic() - started < 30


def test_the_first_sample_is_recomputed_by_a_replacement():
    with stoker.Loader(data(), batch_size=8, transform=first_call_dies, workers=2,
                       max_worker_restarts=1, start_method="spawn") as loader:
        labels = np.concatenate([labels for _, labels in loader])
        assert sorted(labels.tolist()) == list(range(40)) and len(loader.crashes) == 1



def first_call_dies(sample, rng):
    """Kills its process on its first call in the first worker that makes a sample (a
    marker file keeps the replacement alive)."""
    marker = os.environ["STOKER_TEST_MARKER"]
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    return sample


@pytest.fixture(autouse=True)
def marker(tmp_path, monkeypatch):
    monkeypatch.setenv("STOKER_TEST_MARKER", str(tmp_path / "died"))


class LazyFileSource:
    """A source that opens its file on first use (the h5py pattern): the handle must
    be created in each worker, never in the consumer."""

    def __init__(self, path: str, count: int) -> None:
        self.path, self.count, self._file = path, count, None
        self._lock: threading.Lock | None = None

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int):
        if self._file is None:
            self._file = open(self.path, "rb")
            self._lock = threading.Lock()
        with self._lock:
            self._file.seek(index * 4)
            value = np.frombuffer(self._file.read(4), np.float32)
        return value, np.int64(index)


def test_lazy_file_handles_and_locks_stay_in_the_workers(tmp_path):
    path = tmp_path / "values.bin"
    np.arange(30, dtype=np.float32).tofile(path)
    source = LazyFileSource(str(path), 30)
    with stoker.Loader(source, batch_size=8, workers=2, shuffle=False) as loader:
        assert loader.layout.fields[0].shape == (1,)
        values = np.concatenate([v[:, 0] for v, _ in loader])
    np.testing.assert_array_equal(values, np.arange(30, dtype=np.float32))
    assert source._file is None  # never opened here


def returns_an_object(sample, rng):
    return object()


def test_an_unfit_first_output_is_a_transform_error_not_a_crash():
    """Whatever BatchLayout.of refuses (here: not an array at all) is that sample's
    TransformError in the consumer; the worker lives on."""
    with stoker.Loader(data(), batch_size=8, transform=returns_an_object, workers=2) as loader:
        with pytest.raises(stoker.TransformError, match="does not fit the batch"):
            list(loader)
        assert loader.crashes == []
