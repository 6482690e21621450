"""backend='ray' against backend='processes' on this machine (issue #7): what Ray costs
per batch, and what it delivers, with the same workers, data and transforms.

A local Ray cluster (``ray.init(num_cpus=WORKERS)``) is started once, as a user's
would be; its start-up is reported apart. Every loader runs ``--rounds`` times, fresh,
the list in alternating order; samples/s is the median over the measured epochs of all
rounds (each round after a warm-up epoch). Three transforms: none (moving batches is
all the work, so the difference per batch is the backend's overhead), the built-in
``kanji_distort`` (the fast recipe), and the question's PIL ``distort_sample``. Every
batch's labels are summed, so nothing is skipped.

Run it where Ray may listen (Ray binds the host's address unless loopback is all there
is; ``make bench`` runs it in a private network namespace):

    tests/in-private-network python benchmarks/bench_ray.py [--samples 16384] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np

import stoker
from common import glyph_like_images, machine_line, median, write_results, write_section
from question import question_transform

BATCH = 256
WORKERS = 2


def run(data, transform, samples: int, epochs: int, ship: bool = False, **options) -> dict:
    """One fresh loader: time to its first batch, then samples/s over ``epochs``
    measured epochs after a warm-up one. ``ship``: Ray actors return every batch
    through the object store, as before the landing slots (the "before" row, with
    ``prefetch=2 * WORKERS``: a task per batch, as before tasks of several)."""
    if ship:
        from stoker.executors.ray import RayExecutor

        lend, RayExecutor._lend = RayExecutor._lend, lambda self, actor, layouts: None
        try:
            return run(data, transform, samples, epochs, **options)
        finally:
            RayExecutor._lend = lend
    started = time.perf_counter()
    loader = stoker.Loader(data, batch_size=BATCH, transform=transform, seed=0, **options)
    rates, first_batch = [], None
    with loader:
        for epoch in range(epochs + 1):
            start, seen, total = time.perf_counter(), 0, 0
            for _, labels in loader:
                if first_batch is None:
                    first_batch = time.perf_counter() - started
                seen += len(labels)
                total += int(labels.sum())
            if epoch:
                rates.append(seen / (time.perf_counter() - start))
            assert seen == samples and total == samples * (samples - 1) // 2, "lost samples"
    return {"rates": rates, "first_batch_s": first_batch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=16384)
    parser.add_argument("--epochs", type=int, default=2, help="measured epochs per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    import ray

    from stoker.augment import kanji_distort

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    started = time.perf_counter()
    ray.init(address="local", num_cpus=WORKERS, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.path.dirname(os.path.abspath(__file__))}})
    ray_start_s = time.perf_counter() - started

    labels = np.arange(args.samples, dtype=np.int64)
    as_uint8 = (glyph_like_images(args.samples) * 255).astype(np.uint8)
    as_float16 = glyph_like_images(args.samples)
    workloads = {
        "none (moving batches only)": (stoker.from_arrays(as_uint8, labels), None),
        "stoker.augment.kanji_distort": (stoker.from_arrays(as_uint8, labels), kanji_distort()),
        "the question's distort_sample (PIL)": (stoker.from_arrays(as_float16, labels),
                                                question_transform),
    }
    backends = {"inline": {"workers": 0},
                f"processes, {WORKERS} workers": {"workers": WORKERS},
                f"ray, {WORKERS} actors": {"workers": WORKERS, "backend": "ray"},
                f"ray, {WORKERS} actors, a task per batch": {
                    "workers": WORKERS, "backend": "ray", "prefetch": 2 * WORKERS},
                f"ray, {WORKERS} actors, a task per batch through the object store (before)": {
                    "workers": WORKERS, "backend": "ray", "ship": True,
                    "prefetch": 2 * WORKERS}}
    results: dict[str, dict[str, dict]] = {}
    for workload, (data, transform) in workloads.items():
        runs: dict[str, list[dict]] = {name: [] for name in backends}
        for round_ in range(args.rounds):
            order = list(backends) if round_ % 2 == 0 else list(reversed(backends))
            for name in order:
                runs[name].append(run(data, transform, args.samples, args.epochs,
                                      **backends[name]))
        results[workload] = {
            name: {"samples_per_s": median([r for run_ in got for r in run_["rates"]]),
                   "first_batch_s": median([run_["first_batch_s"] for run_ in got])}
            for name, got in runs.items()
        }
        print(workload, results[workload], flush=True)
        data.release()
    ray.shutdown()

    processes, on_ray = f"processes, {WORKERS} workers", f"ray, {WORKERS} actors"
    single = f"{on_ray}, a task per batch"
    shipped = f"{on_ray}, a task per batch through the object store (before)"
    moving = results["none (moving batches only)"]

    def overhead(backend: str) -> float:
        return 1000 * BATCH * (1 / moving[backend]["samples_per_s"]
                               - 1 / moving[processes]["samples_per_s"])

    overhead_ms, single_ms, shipped_ms = overhead(on_ray), overhead(single), overhead(shipped)
    from stoker.executors.ray import ray_prefetch

    in_flight = ray_prefetch(WORKERS, BATCH * 64 * 64 + BATCH * 8)
    per_task = in_flight // (2 * WORKERS)
    batch_mib = BATCH * 64 * 64 / 2**20
    lines = [
        "## Ray against processes on one machine (`benchmarks/bench_ray.py`)",
        "",
        f"Machine: {machine_line()}. A local Ray cluster with {WORKERS} CPUs (started in "
        f"{ray_start_s:.1f} s, once); {args.samples} samples of 64x64x1 per epoch, batch "
        f"{BATCH} ({batch_mib:.2f} MiB of uint8), {WORKERS} workers or actors. Each loader ran "
        f"{args.rounds} times, fresh, in alternating order; samples/s is the median of the "
        f"measured epochs ({args.epochs} per round, after a warm-up epoch); first batch "
        "includes starting the workers or actors.",
        "",
        "| transform | backend | samples/s | vs processes | first batch (s) |",
        "|---|---|---:|---:|---:|",
    ]
    for workload, by_backend in results.items():
        for name, row in by_backend.items():
            ratio = row["samples_per_s"] / by_backend[processes]["samples_per_s"]
            lines.append(f"| {workload} | {name} | {row['samples_per_s']:.0f} | {ratio:.2f}x "
                         f"| {row['first_batch_s']:.2f} |")
    recipe = results["stoker.augment.kanji_distort"]
    question = results["the question's distort_sample (PIL)"]
    per_batch_ms = {w: 1000 * BATCH * WORKERS / r[processes]["samples_per_s"]
                    for w, r in (("recipe", recipe), ("question", question))}
    lines += [
        "",
        f"Ray's cost over processes, from the first workload: **{overhead_ms:.2f} ms per "
        f"batch** of {batch_mib:.2f} MiB; {single_ms:.2f} ms with a Ray task per batch, and "
        f"{shipped_ms:.2f} ms with a task per batch and every batch through the object store "
        "(the 'before' row). An actor on the consumer's node writes its batches into slots "
        "of the consumer's shared memory and replies with a few bytes, as a process worker "
        f"does, and each task makes {per_task} consecutive batches (the default prefetch, "
        f"{in_flight} batches in flight); what is left is Ray's task (submitting it, the "
        "reply, the actor's scheduling), shared by those batches. "
        f"A batch takes about {per_batch_ms['recipe']:.0f} ms of one core with "
        f"`kanji_distort` and {per_batch_ms['question']:.0f} ms with the question's "
        "transform, so the overhead is "
        f"{100 * overhead_ms / per_batch_ms['recipe'] * WORKERS:.0f} % and "
        f"{100 * overhead_ms / per_batch_ms['question'] * WORKERS:.1f} % of the time "
        f"between batches at {WORKERS} workers.",
        "",
        "When Ray pays off: on one machine processes do the same work for a little less "
        "(and start in a tenth of the time); Ray adds the cores of other nodes when the "
        "augmentation needs more than the training host has. Their batches come through "
        "the object store, about the 'before' row's cost per batch, which a batch that "
        "costs tens of milliseconds of CPU hides. The consumer receives at most about "
        f"{moving[on_ray]['samples_per_s']:.0f} samples/s of this size from Ray's actors on "
        "its own node here (the first row, where they do nothing but move batches).",
    ]
    text = "\n".join(lines)
    print(text)
    if args.no_write:
        return
    write_results("ray", {"ray_start_s": ray_start_s, "overhead_ms_per_batch": overhead_ms,
                          "batches_per_task": per_task,
                          "overhead_ms_per_batch_a_task_per_batch": single_ms,
                          "overhead_ms_per_batch_through_object_store": shipped_ms,
                          "results": results})
    write_section("ray", text)


if __name__ == "__main__":
    main()
