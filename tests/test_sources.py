import itertools
import pickle

import numpy as np
import pytest

import stoker
from stoker.executors._produce import Producer, Transform
from stoker.layout import BatchLayout
from stoker.sources import ArraySource, Subset, rows_of
from test_batch_transforms import EXECUTORS  # inline, fork, forkserver 2 and 4, spawn


def test_from_arrays_tuple_dict_and_single(images):
    x, y = images
    pair = stoker.from_arrays(x, y)
    image, label = pair[5]
    assert np.array_equal(image, x[5]) and label == 5 and label.dtype == np.int64
    named = stoker.from_arrays(image=x, label=y)
    assert set(named[5]) == {"image", "label"} and named[5]["label"] == 5
    single = stoker.from_arrays(x)
    assert np.array_equal(single[7], x[7]) and len(single) == len(x)


def test_rows_are_read_only_views_of_shared_memory(images):
    x, y = images
    data = stoker.from_arrays(x, y)
    image, _ = data[0]
    with pytest.raises(ValueError, match="read-only"):
        image[0, 0, 0] = 1


def test_pickling_sends_names_not_data(images):
    x, y = images
    data = stoker.from_arrays(x, y)
    payload = pickle.dumps(data)
    assert len(payload) < 2000 < x.nbytes
    copy = pickle.loads(payload)
    assert isinstance(copy, ArraySource)
    assert np.array_equal(copy[9][0], x[9])


