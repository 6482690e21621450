"""``loader.keras()``: a Loader as a ``keras.utils.PyDataset`` for ``fit()`` /
``evaluate()`` / ``predict()``, exact under every call pattern.

How Keras reads a PyDataset, and what this adapter makes of it:

* **Shape peeks.** On the TensorFlow backend each ``fit``/``evaluate``/``predict`` first
  calls ``dataset[0]`` and ``dataset[1]`` (in ``get_tf_dataset``) to infer tensor specs;
  on the torch and JAX backends ``fit`` pulls a batch to build the model's metrics
  (``_symbolic_build``). Those calls get zero batches of the right dtypes and field
  shapes (one and two rows, so the batch axis stays open for a short last batch) and
  never consume anything.
* **Readers.** Every other call comes from one of Keras' per-iteration generators (a
  *reader*: a new one for every pass over the data). Each reader is served one run of
  the loader from the cursor, so each ``fit`` epoch, each validation pass, each
  ``evaluate`` and each ``predict`` is one loader epoch; ``predict`` on an unshuffled
  loader gives one row per sample in source order. With ``steps_per_epoch`` below
  ``len(loader)`` one reader spans several Keras epochs, and loader epochs are walked
  exactly once. A reader that starts mid-epoch (after a resume) is told the batches
  that remain, so that Keras epoch ends after them.
* **Readers whose pass is over.** tf.data runs a reader in a thread of its own and
  ``fit()`` can return while that thread is still in a call (prefetching the batch after
  the last step). A reader is retired when its pass is known to be over: a new
  ``fit``/``evaluate``/``predict`` begins that does not run inside another one (a
  validation pass, or an ``evaluate`` in a callback, runs inside the ``fit`` whose
  reader goes on: its epoch iterator reads through that reader), or ``fit`` ends under
  ``LoaderCursor``. A retired reader that still
  asks gets zeros that nobody reads, and nothing is consumed, so it can neither start a
  run behind the next ``fit()``'s back nor make ``state_dict()`` refuse.
* **What the model consumed.** Keras reads ahead (tf.data's prefetch), so a batch
  handed out is not yet trained on. The adapter keeps the positions it handed out and
  moves the loader's cursor when it knows the model consumed them: at the end of every
  Keras epoch (``on_epoch_begin``/``on_epoch_end``, called by Keras' epoch iterator,
  whose step count says how many of the reader's batches its steps took, so
  ``steps_per_epoch`` and ``steps`` that end inside a loader epoch are exact), or at
  every step with the ``LoaderCursor`` callback (which ``BackupAndRestore`` includes).
  What a reader handed out and the model never took (the read-ahead when ``fit``
  ends, the batch Keras pulls to build an unbuilt model) is given back: the next
  reader starts at the cursor. Without ``LoaderCursor``, ``loader.state_dict()`` in
  the middle of a Keras epoch (or after a ``fit`` that raised in one) is refused
  (LoaderError) rather than answered wrongly. A ``LoaderCursor`` tracks the view while
  its ``fit`` runs: Keras calls no ``on_train_end`` when ``fit`` raises, so the next
  Keras epoch of another call ends the tracking. A Keras epoch left with ``break``
  (``model.stop_training``) has no epoch end either: the next call commits the steps
  its epoch iterator took. ``fit(initial_epoch=N)`` on a loader at the start of an
  earlier epoch starts at loader epoch N, when a Keras epoch is a loader epoch (no
  ``steps_per_epoch``, or ``len(loader)``).
* **One pass at a time.** A pass nested in a ``fit`` (validation on the training view,
  an ``evaluate`` in a callback) is the next loader epoch when the fit's pass ended at
  a loader epoch's end; in the middle of one (``steps_per_epoch``, or mid-epoch), both
  would take batches from the one cursor, so it is refused (LoaderError).
* **stoker owns the order.** ``fit(shuffle=True)`` (Keras' default) asks for batch
  indices in a random order; the loader already shuffles per epoch with its own seed,
  so the index is ignored and the reader's next batch is returned.
* **No threads or processes of Keras' own:** ``workers=1, use_multiprocessing=False``.
  On the TensorFlow backend tf.data reads from a thread of its own, so the loader is
  registered for a safe exit (``_tf_exit``).
"""

