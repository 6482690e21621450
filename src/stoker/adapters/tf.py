"""``loader.tf_dataset()``: a Loader as a ``tf.data.Dataset``.

Each iteration of the dataset is the rest of the loader's current epoch, from its
cursor (so ``fit(dataset, epochs=N)`` sees N fresh epochs). Its cardinality is what the
first iteration has (fewer than ``len(loader)`` after a mid-epoch resume); an iteration
that would have another number is refused with a LoaderError saying to make a new
dataset. Batches keep the sample's structure (a tensor, a tuple or a dict) with an
``element_spec`` read off the loader's layout, the batch axis unknown (the last batch
may be short).

Each iteration is ``range(n).scan(...)``: for each of its ``n`` batches, ``take`` is one
``tf.numpy_function`` call that hands the loader's next batch over as arrays (64-byte
aligned numpy arrays become tensors without a copy; the tensor keeps the array alive,
so stoker never reuses its buffer early). The scan's state is the iteration's token:
every iterator starts with token 0, and its first ``take`` starts a run of the loader
at the cursor and names the iteration with a new token, which the scan hands to each
later call. (A ``flat_map`` would do the same with a separate first call, and costs
about 10 ms more per iteration to set up, measured.) This costs far less per batch
than ``from_generator`` (measured in ``benchmarks/bench_consumer.py``), and has the
same semantics: the map runs when the consumer asks for the batch, so the loader's
cursor is what the consumer took. A call of an iteration that a newer one ended (a
prefetch thread of a dropped iterator, still in a call when ``fit()`` returned; or a
second iterator) has an old token: it takes nothing from the loader and raises
LoaderError, which reaches its consumer if it still has one.
Prefetching is stoker's (its ring of batch slots); tf.data's own (which its optimizer
would inject) is turned off; a ``.prefetch()`` of your own runs ahead of the cursor.
tf.data calls ``take`` from threads of its own, so the loader is registered for a safe
exit (``_tf_exit``).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from .._extras import require
from .._fork import ProcessLock
from ..cursor import end_held_run
from ..errors import LoaderError
from ..loader import CLOSED
from ._tf_exit import read_by_tensorflow, tensorflow_call

tf = require("tensorflow", "loader.tf_dataset()")

if TYPE_CHECKING:
    from ..loader import Loader

__all__ = ["tf_dataset"]


class _Reader:
    """The state behind one dataset: the loader run that its current iteration reads.

    The dataset holds it; TensorFlow's registry of numpy functions (which lives as long
    as the process, in eager mode) holds only a weak reference, so a dataset nobody uses
    any more lets its run go. The loader's ``close()`` ends the run too (``release``):
    a suspended run must not pin the loader's source.
    """

    def __init__(self, loader: Loader, declared: int) -> None:
        self.loader = loader
        self.declared = declared
        self._lock = ProcessLock()  # fresh in a forked child
        self._run: Iterator[list[np.ndarray]] | None = None
        self._token = 0  # the current iteration's

    def _begin(self) -> None:
        """A new iteration: a run of the loader from the cursor, and the iteration's token
        (``self._lock`` held)."""
        loader = self.loader
        position = loader.position
        if len(loader) - position.batch != self.declared and self._run is not None:
            raise LoaderError(  # refused: nothing changes, the iteration under way goes on
                f"an iteration of this tf.data.Dataset is under way (the loader's cursor is "
                f"at batch {position.batch} of epoch {position.epoch}), and a new one would "
                f"have {len(loader) - position.batch} of its {self.declared} batches (a take(n), "
                "or an iterator not run to its end, leaves the cursor mid-epoch); iterate "
                "one at a time: finish or drop the first iterator, then call "
                "loader.tf_dataset() again for the rest of the epoch"
            )
        if len(loader) - position.batch != self.declared:  # refused: nothing changes
            raise LoaderError(
                f"this tf.data.Dataset was made for {self.declared} batches an "
                f"iteration, but the loader's cursor is at batch {position.batch} of "
                f"epoch {position.epoch} (a resume, or an iteration left early), so the "
                f"next iteration has {len(loader) - position.batch}; call "
                "loader.tf_dataset() again for it"
            )
        if self._run is not None:
            self._run.close()  # type: ignore[attr-defined]
            self._run = None
        self._token += 1
        self._run = loader._run(loader._start_run(), commit=True, flat=True)

    def take(self, token: np.ndarray, index: np.ndarray) -> list[np.ndarray]:
        """Batch ``index`` of the iteration named ``token`` (0: a new iteration, whose
        first batch this is), as the iteration's token and the layout's arrays."""
        with tensorflow_call(), self._lock:
            if self.loader.closed:  # before any other reason this iteration cannot go on
                raise LoaderError(CLOSED)
            if int(token) == 0:
                if int(index) != 0:  # the scan keeps token 0 only if batch 0 failed
                    raise LoaderError(
                        "this iteration of the tf.data.Dataset failed at its first batch "
                        "(the error it raised says why), so it has no loader run; iterate "
                        "the dataset again (after a resume: call loader.tf_dataset() again)"
                    )
                self._begin()
            elif int(token) != self._token:
                # An iteration that a newer one ended: its consumer, if it still has one,
                # is told so (a prefetch thread of a dropped iterator is not read).
                raise LoaderError(
                    "a newer iteration of this tf.data.Dataset started, which ended this "
                    "one; iterate one at a time"
                )
            if self._run is None:
                raise LoaderError(
                    "this iteration of the tf.data.Dataset has no loader run (the loader's "
                    "epoch ended before it did); call loader.tf_dataset() again"
                )
            try:
                arrays = next(self._run)
            except StopIteration:
                self._run = None
                raise LoaderError(
                    "the loader's epoch ended before this tf.data.Dataset's iteration did "
                    "(the cursor was moved meanwhile); call loader.tf_dataset() again"
                ) from None
            if int(index) == self.declared - 1:
                self._finish()
            return [np.int64(self._token), *arrays]

    def release(self) -> None:
        """The loader is closing: the run held here ends (``cursor.end_held_run``)."""
        end_held_run(self)

    def check_state(self) -> None:
        """``state_dict()`` is exact at any moment: the cursor is what the consumer took."""

    def _finish(self) -> None:
        """The last batch was taken: let the run end as a loop's would."""
        run, self._run = self._run, None
        if run is not None:
            for _ in run:  # nothing is left: this only lets the run return
                pass