@pytest.mark.parametrize(("args", "kwargs", "error", "match"), [
    ((), {}, TypeError, "at least one array"),
    ((np.zeros((3, 2)), np.zeros(4)), {}, ValueError, "equal length"),
    ((np.zeros((0, 2)),), {}, ValueError, "empty"),
    ((np.array([{}, {}], dtype=object),), {}, TypeError, "numeric"),
    ((np.float32(3.0),), {}, ValueError, "scalar"),
    ((np.zeros(3),), {"y": np.zeros(3)}, TypeError, "not both"),
    (({"image": np.zeros(3), "label": np.zeros(3)},), {}, TypeError,
     r"by name: from_arrays\(\*\*fields\), here from_arrays\(image=..., label=...\)"),
])
def test_from_arrays_refuses_bad_input(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        stoker.from_arrays(*args, **kwargs)


@pytest.mark.parametrize(("args", "kwargs", "error", "match"), [
    (("0.5",), {}, TypeError, r"split fraction must be a number .* got '0.5' \(str\)"),
    ((None,), {}, TypeError, "split fraction must be a number"),
    ((True,), {}, TypeError, "split fraction must be a number"),
    ((0.5,), {"seed": -1}, ValueError, "split seed must be >= 0, got -1"),  # numpy's words
    ((0.5,), {"seed": None}, TypeError, "the same split every run"),
    ((0.5,), {"seed": 1.5}, TypeError, r"split seed must be an int, got 1.5"),  # was seed 1
    ((0.5,), {"seed": "1"}, TypeError, "split seed must be an int"),  # was taken
    ((0.5,), {"shuffle": "no"}, TypeError, "split shuffle must be True or False"),  # shuffled
])
def test_split_refuses_bad_arguments_naming_them(images, args, kwargs, error, match):
    data = stoker.from_arrays(*images)
    with pytest.raises(error, match=match):
        data.split(*args, **kwargs)
    with pytest.raises(error, match=match):
        stoker.split(data, *args, **kwargs)


def test_a_subset_takes_a_boolean_mask_as_the_rows_it_keeps(images):
    from stoker.sources import Subset

    data = stoker.from_arrays(*images)
    mask = np.zeros(len(data), bool)
    mask[[8, 9]] = True
    picked = Subset(data, mask)  # it took the mask as indices 0 and 1
    assert [int(picked[i][1]) for i in range(len(picked))] == [8, 9]
    nested = Subset(Subset(data, np.arange(20)), mask[:20])
    assert [int(nested[i][1]) for i in range(len(nested))] == [8, 9]
    with pytest.raises(ValueError, match="one entry per sample of its base"):
        Subset(data, mask[:10])
    with pytest.raises(TypeError, match="integer indices or a boolean mask"):
        Subset(data, np.array([0.5, 1.5]))


def test_split_views_are_disjoint_and_nest(images):
    x, y = images
    train, val = stoker.from_arrays(x, y).split(0.8, seed=0)
    train_labels = {int(train[i][1]) for i in range(len(train))}
    val_labels = {int(val[i][1]) for i in range(len(val))}
    assert train_labels.isdisjoint(val_labels)
    assert train_labels | val_labels == set(range(len(x)))
    inner, _ = train.split(0.5, seed=1)
    assert isinstance(inner, Subset) and not isinstance(inner.base, Subset)
    assert {int(inner[i][1]) for i in range(len(inner))} <= train_labels


def test_a_split_of_arrays_gives_its_own_rows_as_new_arrays(images):
    x, y = images
    train, _ = stoker.from_arrays(x, y).split(0.8, seed=0)
    images_, labels = train.arrays
    np.testing.assert_array_equal(images_, x[labels])
    assert images_.flags.writeable  # a copy, not a view of the shared memory
    named, _ = stoker.from_arrays(image=x, label=y).split(0.5, seed=2)
    np.testing.assert_array_equal(named.arrays["image"], x[named.arrays["label"]])
    with pytest.raises(AttributeError, match="no arrays"):
        _ = stoker.split(list(range(10)), 0.5)[0].arrays


def test_any_sequence_is_a_source_and_bad_ones_are_refused():
    samples = [(np.full(3, i, np.float32), i) for i in range(10)]
    a, b = stoker.split(samples, 0.5, seed=0)
    assert len(a) == len(b) == 5
    with pytest.raises(TypeError, match="__getitem__"):
        stoker.Loader(object(), batch_size=2)
    with pytest.raises(ValueError, match="empty"):
        stoker.Loader([], batch_size=2)


OUTLIVE = r"""
import gc, os, numpy as np, stoker
fds = len(os.listdir("/proc/self/fd"))
x, y = stoker.from_arrays(np.ones((1000, 8), np.float32), np.arange(1000)).arrays
gc.collect()  # the source is gone, and its block was released under the views
assert x.sum() == 8000 and y.sum() == 499500 and x[5:].sum() == 7960
source = stoker.from_arrays(np.full((10, 8), 2, np.float32))
row = source[3]
del source
gc.collect()
assert row.sum() == 16
with stoker.Loader(stoker.from_arrays(np.ones((64, 4), np.float32), np.arange(64)),
                   batch_size=8, workers=2) as loader:
    kept = loader.source[5]
    batches = list(loader)
gc.collect()  # close() dropped the source: the sample kept from it still reads
assert kept[0].sum() == 4 and int(kept[1]) == 5 and len(batches) == 8
# Batches handed over as views of their slots (no copy) read after close() too.
assert sum(int(b[1].sum()) for b in batches) == 2016 and all(b[0].sum() == 32 for b in batches)
del x, y, row, kept, batches  # each view holds its mapping (and mmap's descriptor)
gc.collect()
assert not [n for n in os.listdir("/dev/shm") if n.startswith(f"stoker_{os.getpid()}_")]
assert len(os.listdir("/proc/self/fd")) <= fds + 2, "descriptors leaked"
print("OK")
"""


def test_arrays_and_samples_outlive_their_source_without_a_segfault():
    """Views keep the shared-memory mapping alive (shm.py): reading them after the source
    was collected, or after Loader.close(), reads the data instead of crashing (exit 139
    before), and the segments are unlinked and the descriptors closed all the same."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", OUTLIVE], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "OK", (done.returncode,
                                                                  done.stderr[-3000:])


# -- batches as one gather per field ---------------------------------------------------



class _OneAtATime:
    """The same samples through a class of the user's: read one sample at a time (the
    reference)."""

    def __init__(self, source):
        self.source = source

    def __len__(self):
        return len(self.source)

    def __getitem__(self, index):
        return self.source[index]


class _Forwarding:
    """A wrapper that passes every attribute on to a stoker source, with samples of its
    own (the source's, last first)."""

    def __init__(self, inner):
        self.inner = inner

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, index):
        return self.inner[len(self.inner) - 1 - index]

    def __getattr__(self, name):
        if name == "inner":  # not set yet (unpickling in a worker)
            raise AttributeError(name)
        return getattr(self.inner, name)


