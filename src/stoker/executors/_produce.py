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

from ..errors import describe
from ..layout import BatchLayout, LayoutMismatch
from ..many import Many
from ..plan import SampleRng, batch_stream
from ..sources import Rows, rows_of

__all__ = ["BatchTransform", "Producer", "SampleFailure", "Transform", "uses_torch"]

# A batch-capable transform runs over stacks of at most this many samples: few Python
# calls, and progress (for timeout=) reported after each stack.
_BATCH_STEP = 32
# Gathers of rows (no transform) copy at most this many bytes between progress reports.
_GATHER_BYTES = 4 * 2**20


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
    batch: BatchTransform | None = None  # the loader's batch_transform=, after this one
    # the loader's max_outputs=: the most samples one sample may become (stoker.Many);
    # None: learnt from the first samples (a Many there), else one-to-one
    max_outputs: int | None = None

    @classmethod
    def wrap(cls, fn: Callable[..., Any] | None, *, check_finite: bool = False,
             seeders: tuple[Callable[[int], None], ...] = (),
             batch: BatchTransform | None = None,
             max_outputs: int | None = None) -> Transform:
        if fn is None:
            return cls(None, False, check_finite, (), batch, max_outputs)
        takes_rng = _takes_rng(fn, "transform", "sample")
        return cls(fn, takes_rng, check_finite, () if takes_rng else seeders, batch,
                   max_outputs)

    def draws_from_torch(self) -> bool:
        """Whether a legacy function here (the transform or the batch transform) may draw
        from torch's global generator: the worker then imports torch before its first
        sample, so that it is seeded from the start (others do not pay its 2 s)."""
        legacy = [fn for fn, takes_rng in (
            (self.fn, self.takes_rng),
            (getattr(self.batch, "fn", None), getattr(self.batch, "takes_rng", True)))
            if fn is not None and not takes_rng]
        return any(uses_torch(fn) for fn in legacy)


def _takes_rng(fn: Any, name: str, what: str) -> bool:
    """Whether ``fn`` is called ``fn(x, rng)`` (True) or ``fn(x)`` (False)."""
    if not callable(fn):
        raise TypeError(
            f"{name} must be callable as f({what}, rng) or f({what}), got {type(fn).__name__}"
        )
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return True
    for arguments, takes_rng in (((None, None), True), ((None,), False)):
        try:
            signature.bind(*arguments)
        except TypeError:
            continue
        return takes_rng
    raise TypeError(
        f"{name} {getattr(fn, '__name__', fn)!r} has signature {signature}; it must "
        f"accept ({what}, rng) or ({what})"
    )


@dataclass(frozen=True, slots=True)
class BatchTransform:
    """The loader's ``batch_transform=``: ``fn(batch, rng)`` or legacy ``fn(batch)``, run
    in a worker on each whole batch once its samples are made. ``rng`` is keyed by
    (seed, epoch, batch number, shard): the counter word ``stream`` (``plan.batch_stream``)
    keeps it apart from every sample's numbers."""

    fn: Callable[..., Any]
    takes_rng: bool
    stream: int = 1
    seeders: tuple[Callable[[int], None], ...] = ()

    @classmethod
    def wrap(cls, fn: Callable[..., Any] | None, *, shard_index: int = 0,
             seeders: tuple[Callable[[int], None], ...] = ()) -> BatchTransform | None:
        if fn is None:
            return None
        takes_rng = _takes_rng(fn, "batch_transform", "batch")
        return cls(fn, takes_rng, batch_stream(shard_index), () if takes_rng else seeders)


class SampleFailure(Exception):
    """Producing sample ``index`` failed at ``stage``; carries the worker-side traceback.
    At the stages ``"batch"`` and ``"batch-checking"`` (the batch transform, its output)
    ``index`` is the batch's number in its epoch."""

    def __init__(self, index: int, stage: str, error: BaseException) -> None:
        what = "batch" if stage.startswith("batch") else "sample"
        super().__init__(f"{stage} {what} {index} failed: {describe(error)}")
        self.index = index
        self.stage = stage
        self.error = error
        self.traceback = "".join(
            traceback.format_exception(type(error), error, error.__traceback__)
        )


