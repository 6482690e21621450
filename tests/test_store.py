"""stoker.store: round trips, atomic writes (a killed writer leaves nothing accepted),
refusal of truncated, corrupt and foreign stores, and loaders reading a store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import stoker
from stoker import store

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def samples():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (57, 12, 10, 1), dtype=np.uint8)
    y = rng.integers(0, 3000, 57).astype(np.int32)
    return x, y


def test_tuple_samples_round_trip_with_classes(tmp_path, samples):
    x, y = samples
    names = ["亜", "唖", 3, *(f"class {i}" for i in range(3, 3000))]  # any JSON values
    path = store.save(tmp_path / "data.stoker", (x, y), classes=names,
                      progress=False)
    data = store.open(path)
    assert len(data) == 57 and data.classes == names
    for i in (0, 13, 56):
        image, label = data[i]
        np.testing.assert_array_equal(image, x[i])
        assert label == y[i] and label.dtype == np.int32
    np.testing.assert_array_equal(data.arrays[0], x)
    store.verify(path)
    # Plain .npy files: numpy reads them without stoker.
    np.testing.assert_array_equal(np.load(path / "field_1.npy"), y)


def test_dict_and_single_array_samples_round_trip(tmp_path, samples):
    x, y = samples
    as_dict = store.open(store.save(tmp_path / "d", {"image": x, "label": y}, progress=False))
    sample = as_dict[5]
    assert set(sample) == {"image", "label"}
    np.testing.assert_array_equal(sample["image"], x[5])
    bare = store.open(store.save(tmp_path / "a", x, progress=False))
    np.testing.assert_array_equal(bare[7], x[7])


def test_any_source_saves_and_classes_come_along(tmp_path, samples):
    class Squares:
        classes = ("zero", "one")

        def __len__(self):
            return 30

        def __getitem__(self, i):
            return np.full((3, 3), i, np.float32), np.int64(i % 2)

    data = store.open(store.save(tmp_path / "s", Squares(), progress=False))
    assert data.classes == ["zero", "one"]
    image, label = data[29]
    assert image.dtype == np.float32 and image[0, 0] == 29 and label == 1
    shared = stoker.from_arrays(*samples)
    try:
        again = store.open(store.save(tmp_path / "from_shared", shared, progress=False))
        np.testing.assert_array_equal(again.arrays[0], samples[0])
    finally:
        shared.release()


def test_the_writer_streams_batches_and_checks_them(tmp_path, samples):
    x, y = samples
    with store.Writer(tmp_path / "w") as writer:
        for start in range(0, 57, 10):
            writer.append((x[start:start + 10], y[start:start + 10]))
        with pytest.raises(ValueError, match=r"field '0' changed from \(12, 10, 1\) uint8"):
            writer.append((x[:2, :5], y[:2]))
        with pytest.raises(ValueError, match="structure changed"):
            writer.append({"image": x[:2], "label": y[:2]})
        with pytest.raises(ValueError, match="same leading"):
            writer.append((x[:3], y[:2]))
    data = store.open(tmp_path / "w")
    assert len(data) == 57
    np.testing.assert_array_equal(data.arrays[1], y)


def test_an_exception_inside_the_writer_leaves_nothing(tmp_path, samples):
    x, y = samples
    with pytest.raises(RuntimeError), store.Writer(tmp_path / "broken") as writer:
        writer.append((x, y))
        raise RuntimeError("the reader of the raw data failed")
    assert list(tmp_path.iterdir()) == []


def test_nothing_written_is_an_error_not_an_empty_store(tmp_path):
    with pytest.raises(ValueError, match="no samples"), store.Writer(tmp_path / "empty"):
        pass
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="empty"):
        store.save(tmp_path / "e", [], progress=False)


def test_existing_paths_are_kept_unless_overwrite(tmp_path, samples):
    x, y = samples
    path = store.save(tmp_path / "s", (x, y), progress=False)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        store.save(path, (x, y), progress=False)
    store.save(path, (x[:5], y[:5]), overwrite=True, progress=False)
    assert len(store.open(path)) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a stoker store"):
        store.save(tmp_path / "notes", (x, y), overwrite=True, progress=False)
    assert (tmp_path / "notes" / "mine.txt").read_text() == "keep me"


WRITER_KILLED = """
    import os, sys, numpy as np
    sys.path.insert(0, {src!r})
    from stoker import store
    x = np.zeros((1000, 64, 64), np.uint8)
    with store.Writer({path!r}) as writer:
        for i in range(10_000):
            writer.append((x, np.arange(1000)))
            if i == 3:
                print("writing", flush=True)
