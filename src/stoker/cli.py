"""The ``stoker`` command line: ``stoker train``."""

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
    return parser


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
    return 0


if __name__ == "__main__":
    sys.exit(main())
