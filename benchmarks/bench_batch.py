"""Batch transforms: MixUp in the workers (``batch_transform=``) against the same MixUp
run in the training process on each delivered batch (what one does without it), and
against no MixUp at all, side by side in one run.

The question's workload: 64x64x1 uint8 glyphs, ``kanji_distort`` per sample, batch 256,
2 workers, labels of the question's 3000 classes made one-hot by MixUp (256 x 3000
float32: 3 MiB of labels a batch, three times the images). Each figure is the median
over rounds of two epochs each (after a warm-up epoch), the variants alternating; the
training process's CPU per batch is its ``process_time`` over the epoch. One loader
at a time, a fresh one per variant and round, its first epoch left out.

    python benchmarks/bench_batch.py [--rounds 5] [--no-write]
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
from common import glyph_like_images, machine_line, median, write_results, write_section
from stoker.augment import MixUp, kanji_distort

BATCH = 256
WORKERS = 2
CLASSES = 3000


def one_epoch(loader: stoker.Loader, in_consumer: MixUp | None) -> tuple[float, float]:
    """(samples/s, training-process CPU seconds per batch) of the loader's next epoch."""
    began, cpu, samples, batches = time.perf_counter(), time.process_time(), 0, 0
    for number, batch in enumerate(loader):
        if in_consumer is not None:
            batch = in_consumer(batch, np.random.default_rng([loader.seed, number]))
        samples += len(batch[0])
        batches += 1
    elapsed = time.perf_counter() - began
    return samples / elapsed, (time.process_time() - cpu) / batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=8192)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()

    x = (glyph_like_images(args.samples).astype(np.float32) * 255).astype(np.uint8)
    y = np.random.default_rng(0).integers(0, CLASSES, args.samples).astype(np.int32)
    source = stoker.from_arrays(x, y)
    mixup = MixUp(0.2, num_classes=CLASSES)
    variants: list[tuple[str, Any, Any]] = [
        ("no MixUp", None, None),
        ("MixUp in the workers (batch_transform=)", mixup, None),
        ("MixUp in the training process, on each batch", None, mixup),
    ]
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in variants}
    for round_ in range(args.rounds):
        order = list(range(len(variants)))
        if round_ % 2:
            order.reverse()
        for i in order:  # one loader at a time: no other loader's workers compete
            name, batch_transform, in_consumer = variants[i]
            with stoker.Loader(source, batch_size=BATCH, transform=kanji_distort(), seed=0,
                               workers=WORKERS, batch_transform=batch_transform) as loader:
                one_epoch(loader, in_consumer)  # warm-up: workers started, caches warm
                runs[name].extend(one_epoch(loader, in_consumer) for _ in range(2))
    base = median([rate for rate, _ in runs[variants[0][0]]])
    lines = [f"Machine: {machine_line()}. {WORKERS} workers, batch {BATCH} of 64x64x1 uint8 "
             f"with `kanji_distort`, {args.samples} samples an epoch, labels of {CLASSES} "
             f"classes made one-hot by `MixUp(0.2, num_classes={CLASSES})`; medians over "
             f"{args.rounds} rounds of 2 epochs each after a warm-up one, a fresh loader "
             "per variant and round, the variants alternating.", "",
             "| MixUp | samples/s | vs no MixUp | training-process CPU per batch |",
             "|---|---:|---:|---:|"]
    results: dict[str, Any] = {}
    for name, _, _ in variants:
        rate = median([r for r, _ in runs[name]])
        cpu = median([c for _, c in runs[name]])
        results[name] = {"samples_per_s": rate, "consumer_cpu_s_per_batch": cpu}
        lines.append(f"| {name} | {rate:.0f} | {rate / base:.2f}x | {cpu * 1e3:.2f} ms |")
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_results("batch", results)
        write_section("batch", "## Batch transforms (`benchmarks/bench_batch.py`)\n\n" + text)


if __name__ == "__main__":
    main()
