"""Real Keras 3 fit() on the TensorFlow backend, fed by stoker loaders."""


import math

import numpy as np
import pytest

import stoker
from conftest import as_float

pytestmark = pytest.mark.slow
keras = pytest.importorskip("keras")
from stoker.adapters.keras import KerasDataset  # noqa: E402


def small_model(shape, classes):
    model = keras.Sequential([
        keras.Input(shape),
        keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(classes, activation="softmax"),
    ])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


class Recording(KerasDataset):
    """Records the labels of every batch handed to Keras inside an epoch."""

    def __init__(self, loader):
        super().__init__(loader)
        self.seen = []

    def _next(self):
        batch = super()._next()  # a loader batch: not a shape peek's zeros
        self.seen.append(batch[1].copy())
        return batch


def test_fit_with_training_and_validation_loaders(images):
    x, y = images
    data = stoker.from_arrays(x, (y % 3).astype(np.int32))
    train, val = data.split(0.75, seed=0)
    with stoker.Loader(train, batch_size=32, transform=as_float, workers=2) as train_loader, \
            stoker.Loader(val, batch_size=32, transform=as_float, shuffle=False,
                          workers=2) as val_loader:
        dataset = Recording(train_loader)
        model = small_model((8, 8, 1), 3)
        history = model.fit(dataset, validation_data=val_loader.keras(), epochs=3, verbose=0,
                            shuffle=True)
        assert train_loader.epoch == 3 and val_loader.epoch == 3
    assert set(history.history) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert len(history.history["loss"]) == 3
    assert all(np.isfinite(history.history["val_loss"]))
    assert len(dataset.seen) == 3 * len(train_loader)


def test_fit_sees_each_index_exactly_once_per_epoch(images):
    x, y = images
    data = stoker.from_arrays(x.astype(np.float32), y)  # label = the sample's own index
    with stoker.Loader(data, batch_size=40, workers=2) as loader:
        dataset = Recording(loader)
        model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                                  keras.layers.Dense(1)])
        model.compile("sgd", "mse")
        model.fit(dataset, epochs=2, verbose=0, shuffle=True)
    recorded = dataset.seen
    n = len(loader)
    epochs = [np.concatenate(recorded[e * n:(e + 1) * n]) for e in range(2)]
    for labels in epochs:
        assert sorted(labels.tolist()) == list(range(len(x)))
    assert not np.array_equal(epochs[0], epochs[1])


def test_the_question_transform_is_reproducible_through_fit(question):
    rng = np.random.default_rng(0)
    x = (rng.random((96, 64, 64, 1)) > 0.7).astype(np.float16)
    y = rng.integers(0, 3000, 96).astype(np.int32)  # > 2048: float16 would corrupt these
    data = stoker.from_arrays(x, y)
    runs = []
    for workers in (0, 2):
        with stoker.Loader(data, batch_size=32, transform=question.question_transform,
                           workers=workers, seed=2) as loader:
            runs.append([b for b in loader])
    for (a, b), (c, d) in zip(*runs, strict=True):
        assert a.dtype == np.uint8 and np.array_equal(a, c) and np.array_equal(b, d)
        assert b.dtype == np.int32
    with stoker.Loader(data, batch_size=32, transform=question.question_transform,
                       workers=2) as loader:
        model = small_model((64, 64, 1), 3000)
        model.fit(loader.keras(), epochs=1, verbose=0)


def test_the_stats_callback_reports_every_epoch_with_a_verdict(images):
    from stoker.adapters.keras import LoaderStatsCallback

    x, y = images
    lines = []
    with stoker.Loader(stoker.from_arrays(x, y), batch_size=8, transform=as_float,
                       workers=2) as loader:
        callback = LoaderStatsCallback(loader, print_fn=lines.append)
        model = small_model(x.shape[1:], 203)
        history = model.fit(loader.keras(), epochs=2, verbose=0, callbacks=[callback])
    assert len(callback.history) == 2 and len(lines) == 2
    assert all(stats.samples == len(x) and stats.batches == len(loader)
               for stats in callback.history)
    assert all(("input-bound" in line) != ("model-bound" in line) for line in lines)
    assert all(" samples/s; " in line for line in lines), lines  # 25 timed batches each
    assert len(history.history["loader_samples_per_s"]) == 2
    with stoker.Loader(stoker.from_arrays(x[:40], y[:40]), batch_size=8, transform=as_float,
                       workers=2) as loader:
        short = LoaderStatsCallback(loader, print_fn=lines.append)
        logged = model.fit(loader.keras(), epochs=1, verbose=0, callbacks=[short]).history
    # 4 timed batches: no rate (a few prefetched batches read as any number), the verdict
    assert lines[-1].startswith("  loader: not enough data to judge: 4 batches"), lines[-1]
    for name in ("samples_per_s", "wait_fraction", "worker_utilisation"):  # nor in the logs
        assert [math.isnan(v) for v in logged[f"loader_{name}"]] == [True], logged
    assert not math.isnan(logged["loader_queue_depth"][0])


def test_loader_statistics_reach_tensorboard(images, tmp_path):
    import keras
    import tensorflow as tf

    from stoker.adapters.keras import LoaderStatsCallback

    x, y = images
    with stoker.Loader(stoker.from_arrays(x, y), batch_size=8, transform=as_float,
                       workers=1) as loader:
        model = small_model(x.shape[1:], 203)
        model.fit(loader.keras(), epochs=2, verbose=0, callbacks=[
            LoaderStatsCallback(loader, print_fn=lambda line: None),
            keras.callbacks.TensorBoard(log_dir=str(tmp_path / "logs"))])
    scalars: dict[str, list[float]] = {}
    for events in (tmp_path / "logs" / "train").glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(events)):
            for value in event.summary.value:
                if value.tag.startswith("epoch_"):  # the scalars (not the model graph)
                    scalars.setdefault(value.tag, []).append(
                        float(tf.make_ndarray(value.tensor)))
    for name in ("samples_per_s", "wait_fraction", "worker_utilisation", "queue_depth"):
        assert len(scalars[f"epoch_loader_{name}"]) == 2, sorted(scalars)
    assert all(rate > 0 for rate in scalars["epoch_loader_samples_per_s"])
    assert all(0 <= share <= 1 for share in scalars["epoch_loader_wait_fraction"])
