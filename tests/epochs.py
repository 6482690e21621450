"""Helpers shared by the tests that compare whole epochs of batches."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Epochs = list[list[tuple[np.ndarray, ...]]]


def epochs_of(loader, count: int, during: Callable[[int, int], None] | None = None) -> Epochs:
    """``count`` epochs of ``loader``, each batch copied out of its slot;
    ``during(epoch, batch)`` runs after each batch when given."""
    out = []
    for epoch in range(count):
        batches = []
        for number, batch in enumerate(loader):
            batches.append(tuple(np.copy(a) for a in batch))
            if during is not None:
                during(epoch, number)
        out.append(batches)
    return out


def assert_same(got: Epochs, expected: Epochs) -> None:
    """The same epochs, batches and fields, bit for bit and dtype for dtype."""
    assert len(got) == len(expected)
    for batches, wanted in zip(got, expected, strict=True):
        assert len(batches) == len(wanted)
        for batch, want in zip(batches, wanted, strict=True):
            for a, b in zip(batch, want, strict=True):
                assert a.dtype == b.dtype, (a.dtype, b.dtype)
                np.testing.assert_array_equal(a, b)
