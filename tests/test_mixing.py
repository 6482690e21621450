"""stoker.concat and stoker.mix: sources of sources, deterministic and of a defined
length, with the loader's guarantees over every executor."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import stoker
from stoker.layout import LayoutMismatch
from stoker.mixing import mix_table


def labelled(count: int, start: int, shape=(4, 4, 1)):
    """``count`` samples whose label is a number no other source of a test uses."""
    x = np.random.default_rng(start).integers(0, 255, (count, *shape), dtype=np.uint8)
    return stoker.from_arrays(x, np.arange(start, start + count, dtype=np.int64))


def labels(source) -> list[int]:
    return [int(source[i][1]) for i in range(len(source))]


def test_concat_is_the_sources_one_after_another():
    a, b = labelled(5, 0), labelled(3, 100)
    data = stoker.concat([a, b])
    assert len(data) == 8
    assert labels(data) == [0, 1, 2, 3, 4, 100, 101, 102]
    np.testing.assert_array_equal(data[6][0], b[1][0])
    assert int(data[-1][1]) == 102
    with pytest.raises(IndexError, match="sample 8 of 8"):
        data[8]
    with pytest.raises(TypeError, match="must be an int"):
        data[1.0]


def test_tags_say_which_source_a_sample_came_from():
    a, b = labelled(2, 0), labelled(2, 100)
    tuples = stoker.concat([a, b], tag="source")
    assert [int(tuples[i][2]) for i in range(4)] == [0, 0, 1, 1]
    x = np.zeros((3, 2), np.float32)
    arrays = stoker.concat([stoker.from_arrays(x), stoker.from_arrays(x + 1)], tag="source")
    sample, source = arrays[3]
    assert int(source) == 1 and sample.tolist() == [1.0, 1.0]
    dicts = stoker.mix([stoker.from_arrays(image=x), stoker.from_arrays(image=x + 1)],
                       [1, 1], tag="source")
    assert sorted(int(dicts[i]["source"]) for i in range(6)) == [0, 0, 0, 1, 1, 1]
    with pytest.raises(ValueError, match="already have a field 'image'"):
        stoker.concat([stoker.from_arrays(image=x)], tag="image")


def test_mix_gives_each_source_its_share_and_each_sample_evenly():
    small, large = labelled(10, 0), labelled(1000, 1000)
    data = stoker.mix([small, large], weights=[0.2, 0.8], length=500, seed=1)
    assert len(data) == 500 and data.counts() == [100, 400]
    got = np.array(labels(data))
    from_small = np.bincount(got[got < 10], minlength=10)
    assert from_small.tolist() == [10] * 10  # 100 draws of 10 samples: each 10 times
    from_large = got[got >= 1000]
    assert len(set(from_large.tolist())) == 400  # 400 of 1000: none twice
    # spread through the table: every tenth of it has about its share of each
    for part in np.array_split(got, 10):
        assert 8 <= np.count_nonzero(part < 10) <= 12


def test_largest_remainder_and_default_length():
    assert mix_table([5, 5, 5], [1, 1, 1], 10, 0)[0].tolist().count(0) in (3, 4)
    counts = np.bincount(mix_table([5, 5, 5], [1, 1, 1], 10, 0)[0]).tolist()
    assert sorted(counts) == [3, 3, 4]
    data = stoker.mix([labelled(7, 0), labelled(3, 100)], [1, 4])
    assert len(data) == 10 and data.counts() == [2, 8]
    assert stoker.mix([labelled(7, 0), labelled(3, 100)], [0, 1]).counts() == [0, 10]


def test_mix_is_deterministic_and_travels_as_its_arguments():
    a, b = labelled(50, 0), labelled(50, 100)
    one = stoker.mix([a, b], [3, 1], length=80, seed=7)
    again = stoker.mix([a, b], [3, 1], length=80, seed=7)
    other = stoker.mix([a, b], [3, 1], length=80, seed=8)
    assert labels(one) == labels(again) != labels(other)
    copied = pickle.loads(pickle.dumps(one))
    assert labels(copied) == labels(one)
    assert len(pickle.dumps(one)) < 4096  # the arguments, not the table
    train, val = one.split(0.75, seed=0)
    assert sorted(labels(train) + labels(val)) == sorted(labels(one))


def test_bad_combinations_are_refused_naming_the_fix():
    a = labelled(4, 0)
    with pytest.raises(LayoutMismatch, match=r"source 1 of mix .*\(5, 5, 1\).*\(4, 4, 1\)"):
        stoker.mix([a, labelled(4, 100, shape=(5, 5, 1))], [1, 1])
    with pytest.raises(LayoutMismatch, match="stoker ingest --size"):
        stoker.concat([a, stoker.from_arrays(np.zeros((4, 4, 4, 1), np.float32),
                                             np.zeros(4, np.int64))])
    with pytest.raises(ValueError, match="2 sources but 1 weights"):
        stoker.mix([a, a], [1])
    with pytest.raises(ValueError, match="weight 1 must be a finite number >= 0"):
        stoker.mix([a, a], [1, -1])
    with pytest.raises(ValueError, match="weight 0 must be"):
        stoker.mix([a, a], [float("nan"), 1])
    with pytest.raises(ValueError, match="sum to 0"):
        stoker.mix([a, a], [0, 0])
    with pytest.raises(ValueError, match=r"mix length \(samples\) must be >= 1, got 0"):
        stoker.mix([a], [1], length=0)
    with pytest.raises(TypeError, match=r"mix length \(samples\) must be an int, got 2.5"):
        stoker.mix([a], [1], length=2.5)
    with pytest.raises(TypeError, match="mix seed must be an int, got True"):
        stoker.mix([a], [1], seed=True)
    with pytest.raises(ValueError, match="mix seed must be >= 0, got -1"):
        stoker.mix([a], [1], seed=-1)
    with pytest.raises(TypeError, match="takes a list of sources"):
        stoker.concat(a)
    with pytest.raises(ValueError, match="at least one source"):
        stoker.concat([])
    with pytest.raises(TypeError, match="source 1 of concat: a source needs __len__"):
        stoker.concat([a, 3])
    named, other = labelled(4, 0), labelled(4, 100)
    named.classes, other.classes = ["a", "b"], ["b", "a"]
    with pytest.raises(ValueError, match="names its labels otherwise"):
        stoker.mix([named, other], [1, 1])
    other.classes = ("a", "b", "c")  # goes on where the other ends: labels agree
    assert stoker.mix([named, other], [1, 1]).classes == ("a", "b", "c")


EXECUTORS = [
    pytest.param({"workers": 0}, id="inline"),
    pytest.param({"workers": 2, "start_method": "fork"}, id="fork"),
    pytest.param({"workers": 2, "start_method": "forkserver"}, id="forkserver"),
    pytest.param({"workers": 3, "start_method": "spawn"}, id="spawn"),
]


def flip(sample, rng):
    image, label = sample
    return (image[:, ::-1] if rng.random() < 0.5 else image), label


def epochs(data, epochs=2, **options):
    with stoker.Loader(data, batch_size=16, transform=flip, seed=5, **options) as loader:
        return [[tuple(a.copy() for a in batch) for batch in loader] for _ in range(epochs)]


@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_loader_over_a_mix_keeps_its_guarantees(executor):
    data = stoker.mix([labelled(30, 0), stoker.concat([labelled(20, 100), labelled(25, 200)])],
                      [2, 1], length=90, seed=3)
    reference = epochs(data, workers=0)
    got = epochs(data, **executor)
    for mine, theirs in zip(got, reference, strict=True):
        assert len(mine) == len(theirs) == 6
        for (a, b), (c, d) in zip(mine, theirs, strict=True):
            np.testing.assert_array_equal(a, c)
            np.testing.assert_array_equal(b, d)
        assert sorted(np.concatenate([b for _, b in mine]).tolist()) == sorted(labels(data))
    with stoker.Loader(data, batch_size=16, transform=flip, seed=5, **executor) as loader:
        epoch = iter(loader)
        next(epoch), next(epoch)
        state = loader.state_dict()
    with stoker.Loader(data, batch_size=16, transform=flip, seed=5, **executor) as loader:
        loader.load_state_dict(state)
        rest = [tuple(a.copy() for a in batch) for batch in loader]
    for (a, b), (c, d) in zip(rest, reference[0][2:], strict=True):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)


def brighter_copy(sample, rng):
    image, label, copy = sample
    return (image + np.uint8(1 + rng.integers(0, 3)) if copy else image), label


def test_each_sample_once_as_it_is_and_once_transformed_every_epoch():
    """The README's recipe for the question's half-original, half-augmented batches."""
    data = labelled(40, 0)
    twice = stoker.concat([data, data], tag="copy")
    with stoker.Loader(twice, batch_size=16, seed=2, transform=brighter_copy,
                       workers=2) as loader:
        for _ in range(2):
            images, got = (np.concatenate(parts) for parts in zip(*loader, strict=True))
            assert sorted(got.tolist()) == sorted(list(range(40)) * 2)
            for label in range(40):
                first, second = images[got == label]
                kept = [np.array_equal(image, data[label][0]) for image in (first, second)]
                assert sorted(kept) == [False, True]  # one original, one changed


def test_red_team_findings_on_mix_inputs():
    """Found by a red-team pass: classes checked against every source, not the first;
    weights near the float limit; numpy weights and classes; a small share of a huge
    source costs what the share costs."""
    def named(classes):
        source = labelled(4, 0)
        source.classes = classes
        return source

    with pytest.raises(ValueError, match="source 2 of concat names its labels otherwise"):
        stoker.concat([named(["cat"]), named(["cat", "dog"]), named(["cat", "bird"])])
    assert stoker.concat([named(np.array(["a", "b"])), named(["a"])]).classes.tolist() == \
        ["a", "b"]
    huge = stoker.mix([labelled(5, 0), labelled(3, 100)], [1e308, 1e308], length=10)
    assert huge.counts() == [5, 5] and len(labels(huge)) == 10
    assert stoker.mix([labelled(5, 0), labelled(3, 100)], np.array([1.0, 3.0]),
                      length=8).counts() == [2, 6]
    which, inner = mix_table([10**12, 7], [1, 1], 20, 0)  # no permutation of 10**12
    assert np.bincount(which).tolist() == [10, 10]
    assert len(set(inner[which == 0].tolist())) == 10


@pytest.mark.slow
def test_keras_fit_trains_on_a_mixed_source():
    keras = pytest.importorskip("keras")

    def as_class(sample, rng):
        image, label = sample  # the three sources' labels, as three classes
        return (image.astype(np.float32) / 255, np.int64(label // 100))

    data = stoker.mix([labelled(40, 0), stoker.concat([labelled(30, 100), labelled(30, 200)])],
                      [1, 2], length=96, seed=1)
    with stoker.Loader(data, batch_size=16, transform=as_class, seed=0, workers=2) as loader:
        model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(),
                                  keras.layers.Dense(3)])
        model.compile(keras.optimizers.Adam(0.02),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        history = model.fit(loader.keras(), epochs=2, verbose=0)
        assert loader.position.epoch == 2  # two whole epochs of the mix, and no more
    assert len(history.history["loss"]) == 2 and np.isfinite(history.history["loss"]).all()
