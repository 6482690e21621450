"""workers="auto" against every fixed worker count, side by side in one run.

Two transforms (the question's PIL ``distort_sample``, and a cheap flip + noise) and two
consumers: a plain loop that takes batches at once (the loader is the bottleneck), and
a "model" step of fixed CPU work on one core (single-threaded matrix products, about as
long as the data takes: the workers and the model share the cores). Each candidate is
a fresh loader per round, the candidates in alternating order; a round takes
``--epochs`` epochs back to back, and samples/s is measured over the epochs after the
first ``--settle`` (the tuner's start included in those), the median over rounds. The
tuner's final pool size and its decisions are reported too.

    python benchmarks/bench_autotune.py [--rounds 3] [--epochs 8] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ["OPENBLAS_NUM_THREADS"] = "1"  # the model step runs on one core, as a fixed cost
os.environ["OMP_NUM_THREADS"] = "1"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np

import stoker
from bench_loaders import cheap_transform_rng
from common import glyph_like_images, machine_line, median, write_results, write_section
from question import question_transform

BATCH = 256


class ModelStep:
    """A fixed amount of CPU work per batch: ``products`` 128x128 matrix products."""

    def __init__(self, products: int) -> None:
        self.products = products
        rng = np.random.default_rng(0)
        self.a = rng.random((128, 128), dtype=np.float32)
        self.w = rng.random((128, 128), dtype=np.float32) / 128

    def __call__(self, batch: Any) -> None:
        a = self.a
        for _ in range(self.products):
            a = a @ self.w
        self.a = a / (np.abs(a).max() + 1)


def calibrate(seconds: float) -> int:
    """Products that take ``seconds`` on this machine, alone."""
    step = ModelStep(64)
    step(None)
    began = time.perf_counter()
    for _ in range(10):
        step(None)
    per_product = (time.perf_counter() - began) / (10 * 64)
    return max(1, round(seconds / per_product))


def one_round(source: Any, transform: Any, workers: Any, epochs: int, settle: int,
              step: ModelStep | None) -> dict:
    with stoker.Loader(source, batch_size=BATCH, transform=transform, workers=workers,
                       seed=0) as loader:
        began = samples = None
        for epoch in range(epochs):
            if epoch == settle:
                began, samples = time.perf_counter(), 0
            for batch in loader:
                if step is not None:
                    step(batch)
                if samples is not None:
                    samples += len(batch[1])
        rate = samples / (time.perf_counter() - began)
        stats = loader.stats()
    return {"rate": rate, "workers": stats.workers,
            "decisions": [str(d) for d in stats.tuning]}


def rounds(source: Any, transform: Any, candidates: list[Any], args: argparse.Namespace,
           step: ModelStep | None) -> dict[Any, list[dict]]:
    """``args.rounds`` rounds of every candidate, in alternating order."""
    runs: dict[Any, list[dict]] = {c: [] for c in candidates}
    for round_ in range(args.rounds):
        for candidate in candidates if round_ % 2 == 0 else candidates[::-1]:
            runs[candidate].append(one_round(source, transform, candidate, args.epochs,
                                             args.settle, step))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=8192)
    parser.add_argument("--cheap-samples", type=int, default=32768)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--settle", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()

    cores = stoker._system.usable_cpu_count()
    fixed = list(range(1, cores + 1))
    x = glyph_like_images(args.samples)
    y = np.random.default_rng(0).integers(0, 3000, args.samples).astype(np.int32)
    cheap_x = np.concatenate([(x.astype(np.float32) * 255).astype(np.uint8)]
                             * max(1, args.cheap_samples // args.samples))
    cheap_y = np.resize(y, len(cheap_x))
    workloads = [("the question's distort_sample (PIL)", stoker.from_arrays(x, y),
                  question_transform),
                 ("cheap (flip + noise)", stoker.from_arrays(cheap_x, cheap_y),
                  cheap_transform_rng)]
    candidates: list[Any] = [*fixed, "auto"]
    lines = [
        f"Machine: {machine_line()}. Batch {BATCH}; {args.samples} samples an epoch with "
        f"the question's transform, {len(cheap_x)} with the cheap one. A fresh loader per "
        f"candidate and round ({args.rounds} rounds, the candidates alternating), "
        f"{args.epochs} epochs back to back; samples/s over epochs {args.settle}-"
        f"{args.epochs - 1} (what the tuner did before is its start-up), medians over "
        "rounds. 'model step': fixed CPU work on one core per batch (single-threaded "
        "matrix products), calibrated to the time the data takes with the best fixed "
        "setting; 'plain loop': batches taken at once.", "",
        "| transform | consumer | " + " | ".join(f"workers={n}" for n in fixed)
        + " | workers=\"auto\" | auto vs best fixed | auto's final pool (rounds) |",
        "|---|---|" + "---:|" * (len(fixed) + 3)]
    results: dict[str, Any] = {}
    for name, source, transform in workloads:
        one_round(source, transform, cores, 2, 1, None)  # warm-up: forkserver, imports
        plain = rounds(source, transform, candidates, args, None)
        # the model step: as long as a batch takes with the best fixed setting, alone
        best_rate = max(median([r["rate"] for r in plain[n]]) for n in fixed)
        step = ModelStep(calibrate(BATCH / best_rate))
        model = rounds(source, transform, candidates, args, step)
        results[name] = {}
        for consumer, runs in (("plain loop", plain),
                               (f"model step ({step.products} products)", model)):
            rates = {c: median([r["rate"] for r in runs[c]]) for c in candidates}
            best = max(rates[n] for n in fixed)
            pools = Counter(r["workers"] for r in runs["auto"])
            results[name][consumer] = {
                "rates": {str(c): rates[c] for c in candidates},
                "auto_vs_best": rates["auto"] / best,
                "auto_pools": dict(pools),
                "decisions": [r["decisions"] for r in runs["auto"]]}
            lines.append(
                f"| {name} | {consumer} | "
                + " | ".join(f"{rates[n]:.0f}" for n in fixed)
                + f" | {rates['auto']:.0f} | {rates['auto'] / best:.2f}x | "
                + ", ".join(f"{n} ({k})" for n, k in sorted(pools.items())) + " |")
            print(lines[-1], flush=True)
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_results("autotune", results)
        write_section("autotune", "## workers=\"auto\" (`benchmarks/bench_autotune.py`)\n\n"
                      + text)


if __name__ == "__main__":
    main()
