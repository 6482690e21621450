"""Loader comparison (issue #2): the question's transform and a cheap one, through
stoker and every alternative the user had, side by side in one process that has
TensorFlow loaded (as in training).

Every candidate runs ``--rounds`` times with a fresh loader, the list in alternating
order. Reports per loader: augmented samples/s (median over the measured epochs of all
rounds, each round after its own warm-up epoch), the CPU use of the process tree,
time to first batch (fresh loader, workers included), the spread of inter-batch gaps
(p10/p50/p90 over the measured epochs) and the memory of the process tree (PSS, and its
growth over the consumer alone before the loader existed).

    python benchmarks/bench_loaders.py [--samples 8192] [--epochs 3] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np
import psutil

import stoker
from common import (
    glyph_like_images,
    machine_line,
    median,
    percentiles,
    tree_pss_mib,
    write_results,
    write_section,
)
from question import QuestionPoolGenerator, question_transform

BATCH = 256
WORKERS = 2


def cheap_transform(sample):
    """Flip plus noise on a uint8 image: a few µs, so moving batches is what costs."""
    image, label = sample
    if np.random.random() < 0.5:
        image = image[:, ::-1]
    noise = np.frombuffer(np.random.bytes(image.size), np.uint8).reshape(image.shape)
    return image ^ (noise & 7), label


def cheap_transform_rng(sample, rng):
    """The same with stoker's per-sample generator."""
    image, label = sample
    if rng.random() < 0.5:
        image = image[:, ::-1]
    noise = np.frombuffer(rng.bytes(image.size), np.uint8).reshape(image.shape)
    return image ^ (noise & 7), label


@dataclass
class Candidate:
    name: str
    # make() -> (epoch_iterable_factory, close, augmented samples per batch or None)
    make: Callable[[], tuple[Callable[[], Iterable], Callable[[], None], int | None]]


def stoker_candidate(name, data, transform, workers, **kwargs) -> Candidate:
    def make():
        loader = stoker.Loader(data, batch_size=BATCH, transform=transform, workers=workers,
                               **kwargs)
        return (lambda: loader), loader.close, None
    return Candidate(name, make)


