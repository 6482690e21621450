"""``loader.keras()``: a Loader as a ``keras.utils.PyDataset`` for ``fit()`` / ``evaluate()``.

Choices, and why:

* **stoker owns the order.** Keras 3 ``fit(shuffle=True)`` (its default) asks a
  PyDataset for batch indices in a random order. A stream of prefetched batches cannot
  honour that without losing its lead, and the loader already shuffles per epoch with
  its own seed. So ``__getitem__`` ignores the index Keras asks for and returns the
  loader's next batch: full speed, each sample exactly once per epoch, reproducible.
* **The stream spans epochs.** Batch ``k`` of the stream is batch ``k % len`` of epoch
  ``k // len``, so every Keras epoch (``fit`` and each ``evaluate`` on validation data)
  gets exactly ``len(loader)`` fresh batches, whatever Keras prefetches.
* **Peeks don't consume.** Before an epoch starts, Keras calls ``dataset[0]`` and
  ``dataset[1]`` to infer tensor specs; outside an epoch those calls get zero batches
  of the right shape and dtype instead of real ones.
* **No threads or processes of Keras' own:** ``workers=1, use_multiprocessing=False``.
  On the TensorFlow backend tf.data still reads it from a thread of its own, so the
  loader is registered for a safe exit (``_tf_exit``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import keras

from ._tf_exit import read_by_tensorflow, tensorflow_call

if TYPE_CHECKING:
    from ..loader import Loader

__all__ = ["KerasDataset"]


class KerasDataset(keras.utils.PyDataset):
    """A view of a Loader that Keras can consume; see the module docstring."""

    def __init__(self, loader: Loader) -> None:
        super().__init__(workers=1, use_multiprocessing=False, max_queue_size=1)
        self.loader = loader
        self._iterator: Iterator[Any] | None = None
        self._in_epoch = False
        if keras.backend.backend() == "tensorflow":
            read_by_tensorflow(loader)

    def __len__(self) -> int:
        return len(self.loader)

    def on_epoch_begin(self) -> None:
        self._in_epoch = True

    def on_epoch_end(self) -> None:
        self._in_epoch = False

    def __getitem__(self, index: int) -> Any:
        with tensorflow_call():
            return self._next_batch()

    def _next_batch(self) -> Any:
        if not self._in_epoch and self._iterator is None:
            return self.loader.layout.zeros(self.loader.options.batch_size)
        if self._iterator is None:
            self._iterator = iter(self.loader)
        try:
            return next(self._iterator)
        except StopIteration:
            self._iterator = iter(self.loader)
            return next(self._iterator)


class LoaderStatsCallback(keras.callbacks.Callback):
    """Report, after every epoch, what the training loader did and whether training was
    input-bound (the model waited for data) or model-bound, with the worker count that
    would balance it. The answer to "why is my GPU at 15 %?" without reading GPU-Z.

        model.fit(loader.keras(), epochs=10, callbacks=[LoaderStatsCallback(loader)])

    Each epoch's statistics are kept in ``history`` (``LoaderStats`` objects).
    """

    def __init__(self, loader: Loader, print_fn: Any = print) -> None:
        super().__init__()
        self.loader = loader
        self.print_fn = print_fn
        self.history: list[Any] = []

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.loader.stats(reset=True)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        from .._system import usable_cpu_count

        stats = self.loader.stats()
        self.history.append(stats)
        if logs is not None:
            logs["loader_samples_per_s"] = stats.samples_per_s
            logs["loader_wait_fraction"] = stats.wait_fraction
        self.print_fn(f"  loader: {stats.samples_per_s:.0f} samples/s; "
                      f"{stats.verdict(usable_cpu_count())}")