from __future__ import annotations

import json
import math
import os
import sys
import warnings
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, NamedTuple

from .._extras import require
from .._fork import ProcessLock, forget_in_child
from .._system import fsync_path
from ..cursor import Position, end_held_run
from ..errors import LoaderError
from ._tf_exit import read_by_tensorflow, tensorflow_call

keras = require("keras", "stoker.adapters.keras (loader.keras())")

if TYPE_CHECKING:
    from ..loader import Loader

__all__ = ["BackupAndRestore", "KerasDataset", "LoaderCursor", "LoaderStatsCallback"]

# Keras' generators that read a PyDataset once per pass, and the methods that peek.
_READERS = ("_finite_generator", "_infinite_generator")
_PEEKERS = ("get_tf_dataset", "_symbolic_build")
_RAN_OUT = "Your input ran out of data"
_ENTRIES = ("fit", "evaluate", "predict")
# Keras on TensorFlow steps over an empty batch; on JAX and torch it cannot (_refuse_empty).
_TAKES_EMPTY_BATCHES = keras.backend.backend() == "tensorflow"


def _keras_frame(frame: FrameType | None, names: tuple[str, ...], depth: int) -> FrameType | None:
    """The first of ``depth`` frames from ``frame`` up that runs one of Keras' ``names``."""
    for _ in range(depth):
        if frame is None:
            return None
        if frame.f_code.co_name in names and frame.f_globals.get("__name__", "").startswith(
            "keras"
        ):
            return frame
        frame = frame.f_back
    return None


def _entry(frame: FrameType | None) -> str | None:
    """The innermost Keras ``fit``/``evaluate``/``predict`` running below ``frame``."""
    found = _keras_frame(frame, _ENTRIES, 64)
    return found.f_code.co_name if found is not None else None


def _entries(frame: FrameType | None) -> Iterator[FrameType]:
    """The Keras ``fit``/``evaluate``/``predict`` calls running at ``frame``, innermost
    first."""
    while frame is not None:
        if frame.f_code.co_name in _ENTRIES and frame.f_globals.get(
                "__name__", "").startswith("keras"):
            yield frame
        frame = frame.f_back


def _trained_by_caller(reader: FrameType | None, frame: FrameType | None) -> bool:
    """Whether ``reader`` (a Keras generator frame) feeds a ``fit``/``evaluate``/
    ``predict`` still running below ``frame``: one whose epoch iterator reads through
    the reader's data adapter (a validation pass, or an ``evaluate`` in a callback,
    runs inside the ``fit`` that goes on with it)."""
    adapter = reader.f_locals.get("self") if reader is not None else None
    return adapter is not None and any(
        getattr(entry.f_locals.get("epoch_iterator"), "data_adapter", None) is adapter
        for entry in _entries(frame))


def _running_iterators(frame: FrameType | None) -> list[Any]:
    """Keras' epoch iterators of the calls running at ``frame``, innermost first."""
    return [it for it in (entry.f_locals.get("epoch_iterator") for entry in _entries(frame))
            if it is not None]


_STOP_FLAGS = {"fit": "stop_training", "evaluate": "stop_evaluating",
               "predict": "stop_predicting"}


class _OpenEpoch(NamedTuple):
    """A Keras epoch over this view that began and has not ended: its epoch iterator,
    and the model and flag (``stop_training``, ...) of the call that runs it."""

    iterator: Any
    model: Any
    stop_flag: str

    def running(self, running: list[Any]) -> bool:
        return any(self.iterator is it for it in running)


