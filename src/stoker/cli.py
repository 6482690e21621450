"""The ``stoker`` command line: ``stoker train`` and ``stoker preview``."""

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
        "train", help="train a Keras glyph classifier fed by stoker (the built-in data set)")
    train.add_argument("--epochs", type=int, default=8)
    train.add_argument("--classes", type=int, default=62, help="number of classes (2..62)")
    train.add_argument("--batch-size", type=int, default=128)
    train.add_argument("--workers", type=int, default=None,
                       help="worker processes (default: every usable core; 0: inline)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--out", type=Path, default=Path("runs/train"),
                       help="where the model and the curves go")
    preview = commands.add_parser(
        "preview", help="write a PNG grid of images and their augmentations")
    preview.add_argument("--recipe", default="stoker.augment:kanji_distort",
                         help="module:callable giving the transform (default: %(default)s)")
    preview.add_argument("--images", type=int, default=6, help="rows: how many images")
    preview.add_argument("--from", dest="source", type=Path, default=None,
                         help=".npy file of images (N, H, W[, C]); default: the built-in "
                         "glyphs")
    preview.add_argument("--augmentations", type=int, default=8, help="columns beside each "
                         "original")
    preview.add_argument("--seed", type=int, default=0)
    preview.add_argument("--zoom", type=int, default=2, help="pixels per image pixel")
    preview.add_argument("--out", type=Path, default=Path("preview.png"))
    return parser


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
        try:
            labels = data.train.arrays[1]
            # One image of each of the first classes, in class order.
            firsts = [int(np.flatnonzero(labels == c)[0]) for c in range(len(data.classes))]
            images = data.train.arrays[0][firsts[::max(1, len(firsts) // args.images)]
                                          [:args.images]].copy()
        finally:
            data.train.release()
            data.val.release()
    picture = grid(images, load_recipe(args.recipe), augmentations=args.augmentations,
                   seed=args.seed, zoom=args.zoom)
    path = write_png(args.out, picture)
    print(f"{path}: {len(images)} images x {args.augmentations} augmentations of "
          f"{args.recipe} ({picture.shape[1]}x{picture.shape[0]} pixels)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "train":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        from .train import TrainConfig, run

        try:
            config = TrainConfig(epochs=args.epochs, classes=args.classes,
                                 batch_size=args.batch_size, workers=args.workers,
                                 seed=args.seed, out=args.out)
        except ValueError as error:
            print(f"stoker train: {error}", file=sys.stderr)
            return 2
        run(config)
    elif args.command == "preview":
        try:
            return _preview(args)
        except ValueError as error:
            print(f"stoker preview: {error}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
