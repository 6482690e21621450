"""Sources made of sources: ``concat`` (one after another) and ``mix`` (drawn at chosen
weights), both of a defined length and deterministic, so a loader over them keeps every
guarantee (each sample once per epoch, bit-identical batches for any worker count,
exact resume).

Every source must give samples of one layout (structure, field shapes and dtypes): a
batch is one array per field. Sources that would not are refused when the combination
is made, naming the first difference. Sources that name their labels (a ``classes``
attribute, as the ETL readers, the built-in kanji and stores have) must name them alike
(one list may go on after the other ends), or label 3 would mean two things. With
``tag`` each sample also says which source it came from (its index in ``sources``): a
dict sample gets the key ``tag``, a tuple gets one more element, a bare array becomes
``(array, source)``. Keras reads a third element of ``(x, y, ...)`` as sample weights:
drop the tag in the transform, as the README's recipe does, or use dict samples.

``mix`` chooses the samples once, from its seed, when it is made: the index table
below, rebuilt from the same arguments in every worker (only the arguments travel).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ._checks import integer
from .blobs import Record
from .layout import BatchLayout, LayoutMismatch
from .sources import _Splittable, as_source

__all__ = ["Concat", "Mix", "concat", "mix"]


def _checked(sources: Sequence[Any], what: str) -> list[Any]:
    if isinstance(sources, (str, bytes)) or not isinstance(sources, Sequence):
        raise TypeError(f"{what} takes a list of sources, got {type(sources).__name__}")
    if not sources:
        raise ValueError(f"{what} needs at least one source")
    checked = []
    for number, source in enumerate(sources):
        try:
            checked.append(as_source(source))
        except (TypeError, ValueError) as error:
            raise type(error)(f"source {number} of {what}: {error}") from None
    first = BatchLayout.of(_comparable(checked[0][0]))
    for number, source in enumerate(checked[1:], start=1):
        layout = BatchLayout.of(_comparable(source[0]))
        if layout != first:
            raise LayoutMismatch(
                f"source {number} of {what} gives samples unlike source 0's: "
                f"{_describe(layout)} against {_describe(first)}. A batch is one array per "
                "field, so every source must give one structure, shape and dtype: bring "
                "them to one first (e.g. `stoker ingest --size N` for images, or a source "
                "whose __getitem__ converts)"
            )
    named = [(n, tuple(classes)) for n, classes in
             ((n, getattr(s, "classes", None)) for n, s in enumerate(checked))
             if classes is not None and len(classes)]
    if named:
        longest_number, longest = max(named, key=lambda pair: len(pair[1]))
        for number, classes in named:
            if classes != longest[:len(classes)]:
                raise ValueError(
                    f"source {number} of {what} names its labels otherwise than source "
                    f"{longest_number} (their classes differ), so one label would mean two "
                    "things; give them one list of classes (e.g. "
                    "etl.load(..., classes=kanji.classes))"
                )
    return checked


def _comparable(sample: Any) -> Any:
    """``sample`` with each encoded record (a blob field's, whose length is its own) as
    an empty record: sources of encoded records agree whatever their records' lengths."""
    def leaf(value: Any) -> Any:
        return value[:0] if isinstance(value, Record) else value

    if isinstance(sample, tuple):
        return tuple(leaf(v) for v in sample)
    if isinstance(sample, dict):
        return {k: leaf(v) for k, v in sample.items()}
    return leaf(sample)


def _describe(layout: BatchLayout) -> str:
    fields = ", ".join(f"{f.name} {f.shape} {f.dtype}" for f in layout.fields)
    return f"{layout.kind} of {fields}"


def _tagged(sample: Any, tag: str | None, number: int) -> Any:
    if tag is None:
        return sample
    value = np.int32(number)
    if isinstance(sample, dict):
        return {**sample, tag: value}
    if isinstance(sample, (tuple, list)):
        return (*sample, value)
    return (sample, value)


def _check_tag(tag: str | None, sample: Any) -> None:
    if tag is None:
        return
    if not isinstance(tag, str) or not tag:
        raise TypeError(f"tag must be a name (a non-empty str) or None, got {tag!r}")
    if isinstance(sample, dict) and tag in sample:
        raise ValueError(f"the samples already have a field {tag!r}; choose another tag")


class Combined(_Splittable):
    """What ``Concat`` and ``Mix`` share: ``sources`` (replaceable by sources of the same
    samples, as the Ray executor does) and the optional ``tag``."""

    sources: list[Any]
    tag: str | None

    @property
    def classes(self) -> Any:
        """The label names of the sources (the longest list: the others agree with its
        start); None when none has them."""
        named = [classes for classes in (getattr(s, "classes", None) for s in self.sources)
                 if classes is not None and len(classes)]
        return max(named, key=len) if named else None

    def _index(self, index: int) -> int:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"a sample index must be an int, got {type(index).__name__}")
        length = len(self)
        if not -length <= index < length:
            raise IndexError(f"sample {index} of {length}")
        return int(index) % length


class Concat(Combined):
    """``sources`` one after another: sample ``i`` of the second source is sample
    ``len(sources[0]) + i`` here. Made by ``concat``."""

    def __init__(self, sources: Sequence[Any], *, tag: str | None = None) -> None:
        self.sources = _checked(sources, "concat")
        _check_tag(tag, self.sources[0][0])
        self.tag = tag
        self._ends = np.cumsum([len(s) for s in self.sources])

    def __len__(self) -> int:
        return int(self._ends[-1])

    def __getitem__(self, index: int) -> Any:
        index = self._index(index)
        number = int(np.searchsorted(self._ends, index, side="right"))
        start = int(self._ends[number - 1]) if number else 0
        return _tagged(self.sources[number][index - start], self.tag, number)

    def __repr__(self) -> str:
        return f"<Concat of {len(self)} from {len(self.sources)} sources>"