"""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_a_writer_killed_mid_write_leaves_no_accepted_store(tmp_path, sig):
    path = tmp_path / "big.stoker"
    script = textwrap.dedent(WRITER_KILLED).format(src=str(ROOT / "src"), path=str(path))
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "writing"
    process.send_signal(sig)
    process.wait(timeout=30)
    assert not path.exists()
    with pytest.raises(store.StoreError, match="no store"):
        store.open(path)
    leftovers = list(tmp_path.iterdir())
    if sig == signal.SIGINT:  # Ctrl-C: the writer cleans up after itself
        assert leftovers == []
    else:  # SIGKILL: a hidden temporary stays, and the next writer removes it
        assert all(p.name.startswith(".big.stoker.tmp-") for p in leftovers)
        store.save(path, np.zeros((3, 2), np.uint8), progress=False)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["big.stoker"]


def test_truncated_corrupt_and_foreign_stores_are_refused_naming_the_file(tmp_path, samples):
    x, y = samples
    path = store.save(tmp_path / "s", (x, y), progress=False)
    field = path / "field_0.npy"
    data = field.read_bytes()

    field.write_bytes(data[:-100])
    with pytest.raises(store.StoreError, match=r"field_0\.npy is truncated"):
        store.open(path)

    field.write_bytes(data[:50] + b"garbage!" + data[58:])
    with pytest.raises(store.StoreError, match=r"field_0\.npy"):
        store.open(path)

    flipped = bytearray(data)
    flipped[-1] ^= 0xFF
    field.write_bytes(bytes(flipped))
    store.open(path)  # sizes and headers are fine: open is cheap and does not read data
    with pytest.raises(store.StoreError, match=r"field_0\.npy does not match its checksum"):
        store.verify(path)
    field.write_bytes(data)
    store.verify(path)

    meta = json.loads((path / "meta.json").read_text())
    (path / "meta.json").write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(store.StoreError, match="version 99"):
        store.open(path)
    (path / "meta.json").write_text("{not json")
    with pytest.raises(store.StoreError, match=r"meta\.json is corrupt"):
        store.open(path)
    (path / "meta.json").unlink()
    with pytest.raises(store.StoreError, match=r"meta\.json is missing"):
        store.open(path)
    with pytest.raises(store.StoreError, match="no store at"):
        store.open(tmp_path / "elsewhere")


@pytest.mark.parametrize("workers", [0, 2])
def test_loaders_read_a_store_like_shared_memory(tmp_path, samples, workers):
    x, y = samples
    path = store.save(tmp_path / "s", (x, y), progress=False)
    on_disk = store.open(path)
    shared = stoker.from_arrays(x, y)
    try:
        runs = []
        for source in (on_disk, shared):
            with stoker.Loader(source, batch_size=8, workers=workers, seed=4) as loader:
                runs.append([tuple(np.copy(a) for a in batch) for batch in loader])
        for (a, b), (c, d) in zip(*runs, strict=True):
            np.testing.assert_array_equal(a, c)
            np.testing.assert_array_equal(b, d)
        train, _ = on_disk.split(0.75, seed=1)
        with stoker.Loader(train, batch_size=8, workers=workers) as loader:
            seen = np.concatenate([labels for _, labels in loader])
        assert len(seen) == len(train)
    finally:
        shared.release()


def test_workers_map_the_store_instead_of_receiving_it(tmp_path, samples):
    import pickle

    x, y = samples
    data = store.open(store.save(tmp_path / "s", (x, y), progress=False))
    assert len(pickle.dumps(data)) < 500  # the path, not the data
    assert os.path.samefile(pickle.loads(pickle.dumps(data)).path, data.path)
