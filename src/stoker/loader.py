"""The Loader: ties a source, the epoch plan and an executor together.

    with stoker.Loader(train, batch_size=256, transform=distort, seed=0) as loader:
        for epoch in range(10):
            for images, labels in loader:   # one epoch, a new order each time
                ...

Iterating runs the rest of the current epoch, from the consumer cursor (``cursor.py``):
a completed epoch moves it to the next epoch (so a plain loop sees a new order every
epoch); after a ``break`` the next iteration continues with the batch after the last one
taken. ``set_epoch`` and ``load_state_dict`` move the cursor; ``state_dict`` saves it.
"""

from __future__ import annotations

import multiprocessing
import os
import secrets
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import cloudpickle
import numpy as np

from ._checks import boolean, integer
from ._fork import ProcessLock
from ._system import usable_cpu_count
from .cursor import STATE_VERSION, Position, parse_state, superseded
from .errors import LoaderError
from .executors._produce import BatchTransform, Transform
from .executors._spawning import START_METHODS
from .executors.inline import InlineExecutor
from .executors.processes import ProcessExecutor, Tuning
from .executors.protocol import Executor
from .layout import BatchLayout
from .plan import (
    Purpose,
    batch_bounds,
    epoch_key,
    epoch_order,
    global_rng_seeders,
    num_batches,
    shard_of,
    shard_size,
)
from .sources import as_source
from .stats import LoaderStats, StatsRecorder

__all__ = ["Loader", "LoaderOptions"]

BACKENDS = ("processes", "inline", "ray")
CLOSED = "this Loader is closed; create a new one"
_adopting = ProcessLock()  # a forked child's copies of loaders become its own under it
# How many of epoch 0's first samples the layout may be read off: the first one that a
# filtering transform (stoker.Many()) keeps.
_PROBE_SAMPLES = 64


# The most worker processes a Loader starts per usable core (more is a mistake, not speed).
_OVERSUBSCRIBED = 32


def most_workers() -> int:
    """The most worker processes a Loader starts on this machine (a number above it is
    refused: it would oversubscribe the cores, not speed anything up)."""
    return _OVERSUBSCRIBED * usable_cpu_count()