def _weak(reader: weakref.ref[_Reader], method: str) -> Callable[..., Any]:
    """``reader``'s ``method``, through a weak reference (see ``_Reader``)."""
    def call(*args: np.ndarray) -> Any:
        alive = reader()
        if alive is None:  # no dataset or iterator holds it: nothing can ask
            raise LoaderError("this tf.data.Dataset of a loader no longer exists")
        return getattr(alive, method)(*args)

    return call


def tf_dataset(loader: Loader) -> tf.data.Dataset:
    """``loader`` as a ``tf.data.Dataset`` (what ``loader.tf_dataset()`` returns): each
    iteration is one loader epoch from the cursor, the ``element_spec`` comes from the
    batch layout with a variable batch dimension."""
    layout = loader.layout
    dtypes = [tf.as_dtype(field.dtype) for field in layout.fields]
    shapes = [tf.TensorShape((None, *field.shape)) for field in layout.fields]
    declared = len(loader) - loader.position.batch
    reader = _Reader(loader, declared)
    loader._adapters.add(reader)
    held = weakref.ref(reader)
    take = _weak(held, "take")

    def element(token: tf.Tensor, index: tf.Tensor) -> tuple[tf.Tensor, Any]:
        token, *arrays = tf.numpy_function(take, [token, index], [tf.int64, *dtypes],
                                           stateful=True, name="stoker_batch")
        tensors = [tf.ensure_shape(array, shape) for array, shape in
                   zip(arrays, shapes, strict=True)]
        token = tf.ensure_shape(token, ())
        if layout.kind == "dict":
            return token, dict(zip(layout.keys, tensors, strict=True))
        if layout.kind == "tuple":
            return token, tuple(tensors)
        return token, tensors[0]

    read_by_tensorflow(loader)
    dataset = tf.data.Dataset.range(declared).scan(np.int64(0), element)
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(declared))
    dataset._stoker_reader = reader  # kept alive by every dataset and iterator made of it
    # No prefetch that tf.data would inject by itself, no parallel map: a batch leaves the
    # loader when the consumer asks for it, so the loader's cursor is what the consumer
    # took (stoker's workers already run ahead).
    options = tf.data.Options()
    options.autotune.enabled = False
    options.experimental_optimization.inject_prefetch = False
    options.experimental_optimization.map_parallelization = False
    return dataset.with_options(options)
