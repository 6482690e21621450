"""stoker.store: round trips, atomic writes (a killed writer leaves nothing accepted),
refusal of truncated, corrupt and foreign stores, and loaders reading a store."""

from __future__ import annotations

import json
import os
import shutil
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
    # Plain .npy files, named by the manifest: numpy reads them without stoker.
    files = [f["file"] for f in json.loads((path / "meta.json").read_text())["fields"]]
    np.testing.assert_array_equal(np.load(path / files[1]), y)


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


_MIB = np.zeros((1024, 1024), np.uint8)  # 63 such samples make a chunk of save()'s


class _Listed:
    """A plain source (``__len__``/``__getitem__``) over a list of samples."""

    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


@pytest.mark.parametrize(("items", "says"), [
    ([(np.zeros(2), 1), (np.ones(2), 2, 99)],
     "sample 1 is a tuple of 3 elements, but sample 0 is a tuple of 2"),
    ([{"a": 1}, {"a": 2, "b": 3}], "sample 1 is a dict with keys ['a', 'b'], but sample 0"),
    ([{"a": 1, "b": 2}, {"a": 1, "c": 2}], "keys ['a', 'c']"),
    ([np.int64(1), np.uint64(2**63)], "dtype uint64, but sample 0's has shape () and dtype int64"),
    ([np.array([1, 2], np.uint8), np.array([.5, 300.7], np.float32)], ".astype(np.uint8)"),
    ([np.zeros(3), np.zeros(4)], "shape (4,) and dtype float64, but sample 0's has shape (3,)"),
    ([(b"abc", 1), (np.zeros(3, np.uint8), 2)], "element 0 is an array, but sample 0's is byte"),
    ([(_MIB, 1)] * 64 + [(_MIB, 1.5)], "sample 64: element 1 has shape () and dtype float64"),
])
def test_a_source_whose_samples_differ_is_refused_naming_the_sample(tmp_path, items, says):
    """Red-team finding: save() of a plain source stacked each chunk as numpy would,
    silently dropping a field (a third element, a key) or promoting a dtype (int64 and
    uint64 to float64); a Loader refuses the same source. Every sample is checked
    against sample 0 (the last case past the first chunk), and nothing is left."""
    with pytest.raises(ValueError) as caught:
        store.save(tmp_path / "s", _Listed(items))
    assert says in str(caught.value), caught.value
    assert not (tmp_path / "s").exists() and os.listdir(tmp_path) == []


def test_the_writer_streams_batches_and_checks_them(tmp_path, samples):
    x, y = samples
    with store.Writer(tmp_path / "w") as writer:
        for start in range(0, 57, 10):
            writer.append((x[start:start + 10], y[start:start + 10]))
        with pytest.raises(ValueError, match=r"field '0' changed from \(12, 10, 1\) uint8"):
            writer.append((x[:2, :5], y[:2]))
        with pytest.raises(ValueError, match="structure changed"):
            writer.append({"image": x[:2], "label": y[:2]})
        with pytest.raises(ValueError, match="arrays of equal length"):
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
    field = path / json.loads((path / "meta.json").read_text())["fields"][0]["file"]
    data = field.read_bytes()

    field.write_bytes(data[:-100])
    with pytest.raises(store.StoreError, match=r"field_0\.\w+\.npy is truncated"):
        store.open(path)

    field.write_bytes(data[:50] + b"garbage!" + data[58:])
    with pytest.raises(store.StoreError, match=r"field_0\.\w+\.npy"):
        store.open(path)

    flipped = bytearray(data)
    flipped[-1] ^= 0xFF
    field.write_bytes(bytes(flipped))
    store.open(path)  # sizes and headers are fine: open is cheap and does not read data
    with pytest.raises(store.StoreError, match=r"field_0\.\w+\.npy does not match its checksum"):
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


def _jpegs(count: int, seed: int = 0) -> list[bytes]:
    """``count`` small JPEG files of differing sizes."""
    import cv2

    rng = np.random.default_rng(seed)
    return [cv2.imencode(".jpg", rng.integers(0, 256, (8 + i % 7, 9 + i % 5, 3), np.uint8))[1]
            .tobytes() for i in range(count)]


