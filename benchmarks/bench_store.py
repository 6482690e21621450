"""Data larger than a worker's share of RAM (issue #4): a loader reading a 4 GiB store with
2 workers, against the same data in shared memory, side by side in one process.

Reports per source: samples/s (median of the measured epochs, page cache warm), the
first epoch with the store's pages evicted from the page cache (posix_fadvise
DONTNEED, no root needed), and the peak PSS of the process tree while iterating,
against the data's size. Each batch is checked (labels) so nothing is optimised away.

    python benchmarks/bench_store.py [--gib 4] [--epochs 2] [--keep] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np

import stoker
from common import machine_line, median, tree_pss_mib, write_results, write_section
from stoker import store

IMAGE = (64, 64, 1)
BATCH = 256
WORKERS = 2


def flip(sample, rng):
    """A cheap transform (a flip): the cost of reading and moving samples dominates."""
    image, label = sample
    return (image[:, ::-1] if rng.random() < 0.5 else image), label


def make_store(path: Path, samples: int) -> None:
    """Glyph-like content: the built-in kanji, shifted so that no two samples repeat."""
    from stoker.datasets import glyphs

    kanji = glyphs.load()
    base = np.asarray(kanji.train.arrays[0])
    chunk = 8192
    rng = np.random.default_rng(0)
    with store.Writer(path) as writer:
        for start in range(0, samples, chunk):
            n = min(chunk, samples - start)
            rows = rng.integers(0, len(base), n)
            images = np.roll(base[rows], int(rng.integers(-4, 5)), axis=2)
            writer.append((images, (start + np.arange(n)).astype(np.int64)))


def evict(path: Path) -> None:
    for file in path.glob("*.npy"):
        fd = os.open(file, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


class PeakPss:
    """Samples the tree's PSS in a thread; ``peak`` is the largest value seen."""

    def __init__(self, interval: float = 0.25) -> None:
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)

    def _run(self, interval: float) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_pss_mib())
            self._stop.wait(interval)

    def __enter__(self) -> PeakPss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _rss_anon_mib() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def save_subset(path: str, out: str, variant: str) -> dict:
    """In a fresh process: save 90 % of the store (a shuffled split), as ``save`` does now
    (a chunk of rows at a time) or by materializing the split first (``split.arrays``,
    what ``save`` did before); peak private (anonymous) memory and the time."""
    source = store.open(path)
    train, _ = source.split(0.9, seed=0)
    start_mib, peak = _rss_anon_mib(), [0.0]
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], _rss_anon_mib())

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    started = time.perf_counter()
    store.save(out, train if variant == "chunked" else train.arrays)
    seconds = time.perf_counter() - started
    done.set()
    watcher.join()
    return {"seconds": seconds, "peak_private_mib": max(peak[0], _rss_anon_mib()) - start_mib}