@dataclass(frozen=True, slots=True, kw_only=True)
class LoaderOptions:
    """The loader's settings, validated once; errors name the argument and the fix."""

    batch_size: int
    shuffle: bool = True
    seed: int | None = 0
    workers: int | str | None = None
    prefetch: int | str | None = None
    drop_remainder: bool = False
    backend: str = "processes"
    max_worker_restarts: int = 0
    timeout: float | None = None
    start_method: str | None = None
    start_timeout: float = 120.0
    shard: tuple[int, int] | None = None
    check_finite: bool = False
    max_outputs: int | None = None

    def __post_init__(self) -> None:
        def seconds(name: str, value: Any, *, optional: bool) -> None:
            if value is None and optional:
                return
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                raise TypeError(
                    f"{name} must be a number of seconds{' or None' if optional else ''}, "
                    f"got {value!r} ({type(value).__name__})"
                    + ("" if optional else f"; None is not allowed (default "
                       f"{LoaderOptions.__dataclass_fields__[name].default:g} s): a worker "
                       "that never starts must end in an error, not a hang")
                )

        integer("batch_size", self.batch_size, 1)
        for name in ("shuffle", "drop_remainder", "check_finite"):
            boolean(name, getattr(self, name))
        seconds("timeout", self.timeout, optional=True)
        seconds("start_timeout", self.start_timeout, optional=False)
        if not isinstance(self.backend, str):
            raise TypeError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.seed is not None:
            integer("seed", self.seed, 0)
        for name, minimum in (("workers", 0), ("prefetch", 1)):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, str) and value == "auto"):
                integer(name, value, minimum, also=', None or "auto"')
        integer("max_worker_restarts", self.max_worker_restarts, 0)
        if self.max_outputs is not None:
            integer("max_outputs", self.max_outputs, 1)
        if self.timeout is not None and not self.timeout > 0:
            raise ValueError(
                f"timeout must be a positive number of seconds or None, got {self.timeout}"
            )
        if self.shard is not None:
            if not isinstance(self.shard, (tuple, list)) or len(self.shard) != 2:
                # a dict, a set or an iterator unpacks too, and not as (index, count)
                raise TypeError(f"shard must be (index, count), a tuple such as "
                                f"(rank, world_size), got {self.shard!r}")
            index, count = self.shard
            integer("shard count", count, 1)
            integer("shard index", index, 0)
            if index >= count:
                raise ValueError(f"shard index must be below the count, got {self.shard!r}")
            object.__setattr__(self, "shard", (int(index), int(count)))
            if self.seed is None:
                raise ValueError(
                    "shard= needs the same explicit seed in every training process (seed=None "
                    "draws a different one in each, and the shards would overlap)"
                )
        if not self.start_timeout > 0:
            raise ValueError(
                f"start_timeout must be a positive number of seconds, got {self.start_timeout}"
            )
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        for name in ("workers", "prefetch"):
            if getattr(self, name) == "auto" and self.backend != "processes":
                raise ValueError(
                    f"{name}=\"auto\" sizes the pool of worker processes as it runs, so it "
                    f"needs backend='processes', not {self.backend!r}; give {name} a number "
                    f"(or None: {'every usable core' if name == 'workers' else 'the default'})"
                    + (" with backend='ray'" if self.backend == "ray" else ""))
        if self.backend == "ray" and self.workers == 0:
            raise ValueError(
                "backend='ray' runs the work on Ray actors, so workers must be >= 1 (or None "
                "for every CPU of the cluster); use backend='inline' to run in this process"
            )
        if self.backend == "ray" and self.start_method is not None:
            raise ValueError(
                "start_method applies to backend='processes'; Ray starts its own workers, "
                "so leave it None with backend='ray'"
            )
        if self.backend == "inline" and self.workers not in (None, 0):
            raise ValueError(
                f"backend='inline' runs in this process, so workers must be 0 or None, "
                f"got workers={self.workers}"
            )
        if (self.backend == "processes" and isinstance(self.workers, (int, np.integer))
                and self.workers > _OVERSUBSCRIBED * usable_cpu_count()):
            cores = usable_cpu_count()
            raise ValueError(
                f"workers={self.workers} is more than {_OVERSUBSCRIBED} worker processes for "
                f"each of this machine's {cores} usable cores: they would compete for the "
                f"cores (and memory, and file descriptors) without making batches faster; "
                f"pass workers=None (one per core), a number up to "
                f"{_OVERSUBSCRIBED * cores}, or workers=\"auto\""
            )
        if self.start_method is not None and self.start_method not in START_METHODS:
            raise ValueError(
                f"start_method must be one of {START_METHODS} or None, got {self.start_method!r}"
            )

    @property
    def resolved_workers(self) -> int:
        """The worker count: ``workers``, or every usable core (every CPU of the Ray
        cluster with backend='ray', which connects to it)."""
        if self.backend == "inline":
            return 0
        if self.workers is not None and self.workers != "auto":  # "auto": starts at all cores
            return int(self.workers)
        if self.backend == "ray":
            from .executors import ray as ray_executor

            ray_executor.connect()
            return ray_executor.cluster_cpus()
        return usable_cpu_count()

    def tuning(self, workers: int) -> Tuning | None:
        """What the processes executor may size by itself (``tuning.py``), or None."""
        auto_workers, auto_prefetch = self.workers == "auto", self.prefetch == "auto"
        if not (auto_workers or auto_prefetch):
            return None
        return Tuning(workers=auto_workers, prefetch=auto_prefetch,
                      max_workers=usable_cpu_count() if auto_workers else workers)