def is_peek(frame: FrameType | None) -> bool:
    """Whether a call comes from Keras looking at shapes and dtypes, not training: the
    spec inference of ``get_tf_dataset``, or the build of an unbuilt model (torch and
    JAX backends, in this thread)."""
    return _keras_frame(frame, _PEEKERS, 12) is not None


class KerasDataset(keras.utils.PyDataset):
    """A view of a Loader that Keras can consume; see the module docstring. Get it with
    ``loader.keras()`` (one view per loader)."""

    def __init__(self, loader: Loader) -> None:
        super().__init__(workers=1, use_multiprocessing=False, max_queue_size=1)
        self.loader = loader
        self._lock = ProcessLock(reentrant=True)  # fresh in a forked child
        self._fresh_state()
        loader._adapters.add(self)
        forget_in_child(self)
        if keras.backend.backend() == "tensorflow":
            read_by_tensorflow(loader)

    def _forget_the_parent(self) -> None:
        """In a forked child (``_fork.py``): the parent's passes are not the child's; its
        copy of the loader goes on from the same cursor, and this view with it."""
        self._inherited = self._run  # the parent's run: ended here later, not in the hook
        self._fresh_state()

    def _fresh_state(self) -> None:
        self._reader: FrameType | None = None  # the Keras generator being served
        # Readers whose pass is over (kept alive here, so identity is exact); enough for
        # the stale calls tf.data's threads can still make.
        self._retired: deque[FrameType] = deque(maxlen=16)
        self._run: Iterator[Any] | None = None
        self._reader_adapter: Any = None  # the Keras data adapter the reader belongs to
        self._reader_left = 0  # batches the current reader may still take
        self._handed = 0  # batches the current reader took
        self._pending: deque[Position] = deque()  # handed out, not known consumed
        self._tracked = False  # a LoaderCursor acknowledges every step
        self._tracker: Any = None  # the epoch iterator of the fit that LoaderCursor tracks
        self._open: list[_OpenEpoch] = []  # Keras epochs over this view under way
        self._filter: tuple | None = None
        self._complete: deque[Position] = deque()  # passes read to the end, not yet trained
        self._moves = self.loader._moves  # the loader's cursor moves when this pass began

    # -- what Keras asks ------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def num_batches(self) -> int:
        """``len(loader)``; a reader starting mid-epoch is told the batches that remain."""
        if _keras_frame(sys._getframe(1), _READERS, 4) is not None:
            with self._lock:
                return len(self.loader) - self._next_start().batch
        return len(self.loader)

    def _next_start(self) -> Position:
        """Where the next reader starts: after the passes read to their end and not yet
        trained on (the current one too), else at the cursor."""
        if self._finished_pass():
            return self._pending[-1]
        if self._complete:
            return self._complete[-1]
        return self.loader.position

    def _finished_pass(self) -> bool:
        """Whether the current reader was read to its end within a Keras epoch that is
        still running (its end will say the whole pass was trained on)."""
        return (self._run is not None and self._reader is not None and self._reader_left == 0
                and not self._tracked and bool(self._pending)
                and any(getattr(epoch.iterator, "data_adapter", None) is self._reader_adapter
                        for epoch in self._open))

    def on_epoch_begin(self) -> None:
        with self._lock:
            caller = sys._getframe(1)
            running = _running_iterators(caller)
            # Epochs of calls that are not running any more (a fit() that raised: Keras
            # calls no on_epoch_end, nor its callbacks' on_train_end) are over.
            self._settle(running)
            self._open = [epoch for epoch in self._open if epoch.running(running)]
            if self._tracked and self._tracker is not None and not any(
                    self._tracker is run for run in running):
                self._tracked, self._tracker = False, None  # its LoaderCursor's fit is gone
            where = _keras_frame(caller, ("_enumerate_iterator",), 3)
            iterator = where.f_locals.get("self") if where is not None else None
            if iterator is None:
                return
            entry = next((frame for frame in _entries(caller)
                          if frame.f_locals.get("epoch_iterator") is iterator), None)
            name = entry.f_code.co_name if entry is not None else ""
            self._open.append(_OpenEpoch(iterator, entry and entry.f_locals.get("self"),
                                         _STOP_FLAGS.get(name, "")))
            if name == "fit":
                self._initial_epoch(entry.f_locals)

    def _settle(self, running: list[Any]) -> None:
        """Epochs of calls no longer running: one that Keras left with ``break`` (the
        model's ``stop_training``, as EarlyStopping mid-epoch or TerminateOnNaN set it)
        trained its epoch iterator's steps, so they are committed; one that raised is
        unknown (``check_state`` refuses until a new pass starts)."""
        for epoch in [epoch for epoch in self._open if not epoch.running(running)]:
            if not (epoch.stop_flag and getattr(epoch.model, epoch.stop_flag, False)):
                continue
            if (not self._tracked and self._run is not None
                    and getattr(epoch.iterator, "data_adapter", None) is self._reader_adapter):
                self._epoch_trained("_enumerate_iterator", epoch.iterator)
            self._open = [other for other in self._open if other is not epoch]

    def _initial_epoch(self, fit: dict[str, Any]) -> None:
        """``fit(initial_epoch=N)`` (or Keras' BackupAndRestore, which sets it) on a loader
        at the start of an earlier epoch: the first Keras epoch is loader epoch N."""
        epoch, first = fit.get("epoch"), fit.get("initial_epoch")
        loader = self.loader
        whole = fit.get("steps_per_epoch") in (None, len(loader))  # Keras epoch = loader's
        if (whole and isinstance(epoch, int) and epoch == first and epoch > loader.epoch
                and not loader.position.batch):
            loader.set_epoch(epoch)

    def on_epoch_end(self) -> None:
        with self._lock:
            caller = sys._getframe(1)
            where = _keras_frame(
                caller, ("reset", "_enumerate_iterator", "catch_stop_iteration"), 3)
            how = where.f_code.co_name if where is not None else None
            iterator = where.f_locals.get("self") if where is not None else None
            self._open = [epoch for epoch in self._open if epoch.iterator is not iterator]
            if how == "reset":
                self._refuse_nested(caller, getattr(iterator, "data_adapter", None))
                self._settle(_running_iterators(caller))
                # Keras starting over (fit/evaluate/predict after building the model from
                # a batch it pulled): nothing read so far was trained on.
                self._abandon(retire=not _trained_by_caller(self._reader, caller))
            elif not self._tracked:
                # Keras ended an epoch: it trained on the oldest pass read to its end (a
                # distribution strategy prefetches the next pass before that, so there
                # may be a newer one, read but not trained on yet), or on as many of the
                # current reader's batches as its steps took.
                if self._complete:
                    self._consumed(self._complete.popleft())
                elif self._run is not None:
                    self._epoch_trained(how, iterator)
            if self._filter is not None:
                try:
                    warnings.filters.remove(self._filter)
                    warnings._filters_mutated()  # type: ignore[attr-defined]
                except ValueError:
                    pass
                self._filter = None

    def __getitem__(self, index: int) -> Any:
        caller = sys._getframe(1)
        if is_peek(caller):
            with self._lock:  # a new fit/evaluate/predict: the passes before are over
                peeker = _keras_frame(caller, _PEEKERS, 12)
                self._refuse_nested(caller, peeker.f_locals.get("self") if peeker else None)
                self._settle(_running_iterators(caller))
                self._abandon(retire=not _trained_by_caller(self._reader, caller))
            return self._peek(index)
        reader = _keras_frame(caller, _READERS, 4)
        with tensorflow_call(), self._lock:
            if reader is not None and any(old is reader for old in self._retired):
                return self._peek(index)  # a pass that is over: nobody reads this
            if self._run is None or (reader is not None and reader is not self._reader):
                self._refuse_nested(caller, reader.f_locals.get("self") if reader else None)
                self._start_reader(reader)
            return self._next()

    def _epoch_trained(self, how: str | None, iterator: Any) -> None:
        """The cursor after a Keras epoch over the current reader. Keras reads ahead, but
        its epoch iterator counts the steps it took: ``_steps_seen`` batches of its
        current reader, or the whole reader when it ran out (``catch_stop_iteration``) or
        was read to its end and replaced (``_steps_seen`` back at 0)."""
        steps = getattr(iterator, "_steps_seen", None)
        ours = getattr(iterator, "data_adapter", None) is self._reader_adapter
        if how == "_enumerate_iterator" and ours and isinstance(steps, int) and steps > 0:
            taken = self._handed - len(self._pending)  # committed already
            self._commit(min(steps, self._handed) - taken)
            return
        whole = how == "catch_stop_iteration" or (how == "_enumerate_iterator" and ours)
        if whole or self._reader_left == 0:
            self._commit(len(self._pending))
            self._run = None
            self._reader = None

    def _refuse_nested(self, caller: FrameType | None, adapter: Any) -> None:
        """A pass (validation, an evaluate() in a callback) over this view inside a fit
        whose own pass over it is in the middle of a loader epoch (``steps_per_epoch``,
        or mid-step): both would take batches from the one cursor, so neither could be
        exact. Refused, naming the fix; at a loader epoch's end it is fine."""
        if (self._run is None or self._reader is None or adapter is self._reader_adapter
                or not _trained_by_caller(self._reader, caller)):
            return  # no pass under way, or the same pass's next reader
        trained = self._handed - len(self._pending) > 0 or any(
            getattr(epoch.iterator, "data_adapter", None) is self._reader_adapter
            and getattr(epoch.iterator, "_steps_seen", 0) > 0 for epoch in self._open)
        if not trained:  # only read ahead (the next loader epoch, prefetched): given back
            return
        position = self.loader.position
        raise LoaderError(
            f"a validation pass or evaluate()/predict() on the loader that this fit() trains "
            f"on, while that fit() is in the middle of a loader epoch (at batch "
            f"{position.batch} of epoch {position.epoch}): both would take batches from the "
            "loader's one cursor. Validate on a loader of its own, e.g. "
            "validation_data=stoker.Loader(val, batch_size=..., shuffle=False).keras() (or "
            "train whole loader epochs: no steps_per_epoch)"
        )

    # -- serving readers ------------------------------------------------------------------

    def _peek(self, index: int) -> Any:
        rows = 1 + min(int(index), 1)
        if len(self.loader) == 1:
            rows = len(self.loader.epoch_batches(self.loader.epoch)[0])
        return self.loader.layout.zeros(rows)

    def release(self) -> None:
        """The loader is closing: the run held here ends (``cursor.end_held_run``)."""
        end_held_run(self)

    def _abandon(self, *, retire: bool) -> None:
        """Whatever was handed out and not known consumed is given back. With ``retire``
        the reader's pass is known to be over: whatever it asks from now on gets zeros."""
        if self._run is not None:
            self._run.close()  # type: ignore[attr-defined]
        if retire and self._reader is not None:
            self._retired.append(self._reader)
        self._run, self._reader = None, None
        self._pending.clear()
        self._complete.clear()

    def _start_reader(self, reader: FrameType | None) -> None:
        """A new pass, at the cursor. A pass read to its end before it waits for the end
        of its Keras epoch (``on_epoch_end``); what an unfinished one handed out and the
        model did not take is given back."""
        start = self._next_start()
        if self._finished_pass():
            self._complete.append(self._pending[-1])
        if self._run is not None:
            self._run.close()  # type: ignore[attr-defined]
        self._pending.clear()
        self._reader = reader
        self._reader_adapter = reader.f_locals.get("self") if reader is not None else None
        self._handed = 0
        self._moves = self.loader._moves
        if self.loader.position.batch and reader is not None and self._filter is None:
            # This reader starts mid-epoch (a resume) and runs out early, on purpose, until
            # the epoch's end: Keras' "ran out of data" warning would only mislead.
            warnings.filterwarnings("ignore", message=_RAN_OUT, category=UserWarning)
            self._filter = warnings.filters[0]
        self._reader_left = len(self.loader) - start.batch
        self._run = self.loader._run((self.loader._start_run()[0], start), commit=False)

    def _next(self) -> Any:
        assert self._run is not None
        try:
            position, batch = next(self._run)
        except StopIteration:
            # A reader outside Keras' generators (a user indexing the dataset) runs on
            # into the next epoch.
            self._run = self.loader._run(self.loader._start_run(), commit=False)
            position, batch = next(self._run)
        if self._reader is not None and not _TAKES_EMPTY_BATCHES:
            self._refuse_empty(position, batch)
        self._pending.append(position)
        self._handed += 1
        self._reader_left = max(0, self._reader_left - 1)
        if self._reader is None and not self._tracked:
            self._commit(len(self._pending))  # no look-ahead to account for
        return batch

    def _refuse_empty(self, position: Position, batch: Any) -> None:
        """An empty batch (a filter dropped all its samples) for ``fit``/``evaluate`` on
        Keras' JAX or torch backend: the step fails deep inside the backend ("Gradient
        only defined for scalar-output functions") and ``evaluate`` averages it into a NaN
        loss, so say what happened instead. ``predict`` takes it (no rows out)."""
        if len(self.loader.layout._values(batch)[0]):
            return
        entry = _entry(sys._getframe(1))
        if entry == "predict":
            return
        epoch, batch_number = (position.epoch, position.batch - 1) if position.batch else (
            position.epoch - 1, len(self.loader) - 1)  # the position after this batch
        raise LoaderError(
            f"batch {batch_number} of epoch {epoch} is empty: the transform "
            f"dropped every one of its {self.loader.options.batch_size} samples (stoker.Many()), "
            f"and Keras' {keras.backend.backend()} backend cannot {entry or 'fit'}() on an "
            "empty batch (it fails, or averages it into a NaN loss). Use a larger "
            "batch_size= so that every batch keeps a sample, or Keras' TensorFlow backend, "
            "which steps over empty batches"
        )

    def _commit(self, count: int) -> None:
        """The model consumed the next ``count`` batches handed out."""
        position = None
        for _ in range(min(count, len(self._pending))):
            position = self._pending.popleft()
        self._consumed(position)

    def _consumed(self, position: Position | None) -> None:
        # Never a position from before set_epoch()/load_state_dict() moved the cursor.
        if position is not None and self._moves == self.loader._moves:
            self.loader._consumed(position)

    # -- for LoaderCursor and Loader.state_dict ---------------------------------------------

    def acknowledge(self, steps: int) -> None:
        """Keras finished ``steps`` training steps on this dataset's batches."""
        with self._lock:
            self._commit(steps)

    def check_state(self) -> None:
        """Refuse a state that cannot be known: mid-epoch, with look-ahead, untracked."""
        with self._lock:
            self._settle(_running_iterators(sys._getframe(1)))
            if self._pending and not self._tracked and self._reader is not None and (
                    self._open or self._reader_adapter is None):
                raise LoaderError(
                    "loader.state_dict() was called in the middle of a Keras epoch of this "
                    "loader (or after a fit() that raised in one); Keras reads ahead, so the "
                    "loader cannot tell which batches the model trained on. Add "
                    "stoker.adapters.keras.LoaderCursor(loader) (or BackupAndRestore) to "
                    "fit(callbacks=[...]) and the state is exact at every step"
                )


