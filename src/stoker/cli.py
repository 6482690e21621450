"""The ``stoker`` command line: ``train``, ``preview``, ``ingest`` and ``bench``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stoker", description="Keep the accelerator fed.")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser(
        "train", help="train a Keras kanji classifier fed by stoker (the built-in data set)")
    train.add_argument("--epochs", type=int, default=10)
    train.add_argument("--classes", type=int, default=100,
                       help="number of kanji, in JIS order (2..2965)")
    train.add_argument("--batch-size", type=int, default=64)
    train.add_argument("--workers", type=int, default=None,
                       help="worker processes (default: every usable core; 0: inline)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--out", type=Path, default=Path("runs/train"),
                       help="where the model and the curves go")
    train.add_argument("--data", type=Path, nargs="+", default=(),
                       help="train on a store (stoker ingest) or on ETL files instead of the "
                       "built-in kanji")
    preview = commands.add_parser(
        "preview", help="write a PNG grid of images and their augmentations")
    preview.add_argument("--recipe", default="stoker.augment:kanji_distort",
                         help="module:callable giving the transform (default: %(default)s)")
    preview.add_argument("--images", type=int, default=6, help="rows: how many images")
    preview.add_argument("--from", dest="source", type=Path, default=None,
                         help=".npy file of images (N, H, W[, C]); default: the built-in "
                         "kanji")
    preview.add_argument("--augmentations", type=int, default=8, help="columns beside each "
                         "original")
    preview.add_argument("--seed", type=int, default=0)
    preview.add_argument("--zoom", type=int, default=2, help="pixels per image pixel")
    preview.add_argument("--out", type=Path, default=Path("preview.png"))

    ingest = commands.add_parser(
        "ingest", help="write .npy/.npz files, an image folder or ETL files into a store")
    ingest.add_argument("inputs", nargs="+", type=Path,
                        help=".npy files (one per field) or one .npz; or one folder with a "
                        "sub-folder per class; or ETL files (ETL8G_01, ETL9B_1, ...)")
    ingest.add_argument("--out", type=Path, required=True, help="the store to write")
    ingest.add_argument("--kind", choices=["auto", "numpy", "folder", "etl"], default="auto")
    ingest.add_argument("--etl-format", default=None,
                        help="ETL format when file names do not tell (ETL8G, ETL9G, ETL1, "
                        "ETL8B, ETL9B)")
    ingest.add_argument("--size", type=int, default=None,
                        help="resize images to SIZE x SIZE (ETL default: 64)")
    ingest.add_argument("--characters", default=None,
                        help="ETL: keep a group (kanji, hiragana, katakana, digits, latin) "
                        "or the characters given")
    ingest.add_argument("--color", action="store_true", help="folder: keep colour (RGB)")
    ingest.add_argument("--classes", type=Path, default=None, metavar="FILE",
                        help=".npy/.npz input: a UTF-8 text file of class names, one per "
                        "line, line N naming label N (folders and ETL files name their own)")
    ingest.add_argument("--overwrite", action="store_true", help="replace --out atomically")
    ingest.add_argument("--no-progress", action="store_true")

    bench = commands.add_parser(
        "bench", help="samples/s of a recipe against worker counts, with a table and a plot")
    bench.add_argument("--recipe", default="stoker.augment:kanji_distort",
                       help="module:callable giving the transform (default: %(default)s)")
    bench.add_argument("--workers", default=None,
                       help="comma-separated worker counts (default: 0 to every usable core)")
    bench.add_argument("--samples", type=int, default=16384, help="samples per epoch")
    bench.add_argument("--batch-size", type=int, default=256)
    bench.add_argument("--no-compare", action="store_true",
                       help="stoker only (else also PyTorch DataLoader and Keras PyDataset "
                       "when installed)")
    bench.add_argument("--out", type=Path, default=Path("bench.png"), help="the plot (PNG)")
    return parser


def _bench(args: argparse.Namespace) -> int:
    from . import bench
    from ._system import usable_cpu_count
    from .augment.preview import load_recipe

    if args.workers is None:
        counts = list(range(usable_cpu_count() + 1))
    else:
        try:
            counts = sorted({int(w) for w in args.workers.split(",")})
        except ValueError:
            raise ValueError(f"--workers takes comma-separated integers, got {args.workers!r}"
                             ) from None
        if counts[0] < 0:
            raise ValueError("--workers must be >= 0")
    if args.samples < args.batch_size or args.batch_size < 1:
        raise ValueError("--samples must be at least one --batch-size, and both positive")
    if args.out.suffix.lower() != ".png":
        raise ValueError(f"--out is a PNG plot; give a path ending in .png, not {args.out}")
    rows = bench.run(load_recipe(args.recipe), counts, samples=args.samples,
                     batch_size=args.batch_size, compare=not args.no_compare)
    print(bench.table(rows))
    path = bench.plot(rows, args.out, f"{args.recipe} on 64x64 kanji, {usable_cpu_count()} "
                      "usable cores")
    print(f"plot: {path}")
    return 0


def _ingest(args: argparse.Namespace) -> int:
    from . import ingest as ingesting
    from . import store

    inputs = args.inputs
    kind = args.kind
    if kind == "auto":
        if len(inputs) == 1 and inputs[0].is_dir():
            kind = "folder"
        elif all(p.suffix in (".npy", ".npz") for p in inputs):
            kind = "numpy"
        else:
            kind = "etl"
    missing = [str(p) for p in inputs if not p.exists()]
    if missing:
        raise ValueError(f"no such file or folder: {', '.join(missing)}")
    if (args.out.exists() or args.out.is_symlink()) and not args.overwrite:
        raise ValueError(f"{args.out} already exists; pass --overwrite to replace it "
                         "(atomically: it stays as it is until the new store is complete)")
    if args.classes is not None and kind != "numpy":
        raise ValueError(f"--classes is for .npy/.npz input; {kind} input names its own "
                         "classes (the sub-folders, or the characters of the ETL files)")
    if kind == "numpy":
        plan = ingesting.from_numpy(inputs)
        if args.classes is not None:
            plan.classes = _class_names(args.classes)
    elif kind == "folder":
        if len(inputs) != 1:
            raise ValueError("--kind folder takes exactly one folder")
        plan = ingesting.from_folder(inputs[0], size=args.size, color=args.color)
    else:
        plan = _in_flags(lambda: ingesting.from_etl(
            inputs, size=args.size or 64, characters=args.characters, format=args.etl_format))
    path = _in_flags(lambda: ingesting.ingest(plan, args.out, overwrite=args.overwrite,
                                              progress=not args.no_progress))
    data = store.open(path)
    classes = f", {len(data.classes)} classes" if data.classes else ""
    print(f"{path}: {len(data)} samples{classes}, {data.nbytes / 2**20:.1f} MiB")
    return 0


def _in_flags(call):
    """``call()``, its errors' advice given in ``ingest``'s flags, not the keywords of the
    functions behind them."""
    try:
        return call()
    except (ValueError, FileExistsError) as error:
        text = str(error)
        for keyword, flag in (("format=", "--etl-format"), ("overwrite=True", "--overwrite")):
            text = text.replace(keyword, flag)
        if text == str(error):
            raise
        raise type(error)(text) from None


def _class_names(path: Path) -> list[str]:
    """``--classes FILE``: one class name per line (UTF-8), label N on line N."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"--classes {path}: cannot read it as UTF-8 text ({error})") from None
    names = [line.strip() for line in lines]
    while names and not names[-1]:
        names.pop()
    if not names or "" in names:
        where = "is empty" if not names else f"has an empty line ({names.index('') + 1})"
        raise ValueError(f"--classes {path} {where}; give one class name per line")
    if len(set(names)) != len(names):
        twice = next(n for i, n in enumerate(names) if n in names[:i])
        raise ValueError(f"--classes {path} names {twice!r} twice; class names must be unique")
    return names