def _batch_capable(fn: Any) -> bool:
    """Whether ``fn`` transforms a stack of images at once (``stoker.augment`` transforms
    do): ``transform_batch(images, rngs)``, ``image_of(sample)``, ``with_image(...)``."""
    return getattr(fn, "preserves_shape", True) and all(
        callable(getattr(fn, name, None))
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
        # With a batch transform: the layout of the samples it is given (the batch
        # layout is that of its output), learnt by the probe, and where such a batch is
        # assembled when the two differ (this process's own memory, reused).
        self.sample_layout: BatchLayout | None = None
        self._scratch: list[np.ndarray] | None = None
        # The most samples one sample may become (stoker.Many): the loader's
        # max_outputs=, or learnt by the probe; None while samples are one-to-one.
        self.max_outputs: int | None = transform.max_outputs

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

    def layout_of(self, key: np.ndarray, indices: Sequence[int]) -> BatchLayout:
        """The batch layout, read off the first of ``indices`` (the first samples of
        epoch 0) that the transform keeps: one it drops (``Many()``) is passed over. An
        output that does not fit a batch is that sample's failure (stage "checking").
        Without ``max_outputs=``, a ``Many`` among them sets ``max_outputs`` to the most
        samples one of them became (at least 1). With a batch transform, the layout of
        its output for a batch of that one sample (``sample_layout`` is then the
        sample's): the batch transform runs once more, keyed as batch 0."""
        fan_out = 0
        for index in indices:
            index = int(index)
            output = self.sample(key, index)
            outputs = output.samples if isinstance(output, Many) else (output,)
            if isinstance(output, Many):
                fan_out = max(fan_out, len(outputs), 1)
            if not outputs:
                continue
            try:
                layout = BatchLayout.of(outputs[0])
                for extra in outputs[1:]:
                    layout.leaves(extra)
            except self._failures as error:
                raise SampleFailure(index, "checking", error) from error
            sample = outputs[0]
            break
        else:
            raise SampleFailure(int(indices[0]), "checking", LayoutMismatch(
                f"the transform dropped every one of the first {len(indices)} samples of "
                "epoch 0 (it returned stoker.Many() for each), and the batch layout is read "
                "off the first sample it keeps; check the condition that drops samples"))
        if self.max_outputs is None and fan_out:
            self.max_outputs = fan_out
        self.sample_layout = layout
        if self.transform.batch is None:
            return layout
        arrays = layout.empty(1)
        for target, leaf in zip(arrays, layout.leaves(sample), strict=True):
            target[0] = leaf
        output = self._call_batch(layout, key, 0, arrays)
        try:
            return BatchLayout.of_batch(output, 1)
        except self._failures as error:
            raise SampleFailure(0, "batch-checking", error) from error

    def capacity(self, samples: int) -> int:
        """The most rows a batch of ``samples`` samples can have: ``max_outputs`` each."""
        return samples * (1 if self.max_outputs is None else self.max_outputs)

    def make_batch(self, layout: BatchLayout, key: np.ndarray, number: int,
                   indices: Sequence[int], out: list[np.ndarray]) -> int:
        """Batch ``number`` of the epoch whose sample key is ``key``, whole, into the
        first rows of ``out`` (batch ``layout``, ``capacity(len(indices))`` rows at
        least): the samples, or what they became (``Many``), then the batch transform,
        if any. Returns the rows it made."""
        batch = self.transform.batch
        if batch is None and self.max_outputs is None:
            self.fill(layout, key, indices, out)
            return len(indices)
        sample_layout = layout if batch is None else self.sample_layout
        assert sample_layout is not None, "the probe's sample layout comes first"
        room = self.capacity(len(indices))
        if sample_layout == layout:
            arrays = out  # made in place where they are delivered from
        else:
            if self._scratch is None or len(self._scratch[0]) < room:
                self._scratch = sample_layout.empty(max(room, 1))
            arrays = self._scratch
        if self.max_outputs is None:
            rows = len(indices)
            self.fill(sample_layout, key, indices, arrays)
        else:
            rows = self._fill_many(sample_layout, key, indices, arrays)
        if batch is None:
            return rows
        arrays = [array[:rows] for array in arrays]
        output = self._call_batch(sample_layout, key, number, arrays)
        try:
            leaves = layout.batch_leaves(output, rows)
        except self._failures as error:
            raise SampleFailure(number, "batch-checking", error) from error
        # A field handed back as it was given is already in place (when the layouts
        # agree, the batch transform was given views of ``out``).
        given = arrays if sample_layout == layout else [None] * len(out)
        for target, passed, leaf in zip(out, given, leaves, strict=True):
            if leaf is not passed:
                np.copyto(target[:rows], leaf)  # numpy copies through a buffer if they overlap
        if self.transform.check_finite:
            bad = _first_not_finite(layout, out, 0, rows)
            if bad is not None:
                raise SampleFailure(number, "batch-checking", ValueError(
                    f"{bad[0]} of row {bad[1]} holds NaN or inf after the batch transform "
                    "(check_finite=True)"))
        return rows

    def _fill_many(self, layout: BatchLayout, key: np.ndarray, indices: Sequence[int],
                   out: list[np.ndarray]) -> int:
        """Write what each of the samples ``indices`` became (one, several or none) into
        the rows of ``out``, in order; return how many rows that made."""
        limit = self.max_outputs
        assert limit is not None
        row = 0
        for index in indices:
            index = int(index)
            output = self.sample(key, index)
            outputs = output.samples if isinstance(output, Many) else (output,)
            if len(outputs) > limit:
                raise SampleFailure(index, "checking", LayoutMismatch(
                    f"the transform made {len(outputs)} samples of it (stoker.Many), more "
                    f"than the loader makes room for (max_outputs={limit}"
                    f"{'' if self.transform.max_outputs else ', from the first samples'}); "
                    "pass max_outputs=N to the Loader, N the most samples one sample can "
                    "become"))
            for part in outputs:
                try:
                    leaves = layout.leaves(part)
                except self._failures as error:  # numpy's own, or a field's __array__
                    raise SampleFailure(index, "checking", error) from error
                for target, leaf in zip(out, leaves, strict=True):
                    target[row] = leaf
                row += 1
            if self.transform.check_finite and outputs:
                bad = _first_not_finite(layout, out, row - len(outputs), len(outputs))
                if bad is not None:
                    raise SampleFailure(index, "checking", ValueError(
                        f"{bad[0]} of sample {index} (output {bad[1]} of the "
                        f"{len(outputs)} it became) holds NaN or inf (check_finite=True); "
                        "look at the transform or the data of that sample"))
            if self.progress is not None:
                self.progress[0][self.progress[1]] += 1
        return row

    def _call_batch(self, sample_layout: BatchLayout, key: np.ndarray, number: int,
                    arrays: list[np.ndarray]) -> Any:
        batch = self.transform.batch
        assert batch is not None
        structured = sample_layout.assemble(arrays)
        try:
            if batch.takes_rng:
                output = batch.fn(structured, self.rng.for_sample(key, number, batch.stream))
            else:
                self.rng.seed_globals(key, number, batch.seeders, batch.stream)
                output = batch.fn(structured)
        except self._failures as error:
            raise SampleFailure(number, "batch", error) from error
        if output is None:
            raise SampleFailure(number, "batch-checking", LayoutMismatch(
                "the batch transform returned None; it must return the batch (did it "
                "forget `return`?)"))
        return output

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

    def _rows_like(self, layout: BatchLayout) -> Rows | None:
        """The source as ``Rows`` whose arrays are the fields of ``layout``: same
        structure, same field names in order, each array of its field's dtype and shape.
        Asked for each batch (a few comparisons), so that nothing here keeps a source's
        memory alive after the source let it go."""
        rows = rows_of(self.source)
        if rows is None or rows.kind != layout.kind or len(
                rows.arrays) != len(layout.fields) or (
                layout.kind == "dict" and rows.names != tuple(layout.keys)) or not all(
                array.dtype == field.dtype and array.shape[1:] == field.shape
                for array, field in zip(rows.arrays, layout.fields, strict=True)):
            return None
        return rows

    def _gatherable(self, layout: BatchLayout) -> Rows | None:
        """The source as ``Rows`` when samples are its rows as they are: no transform,
        and the rows are the batch's fields."""
        return self._rows_like(layout) if self.transform.fn is None else None

    def _gatherable_around_image(self, layout: BatchLayout) -> tuple[Rows, int] | None:
        """(the source as ``Rows``, the image field's index) when a batch-capable
        transform replaces one field of rows that are otherwise the batch's fields as
        they are (its ``image_field``): those rows are gathered straight into the batch,
        and the transform runs on the image rows in place."""
        image_field = getattr(self.transform.fn, "image_field", None)
        rows = self._rows_like(layout) if callable(image_field) else None
        if rows is None:
            return None
        image = image_field(layout.kind, tuple(layout.keys))
        return None if image is None else (rows, image)

    def _gather(self, layout: BatchLayout, rows: Rows, indices: Sequence[int],
                out: list[np.ndarray], offset: int) -> int:
        """Samples ``indices`` into rows ``offset...`` of ``out`` as gathers, in steps of
        at most ``_GATHER_BYTES`` (progress for ``timeout=`` is counted after each, as a
        slow disk under a memory-mapped store can make one step take long). Returns how
        many it gathered: a step stops short when it fails or meets an index out of
        range, and the caller reads the rest one sample at a time, so that the error
        names the sample."""
        chosen = np.asarray(indices, dtype=np.int64)
        step = max(1, _GATHER_BYTES // max(1, layout.batch_nbytes(1)))
        done = 0
        while done < len(chosen):
            part = chosen[done:done + step]
            start = offset + done
            try:
                if not rows.gather(part, [t[start:start + len(part)] for t in out]):
                    break
            except self._failures:
                break
            done += len(part)
            if self.progress is not None:
                self.progress[0][self.progress[1]] += len(part)
        return done

    def _fill(
        self,
        layout: BatchLayout,
        key: np.ndarray,
        indices: Sequence[int],
        out: list[np.ndarray],
        offset: int,
    ) -> None:
        rows = self._gatherable(layout) if len(indices) > 1 else None
        if rows is not None:
            done = self._gather(layout, rows, indices, out, offset)
            if done == len(indices):
                return
            indices, offset = indices[done:], offset + done
        if self.batch_capable and len(indices) > 1:
            around = self._gatherable_around_image(layout)
            try:
                for start in range(0, len(indices), _BATCH_STEP):
                    part = indices[start:start + _BATCH_STEP]
                    if around is None or not self._fill_batch_gathered(
                            *around, key, part, out, offset + start):
                        self._fill_batch(layout, key, part, out, offset + start)
                    if self.progress is not None:  # after each step, for timeout=
                        self.progress[0][self.progress[1]] += len(part)
                return
            except self._failures:
                pass  # redone below, one sample at a time, to name the failing sample
        for row, index in enumerate(indices, start=offset):
            index = int(index)
            sample = self.sample(key, index)
            if isinstance(sample, Many):
                raise SampleFailure(index, "checking", _unexpected_many(sample))
            try:
                leaves = layout.leaves(sample)
            except self._failures as error:  # numpy's own, or a field's __array__
                raise SampleFailure(index, "checking", error) from error
            for target, leaf in zip(out, leaves, strict=True):
                target[row] = leaf
            if self.progress is not None:
                self.progress[0][self.progress[1]] += 1


    def _fill_batch_gathered(self, rows: Rows, image: int, key: np.ndarray,
                             indices: Sequence[int], out: list[np.ndarray],
                             offset: int) -> bool:
        """Rows ``indices`` gathered into rows ``offset...`` of ``out``, then field
        ``image`` of them transformed as one stack, in place: what :meth:`_fill_batch`
        makes, without a Python call per sample. False, with nothing transformed, for
        an index out of range (the caller reads those one at a time)."""
        targets = [t[offset:offset + len(indices)] for t in out]
        if not rows.gather(np.asarray(indices, dtype=np.int64), targets):
            return False
        stack = targets[image]
        stack[...] = self.transform.fn.transform_batch(
            stack, (self.rng.for_sample(key, int(i)) for i in indices))
        return True

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


def _unexpected_many(output: Many) -> LayoutMismatch:
    what = "dropped it (stoker.Many())" if not len(output) else (
        f"made {len(output)} samples of it (stoker.Many)")
    return LayoutMismatch(
        f"the transform {what}, but this loader's batches hold one sample per sample: "
        "the first samples of epoch 0 each gave one. Pass max_outputs=N to the Loader, N "
        "the most samples one sample can become (1 for a transform that only drops "
        "samples)")


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


def _first_not_finite(layout: BatchLayout, out: list[np.ndarray], offset: int,
                      count: int) -> tuple[str, int] | None:
    """(field name, row from ``offset``) of the first of ``count`` rows whose float
    fields hold NaN or inf, or None."""
    for field, target in zip(layout.fields, out, strict=True):
        if target.dtype.kind not in "fc":
            continue
        rows = target[offset:offset + count]
        finite = np.isfinite(rows.reshape(len(rows), -1)).all(axis=1)
        if not finite.all():
            return field.name, int(np.flatnonzero(~finite)[0])
    return None


def _check_finite(layout: BatchLayout, indices: Sequence[int], out: list[np.ndarray],
                  offset: int) -> None:
    """Raise for the first sample whose float fields hold NaN or inf (``check_finite``)."""
    bad = _first_not_finite(layout, out, offset, len(indices))
    if bad is not None:
        index = int(indices[bad[1]])
        error = ValueError(
            f"{bad[0]} of sample {index} holds NaN or inf (check_finite=True); "
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
