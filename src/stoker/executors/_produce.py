"""Making one sample: read it from the source, run the transform with its keyed RNG,
check it against the batch layout, write it into the batch.

Every executor calls this code, in this process or in a worker, which is why their
batches are bit-identical: the only inputs are (source, transform, epoch key, index).
"""

from __future__ import annotations

import functools
import inspect
import random
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..layout import BatchLayout
from ..plan import SampleRng

__all__ = ["Producer", "SampleFailure", "Transform", "uses_torch"]

# A batch-capable transform runs over stacks of at most this many samples: few Python
# calls, and progress (for timeout=) reported after each stack.
_BATCH_STEP = 32


@dataclass(frozen=True, slots=True)
class Transform:
    """A user transform and how to call it: ``fn(sample, rng)`` or legacy ``fn(sample)``.

    A legacy transform draws from ``random`` / ``np.random``; both are seeded from the
    sample's key right before each call, so it is reproducible too.
    """

    fn: Callable[..., Any] | None
    takes_rng: bool
    check_finite: bool = False  # refuse NaN/inf in float fields of the output
    # more global generators to seed before a legacy call (plan.register_global_rng)
    seeders: tuple[Callable[[int], None], ...] = ()

    @classmethod
    def wrap(cls, fn: Callable[..., Any] | None, *, check_finite: bool = False,
             seeders: tuple[Callable[[int], None], ...] = ()) -> Transform:
        if fn is None:
            return cls(None, False, check_finite)
        if not callable(fn):
            raise TypeError(
                "transform must be callable as f(sample, rng) or f(sample), "
                f"got {type(fn).__name__}"
            )
        try:
            signature = inspect.signature(fn)
        except (TypeError, ValueError):
            return cls(fn, True, check_finite)
        for arguments, takes_rng in (((None, None), True), ((None,), False)):
            try:
                signature.bind(*arguments)
            except TypeError:
                continue
            return cls(fn, takes_rng, check_finite, () if takes_rng else seeders)
        raise TypeError(
            f"transform {getattr(fn, '__name__', fn)!r} has signature {signature}; it must "
            "accept (sample, rng) or (sample)"
        )


class SampleFailure(Exception):
    """Producing sample ``index`` failed at ``stage``; carries the worker-side traceback."""

    def __init__(self, index: int, stage: str, error: BaseException) -> None:
        super().__init__(f"{stage} sample {index} failed: {type(error).__name__}: {error}")
        self.index = index
        self.stage = stage
        self.error = error
        self.traceback = "".join(
            traceback.format_exception(type(error), error, error.__traceback__)
        )


def _batch_capable(fn: Any) -> bool:
    """Whether ``fn`` transforms a stack of images at once (``stoker.augment`` transforms
    do): ``transform_batch(images, rngs)``, ``image_of(sample)``, ``with_image(...)``."""
    return all(callable(getattr(fn, name, None))
               for name in ("transform_batch", "image_of", "with_image"))