def test_a_blob_field_round_trips_record_for_record(tmp_path):
    records = [*_jpegs(20), b"", b"\x00" * 5]  # empty and all-zero records stay as they are
    labels = np.arange(22) % 3
    path = store.save(tmp_path / "photos", {"jpeg": records, "label": labels},
                      classes=["a", "b", "c"])
    meta = json.loads((path / "meta.json").read_text())
    assert meta["version"] == store.BLOBS_VERSION and meta["fields"][0]["blobs"] is True
    source = store.open(path)
    assert len(source) == 22 and source.nbytes == sum(map(len, records)) + labels.nbytes
    for i, record in enumerate(records):
        value = source[i]["jpeg"]
        assert value.dtype == np.uint8 and value.tobytes() == record
        assert not value.flags.writeable
    store.verify(path)
    # Saving again, whole or a subset, keeps every record (a Blobs field streams through).
    train, _ = source.split(0.5, seed=1)
    copy = store.open(store.save(tmp_path / "train", train))
    assert [copy[i]["jpeg"].tobytes() for i in range(len(copy))] == [
        records[int(i)] for i in train.indices]
    assert copy.classes == ["a", "b", "c"]
    # Stores without a blob field stay version 2, readable by stoker before blobs.
    plain = store.save(tmp_path / "plain", labels)
    assert json.loads((plain / "meta.json").read_text())["version"] == 2


def test_a_blob_fields_files_are_checked_on_open_and_byte_for_byte_by_verify(tmp_path):
    path = store.save(tmp_path / "s", (_jpegs(30), np.arange(30)))
    entry = json.loads((path / "meta.json").read_text())["fields"][0]
    offsets_file, data_file = path / entry["file"], path / entry["data"]
    offsets, data = offsets_file.read_bytes(), data_file.read_bytes()

    data_file.write_bytes(data[:-10])
    with pytest.raises(store.StoreError, match=r"field_0\.\w+\.data\.npy is truncated"):
        store.open(path)
    data_file.write_bytes(data)
    offsets_file.write_bytes(offsets[:-8])
    with pytest.raises(store.StoreError, match=r"field_0\.\w+\.npy is truncated"):
        store.open(path)

    values = np.frombuffer(offsets, np.int64, offset=store.HEADER_BYTES).copy()
    header = offsets[:store.HEADER_BYTES]
    values[5], values[6] = values[6], values[5]  # a decreasing offset: records overlap
    offsets_file.write_bytes(header + values.tobytes())
    with pytest.raises(store.StoreError, match=r"field_0\.\w+\.npy is corrupt: the record "
                                               r"offsets decrease at record 5"):
        store.open(path)
    values[-1] += 1  # the last offset past the data: sized as a longer data file
    offsets_file.write_bytes(header + values.tobytes())
    with pytest.raises(store.StoreError, match=r"data\.npy is truncated"):
        store.open(path)

    values = np.frombuffer(offsets, np.int64, offset=store.HEADER_BYTES).copy()
    values[7] += 1  # records 6 and 7 now meet elsewhere: still increasing, so only verify
    offsets_file.write_bytes(header + values.tobytes())
    store.open(path)
    with pytest.raises(store.StoreError, match=r"field_0\.\w+\.npy does not match its "
                                               r"checksum"):
        store.verify(path)
    offsets_file.write_bytes(offsets)
    flipped = bytearray(data)
    flipped[store.HEADER_BYTES + 100] ^= 0xFF
    data_file.write_bytes(bytes(flipped))
    store.open(path)  # sizes and headers are fine
    with pytest.raises(store.StoreError, match=r"data\.npy does not match its checksum"):
        store.verify(path)
    data_file.write_bytes(data)
    store.verify(path)
    data_file.unlink()
    with pytest.raises(store.StoreError, match=r"data\.npy is missing"):
        store.open(path)