def mix_table(lengths: Sequence[int], weights: Sequence[float], length: int,
              seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Which source and which of its samples each of ``length`` samples is.

    Source ``k`` gets ``weights[k] * length`` of them (largest remainder, so they sum to
    ``length``): all of its samples as many whole times as fit, then a seeded choice
    without replacement of the rest, so no sample comes twice more often than another.
    Each source's picks are in a seeded order, spread evenly through the table, so even
    an unshuffled loader sees the sources interleaved at their weights.
    """
    largest = max(weights)  # scaled first: weights near the float limit sum to inf
    total = sum(w / largest for w in weights)
    shares = [w / largest / total * length for w in weights]
    counts = [math.floor(share) for share in shares]
    for k in sorted(range(len(shares)), key=lambda k: (counts[k] - shares[k], k))[
            :length - sum(counts)]:
        counts[k] += 1
    which, inner, keys = [], [], []
    for k, (size, count) in enumerate(zip(lengths, counts, strict=True)):
        if not count:
            continue
        rng = np.random.default_rng([seed, k])
        whole, rest = divmod(count, size)
        # the rest without replacement, at a cost that grows with it, not with the source
        picks = rng.choice(size, rest, replace=False, shuffle=False)
        if whole:
            picks = np.concatenate([np.tile(np.arange(size), whole), picks])
        inner.append(rng.permutation(picks))
        which.append(np.full(count, k, np.int32))
        keys.append((np.arange(count) + 0.5) / count)
    order = np.argsort(np.concatenate(keys), kind="stable")
    return np.concatenate(which)[order], np.concatenate(inner)[order].astype(np.int64)


class Mix(Combined):
    """``length`` samples drawn from ``sources`` at ``weights`` (see ``mix_table``).
    Made by ``mix``."""

    def __init__(self, sources: Sequence[Any], weights: Sequence[float], *,
                 length: int | None = None, seed: int = 0, tag: str | None = None) -> None:
        self.sources = _checked(sources, "mix")
        _check_tag(tag, self.sources[0][0])
        if isinstance(weights, np.ndarray) and weights.ndim == 1:
            weights = weights.tolist()
        if isinstance(weights, (str, bytes)) or not isinstance(weights, Sequence):
            raise TypeError(f"weights must be a list of numbers, got {weights!r}")
        if len(weights) != len(self.sources):
            raise ValueError(
                f"mix got {len(self.sources)} sources but {len(weights)} weights; give one "
                "weight per source"
            )
        for number, weight in enumerate(weights):
            if (isinstance(weight, bool) or not isinstance(weight, (int, float, np.number))
                    or not math.isfinite(weight) or weight < 0):
                raise ValueError(
                    f"weight {number} must be a finite number >= 0, got {weight!r}"
                )
        if not sum(weights) > 0:
            raise ValueError("the weights sum to 0: at least one must be above 0")
        if length is None:
            length = sum(len(s) for s in self.sources)
        integer("mix length (samples)", length, 1)
        integer("mix seed", seed, 0)
        self.weights = tuple(float(w) for w in weights)
        self.length, self.seed, self.tag = int(length), int(seed), tag
        self._which, self._inner = mix_table([len(s) for s in self.sources], self.weights,
                                             self.length, self.seed)
        self._which.flags.writeable = False
        self._inner.flags.writeable = False

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Any:
        index = self._index(index)
        number = int(self._which[index])
        return _tagged(self.sources[number][int(self._inner[index])], self.tag, number)

    def counts(self) -> list[int]:
        """How many of the mix's samples each source gives."""
        return np.bincount(self._which, minlength=len(self.sources)).tolist()

    def __reduce__(self):
        return (_mix, (self.sources, self.weights, self.length, self.seed, self.tag))

    def __repr__(self) -> str:
        return f"<Mix of {len(self)} from {len(self.sources)} sources, counts {self.counts()}>"


def _mix(sources: list[Any], weights: tuple[float, ...], length: int, seed: int,
         tag: str | None) -> Mix:
    return Mix(sources, weights, length=length, seed=seed, tag=tag)


def concat(sources: Sequence[Any], *, tag: str | None = None) -> Concat:
    """One source of ``sources`` one after another (``len`` is the sum of theirs).
    ``tag`` names a field that says which source each sample came from (its index in
    ``sources``): a dict gets the key, a tuple one more element, an array becomes a pair.

        data = stoker.concat([etl8g, etl9g])
    """
    return Concat(sources, tag=tag)


def mix(sources: Sequence[Any], weights: Sequence[float], *, length: int | None = None,
        seed: int = 0, tag: str | None = None) -> Mix:
    """One source of ``length`` samples (default: as many as the sources hold in all),
    drawn from ``sources`` at ``weights`` (any scale: [3, 1] is 75 % and 25 %). A source
    whose share is more than it holds gives each of its samples as many whole times as
    fit, and a seeded choice of the rest; one whose share is less gives a seeded choice.
    The choice is made once, from ``seed``: another seed draws another one. ``tag``
    names a field that says which source each sample came from (its index in
    ``sources``): a dict gets the key, a tuple one more element, an array becomes a pair.

        train = stoker.mix([etl, kanji.train], weights=[0.7, 0.3], seed=0)
    """
    return Mix(sources, weights, length=length, seed=seed, tag=tag)
