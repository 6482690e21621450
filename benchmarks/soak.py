"""Soak (issue #6): many epochs while a random worker is killed every few seconds.

Every epoch is checked against an undisturbed inline reference (bit-identical batches,
so every sample exactly once) while a thread sends SIGKILL, SIGSEGV or SIGSTOP to a
random worker every 1-3 s; the loader replaces dead workers (``max_worker_restarts``)
and treats stopped ones as hung (``timeout=``). At the end: processes, file
descriptors and /dev/shm segments are counted against the start.

    python benchmarks/soak.py [--epochs 50] [--samples 20000] [--no-write]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np
import psutil

import stoker
from common import machine_line, write_results, write_section

SIGNALS = (signal.SIGKILL, signal.SIGSEGV, signal.SIGSTOP)


def noisy(sample, rng):
    """About 50 µs of numpy per sample, drawing from the sample's generator."""
    image, label = sample
    noise = rng.integers(0, 8, image.shape, dtype=np.uint8)
    for _ in range(10):
        noise = np.bitwise_xor(noise, rng.integers(0, 8, image.shape, dtype=np.uint8))
    return image ^ noise, label


def digest(loader) -> tuple[str, np.ndarray]:
    h = hashlib.sha256()
    labels = []
    for images, batch_labels in loader:
        h.update(images.tobytes())
        h.update(batch_labels.tobytes())
        labels.append(batch_labels)
    return h.hexdigest(), np.concatenate(labels)


def descendants() -> set[int]:
    found = set()
    for child in psutil.Process().children(recursive=True):
        try:
            if not any(helper in " ".join(child.cmdline())
                       for helper in ("forkserver", "resource_tracker")):
                found.add(child.pid)
        except psutil.NoSuchProcess:
            pass
    return found


def shm_segments() -> set[str]:
    return {p.name for p in Path("/dev/shm").glob(f"stoker_{os.getpid()}_*")}


class Killer(threading.Thread):
    def __init__(self, loader, seed: int) -> None:
        super().__init__(daemon=True)
        self.loader, self.rng = loader, random.Random(seed)
        self.sent: dict[str, int] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.rng.uniform(1.0, 3.0)):
            pids = self.loader.worker_pids
            if not pids:
                continue
            sig = self.rng.choice(SIGNALS)
            try:
                os.kill(self.rng.choice(pids), sig)
            except ProcessLookupError:
                continue
            self.sent[sig.name] = self.sent.get(sig.name, 0) + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (args.samples, 16, 16), dtype=np.uint8)
    y = np.arange(args.samples, dtype=np.int64)
    source = stoker.from_arrays(x, y)
    fds_before, procs_before = psutil.Process().num_fds(), descendants()
    shm_before = shm_segments()
    reference = stoker.Loader(source, batch_size=256, transform=noisy, workers=0, seed=7)
    loader = stoker.Loader(source, batch_size=256, transform=noisy, workers=2, seed=7,
                           max_worker_restarts=10**6, timeout=5)
    killer = Killer(loader, seed=1)
    identical = exactly_once = 0
    started = time.perf_counter()
    killer.start()
    try:
        for epoch in range(args.epochs):
            expected, _ = digest(reference)
            got, labels = digest(loader)
            identical += got == expected
            exactly_once += np.array_equal(np.sort(labels), y)
            print(f"epoch {epoch + 1}: identical={got == expected} "
                  f"crashes so far={len(loader.crashes)}", flush=True)
    finally:
        killer.stop.set()
        killer.join()
        crashes = loader.crashes
        loader.close()
        reference.close()
        source.release()
    seconds = time.perf_counter() - started
    time.sleep(1.0)
    leaks = {
        "processes": len(descendants() - procs_before),
        "file descriptors": psutil.Process().num_fds() - fds_before,
        "/dev/shm segments": len(shm_segments() - shm_before),
    }
    result = {"epochs": args.epochs, "identical_epochs": identical,
              "exactly_once_epochs": exactly_once, "samples_checked": args.samples * args.epochs,
              "signals_sent": killer.sent, "crashes_recovered": len(crashes),
              "leaks": leaks, "seconds": seconds}
    print(json.dumps(result, indent=1))
    if args.no_write:
        return
    write_results("soak", result)
    sent = ", ".join(f"{n} {k}" for k, n in sorted(killer.sent.items()))
    write_section("soak", "\n".join([
        "## Soak: workers killed at random (`benchmarks/soak.py`)",
        "",
        f"Machine: {machine_line()}. {args.epochs} epochs of {args.samples} samples, 2 "
        "workers, `max_worker_restarts` unlimited, `timeout=5`; a thread sent a random "
        f"worker SIGKILL, SIGSEGV or SIGSTOP every 1-3 s ({sent}). Every epoch was compared "
        "with an undisturbed inline run of the same seed.",
        "",
        "| epochs | bit-identical to the reference | every sample exactly once | samples "
        "checked | crashes recovered | leaked processes / fds / /dev/shm segments | time |",
        "|---:|---:|---:|---:|---:|---|---:|",
        f"| {args.epochs} | {identical} | {exactly_once} | {args.samples * args.epochs} "
        f"| {len(crashes)} | {leaks['processes']} / {leaks['file descriptors']} / "
        f"{leaks['/dev/shm segments']} | {seconds:.0f} s |",
    ]))


if __name__ == "__main__":
    main()
