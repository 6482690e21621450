"""Epoch boundaries: how fast each epoch of a loader runs, the first one included, with
the next epoch's first batches made while an epoch drains (stoker now) and without
(every epoch starting cold, as before), side by side in one run.

A fresh loader per round (its workers started inside the first epoch's time), epochs
taken back to back as a training loop does; each figure is the median over rounds, the
variants alternating.

    python benchmarks/bench_epochs.py [--rounds 5] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np

import stoker
from bench_loaders import cheap_transform_rng
from common import glyph_like_images, machine_line, median, write_results, write_section
from question import question_transform

BATCH = 256
WORKERS = 2


def cold(loader: stoker.Loader) -> None:
    """The loader as before: its executor is not told the run that follows."""
    executor = loader._get_executor()
    run = executor.run

    def without_following(epoch: int, key: Any, batches: Any, following: Any = None,
                          first_batch: int = 0):
        return run(epoch, key, batches, None, first_batch)

    executor.run = without_following


def epoch_rates(source: Any, transform: Any, epochs: int, warm: bool) -> dict:
    """Samples/s of each epoch of one fresh loader (the first one with its start-up), the
    waits for the first batch of each later epoch and the waits between batches within
    an epoch, in seconds."""
    with stoker.Loader(source, batch_size=BATCH, transform=transform, workers=WORKERS,
                       seed=0) as loader:
        if not warm:
            cold(loader)
        rates, boundary, within = [], [], []
        for epoch in range(epochs):
            began, samples = time.perf_counter(), 0
            previous = began
            for number, batch in enumerate(loader):
                now = time.perf_counter()
                if epoch and number == 0:
                    boundary.append(now - previous)
                elif number:
                    within.append(now - previous)
                previous = now
                samples += len(batch[1])
            rates.append(samples / (time.perf_counter() - began))
    return {"rates": rates, "boundary": boundary, "within": within}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=8192)
    parser.add_argument("--cheap-samples", type=int, default=32768)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    import tensorflow as tf  # noqa: F401  the consumer runs TensorFlow, as in training

    x = glyph_like_images(args.samples)
    y = np.random.default_rng(0).integers(0, 3000, args.samples).astype(np.int32)
    cheap_x = np.concatenate([(x.astype(np.float32) * 255).astype(np.uint8)]
                             * max(1, args.cheap_samples // args.samples))
    cheap_y = np.resize(y, len(cheap_x))
    workloads = [("the question's distort_sample (PIL)", stoker.from_arrays(x, y),
                  question_transform),
                 ("cheap (flip + noise)", stoker.from_arrays(cheap_x, cheap_y),
                  cheap_transform_rng)]
    lines = [f"Machine: {machine_line()}. {WORKERS} workers, batch {BATCH}; "
             f"{args.samples} samples an epoch with the question's transform, "
             f"{len(cheap_x)} with the cheap one. A fresh loader per round ({args.rounds} "
             f"rounds, the variants alternating), {args.epochs} epochs back to back; "
             "samples/s per epoch, medians over rounds. Epoch 0 includes starting the "
             "workers.", "",
             "| transform | epochs started | epoch 0 | epoch 1 | later epochs (median) | "
             "epoch 0 vs later | wait for an epoch's first batch | wait between batches |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    results: dict[str, Any] = {}
    for name, source, transform in workloads:
        runs: dict[bool, list[dict]] = {True: [], False: []}
        epoch_rates(source, transform, 2, True)  # warm-up: forkserver, imports
        for round_ in range(args.rounds):
            for warm in ((True, False) if round_ % 2 == 0 else (False, True)):
                runs[warm].append(epoch_rates(source, transform, args.epochs, warm))
        results[name] = {}
        for warm in (False, True):
            per_epoch = [median([r["rates"][e] for r in runs[warm]])
                         for e in range(args.epochs)]
            later = median([rate for r in runs[warm] for rate in r["rates"][1:]])
            boundary = median([g for r in runs[warm] for g in r["boundary"]])
            within = median([g for r in runs[warm] for g in r["within"]])
            results[name]["warm" if warm else "cold"] = {
                "per_epoch": per_epoch, "later": later, "boundary_s": boundary,
                "within_s": within}
            label = ("warm: the next epoch's first batches made while one drains" if warm
                     else "cold: nothing dispatched across a boundary (before)")
            lines.append(f"| {name} | {label} | {per_epoch[0]:.0f} | {per_epoch[1]:.0f} | "
                         f"{later:.0f} | {per_epoch[0] / later:.2f}x | "
                         f"{boundary * 1e3:.1f} ms | {within * 1e3:.1f} ms |")
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_results("epochs", results)
        write_section("epochs", "## Epoch boundaries (`benchmarks/bench_epochs.py`)\n\n"
                      + text)


if __name__ == "__main__":
    main()
