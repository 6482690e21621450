"""What the training process pays per batch: its own CPU time for each 1 MiB batch taken
from a loader (plain loop, no transform), and Keras fit() steps/s with a near-free model,
where the data path is the whole cost. Candidates alternate, medians after a warm-up.

    python benchmarks/bench_consumer.py [--rounds 3] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np

import stoker
from common import machine_line, median, write_results, write_section

BATCH = 256
SHAPE = (64, 64, 1)  # 256 of these as uint8: 1 MiB


def own_cpu_seconds() -> float:
    """User + system CPU of this process (every thread, no child): the consumer's share."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def data(samples: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return (rng.integers(0, 256, (samples, *SHAPE), dtype=np.uint8),
            rng.integers(0, 10, samples).astype(np.int32))


# -- 1. consumer CPU per batch, plain loop -------------------------------------------------


def consumer_candidates(x: np.ndarray, y: np.ndarray, workers: int, pools: list[int]
                        ) -> list[tuple[str, Callable[[], tuple[Callable[[], Iterable], Any]]]]:
    source = stoker.from_arrays(x, y)

    def stoker_loader(count: int, data: Any = source, before: bool = False):
        def make():
            loader = stoker.Loader(data, batch_size=BATCH, workers=count, seed=0)
            if before:
                copied_in_chunks(loader)
            return (lambda: loader), loader.close
        return make

    found = [(f"stoker, {count} worker{'s' if count != 1 else ''}", stoker_loader(count))
             for count in pools]
    found.append((f"stoker, {workers} workers, {BEFORE}",
                  stoker_loader(workers, before=True)))
    try:
        import torch
        from torch.utils.data import DataLoader, TensorDataset
    except ImportError:
        return found
    dataset = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))

    def torch_loader():
        # forkserver: forked from this process, which has run TensorFlow by now, its
        # workers segfaulted now and then (fork after threads).
        loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=workers,
                            persistent_workers=True, multiprocessing_context="forkserver")
        return (lambda: loader), lambda: None  # its workers end with the DataLoader

    found.append((f"PyTorch DataLoader, {workers} workers (forkserver)", torch_loader))
    return found


BEFORE = "copied out of its slot, one chunk per worker (before)"


def copied_in_chunks(loader: stoker.Loader) -> None:
    """The hand-over before batches were lent (a copy out of the slot into the
    consumer's memory) and before chunks were sized by time (one per worker)."""
    executor = loader._get_executor()
    executor.lend_batches = False
    executor.task_seconds = 0.0


def consumer_cpu(make: Callable, epochs: int) -> dict:
    epoch_iterable, close = make()
    try:
        per_batch, rates = [], []
        for epoch in range(epochs + 1):
            cpu, wall, batches = own_cpu_seconds(), time.perf_counter(), 0
            for _ in epoch_iterable():
                batches += 1
            if epoch:  # epoch 0: start-up and warm-up
                per_batch.append((own_cpu_seconds() - cpu) / batches)
                rates.append(batches / (time.perf_counter() - wall))
    finally:
        close()
    return {"cpu_per_batch_s": per_batch, "batches_per_s": rates}


# -- 2. fit() with a near-free model ----------------------------------------------------------