class _OwnRows(_OneAtATime):
    """A user's source with a method that happens to be called ``rows``."""

    def rows(self):
        return [tuple(row) for row in self.source]


class _Shifted(Subset):
    """A subset that reads its samples its own way (the next sample of the base)."""

    def __getitem__(self, index):
        return self.base[(int(self.indices[index]) + 1) % len(self.base)]


def _array_sources(x, y, tmp_path):
    stoker.store.save(tmp_path / "store", (x, y))
    store = stoker.store.open(tmp_path / "store")
    return {
        "tuple": stoker.from_arrays(x, y),
        "dict": stoker.from_arrays(image=x, label=y),
        "single": stoker.from_arrays(x),
        "split": stoker.from_arrays(x, y).split(0.7, seed=3)[1],
        "store": store,
        "store split": store.split(0.5, seed=1)[0],
    }


def test_a_gather_of_rows_is_the_samples_one_by_one(images, tmp_path):
    x, y = images
    indices = np.array([5, 0, 17, 17, 3, 40])
    for name, source in _array_sources(x, y, tmp_path).items():
        layout = BatchLayout.of(source[0])
        rows = rows_of(source)
        assert rows.kind == layout.kind, name
        out = layout.empty(len(indices))
        assert rows.gather(indices, out)
        expected = layout.empty(len(indices))
        for row, index in enumerate(indices):
            for target, leaf in zip(expected, layout.leaves(source[int(index)]), strict=True):
                target[row] = leaf
        for got, want in zip(out, expected, strict=True):
            assert got.dtype == want.dtype and np.array_equal(got, want), name
        assert not rows.gather(np.array([0, len(source)]), out), name  # out of range


def test_only_stokers_own_array_sources_are_gathered(images, tmp_path):
    x, y = images
    source = stoker.from_arrays(x, y)
    layout = BatchLayout.of(source[0])
    assert Producer(source, Transform.wrap(None))._gatherable(layout) is not None
    # A transform, a source without rows, a layout of another dtype: one at a time.
    assert Producer(source, Transform.wrap(lambda s: s))._gatherable(layout) is None
    assert Producer(_OneAtATime(source), Transform.wrap(None))._gatherable(layout) is None
    other = BatchLayout.of((x[0].astype(np.float32), y[0]))
    assert Producer(source, Transform.wrap(None))._gatherable(other) is None

    for wrapper in (_Forwarding(source), _OwnRows(source), _Shifted(source, np.arange(10))):
        assert rows_of(wrapper) is None
    # Encoded records (a blob field) have no fixed shape: no rows.
    stoker.store.save(tmp_path / "blobs", {"record": [b"ab", b"c"], "label": np.arange(2)})
    assert rows_of(stoker.store.open(tmp_path / "blobs")) is None
    # A released source has no arrays any more: its own error, not the gather's.
    source.release()
    assert Producer(source, Transform.wrap(None))._gatherable(layout) is None


@pytest.mark.parametrize("workers", [0, 2])
def test_sources_that_are_not_plain_rows_read_as_they_say(images, workers):
    """Red-team findings: a wrapper forwarding attributes, a source with a rows() of its
    own, a Subset subclass and a Subset with negative indices were read as the rows
    underneath (or refused to load); one out of range was clipped, not named."""
    x, y = images
    source = stoker.from_arrays(x, y)

    cases = [_Forwarding(source), _OwnRows(source), _Shifted(source, np.arange(40)),
             Subset(source, np.array([-1, -2, -3, 0, 4, 5, 6, 7]))]
    for case in cases:
        expected = np.array([int(case[i][1]) for i in range(len(case))])
        with stoker.Loader(case, batch_size=4, shuffle=False, workers=workers) as loader:
            labels = np.concatenate([labels for _, labels in loader])
        np.testing.assert_array_equal(labels, expected, err_msg=type(case).__name__)
    beyond = Subset(source, np.array([0, 1, 2, len(x) + 5]))
    with stoker.Loader(beyond, batch_size=4, shuffle=False, workers=workers) as loader:
        with pytest.raises(stoker.TransformError, match="sample 3"):
            list(loader)


