"""What the Loader relies on in an executor: one protocol, three implementations
(``inline``, ``processes``, ``ray``)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from ..layout import BatchLayout

__all__ = ["Executor"]


@runtime_checkable
class Executor(Protocol):
    """Turns lists of sample indices into filled batches, in plan order.

    ``run`` is one epoch run: it yields the batches of ``batches`` (index arrays) as
    fresh arrays, one list per field, and starting a run ends the one before it (its
    next step raises LoaderError). ``layout`` is learnt where the user's code runs (a
    worker, except inline). ``close`` is idempotent and safe from any thread.
    """

    workers: int

    @property
    def layout(self) -> BatchLayout: ...

    @property
    def pids(self) -> list[int]: ...

    @property
    def crashes(self) -> list[tuple[int, int | None]]: ...

    def run(self, epoch: int, key: np.ndarray,
            batches: Sequence[np.ndarray]) -> Iterator[list[np.ndarray]]: ...

    def close(self) -> None: ...