class LoaderCursor(keras.callbacks.Callback):
    """Keeps ``loader.state_dict()`` exact at every step of ``fit()``: tells the
    loader's Keras view which batches each training step consumed. Also honours
    ``fit(initial_epoch=N)``: a loader at the start of an earlier epoch jumps to N.

        model.fit(loader.keras(), epochs=10, callbacks=[LoaderCursor(loader)])
    """

    def __init__(self, loader: Loader) -> None:
        super().__init__()
        self.loader = loader
        self._begin = 0
        self._first_epoch = True

    def _views(self) -> list[KerasDataset]:
        return [view for view in list(self.loader._adapters) if isinstance(view, KerasDataset)]

    def on_train_begin(self, logs: dict | None = None) -> None:
        running = _running_iterators(sys._getframe(1))
        for view in self._views():
            with view._lock:
                view._tracked = True
                # tracked while this fit runs: one that raises calls no on_train_end
                view._tracker = running[0] if running else None
        self._first_epoch = True

    def on_train_end(self, logs: dict | None = None) -> None:
        for view in self._views():
            with view._lock:  # what Keras read ahead and never trained on; the pass is over
                view._abandon(retire=True)
                view._tracked, view._tracker = False, None

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        whole = (self.params or {}).get("steps") in (None, len(self.loader))
        if (self._first_epoch and whole and epoch > self.loader.epoch
                and not self.loader.position.batch):
            self.loader.set_epoch(epoch)  # initial_epoch (a Keras epoch is a loader epoch)
        self._first_epoch = False

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        self._begin = batch

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        for view in self._views():
            if view._reader is not None:  # the view Keras is training on
                view.acknowledge(batch - self._begin + 1)


