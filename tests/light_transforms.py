"""Transforms in a module that imports only numpy: workers unpickle them by reference,
so importing this module is all a worker pays (conftest imports pytest and psutil, which
costs a worker about 0.2 s to start). For tests that start many loaders."""

from __future__ import annotations

import numpy as np


def flip_noise(sample, rng):
    image, label = sample
    if rng.random() < 0.5:
        image = image[:, ::-1]
    noise = rng.integers(0, 8, image.shape, dtype=np.uint8)
    return image ^ noise, label


class _OwnGenerator:
    """A library's own global generator, unknown to stoker (as CuPy's is)."""

    def __init__(self) -> None:
        self.state = np.random.default_rng()

    def seed(self, seed: int) -> None:
        self.state = np.random.default_rng(seed)


OWN_GENERATOR = _OwnGenerator()


def seed_own_generator(seed: int) -> None:
    OWN_GENERATOR.seed(seed)


def own_generator_noise(sample):
    """A legacy transform drawing from that generator."""
    image, label = sample
    return image + OWN_GENERATOR.state.random(image.shape, dtype=np.float32), label


def spin_noise(sample, rng, seconds: float = 0.0):
    """flip_noise after ``seconds`` of CPU work (a transform of a given cost)."""
    import time

    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return flip_noise(sample, rng)


def gated_noise(sample, rng, gate: str = "", free: frozenset[int] = frozenset(),
                then=flip_noise):
    """``then`` (flip_noise unless told), but a sample whose label is not in ``free``
    first waits (at most 60 s) for the file ``gate`` to exist: a test keeps chunks in
    the workers' hands for as long as it needs, whatever the machine's speed. Waiting
    draws nothing from ``rng``, so the batches are ``then``'s own."""
    import os
    import time

    if int(sample[1]) not in free:
        end = time.monotonic() + 60
        while not os.path.exists(gate) and time.monotonic() < end:
            time.sleep(0.001)
    return then(sample, rng)
