"""loader.torch() and loader.tf_dataset(): the same batches as the loader, in each
framework's tensors, feeding a real training step."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
import torch

import stoker
from conftest import as_float

pytestmark = pytest.mark.slow


def numpy_epochs(data, count, **kwargs):
    with stoker.Loader(data, **kwargs) as loader:
        return [[tuple(np.copy(a) for a in batch) for batch in loader] for _ in range(count)]


def test_torch_batches_are_the_loaders_and_train_a_model(images):
    x, y = images
    data = stoker.from_arrays(x, y)
    expected = numpy_epochs(data, 2, batch_size=32, transform=as_float, workers=2, seed=1)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 203))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with stoker.Loader(data, batch_size=32, transform=as_float, workers=2, seed=1) as loader:
        batches = loader.torch()
        assert len(batches) == len(loader)
        losses = []
        for epoch in range(2):
            for (images_t, labels_t), (images_np, labels_np) in zip(batches, expected[epoch],
                                                                     strict=True):
                assert images_t.dtype == torch.float32 and labels_t.dtype == torch.int64
                np.testing.assert_array_equal(images_t.numpy(), images_np)
                np.testing.assert_array_equal(labels_t.numpy(), labels_np)
                optimizer.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(images_t), labels_t)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
        assert np.isfinite(losses).all()
        if not torch.cuda.is_available():
            with pytest.raises(ValueError, match="needs a CUDA device"):
                loader.torch(pin_memory=True)


def test_torch_keeps_dict_samples(images):
    x, y = images
    with stoker.Loader(stoker.from_arrays(image=x, label=y), batch_size=50, workers=0) as loader:
        batch = next(iter(loader.torch()))
    assert set(batch) == {"image", "label"} and tuple(batch["image"].shape) == (50, 8, 8, 1)


def test_tf_dataset_has_the_layouts_spec_and_trains_keras(images):
    x, y = images
    data = stoker.from_arrays(x, y)
    expected = numpy_epochs(data, 2, batch_size=32, transform=as_float, workers=2, seed=4)
    with stoker.Loader(data, batch_size=32, transform=as_float, workers=2, seed=4) as loader:
        dataset = loader.tf_dataset()
        images_spec, labels_spec = dataset.element_spec
        assert images_spec.shape.as_list() == [None, 8, 8, 1]
        assert images_spec.dtype == tf.float32 and labels_spec.dtype == tf.int64
        for epoch in range(2):  # one epoch per iteration of the dataset
            got = [(a.numpy(), b.numpy()) for a, b in dataset]
            assert len(got) == len(expected[epoch])
            for (a, b), (c, d) in zip(got, expected[epoch], strict=True):
                np.testing.assert_array_equal(a, c)
                np.testing.assert_array_equal(b, d)
        model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                                  keras.layers.Dense(203, activation="softmax")])
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        history = model.fit(dataset, epochs=2, verbose=0, shuffle=False)  # stoker shuffles
    assert len(history.history["loss"]) == 2


def test_tf_dataset_of_dict_samples(images):
    x, y = images
    with stoker.Loader(stoker.from_arrays(image=x, label=y), batch_size=50,
                       workers=0) as loader:
        spec = loader.tf_dataset().element_spec
    assert set(spec) == {"image", "label"} and spec["label"].dtype == tf.int64


KERAS_ON_BACKEND = """
import os, numpy as np, keras, stoker
assert keras.backend.backend() == os.environ["KERAS_BACKEND"]
x = np.random.default_rng(0).integers(0, 256, (96, 8, 8, 1), dtype=np.uint8)
y = np.arange(96) % 3
def as_float(sample, rng):
    return sample[0].astype(np.float32) / 255, sample[1]
with stoker.Loader(stoker.from_arrays(x, y), batch_size=32, transform=as_float,
                   workers=2) as train:
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    history = model.fit(train.keras(), epochs=2, verbose=0)
    print("epochs", len(history.history["loss"]), "loader epoch", train.epoch)
"""


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_keras_adapter_on_the_torch_and_jax_backends(backend):
    import os
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", KERAS_ON_BACKEND], capture_output=True,
                          text=True, timeout=300,
                          env={**os.environ, "KERAS_BACKEND": backend})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "epochs 2 loader epoch 2" in done.stdout


JAX_STEPS = """
import jax, numpy as np, stoker
jnp = jax.numpy
x = np.random.default_rng(1).integers(0, 256, (203, 8, 8, 1), dtype=np.uint8)
data = stoker.from_arrays(x, np.arange(203) % 4)

def as_float(sample, rng):
    return sample[0].astype(np.float32) / 255, sample[1]

def loss_fn(weights, images, labels):
    logits = images.reshape(len(images), -1) @ weights
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(len(labels)), labels])

