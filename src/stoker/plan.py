"""The epoch plan, as pure functions: which samples, in which order, in which batch,
and with which random numbers.

Everything here is a function of ``(seed, epoch, index)`` alone, never of a worker,
a process or the wall clock. That is what makes batches bit-identical for any number
of workers, any backend, and after a resume (the README's "What it guarantees").

Random streams are counter-based (Philox): a key derived once per ``(seed, epoch,
purpose)`` and a counter that starts at the sample's index, so a sample's generator is
set up by assigning a state (about a microsecond) instead of hashing a new seed. A batch
transform's generator is keyed the same way by the batch's number in its epoch, on a
stream of its own (``batch_stream``).
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

__all__ = [
    "Purpose",
    "SampleRng",
    "batch_bounds",
    "batch_stream",
    "epoch_key",
    "epoch_order",
    "global_rng_seeders",
    "num_batches",
    "register_global_rng",
    "split_indices",
    "split_into_chunks",
]


class Purpose(IntEnum):
    """Separates the random streams drawn from one seed, so that they never overlap."""

    ORDER = 0
    SAMPLES = 1
    SPLIT = 2


def epoch_key(seed: int, epoch: int, purpose: Purpose) -> np.ndarray:
    """The 128-bit Philox key of one (seed, epoch, purpose): two uint64 words."""
    sequence = np.random.SeedSequence([int(seed), int(epoch), int(purpose)])
    return sequence.generate_state(2, dtype=np.uint64)


def _philox(key: np.ndarray, index: int = 0) -> np.random.Generator:
    return np.random.Generator(np.random.Philox(key=key, counter=[0, 0, index, 0]))


def epoch_order(n: int, *, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The order in which the ``n`` samples of a source are visited in ``epoch``.

    A permutation keyed by (seed, epoch) when ``shuffle``; ``0..n-1`` otherwise.
    """
    if not shuffle:
        return np.arange(n, dtype=np.int64)
    return _philox(epoch_key(seed, epoch, Purpose.ORDER)).permutation(n).astype(np.int64)


def shard_of(order: np.ndarray, index: int, count: int) -> np.ndarray:
    """Shard ``index`` of ``count`` of an epoch order: every ``count``-th sample from
    position ``index``. The shards of one order are disjoint, together hold every
    sample exactly once, and differ in size by at most one."""
    return order[index::count]


def shard_size(n: int, index: int, count: int) -> int:
    """How many of ``n`` samples shard ``index`` of ``count`` gets."""
    return len(range(index, n, count))


def num_batches(n: int, batch_size: int, drop_remainder: bool) -> int:
    """Batches per epoch: the last, short batch counts unless ``drop_remainder``."""
    return n // batch_size if drop_remainder else -(-n // batch_size)


def batch_bounds(n: int, batch_size: int, drop_remainder: bool) -> list[tuple[int, int]]:
    """``(start, stop)`` of every batch within the epoch order."""
    count = num_batches(n, batch_size, drop_remainder)
    return [(b * batch_size, min(n, (b + 1) * batch_size)) for b in range(count)]


