"""The Keras consumer contract, as a script: run by test_keras_cursor.py once per Keras
backend (KERAS_BACKEND) and executor (argv[1]: the worker count, or "auto"), in a fresh process
each, since a process has one Keras backend. Prints OK when every check passed.

Labels are the samples' own indices, so every batch says which samples it holds."""

from __future__ import annotations

import os
import sys
import threading
import warnings

import keras
import numpy as np

import stoker
from stoker.adapters.keras import KerasDataset, LoaderCursor, is_peek
from stoker.cursor import Position

assert keras.backend.backend() == os.environ.get("KERAS_BACKEND", "tensorflow")
_ARG = sys.argv[1] if len(sys.argv) > 1 else "2"
WORKERS: int | str = "auto" if _ARG == "auto" else int(_ARG)
# "auto" sizes the ring too: the tuner may grow the pool and the ring under fit()
RING = {"prefetch": "auto"} if WORKERS == "auto" else {}
N, BATCH = 100, 20  # 5 batches an epoch
rng = np.random.default_rng(0)
X = rng.random((N, 4, 4, 1)).astype(np.float32)
Y = np.arange(N, dtype=np.float32)


class Recording(KerasDataset):
    """Keeps the labels of every loader batch handed to Keras (not the zeros of shape
    peeks, nor those a reader whose pass is over gets)."""

    def __init__(self, loader):
        super().__init__(loader)
        self.seen: list[np.ndarray] = []

    def _next(self):
        batch = super()._next()
        self.seen.append(np.asarray(batch[1]).astype(int).copy())
        return batch


def loader(**options):
    return stoker.Loader(stoker.from_arrays(X, Y), batch_size=BATCH, workers=WORKERS, seed=3,
                         **RING, **options)


def model():
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(1)])
    m.compile("sgd", "mse")
    return m


def plan(source_loader, epoch):
    return np.concatenate(source_loader.epoch_batches(epoch)).tolist()


def epochs_of(seen, count):
    """``seen`` cut into ``count`` loader epochs, each checked to hold every sample once."""
    flat = np.concatenate(seen).tolist() if seen else []
    assert len(flat) == count * N, (len(flat), count * N)
    parts = [flat[e * N:(e + 1) * N] for e in range(count)]
    for part in parts:
        assert sorted(part) == list(range(N)), "a sample missed or repeated"
    return parts


def fit_evaluate_predict_again_and_again():
    """Two fit()s with validation, evaluate(), predict(): every pass one loader epoch."""
    with loader() as train, loader(shuffle=False) as val:
        ds, vds = Recording(train), Recording(val)
        m = model()
        m.fit(ds, validation_data=vds, epochs=2, verbose=0)
        m.fit(ds, validation_data=vds, epochs=1, verbose=0)
        assert train.epoch == 3 and val.epoch == 3, (train.epoch, val.epoch)
        assert epochs_of(ds.seen, 3) == [plan(train, e) for e in range(3)]
        assert epochs_of(vds.seen, 3) == [list(range(N))] * 3
        vds.seen.clear()
        m.evaluate(vds, verbose=0)
        predicted = m.predict(vds, verbose=0)
        assert epochs_of(vds.seen, 2) == [list(range(N))] * 2
        assert predicted.shape == (N, 1)
        direct = keras.ops.convert_to_numpy(m(X))
        np.testing.assert_allclose(predicted, direct, rtol=1e-5, atol=1e-6)
        assert val.epoch == 5