def near_free_model() -> Any:
    import keras

    model = keras.Sequential([keras.Input(SHAPE, dtype="uint8"),
                              keras.layers.GlobalMaxPooling2D(),
                              keras.layers.Dense(10, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy")
    return model


def epoch_timer() -> Any:
    """A Keras callback that keeps each epoch's wall time in ``times``."""
    import keras

    class Timer(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.times: list[float] = []
            self._began = 0.0

        def on_epoch_begin(self, epoch, logs=None):
            self._began = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.times.append(time.perf_counter() - self._began)

    return Timer()


def fit_candidates(x: np.ndarray, y: np.ndarray, workers: int) -> list[tuple[str, Callable]]:
    import keras
    import tensorflow as tf

    source = stoker.from_arrays(x, y)
    steps = len(x) // BATCH

    def in_memory():
        dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH).prefetch(
            tf.data.AUTOTUNE)
        return dataset, {}, lambda: None

    class Slices(keras.utils.PyDataset):
        def __len__(self):
            return steps

        def __getitem__(self, i):
            return x[i * BATCH:(i + 1) * BATCH], y[i * BATCH:(i + 1) * BATCH]

    def py_dataset():
        return Slices(), {}, lambda: None

    def fed_by(data: Any, count: int, adapter: str, before: bool = False) -> Callable:
        """A stoker loader over ``data`` with ``count`` workers, through ``adapter``."""
        def make():
            loader = stoker.Loader(data, batch_size=BATCH, workers=count, seed=0)
            if before:
                copied_in_chunks(loader)
            if adapter == "keras":
                return loader.keras(), {}, loader.close
            return loader.tf_dataset(), {"shuffle": False}, loader.close
        return make

    return [("tf.data from in-memory tensors", in_memory),
            (PREMADE_SCAN, premade(x, y, per_call=1)),
            (PREMADE_STACKS, premade(x, y, per_call=4)),
            ("Keras PyDataset, plain slices", py_dataset),
            (f"stoker loader.keras(), {workers} workers", fed_by(source, workers, "keras")),
            (f"stoker loader.tf_dataset(), {workers} workers", fed_by(source, workers, "tf")),
            (f"stoker loader.keras(), {workers} workers, {BEFORE}",
             fed_by(source, workers, "keras", before=True)),
            (f"stoker loader.tf_dataset(), {workers} workers, {BEFORE}",
             fed_by(source, workers, "tf", before=True)),
            ("stoker loader.keras(), inline (workers=0)", fed_by(source, 0, "keras")),
            ("stoker loader.tf_dataset(), inline (workers=0)", fed_by(source, 0, "tf"))]


PREMADE_SCAN = ("no loader: batches made beforehand, one tf.numpy_function call per batch in "
                "tf_dataset()'s scan (the ceiling of its design)")
PREMADE_STACKS = ("no loader: stacks of 4 batches made beforehand, one call per stack, "
                  "re-split by unbatch(), prefetch(2), the batches taken counted by a "
                  "tf.Variable in the graph (the ceiling of that design)")


def premade(x: np.ndarray, y: np.ndarray, per_call: int) -> Callable:
    """A dataset of ``x, y``'s batches whose Python call returns arrays made beforehand,
    so what it costs is the pipeline's structure alone, with no loader behind it:
    ``per_call=1`` is ``tf_dataset()``'s (a scan whose state is a token, a numpy_function
    per batch); more is the design of several batches per call, split again in tf.data,
    with the cursor kept by a counter in the graph (no Python call per batch)."""
    import tensorflow as tf

    steps = len(x) // BATCH // per_call * per_call
    stacks = [(np.ascontiguousarray(x[i * BATCH:(i + per_call) * BATCH].reshape(
                   per_call, BATCH, *SHAPE)),
               np.ascontiguousarray(y[i * BATCH:(i + per_call) * BATCH].reshape(per_call, BATCH)))
              for i in range(0, steps, per_call)]
    label = tf.as_dtype(y.dtype)
    options = tf.data.Options()
    options.autotune.enabled = False
    options.experimental_optimization.inject_prefetch = False
    options.experimental_optimization.map_parallelization = False

    def one_per_call() -> Any:
        def take(token, index):
            images, labels = stacks[int(index)]
            return [np.int64(1), images[0], labels[0]]

        def element(token, index):
            token, images, labels = tf.numpy_function(take, [token, index],
                                                      [tf.int64, tf.uint8, label], stateful=True)
            return tf.ensure_shape(token, ()), (tf.ensure_shape(images, (None, *SHAPE)),
                                                tf.ensure_shape(labels, (None,)))

        return tf.data.Dataset.range(steps).scan(np.int64(0), element)

    def stacked() -> Any:
        taken = tf.Variable(0, dtype=tf.int64, trainable=False)

        def element(index):
            images, labels = tf.numpy_function(lambda i: list(stacks[int(i)]), [index],
                                               [tf.uint8, label], stateful=True)
            return (tf.ensure_shape(images, (None, None, *SHAPE)),
                    tf.ensure_shape(labels, (None, None)))

        def count(images, labels):
            with tf.control_dependencies([taken.assign_add(1)]):
                return tf.identity(images), tf.identity(labels)

        return (tf.data.Dataset.range(len(stacks)).map(element).unbatch().prefetch(2)
                .map(count))

    def make():
        dataset = one_per_call() if per_call == 1 else stacked()
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(steps))
        return dataset.with_options(options), {"shuffle": False}, lambda: None

    return make


def fit_steps_per_s(make: Callable, epochs: int) -> dict:
    data_, extra, close = make()
    model = near_free_model()
    timer = epoch_timer()
    try:
        model.fit(data_, epochs=1, verbose=0, **extra)  # warm-up: tracing, first epoch
        cpu = own_cpu_seconds()
        model.fit(data_, epochs=epochs, verbose=0, callbacks=[timer], **extra)
        cpu = own_cpu_seconds() - cpu
    finally:
        close()
    steps = len(data_) if hasattr(data_, "__len__") else int(data_.cardinality())
    return {"steps_per_s": [steps / t for t in timer.times],
            "cpu_per_step_s": cpu / (steps * epochs)}


def iteration_start_ms(x: np.ndarray, y: np.ndarray, workers: int, repeats: int = 8
                       ) -> dict[str, float]:
    """Median time from ``iter(dataset)`` to its first batch (tf.data sets an iteration's
    pipeline up anew each time: every epoch and every validation pass pays it)."""
    import tensorflow as tf

    found = {}
    memory = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH).prefetch(tf.data.AUTOTUNE)
    with stoker.Loader(stoker.from_arrays(x, y), batch_size=BATCH, workers=workers,
                       seed=0) as loader:
        for name, dataset in (("tf.data from in-memory tensors", memory),
                              (f"stoker loader.tf_dataset(), {workers} workers",
                               loader.tf_dataset())):
            times = []
            for _ in range(repeats + 1):
                began = time.perf_counter()
                iterator = iter(dataset)
                next(iterator)
                times.append(time.perf_counter() - began)
                for _ in iterator:
                    pass
            found[name] = median(times[1:]) * 1e3
    return found


def plain_loop_steps(x: np.ndarray, y: np.ndarray, workers: int, epochs: int) -> list[float]:
    with stoker.Loader(stoker.from_arrays(x, y), batch_size=BATCH, workers=workers,
                       seed=0) as loader:
        rates = []
        for epoch in range(epochs + 1):
            began = time.perf_counter()
            for _ in loader:
                pass
            if epoch:
                rates.append(len(loader) / (time.perf_counter() - began))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=32768)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pools", default="1,2,4,8,16",
                        help="worker counts for the consumer-CPU table (more workers than "
                        "cores still shows what the consumer pays per batch)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3, help="measured epochs after warm-up")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    import tensorflow as tf  # noqa: F401  the consumer runs TensorFlow, as in training

    x, y = data(args.samples)
    pools = [int(p) for p in args.pools.split(",")]
    consumers = consumer_candidates(x, y, args.workers, pools)
    fits = fit_candidates(x, y, args.workers)
    cpu_runs: dict[str, list[dict]] = {name: [] for name, _ in consumers}
    fit_runs: dict[str, list[dict]] = {name: [] for name, _ in fits}
    loop_rates: list[float] = []
    starts: dict[str, list[float]] = {}
    for round_ in range(args.rounds):
        order = 1 if round_ % 2 == 0 else -1  # alternate, so no candidate always goes first
        for name, make in consumers[::order]:
            cpu_runs[name].append(consumer_cpu(make, args.epochs))
        for name, make in fits[::order]:
            fit_runs[name].append(fit_steps_per_s(make, args.epochs))
        loop_rates += plain_loop_steps(x, y, args.workers, args.epochs)
        for name, ms in iteration_start_ms(x, y, args.workers).items():
            starts.setdefault(name, []).append(ms)

    lines = [f"Machine: {machine_line()}. {args.samples} samples of 64x64x1 uint8 per epoch, "
             f"batch {BATCH} (1.00 MiB), no transform; {args.rounds} rounds in alternating "
             f"order, medians of {args.epochs} epochs each after a warm-up epoch.", "",
             "### CPU of the consuming process per batch (plain loop)", "",
             "| loader | consumer CPU per batch | batches/s one consumer core could take | "
             "batches/s here |", "|---|---:|---:|---:|"]
    summary: dict[str, Any] = {"consumer": {}, "fit": {}}
    for name, runs in cpu_runs.items():
        cpu = median([c for r in runs for c in r["cpu_per_batch_s"]])
        rate = median([b for r in runs for b in r["batches_per_s"]])
        summary["consumer"][name] = {"cpu_per_batch_us": cpu * 1e6, "batches_per_s": rate}
        lines.append(f"| {name} | {cpu * 1e6:.0f} µs | {1 / cpu:.0f} | {rate:.0f} |")
    reference = None
    lines += ["", "### Keras fit() with a near-free model (the data path is the cost)", "",
              "| data | steps/s | vs tf.data in memory | CPU of the training process per "
              "step |", "|---|---:|---:|---:|"]
    for name, runs in fit_runs.items():
        rate = median([s for r in runs for s in r["steps_per_s"]])
        cpu = median([r["cpu_per_step_s"] for r in runs])
        reference = reference or rate
        summary["fit"][name] = rate
        summary["fit_cpu_per_step_us"] = {**summary.get("fit_cpu_per_step_us", {}),
                                          name: cpu * 1e6}
        lines.append(f"| {name} | {rate:.0f} | {rate / reference:.2f}x | {cpu * 1e6:.0f} µs |")
    loop = median(loop_rates)
    summary["plain_loop_steps_per_s"] = loop
    lines.append(f"| the same stoker loader in a plain Python loop (no fit) | {loop:.0f} | "
                 f"{loop / reference:.2f}x | |")
    lines += ["", "### Starting an iteration (`iter(dataset)` to its first batch)", "",
              "| data | median |", "|---|---:|"]
    summary["iteration_start_ms"] = {}
    for name, values in starts.items():
        summary["iteration_start_ms"][name] = median(values)
        lines.append(f"| {name} | {median(values):.1f} ms |")
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_results("consumer", summary)
        write_section("consumer", "## What the training process pays per batch "
                      "(`benchmarks/bench_consumer.py`)\n\n" + text)


if __name__ == "__main__":
    main()
