"""The worker contract: user code runs in a worker as it would at home, so batches are
bit-identical for any worker count, whatever the source and transform do."""

from __future__ import annotations

import numpy as np
import pytest

import stoker
from stoker.augment import Rotate


class ReusingSource:
    """Refills and returns one buffer on every call, as readers that decode into a
    scratch array do (labels are fresh, images are the same object each time)."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._image = np.zeros((16, 16), np.uint8)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int):
        self._image[...] = index
        return self._image, np.int64(index)


def per_sample(sample, rng):
    """The same rotation, not batch-capable: the reference path."""
    return ROTATE(sample, rng)


ROTATE = Rotate((-20, 20))


@pytest.mark.parametrize("workers", [0, 2])
def test_a_source_reusing_its_buffer_gives_the_right_images_on_the_batch_path(workers):
    with stoker.Loader(ReusingSource(48), batch_size=16, transform=per_sample, workers=0,
                       seed=1) as reference:
        expected = [tuple(np.copy(a) for a in batch) for batch in reference]
    with stoker.Loader(ReusingSource(48), batch_size=16, transform=ROTATE, workers=workers,
                       seed=1) as loader:
        got = [tuple(np.copy(a) for a in batch) for batch in loader]
    for (images, labels), (want_images, want_labels) in zip(got, expected, strict=True):
        np.testing.assert_array_equal(labels, want_labels)
        np.testing.assert_array_equal(images, want_images)
    # and the images differ from each other: each is its own sample's
    assert len({int(images[i].max()) for images, _ in got for i in range(len(images))}) > 40


def torch_noise(sample):
    """A legacy transform drawing from torch's global generator, as torchvision's do."""
    import torch

    image, label = sample
    return image + torch.rand(image.shape).numpy().astype(np.float32), label


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_a_legacy_transform_drawing_from_torch_is_reproducible(workers):
    torch = pytest.importorskip("torch")
    data = stoker.from_arrays(np.zeros((40, 4), np.float32), np.arange(40))
    runs = []
    for seed in (5, 5, 6):
        with stoker.Loader(data, batch_size=8, transform=torch_noise, workers=workers,
                           seed=seed) as loader:
            runs.append(np.concatenate([images for images, _ in loader]))
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])
    with stoker.Loader(data, batch_size=8, transform=torch_noise, workers=0, seed=5) as inline:
        np.testing.assert_array_equal(np.concatenate([i for i, _ in inline]), runs[0])
    before = torch.get_rng_state()
    with stoker.Loader(data, batch_size=8, transform=torch_noise, workers=0, seed=5) as inline:
        list(inline)
    assert torch.equal(torch.get_rng_state(), before)  # the caller's generator untouched


def test_a_registered_global_generator_is_seeded_per_sample_in_every_worker(monkeypatch):
    import light_transforms as lt
    from stoker import plan

    data = stoker.from_arrays(np.zeros((40, 4), np.float32), np.arange(40))

    def epoch(workers: int, seed: int = 5) -> np.ndarray:
        with stoker.Loader(data, batch_size=8, transform=lt.own_generator_noise,
                           workers=workers, seed=seed) as loader:
            return np.concatenate([images for images, _ in loader])

    monkeypatch.setattr(plan, "_SEEDERS", [])  # this test's registration only
    unseeded = [epoch(0), epoch(2)]
    assert not np.array_equal(*unseeded)  # the hole: a generator stoker does not know
    assert stoker.register_global_rng(lt.seed_own_generator) is lt.seed_own_generator
    stoker.register_global_rng(lt.seed_own_generator)  # twice: no effect
    assert plan.global_rng_seeders() == (lt.seed_own_generator,)
    runs = [epoch(0), epoch(1), epoch(2), epoch(2)]
    for run in runs[1:]:
        np.testing.assert_array_equal(run, runs[0])
    assert not np.array_equal(epoch(2, seed=6), runs[0])
    with pytest.raises(TypeError, match="seeder"):
        stoker.register_global_rng(3)


EXCEPTIONS_SCRIPT = r"""
import sys
import numpy as np
import stoker


class MainError(Exception):
    pass


class TwoArguments(Exception):
    def __init__(self, code, where):
        super().__init__(f"{code} at {where}")
        self.code, self.where = code, where


def raise_main(sample, rng):
    raise MainError("from __main__")


def raise_two(sample, rng):
    raise TwoArguments(7, "the pump")


def interrupt(sample, rng):
    raise KeyboardInterrupt


data = stoker.from_arrays(np.zeros((16, 2), np.float32))
for start_method in ("forkserver", "spawn"):
    for transform, check in (
        (raise_main, lambda e: type(e) is MainError and str(e) == "from __main__"),
        (raise_two, lambda e: type(e) is TwoArguments and (e.code, e.where) == (7, "the pump")),
        (interrupt, lambda e: type(e) is KeyboardInterrupt),
    ):
        with stoker.Loader(data, batch_size=4, transform=transform, workers=2,
                           start_method=start_method) as loader:
            try:
                list(loader)
            except stoker.TransformError as error:
                assert check(error.__cause__), (start_method, type(error.__cause__), error)
                assert "Traceback in the worker" in str(error)
            else:
                raise AssertionError("no error")
