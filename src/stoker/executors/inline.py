"""The inline executor: the reference. Runs the plan in this process, in order."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ..layout import BatchLayout
from ._produce import Producer, SampleFailure, Transform, preserved_global_rngs
from .failures import transform_error

__all__ = ["InlineExecutor"]


class InlineExecutor:
    """Produces each batch when it is asked for; no processes, no shared memory."""

    workers = 0

    def __init__(self, source: Any, transform: Transform, layout: BatchLayout) -> None:
        self._producer = Producer(source, transform)
        self._layout = layout
        self._legacy = transform.fn is not None and not transform.takes_rng
        self.crashes: list[tuple[int, int | None]] = []

    @property
    def layout(self) -> BatchLayout:
        return self._layout

    @property
    def pids(self) -> list[int]:
        return []

    def run(
        self, epoch: int, key: np.ndarray, batches: Sequence[np.ndarray]
    ) -> Iterator[list[np.ndarray]]:
        for indices in batches:
            out = self._layout.empty(len(indices))
            try:
                if self._legacy:
                    with preserved_global_rngs():
                        self._producer.fill(self._layout, key, indices, out)
                else:
                    self._producer.fill(self._layout, key, indices, out)
            except SampleFailure as failure:
                raise transform_error(
                    failure.index, failure.stage, failure.error, failure.traceback, epoch
                ) from failure.error
            yield out

    def close(self) -> None:
        pass
