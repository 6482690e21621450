"""stoker.Many: one sample in, several or none out. Batch b holds what the plan's batch b
of samples became, in plan order, for any executor and after a resume."""

from __future__ import annotations

import os

import numpy as np
import pytest

import stoker
from stoker.augment import MixUp
from stoker.plan import Purpose, epoch_key
from test_batch_transforms import EXECUTORS  # inline, fork, forkserver 2 and 4, spawn


def data(count: int = 70) -> stoker.Source:
    rng = np.random.default_rng(4)
    images = rng.integers(0, 255, (count, 6, 5), dtype=np.uint8)
    return stoker.from_arrays(images, np.arange(count, dtype=np.int64))


def original_and_noisy(sample, rng):
    """The question's batches: each image as it is and a distorted copy of it."""
    image, index = sample
    noisy = np.clip(image + rng.integers(-20, 20, image.shape), 0, 255).astype(np.uint8)
    return stoker.Many([(image, index), (noisy, index)])


def keep_some(sample, rng):
    """A filter: drops about a third of the samples, by a keyed draw."""
    image, index = sample
    return (image, index) if rng.random() < 0.66 else stoker.Many()


def zero_to_three(sample, rng):
    """A variable fan-out, none included."""
    image, index = sample
    return stoker.Many([(image + np.uint8(copy), index) for copy in range(rng.integers(0, 4))])


PIPELINES = [
    pytest.param(original_and_noisy, None, id="two-each"),
    pytest.param(keep_some, 1, id="filter"),
    pytest.param(zero_to_three, 3, id="zero-to-three"),
]


def expected_epoch(source, transform, *, seed, epoch, batch_size=16):
    """What the plan says: each batch's samples with their keyed generators, each one's
    outputs in order, computed here without a loader."""
    with stoker.Loader(source, batch_size=batch_size, seed=seed) as plain:
        plan = plain.epoch_batches(epoch)
    key = epoch_key(seed, epoch, Purpose.SAMPLES)
    batches = []
    for indices in plan:
        images, labels = [], []
        for i in indices:
            output = transform(source[int(i)], np.random.Generator(np.random.Philox(
                key=key, counter=[0, 0, int(i), 0])))
            for image, label in (output if isinstance(output, stoker.Many) else [output]):
                images.append(image)
                labels.append(label)
        batches.append((np.array(images, np.uint8).reshape(-1, 6, 5),
                        np.array(labels, np.int64)))
    return batches


def epochs_of(loader, count=2):
    return [[(x.copy(), y.copy()) for x, y in loader] for _ in range(count)]


def assert_same(mine, theirs):
    assert len(mine) == len(theirs)
    for (x, y), (ex, ey) in zip(mine, theirs, strict=True):
        np.testing.assert_array_equal(y, ey)
        np.testing.assert_array_equal(x, ex)


@pytest.mark.parametrize("executor", EXECUTORS)
@pytest.mark.parametrize(("transform", "max_outputs"), PIPELINES)
def test_batches_are_what_the_plan_says_for_any_executor(executor, transform, max_outputs):
    source = data()
    with stoker.Loader(source, batch_size=16, seed=5, transform=transform,
                       max_outputs=max_outputs, **executor) as loader:
        got = epochs_of(loader)
        assert len(loader) == 5  # batches of the plan, exactly, whatever they hold
    for epoch, batches in enumerate(got):  # epoch 1 was made ahead while 0 drained
        assert_same(batches, expected_epoch(source, transform, seed=5, epoch=epoch))


