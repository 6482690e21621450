"""Helpers shared by the tests that compare whole epochs of batches."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

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


def held_after_the_first_batch(source, gate: Path, batch_size: int, seed: int,
                               then: Callable | None = None, **options) -> Callable:
    """``then`` (flip_noise unless told) with every sample after epoch 0's first batch
    (of a loader with these options) held until ``gate`` exists. Once that batch is in,
    each worker provably holds work it cannot finish, so a test can kill, close or
    resize at that moment on a machine of any speed; then it touches ``gate``.
    Labels must tell the samples apart (as the tests' data sets do)."""
    import stoker
    from light_transforms import flip_noise, gated_noise

    with stoker.Loader(source, batch_size=batch_size, seed=seed, workers=0,
                       **options) as loader:
        free = frozenset(int(label) for label in next(iter(loader))[1])
    return functools.partial(gated_noise, gate=str(gate), free=free,
                             then=then or flip_noise)
