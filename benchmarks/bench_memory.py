"""What a large array held by the transform costs (issue #12): a transform capturing a
400 MiB lookup table, with 2 workers, against the same loader with the table pickled
into every worker (the behaviour before; arrays from 1 MiB up now travel through shared
memory), measured side by side, each in a fresh process.

Reports the extra PSS of the process tree (consumer, forkserver, workers) once the
workers have read the whole table, against the table's size, and that of the workers
alone. PSS splits shared pages between the processes that map them, so one shared copy
counts once however many workers read it. Median of ``--repeats`` runs.

    python benchmarks/bench_memory.py [--mib 400] [--repeats 3] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np

from common import machine_line, median, tree_pss_mib, write_results, write_section

WORKERS = 2
VARIANTS = {
    "shared": "shared memory, copy-on-write in each worker (stoker now)",
    "pickled": "pickled into every worker (stoker before, and any loader that pickles)",
}


class WholeTable:
    """Reads every byte of its table once per process, then adds a number from it."""

    def __init__(self, table: np.ndarray) -> None:
        self.table = table
        self.total: float | None = None

    def __call__(self, sample, rng):
        if self.total is None:
            self.total = float(self.table.sum(dtype=np.float64))
        return sample + np.float32(self.total % 3)


def measure(variant: str, mib: int) -> dict:
    import stoker
    from stoker.executors import _payload

    if variant == "pickled":
        _payload.SHARE_MIN_BYTES = 1 << 62
    table = np.ones(mib * 2**20 // 4, np.float32)
    data = stoker.from_arrays(np.zeros((WORKERS * 64, 16, 16), np.float32))
    before = tree_pss_mib()
    with stoker.Loader(data, batch_size=32, transform=WholeTable(table), workers=WORKERS,
                       shuffle=False) as loader:
        for _ in loader:
            pass
        workers = sum(tree_pss_mib(pid) for pid in loader.worker_pids)
        after = tree_pss_mib()
    return {"tree_extra_mib": after - before, "workers_mib": workers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--child", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.mib)))
        return
    runs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    for _ in range(args.repeats):
        for name in VARIANTS:  # interleaved, each in a fresh process
            out = subprocess.run(
                [sys.executable, __file__, "--child", name, "--mib", str(args.mib)],
                check=True, capture_output=True, text=True,
            ).stdout
            runs[name].append(json.loads(out.strip().splitlines()[-1]))
    rows = []
    for name, label in VARIANTS.items():
        tree = median([r["tree_extra_mib"] for r in runs[name]])
        workers = median([r["workers_mib"] for r in runs[name]])
        rows.append(f"| {label} | {tree:.0f} MiB | {tree / args.mib:.2f}x | "
                    f"{workers:.0f} MiB |")
    text = "\n".join([
        f"## A {args.mib} MiB array held by the transform, {WORKERS} workers "
        "(`benchmarks/bench_memory.py`)",
        "",
        f"{machine_line()}. Extra PSS of the process tree once every worker has read the "
        f"whole table, against its size; the consumer's own copy (the user's array) is "
        f"not counted. Median of {args.repeats} runs, the two variants interleaved.",
        "",
        "| how the table reaches the workers | extra PSS, process tree | vs the table | "
        "PSS of the workers |",
        "|---|---|---|---|",
        *rows,
    ])
    print(text)
    if not args.no_write:
        write_results("memory", {"mib": args.mib, "runs": runs})
        write_section("memory", text)


if __name__ == "__main__":
    main()