print("OK")
"""


def test_exceptions_keep_their_type_across_the_process_boundary(tmp_path):
    """A class defined in the script's __main__, one whose __init__ does not take its
    args back, and a KeyboardInterrupt raised by user code all reach the consumer as
    themselves (as the cause of the TransformError), not as stand-ins."""
    import subprocess
    import sys

    script = tmp_path / "exceptions.py"
    script.write_text(EXCEPTIONS_SCRIPT)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0 and done.stdout.strip() == "OK", done.stderr[-4000:]


def test_an_exception_type_unknown_here_keeps_its_name():
    from stoker.executors.failures import exception_bytes, rebuild_exception

    class Local(Exception):
        pass

    data = exception_bytes(Local("gone"))
    record = __import__("pickle").loads(data)
    record["whole"], record["module"] = None, "no.such.module"
    error = rebuild_exception(__import__("pickle").dumps(record), "Local: gone", "tb")
    assert isinstance(error, RuntimeError) and error.original_type.endswith("Local")
    assert "gone" in str(error) and "Local" in str(error)


def ten_ms(sample, rng):
    import time

    time.sleep(0.01)
    return sample


def test_timeout_is_about_progress_not_the_size_of_a_chunk():
    """batch_size=512 and 10 ms a sample: each worker's chunk takes 2.6 s, more than
    timeout=2, yet every sample finishes well within it; nothing is killed."""
    data = stoker.from_arrays(np.zeros((1024, 2), np.float32), np.arange(1024))
    with stoker.Loader(data, batch_size=512, transform=ten_ms, workers=2, timeout=2) as loader:
        labels = np.concatenate([labels for _, labels in loader])
        assert sorted(labels.tolist()) == list(range(1024)) and loader.crashes == []


def test_huge_batches_and_a_stopped_worker_never_block_a_send():
    """16384 indices a batch would fill the pipe to a stopped worker (64 KiB); the
    indices travel in shared memory instead, so the consumer keeps noticing the hang
    (timeout=), replaces the worker and finishes the epoch exactly. (A transform of a few
    µs a sample: every batch is then shared by both workers, so the stopped one holds
    work.)"""
    import functools
    import os
    import signal
    import time

    n = 4 * 16384
    data = stoker.from_arrays(np.zeros((n, 1), np.uint8), np.arange(n))
    with stoker.Loader(data, batch_size=16384, workers=2, timeout=3, max_worker_restarts=1,
                       prefetch=2, transform=functools.partial(scaled, factor=1)) as loader:
        epoch = iter(loader)
        labels = [next(epoch)[1]]
        os.kill(loader.worker_pids[0], signal.SIGSTOP)
        started = time.monotonic()
        labels += [batch[1] for batch in epoch]
        assert time.monotonic() - started < 60
        assert sorted(np.concatenate(labels).tolist()) == list(range(n))
        assert len(loader.crashes) == 1
        stopped = loader.worker_pids[1]
        os.kill(stopped, signal.SIGSTOP)
        closing = time.monotonic()
    assert time.monotonic() - closing < 20  # close() with a stopped worker returns


def scaled(sample, rng, *, factor):
    image, label = sample
    return image * factor, label


@pytest.mark.parametrize("workers", [0, 2])
def test_settings_passed_with_partial_reach_the_workers(workers):
    """What docs/errors.md advises for run-time settings: they travel with the transform."""
    import functools

    data = stoker.from_arrays(np.ones((16, 2), np.float32), np.arange(16))
    transform = functools.partial(scaled, factor=3.0)
    with stoker.Loader(data, batch_size=8, transform=transform, workers=workers) as loader:
        assert all(np.all(images == 3.0) for images, _ in loader)


def test_workers_import_torch_only_for_transforms_that_use_it():
    """Seeding torch needs torch imported in the worker first (2 s and 130 MiB a worker):
    only for a transform that uses it, not whenever the script has torch."""
    import functools

    from stoker.executors._produce import uses_torch

    assert uses_torch(torch_noise) and uses_torch(functools.partial(torch_noise))
    assert not uses_torch(per_sample) and not uses_torch(ROTATE) and not uses_torch(None)
    assert not uses_torch(ten_ms)


def test_a_cheap_batch_goes_to_one_worker_whole_and_a_costly_one_is_shared(monkeypatch):
    """Chunks are sized by the time per sample measured so far (TASK_SECONDS): without a
    transform a batch is one task; at 10 ms a sample it is cut into one chunk per
    worker. Either way the epoch is the inline reference's. The wall time of a task
    counts as its work, so a chunk of 50 ms (not 2) keeps one preempted worker (a few
    ms of a loaded machine, on ~3 µs a sample) from making a cheap batch look costly."""
    from stoker.executors.processes import MIN_CHUNK, ProcessExecutor

    monkeypatch.setattr(ProcessExecutor, "task_seconds", 0.05)

    n = 128
    data = stoker.from_arrays(np.arange(n, dtype=np.uint8).reshape(n, 1), np.arange(n))
    for transform, whole in [(None, True), (ten_ms, False)]:
        with stoker.Loader(data, batch_size=64, workers=2, seed=2, transform=transform,
                           shuffle=False) as loader:
            got = [b[1] for b in loader]
            executor = loader._executor
            assert (executor._chunk() >= 64) == whole
            if not whole:
                assert executor._chunk() == MIN_CHUNK
        assert np.concatenate(got).tolist() == list(range(n))