class BackupAndRestore(LoaderCursor):
    """Keras' ``BackupAndRestore`` with the loader's cursor: a ``fit()`` killed
    mid-epoch (even by SIGKILL) and started again continues with exactly the batches
    the undisturbed run would have trained on after the last backup, and the
    interrupted epoch ends after ``len(loader)`` batches in all.

        backup = BackupAndRestore("backup", loader, save_freq=100)   # or "epoch"
        model.fit(loader.keras(), epochs=10, callbacks=[backup])

    A backup is the model's weights and a manifest (``latest.json``: the Keras epoch and
    the loader's state) naming them; the manifest is replaced atomically after the
    weights are written, so a kill at any moment leaves the previous backup or the new
    one, never a mix. The model must be built before ``fit()``, as for Keras' own. The
    backup is deleted when training ends (``delete_checkpoint=False`` keeps it).
    ``backup_dir`` is the folder that holds it; ``save_freq`` is ``"epoch"`` or a number
    of batches.
    """

    def __init__(self, backup_dir: str | os.PathLike, loader: Loader, *,
                 save_freq: int | str = "epoch", delete_checkpoint: bool = True) -> None:
        super().__init__(loader)
        if save_freq != "epoch" and (isinstance(save_freq, bool)
                                     or not isinstance(save_freq, int) or save_freq < 1):
            raise ValueError(
                f"save_freq must be 'epoch' or a number of batches >= 1, got {save_freq!r}"
            )
        self.backup_dir = Path(backup_dir)
        self.save_freq = save_freq
        self.delete_checkpoint = bool(delete_checkpoint)
        self._epoch = 0
        self._since_save = 0
        self._saves = 0

    @property
    def manifest(self) -> Path:
        """The backup's manifest, ``backup_dir/latest.json``."""
        return self.backup_dir / "latest.json"

    def on_train_begin(self, logs: dict | None = None) -> None:
        super().on_train_begin(logs)
        if not self.manifest.exists():
            return
        if not self.model.built:
            raise ValueError(
                "BackupAndRestore needs the model built before fit() to restore it: call "
                "model.build(input_shape) or use keras.Input"
            )
        meta = json.loads(self.manifest.read_text())
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(self.backup_dir / meta["weights"])
        self.loader.load_state_dict(meta["loader"])
        self._saves = int(meta["saves"])
        self._first_epoch = False  # the loader's epoch comes from the backup
        self.model._initial_epoch = int(meta["epoch"])  # Keras' own callback does this

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        super().on_epoch_begin(epoch, logs)
        self._epoch = epoch

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        super().on_train_batch_end(batch, logs)
        if self.save_freq == "epoch":
            return
        self._since_save += batch - self._begin + 1
        if self._since_save >= self.save_freq:
            self._since_save = 0
            self._save(self._epoch)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.save_freq == "epoch":
            self._save(epoch + 1)

    def _save(self, epoch: int) -> None:
        """Weights first, then the manifest that names them (atomic), then old weights go."""
        self.backup_dir.mkdir(parents=True, exist_ok=True)
        self._saves += 1
        weights = f"weights-{self._saves}.weights.h5"
        self.model.save_weights(self.backup_dir / weights, overwrite=True)
        fsync_path(self.backup_dir / weights)
        meta = {"epoch": epoch, "loader": self.loader.state_dict(), "weights": weights,
                "saves": self._saves}
        temporary = self.backup_dir / f".latest.json.{os.getpid()}"
        with open(temporary, "w") as handle:
            json.dump(meta, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.manifest)
        fsync_path(self.backup_dir)
        for old in self.backup_dir.glob("weights-*.weights.h5"):
            if old.name != weights:
                old.unlink(missing_ok=True)

    def on_train_end(self, logs: dict | None = None) -> None:
        super().on_train_end(logs)
        if self.delete_checkpoint and self.backup_dir.exists():
            import shutil

            shutil.rmtree(self.backup_dir, ignore_errors=True)