def test_a_blob_field_entry_of_the_manifest_is_validated(tmp_path):
    path = store.save(tmp_path / "s", (_jpegs(4), np.arange(4)))
    for change in (lambda f: f.update(data="../elsewhere.npy"),
                   lambda f: f.update(blobs="yes"),
                   lambda f: f.pop("data_sha256")):
        _rewrite_meta(path, lambda meta, change=change: change(meta["fields"][0]))
        with pytest.raises(store.StoreError, match="corrupt: blob field 0"):
            store.open(path)
        path = store.save(tmp_path / "s", (_jpegs(4), np.arange(4)), overwrite=True)
    _rewrite_meta(path, lambda meta: meta.update(version=2))
    with pytest.raises(store.StoreError, match="a blob field in a version 2 store"):
        store.open(path)
    _rewrite_meta(path, lambda meta: meta.update(version=7))
    with pytest.raises(store.StoreError, match=r"written by a newer stoker.*upgrade stoker"):
        store.open(path)


def test_records_of_any_source_and_narrow_offsets_save_as_blob_fields(tmp_path):
    from stoker.blobs import Blobs, Record

    a = store.open(store.save(tmp_path / "a", (_jpegs(4), np.arange(4))))
    b = store.open(store.save(tmp_path / "b", (_jpegs(3, seed=1), np.arange(3))))
    assert isinstance(a[0][0], Record)  # a record says what it is
    both = store.open(store.save(tmp_path / "ab", stoker.concat([a, b])))  # a generic source
    assert json.loads((both.path / "meta.json").read_text())["fields"][0]["blobs"] is True
    assert [both[i][0].tobytes() for i in range(7)] == _jpegs(4) + _jpegs(3, seed=1)
    alone = store.open(store.save(tmp_path / "alone", _jpegs(5)))  # records alone: one field
    assert len(alone) == 5 and alone[4].tobytes() == _jpegs(5)[4]
    same = [b"\x01" * 7] * 5  # records of one length stay records, never a 7-byte array
    assert store.open(store.save(tmp_path / "same", (same, np.arange(5))))[0][0].tobytes() \
        == same[0]
    # Offsets narrower than int64 (Arrow's binary arrays use int32) are widened, never
    # summed in their own type (which wrapped, committing a store that open refused).
    records = [bytes([i]) * 100 for i in range(4)]
    narrow = Blobs.from_bytes(records)
    narrow = Blobs(narrow.offsets.astype(np.uint16), narrow.data)
    with store.Writer(tmp_path / "narrow") as writer:
        for _ in range(200):
            writer.append((narrow, np.arange(4)))
    stored = store.open(tmp_path / "narrow")
    assert len(stored) == 800 and stored[799][0].tobytes() == records[3]
    store.verify(tmp_path / "narrow")
    # A list of a dataset's files is written a chunk at a time, never joined whole.
    chunks = list(store._chunks((_jpegs(40), np.arange(40)))[0])
    assert len(chunks) == 1 and isinstance(chunks[0][0], stoker.blobs.Blobs)
    small = store._CHUNK_BYTES
    try:
        store._CHUNK_BYTES = 3000
        chunks = list(store._chunks((_jpegs(40), np.arange(40)))[0])
    finally:
        store._CHUNK_BYTES = small
    assert len(chunks) > 5 and all(c[0].nbytes < 6000 for c in chunks)
    with pytest.raises(ValueError, match=r"give bytes, e\.g\. \[r\.tobytes\(\) for r"):
        store.save(tmp_path / "arrays", {"image": [np.zeros(3, np.uint8), np.zeros(5, np.uint8)],
                                         "label": np.arange(2)})


def test_bytes_are_refused_by_from_arrays_and_numpy_bytes_by_a_store(tmp_path):
    with pytest.raises(TypeError, match=r"list of bytes.*Keep encoded records in a store"):
        stoker.from_arrays(_jpegs(3), np.arange(3))
    with pytest.raises(TypeError, match="pads every record"):
        store.save(tmp_path / "s", np.array(_jpegs(3)))
    with store.Writer(tmp_path / "s") as writer:
        writer.append((_jpegs(3), np.arange(3)))
        with pytest.raises(ValueError, match=r"field '0' changed from variable bytes"):
            writer.append((np.zeros((3, 4), np.uint8), np.arange(3)))
        writer.append((_jpegs(2, seed=1), np.arange(2)))
    assert len(store.open(tmp_path / "s")) == 5


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