def test_a_gather_reports_progress_in_steps(images, monkeypatch):
    """timeout= counts finished samples: a large gather reports after each step, not once
    at the end (a red-team run killed a healthy worker reading 512 KiB rows)."""
    from stoker.executors import _produce
    from stoker.sources import Rows

    x, y = images
    source = stoker.from_arrays(x, y)
    layout = BatchLayout.of(source[0])
    producer = Producer(source, Transform.wrap(None))
    producer.progress = (np.zeros(1, np.int64), 0)
    monkeypatch.setattr(_produce, "_GATHER_BYTES", 3 * layout.batch_nbytes(1))
    seen, gather = [], Rows.gather

    def counting(self, chosen, out):
        seen.append(int(producer.progress[0][0]))
        return gather(self, chosen, out)

    monkeypatch.setattr(Rows, "gather", counting)
    out = layout.empty(10)
    producer.fill(layout, np.zeros(2, np.uint64), list(range(10)), out)
    assert seen == [0, 3, 6, 9] and producer.progress[0][0] == 10
    np.testing.assert_array_equal(out[1], y[:10])


def _assert_same_batches(source, name, **kwargs):
    """Two epochs of ``source`` are those of the same samples read one at a time."""
    with stoker.Loader(_OneAtATime(source), **kwargs) as reference:
        expected = [[batch for batch in reference] for _ in range(2)]
    with stoker.Loader(source, **kwargs) as loader:
        got = [[batch for batch in loader] for _ in range(2)]
    assert len(got[0]) == len(expected[0]) and len(got[1]) == len(expected[1]), name
    for mine, theirs in zip(itertools.chain(*got), itertools.chain(*expected), strict=True):
        mine = mine if isinstance(mine, (tuple, dict)) else (mine,)
        theirs = theirs if isinstance(theirs, (tuple, dict)) else (theirs,)
        if isinstance(mine, dict):
            assert list(mine) == list(theirs), name
        values = (list(mine.values()), list(theirs.values())) if isinstance(mine, dict) \
            else (list(mine), list(theirs))
        for a, b in zip(*values, strict=True):
            assert a.dtype == b.dtype and np.array_equal(a, b), name


@pytest.mark.parametrize("options", EXECUTORS)
def test_gathered_batches_are_those_read_one_sample_at_a_time(images, tmp_path, options):
    x, y = images
    for name, source in _array_sources(x, y, tmp_path).items():
        _assert_same_batches(source, name, batch_size=16, shuffle=True, seed=9, **options)


class _LabelledToo(stoker.augment.Sharpen):
    """A transform of the user's that writes the label as well as the image: its
    samples are not the rows with one field replaced."""

    def with_image(self, sample, image):
        return (image, sample[1] + 1000)


@pytest.mark.parametrize("options", EXECUTORS)
def test_rows_gathered_around_a_batch_transform_are_those_read_one_at_a_time(
        images, tmp_path, options):
    """With a batch-capable transform the fields are gathered straight into the batch
    and the transform runs over the image rows in place: the same batches as reading
    each sample and stacking its image."""
    x, y = images
    sources = _array_sources(x, y, tmp_path)
    sources["dict, label first"] = stoker.from_arrays(label=y, image=x)
    sources["dict, no image key"] = stoker.from_arrays(picture=x, label=y)
    transforms = {"kanji_distort": stoker.augment.kanji_distort(),
                  "Compose": stoker.augment.Compose([stoker.augment.Rotate(),
                                                     stoker.augment.Smooth()])}
    for name, source in sources.items():
        layout = BatchLayout.of(source[0])
        for label, transform in transforms.items():
            around = Producer(source, Transform.wrap(transform))._gatherable_around_image(
                layout)
            if name == "dict, no image key":
                assert around is None  # the transform's own error names the key
                continue
            assert around is not None and around[1] == (1 if name == "dict, label first"
                                                         else 0), name
            _assert_same_batches(source, f"{name}, {label}", batch_size=16, shuffle=True,
                                 seed=9, transform=transform, **options)
    own = _LabelledToo()
    source = sources["tuple"]
    assert Producer(source, Transform.wrap(own))._gatherable_around_image(
        BatchLayout.of(source[0])) is None
    _assert_same_batches(source, "with_image of the user's", batch_size=16, seed=9,
                         transform=own, **options)