class LoaderStatsCallback(keras.callbacks.Callback):
    """Report, after every epoch, what the training loader did and whether training was
    input-bound (the model waited for data) or model-bound, with the worker count that
    would balance it. The answer to "why is my GPU at 15 %?" without reading GPU-Z.

        model.fit(loader.keras(), epochs=10, callbacks=[LoaderStatsCallback(loader)])

    Each epoch's statistics are kept in ``history`` (``LoaderStats`` objects) and put in
    the epoch's logs as ``loader_samples_per_s``, ``loader_wait_fraction``,
    ``loader_worker_utilisation`` and ``loader_queue_depth``, so a
    ``keras.callbacks.TensorBoard`` listed after this callback plots them as scalars
    (``epoch_loader_wait_fraction``, ...) beside the loss. ``print_fn`` prints the
    line (``None``: print nothing).
    """

    def __init__(self, loader: Loader, print_fn: Any = print) -> None:
        super().__init__()
        self.loader = loader
        self.print_fn = print_fn
        self.history: list[Any] = []
        self._line: str | None = None

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._print()
        self.loader.stats(reset=True)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        stats = self.loader.stats()
        self.history.append(stats)
        rated = stats.judgeable
        if logs is not None:  # History, TensorBoard and CSVLogger after this one see them
            # NaN, not a number read off a few prefetched batches; the columns stay
            logs.update(loader_samples_per_s=stats.samples_per_s if rated else math.nan,
                        loader_wait_fraction=stats.wait_fraction if rated else math.nan,
                        loader_worker_utilisation=(stats.worker_utilisation if rated
                                                   else math.nan),
                        loader_queue_depth=stats.queue_depth)
        # Printed once Keras has finished its own line for the epoch (its progress bar
        # ends the line after every callback's on_epoch_end), never in the middle of it.
        rate = f"{stats.samples_per_s:.0f} samples/s; " if rated else ""  # else: not enough
        self._line = f"  loader: {rate}{stats.verdict()}"

    def on_train_end(self, logs: dict | None = None) -> None:
        self._print()

    def _print(self) -> None:
        if self._line is not None and self.print_fn is not None:
            self.print_fn(self._line)
            self._line = None