# What users of other loaders type, and what it is here.
_HABITS = {
    "num_workers": "workers=N (None: every usable core; 0: in this process)",
    "drop_last": "drop_remainder=True",
    "prefetch_factor": "prefetch=N (batch slots ahead of the consumer)",
    "num_parallel_calls": "workers=N",
    "use_multiprocessing": "backend='processes' (the default) or backend='inline'",
    "persistent_workers": "nothing: workers live as long as the loader, across epochs",
    "pin_memory": "loader.torch(pin_memory=True)",
    "collate_fn": "batch_transform=f(batch, rng) for work on whole batches (batches are "
                  "stacked from the transform's samples first)",
    "batch_fn": "batch_transform=f(batch, rng)",
    "worker_init_fn": "nothing: create handles lazily in the source or transform (they "
                      "run in the workers); seed other global generators with "
                      "stoker.register_global_rng",
    "generator": "seed=N",
    "sampler": "shuffle= and seed= (the order is the loader's, keyed by seed and epoch), "
               "or a Subset / stoker.split of the source",
    "random_state": "seed=N",
    "augment": "transform=",
    "transforms": "transform= (compose several with stoker.augment.Compose)",
    "map_fn": "transform=",
    "batchsize": "batch_size=N",
    "steps_per_epoch": "nothing here: len(loader) is the batches per epoch; pass "
                       "steps_per_epoch to fit()",
}


def _refuse_habits(positional: tuple[Any, ...], unknown: dict[str, Any],
                   batch_size: Any) -> None:
    """Clear errors for other loaders' habits: extra positional arguments, their keyword
    names, typos ("did you mean"), a missing batch_size."""
    if positional:
        hint = (f"Loader(source, batch_size={positional[0]!r})"
                if isinstance(positional[0], (int, np.integer)) else "Loader(source, "
                "batch_size=N, transform=f, ...)")
        raise TypeError(f"Loader takes only the source positionally; pass the rest by "
                        f"keyword: {hint}")
    if unknown:
        import difflib
        import inspect

        known = [p for p in inspect.signature(Loader.__init__).parameters
                 if p not in ("self", "source", "positional", "unknown")]
        name = next(iter(unknown))
        if name in _HABITS:
            advice = f"here that is {_HABITS[name]}"
        else:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            advice = (f"did you mean {close[0]}=?" if close
                      else f"it takes {', '.join(known)}")
        raise TypeError(f"Loader got an unexpected argument {name}=; {advice}")
    if batch_size is None:
        raise TypeError("Loader needs batch_size=N (samples per batch): "
                        "Loader(source, batch_size=256)")