def test_each_sample_becomes_its_outputs_once_per_epoch():
    source = data()
    with stoker.Loader(source, batch_size=16, seed=1, transform=original_and_noisy,
                       workers=2) as loader:
        for _ in range(2):
            batches = [(x.copy(), y.copy()) for x, y in loader]
            assert [len(y) for _, y in batches] == [32, 32, 32, 32, 12]
            labels = np.concatenate([y for _, y in batches])
            assert np.bincount(labels).tolist() == [2] * 70
            images = np.concatenate([x for x, _ in batches])
            originals = images[0::2]  # each sample's first output is the original
            np.testing.assert_array_equal(originals, np.asarray(source.arrays[0])[labels[0::2]])
            assert (labels[0::2] == labels[1::2]).all()
    with stoker.Loader(source, batch_size=16, seed=1, transform=keep_some, max_outputs=1,
                       workers=2) as loader:
        kept = np.concatenate([y for _, y in loader])
        assert len(np.unique(kept)) == len(kept) < 70  # some dropped, none repeated


@pytest.mark.parametrize("executor", EXECUTORS[:3])
@pytest.mark.parametrize(("transform", "max_outputs"), PIPELINES)
def test_a_mid_epoch_resume_continues_where_it_stopped(executor, transform, max_outputs):
    source = data()
    options = dict(batch_size=16, seed=5, transform=transform, max_outputs=max_outputs)
    with stoker.Loader(source, **options, **executor) as loader:
        epoch = iter(loader)
        next(epoch), next(epoch)
        state = loader.state_dict()
    with stoker.Loader(source, **options, **executor) as loader:
        loader.load_state_dict(state)
        rest = [(x.copy(), y.copy()) for x, y in loader]
        following = [(x.copy(), y.copy()) for x, y in loader]
    assert_same(rest, expected_epoch(source, transform, seed=5, epoch=0)[2:])
    assert_same(following, expected_epoch(source, transform, seed=5, epoch=1))


def crash_once(marker):
    def transform(sample, rng):
        if not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(3)  # the worker dies in the middle of a batch
        return zero_to_three(sample, rng)
    return transform


def test_a_worker_crash_redoes_the_whole_batch(tmp_path):
    source = data()
    with stoker.Loader(source, batch_size=16, seed=5, workers=2, max_outputs=3,
                       transform=crash_once(str(tmp_path / "crashed")),
                       max_worker_restarts=1) as loader:
        got = [(x.copy(), y.copy()) for x, y in loader]
        assert len(loader.crashes) == 1
    assert_same(got, expected_epoch(source, zero_to_three, seed=5, epoch=0))


def test_a_fan_out_is_learnt_from_the_first_samples():
    with stoker.Loader(data(), batch_size=16, transform=original_and_noisy,
                       workers=2) as loader:
        assert [len(y) for _, y in loader] == [32, 32, 32, 32, 12]