# -- what save() accepts -------------------------------------------------------------------


def test_save_reads_its_input_as_from_arrays_does(tmp_path):
    x = np.arange(1000, dtype=np.float32)
    labels = list(range(1000))
    for i, data in enumerate([(x, labels), [x, np.array(labels)], (x.tolist(), labels)]):
        source = store.open(store.save(tmp_path / f"s{i}", data))
        assert len(source) == 1000  # never the tuple itself taken as 2 samples
        np.testing.assert_array_equal(source.arrays[0], x)
        np.testing.assert_array_equal(source.arrays[1], labels)
    images = np.zeros((10, 4, 4), np.uint8)
    with pytest.raises(ValueError, match="array 1 cannot be made one array"):
        store.save(tmp_path / "bad", [images, [1, [2, 3]]])
    with pytest.raises(ValueError, match="equal length"):
        store.save(tmp_path / "bad", (images, labels))
    with pytest.raises(ValueError, match="same name"):
        store.save(tmp_path / "bad", {1: images, "1": images})
    with pytest.raises(TypeError, match="numbers and booleans only"):
        store.save(tmp_path / "bad", (np.array(["2020-01-01"] * 3, "datetime64[D]"),))
    with pytest.raises(TypeError, match=r"pads every record.*pass a list of bytes"):
        store.save(tmp_path / "bad", np.array([b"ab", b"cd"]))
    with pytest.raises(TypeError, match="overwrite must be True or False"):
        store.save(tmp_path / "bad", images, overwrite="yes")
    with pytest.raises(TypeError, match="class names must be str or int"):
        store.save(tmp_path / "bad", images, classes=[1.5])
    with pytest.raises(ValueError, match="'a' appears twice"):
        store.save(tmp_path / "bad", images, classes=["a", "b", "a"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s0", "s1", "s2"]


def _rss_anon_mib() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no RssAnon")


def _peak_private_mib(work) -> float:
    """Peak anonymous (private) memory while ``work()`` runs, above where it started."""
    import threading

    start = peak = _rss_anon_mib()
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.wait(0.005):
            peak = max(peak, _rss_anon_mib())

    watcher = threading.Thread(target=sample)
    watcher.start()
    try:
        work()
    finally:
        done.set()
        watcher.join()
    return max(peak, _rss_anon_mib()) - start


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="RssAnon needs Linux")
def test_saving_a_subset_takes_constant_memory(tmp_path):
    rows = np.random.default_rng(0).integers(0, 256, (8192, 256, 256), dtype=np.uint8)
    data = stoker.from_arrays(rows, np.arange(len(rows)))  # 512 MiB in shared memory
    del rows
    train, _ = data.split(0.9, seed=0)  # 460 MiB in shuffled order
    peak = _peak_private_mib(lambda: store.save(tmp_path / "train", train))
    assert peak < 200, f"{peak:.0f} MiB private memory to save a 460 MiB subset"
    saved = store.open(tmp_path / "train")
    np.testing.assert_array_equal(saved.arrays[1], train.indices)
    np.testing.assert_array_equal(saved[1234][0], data[int(train.indices[1234])][0])
    data.release()


# -- the manifest, checked ----------------------------------------------------------------


def _rewrite_meta(path: Path, change) -> None:
    import hashlib

    meta = json.loads((path / "meta.json").read_text())
    change(meta)
    meta["meta_sha256"] = hashlib.sha256(store._canonical(meta)).hexdigest()
    (path / "meta.json").write_text(json.dumps(meta))


def test_the_manifest_is_checksummed_and_validated_field_by_field(tmp_path, samples):
    x, y = samples
    path = store.save(tmp_path / "s", {"image": x, "label": y % 5}, classes=list("abcde"))
    meta_path = path / "meta.json"
    original = meta_path.read_text()
    meta_path.write_text(original.replace('"a"', '"z"'))
    with pytest.raises(store.StoreError, match="does not match its own checksum"):
        store.open(path)
    for change, match in [
        (lambda m: m.update(classes=5), "classes is 5, not a list"),
        (lambda m: m.update(classes=["a", "a", "b", "c", "d"]), "appears twice"),
        (lambda m: m["fields"][1].update(name="image"), "two fields share a name"),
        (lambda m: m.update(generation="../../etc"), "generation"),
        (lambda m: m["fields"][0].update(file="/etc/passwd"), "file '/etc/passwd'"),
        (lambda m: m["fields"][0].update(dtype="<M8[D]"), "dtype"),
    ]:
        meta_path.write_text(original)
        _rewrite_meta(path, change)
        with pytest.raises(store.StoreError, match=match):
            store.open(path)
        with pytest.raises(store.StoreError, match=match):
            store.verify(path)
    meta_path.write_text(original)
    _rewrite_meta(path, lambda m: m.update(classes=["a", "b", "c"]))  # labels go up to 4
    store.open(path)  # open reads no data
    with pytest.raises(store.StoreError, match=r"label [34], outside its 3 class names"):
        store.verify(path)


def test_a_version_1_store_still_opens_and_is_replaced_cleanly(tmp_path, samples):
    x, y = samples
    path = tmp_path / "old"
    path.mkdir()
    fields = []
    for position, array in enumerate((x, y)):
        np.save(path / f"field_{position}.npy", array)
        header = store._npy_header(array.dtype, array.shape)
        (path / f"field_{position}.npy").write_bytes(header + array.tobytes())
        import hashlib

        fields.append({"name": str(position), "file": f"field_{position}.npy",
                       "dtype": array.dtype.str, "shape": list(array.shape[1:]),
                       "sha256": hashlib.sha256(array.tobytes()).hexdigest()})
    (path / "meta.json").write_text(json.dumps({
        "format": "stoker-store", "version": 1, "count": len(x), "kind": "tuple",
        "fields": fields, "classes": None}))
    store.verify(path)
    np.testing.assert_array_equal(store.open(path).arrays[0], x)
    store.save(path, (x[:3], y[:3]), overwrite=True)
    assert sorted(p.name for p in path.iterdir() if not p.name.startswith("field_")) == [
        ".lock", "meta.json"]
    assert len([p for p in path.iterdir() if p.name.startswith("field_")]) == 2
    assert len(store.open(path)) == 3


def test_a_worker_refuses_a_store_replaced_since_the_loader_opened_it(tmp_path, samples):
    import pickle

    x, y = samples
    path = store.save(tmp_path / "s", (x, y))
    source = store.open(path)
    travelled = pickle.dumps(source)
    assert pickle.loads(travelled).identity == source.identity
    store.save(path, (x[:10], y[:10]), overwrite=True)
    np.testing.assert_array_equal(source.arrays[0], x)  # mapped before: still readable
    with pytest.raises(store.StoreError, match=r"replaced \(overwritten\) after this loader"):
        pickle.loads(travelled)
    with stoker.Loader(source, batch_size=8, workers=1) as loader:
        with pytest.raises(stoker.LoaderError, match="was replaced") as caught:
            next(iter(loader))
    said = str(caught.value).split("\n")[0]
    # stoker's own refusal names its fix; no guess about missing modules, no ".."
    assert said.endswith("make a new Loader."), said
    assert "failed to load" not in said, said


# -- atomic commits, under kills, readers and racing writers -----------------------------

CRASH_AT = """
    import os, signal, sys
    import numpy as np
    sys.path.insert(0, {src!r})
    from stoker import store

    target, sig, size = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    blobs = sys.argv[4] == "blobs"
    steps = [0]

    def hooked(name):
        real = getattr(os, name)

        def call(*args, **kwargs):
            for when in ("before", "after"):
                if when == "after":
                    result = real(*args, **kwargs)
                steps[0] += 1
                if steps[0] == target:
                    if sig == signal.SIGINT:  # what Python's SIGINT handler does, right here
                        raise KeyboardInterrupt
                    os.kill(os.getpid(), sig)
            return result
        setattr(os, name, call)

    for name in ("fsync", "rename", "replace"):
        hooked(name)
    x = ([bytes([7]) * (600 + i % 5) for i in range(size)] if blobs
         else np.full((size, 300), 7, np.uint16))
    store.save({path!r}, (x, np.arange(size)), overwrite=True)
    print("done", steps[0], flush=True)
"""


def _content(path: Path) -> int | None:
    """The size of the store at ``path`` after verifying it, or None if there is none."""
    try:
        source = store.open(path)
    except store.StoreError as error:
        assert "no store at" in str(error), error
        return None
    store.verify(path)
    return len(source)


def _payload(n: int, blobs: bool) -> tuple[object, np.ndarray]:
    """``n`` samples: fixed-shape rows, or encoded records of differing lengths (a blob
    field), each holding ``n``."""
    if blobs:
        return [bytes([n]) * (600 + i % 5) for i in range(n)], np.arange(n)
    return np.full((n, 300), n, np.uint16), np.arange(n)


def _only_the_store_left(parent: Path, path: Path) -> None:
    assert sorted(p.name for p in parent.iterdir()) == [path.name]
    names = {p.name for p in path.iterdir()}
    files = {name for f in json.loads((path / "meta.json").read_text())["fields"]
             for name in (f["file"], f.get("data")) if name}
    assert names - {".lock"} == files | {"meta.json"}, names


@pytest.mark.slow
@pytest.mark.parametrize("payload", ["arrays", "blobs"])
@pytest.mark.parametrize("existing", [False, True], ids=["first-write", "overwrite"])
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
def test_a_write_killed_at_any_step_leaves_the_old_or_the_new_store(tmp_path, existing, sig,
                                                                    payload):
    from concurrent.futures import ThreadPoolExecutor

    blobs = payload == "blobs"
    old, new = 40, 25

    def attempt(target: int) -> tuple[Path, Path, subprocess.CompletedProcess]:
        parent = tmp_path / f"kill-at-{target}"
        path = parent / "s.stoker"
        parent.mkdir()
        if existing:
            store.save(path, _payload(old, blobs))
        script = textwrap.dedent(CRASH_AT).format(src=str(ROOT / "src"), path=str(path))
        return parent, path, subprocess.run(
            [sys.executable, "-c", script, str(target), str(int(sig)), str(new), payload],
            capture_output=True, text=True, timeout=60)

    killed_at, finished, first = [], False, 1
    with ThreadPoolExecutor(max_workers=3) as pool:  # each kill in its own folder
        while not finished and first < 200:
            for target, (parent, path, done) in zip(
                    range(first, first + 6), pool.map(attempt, range(first, first + 6)),
                    strict=True):
                if done.returncode == 0:
                    assert done.stdout.startswith("done")
                    finished = True
                    continue
                killed_at.append(target)
                content = _content(path)
                assert content in ((old, new) if existing else (None, new)), (target, content)
                if sig == signal.SIGINT and content is not None:  # Ctrl-C: nothing left
                    _only_the_store_left(parent, path)
                # The next write finds its way, and leaves only the store behind.
                store.save(path, _payload(5, blobs), overwrite=True)
                assert _content(path) == 5
                _only_the_store_left(parent, path)
            first += 6
    assert finished
    # every fsync, rename and replace, both sides (a blob field has a file more)
    assert len(killed_at) >= 12 + 2 * blobs, killed_at


@pytest.mark.parametrize("payload", ["arrays", "blobs"])
def test_readers_never_see_a_half_store_during_overwrites(tmp_path, payload):
    path = tmp_path / "s.stoker"
    blobs = payload == "blobs"
    x = [bytes([64]) * (100 + i) for i in range(64)] if blobs else np.full((64, 100), 64,
                                                                             np.int32)
    store.save(path, (x, np.full(64, 64)))
    writer = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        import numpy as np
        sys.path.insert(0, {str(ROOT / "src")!r})
        from stoker import store
        for i in range(30):
            n = 64 + 16 * (i % 2)
            x = ([bytes([n]) * (100 + i) for i in range(n)] if {blobs}
                 else np.full((n, 100), n, np.int32))
            store.save({str(path)!r}, (x, np.full(n, n)), overwrite=True)
    """)])
    opens, failures = 0, []
    try:
        while writer.poll() is None or opens < 1000:
            try:
                source = store.open(path)
                images, labels = source.arrays
                n = len(source)
                last = images[n - 1] if blobs else images[-1]
                assert n in (64, 80) and last[-1] == n and labels[0] == n, n
                if blobs:
                    assert len(last) == 100 + n - 1 and (images.data == n).all(), n
                if opens % 50 == 0:
                    store.verify(path)  # one consistent generation, however it changes
            except Exception as error:  # every kind counts as a failure
                failures.append(repr(error))
            opens += 1
    finally:
        writer.wait(timeout=60)
    assert writer.returncode == 0
    assert failures == [], f"{len(failures)} of {opens}: {failures[:3]}"
    _only_the_store_left(tmp_path, path)


def test_concurrent_overwriting_writers_leave_one_intact_store(tmp_path):
    path = tmp_path / "s.stoker"
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        sys.path.insert(0, {str(ROOT / "src")!r})
        from stoker import store
        me = int(sys.argv[1])
        for i in range(5):
            n = 10 + me
            store.save({str(path)!r}, (np.full((n, 1000), me, np.int16), np.full(n, me)),
                       overwrite=True)
    """)
    writers = [subprocess.Popen([sys.executable, "-c", script, str(me)],
                                stderr=subprocess.PIPE, text=True) for me in range(6)]
    errors = [w.communicate(timeout=120)[1] for w in writers]
    assert [w.returncode for w in writers] == [0] * 6, errors
    source = store.open(path)
    store.verify(path)
    me = len(source) - 10
    assert (source.arrays[0] == me).all() and (source.arrays[1] == me).all()
    _only_the_store_left(tmp_path, path)