class Loader:
    """Batches of transformed samples from a source, made on every core, reproducibly.

    Iterate it (``for x, y in loader``), or hand it to a framework: ``loader.keras()``
    for ``model.fit``, ``loader.tf_dataset()``, ``loader.torch()``; JAX takes the numpy
    batches as they are. Every iteration continues from the cursor (``position``);
    ``state_dict()`` / ``load_state_dict()`` resume bit-identically.

    Args:
        source: what samples are read from: ``from_arrays(...)``, a store
            (``stoker.store.open``), a ``split`` of either, or anything with
            ``__len__`` and ``__getitem__(index) -> sample`` (an array, a tuple or a dict
            of arrays and scalars). The only positional argument.
        batch_size: samples per batch (required).
        transform: ``f(sample, rng) -> sample`` with ``rng`` a ``numpy.random.Generator``
            keyed by (seed, epoch, index), or a legacy ``f(sample)`` that draws from
            ``random`` / ``np.random`` / torch's generator, which are seeded the same way
            (see ``register_global_rng`` for others). Runs in the workers, never in this
            process unless ``workers=0``. None: samples as they are.
        batch_transform: ``f(batch, rng) -> batch`` on each whole batch (MixUp, CutMix,
            per-batch statistics), run in a worker after its samples are made; ``batch``
            has the sample's structure with a batch axis first, ``rng`` is keyed by
            (seed, epoch, batch number, shard), and a legacy ``f(batch)`` has the global
            generators seeded the same way. It may change the fields (int labels to
            one-hot), the same way for every batch; it is also called once on a batch of
            the first sample alone, to learn the batch layout.
        max_outputs: the most samples one sample may become: a transform that returns
            ``stoker.Many([a, b])`` makes two of it, ``stoker.Many()`` drops it. Batch
            ``b`` then holds what the plan's batch ``b`` of samples became, in plan
            order: up to ``batch_size * max_outputs`` rows, possibly none (``len`` still
            counts batches, exactly). None: the most that one of the first samples of
            epoch 0 became, if one returned a ``Many``; else one sample per sample.
        shuffle: a new order every epoch (True) or the source's order (False).
        seed: the seed of the order and of every sample's random numbers; None draws
            one (recorded in ``state_dict``).
        workers: worker processes; None: every usable core (CPU affinity and cgroup
            quota respected; every CPU of the Ray cluster with ``backend="ray"``); 0:
            in this process; ``"auto"``: starts at every usable core, then grows and
            shrinks the pool from its own statistics (``stats().tuning`` says what it
            did and why; the batches are the same for any size).
        prefetch: batch slots ahead of the consumer; None: 2 per worker within 256 MiB
            of shared memory, at least 2 (with Ray, batches in flight: 8 per worker
            within 256 MiB, made several to a Ray task); ``"auto"``:
            starts there and adds a slot whenever the consumer waited after the ring
            had been full (a bursty consumer), within that memory.
        drop_remainder: drop the last, smaller batch of each epoch.
        backend: ``"processes"`` (worker processes and shared memory), ``"inline"`` (in
            this process) or ``"ray"`` (Ray actors on the cluster ``ray.init()``
            connected to; the same batches).
        max_worker_restarts: crashed workers replaced (in total) before the loader
            raises ``WorkerCrashed``; their samples are recomputed, bit-identically.
        timeout: seconds without a finished sample after which a busy worker counts
            as hung (killed, then replaced or ``WorkerCrashed``); None: no limit. A
            batch transform must finish within it after the batch's last sample. With
            Ray, a task of several batches replies once: it gets ``timeout`` per batch.
        start_method: ``"forkserver"`` (default on Linux and macOS), ``"spawn"`` or
            ``"fork"``; None: the default.
        start_timeout: seconds a worker may take to load the source and transform.
        shard: ``(index, count)``: this process's disjoint part of every epoch, for
            data-parallel training (needs an explicit ``seed``, the same everywhere).
        check_finite: refuse NaN/inf in float outputs of the transform, naming the
            sample.

    Unknown arguments (``**unknown``) get a "did you mean" (``num_workers`` is
    ``workers`` here); the guarantees are in the README's "What it guarantees" and the
    errors in docs/errors.md.
    """

    def __init__(
        self,
        source: Any,
        *positional: Any,
        batch_size: int | None = None,
        transform: Callable[..., Any] | None = None,
        batch_transform: Callable[..., Any] | None = None,
        max_outputs: int | None = None,
        shuffle: bool = True,
        seed: int | None = 0,
        workers: int | str | None = None,
        prefetch: int | str | None = None,
        drop_remainder: bool = False,
        backend: str = "processes",
        max_worker_restarts: int = 0,
        timeout: float | None = None,
        start_method: str | None = None,
        start_timeout: float = 120.0,
        shard: tuple[int, int] | None = None,
        check_finite: bool = False,
        **unknown: Any,
    ) -> None:
        _refuse_habits(positional, unknown, batch_size)
        self.options = LoaderOptions(
            batch_size=batch_size,
            shuffle=shuffle,
            seed=seed,
            workers=workers,
            prefetch=prefetch,
            drop_remainder=drop_remainder,
            backend=backend,
            max_worker_restarts=max_worker_restarts,
            timeout=timeout,
            start_method=start_method,
            start_timeout=start_timeout,
            shard=shard,
            check_finite=check_finite,
            max_outputs=max_outputs,
        )
        self.source = as_source(source)
        if self.samples_per_epoch == 0:
            raise ValueError(
                f"shard={self.options.shard!r} of a source of {len(self.source)} samples is "
                f"empty, so every epoch would be empty; use at most {len(self.source)} "
                "shards (one per training process), or give each process more data"
                if self.options.shard else "the source is empty (0 samples)"
            )
        if drop_remainder and batch_size > self.samples_per_epoch:
            raise ValueError(
                f"batch_size={batch_size} is larger than the "
                f"{'shard' if shard else 'source'} ({self.samples_per_epoch} samples) and "
                "drop_remainder=True, so an epoch would have no batch; lower batch_size or "
                "set drop_remainder=False"
            )
        self.seed = int(seed) if seed is not None else secrets.randbits(63)
        self._transform = Transform.wrap(
            transform, check_finite=self.options.check_finite, seeders=global_rng_seeders(),
            batch=BatchTransform.wrap(batch_transform, seeders=global_rng_seeders(),
                                      shard_index=(self.options.shard or (0, 1))[0]),
            max_outputs=self.options.max_outputs)
        if self.options.backend == "ray":
            from .executors import ray as ray_executor  # a clear error if Ray is missing

            ray_executor.connect()
        self._start_workers = self.options.resolved_workers
        self._refuse_daemonic()
        if self._start_workers > 0:
            _check_picklable(self._transform.fn, "transform")
            _check_picklable(batch_transform, "batch_transform")
            _check_picklable(self.source, "source")
        self._layout: BatchLayout | None = None
        self._executor: Executor | None = None
        self._crashed: tuple[tuple[int, int | None], ...] = ()  # kept by close()
        self._cursor = Position(0, 0)
        self._moves = 0  # set_epoch() and load_state_dict() calls: adapters check it
        self._run_id = 0
        self._run_ended = ""
        self._adapters: weakref.WeakSet[Any] = weakref.WeakSet()
        self._keras: Any = None
        self._closed = False
        self._stats = StatsRecorder(workers=self._start_workers)
        self._pid = os.getpid()  # the owner; a forked child's copy adopts itself first
        self._finalizer = weakref.finalize(self, _close_executor, [None], self._pid)

    # -- the plan -------------------------------------------------------------------

    @property
    def samples_per_epoch(self) -> int:
        """Samples an epoch visits: the source, or this loader's shard of it."""
        if self.options.shard is None:
            return len(self.source)
        return shard_size(len(self.source), *self.options.shard)

    def __len__(self) -> int:
        return num_batches(self.samples_per_epoch, self.options.batch_size,
                           self.options.drop_remainder)

    @property
    def epoch(self) -> int:
        """The epoch the cursor is in: the one the next batch comes from."""
        return self._cursor.epoch

    @property
    def position(self) -> Position:
        """The cursor: the epoch, and how many of its batches the consumer took."""
        return self._cursor

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration run ``epoch`` from its start. An iteration still
        running ends (its next step raises LoaderError)."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")
        self._move_cursor(Position(int(epoch), 0), "set_epoch()")

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """The source indices of every batch of ``epoch``, in order (pure; for tests)."""
        order = epoch_order(
            len(self.source), seed=self.seed, epoch=epoch, shuffle=self.options.shuffle
        )
        if self.options.shard is not None:
            order = shard_of(order, *self.options.shard)
        bounds = batch_bounds(len(order), self.options.batch_size, self.options.drop_remainder)
        return [order[start:stop] for start, stop in bounds]

    # -- state ------------------------------------------------------------------------

    def _fixed_state(self) -> dict[str, Any]:
        """What a state must match to resume this loader."""
        return {
            "num_samples": len(self.source),
            "batch_size": int(self.options.batch_size),
            "shuffle": bool(self.options.shuffle),
            "drop_remainder": bool(self.options.drop_remainder),
            "shard": list(self.options.shard) if self.options.shard else None,
        }

    def state_dict(self) -> dict[str, Any]:
        """The cursor, saved: the epoch and how many of its batches the consumer took
        (with Keras: trained on). ``load_state_dict`` of it gives the same batches next."""
        for adapter in list(self._adapters):
            adapter.check_state()
        return {
            "version": STATE_VERSION,
            "seed": self.seed,
            "epoch": self._cursor.epoch,
            "batches_done": self._cursor.batch,
            **self._fixed_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from ``state``, a ``state_dict()``: the next iteration continues that epoch
        after the last batch taken. Checked completely before anything changes; an iteration still
        running ends (its next step raises LoaderError). The state's seed replaces the
        loader's (``loader.seed`` says it): the run resumed is the one that was saved,
        whatever seed this loader was made with."""
        seed, cursor = parse_state(state, self._fixed_state(), len(self))
        self.seed = seed
        self._move_cursor(cursor, "load_state_dict()")

    def _move_cursor(self, position: Position, by: str) -> None:
        """Where the next iteration starts; one still running ends (``cursor.py``)."""
        self._end_run(f"{by} moved the loader's cursor")
        self._moves += 1
        self._cursor = position

    # -- iteration ------------------------------------------------------------------

    @property
    def layout(self) -> BatchLayout:
        """The batch layout, read off the first transformed sample of epoch 0: by a
        worker (user code never runs in this process, except with ``workers=0``), so
        asking for it starts the workers."""
        if self._layout is None:
            self._layout = self._get_executor().layout
        return self._layout

    def _probe(self) -> tuple[tuple[int, ...], np.ndarray]:
        """Which samples may show the layout, and their key: the first of epoch 0 that
        the transform keeps, among its first ``_PROBE_SAMPLES``."""
        first = np.concatenate(self.epoch_batches(0))[:_PROBE_SAMPLES]
        return tuple(int(i) for i in first), epoch_key(self.seed, 0, Purpose.SAMPLES)

    def _refuse_daemonic(self) -> None:
        """Workers cannot start in a daemonic process: say so, naming the fix."""
        if (self._start_workers > 0 and self.options.backend == "processes"
                and multiprocessing.current_process().daemon):
            raise LoaderError(
                f"this process ({multiprocessing.current_process().name}) is a daemonic "
                "worker, such as a torch DataLoader's or a multiprocessing Pool's, and "
                "Python lets no daemonic process start processes of its own, so this "
                f"Loader cannot start its {self._start_workers} workers: pass workers=0 to "
                "run the work in this process, or make the Loader in the main process (with "
                "PyTorch: iterate loader.torch() there instead of a DataLoader with "
                "num_workers)"
            )

    def _check_usable(self) -> None:
        if self._closed:
            raise LoaderError(CLOSED)
        if os.getpid() != self._pid:
            with _adopting:  # two threads of the child: one adopts, the other sees it
                if os.getpid() != self._pid:
                    self._adopt_after_fork()

    def _adopt_after_fork(self) -> None:
        """This process was forked from the loader's owner: its copy becomes this
        process's own, at the same cursor. The owner's workers, slots and actors stay the
        owner's, never used or freed here (the two would take each other's batches); this
        copy starts workers of its own when it needs them, which make the same batches."""
        if self.options.backend == "ray" and self._start_workers > 0:
            from .executors import ray as ray_executor

            ray_executor.connect()  # refused: Ray's connection is the parent's
        self._refuse_daemonic()
        self._finalizer.detach()
        self._executor = None  # the owner's: dropped, not closed
        self._crashed = ()  # the owner's crashes are not this copy's
        self._stats = StatsRecorder(workers=self._start_workers)  # its lock may be held
        # self._keras stays: the fork hook reset its state (adapters/keras.py), and
        # loader.keras() is the same view in the child as in the parent.
        self._pid = os.getpid()
        self._finalizer = weakref.finalize(self, _close_executor, [None], self._pid)

    def _get_executor(self) -> Executor:
        self._check_usable()
        if self._executor is None:
            if self._start_workers == 0:
                self._executor = InlineExecutor(self.source, self._transform, self._probe())
            elif self.options.backend == "ray":
                from .executors.ray import RayExecutor

                self._executor = RayExecutor(
                    source=self.source,
                    transform=self._transform,
                    probe=self._probe(),
                    workers=self._start_workers,
                    # None: sized in bytes by the executor, deeper than processes'
                    prefetch=None if self.options.prefetch is None else int(self.options.prefetch),
                    max_worker_restarts=self.options.max_worker_restarts,
                    timeout=self.options.timeout,
                    start_timeout=self.options.start_timeout,
                    stats=self._stats,
                )
            else:
                self._executor = ProcessExecutor(
                    source=self.source,
                    transform=self._transform,
                    probe=self._probe(),
                    # the slots hold the largest batch the plan makes, not more
                    batch_size=min(self.options.batch_size, self.samples_per_epoch),
                    workers=self._start_workers,
                    # None (and "auto", to start with): sized in bytes by the executor
                    prefetch=None if self.options.prefetch == "auto" else self.options.prefetch,
                    start_method=self.options.start_method,
                    max_worker_restarts=self.options.max_worker_restarts,
                    timeout=self.options.timeout,
                    start_timeout=self.options.start_timeout,
                    stats=self._stats,
                    tuning=self.options.tuning(self._start_workers),
                )
            self._finalizer.detach()
            self._finalizer = weakref.finalize(self, _close_executor, [self._executor],
                                               self._pid)
            if self._closed:  # close() ran in another thread while this one was made
                self._finalizer()
                self._executor = None
                raise LoaderError(CLOSED)
        return self._executor

    def __iter__(self) -> Iterator[Any]:
        """The rest of the current epoch, from the cursor; each batch taken moves it.
        Starting an iteration ends the one before (see ``cursor.py``)."""
        return self._run(self._start_run(), commit=True)

    def _start_run(self) -> tuple[int, Position]:
        """Claim the loader for a new run at the cursor; the run before it ends."""
        self._check_usable()
        self._end_run("a newer iteration of this loader started")
        return self._run_id, self._cursor

    def _end_run(self, why: str) -> None:
        self._run_id += 1
        self._run_ended = why

    def _consumed(self, position: Position) -> None:
        """An adapter that runs ahead reports what its consumer took (``cursor.py``)."""
        self._cursor = position

    def _run(self, claim: tuple[int, Position], *, commit: bool,
             flat: bool = False) -> Iterator[Any]:
        """One run from ``claim``'s position to the end of that epoch. Yields batches and
        moves the cursor (``commit``), or yields ``(position after, batch)`` and leaves
        the cursor to the adapter. ``flat``: a batch is the layout's list of arrays, not
        the sample's structure."""
        run_id, start = claim
        if self._run_id != run_id:
            raise superseded(self._run_ended)
        executor = self._get_executor()
        owner = self._pid
        batches = self.epoch_batches(start.epoch)[start.batch:]
        key = epoch_key(self.seed, start.epoch, Purpose.SAMPLES)
        total = len(self)
        stats = self._stats
        stats.workers = executor.workers

        def following() -> tuple[int, np.ndarray, list[np.ndarray]]:
            # The run that follows this one unless the cursor moves: the next epoch.
            return (start.epoch + 1, epoch_key(self.seed, start.epoch + 1, Purpose.SAMPLES),
                    self.epoch_batches(start.epoch + 1))

        produced = executor.run(start.epoch, key, batches, following, start.batch)
        layout = None
        position = start
        try:
            while True:
                if self._closed:
                    raise LoaderError(
                        "the loader was closed while this iteration was running (by close(), "
                        "the with-block's end, or Ctrl-C in another thread)"
                    )
                if os.getpid() != owner:  # an iteration going on in a forked child
                    raise LoaderError(
                        f"this iteration began in process {owner}, which forked this one "
                        f"({os.getpid()}): its batches are that process's to take, so it "
                        "cannot go on here; iterate the loader again in this process (its "
                        "copy starts workers of its own and goes on from the same cursor "
                        "with the same batches)"
                    )
                if self._run_id != run_id:
                    raise superseded(self._run_ended)
                stats.requested()
                try:
                    arrays = next(produced)
                except StopIteration:
                    return
                stats.delivered(len(arrays[0]))
                position = position.after(1, total)
                if layout is None:
                    layout = self.layout
                batch = arrays if flat else layout.assemble(arrays)
                if commit:
                    if self._run_id != run_id:
                        raise superseded(self._run_ended)
                    self._cursor = position
                    yield batch
                else:
                    yield position, batch
        finally:
            produced.close()

    def stats(self, *, reset: bool = False) -> LoaderStats:
        """What the loader did so far: batches, samples/s, how long the consumer waited,
        how busy the workers were (see ``LoaderStats.verdict()``). ``reset=True`` starts
        the counters again after taking the snapshot."""
        if os.getpid() != self._pid:  # a forked child's copy, not adopted yet: nothing
            return StatsRecorder(workers=self._start_workers).snapshot()  # of its own
        snapshot = self._stats.snapshot()
        if reset:
            self._stats.reset()
        return snapshot

    # -- adapters ---------------------------------------------------------------------

    def keras(self) -> Any:
        """This loader as a ``keras.utils.PyDataset`` for ``model.fit()`` / ``evaluate()`` /
        ``predict()``: each pass is one loader epoch from the cursor (``adapters.keras``).
        One view per loader: every call returns the same object."""
        self._check_usable()
        from .adapters.keras import KerasDataset

        if self._keras is None:
            self._keras = KerasDataset(self)
        return self._keras

    def tf_dataset(self) -> Any:
        """This loader as a ``tf.data.Dataset``: one epoch per iteration, stoker's
        prefetching, an ``element_spec`` from the batch layout. Pass ``shuffle=False`` to
        ``fit()`` (stoker shuffles; Keras only warns that it cannot)."""
        self._check_usable()
        from .adapters.tf import tf_dataset

        return tf_dataset(self)

    def torch(self, *, pin_memory: bool = False) -> Any:
        """This loader as a PyTorch iterable of tensor batches (one epoch per iteration,
        zero-copy; ``pin_memory`` for fast copies to a CUDA device). For JAX, iterate the
        loader itself: batches are numpy arrays, which ``jax.device_put`` takes as is."""
        self._check_usable()
        from .adapters.torch import TorchBatches

        return TorchBatches(self, pin_memory=pin_memory)

    # -- clean-up ---------------------------------------------------------------------

    @property
    def workers(self) -> int:
        """Worker processes (or Ray actors) in the pool now; 0: the work runs in this
        process. With ``workers="auto"`` this is the tuner's current pool once it runs
        (``stats().tuning`` says why it changed); before the first batch, and after
        ``close()``, the count it starts with."""
        executor = self._executor
        return executor.workers if executor is not None else self._start_workers

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the running workers (empty before the first batch)."""
        executor = self._executor
        if executor is None or os.getpid() != self._pid:  # not a forked child's parent's
            return []
        return executor.pids

    @property
    def crashes(self) -> list[tuple[int, int | None]]:
        """Workers that died so far on a run's batches, as (worker id, exit code;
        negative: the signal; None on Ray, which does not report it), whether they were
        replaced (``max_worker_restarts``) or not. A worker that dies holding none of a
        run's batches (idle, or on work made ahead for the next epoch) costs nothing and
        is not listed: it is replaced (using no restart) and any work made ahead is made
        again by its own run. A death during start-up is always listed."""
        executor = self._executor
        if os.getpid() != self._pid:  # a forked child's copy: the parent's are not its own
            return []
        return list(executor.crashes) if executor is not None else list(self._crashed)

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called (a closed loader delivers nothing more)."""
        return self._closed

    def close(self) -> None:
        """Stop the workers and free the batch slots. Idempotent."""
        self._closed = True
        # An iteration running in another thread (Keras', tf.data's) ends with a
        # LoaderError: its executor stops below, and its next step sees the loader closed.
        executor = self._executor
        if executor is not None:  # the record outlives the workers
            self._crashed = tuple(executor.crashes)
        self._finalizer()
        for adapter in list(self._adapters):
            adapter.release()  # a run an adapter holds, suspended, must not pin the source
        # A closed loader must not pin the dataset: frameworks (Keras, tf.data) may keep
        # a reference to the loader long after training.
        self._executor = None
        self.source = _ClosedSource(len(self.source)) if self.source is not None else None

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        # Keras dispatches fit()'s data by type and quotes the repr of what it does not
        # know ("Unrecognized data type: x=..."): the hint is for `model.fit(loader)`.
        return (
            f"<stoker.Loader {len(self.source)} samples, batch_size={self.options.batch_size}, "
            f"{len(self)} batches/epoch, workers={self.workers}"
            f"{' (auto)' if self.options.workers == 'auto' else ''}, epoch={self._cursor.epoch}, "
            f"batch={self._cursor.batch}; Keras' fit() takes loader.keras()>"
        )


class _ClosedSource:
    """What a closed loader keeps of its source: the length, for ``len`` and ``repr``."""

    def __init__(self, length: int) -> None:
        self._length = length

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> Any:
        raise RuntimeError(CLOSED)


def _close_executor(holder: list[Any], pid: int) -> None:
    executor = holder[0]
    if executor is not None and os.getpid() == pid:  # never a forked child's copy
        executor.close()


def _check_picklable(obj: Any, name: str) -> None:
    """Refuse at construction what cannot reach a worker process, saying what to do."""
    if obj is None:
        return
    try:
        cloudpickle.dumps(obj)
    except Exception as error:
        raise TypeError(
            f"the {name} cannot be sent to worker processes: {type(error).__name__}: {error}. "
            f"A {name} must not hold open files, locks, sockets, threads or models; create "
            f"such things lazily inside the {name} (e.g. on first call in each worker), or "
            "pass workers=0 to run in this process"
        ) from error