class Steps(keras.callbacks.Callback):
    """Counts the steps of fit(), evaluate() or predict() (used on calls without
    validation, so the count is of one kind)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def on_train_batch_end(self, batch, logs=None):
        self.count += 1

    on_test_batch_end = on_predict_batch_end = on_train_batch_end


def steps_per_epoch_walks_whole_epochs():
    """steps_per_epoch=3 of 5 batches (Keras ends an epoch early where its reader runs
    out): the batches trained are loader epochs in order, each sample once, and the
    next fit() continues after the last batch trained."""
    with loader() as train:
        ds = Recording(train)
        m, steps = model(), Steps()
        m.fit(ds, steps_per_epoch=3, epochs=5, verbose=0, callbacks=[LoaderCursor(train), steps])
        assert train.position == Position(steps.count // 5, steps.count % 5), train.position
        trained = np.concatenate(ds.seen)[:steps.count * BATCH].tolist()
        ds.seen.clear()
        m.fit(ds, epochs=1, verbose=0)  # the rest of the epoch the first fit() was in
        assert train.position == Position(steps.count // 5 + 1, 0)
        trained += np.concatenate(ds.seen).tolist()
        whole = len(trained) // N
        assert epochs_of([np.array(trained)], whole) == [plan(train, e) for e in range(whole)]


class StateEveryStep(keras.callbacks.Callback):
    def __init__(self, loader):
        super().__init__()
        self.loader, self.states = loader, []

    def on_train_batch_end(self, batch, logs=None):
        self.states.append(self.loader.state_dict())


def state_during_fit_is_what_the_model_trained_on():
    with loader() as train:
        states = StateEveryStep(train)
        model().fit(train.keras(), epochs=2, verbose=0, callbacks=[LoaderCursor(train), states])
        got = [(s["epoch"], s["batches_done"]) for s in states.states]
        steps = range(1, 11)
        assert got == [(step // 5, step % 5) for step in steps], got
    with loader() as train:
        try:
            model().fit(train.keras(), epochs=1, verbose=0, callbacks=[StateEveryStep(train)])
        except stoker.LoaderError as error:
            assert "LoaderCursor" in str(error), error
        else:
            raise AssertionError("state_dict() without LoaderCursor mid-epoch must refuse")


class StopAt(keras.callbacks.Callback):
    """Stops fit() after step ``step``: with ``stop_training`` (as EarlyStopping does), or
    by raising out of it (``raising``: as a NaN guard or a Ctrl-C does)."""

    def __init__(self, step, raising=False):
        super().__init__()
        self.step, self.raising = step, raising

    def on_train_batch_end(self, batch, logs=None):
        if batch == self.step:
            if self.raising:
                raise RuntimeError("stopped")
            self.model.stop_training = True


def a_tracked_fit_stopped_mid_epoch_leaves_an_exact_state():
    """Stopped after 3 steps (tf.data had read ahead): the state says 3, and the next
    fit() continues with batch 3."""
    with loader() as train:
        ds = Recording(train)
        m = model()
        m.fit(ds, epochs=2, verbose=0, callbacks=[LoaderCursor(train), StopAt(2)])
        state = train.state_dict()
        assert (state["epoch"], state["batches_done"]) == (0, 3), state
        ds.seen.clear()
        m.fit(ds, epochs=1, verbose=0, callbacks=[LoaderCursor(train)])
        assert np.concatenate(ds.seen).tolist()[:2 * BATCH] == plan(train, 0)[3 * BATCH:]


class HeldCall(Recording):
    """Holds the pass's 4th call (tf.data's thread prefetching the batch after step 3)
    until ``go`` is set, as a busy machine can: it then arrives after fit() returned."""

    HELD = 4

    def __init__(self, loader):
        super().__init__(loader)
        self.calls = 0
        self.go, self.started, self.done = (threading.Event() for _ in range(3))

    def __getitem__(self, index):
        if not is_peek(sys._getframe(1)):
            self.calls += 1
            if self.calls == self.HELD:
                self.started.set()
                self.go.wait(60)
                try:
                    return super().__getitem__(index)
                finally:
                    self.done.set()
        return super().__getitem__(index)


class StopOnceHeld(StopAt):
    """Stops fit() after step 3, once the prefetch of the next batch is under way."""

    def __init__(self, dataset):
        super().__init__(HeldCall.HELD - 2)
        self.dataset = dataset

    def on_train_batch_end(self, batch, logs=None):
        if batch == self.step:
            assert self.dataset.started.wait(60), "tf.data did not prefetch"
        super().on_train_batch_end(batch, logs)


def a_call_after_fit_returned_changes_nothing():
    """A reader's call that arrives after its fit() returned is not a new pass: the state
    stays exact and the next fit() continues with the batches the model did not train on.
    Only the TensorFlow backend reads in a thread of its own."""
    if keras.backend.backend() != "tensorflow":
        return
    with loader() as train:
        ds = HeldCall(train)
        m = model()
        m.fit(ds, epochs=2, verbose=0, callbacks=[LoaderCursor(train), StopOnceHeld(ds)])
        ds.go.set()
        assert ds.done.wait(60), "the held call never ended"
        state = train.state_dict()  # not refused: no pass of a fit is under way
        assert (state["epoch"], state["batches_done"]) == (0, 3), state
        ds.seen.clear()
        m.fit(ds, epochs=1, verbose=0, callbacks=[LoaderCursor(train)])
        assert np.concatenate(ds.seen).tolist() == plan(train, 0)[3 * BATCH:]


class Served(KerasDataset):
    """Keeps the row count of every batch handed to Keras' readers (not peeks)."""

    def __init__(self, loader):
        super().__init__(loader)
        self.rows: list[int] = []

    def __getitem__(self, index):
        peek = is_peek(sys._getframe(1))
        batch = super().__getitem__(index)
        if not peek:
            self.rows.append(len(batch[1]))
        return batch


