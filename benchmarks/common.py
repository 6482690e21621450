"""Shared helpers for the benchmarks: data, timing statistics, memory, BENCHMARKS.md."""

from __future__ import annotations

import os
import platform
import re
import statistics
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"


def glyph_like_images(n: int, seed: int = 0, size: int = 64) -> np.ndarray:
    """``n`` float16 images in [0, 1], (n, size, size, 1): a few random thick strokes each,
    like the question's binarized kanji (ink bright on black)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size, 1), np.float16)
    for i in range(n):
        image = Image.new("L", (size, size))
        draw = ImageDraw.Draw(image)
        for _ in range(rng.integers(3, 9)):
            x0, y0, x1, y1 = rng.integers(8, size - 8, 4).tolist()
            draw.line((x0, y0, x1, y1), fill=255, width=int(rng.integers(2, 5)))
        out[i, :, :, 0] = np.asarray(image, np.float16) / 255
    return out


def percentiles(values: list[float], qs=(10, 50, 90)) -> list[float]:
    return [float(np.percentile(values, q)) for q in qs] if values else [float("nan")] * len(qs)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_pss_mib(pid: int | None = None) -> float:
    """Proportional set size of a process and all its descendants, in MiB."""
    root = psutil.Process(pid or os.getpid())
    pids = [root.pid] + [child.pid for child in root.children(recursive=True)]
    return sum(_pss_kib(p) for p in pids) / 1024


def machine_line() -> str:
    cpu = platform.processor() or platform.machine()
    return (
        f"{len(os.sched_getaffinity(0))} usable cores ({cpu}), "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM, Python {platform.python_version()}"
    )


def write_results(name: str, data: dict) -> None:
    """``benchmarks/results/<name>.json``: the raw numbers, with the machine they came from."""
    import json

    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps({"machine": machine_line(), **data}, indent=1))


def write_section(name: str, text: str) -> None:
    """Replace (or append) the section between ``<!-- name:begin -->`` and ``end`` markers."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{text.rstrip()}\n{end}"
    current = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    updated = pattern.sub(lambda _: block, current) if pattern.search(current) else (
        current.rstrip() + "\n\n" + block + "\n"
    )
    tmp = BENCHMARKS_MD.with_suffix(".md.tmp")
    tmp.write_text(updated)
    os.replace(tmp, BENCHMARKS_MD)
