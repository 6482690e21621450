"""What workers are sent: large arrays of the transform or source travel once, through
shared memory, mapped copy-on-write; measured by PSS with real worker processes."""

from __future__ import annotations

import gc
import pickle

import numpy as np
import pytest

import stoker
from conftest import own_segments, wait_until
from stoker.executors import _payload


def _shm_names() -> set[str]:
    """This process's segments (another stoker process on the machine makes its own)."""
    return own_segments()


def _gone_since(before: set[str]) -> bool:
    """Whether every segment made since ``before`` is unlinked (a closed pool's are
    unlinked as its workers exit: within seconds on a loaded machine, as conftest's
    leak check allows)."""
    return wait_until(lambda: _shm_names() <= before, 5)


def test_large_arrays_travel_as_shared_blocks_and_small_ones_by_value():
    big = np.arange(2**19, dtype=np.float32).reshape(512, 1024)  # 2 MiB
    small = np.arange(10)
    frozen = big + 1
    frozen.flags.writeable = False
    fortran = np.asfortranarray(big[:, :600])  # 2.3 MiB, F-ordered copy

    def fn():
        return big, small, frozen, fortran, big

    data, blocks = _payload.dumps(fn)
    try:
        assert len(blocks) == 3  # big once (memoised), frozen, fortran; small by value
        assert len(data) < 10_000
        a, s, f, fo, again = pickle.loads(data)()
        assert a is again
        np.testing.assert_array_equal(a, big)
        np.testing.assert_array_equal(s, small)
        np.testing.assert_array_equal(f, frozen)
        np.testing.assert_array_equal(fo, fortran)
        assert fo.flags.f_contiguous
        assert a.flags.writeable and not f.flags.writeable
        a[0, 0] = -1  # copy-on-write: the next process still sees the original
        assert pickle.loads(data)()[0][0, 0] == 0
        assert big[0, 0] == 0
    finally:
        for block in blocks:
            block.release()
    assert a[0, 0] == -1  # the mapping outlives the unlinked block


def test_a_memmap_travels_as_its_file_not_its_bytes(tmp_path):
    path = tmp_path / "table.npy"
    np.save(path, np.arange(2**20, dtype=np.float32).reshape(1024, 1024))
    table = np.load(path, mmap_mode="r")
    part = table[100:700]
    data, blocks = _payload.dumps((table, part))
    assert blocks == [] and len(data) < 10_000
    whole, rows = pickle.loads(data)
    assert isinstance(whole, np.memmap) and isinstance(rows, np.memmap)
    np.testing.assert_array_equal(whole, table)
    np.testing.assert_array_equal(rows, part)
    assert not rows.flags.writeable


def test_object_arrays_are_pickled_as_always():
    array = np.empty(200_000, dtype=object)
    array[:] = "x"
    data, blocks = _payload.dumps(array)
    assert blocks == []
    assert (pickle.loads(data) == "x").all()


class _WholeTableSum:
    """A transform that reads every byte of its captured table once per process."""

    def __init__(self, table: np.ndarray) -> None:
        self.table = table
        self.total = None

    def __call__(self, sample, rng):
        if self.total is None:
            self.total = float(self.table.sum())
        return sample + np.float32(self.total % 7)


def _pss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/smaps_rollup") as handle:
        for line in handle:
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no Pss line")


def _worker_pss(table: np.ndarray) -> tuple[float, np.ndarray]:
    images = np.zeros((64, 8, 8), np.float32)
    with stoker.Loader(stoker.from_arrays(images), batch_size=16, workers=2, shuffle=False,
                       transform=_WholeTableSum(table)) as loader:
        batches = np.concatenate(list(loader))
        pss = sum(_pss_mib(pid) for pid in loader._executor.pids)
    return pss, batches


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/smaps_rollup"),
                    reason="PSS needs Linux")
def test_a_captured_array_costs_the_workers_at_most_one_shared_copy():
    size_mib = 128
    table = np.ones((size_mib * 2**20 // 4,), np.float32)
    before = _shm_names()
    baseline, reference = _worker_pss(np.ones(4, np.float32))
    loaded, batches = _worker_pss(table)
    # Pickled by value each worker held the bytes and the array: 2 x 2 x 128 MiB. Shared,
    # the pages are split between the consumer's mapping and the two workers'.
    assert loaded - baseline < 0.8 * size_mib, (baseline, loaded)
    expected = reference - np.float32(4 % 7) + np.float32(float(table.sum()) % 7)
    np.testing.assert_array_equal(batches, expected)
    gc.collect()
    assert _gone_since(before), _shm_names() - before  # the shared copy went with the loader


def test_slots_are_sized_by_the_largest_batch_the_plan_makes():
    images = np.zeros((100, 32, 32), np.uint8)  # 100 KiB of data
    with stoker.Loader(stoker.from_arrays(images), batch_size=10_000_000, workers=1) as loader:
        (batch,) = list(loader)
        assert batch.shape == (100, 32, 32)
        slots = loader._executor._resources.slots
        assert max(block.size for block in slots) < 2**20


def test_the_default_ring_is_bounded_in_bytes():
    from stoker.executors.processes import RING_BYTES, ring_slots

    assert ring_slots(None, 2, 2**20) == 4
    assert ring_slots(None, 64, 2**20) == 128 or RING_BYTES // 2**20 < 128
    assert ring_slots(None, 64, 64 * 2**20) == RING_BYTES // (64 * 2**20)
    assert ring_slots(None, 64, 2**30) == 2  # one being read, one filling
    assert ring_slots(3, 64, 2**30) == 3  # prefetch= is taken as given


def test_a_ring_too_large_for_dev_shm_quotes_the_total_and_the_fix():
    import shutil

    free = shutil.disk_usage("/dev/shm").free
    images = np.zeros((64, 1024, 1024), np.uint8)  # 64 MiB of data, 1 MiB samples
    count = int(free // (64 * 2**20)) + 2  # slots of 64 MiB: together more than is free
    before = _shm_names()
    with stoker.Loader(stoker.from_arrays(images), batch_size=64, workers=1,
                       prefetch=count) as loader:
        with pytest.raises(OSError, match=r"batch slots \(\d+ of 64\.0 MiB\)") as caught:
            next(iter(loader))
    message = str(caught.value)
    assert f"{count * 64.0:.1f} MiB are needed" in message
    assert "prefetch=" in message and "batch_size=" in message
    del loader, caught
    gc.collect()
    assert _gone_since(before), _shm_names() - before
