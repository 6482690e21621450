import pickle

import numpy as np
import pytest

import stoker
from stoker.sources import ArraySource, Subset


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
])
def test_from_arrays_refuses_bad_input(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        stoker.from_arrays(*args, **kwargs)


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