def _preview(args: argparse.Namespace) -> int:
    import numpy as np

    from .augment.preview import grid, load_recipe, write_png

    if args.images < 1:
        raise ValueError("--images must be >= 1")
    if args.source is not None:
        try:
            images = np.load(args.source, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as error:
            raise ValueError(f"cannot read images from {args.source}: {error}") from None
        if images.ndim not in (3, 4):
            raise ValueError(f"{args.source} holds an array of shape {images.shape}; "
                             "expected images (N, H, W) or (N, H, W, C)")
        images = np.asarray(images[:args.images])
    else:
        from .datasets import glyphs

        data = glyphs.load()
        # Each training face holds every class in order; the third is a regular weight.
        picks = 2 * len(data.classes) + np.linspace(0, len(data.classes) - 1,
                                                    args.images).astype(int)
        images = np.stack([data.train[int(i)][0] for i in picks])
    picture = grid(images, load_recipe(args.recipe), augmentations=args.augmentations,
                   seed=args.seed, zoom=args.zoom)
    path = write_png(args.out, picture)
    print(f"{path}: {len(images)} images x {args.augmentations} augmentations of "
          f"{args.recipe} ({picture.shape[1]}x{picture.shape[0]} pixels)")
    return 0


def _train(args: argparse.Namespace) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from .train import TrainConfig, run

    run(TrainConfig(epochs=args.epochs, classes=args.classes, batch_size=args.batch_size,
                    workers=args.workers, seed=args.seed, out=args.out,
                    data=tuple(args.data)))
    return 0


_COMMANDS = {"train": _train, "preview": _preview, "bench": _bench, "ingest": _ingest}


def main(argv: list[str] | None = None) -> int:
    """Run one command; bad input is one line on stderr and exit status 2, never a
    traceback; Ctrl-C is exit status 130 (whatever was being written is discarded)."""
    args = _parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except (ValueError, OSError) as error:
        print(f"stoker {args.command}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"stoker {args.command}: interrupted; nothing half-written was left behind",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
