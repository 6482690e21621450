"""``stoker bench``: the question answered with numbers on the user's machine.

Throughput of an augmentation recipe on the built-in kanji, through stoker with 0..N
workers, and through PyTorch's DataLoader and Keras' PyDataset (threads) with the same
worker counts when they are installed; a table on the terminal and a PNG plot of
samples/s against workers, with the line of perfect linear scaling.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._extras import require
from .loader import Loader
from .sources import Subset

__all__ = ["BenchRow", "plot", "run", "table"]


@dataclass(frozen=True)
class BenchRow:
    loader: str
    workers: int
    samples_per_s: float


def _timed_epochs(make_epoch: Callable[[], Any], samples: int, epochs: int = 2) -> float:
    """samples/s of the last ``epochs - 1`` epochs (the first warms up)."""
    rates = []
    for _ in range(epochs):
        start, seen = time.perf_counter(), 0
        for batch in make_epoch():
            seen += len(batch[1])
        rates.append(seen / (time.perf_counter() - start))
        if seen != samples:
            raise RuntimeError(f"an epoch delivered {seen} samples, not {samples}")
    return float(np.median(rates[1:]))


def _stoker(source: Any, transform: Any, workers: int, batch_size: int) -> float:
    with Loader(source, batch_size=batch_size, transform=transform, workers=workers) as loader:
        return _timed_epochs(lambda: loader, len(source))


class _PerSampleRng:
    """The recipe with a generator per sample index, for loaders that have no keys."""

    def __init__(self, source: Any, transform: Any) -> None:
        self.source, self.transform = source, transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> Any:
        image, label = self.transform(self.source[index], np.random.default_rng(index))
        return np.ascontiguousarray(image), label


def _torch(source: Any, transform: Any, workers: int, batch_size: int) -> float | None:
    try:
        import torch.utils.data as tud
    except ImportError:
        return None
    dataset = _PerSampleRng(source, transform)

    class Wrapped(tud.Dataset):
        def __len__(self) -> int:
            return len(dataset)

        def __getitem__(self, index: int) -> Any:
            return dataset[index]

    loader = tud.DataLoader(Wrapped(), batch_size=batch_size, shuffle=True,
                            num_workers=workers, persistent_workers=workers > 0)
    try:
        return _timed_epochs(lambda: loader, len(source))
    finally:
        iterator = getattr(loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()


def _keras(source: Any, transform: Any, workers: int, batch_size: int) -> float | None:
    if workers == 0:
        return None  # the same as stoker inline
    try:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        import keras
        from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter
    except ImportError:
        return None
    dataset = _PerSampleRng(source, transform)
    order = np.random.default_rng(0).permutation(len(dataset))

    class Threads(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__(workers=workers, use_multiprocessing=False)

        def __len__(self) -> int:
            return -(-len(dataset) // batch_size)

        def __getitem__(self, index: int) -> Any:
            rows = [dataset[int(i)] for i in order[index * batch_size:(index + 1) * batch_size]]
            return np.stack([r[0] for r in rows]), np.asarray([r[1] for r in rows])

    adapter = PyDatasetAdapter(Threads(), shuffle=False)

    def epoch() -> Any:
        adapter.on_epoch_begin()
        try:
            yield from adapter.get_numpy_iterator()
        finally:
            adapter.on_epoch_end()

    try:
        return _timed_epochs(epoch, len(source))
    finally:
        if adapter.enqueuer is not None:
            adapter.enqueuer.stop()


def run(transform: Any, worker_counts: Sequence[int], *, samples: int = 16384,
        batch_size: int = 256, compare: bool = True, progress: bool = True
        ) -> list[BenchRow]:
    """Measure every loader at every worker count on the built-in kanji."""
    from .datasets import glyphs

    data = glyphs.load()
    source = Subset(data.train, np.arange(min(samples, len(data.train))))
    candidates: list[tuple[str, Callable[..., float | None]]] = [("stoker", _stoker)]
    if compare:
        candidates += [("PyTorch DataLoader", _torch), ("Keras PyDataset (threads)", _keras)]
    jobs = [(name, fn, w) for w in worker_counts for name, fn in candidates]
    rows = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc="stoker bench", unit=" runs")
    try:
        for name, fn, workers in jobs:
            rate = fn(source, transform, workers, batch_size)
            if rate is not None:
                rows.append(BenchRow(name, workers, rate))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return rows


def table(rows: Sequence[BenchRow]) -> str:
    """The rows as a text table, with speed-ups against stoker inline."""
    inline = next((r.samples_per_s for r in rows if r.loader == "stoker" and r.workers == 0),
                  None)
    lines = [f"{'loader':<28} {'workers':>7} {'samples/s':>11} {'vs stoker inline':>17}"]
    for r in rows:
        ratio = f"{r.samples_per_s / inline:.2f}x" if inline else "-"
        lines.append(f"{r.loader:<28} {r.workers:>7} {r.samples_per_s:>11.0f} {ratio:>17}")
    return "\n".join(lines)


def plot(rows: Sequence[BenchRow], path: str | os.PathLike, title: str) -> Path:
    """samples/s against workers per loader, with stoker's perfect-scaling line; written
    atomically as a PNG."""
    matplotlib = require("matplotlib", "the plot of samples/s", install="pip install matplotlib")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"the plot is a PNG; give a path ending in .png, not {path}")
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for name in dict.fromkeys(r.loader for r in rows):
        mine = sorted((r.workers, r.samples_per_s) for r in rows if r.loader == name)
        axis.plot([w for w, _ in mine], [v for _, v in mine], "o-", label=name)
    stoker_rows = {r.workers: r.samples_per_s for r in rows if r.loader == "stoker"}
    one = stoker_rows.get(0) or stoker_rows.get(1)
    if one:
        counts = sorted(stoker_rows)
        axis.plot(counts, [one * max(w, 1) for w in counts], "--", color="grey",
                  label="linear scaling (inline x workers)")
    axis.set_xlabel("workers (0: in the training process)")
    axis.set_ylabel("augmented samples/s")
    axis.set_title(title)
    axis.set_xticks(sorted({r.workers for r in rows}))
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    try:
        figure.savefig(tmp, dpi=100)
        os.replace(tmp, path)
    finally:
        plt.close(figure)
        tmp.unlink(missing_ok=True)
    return path
