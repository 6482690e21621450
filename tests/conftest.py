"""Shared fixtures. Every test is checked for leaked shared-memory segments."""

from __future__ import annotations

import gc
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest


def pytest_configure(config: pytest.Config) -> None:
    """Ctrl-C reaches the scripts the tests start. A shell without job control starts a
    background command (``cmd &``, nohup) with SIGINT ignored, and every child inherits
    that, so a Python child never gets its KeyboardInterrupt and the tests that send
    SIGINT would wait for nothing; Python's own handler here makes children start with
    the default again."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


SHM = Path("/dev/shm")


def own_segments(pid: int | None = None) -> set[str]:
    prefix = f"stoker_{pid if pid is not None else os.getpid()}_"
    return {p.name for p in SHM.glob(prefix + "*")} if SHM.exists() else set()


def wait_until(predicate, seconds: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture(autouse=True)
def no_leaked_segments():
    """Every test must leave /dev/shm as it found it (after garbage collection).

    A full collection costs about 0.2 s once TensorFlow and PyTorch are imported, so it
    runs only when a segment is left: what garbage still holds must then go with it.
    (The test before this one was held to the same, so ``before`` holds no garbage's.)"""
    before = own_segments()
    yield
    if own_segments() <= before:
        return
    gc.collect()
    assert wait_until(lambda: own_segments() <= before, 5), (
        f"leaked shared memory: {sorted(own_segments() - before)}"
    )


@pytest.fixture
def images():
    """A small (image, label) data set: label i is the sample's own index."""
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(203, 8, 8, 1), dtype=np.uint8)
    y = np.arange(203, dtype=np.int64)
    return x, y


def noisy(sample, rng):
    """A transform that uses its rng: flips and adds noise."""
    image, label = sample
    if rng.random() < 0.5:
        image = image[:, ::-1]
    noise = rng.normal(0.0, 8.0, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8), label


def as_float(sample, rng):
    """uint8 -> float32 in [0, 1] with a little noise (kept here: importing it must not
    import Keras in the workers)."""
    image, label = sample
    image = image.astype(np.float32) / 255 + rng.normal(0, 0.01, image.shape).astype(np.float32)
    return image, label


@pytest.fixture(scope="session")
def question():
    """The question's own code (benchmarks/question.py): its distort_sample and
    question_transform, shared by tests and benchmarks. Its folder goes on sys.path,
    which worker processes inherit, so they can unpickle its functions."""
    import importlib

    folder = str(Path(__file__).resolve().parent.parent / "benchmarks")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module("question")


@pytest.fixture(scope="session", autouse=True)
def rendered_data_cache(tmp_path_factory):
    """The built-in data set is rendered once per test session into a temporary cache
    (never the user's ~/.cache); subprocesses inherit it through the environment."""
    folder = tmp_path_factory.mktemp("stoker-cache")
    previous = os.environ.get("STOKER_CACHE")
    os.environ["STOKER_CACHE"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("STOKER_CACHE", None)
    else:
        os.environ["STOKER_CACHE"] = previous