def run_epochs(source, epochs: int, samples: int, before_first=None) -> dict:
    rates = []
    with stoker.Loader(source, batch_size=BATCH, transform=flip, workers=WORKERS) as loader, \
            PeakPss() as memory:
        for epoch in range(epochs + 1):
            if epoch == 0 and before_first is not None:
                before_first()
            start, seen, total = time.perf_counter(), 0, 0
            for _, labels in loader:
                seen += len(labels)
                total += int(labels.sum())
            rates.append(seen / (time.perf_counter() - start))
            assert seen == samples and total == samples * (samples - 1) // 2, "lost samples"
    return {"first_epoch": rates[0], "samples_per_s": median(rates[1:]),
            "peak_pss_mib": memory.peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=4.0, help="store size")
    parser.add_argument("--epochs", type=int, default=2, help="measured epochs (warm)")
    parser.add_argument("--dir", type=Path, default=None, help="where the store goes")
    parser.add_argument("--keep", action="store_true", help="keep the store afterwards")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--child-save", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_save:
        print(json.dumps(save_subset(*args.child_save)))
        return

    row = int(np.prod(IMAGE)) + 8
    samples = int(args.gib * 2**30 // row)
    folder = Path(tempfile.mkdtemp(prefix="stoker-bench-", dir=args.dir))
    path = folder / "big.stoker"
    try:
        started = time.perf_counter()
        make_store(path, samples)
        write_s = time.perf_counter() - started
        size_mib = sum(f.stat().st_size for f in path.iterdir()) / 2**20
        started = time.perf_counter()
        store.verify(path)
        verify_s = time.perf_counter() - started
        print(f"store: {samples} samples, {size_mib:.0f} MiB, written in {write_s:.0f} s, "
              f"verified in {verify_s:.0f} s", flush=True)

        baseline = tree_pss_mib()
        on_disk = store.open(path)
        from_store = run_epochs(on_disk, args.epochs, samples, lambda: evict(path))
        print("store:", from_store, flush=True)
        shared = stoker.from_arrays(*on_disk.arrays)  # the same bytes, in shared memory
        del on_disk
        evict(path)
        try:
            from_shm = run_epochs(shared, args.epochs, samples)
        finally:
            shared.release()
        print("shared memory:", from_shm, flush=True)
        subset_mib = 0.9 * size_mib
        saves = {}
        for variant in ("chunked", "materialized"):
            evict(path)
            out = folder / f"subset-{variant}.stoker"
            done = subprocess.run(
                [sys.executable, __file__, "--child-save", str(path), str(out), variant],
                check=True, capture_output=True, text=True)
            saves[variant] = json.loads(done.stdout.strip().splitlines()[-1])
            shutil.rmtree(out, ignore_errors=True)
            print(f"save a split ({variant}):", saves[variant], flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)

    ratio = from_store["samples_per_s"] / from_shm["samples_per_s"]
    lines = [
        "## A store larger than RAM's fair share (`benchmarks/bench_store.py`)",
        "",
        f"Machine: {machine_line()}. A {size_mib / 1024:.2f} GiB store ({samples} samples "
        f"of 64x64x1 uint8 + an int64 label), batch {BATCH}, {WORKERS} workers, a flip as "
        "the transform (reading and moving samples is the cost). Warm: median of "
        f"{args.epochs} epochs after the first; cold: the first epoch after evicting the "
        "store's pages from the page cache. Peak PSS: the whole process tree while "
        f"iterating (the consumer alone: {baseline:.0f} MiB). Writing the store took "
        f"{write_s:.0f} s (with its SHA-256), verifying it {verify_s:.0f} s.",
        "",
        "| source | samples/s warm | first epoch, cold (samples/s) | peak tree PSS (MiB) "
        "| data (MiB) |",
        "|---|---:|---:|---:|---:|",
        f"| store, memory-mapped | {from_store['samples_per_s']:.0f} "
        f"| {from_store['first_epoch']:.0f} | {from_store['peak_pss_mib']:.0f} "
        f"| {size_mib:.0f} |",
        f"| shared memory (`from_arrays`) | {from_shm['samples_per_s']:.0f} "
        f"| {from_shm['first_epoch']:.0f} | {from_shm['peak_pss_mib']:.0f} "
        f"| {size_mib:.0f} |",
        "",
        f"Store vs shared memory, warm: **{ratio:.2f}x** (target >= 0.9x). Peak PSS with "
        f"the store: {from_store['peak_pss_mib'] - size_mib:+.0f} MiB against the data's "
        "size (target: within it plus a small constant; PSS counts the mapped pages each "
        "process has touched, shared pages split between the processes).",
        "",
        f"Saving a 90 % split of the store ({subset_mib / 1024:.2f} GiB, shuffled order) to "
        "a new store, each in a fresh process, the page cache evicted first; peak private "
        "(anonymous) memory above the start, sampled every 20 ms:",
        "",
        "| how | peak private memory (MiB) | time (s) |",
        "|---|---:|---:|",
        f"| `store.save(path, split)`: a chunk of rows at a time (now) "
        f"| {saves['chunked']['peak_private_mib']:.0f} | {saves['chunked']['seconds']:.0f} |",
        f"| `store.save(path, split.arrays)`: the split gathered first (what `save` did) "
        f"| {saves['materialized']['peak_private_mib']:.0f} "
        f"| {saves['materialized']['seconds']:.0f} |",
    ]
    text = "\n".join(lines)
    print(text)
    if args.no_write:
        return
    write_results("store", {"samples": samples, "size_mib": size_mib, "write_s": write_s,
                            "verify_s": verify_s, "store": from_store,
                            "shared_memory": from_shm, "baseline_pss_mib": baseline,
                            "save_subset": saves})
    write_section("store", text)


if __name__ == "__main__":
    main()