step = jax.jit(lambda w, a, b: w - 0.05 * jax.grad(loss_fn)(w, a, b))
weights = jnp.zeros((64, 4))
epoch_losses = []
with stoker.Loader(data, batch_size=32, transform=as_float, workers=2, seed=0) as loader:
    for _ in range(8):
        losses = []
        for images_np, labels_np in loader:
            images_d, labels_d = jax.device_put((images_np, labels_np))
            losses.append(float(loss_fn(weights, images_d, labels_d)))
            weights = step(weights, images_d, labels_d)
        epoch_losses.append(np.mean(losses))
print("losses", *epoch_losses)
"""


def test_jax_trains_on_the_loaders_numpy_batches():
    """JAX needs no adapter: batches are numpy arrays, which jax.device_put takes as is.
    In a process of its own: JAX's threads make any later fork in this one unsafe."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", JAX_STEPS], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    losses = [float(v) for v in done.stdout.split("losses", 1)[1].split()]
    assert len(losses) == 8 and np.isfinite(losses).all() and losses[-1] < losses[0]


def test_tf_dataset_after_a_mid_epoch_resume_declares_what_remains(images):
    x, y = images
    data = stoker.from_arrays(x, y)
    expected = numpy_epochs(data, 1, batch_size=32, workers=0, seed=4)[0]
    with stoker.Loader(data, batch_size=32, workers=2, seed=4) as first:
        epoch = iter(first)
        next(epoch), next(epoch)
        state = first.state_dict()
    with stoker.Loader(data, batch_size=32, workers=2, seed=4) as loader:
        loader.load_state_dict(state)
        dataset = loader.tf_dataset()
        assert int(dataset.cardinality()) == len(loader) - 2
        got = [(a.numpy(), b.numpy()) for a, b in dataset]  # no cardinality error at the end
        assert len(got) == len(loader) - 2
        for (a, b), (c, d) in zip(got, expected[2:], strict=True):
            np.testing.assert_array_equal(a, c)
            np.testing.assert_array_equal(b, d)
        with pytest.raises(Exception, match=r"call loader\.tf_dataset\(\) again"):
            list(dataset)  # a whole epoch now: another number of batches than declared
        assert len(list(loader.tf_dataset())) == len(loader)


@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
def test_tf_tensors_held_while_the_iteration_goes_on_are_never_overwritten(images,
                                                                           start_method):
    """tf_dataset() hands batches over without a copy where it can: a tensor kept while
    the loader reuses its delivery buffers must keep its values."""
    x, y = images
    data = stoker.from_arrays(x, y)
    expected = numpy_epochs(data, 2, batch_size=16, workers=0, seed=1)
    with stoker.Loader(data, batch_size=16, workers=2, seed=1,
                       start_method=start_method) as loader:
        held = [batch for _ in range(2) for batch in loader.tf_dataset()]
        lent = loader._executor._lent  # white box: tensors made over slots, no copy
        assert lent.lent == lent.limit > 0 and lent.copied == len(held) - lent.limit
        for (a, b), (c, d) in zip(held, expected[0] + expected[1], strict=True):
            np.testing.assert_array_equal(a.numpy(), c)
            np.testing.assert_array_equal(b.numpy(), d)


def test_a_tf_dataset_call_of_an_iteration_that_is_over_takes_nothing():
    """A prefetch of your own, stopped fit(): tf.data's thread is still in a call when
    fit() returns (held here until a new iteration has begun, as a busy machine can
    delay it). That call belongs to the old iteration and takes nothing from the new."""
    import threading

    x = np.random.default_rng(0).random((100, 4, 4, 1)).astype(np.float32)
    y = np.arange(100, dtype=np.float32)  # labels name the samples
    go, held = threading.Event(), threading.Event()
    with stoker.Loader(stoker.from_arrays(x, y), batch_size=20, workers=0, seed=3) as loader:
        base = loader.tf_dataset()
        reader = next(a for a in loader._adapters if type(a).__name__ == "_Reader")
        take = reader.take

        def held_take(token, index):  # the call that prefetches batch 3
            if int(index) == 3 and not go.is_set():
                held.set()
                go.wait(60)
            return take(token, index)

        reader.take = held_take

        class StopOnceHeld(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                if batch == 1:
                    assert held.wait(60), "tf.data did not prefetch"
                    self.model.stop_training = True

        model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(),
                                  keras.layers.Dense(1)])
        model.compile("sgd", "mse")
        dataset = base.prefetch(2)
        model.fit(dataset, epochs=1, verbose=0, callbacks=[StopOnceHeld()])
        loader.set_epoch(1)
        iterator = iter(dataset)
        seen = [next(iterator)[1].numpy()]  # the new iteration has begun
        go.set()
        seen += [labels.numpy() for _, labels in iterator]
        np.testing.assert_array_equal(np.concatenate(seen),
                                      np.concatenate(loader.epoch_batches(1)))