def keras_candidate(name, data, transform, workers, multiprocessing) -> Candidate:
    import keras
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

    x, y = data

    class Generator(keras.utils.PyDataset):
        def __init__(self):
            super().__init__(workers=workers, use_multiprocessing=multiprocessing,
                             max_queue_size=10)
            self.order = np.random.default_rng(0).permutation(len(x))

        def __len__(self):
            return -(-len(x) // BATCH)

        def __getitem__(self, index):
            rows = self.order[index * BATCH:(index + 1) * BATCH]
            samples = [transform((x[i], y[i])) for i in rows]
            return np.stack([s[0] for s in samples]), np.stack([s[1] for s in samples])

    def make():
        adapter = PyDatasetAdapter(Generator(), shuffle=False)

        def epoch():
            adapter.on_epoch_begin()
            try:
                yield from adapter.get_numpy_iterator()
            finally:
                adapter.on_epoch_end()

        def close():
            if adapter.enqueuer is not None:
                adapter.enqueuer.stop()
        return epoch, close, None
    return Candidate(name, make)


def question_candidate(name, data) -> Candidate:
    x, y = data

    def make():
        generator = QuestionPoolGenerator(x, y.astype(np.int8), BATCH, WORKERS)

        def epoch():
            for index in range(len(generator)):
                yield generator[index]
        return epoch, generator.close, generator.augmented_per_batch()
    return Candidate(name, make)


def torch_candidate(name, data, transform) -> Candidate:
    import torch.utils.data as tud

    x, y = data

    class Samples(tud.Dataset):
        def __len__(self):
            return len(x)

        def __getitem__(self, i):
            image, label = transform((x[i], y[i]))
            return np.ascontiguousarray(image), label

    def make():
        loader = tud.DataLoader(Samples(), batch_size=BATCH, shuffle=True,
                                num_workers=WORKERS, persistent_workers=True, prefetch_factor=2)

        def close():
            iterator = getattr(loader, "_iterator", None)
            if iterator is not None:
                iterator._shutdown_workers()
        return (lambda: loader), close, None
    return Candidate(name, make)


def tfdata_candidate(name, data, transform) -> Candidate:
    import tensorflow as tf

    x, y = data

    def load(i):
        image, label = transform((x[int(i)], y[int(i)]))
        return image, np.int32(label)

    def make():
        dataset = (
            tf.data.Dataset.range(len(x))
            .shuffle(len(x), seed=0)
            .map(lambda i: tf.py_function(load, [i], (tf.uint8, tf.int32)),
                 num_parallel_calls=tf.data.AUTOTUNE)
            .batch(BATCH)
            .prefetch(tf.data.AUTOTUNE)
        )
        return dataset.as_numpy_iterator, lambda: None, None
    return Candidate(name, make)


def tree_cpu_seconds() -> float:
    """User + system CPU time of this process, its live descendants and the children it
    has reaped (Keras' and the question's pools come and go within an epoch)."""
    me = psutil.Process()
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = sum(me.cpu_times()[:2]) + reaped.ru_utime + reaped.ru_stime
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.NoSuchProcess:
            pass
    return total


def measure(candidate: Candidate, epochs: int, budget_s: float = 30.0) -> dict:
    """One fresh loader: a warm-up epoch, then ``epochs`` measured ones (at least two, fewer
    than ``epochs`` when a slow loader has used up ``budget_s``)."""
    baseline = tree_pss_mib()
    started = time.perf_counter()
    epoch_iterable, close, augmented_per_batch = candidate.make()
    try:
        throughputs, gaps, first_batch, cpu, wall = [], [], None, 0.0, 0.0
        for epoch in range(epochs + 1):
            if epoch > 2 and time.perf_counter() - started > budget_s:
                break
            cpu_before, begin = tree_cpu_seconds(), time.perf_counter()
            previous, samples = None, 0
            for batch in epoch_iterable():
                now = time.perf_counter()
                if first_batch is None:
                    first_batch = now - started
                if previous is not None and epoch > 0:
                    gaps.append(now - previous)
                previous = now
                samples += augmented_per_batch or len(batch[1])
            if epoch > 0:  # epoch 0 is the warm-up
                elapsed = time.perf_counter() - begin
                throughputs.append(samples / elapsed)
                cpu += tree_cpu_seconds() - cpu_before
                wall += elapsed
        memory = tree_pss_mib()
    finally:
        close()
    return {"loader": candidate.name, "throughputs": throughputs, "gaps": gaps,
            "first_batch_s": [first_batch], "cpu_s": cpu, "wall_s": wall,
            "tree_pss_mib": [memory], "pss_growth_mib": [memory - baseline]}


def summarize(runs: list[dict]) -> dict:
    """Pool the rounds of one loader: medians of epochs and of per-round figures."""
    p10, p50, p90 = percentiles([g for r in runs for g in r["gaps"]])
    return {
        "loader": runs[0]["loader"],
        "samples_per_s": median([t for r in runs for t in r["throughputs"]]),
        "first_batch_s": median([r["first_batch_s"][0] for r in runs]),
        "gap_ms": [p10 * 1e3, p50 * 1e3, p90 * 1e3],
        "gap_ratio_p90_p50": p90 / p50 if p50 > 0 else float("nan"),
        "cpu_percent": 100 * sum(r["cpu_s"] for r in runs) / sum(r["wall_s"] for r in runs),
        "tree_pss_mib": median([r["tree_pss_mib"][0] for r in runs]),
        "pss_growth_mib": median([r["pss_growth_mib"][0] for r in runs]),
    }


def candidates(data, source, transform, rng_transform, start_methods,
               recipe_source=None) -> list[Candidate]:
    extra = [
        stoker_candidate(f"stoker workers={WORKERS}, start_method={method}", source,
                         rng_transform, WORKERS, start_method=method)
        for method in start_methods
    ]
    if recipe_source is not None:
        # The same job on stoker.augment's OpenCV recipe, uint8 in and out.
        from stoker.augment import kanji_distort

        extra += [
            stoker_candidate("inline, stoker.augment.kanji_distort", recipe_source,
                             kanji_distort(), 0),
            stoker_candidate(f"stoker workers={WORKERS}, stoker.augment.kanji_distort",
                             recipe_source, kanji_distort(), WORKERS),
        ]
    return [
        stoker_candidate("inline (one process)", source, rng_transform, 0),
        stoker_candidate(f"stoker workers={WORKERS}", source, rng_transform, WORKERS),
        *extra,
        keras_candidate("Keras PyDataset, 2 threads", data, transform, 2, False),
        keras_candidate("Keras PyDataset, 8 threads", data, transform, 8, False),
        keras_candidate("Keras PyDataset, use_multiprocessing, 2", data, transform, 2, True),
        question_candidate("question's RawArray + Pool(2)", data),
        torch_candidate("PyTorch DataLoader, num_workers=2", data, transform),
        tfdata_candidate("tf.data py_function + AUTOTUNE", data, transform),
    ]


def table(rows: list[dict], reference: str) -> str:
    base = next(r["samples_per_s"] for r in rows if r["loader"] == reference)
    lines = [
        "| loader | samples/s (median) | vs inline | first batch (s) | gap p10 / p50 / p90 (ms) "
        "| p90/p50 | tree CPU | tree PSS (MiB) | growth (MiB) |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        p10, p50, p90 = r["gap_ms"]
        lines.append(
            f"| {r['loader']} | {r['samples_per_s']:.0f} | {r['samples_per_s'] / base:.2f}x "
            f"| {r['first_batch_s']:.2f} | {p10:.1f} / {p50:.1f} / {p90:.1f} "
            f"| {r['gap_ratio_p90_p50']:.2f} | {r['cpu_percent']:.0f} % "
            f"| {r['tree_pss_mib']:.0f} "
            f"| {r['pss_growth_mib']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=8192)
    parser.add_argument("--rounds", type=int, default=2,
                        help="fresh loaders per candidate; odd rounds run the list backwards")
    parser.add_argument("--epochs", type=int, default=3, help="measured epochs after warm-up")
    parser.add_argument("--cheap-epochs", type=int, default=5)
    parser.add_argument("--cheap-samples", type=int, default=32768,
                        help="samples per epoch with the cheap transform (epochs must last "
                        "long enough that filling the pipeline does not dominate)")
    parser.add_argument("--only", choices=["question", "cheap"], default=None)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()

    import tensorflow as tf  # noqa: F401  (the consumer runs TensorFlow, as in training)

    random.seed(0)
    np.random.seed(0)
    x = glyph_like_images(args.samples)
    y = np.random.default_rng(0).integers(0, 3000, args.samples).astype(np.int32)
    x_uint8 = (x.astype(np.float32) * 255).astype(np.uint8)
    results = {}
    repeat = max(1, args.cheap_samples // args.samples)
    x_cheap, y_cheap = np.concatenate([x_uint8] * repeat), np.concatenate([y] * repeat)
    for name, images, labels, transform, rng_transform, epochs, methods in (
        ("question", x, y, question_transform, question_transform, args.epochs,
         ("fork", "spawn")),
        ("cheap", x_cheap, y_cheap, cheap_transform, cheap_transform_rng, args.cheap_epochs, ()),
    ):
        if args.only and args.only != name:
            continue
        source = stoker.from_arrays(images, labels)
        recipe_source = stoker.from_arrays(x_uint8, labels) if name == "question" else None
        listed = candidates((images, labels), source, transform, rng_transform, methods,
                            recipe_source)
        runs: dict[str, list[dict]] = {c.name: [] for c in listed}
        for round_ in range(args.rounds):
            # Every other round runs the list backwards, so no loader always goes first.
            for candidate in listed if round_ % 2 == 0 else listed[::-1]:
                run = measure(candidate, epochs)
                runs[candidate.name].append(run)
                print(f"[{name} {round_ + 1}/{args.rounds}] {candidate.name:<42} "
                      f"{median(run['throughputs']):8.0f} samples/s  "
                      f"cpu {100 * run['cpu_s'] / run['wall_s']:.0f} %", flush=True)
        rows = [summarize(runs[c.name]) for c in listed]
        results[name] = rows
        source.release()
        if recipe_source is not None:
            recipe_source.release()
        print(table(rows, "inline (one process)"))
    if args.no_write:
        return
    write_results("loaders", {"samples": args.samples, "batch": BATCH, "results": results})
    text = [
        "## Loaders side by side (`benchmarks/bench_loaders.py`)",
        "",
        f"Machine: {machine_line()}. Batch {BATCH}, {args.samples} samples per epoch "
        f"({len(x_cheap)} with the cheap transform), "
        f"{WORKERS} workers wherever a loader has workers, TensorFlow loaded in the consumer. "
        f"Each loader ran {args.rounds} times, fresh, the list in alternating order; "
        "samples/s is the median over the measured epochs of all rounds (each round after "
        "one warm-up epoch); tree CPU is the CPU time of the whole process tree over the "
        "measured wall time (200 % = both cores busy); "
        "'first batch' includes starting the workers; gaps are the intervals between "
        "consecutive batches; PSS is the proportional memory of the whole process tree "
        "(growth: over the consumer before the loader existed).",
    ]
    for name, title in (("question", "The question's transform (PIL `distort_sample`, "
                         "with its float16 -> uint8 -> PIL -> numpy conversions)"),
                        ("cheap", "A cheap transform (flip + noise on uint8 images, "
                         "a few µs per image)")):
        if name in results:
            text += ["", f"### {title}", "", table(results[name], "inline (one process)")]
    write_section("loaders", "\n".join(text))


if __name__ == "__main__":
    main()