class EvaluateOn(keras.callbacks.Callback):
    def __init__(self, dataset, every_batch=False):
        super().__init__()
        self.dataset, self.every_batch = dataset, every_batch

    def on_epoch_end(self, epoch, logs=None):
        if not self.every_batch:
            self.model.evaluate(self.dataset, verbose=0)

    def on_train_batch_end(self, batch, logs=None):
        if self.every_batch and batch == 1:
            self.model.evaluate(self.dataset, steps=2, verbose=0)


def a_nested_pass_mid_epoch_is_refused_and_at_an_epoch_end_is_exact():
    """Red-team findings: a pass inside fit() over the training view (validation on it,
    evaluate() in a callback) while fit's pass is in the middle of a loader epoch
    (steps_per_epoch, or mid-epoch in on_train_batch_end) took batches from the same
    cursor: some trained twice, some validated then trained. It is refused, naming the
    fix; with whole loader epochs the nested pass is the next loader epoch, exactly."""
    for how in ("validation", "callback", "mid-epoch"):
        with loader() as train:
            ds = Served(train)
            extra = ({"validation_data": ds} if how == "validation"
                     else {"callbacks": [EvaluateOn(ds, every_batch=how == "mid-epoch")]})
            steps = {} if how == "mid-epoch" else {"steps_per_epoch": 2}
            try:
                model().fit(ds, epochs=4, verbose=0, **steps, **extra)
            except stoker.LoaderError as error:
                assert "a loader of its own" in str(error), error
            else:
                raise AssertionError(f"a nested pass mid-epoch ({how}) was not refused")
    with loader() as train:
        ds = Recording(train)
        model().fit(ds, validation_data=ds, epochs=2, verbose=0)
        assert epochs_of(ds.seen, 4) == [plan(train, e) for e in range(4)]


def initial_epoch_is_honoured():
    """With LoaderCursor or without: fit(initial_epoch=2) trains loader epoch 2 (as a
    resume by Keras' own BackupAndRestore, which sets it, needs)."""
    for tracked in (False, True):
        with loader() as train:
            ds = Recording(train)
            extra = [LoaderCursor(train)] if tracked else []
            model().fit(ds, initial_epoch=2, epochs=3, verbose=0, callbacks=extra)
            assert epochs_of(ds.seen, 1) == [plan(train, 2)] and train.epoch == 3, extra