def raised(call) -> str:
    """The message of what ``call`` raises (the exception itself is let go: TensorFlow's
    keeps frames, and with them the loader's memory, alive)."""
    try:
        call()
    except Exception as error:  # TensorFlow wraps the LoaderError
        return str(error)
    raise AssertionError("nothing was raised")


def test_a_second_iteration_of_a_tf_dataset_never_feeds_the_first_zeros():
    """Red-team finding: a second iteration refused mid-epoch leaves the first as it was
    (it went on with 1-row zero batches, the cursor standing still). An iteration that
    a newer one ended raises instead (test_a_tf_dataset_call_of_an_iteration_...)."""
    y = np.arange(1, 101, dtype=np.float32)  # 0 is never a label
    data = stoker.from_arrays(image=np.repeat(y[:, None], 4, 1), label=y)
    with stoker.Loader(data, batch_size=20, workers=0, seed=1) as loader:
        expected = np.concatenate(loader.epoch_batches(0)) + 1
        dataset = loader.tf_dataset()
        first = iter(dataset)
        labels = [next(first)["label"].numpy()]
        said = raised(lambda: next(iter(dataset)))
        assert "an iteration of this tf.data.Dataset is under way" in said, said
        assert "iterate one at a time" in said and "call loader.tf_dataset() again" in said
        labels += [batch["label"].numpy() for batch in first]  # goes on, untouched
        np.testing.assert_array_equal(np.concatenate(labels), expected)
        assert loader.position.epoch == 1 and loader.position.batch == 0


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_a_torch_dataloader_with_workers_is_refused_with_the_fix(images, context):
    x, y = images
    with stoker.Loader(stoker.from_arrays(x, y), batch_size=50, workers=2) as loader:
        wrapped = torch.utils.data.DataLoader(loader.torch(), batch_size=None, num_workers=2,
                                              multiprocessing_context=context)
        iterator = None
        with pytest.raises(Exception, match="num_workers=0") as caught:
            iterator = iter(wrapped)  # spawn: refused here, fork: by the first worker
            next(iterator)
        assert "stoker already runs the workers" in str(caught.value)
        if iterator is not None:
            # torch's own clean-up, at once; left to garbage collection, the iterator of
            # a failed epoch waits 5 s for each of its workers.
            iterator._shutdown_workers()
        plain = torch.utils.data.DataLoader(loader.torch(), batch_size=None, num_workers=0)
        assert sum(len(labels) for _, labels in plain) == len(x)


def test_a_tf_dataset_iteration_whose_first_batch_fails_starts_no_second_run():
    """The scan carries the iteration's token from its first batch: when that batch
    fails, the next call of the same iterator is refused (it would otherwise start a
    second run and shift every batch by one), and a new iteration reads the whole epoch."""
    x = np.zeros((40, 2), np.float32)
    y = np.arange(40, dtype=np.int64)  # labels name the samples
    failures = {"left": 0}  # armed once the layout is known

    class FailsOnce:
        def __len__(self):
            return 40

        def __getitem__(self, index):
            if failures["left"]:
                failures["left"] -= 1
                raise OSError("the disk hiccuped")
            return x[index], y[index]

    with stoker.Loader(FailsOnce(), batch_size=8, workers=0, seed=5) as loader:
        dataset = loader.tf_dataset()
        failures["left"] = 1
        iterator = iter(dataset)
        assert "the disk hiccuped" in raised(lambda: next(iterator))
        assert "failed at its first batch" in raised(lambda: next(iterator))
        assert loader.position.batch == 0
        labels = np.concatenate([labels.numpy() for _, labels in dataset])
        np.testing.assert_array_equal(labels, np.concatenate(loader.epoch_batches(0)))
        assert (loader.position.epoch, loader.position.batch) == (1, 0)


def test_a_closed_loader_says_so_to_every_consumer(images):
    """close() under a live tf.data iterator, or before the dataset is iterated again,
    is named as such (it was blamed on the cursor, with advice that cannot work), and
    no new view of a closed loader is made."""
    data = stoker.from_arrays(*images)
    loader = stoker.Loader(data, batch_size=32, workers=2, seed=0)
    dataset = loader.tf_dataset()
    iterator = iter(dataset)
    next(iterator)
    torch_batches = iter(loader.torch())
    loader.close()
    for call in (lambda: next(iterator), lambda: list(dataset), lambda: next(torch_batches),
                 loader.keras, loader.tf_dataset, loader.torch, lambda: next(iter(loader))):
        said = raised(call)
        assert "this Loader is closed; create a new one" in said, said
        assert "cursor" not in said and "epoch ended" not in said, said
