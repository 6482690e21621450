"""The bad-input catalogue (docs/errors.md): rows not covered by a module's own tests.
Each bad input gives one clear error naming the problem and the fix, and leaves nothing
half-written."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import stoker
from conftest import own_segments
from stoker import store

ROOT = Path(__file__).resolve().parent.parent


def test_non_contiguous_arrays_are_copied_as_they_read(images):
    x, y = images
    strided = x[:, ::2, ::-1]
    data = stoker.from_arrays(strided, y)
    try:
        np.testing.assert_array_equal(data[5][0], strided[5])
    finally:
        data.release()


def test_a_dataset_larger_than_dev_shm_is_refused_with_the_fix():
    free = os.statvfs("/dev/shm")
    too_big = free.f_bavail * free.f_frsize + (1 << 30)
    with pytest.raises(OSError, match="/dev/shm") as info:
        stoker.shm.SharedBlock.create(too_big, purpose="dataset")
    assert "store" in str(info.value) or "enlarge" in str(info.value)
    assert own_segments() == set()  # nothing half-created


def test_a_disk_that_fills_during_ingest_leaves_nothing(tmp_path):
    """RLIMIT_FSIZE makes the kernel refuse writes past 1 MiB (EFBIG), as a full disk
    refuses them (ENOSPC): the ingest fails cleanly and nothing is left at --out."""
    np.save(tmp_path / "x.npy", np.zeros((2000, 32, 32), np.uint8))  # 2 MiB of data

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    out = tmp_path / "out.stoker"
    done = subprocess.run(
        [sys.executable, "-m", "stoker", "ingest", str(tmp_path / "x.npy"), "--out", str(out),
         "--no-progress"], capture_output=True, text=True, timeout=120, preexec_fn=small_files,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert done.returncode == 2, done.stderr
    assert "stoker ingest:" in done.stderr and "File too large" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy"]


def test_a_path_that_is_a_file_is_not_a_store(tmp_path):
    (tmp_path / "data.stoker").write_text("not a store")
    with pytest.raises(store.StoreError, match="is a file, not a stoker store"):
        store.open(tmp_path / "data.stoker")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        store.save(tmp_path / "data.stoker", np.zeros((2, 2)), progress=False)


def test_object_arrays_cannot_be_stored(tmp_path):
    with pytest.raises(TypeError, match="numeric"):
        store.save(tmp_path / "s", (np.array([{}, {}], dtype=object),), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_non_finite_values_are_refused_when_asked(images):
    x, y = images

    def nan_at_17(sample, rng):
        image, label = sample
        image = image.astype(np.float32)
        if label == 17:
            image[0, 0, 0] = np.nan
        return image, label

    data = stoker.from_arrays(x, y)
    try:
        with stoker.Loader(data, batch_size=16, transform=nan_at_17, workers=0) as loader:
            assert sum(len(b) for _, b in loader) == len(x)  # unchecked by default
        for workers in (0, 2):
            with stoker.Loader(data, batch_size=16, transform=nan_at_17, workers=workers,
                               check_finite=True) as loader, \
                    pytest.raises(stoker.TransformError, match="holds NaN or inf") as info:
                list(loader)
            assert info.value.index == 17
    finally:
        data.release()


def test_labels_outside_the_classes_are_refused_by_the_store(tmp_path):
    x = np.zeros((6, 4, 4), np.uint8)
    with pytest.raises(ValueError, match=r"sample 4 has label 3, outside the 3 classes"):
        store.save(tmp_path / "s", (x, np.array([0, 1, 2, 0, 3, 1])), classes=["a", "b", "c"],
                   progress=False)
    with pytest.raises(ValueError, match="sample 1 has label -1"):
        store.save(tmp_path / "d", {"image": x[:2], "label": np.array([0, -1])},
                   classes=["a", "b"], progress=False)
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_target_is_an_error_and_leaves_nothing(tmp_path, capsys):
    """sysfs refuses new directories even to root: a real OS refusal, as a read-only or
    foreign directory gives."""
    with pytest.raises(OSError):
        store.save("/sys/stoker-test.stoker", np.zeros((2, 2), np.uint8), progress=False)
    np.save(tmp_path / "x.npy", np.zeros((3, 2), np.uint8))
    from stoker.cli import main

    assert main(["ingest", str(tmp_path / "x.npy"), "--out", "/sys/stoker-test.stoker",
                 "--no-progress"]) == 2
    assert "stoker ingest:" in capsys.readouterr().err
    assert not os.path.exists("/sys/stoker-test.stoker")


def test_the_documented_subpackages_are_reachable_after_import_stoker():
    import subprocess
    import sys

    code = ("import sys, stoker; assert 'tensorflow' not in sys.modules; "
            "print(stoker.store.save.__name__, stoker.augment.kanji_distort.__name__, "
            "stoker.datasets.etl.__name__, stoker.adapters.__name__, "
            "'tensorflow' in sys.modules, sorted(set(stoker.SUBPACKAGES) - set(dir(stoker))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["save", "kanji_distort", "stoker.datasets.etl",
                                   "stoker.adapters", "False", "[]"]
    import stoker

    with pytest.raises(AttributeError, match="no attribute 'stor'"):
        stoker.stor  # noqa: B018