def split_into_chunks(length: int, parts: int) -> list[tuple[int, int]]:
    """Cut ``range(length)`` into at most ``parts`` contiguous, near-equal pieces."""
    parts = max(1, min(parts, length))
    base, extra = divmod(length, parts)
    bounds, start = [], 0
    for part in range(parts):
        stop = start + base + (1 if part < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def split_indices(
    n: int, fraction: float, *, seed: int, shuffle: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint index sets for a (first, second) split of ``n`` samples.

    ``round(fraction * n)`` indices go to the first part. With ``shuffle`` the samples
    are assigned by a permutation keyed by ``seed`` (and each part is sorted, so reads
    stay sequential); otherwise the first part is the head of the source.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"split fraction must be strictly between 0 and 1, got {fraction!r}")
    first = round(fraction * n)
    if first == 0 or first == n:
        raise ValueError(
            f"split({fraction}) of {n} samples leaves one part empty; "
            "use a fraction that gives each part at least one sample"
        )
    order = (
        _philox(epoch_key(seed, 0, Purpose.SPLIT)).permutation(n)
        if shuffle
        else np.arange(n)
    )
    return np.sort(order[:first]).astype(np.int64), np.sort(order[first:]).astype(np.int64)


def batch_stream(shard_index: int = 0) -> int:
    """The counter word that keys batch transforms: batch ``b`` of an epoch draws from
    the epoch's sample key with counter ``[0, 0, b, batch_stream(shard)]``. Samples use
    0, so the streams never overlap; each shard of ``shard=`` has its own."""
    return 1 + int(shard_index)


_SEEDERS: list[Callable[[int], None]] = []


def register_global_rng(seeder: Callable[[int], None]) -> Callable[[int], None]:
    """Seed one more global generator per sample, for legacy ``f(sample)`` transforms.

    ``random``, ``np.random`` and torch's CPU generator are seeded from the sample's key
    before every call of a legacy transform; a transform that draws from another global
    generator (CuPy's, a library's own) registers its seeding function here, e.g.
    ``stoker.register_global_rng(cupy.random.seed)``. ``seeder(seed)`` is then called
    with a per-sample seed (an int below 2**63) before each call, in whichever process
    runs it, so the draws are the same for any worker count. Loaders made afterwards
    use it (it travels to their workers with the transform). Returns ``seeder``, so it
    works as a decorator; registering one twice has no further effect.
    """
    if not callable(seeder):
        raise TypeError(
            f"register_global_rng needs a function seeder(seed: int), got "
            f"{type(seeder).__name__}"
        )
    if seeder not in _SEEDERS:
        _SEEDERS.append(seeder)
    return seeder


def global_rng_seeders() -> tuple[Callable[[int], None], ...]:
    """What ``register_global_rng`` has registered, in order."""
    return tuple(_SEEDERS)


@dataclass(slots=True)
class SampleRng:
    """One reusable generator, re-keyed for every sample.

    ``for_sample(key, index)`` returns a ``numpy.random.Generator`` whose stream depends
    only on (key, index): the Philox counter starts at ``[0, 0, index, 0]``, so samples
    never share numbers. ``seed_globals`` seeds ``random``, ``np.random`` and, when torch
    is imported, torch's default generator from the same stream, for legacy transforms
    that draw from the global generators (torchvision's transforms draw from torch's).
    """

    bit_generator: np.random.Philox
    generator: np.random.Generator
    _counter: np.ndarray
    _state: dict

    @classmethod
    def create(cls) -> SampleRng:
        bit_generator = np.random.Philox(key=0)
        counter = np.zeros(4, dtype=np.uint64)
        # The setter copies what it is given, so one state dict is reused for every
        # sample (this runs once per sample: it must cost about a microsecond).
        state = {
            "bit_generator": "Philox",
            "state": {"counter": counter, "key": np.zeros(2, dtype=np.uint64)},
            "buffer": np.zeros(4, dtype=np.uint64),
            "buffer_pos": 4,
            "has_uint32": 0,
            "uinteger": 0,
        }
        return cls(bit_generator, np.random.Generator(bit_generator), counter, state)

    def for_sample(self, key: np.ndarray, index: int, stream: int = 0) -> np.random.Generator:
        """The generator of sample ``index``; ``stream`` > 0 gives batch ``index``'s
        instead (``batch_stream``): the last counter word separates them, so a sample's
        numbers and a batch's never overlap."""
        self._counter[2] = index
        self._counter[3] = stream
        self._state["state"]["key"] = key
        self.bit_generator.state = self._state
        return self.generator

    def seed_globals(
        self, key: np.ndarray, index: int, seeders: tuple[Callable[[int], None], ...] = (),
        stream: int = 0,
    ) -> None:
        words = self.for_sample(key, index, stream).bit_generator.random_raw(3 + len(seeders))
        random.seed(int(words[0]))
        np.random.seed(int(words[1]) & 0xFFFFFFFF)
        torch = sys.modules.get("torch")
        generator = getattr(torch, "default_generator", None)
        if generator is not None:
            # The CPU generator alone: 1 µs, where torch.manual_seed also queues a seed
            # for every CUDA device and costs 100-300 µs a sample.
            generator.manual_seed(int(words[2]) & 0x7FFF_FFFF_FFFF_FFFF)
        for seeder, word in zip(seeders, words[3:], strict=True):  # register_global_rng
            seeder(int(word) & 0x7FFF_FFFF_FFFF_FFFF)
