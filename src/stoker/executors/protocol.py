"""What the Loader relies on in an executor: one protocol, three implementations
(``inline``, ``processes``, ``ray``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from ..layout import BatchLayout

__all__ = ["Executor", "Following"]

#: The run expected after this one, as ``(epoch, key, batches)``: the next epoch from its
#: start, unless the cursor moves. Called only if the executor starts on it early.
Following = Callable[[], tuple[int, np.ndarray, Sequence[np.ndarray]]]


@runtime_checkable
class Executor(Protocol):
    """Turns lists of sample indices into filled batches, in plan order.

    ``run`` is one epoch run: it yields the batches of ``batches`` (index arrays, the
    first being batch ``first_batch`` of the epoch) as fresh arrays, one list per field,
    and starting a run ends the one before it (its next step raises LoaderError).
    ``following`` tells it the run expected next, which it may start on while this one
    drains, as long as only that run delivers those batches. ``layout`` is learnt where
    the user's code runs (a worker, except inline). ``close`` is idempotent and safe
    from any thread.
    """

    workers: int

    @property
    def layout(self) -> BatchLayout: ...

    @property
    def pids(self) -> list[int]: ...

    @property
    def crashes(self) -> list[tuple[int, int | None]]: ...

    def run(self, epoch: int, key: np.ndarray, batches: Sequence[np.ndarray],
            following: Following | None = None,
            first_batch: int = 0) -> Iterator[list[np.ndarray]]: ...

    def close(self) -> None: ...