def test_a_batch_that_loses_every_sample_is_delivered_empty():
    def odd_only(sample, rng):
        return sample if sample[1] % 2 else stoker.Many()

    def even_batches_empty(sample, rng):  # batches of 4: batch 0, 2, ... lose everything
        return sample if (sample[1] // 4) % 2 else stoker.Many()

    with stoker.Loader(data(16), batch_size=4, shuffle=False, transform=even_batches_empty,
                       max_outputs=1, workers=2) as loader:
        sizes = [(len(x), x.shape[1:], len(y)) for x, y in loader]
    assert sizes == [(0, (6, 5), 0), (4, (6, 5), 4), (0, (6, 5), 0), (4, (6, 5), 4)]
    with stoker.Loader(data(16), batch_size=4, shuffle=False, transform=odd_only,
                       workers=0) as loader:  # the first sample is dropped: learnt too
        assert [y.tolist() for _, y in loader] == [[1, 3], [5, 7], [9, 11], [13, 15]]


def test_a_batch_transform_sees_what_the_samples_became():
    source = data(64)
    mixup = MixUp(0.4, num_classes=70)
    with stoker.Loader(source, batch_size=16, seed=2, transform=original_and_noisy,
                       batch_transform=mixup, workers=2) as loader:
        got = [(x.copy(), y.copy()) for x, y in loader]
    with stoker.Loader(source, batch_size=16, seed=2, transform=original_and_noisy,
                       batch_transform=mixup, workers=0) as loader:
        inline = [(x.copy(), y.copy()) for x, y in loader]
    assert [x.shape for x, _ in got] == [(32, 6, 5)] * 4
    assert [y.shape for _, y in got] == [(32, 70)] * 4
    assert_same(got, inline)


def test_check_finite_names_the_sample_and_its_output():
    def nan_second(sample, rng):
        image, index = sample
        values = image.astype(np.float32)
        bad = values.copy()
        if index == 9:
            bad[0, 0] = np.nan
        return stoker.Many([(values, index), (bad, index)])

    with stoker.Loader(data(), batch_size=16, shuffle=False, transform=nan_second,
                       check_finite=True, workers=2) as loader:
        with pytest.raises(stoker.TransformError, match=r"sample 9 \(output 1 of the 2"):
            list(loader)


@pytest.mark.parametrize("workers", [0, 2])
def test_mistakes_get_errors_that_name_the_sample_and_the_fix(workers):
    source = data()

    def sometimes_none(sample, rng):  # first samples give one; sample 5 gives none
        return stoker.Many() if sample[1] == 5 else sample

    def a_list(sample, rng):
        return [sample, sample]

    def too_many(sample, rng):
        return stoker.Many([sample] * (3 if sample[1] == 7 else 2))

    def everything_dropped(sample, rng):
        return stoker.Many()

    def misshapen(sample, rng):
        image, index = sample
        return stoker.Many([(image, index), (image[:3], index)])

    cases = [
        (sometimes_none, {}, r"sample 5 .*dropped it \(stoker.Many\(\)\).*max_outputs=N"),
        (a_list, {}, r"sample 0 .*To make several samples of one, return stoker.Many"),
        (too_many, {}, r"sample 7 .*made 3 samples .*max_outputs=2, from the first samples"),
        (too_many, {"max_outputs": 2}, r"sample 7 .*made 3 .*\(max_outputs=2\); pass"),
        (everything_dropped, {}, r"dropped every one of the first 64 samples of epoch 0"),
        (misshapen, {"max_outputs": 2}, r"sample \d+ .*element 0 has shape \(3, 5\)"),
    ]
    for transform, extra, pattern in cases:
        with stoker.Loader(source, batch_size=16, shuffle=False, transform=transform,
                           workers=workers, **extra) as loader:
            with pytest.raises(stoker.TransformError, match=pattern):
                list(loader)


def test_many_itself_refuses_what_is_not_a_list_of_samples():
    with pytest.raises(TypeError, match=r"Many\(list\(array\)\)"):
        stoker.Many(np.zeros((2, 3)))
    with pytest.raises(TypeError, match="list of samples, got a dict"):
        stoker.Many({"image": np.zeros(3)})
    assert len(stoker.Many()) == 0 and len(stoker.Many(iter([1, 2]))) == 2
    assert stoker.Many([np.zeros(2)]) == stoker.Many([np.zeros(2)])
    with pytest.raises(ValueError, match="max_outputs must be >= 1"):
        stoker.Loader(data(), batch_size=4, max_outputs=0)
    with pytest.raises(TypeError, match="max_outputs must be an int"):
        stoker.Loader(data(), batch_size=4, max_outputs=1.5)


def test_keras_fit_trains_on_original_and_augmented_batches():
    keras = pytest.importorskip("keras")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 256)
    x = (rng.random((256, 8)) * 0.5 + 0.5 * y[:, None]).astype("float32")

    def twice(sample, rng):
        features, label = sample
        return stoker.Many([(features, label), (features + rng.normal(0, 0.05, 8)
                                                 .astype(np.float32), label)])

    with stoker.Loader(stoker.from_arrays(x, y), batch_size=32, workers=2, seed=0,
                       transform=twice) as loader:
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)])
        model.compile(keras.optimizers.Adam(0.02),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        history = model.fit(loader.keras(), epochs=3, verbose=0)
        assert (loader.position.epoch, loader.position.batch) == (3, 0)
        assert history.history["loss"][-1] < history.history["loss"][0]
        seen = sum(len(y) for _, y in loader.tf_dataset())
        assert seen == 512
