"""batch_transform=: a function of whole batches, run in the workers, keyed by (seed,
epoch, batch number, shard); and the MixUp / CutMix it is made for."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

import stoker
from stoker.augment import CutMix, MixUp
from stoker.plan import Purpose, epoch_key

EXECUTORS = [
    pytest.param({"workers": 0}, id="inline"),
    pytest.param({"workers": 1, "start_method": "fork"}, id="fork-1"),
    pytest.param({"workers": 2, "start_method": "forkserver"}, id="forkserver-2"),
    pytest.param({"workers": 4, "start_method": "forkserver"}, id="forkserver-4"),
    pytest.param({"workers": 2, "start_method": "spawn"}, id="spawn-2"),
]


def data(count: int = 70) -> stoker.Source:
    rng = np.random.default_rng(4)
    images = rng.integers(0, 255, (count, 6, 5, 1), dtype=np.uint8)
    return stoker.from_arrays(images, (np.arange(count) % 7).astype(np.int64))


def brighten(sample, rng):
    image, label = sample
    return image // 2 + np.uint8(rng.integers(0, 100)), label


def tagged(batch, rng):
    """Int labels to one-hot, one random number per batch in every row, and the rows'
    sum: a batch transform that changes the fields and sees the whole batch."""
    images, labels = batch
    return {"image": images, "onehot": np.eye(7, dtype=np.float32)[labels],
            "draw": np.full(len(images), rng.random()),
            "total": np.full(len(images), int(images.sum()), np.int64)}


def run_epochs(source, epochs=2, **options):
    with stoker.Loader(source, batch_size=16, seed=5, transform=brighten,
                       batch_transform=tagged, **options) as loader:
        return [[{k: v.copy() for k, v in b.items()} for b in loader] for _ in range(epochs)]


def assert_same(mine, theirs):
    assert len(mine) == len(theirs)
    for a, b in zip(mine, theirs, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def reference_batch(source, seed, epoch, number, indices, transform=brighten,
                    batch_transform=tagged):
    """What the plan says batch ``number`` is, computed here without a loader: its
    samples with their keyed generators, then the batch transform with the generator of
    (seed, epoch, batch number)."""
    key = epoch_key(seed, epoch, Purpose.SAMPLES)
    samples = [transform(source[int(i)], np.random.Generator(np.random.Philox(
        key=key, counter=[0, 0, int(i), 0]))) for i in indices]
    batch = tuple(np.stack(field) for field in zip(*samples, strict=True))
    return batch_transform(batch, np.random.Generator(np.random.Philox(
        key=key, counter=[0, 0, number, 1])))


@pytest.mark.parametrize("executor", EXECUTORS)
def test_batch_transformed_epochs_are_the_plan_for_any_executor(executor):
    source = data()
    got = run_epochs(source, **executor)
    with stoker.Loader(source, batch_size=16, seed=5) as plain:
        plans = [plain.epoch_batches(epoch) for epoch in (0, 1)]
    for epoch, (batches, plan) in enumerate(zip(got, plans, strict=True)):
        assert [len(b["image"]) for b in batches] == [16, 16, 16, 16, 6]
        expected = [reference_batch(source, 5, epoch, n, indices)
                    for n, indices in enumerate(plan)]
        assert_same(batches, expected)
        draws = [float(b["draw"][0]) for b in batches]
        assert len(set(draws)) == len(draws)  # every batch its own numbers


@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_mid_epoch_resume_continues_with_the_same_batch_numbers(executor):
    source = data()
    reference = run_epochs(source, epochs=1, workers=0)[0]
    options = dict(batch_size=16, seed=5, transform=brighten, batch_transform=tagged)
    with stoker.Loader(source, **options, **executor) as loader:
        epoch = iter(loader)
        next(epoch), next(epoch), next(epoch)
        state = loader.state_dict()
    with stoker.Loader(source, **options, **executor) as loader:
        loader.load_state_dict(state)
        rest = [{k: v.copy() for k, v in b.items()} for b in loader]
        following = [{k: v.copy() for k, v in b.items()} for b in loader]
    assert_same(rest, reference[3:])
    expected = run_epochs(source, epochs=2, workers=0)[1]
    assert_same(following, expected)  # the next epoch, made ahead while this one drained


def test_each_shard_draws_its_own_batch_numbers():
    source = data(64)
    draws = []
    for rank in (0, 1):
        with stoker.Loader(source, batch_size=8, seed=5, shard=(rank, 2), workers=2,
                           batch_transform=tagged) as loader:
            draws.append([float(b["draw"][0]) for b in loader])
    assert len(draws[0]) == len(draws[1]) == 4
    assert not set(draws[0]) & set(draws[1])


def test_the_layout_is_the_batch_transforms_output():
    with stoker.Loader(data(), batch_size=16, batch_transform=tagged, workers=2) as loader:
        layout = loader.layout
        assert layout.keys == ("image", "onehot", "draw", "total")
        assert [f.shape for f in layout.fields] == [(6, 5, 1), (7,), (), ()]
        assert [f.dtype for f in layout.fields] == [np.uint8, np.float32, np.float64, np.int64]


def crash_once(marker):
    def transform(batch, rng):
        if not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(3)  # the worker dies in the middle of the batch transform
        return tagged(batch, rng)
    return transform


@pytest.mark.parametrize("start_method", ["fork", "forkserver"])
def test_a_worker_crash_in_a_batch_transform_redoes_the_whole_batch(tmp_path, start_method):
    source = data()
    reference = run_epochs(source, epochs=1, workers=0)[0]
    with stoker.Loader(source, batch_size=16, seed=5, transform=brighten, workers=2,
                       batch_transform=crash_once(str(tmp_path / "crashed")),
                       max_worker_restarts=1, start_method=start_method) as loader:
        got = [{k: v.copy() for k, v in b.items()} for b in loader]
        assert len(loader.crashes) == 1 and loader.crashes[0][1] == 3
    assert_same(got, reference)


def legacy_noise(batch):
    images, labels = batch
    return images + np.random.randint(0, 3, images.shape).astype(np.uint8), labels


def test_a_legacy_batch_transform_is_seeded_and_leaves_the_callers_generator():
    source = data()
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    results = []
    for options in ({"workers": 0}, {"workers": 2}):
        with stoker.Loader(source, batch_size=16, seed=1, batch_transform=legacy_noise,
                           **options) as loader:
            results.append([tuple(a.copy() for a in b) for b in loader])
    np.testing.assert_array_equal(np.random.get_state()[1], before)
    for (a, b), (c, d) in zip(*results, strict=True):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)


def failing_on(number):
    def transform(batch, rng):
        if int(batch[1][0]) == number:
            raise KeyError("no such class")
        return batch
    return transform


def narrower_on_the_short_batch(batch, rng):
    images, labels = batch
    if len(images) == 6:  # the epoch's last batch (70 = 4 x 16 + 6)
        return images, labels.astype(np.int32)
    return images, labels


@pytest.mark.parametrize("workers", [0, 2])
def test_batch_transform_errors_name_the_batch(workers):
    source = data()
    with stoker.Loader(source, batch_size=16, shuffle=False, workers=workers,
                       batch_transform=failing_on(int(source[32][1]))) as loader:
        with pytest.raises(stoker.TransformError, match="batch_transform failed on batch 2 "
                           "of epoch 0: KeyError") as caught:
            list(loader)
        assert (caught.value.batch, caught.value.epoch, caught.value.index) == (2, 0, None)
        assert isinstance(caught.value.__cause__, KeyError)
    with stoker.Loader(source, batch_size=16, workers=workers,
                       batch_transform=narrower_on_the_short_batch) as loader:
        with pytest.raises(stoker.TransformError, match=r"output for batch 4 of epoch 0 does "
                           r"not fit the batch: element 1 has shape \(6,\) and dtype int32"):
            list(loader)
    with stoker.Loader(source, batch_size=16, workers=workers,
                       batch_transform=lambda batch, rng: None) as loader:
        with pytest.raises(stoker.TransformError, match="returned None; it must return the "
                           "batch"):
            _ = loader.layout
    with stoker.Loader(source, batch_size=16, workers=workers,
                       batch_transform=lambda batch, rng: (batch[0][:1], batch[1])) as loader:
        with pytest.raises(stoker.TransformError, match=r"element 0 has shape \(1, 6, 5, 1\), "
                           "but the batch has 16 rows"):
            list(loader)
    with stoker.Loader(source, batch_size=16, workers=workers, check_finite=True,
                       batch_transform=lambda b, rng: (b[0] * np.nan, b[1])) as loader:
        with pytest.raises(stoker.TransformError, match="element 0 of row 0 holds NaN or inf "
                           "after the batch transform"):
            list(loader)


def test_bad_batch_transforms_are_refused_at_construction():
    with pytest.raises(TypeError, match="batch_transform must be callable as "
                       r"f\(batch, rng\) or f\(batch\), got int"):
        stoker.Loader(data(), batch_size=4, batch_transform=3)
    with pytest.raises(TypeError, match=r"accept \(batch, rng\) or \(batch\)"):
        stoker.Loader(data(), batch_size=4, batch_transform=lambda a, b, c: a)
    lock = __import__("threading").Lock()
    with pytest.raises(TypeError, match="the batch_transform cannot be sent to worker"):
        stoker.Loader(data(), batch_size=4, workers=1, batch_transform=lambda b: (lock, b)[1])
    with pytest.raises(TypeError, match="here that is batch_transform="):
        stoker.Loader(data(), batch_size=4, batch_fn=lambda b: b)


# -- MixUp and CutMix ---------------------------------------------------------------------


def batch_of(count=8, classes=5, dtype=np.uint8):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (count, 8, 6, 3)).astype(dtype)
    return images, (np.arange(count) % classes).astype(np.int64)


def test_mixup_blends_images_and_one_hot_labels_with_one_weight():
    images, labels = batch_of(dtype=np.float32)
    mixed, onehot = MixUp(0.4, num_classes=5)((images, labels), np.random.default_rng(1))
    rng = np.random.default_rng(1)
    rng.random()
    lam, perm = rng.beta(0.4, 0.4), rng.permutation(8)
    np.testing.assert_allclose(mixed, lam * images + (1 - lam) * images[perm], rtol=1e-5)
    eye = np.eye(5, dtype=np.float32)
    np.testing.assert_allclose(onehot, lam * eye[labels] + (1 - lam) * eye[labels[perm]],
                               rtol=1e-6)
    np.testing.assert_allclose(onehot.sum(axis=1), 1.0, rtol=1e-6)
    assert onehot.dtype == np.float32 and mixed.dtype == np.float32
    again, soft = MixUp(0.4)((images, eye[labels]), np.random.default_rng(1))  # one-hot in
    np.testing.assert_array_equal(again, mixed)
    np.testing.assert_array_equal(soft, onehot)


def test_mixup_keeps_integer_images_integer_and_leaves_its_input():
    images, labels = batch_of()
    copy = images.copy()
    mixed, _ = MixUp(1.0, num_classes=5)((images, labels), np.random.default_rng(2))
    np.testing.assert_array_equal(images, copy)
    assert mixed.dtype == np.uint8
    rng = np.random.default_rng(2)
    rng.random()
    lam, perm = rng.beta(1.0, 1.0), rng.permutation(8)
    exact = lam * images.astype(np.float64) + (1 - lam) * images[perm]
    assert np.abs(mixed - exact).max() <= 0.5 + 1e-3


def test_cutmix_pastes_a_box_whose_area_is_the_label_weight():
    images, labels = batch_of(count=16)
    for seed in range(20):
        mixed, onehot = CutMix(num_classes=5)((images, labels), np.random.default_rng(seed))
        changed = (mixed != images).any(axis=(0, 3))  # the box, as a (height, width) mask
        weights = onehot[np.arange(16), labels]
        rows, cols = np.nonzero(changed)
        if len(rows):
            box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
            assert changed.sum() <= box
            assert weights.min() <= 1 - changed.sum() / 48 + 1e-6
        np.testing.assert_allclose(onehot.sum(axis=1), 1.0, rtol=1e-6)
        assert ((mixed == images) | changed[None, :, :, None]).all()  # only the box changes


def test_pairs_keep_int_labels_and_add_the_partner_and_the_weight():
    images, labels = batch_of()
    out = MixUp(pairs=True)((images, labels), np.random.default_rng(3))
    assert len(out) == 4
    _, first, second, lam = out
    np.testing.assert_array_equal(first, labels)
    rng = np.random.default_rng(3)
    rng.random()
    expected_lam, perm = rng.beta(0.2, 0.2), rng.permutation(8)
    np.testing.assert_array_equal(second, labels[perm])
    np.testing.assert_allclose(lam, expected_lam, rtol=1e-6)
    assert lam.dtype == np.float32
    dicts = CutMix(pairs=True)({"image": images, "label": labels}, np.random.default_rng(3))
    assert list(dicts) == ["image", "label", "label_b", "lam"]


def test_p_passes_some_batches_unmixed():
    images, labels = batch_of(dtype=np.float32)
    kept = 0
    for seed in range(40):
        mixed, onehot = MixUp(1.0, num_classes=5, p=0.5)((images, labels),
                                                       np.random.default_rng(seed))
        if np.array_equal(mixed, images):
            kept += 1
            np.testing.assert_array_equal(onehot, np.eye(5, dtype=np.float32)[labels])
    assert 8 < kept < 32


def test_mixing_mistakes_get_clear_errors():
    images, labels = batch_of()
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"int labels .* pass MixUp\(num_classes=N\)"):
        MixUp()((images, labels), rng)
    with pytest.raises(ValueError, match=r"label 4 is outside 0..3 \(num_classes=4\)"):
        MixUp(num_classes=4)((images, labels), rng)
    with pytest.raises(ValueError, match="the batch has no field 'image'"):
        MixUp(num_classes=5)({"x": images, "y": labels}, rng)
    assert len(MixUp(num_classes=5, fields=("x", "y"))({"x": images, "y": labels}, rng)) == 2
    with pytest.raises(ValueError, match="alpha must be > 0"):
        MixUp(0)
    with pytest.raises(ValueError, match="p must be >= 0 and <= 1"):
        CutMix(p=1.5)
    with pytest.raises(ValueError, match="Pass one of the two"):
        MixUp(num_classes=3, pairs=True)
    with pytest.raises(ValueError, match="CutMix cuts boxes"):
        CutMix(num_classes=5)((images.reshape(8, -1), labels), rng)
    with pytest.raises(TypeError, match="needs samples with an image and a label"):
        MixUp(num_classes=5)(images, rng)
    assert repr(MixUp(0.3, num_classes=5, p=0.5)) == "MixUp(alpha=0.3, num_classes=5, p=0.5)"
    assert repr(pickle.loads(pickle.dumps(CutMix(pairs=True)))) == "CutMix(alpha=1, pairs=True)"


@pytest.mark.parametrize("batch_transform", [MixUp(0.4, num_classes=7),
                                             CutMix(num_classes=7)], ids=repr)
def test_mixed_batches_are_the_same_for_any_worker_count(batch_transform):
    source = data()
    runs = []
    for workers in (0, 1, 2):
        with stoker.Loader(source, batch_size=16, seed=8, transform=brighten,
                           batch_transform=batch_transform, workers=workers) as loader:
            runs.append([tuple(a.copy() for a in b) for b in loader])
    for run in runs[1:]:
        for (a, b), (c, d) in zip(run, runs[0], strict=True):
            np.testing.assert_array_equal(a, c)
            np.testing.assert_array_equal(b, d)
    labels = np.concatenate([b for _, b in runs[0]])
    np.testing.assert_allclose(labels.sum(axis=1), 1.0, rtol=1e-6)
    assert (labels.max(axis=1) < 1).mean() > 0.5  # most rows are mixtures


def test_keras_fit_trains_on_mixed_batches():
    keras = pytest.importorskip("keras")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 256)
    x = (rng.random((256, 8, 8, 1)) * 0.5 + 0.5 * y[:, None, None, None]).astype("float32")
    with stoker.Loader(stoker.from_arrays(x, y), batch_size=32, workers=2, seed=0,
                       batch_transform=MixUp(0.2, num_classes=2)) as loader:
        model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                                  keras.layers.Dense(2, activation="softmax")])
        model.compile(keras.optimizers.Adam(0.01), "categorical_crossentropy")
        history = model.fit(loader.keras(), epochs=3, verbose=0)
        assert len(history.history["loss"]) == 3
        assert (loader.position.epoch, loader.position.batch) == (3, 0)
        assert history.history["loss"][-1] < history.history["loss"][0]


def torch_batch_noise(batch):
    """A legacy batch transform drawing from torch's global generator."""
    import torch

    images, labels = batch
    return images + torch.randint(0, 3, images.shape, dtype=torch.uint8).numpy(), labels


@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
def test_a_legacy_batch_transform_drawing_from_torch_is_seeded_in_workers(start_method):
    torch = pytest.importorskip("torch")
    source = data()
    runs = []
    for options in ({"workers": 0}, {"workers": 2, "start_method": start_method}):
        with stoker.Loader(source, batch_size=16, seed=2, batch_transform=torch_batch_noise,
                           **options) as loader:
            runs.append(np.concatenate([images for images, _ in loader]))
    np.testing.assert_array_equal(runs[0], runs[1])
    assert torch is not None