def test_a_live_writers_temporary_is_never_removed_and_a_dead_ones_is(tmp_path):
    path = tmp_path / "s.stoker"
    first = store.Writer(path)  # alive, in this process
    first.append(np.zeros((3, 2)))
    live = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        import numpy as np
        sys.path.insert(0, {str(ROOT / "src")!r})
        from stoker import store
        writer = store.Writer({str(path)!r})
        writer.append(np.zeros((3, 2)))
        print("writing", flush=True)
        time.sleep(600)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert live.stdout.readline().strip() == "writing"
        temporaries = {p.name for p in tmp_path.glob(".s.stoker.tmp-*") if p.is_dir()}
        assert len(temporaries) == 2
        assert store._remove_stale_temporaries(path) == []  # both leases are held
        assert first._tmp.exists()
        live.kill()
        live.wait(timeout=30)
        removed = store._remove_stale_temporaries(path)
        assert [p.name for p in removed] == sorted(temporaries - {first._tmp.name})
        assert first.close() == path
        _only_the_store_left(tmp_path, path)
    finally:
        live.kill()


def test_the_readmes_store_section_runs_as_written(tmp_path):
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Data larger than RAM")
    body = readme.index("```python\n", start) + len("```python\n")
    block = readme[body:readme.index("\n```", body)]
    (tmp_path / "store_example.py").write_text(block)
    done = subprocess.run([sys.executable, "store_example.py"], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(store.open(tmp_path / "big.stoker")) == 900
    assert store.open(tmp_path / "kanji.stoker").classes == [f"class {i}" for i in range(10)]


# -- after an error, on fork, at the edges of paths (found by red-teaming) ----------------

FAILING_APPEND = """
    import resource, signal, sys
    import numpy as np
    sys.path.insert(0, {src!r})
    from stoker import store
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit raises EFBIG
    writer = store.Writer({path!r}, overwrite=True)
    writer.append((np.zeros((10, 1), np.uint8), np.zeros((10, 1000))))
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, hard))
    try:  # field 0 takes its rows, field 1 cannot
        writer.append((np.zeros((100, 1), np.uint8), np.zeros((100, 1000))))
    except OSError as error:
        print("append failed:", error.errno, flush=True)
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    try:
        writer.close()
    except ValueError as error:
        print("close refused:", error, flush=True)
"""


def test_a_failed_append_is_never_committed(tmp_path):
    path = tmp_path / "s.stoker"
    store.save(path, (np.ones((7, 1), np.uint8), np.ones((7, 1000))))
    script = textwrap.dedent(FAILING_APPEND).format(src=str(ROOT / "src"), path=str(path))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert "append failed: 27" in done.stdout, done.stdout + done.stderr
    assert "close refused: an append failed half-way" in done.stdout, done.stdout
    assert _content(path) == 7  # the old store, intact
    _only_the_store_left(tmp_path, path)


def test_a_bad_first_batch_leaves_the_writer_as_new(tmp_path):
    with store.Writer(tmp_path / "s") as writer:
        with pytest.raises(TypeError, match="numbers and booleans only"):
            writer.append((np.zeros((3, 2)), np.array(["2020-01-01"] * 3, "datetime64[D]")))
        writer.append((np.zeros((3, 2)), np.arange(3)))
    assert len(store.open(tmp_path / "s")) == 3


def test_a_list_of_samples_or_a_set_of_classes_is_refused(tmp_path):
    images = [np.zeros((4, 4), np.uint8)] * 100
    with pytest.raises(ValueError, match=r"list of 100 items.*np\.stack\(images\)"):
        store.save(tmp_path / "s", images)
    with pytest.raises(TypeError, match="in label order"):
        store.save(tmp_path / "s", np.zeros((3, 2)), classes={"cat", "dog"})
    with pytest.raises(ValueError, match="classes is empty"):
        store.save(tmp_path / "s", np.zeros((3, 2)), classes=[])
    assert list(tmp_path.iterdir()) == []


def test_a_forked_child_never_discards_its_parents_write(tmp_path):
    import multiprocessing

    writer = store.Writer(tmp_path / "s")
    writer.append(np.zeros((3, 2)))
    child = multiprocessing.get_context("fork").Process(target=writer.abort)
    child.start()
    child.join(30)
    assert child.exitcode == 0
    assert writer.close() == tmp_path / "s"
    assert len(store.open(tmp_path / "s")) == 3


def test_odd_paths_symlinks_across_filesystems_and_a_changed_folder(tmp_path, monkeypatch):
    # A name with glob characters: its dead writer's temporary is still found.
    odd = tmp_path / "run[1].stoker"
    script = textwrap.dedent(WRITER_KILLED).format(src=str(ROOT / "src"), path=str(odd))
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                               text=True)
    assert process.stdout.readline().strip() == "writing"
    process.kill()
    process.wait(timeout=30)
    store.save(odd, np.zeros((2, 2)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run[1].stoker"]
    # A symlink to a store on another filesystem (/dev/shm is tmpfs): overwritable.
    elsewhere = Path("/dev/shm") / f"stoker-test-{os.getpid()}.store"
    try:
        store.save(elsewhere, np.zeros((2, 2)))
        (tmp_path / "link.stoker").symlink_to(elsewhere)
        store.save(tmp_path / "link.stoker", np.ones((5, 2)), overwrite=True)
        assert len(store.open(tmp_path / "link.stoker")) == 5
        assert (tmp_path / "link.stoker").is_symlink()
    finally:
        shutil.rmtree(elsewhere, ignore_errors=True)
    # A relative path, and the working folder changed before close().
    monkeypatch.chdir(tmp_path)
    writer = store.Writer("relative.stoker")
    writer.append(np.zeros((4, 2)))
    monkeypatch.chdir("/")
    writer.close()
    assert len(store.open(tmp_path / "relative.stoker")) == 4