def untracked_steps_per_epoch_walks_each_batch_once():
    """Red-team finding: without LoaderCursor, fit(steps_per_epoch=) ending inside a
    loader epoch left the cursor where tf.data's read-ahead was (a batch never trained
    on was skipped) or where the fit began (JAX, torch: the same batches again). Keras
    knows how many steps each of its epochs took; the cursor is that, after every fit,
    and state_dict() after fit() returned answers it."""
    with loader() as train:
        ds, m, trained = Recording(train), model(), []
        for epochs, steps_per_epoch in ((2, 3), (5, 3), (1, None)):
            steps = Steps()
            ds.seen.clear()
            m.fit(ds, epochs=epochs, steps_per_epoch=steps_per_epoch, verbose=0,
                  callbacks=[steps])
            trained += np.concatenate(ds.seen).tolist()[:steps.count * BATCH]
            done = len(trained) // BATCH
            assert train.position == Position(done // 5, done % 5), (train.position, done)
            state = train.state_dict()  # fit() returned: known, not refused
            assert (state["epoch"], state["batches_done"]) == (done // 5, done % 5), state
        assert len(trained) == 4 * N, len(trained)
        assert epochs_of([np.array(trained)], 4) == [plan(train, e) for e in range(4)]


def evaluate_and_predict_with_steps_walk_on():
    """evaluate(steps=2) / predict(steps=2) on a 5-batch loader: each takes the next
    batches from the cursor (the third only the one left in its epoch), never the same
    ones again."""
    with loader(shuffle=False) as val:
        ds, m, walked = Recording(val), model(), []
        for call in ("evaluate", "evaluate", "evaluate", "predict"):
            steps = Steps()
            ds.seen.clear()
            out = getattr(m, call)(ds, steps=2, verbose=0, callbacks=[steps])
            walked.append((val.position, steps.count))
            if call == "predict":
                assert len(out) == steps.count * BATCH, out.shape
        assert walked == [(Position(0, 2), 2), (Position(0, 4), 2), (Position(1, 0), 1),
                          (Position(1, 2), 2)], walked


def stop_training_mid_epoch_then_fit_goes_on():
    """Red-team finding: model.stop_training mid-epoch (EarlyStopping, TerminateOnNaN)
    leaves Keras' epoch with a break, so no epoch end came, and the next fit() trained
    the same batches again. The steps the stopped epoch took are committed."""
    with loader() as train:
        ds, m = Recording(train), model()
        m.fit(ds, epochs=3, verbose=0, callbacks=[StopAt(1)])
        state = train.state_dict()  # fit() returned: known
        assert (state["epoch"], state["batches_done"]) == (0, 2), state
        ds.seen.clear()
        m.fit(ds, epochs=1, verbose=0)
        assert np.concatenate(ds.seen).tolist() == plan(train, 0)[2 * BATCH:]
        assert train.position == Position(1, 0), train.position


def initial_epoch_with_steps_per_epoch_is_no_loader_epoch():
    """Red-team finding: with steps_per_epoch != len(loader), Keras epoch N is no loader
    epoch; fit(initial_epoch=2) (as Keras' BackupAndRestore restarts) jumped to loader
    epoch 2 and skipped batches. It walks on from the cursor instead."""
    for tracked in (False, True):
        with loader() as train:
            ds = Recording(train)
            extra = [LoaderCursor(train)] if tracked else []
            model().fit(ds, initial_epoch=2, epochs=3, steps_per_epoch=3, verbose=0,
                        callbacks=extra)
            assert np.concatenate(ds.seen).tolist()[:3 * BATCH] == plan(train, 0)[:3 * BATCH]
            assert train.position == Position(0, 3), (tracked, train.position)


def a_tracked_fit_that_raised_leaves_later_fits_exact():
    """Red-team finding: Keras calls no on_train_end when fit() raises, and the view
    stayed tracked: later fits without LoaderCursor never moved the cursor (the same
    batches every epoch) and state_dict() mid-epoch answered a stale cursor."""
    with loader() as train:
        ds, m = Recording(train), model()
        try:
            m.fit(ds, epochs=2, verbose=0, callbacks=[LoaderCursor(train), StopAt(2, raising=True)])
        except RuntimeError:
            pass
        else:
            raise AssertionError("fit() did not raise")
        assert train.position == Position(0, 3), train.position
        ds.seen.clear()
        m.fit(ds, epochs=2, verbose=0)
        assert train.position == Position(2, 0), train.position
        assert np.concatenate(ds.seen).tolist() == plan(train, 0)[3 * BATCH:] + plan(train, 1)
        try:
            m.fit(ds, epochs=1, verbose=0, callbacks=[StateEveryStep(train)])
        except stoker.LoaderError as error:
            assert "LoaderCursor" in str(error), error
        else:
            raise AssertionError("state_dict() mid-epoch without LoaderCursor must refuse")


def a_resumed_epoch_ends_after_the_batches_that_remain():
    with loader() as first:
        state = {**first.state_dict(), "epoch": 1, "batches_done": 2}
    with loader() as train:
        train.load_state_dict(state)
        ds = Recording(train)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            history = model().fit(ds, epochs=2, verbose=0)
        assert len(history.history["loss"]) == 2
        flat = np.concatenate(ds.seen).tolist()
        assert flat == plan(train, 1)[2 * BATCH:] + plan(train, 2), "not the undisturbed rest"
        assert not [w for w in caught if "ran out of data" in str(w.message)], caught


def an_empty_batch_is_stepped_over_or_refused_clearly():
    """A filter that drops every sample of batch 1: TensorFlow steps over it; JAX and
    torch cannot, so fit() and evaluate() get a LoaderError naming batch_size (not the
    backend's gradient error, nor a NaN loss); predict() takes it."""
    def drop_second_batch(sample):
        return stoker.Many() if BATCH <= int(sample[1]) < 2 * BATCH else sample

    def drop_last_batch(sample):
        return stoker.Many() if int(sample[1]) >= N - BATCH else sample

    def filtered(transform):
        return stoker.Loader(stoker.from_arrays(X, Y), batch_size=BATCH, shuffle=False,
                             workers=WORKERS, transform=transform, max_outputs=1, **RING)

    if keras.backend.backend() != "tensorflow":  # the last batch of an epoch, named right
        with filtered(drop_last_batch) as train:
            try:
                model().fit(train.keras(), epochs=2, verbose=0)
            except stoker.LoaderError as e:
                assert f"batch {N // BATCH - 1} of epoch 0 is empty" in str(e), e
            else:
                raise AssertionError("fit() on an empty last batch was not refused")
    with filtered(drop_second_batch) as train:
        out = model().predict(train.keras(), verbose=0)
        assert len(out) == N - BATCH, out.shape
        for call in ("fit", "evaluate"):
            if keras.backend.backend() == "tensorflow":
                result = getattr(model(), call)(train.keras(), verbose=0)
                losses = result.history["loss"] if call == "fit" else [result]
                assert np.isfinite(losses).all(), losses
                continue
            try:
                getattr(model(), call)(train.keras(), verbose=0)
            except stoker.LoaderError as e:
                assert "batch 1 of epoch" in str(e) and "batch_size=" in str(e), e
                assert f"{call}()" in str(e), e
            else:
                raise AssertionError(f"{call}() on an empty batch was not refused")
        # The loader still works after a refused call.
        assert len(model().predict(train.keras(), verbose=0)) == N - BATCH


if __name__ == "__main__":
    fit_evaluate_predict_again_and_again()
    steps_per_epoch_walks_whole_epochs()
    state_during_fit_is_what_the_model_trained_on()
    initial_epoch_is_honoured()
    untracked_steps_per_epoch_walks_each_batch_once()
    evaluate_and_predict_with_steps_walk_on()
    a_tracked_fit_that_raised_leaves_later_fits_exact()
    stop_training_mid_epoch_then_fit_goes_on()
    initial_epoch_with_steps_per_epoch_is_no_loader_epoch()
    a_tracked_fit_stopped_mid_epoch_leaves_an_exact_state()
    a_call_after_fit_returned_changes_nothing()
    a_nested_pass_mid_epoch_is_refused_and_at_an_epoch_end_is_exact()
    a_resumed_epoch_ends_after_the_batches_that_remain()
    an_empty_batch_is_stepped_over_or_refused_clearly()
    print("OK")