class Producer:
    """Reads, transforms and checks samples; fills batch arrays in place.

    With a batch-capable transform, a chunk of samples is transformed in one call over
    the stack of their images (bit-identical to one at a time, fewer Python calls); if
    that fails for any reason, the chunk is redone one sample at a time, so an error
    names the sample that caused it.
    """

    def __init__(self, source: Any, transform: Transform, *, in_worker: bool = False) -> None:
        self.source = source
        self.transform = transform
        # In a worker a KeyboardInterrupt can only come from user code (workers ignore
        # SIGINT): it is that sample's failure. In the consumer it is Ctrl-C.
        self._failures: tuple[type[BaseException], ...] = (
            (Exception, KeyboardInterrupt) if in_worker else (Exception,)
        )
        # (counters, my index): a worker counts its finished samples for timeout=
        self.progress: tuple[np.ndarray, int] | None = None
        self.rng = SampleRng.create()
        self.batch_capable = transform.takes_rng and _batch_capable(transform.fn)

    def sample(self, key: np.ndarray, index: int) -> Any:
        """The transformed sample ``index`` for the epoch whose sample key is ``key``."""
        try:
            sample = self.source[index]
        except self._failures as error:
            raise SampleFailure(index, "reading", error) from error
        fn = self.transform.fn
        if fn is None:
            return sample
        try:
            if self.transform.takes_rng:
                return fn(sample, self.rng.for_sample(key, index))
            self.rng.seed_globals(key, index, self.transform.seeders)
            return fn(sample)
        except self._failures as error:
            raise SampleFailure(index, "transforming", error) from error

    def layout_of(self, key: np.ndarray, index: int) -> BatchLayout:
        """The batch layout, read off sample ``index``; an output that does not fit a
        batch is that sample's failure (stage "checking")."""
        sample = self.sample(key, index)
        try:
            return BatchLayout.of(sample)
        except self._failures as error:
            raise SampleFailure(index, "checking", error) from error

    def fill(
        self,
        layout: BatchLayout,
        key: np.ndarray,
        indices: Sequence[int],
        out: list[np.ndarray],
        offset: int = 0,
    ) -> None:
        """Write the samples ``indices`` into rows ``offset...`` of the batch arrays ``out``."""
        self._fill(layout, key, indices, out, offset)
        if self.transform.check_finite:
            _check_finite(layout, indices, out, offset)

    def _fill(
        self,
        layout: BatchLayout,
        key: np.ndarray,
        indices: Sequence[int],
        out: list[np.ndarray],
        offset: int,
    ) -> None:
        if self.batch_capable and len(indices) > 1:
            try:
                for start in range(0, len(indices), _BATCH_STEP):
                    part = indices[start:start + _BATCH_STEP]
                    self._fill_batch(layout, key, part, out, offset + start)
                    if self.progress is not None:  # after each step, for timeout=
                        self.progress[0][self.progress[1]] += len(part)
                return
            except self._failures:
                pass  # redone below, one sample at a time, to name the failing sample
        for row, index in enumerate(indices, start=offset):
            index = int(index)
            sample = self.sample(key, index)
            try:
                leaves = layout.leaves(sample)
            except ValueError as error:
                raise SampleFailure(index, "checking", error) from error
            for target, leaf in zip(out, leaves, strict=True):
                target[row] = leaf
            if self.progress is not None:
                self.progress[0][self.progress[1]] += 1


    def _fill_batch(
        self,
        layout: BatchLayout,
        key: np.ndarray,
        indices: Sequence[int],
        out: list[np.ndarray],
        offset: int,
    ) -> None:
        fn = self.transform.fn
        indices = [int(i) for i in indices]
        # Each sample is copied as it is read: a source may refill and return one buffer
        # for every call (the images would all be the last one read otherwise).
        samples, stack = [], None
        for row, index in enumerate(indices):
            sample = self.source[index]
            image = np.asarray(fn.image_of(sample))
            if stack is None:
                stack = np.empty((len(indices), *image.shape), image.dtype)
            elif image.shape != stack.shape[1:] or image.dtype != stack.dtype:
                raise ValueError("images differ in shape or dtype: one at a time")
            stack[row] = image
            samples.append(_owned(sample, image))
        images = fn.transform_batch(stack, (self.rng.for_sample(key, i) for i in indices))
        for row, (sample, image) in enumerate(zip(samples, images, strict=True), start=offset):
            for target, leaf in zip(out, layout.leaves(fn.with_image(sample, image)),
                                    strict=True):
                target[row] = leaf


def _torchy(obj: Any) -> bool:
    name = getattr(obj, "__name__", "") if inspect.ismodule(obj) else getattr(
        obj, "__module__", "")
    return isinstance(name, str) and name.split(".")[0] in ("torch", "torchvision")


def uses_torch(fn: Any) -> bool:
    """Whether a transform uses torch: it is a torch/torchvision object, or its code names
    ``torch`` (``import torch`` inside it too) or a global that comes from torch."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    if fn is None:
        return False
    if _torchy(type(fn)) or _torchy(fn):
        return True
    target = fn if inspect.isfunction(fn) or inspect.ismethod(fn) else type(fn).__call__
    code = getattr(target, "__code__", None)
    if code is None:
        return False
    scope = getattr(target, "__globals__", {})
    pending, names = [code], set()
    while pending:
        current = pending.pop()
        names.update(current.co_names)
        pending.extend(c for c in current.co_consts if inspect.iscode(c))
    return any(name in ("torch", "torchvision") or _torchy(scope.get(name)) for name in names)


def _owned(sample: Any, image: Any) -> Any:
    """``sample`` with its arrays other than ``image`` copied (they may be reused)."""
    def own(value: Any) -> Any:
        if value is image or not isinstance(value, np.ndarray):
            return value
        return value.copy()

    if isinstance(sample, tuple):
        return tuple(own(value) for value in sample)
    if isinstance(sample, dict):
        return {name: own(value) for name, value in sample.items()}
    return sample


def _check_finite(layout: BatchLayout, indices: Sequence[int], out: list[np.ndarray],
                  offset: int) -> None:
    """Raise for the first sample whose float fields hold NaN or inf (``check_finite``)."""
    for field, target in zip(layout.fields, out, strict=True):
        if target.dtype.kind not in "fc":
            continue
        rows = target[offset:offset + len(indices)]
        finite = np.isfinite(rows.reshape(len(rows), -1)).all(axis=1)
        if not finite.all():
            position = int(np.flatnonzero(~finite)[0])
            index = int(indices[position])
            error = ValueError(
                f"{field.name} of sample {index} holds NaN or inf (check_finite=True); "
                "look at the transform or the data of that sample"
            )
            raise SampleFailure(index, "checking", error)


class preserved_global_rngs:
    """Save and restore ``random``, ``np.random`` (and torch's generator, if imported)
    around legacy transforms run in the consumer's process, so that seeding them per
    sample does not disturb the caller."""

    def __enter__(self) -> None:
        self._python = random.getstate()
        self._numpy = np.random.get_state()
        torch = sys.modules.get("torch")
        self._torch = torch.get_rng_state() if hasattr(torch, "get_rng_state") else None

    def __exit__(self, *exc: object) -> None:
        random.setstate(self._python)
        np.random.set_state(self._numpy)
        if self._torch is not None:
            sys.modules["torch"].set_rng_state(self._torch)
