"""``Many``: what a transform returns to turn one sample into several, or into none.

A transform normally returns one sample (an array, a tuple or a dict). Returning
``stoker.Many([a, b])`` makes two samples of it, ``stoker.Many()`` drops it. A wrapper
type, not a list, because a tuple or a list *is* a sample (``(image, label)``); a plain
list of samples would be read as one sample of several fields.

What a batch is then (``Loader(max_outputs=)``): batch ``b`` holds the descendants of
the ``batch_size`` samples that the epoch plan puts in batch ``b``, in plan order, each
sample's outputs in the order it returned them. So a batch holds between 0 and
``batch_size * max_outputs`` rows, the same rows for any worker count, backend,
consumer and resume point, and ``len(loader)`` stays exact: it counts batches, not
samples. A fixed fan-out of ``k`` gives batches of exactly ``k * batch_size`` rows (the
last one aside). A transform that drops samples gives shorter batches, and an empty one
when every sample of a batch is dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np

__all__ = ["Many"]


class Many:
    """Several samples made from one (``Many([a, b])``), or none (``Many()``).

    Each must have the layout of every other sample (same structure, shapes, dtypes).
    """

    __slots__ = ("samples",)

    def __init__(self, samples: Iterable[Any] = ()) -> None:
        if isinstance(samples, Many):
            samples = samples.samples
        elif isinstance(samples, (np.ndarray, Mapping, str, bytes)) or not isinstance(
                samples, Iterable):
            what = type(samples).__name__
            hint = (" (for the rows of one array as samples: Many(list(array)))"
                    if isinstance(samples, np.ndarray) else "")
            raise TypeError(
                f"Many takes a list of samples, got a {what}{hint}: "
                "stoker.Many([sample_a, sample_b]), or stoker.Many() for none"
            )
        self.samples: tuple[Any, ...] = tuple(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.samples)

    def __getitem__(self, index: int) -> Any:
        return self.samples[index]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Many):
            return NotImplemented
        return len(self) == len(other) and all(
            _same(a, b) for a, b in zip(self.samples, other.samples, strict=True))

    __hash__ = None  # type: ignore[assignment]  # holds arrays: not hashable

    def __repr__(self) -> str:
        return f"stoker.Many({len(self)} sample{'' if len(self) == 1 else 's'})"


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(np.array_equal(a, b))
