"""The photo pipeline: JPEG decode -> random-resized-crop 224 -> flip -> normalise, on real
photographs, through stoker, PyTorch's DataLoader and tf.data, side by side in one run.

The records: scikit-image's colour photographs (astronaut, chelsea, coffee, rocket, the
Hubble deep field, immunohistochemistry, retina), each record a random region of one
(at least half of each side) scaled to 250-500 pixels on its longer side and encoded at
JPEG quality 75, 85 or 95: a few thousand files of ImageNet's typical size.

* stoker: the records in an encoded store (`stoker.store.save` of a list of bytes, as
  `stoker ingest --encoded` writes), `Compose([Decode(), RandomResizedCrop(224),
  HorizontalFlip(), Normalize(...)])`, every core a worker.
* PyTorch `DataLoader(num_workers=cores)`: the records as a list of bytes in the
  Dataset, the same decode and the same crop, flip and normalise code per sample.
* tf.data: `tf.io.decode_jpeg` then TF's own `sample_distorted_bounding_box` crop,
  `tf.image.resize`, `random_flip_left_right` and normalisation, `map(...,
  num_parallel_calls=AUTOTUNE)`, `prefetch(AUTOTUNE)`; and the same with
  `tf.io.decode_and_crop_jpeg`, which decodes only the crop (TF's ImageNet recipe).

Each figure is the median over rounds (a fresh loader per candidate and round, the
candidates alternating, a warm-up epoch left out); CPU is that of the whole process
tree, PSS its memory. Before the loaders, the decoders themselves: µs per record on one
core for OpenCV's (what `Decode` uses), Pillow's and, when installed, simplejpeg's.

    python benchmarks/bench_photo.py [--records 2000] [--rounds 5] [--no-write]
    python benchmarks/bench_photo.py --report-only   # the section again, from the results
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cv2
import numpy as np

import stoker
from bench_loaders import Candidate, measure, summarize
from common import machine_line, median, write_results, write_section
from stoker.augment import Compose, Decode, HorizontalFlip, Normalize, RandomResizedCrop

BATCH = 64
SIZE = 224
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field",
          "immunohistochemistry", "retina")


def records(count: int, seed: int = 0) -> list[bytes]:
    """``count`` JPEG files cut from scikit-image's colour photographs (see above)."""
    from skimage import data

    photos = [cv2.cvtColor(getattr(data, name)(), cv2.COLOR_RGB2BGR) for name in PHOTOS]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        photo = photos[i % len(photos)]
        height, width = photo.shape[:2]
        h = int(rng.integers(height // 2, height + 1))
        w = int(rng.integers(width // 2, width + 1))
        top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        region = photo[top:top + h, left:left + w]
        longer = int(rng.integers(250, 501))
        scale = longer / max(h, w)
        region = cv2.resize(region, (max(1, round(w * scale)), max(1, round(h * scale))),
                            interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        quality = int(rng.choice([75, 85, 95]))
        out.append(cv2.imencode(".jpg", region, [cv2.IMWRITE_JPEG_QUALITY, quality])[1]
                   .tobytes())
    return out


def recipe() -> Compose:
    return Compose([Decode(), RandomResizedCrop(SIZE), HorizontalFlip(), Normalize(MEAN, STD)])


def decoders(jpegs: list[bytes], rounds: int = 5) -> dict[str, float]:
    """Median µs per record on one core, over the same records, for each decoder."""
    from PIL import Image

    sample = jpegs[:200]
    arrays = [np.frombuffer(j, np.uint8) for j in sample]
    candidates = {
        "OpenCV imdecode, RGB (stoker's Decode)": lambda: [Decode().decode(a) for a in arrays],
        "Pillow Image.open + convert('RGB')": lambda: [
            np.asarray(Image.open(io.BytesIO(j)).convert("RGB")) for j in sample],
    }
    try:
        import simplejpeg

        candidates["simplejpeg decode_jpeg (libjpeg-turbo)"] = lambda: [
            simplejpeg.decode_jpeg(j, colorspace="RGB") for j in sample]
    except ImportError:
        pass
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, run in candidates.items():
            began = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - began) / len(sample) * 1e6)
    return {name: median(values) for name, values in times.items()}


def collate_cost(jpegs: list[bytes], labels: np.ndarray, rounds: int = 5) -> float:
    """Median ms PyTorch's ``default_collate`` takes to stack one batch of samples."""
    import torch.utils.data as tud

    photos = Photos(jpegs, labels)
    batch = [photos[i] for i in range(BATCH)]
    times = []
    for _ in range(rounds):
        began = time.perf_counter()
        tud.default_collate(batch)
        times.append((time.perf_counter() - began) * 1e3)
    return median(times)


def stoker_candidate(source, workers: int) -> Candidate:
    def make():
        loader = stoker.Loader(source, batch_size=BATCH, transform=recipe(), workers=workers,
                               seed=0)
        return (lambda: loader), loader.close, None
    return Candidate(f"stoker, encoded store, workers={workers}", make)


def one_opencv_thread(worker: int) -> None:
    """What stoker's workers do: OpenCV's own threads off, one process per core (in a
    fresh process: after a fork, OpenCV's thread pool is the parent's, and resizing it
    there hangs)."""
    cv2.setNumThreads(1)


class Photos:
    """A PyTorch map-style dataset of encoded records, transformed as stoker does."""

    def __init__(self, jpegs: list[bytes], labels: np.ndarray) -> None:
        self.jpegs, self.labels, self.transform = jpegs, labels, recipe()

    def __len__(self) -> int:
        return len(self.jpegs)

    def __getitem__(self, i: int):
        rng = np.random.default_rng(i)
        return self.transform((np.frombuffer(self.jpegs[i], np.uint8), self.labels[i]), rng)


def torch_candidate(jpegs: list[bytes], labels: np.ndarray, workers: int, context: str
                    ) -> Candidate:
    import torch.utils.data as tud

    def make():
        options = ({} if context == "fork" else
                   {"multiprocessing_context": context, "worker_init_fn": one_opencv_thread})
        loader = tud.DataLoader(Photos(jpegs, labels), batch_size=BATCH, shuffle=True,
                                num_workers=workers, persistent_workers=True,
                                prefetch_factor=2, **options)

        def close():
            iterator = getattr(loader, "_iterator", None)
            if iterator is not None:
                iterator._shutdown_workers()
        return (lambda: loader), close, None
    extra = "" if context == "fork" else f", {context}, one OpenCV thread per worker"
    return Candidate(f"PyTorch DataLoader, num_workers={workers}{extra}, same decode and crop",
                     make)


def tfdata_candidate(jpegs: list[bytes], labels: np.ndarray, crop_while_decoding: bool
                     ) -> Candidate:
    import tensorflow as tf

    mean = tf.constant(MEAN, tf.float32) * 255
    std = tf.constant(STD, tf.float32) * 255

    def load(record, label):
        shape = tf.io.extract_jpeg_shape(record)
        begin, size, _ = tf.image.sample_distorted_bounding_box(
            shape, tf.zeros([0, 0, 4], tf.float32), area_range=(0.08, 1.0),
            aspect_ratio_range=(3 / 4, 4 / 3), max_attempts=10,
            use_image_if_no_bounding_boxes=True)
        if crop_while_decoding:
            window = tf.stack([begin[0], begin[1], size[0], size[1]])
            image = tf.io.decode_and_crop_jpeg(record, window, channels=3)
        else:
            image = tf.slice(tf.io.decode_jpeg(record, channels=3), begin, size)
        image = tf.image.resize(image, (SIZE, SIZE))  # bilinear, as TF's ImageNet recipe
        image = tf.image.random_flip_left_right(image)
        return (image - mean) / std, label

    def make():
        dataset = (
            tf.data.Dataset.from_tensor_slices((jpegs, labels))
            .shuffle(len(jpegs), seed=0)
            .map(load, num_parallel_calls=tf.data.AUTOTUNE)
            .batch(BATCH)
            .prefetch(tf.data.AUTOTUNE)
        )
        return dataset.as_numpy_iterator, lambda: None, None
    name = ("tf.data, decode_and_crop_jpeg + AUTOTUNE" if crop_while_decoding
            else "tf.data, decode_jpeg + AUTOTUNE")
    return Candidate(name, make)


def report(results: dict) -> str:
    """The BENCHMARKS.md section from a run's results (``benchmarks/results/photo.json``)."""
    facts, rows, decode_us = results["facts"], results["rows"], results["decoders_us"]
    best_other = max(r["samples_per_s"] for r in rows[1:])
    lines = [
        f"Machine: {results['machine']}. {facts['records']} JPEG records from scikit-image's "
        f"colour photographs ({facts['kib']:.0f} KiB and about {facts['kpixels']:.0f}k pixels "
        f"each, median; qualities 75/85/95), batch {BATCH}, decode -> random-resized-crop "
        f"{SIZE} -> flip -> normalise to float32; medians over {facts['rounds']} rounds of "
        f"{facts['epochs']} epochs after a warm-up one, a fresh loader per candidate and "
        "round, the candidates alternating.", "",
        "| loader | samples/s | vs the best other | tree CPU | tree PSS |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(f"| {row['loader']} | {row['samples_per_s']:.0f} | "
                     f"{row['samples_per_s'] / best_other:.2f}x | {row['cpu_percent']:.0f} % | "
                     f"{row['tree_pss_mib']:.0f} MiB |")
    lines += ["", "The decoders on one core, the same 200 records, µs per record (median of "
              "5 passes):", "", "| decoder | µs per record | vs OpenCV |", "|---|---:|---:|"]
    opencv = next(iter(decode_us.values()))
    for name, us in decode_us.items():
        lines.append(f"| {name} | {us:.0f} | {opencv / us:.2f}x |")
    stoker_rate = rows[0]["samples_per_s"]
    torch_rate = max(rows[1]["samples_per_s"], rows[2]["samples_per_s"])
    tf_cpu = max(rows[3]["cpu_percent"], rows[4]["cpu_percent"])
    core_us = 1e6 * rows[0]["cpu_percent"] / 100 / stoker_rate
    lines += ["", (
        f"Each sample costs stoker about {core_us:.0f} µs of core time here: decoding "
        f"{opencv:.0f} µs of it ({opencv / core_us:.0%}), the rest the crop's resize, the "
        "float32 normalise and copying the 588 KiB result into the batch. The loaders "
        "differ in what they add to the same steps and in how fully they use the cores. "
        "stoker's workers write each float32 224x224x3 sample straight into a shared "
        "batch slot; PyTorch's workers stack each batch into a new "
        f"{BATCH * SIZE * SIZE * 3 * 4 / 2**20:.0f} MiB shared-memory tensor "
        f"(`default_collate`: {facts['collate_ms']:.0f} ms a batch, measured in-process) and "
        "pass it by file descriptor: with the same decode and crop code they reach "
        f"{torch_rate / stoker_rate:.2f}x stoker's rate (forked workers keep OpenCV's "
        "thread pool as the parent left it; a forkserver with one OpenCV thread each, as "
        "stoker's, is the other PyTorch row). tf.data runs the steps in C++ threads, but "
        f"AUTOTUNE kept it at {tf_cpu:.0f} % of the {100 * facts['cores']} % these cores "
        "offer; `decode_and_crop_jpeg` skips the rows below the crop. stoker does more per "
        "image than TF: its `RandomResizedCrop` averages pixels when it shrinks (area, no "
        "aliasing) where TF's resize is bilinear. Each row's PSS includes TensorFlow and "
        "PyTorch, imported by this one process. This 2-core machine is shared and noisy "
        "(single rounds moved by up to 40 %): the medians are what to read. OpenCV's "
        "decoder is libjpeg-turbo; simplejpeg's binding of it is within 10 % and Pillow's "
        "slower, so `Decode` adds no dependency.")]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=2, help="measured epochs per round")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite the BENCHMARKS.md section from the last results")
    args = parser.parse_args()
    if args.report_only:
        import json

        from common import ROOT

        results = json.loads((ROOT / "benchmarks" / "results" / "photo.json").read_text())
        write_section("photo", "## The photo pipeline (`benchmarks/bench_photo.py`)\n\n"
                      + report(results))
        return

    cores = len(os.sched_getaffinity(0))
    jpegs = records(args.records)
    labels = (np.arange(args.records) % len(PHOTOS)).astype(np.int32)
    decoded = [Decode().decode(np.frombuffer(j, np.uint8)).shape for j in jpegs[:200]]
    facts = {"records": args.records, "rounds": args.rounds, "epochs": args.epochs,
             "cores": cores, "kib": median([len(j) for j in jpegs]) / 1024,
             "kpixels": median([h * w for h, w, _ in decoded]) / 1e3,
             "collate_ms": collate_cost(jpegs, labels)}
    decode_us = decoders(jpegs)
    print("decoders (µs per record):", {k: round(v) for k, v in decode_us.items()})

    with tempfile.TemporaryDirectory() as folder:
        path = stoker.store.save(Path(folder) / "photos.stoker", (jpegs, labels))
        source = stoker.store.open(path)
        candidates = [
            stoker_candidate(source, cores),
            torch_candidate(jpegs, labels, cores, "fork"),
            torch_candidate(jpegs, labels, cores, "forkserver"),
            tfdata_candidate(jpegs, labels, crop_while_decoding=False),
            tfdata_candidate(jpegs, labels, crop_while_decoding=True),
        ]
        runs: dict[str, list[dict]] = {c.name: [] for c in candidates}
        for round_ in range(args.rounds):
            order = candidates if round_ % 2 == 0 else candidates[::-1]
            for candidate in order:
                run = measure(candidate, args.epochs, budget_s=60.0)
                runs[candidate.name].append(run)
                print(f"round {round_}: {candidate.name}: "
                      f"{median(run['throughputs']):.0f} samples/s", flush=True)
        rows = [summarize(runs[c.name]) for c in candidates]
    results = {"machine": machine_line(), "facts": facts, "rows": rows,
               "decoders_us": decode_us}
    text = report(results)
    print(text)
    if not args.no_write:
        write_results("photo", {key: value for key, value in results.items()
                                if key != "machine"})
        write_section("photo", "## The photo pipeline (`benchmarks/bench_photo.py`)\n\n" + text)


if __name__ == "__main__":
    main()
