"""The inline executor: the reference. Runs the plan in this process, in order."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ..layout import BatchLayout
from ._batches import BatchArrays
from ._produce import Producer, SampleFailure, Transform, preserved_global_rngs
from .failures import transform_error
from .protocol import Following

__all__ = ["InlineExecutor"]


class InlineExecutor:
    """Produces each batch when it is asked for; no processes, no shared memory."""

    workers = 0

    def __init__(self, source: Any, transform: Transform,
                 probe: tuple[tuple[int, ...], np.ndarray]) -> None:
        self._producer = Producer(source, transform)
        self._probe = probe
        self._layout: BatchLayout | None = None
        # legacy functions seed the global generators: the caller's are kept around them
        self._legacy = ((transform.fn is not None and not transform.takes_rng)
                        or (transform.batch is not None and not transform.batch.takes_rng))
        self.crashes: list[tuple[int, int | None]] = []
        self._arrays: BatchArrays | None = None

    @property
    def layout(self) -> BatchLayout:
        """Read off the first sample, here (the one executor that runs user code in
        this process, by definition)."""
        if self._layout is None:
            indices, key = self._probe
            try:
                with preserved_global_rngs():
                    self._layout = self._producer.layout_of(key, indices)
            except SampleFailure as failure:
                raise _error(failure, 0) from failure.error
        return self._layout

    @property
    def pids(self) -> list[int]:
        return []

    def run(
        self, epoch: int, key: np.ndarray, batches: Sequence[np.ndarray],
        following: Following | None = None, first_batch: int = 0,
    ) -> Iterator[list[np.ndarray]]:
        layout = self.layout
        producer = self._producer
        rows = producer.capacity(max((len(indices) for indices in batches), default=0))
        if self._arrays is None or self._arrays.rows < rows:
            self._arrays = BatchArrays(layout, rows)
        for number, indices in enumerate(batches, start=first_batch):
            out = self._arrays.take(producer.capacity(len(indices)))
            try:
                if self._legacy:
                    with preserved_global_rngs():
                        made = producer.make_batch(layout, key, number, indices, out)
                else:
                    made = producer.make_batch(layout, key, number, indices, out)
            except SampleFailure as failure:
                raise _error(failure, epoch) from failure.error
            yield out if made == len(out[0]) else [array[:made] for array in out]

    def close(self) -> None:
        pass


def _error(failure: SampleFailure, epoch: int) -> Exception:
    return transform_error(failure.index, failure.stage, failure.error, failure.traceback,
                           epoch)
