"""The ``stoker`` command line: ``train``, ``preview``, ``ingest``, ``verify``, ``inspect``
and ``bench``. Errors are one line in command-line terms and exit status 2 (the
traceback behind ``--debug``); Ctrl-C is exit status 130."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["main"]


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Help texts that show every default (argparse's formatter, without "None")."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False, argparse.SUPPRESS) or action.default == ():
            return action.help or ""
        return super()._get_help_string(action) or ""


class _Parser(argparse.ArgumentParser):
    """argparse's parser, whose errors are one line (not the usage, then the error)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


_SEEDS = 2**32  # Keras' set_random_seed (and numpy's legacy seeding) takes fewer


def _whole(low: int, high: int | Callable[[], int] | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number from ``low`` to ``high``, refused by argparse
    naming the flag ("argument --seed: ..."), never later in keyword-argument terms."""
    def whole(text: str) -> int:
        limit = high() if callable(high) else high
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low or (limit is not None and value > limit):
            span = f"from {low} to {limit}" if limit is not None else f"{low} or more"
            raise argparse.ArgumentTypeError(f"must be {span}, got {value}")
        return value

    whole.__name__ = "int"  # what argparse's usage errors call it
    return whole


def _most_workers() -> int:
    from .loader import most_workers

    return most_workers()


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="stoker", description="Keep the accelerator fed.",
                                     formatter_class=_Help)
    parser.add_argument("--version", action="version", version=f"stoker {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=text, description=text, formatter_class=_Help)

    train = command(
        "train", "train a Keras kanji classifier fed by stoker (the built-in data set)")
    train.add_argument("--epochs", type=_whole(1), default=10, help="epochs to train")
    train.add_argument("--classes", type=_whole(2, 2965), default=100,
                       help="number of kanji, in JIS order (2..2965)")
    train.add_argument("--batch-size", type=_whole(1), default=64, help="samples per batch")
    train.add_argument("--workers", type=_whole(0, _most_workers), default=None,
                       help="worker processes (default: every usable core; 0: inline)")
    train.add_argument("--seed", type=_whole(0, _SEEDS - 1), default=0,
                       help="seed of the shuffling, the augmentation and the model")
    train.add_argument("--out", type=Path, default=Path("runs/train"),
                       help="where the model and the curves go")
    train.add_argument("--data", type=Path, nargs="+", default=(),
                       help="train on a store (stoker ingest) or on ETL files instead of the "
                       "built-in kanji")
    preview = command("preview", "write a PNG grid of images and their augmentations")
    preview.add_argument("--recipe", default="stoker.augment:kanji_distort",
                         help="module:callable giving the transform (modules in the current "
                         "folder are found)")
    preview.add_argument("--images", type=_whole(1), default=6, help="rows: how many images")
    preview.add_argument("--from", dest="source", type=Path, default=None,
                         help="a store, or a .npy file of images (N, H, W[, C]); default: "
                         "the built-in kanji")
    preview.add_argument("--augmentations", type=_whole(1), default=8, help="columns beside each "
                         "original")
    preview.add_argument("--seed", type=_whole(0), default=0, help="the loader seed to show")
    preview.add_argument("--zoom", type=_whole(1), default=2, help="pixels per image pixel")
    preview.add_argument("--out", type=Path, default=Path("preview.png"), help="the PNG to write")

    ingest = command("ingest", "write .npy/.npz files, an image folder or ETL files into a store")
    ingest.add_argument("inputs", nargs="+", type=Path,
                        help=".npy files (one per field) or one .npz; or one folder with a "
                        "sub-folder per class; or ETL files (ETL8G_01, ETL9B_1, ...)")
    ingest.add_argument("--out", type=Path, required=True, help="the store to write")
    ingest.add_argument("--kind", choices=["auto", "numpy", "folder", "etl"], default="auto",
                        help="what the inputs are (auto: from their names)")
    ingest.add_argument("--etl-format", default=None,
                        help="ETL format when file names do not tell (ETL8G, ETL9G, ETL1, "
                        "ETL8B, ETL9B)")
    ingest.add_argument("--size", type=_whole(1, 65536), default=None,
                        help="resize images to SIZE x SIZE (ETL default: 64)")
    ingest.add_argument("--characters", default=None,
                        help="ETL: keep a group (kanji, hiragana, katakana, digits, latin) "
                        "or the characters given")
    ingest.add_argument("--color", action="store_true", help="folder: keep colour (RGB)")
    ingest.add_argument("--encoded", action="store_true",
                        help="folder: keep each image file's bytes as they are (JPEG, PNG, "
                        "...), decoded in the workers by stoker.augment.Decode()")
    ingest.add_argument("--classes", type=Path, default=None, metavar="FILE",
                        help=".npy/.npz input: a UTF-8 text file of class names, one per "
                        "line, line N naming label N (folders and ETL files name their own)")
    ingest.add_argument("--overwrite", action="store_true", help="replace --out atomically")
    ingest.add_argument("--no-progress", action="store_true", help="no progress bar")

    verify = command("verify", "check every byte of a store against its checksums")
    verify.add_argument("store", type=Path, help="the store (a directory)")
    verify.add_argument("--no-progress", action="store_true", help="no progress bar")
    inspect_ = command("inspect", "say what a store holds: samples, fields, classes, size")
    inspect_.add_argument("store", type=Path, help="the store (a directory)")
    inspect_.add_argument("--out", type=Path, default=None,
                          help="also write a PNG grid of its first images")
    inspect_.add_argument("--images", type=_whole(1), default=32, help="images in the grid")

    bench = command(
        "bench", "samples/s of a recipe against worker counts, with a table and a plot")
    bench.add_argument("--recipe", default="stoker.augment:kanji_distort",
                       help="module:callable giving the transform (modules in the current "
                       "folder are found)")
    bench.add_argument("--workers", default=None,
                       help="comma-separated worker counts (default: 0 to every usable core)")
    bench.add_argument("--samples", type=_whole(1), default=16384, help="samples per epoch")
    bench.add_argument("--batch-size", type=_whole(1), default=256, help="samples per batch")
    bench.add_argument("--no-compare", action="store_true",
                       help="stoker only (else also PyTorch DataLoader and Keras PyDataset "
                       "when installed)")
    bench.add_argument("--out", type=Path, default=Path("bench.png"), help="the plot (PNG)")
    return parser


def _recipe(spec: str):
    """``--recipe``: found in the current folder too, as ``python -m`` would."""
    from .augment.preview import load_recipe

    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return load_recipe(spec)
    except ValueError as error:
        raise ValueError(f"--recipe {error}") from None


# TensorFlow 2.21 prints start-up banners from C++ whatever TF_CPP_MIN_LOG_LEVEL says:
# absl's "All log messages before absl::InitializeLog() ..." and oneDNN's notice, once per
# native library it loads (twice). In the middle of the CLI's table or progress bar they
# read as errors; the library leaves them alone (importing TensorFlow is the user's).
_TF_BANNERS = ("All log messages before absl::InitializeLog()", "oneDNN custom operations",
               "cpu_feature_guard.cc", "To enable the following instructions")


def _import_tensorflow_quietly() -> None:
    """Import TensorFlow (when installed) with its start-up banners held back; anything
    else it writes to stderr meanwhile, and any import error, still comes through."""
    if "tensorflow" in sys.modules:
        return
    try:
        if importlib.util.find_spec("tensorflow") is None:
            return  # what needs it says so (stoker._extras)
    except (ImportError, ValueError):  # a broken install: the import below says how
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            lines = held.read().decode(errors="replace").splitlines(keepends=True)
            sys.stderr.write("".join(line for line in lines
                                     if not any(banner in line for banner in _TF_BANNERS)))


def _bench(args: argparse.Namespace) -> int:
    from . import bench
    from ._system import usable_cpu_count

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
        if counts[-1] > _most_workers():
            raise ValueError(f"--workers {counts[-1]} is more than 32 worker processes for "
                             "each usable core: they would compete for the cores without "
                             f"making batches faster; give counts up to {_most_workers()}")
    if args.samples < args.batch_size or args.batch_size < 1:
        raise ValueError("--samples must be at least one --batch-size, and both positive")
    if args.out.suffix.lower() != ".png":
        raise ValueError(f"--out is a PNG plot; give a path ending in .png, not {args.out}")
    from ._extras import require

    # before the minutes of measuring, not after them
    require("matplotlib", "stoker bench's plot (--out)", install="pip install matplotlib")
    if not args.no_compare:
        _import_tensorflow_quietly()  # Keras' PyDataset is one of the rows
    rows = bench.run(_recipe(args.recipe), counts, samples=args.samples,
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
    given: dict[Path, Path] = {}
    for path in inputs:
        if path.resolve() in given:
            also = given[path.resolve()]
            raise ValueError(f"{path} is given twice{'' if also == path else f' (also as {also})'}"
                             "; give each input once, or its samples are stored twice")
        given[path.resolve()] = path
    folders = [p for p in inputs if p.is_dir()]
    if folders and kind != "folder":
        raise ValueError(f"{folders[0]} is a folder; an image folder is ingested alone "
                         f"(stoker ingest FOLDER --out STORE), and {kind} input is files")
    if (args.out.exists() or args.out.is_symlink()) and not args.overwrite:
        raise ValueError(f"{args.out} already exists; pass --overwrite to replace it "
                         "(atomically: it stays as it is until the new store is complete)")
    if args.encoded and kind != "folder":
        raise ValueError(f"--encoded is for an image folder; {kind} input holds pixels "
                         "already")
    if args.encoded and (args.size is not None or args.color):
        raise ValueError("--encoded keeps each file as it is, so --size and --color do not "
                         "apply: decode, resize and choose colour in the loader's transform "
                         "(Decode(mode='rgb' or 'grey'), RandomResizedCrop(224), Resize(...))")
    if kind == "numpy":
        extra = [flag for flag, given in (
            ("--size", args.size is not None), ("--color", args.color),
            ("--characters", args.characters is not None),
            ("--etl-format", args.etl_format is not None)) if given]
        if extra:
            raise ValueError(f"{', '.join(extra)} do{'es' if len(extra) == 1 else ''} not "
                             "apply to .npy/.npz input, which holds its pixels as they are: "
                             "resize or convert in the loader's transform")
    if kind == "folder" and args.out.resolve().is_relative_to(inputs[0].resolve()):
        raise ValueError(f"--out {args.out} is inside the image folder {inputs[0]}, so the "
                         "next ingest of that folder would read the store as a class: "
                         "write it elsewhere")
    if kind == "folder" and (args.characters is not None or args.etl_format is not None):
        raise ValueError("--characters and --etl-format are for ETL files; an image folder "
                         "names its classes by its sub-folders")
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
        plan = ingesting.from_folder(inputs[0], size=args.size, color=args.color,
                                     encoded=args.encoded)
    else:
        plan = _in_flags(lambda: ingesting.from_etl(
            inputs, size=args.size or 64, characters=args.characters, format=args.etl_format))
    path = _in_flags(lambda: ingesting.ingest(plan, args.out, overwrite=args.overwrite,
                                              progress=not args.no_progress))
    data = store.open(path)
    from .stats import plural

    classes = f", {plural(len(data.classes), 'class')}" if data.classes else ""
    print(f"{path}: {plural(len(data), 'sample')}{classes}, {data.nbytes / 2**20:.1f} MiB")
    if plan.conversions():
        print(f"converted: {plan.conversions()}")
    return 0


def _in_flags(call):
    """``call()``, its errors' advice given in ``ingest``'s flags, not the keywords of the
    functions behind them."""
    try:
        return call()
    except (ValueError, TypeError, FileExistsError) as error:
        text = str(error)
        for keyword, flag in (("format=", "--etl-format"), ("overwrite=True", "--overwrite"),
                              ("as classes=", "with --classes FILE (one per line)")):
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


def _check_grid(image_shape: tuple[int, ...], rows: int, args: argparse.Namespace) -> None:
    """Refuse, before any image is read, a grid too large to write or to open."""
    from .augment.preview import MAX_PIXELS, MAX_SIDE, grid_shape

    height, width = grid_shape(image_shape, rows, augmentations=args.augmentations,
                               zoom=args.zoom)
    if max(height, width) > MAX_SIDE or height * width > MAX_PIXELS:
        raise ValueError(
            f"the grid would be {width}x{height} pixels, more than a PNG viewer opens "
            f"({MAX_SIDE} a side, {MAX_PIXELS // 2**20} megapixels in all): lower --images "
            f"({args.images}), --augmentations ({args.augmentations}) or --zoom ({args.zoom})")


def _preview(args: argparse.Namespace) -> int:
    import numpy as np

    from .augment.preview import grid, write_png

    recipe = _recipe(args.recipe)  # a wrong --recipe fails before any data is read
    if args.source is not None and args.source.is_dir():  # a store: its image field
        data = _open_store(args.source, "--from")
        field = data._arrays[_image_field(data, "--from")]
        _check_grid(field.shape[1:], min(args.images, len(field)), args)
        images = np.asarray(field[:args.images])
    elif args.source is not None:
        from .ingest import _loaded

        if args.source.suffix == ".npz":
            raise ValueError(f"--from takes a .npy array of images or a store; {args.source} "
                             f"is an .npz archive: ingest it first (stoker ingest "
                             f"{args.source} --out STORE) and give --from STORE")
        with _loaded(args.source, archive=False, mmap_mode="r") as images:
            pass
        if images.ndim not in (3, 4):
            raise ValueError(f"{args.source} holds an array of shape {images.shape}; "
                             "expected images (N, H, W) or (N, H, W, C)")
        _check_grid(images.shape[1:], min(args.images, len(images)), args)
        images = np.asarray(images[:args.images])
    else:
        from .datasets import glyphs

        _check_grid((64, 64), args.images, args)
        data = glyphs.load()
        # Each training face holds every class in order; the third is a regular weight.
        picks = 2 * len(data.classes) + np.linspace(0, len(data.classes) - 1,
                                                    args.images).astype(int)
        images = np.stack([data.train[int(i)][0] for i in picks])
    picture = grid(images, recipe, augmentations=args.augmentations,
                   seed=args.seed, zoom=args.zoom, title=args.recipe)
    path = write_png(args.out, picture)
    print(f"{path}: {len(images)} images x {args.augmentations} augmentations of "
          f"{args.recipe} ({picture.shape[1]}x{picture.shape[0]} pixels)")
    return 0


def _open_store(path: Path, flag: str = "STORE"):
    from . import store

    if path.is_file() or path.suffix in (".npy", ".npz"):
        raise ValueError(f"{path} is a file; {flag} is a store (a directory made by stoker "
                         "ingest or stoker.store.save)")
    return store.open(path)


def _verify(args: argparse.Namespace) -> int:
    from . import store

    data = _open_store(args.store)
    store.verify(args.store, progress=not args.no_progress and sys.stderr.isatty())
    print(f"{args.store}: intact: {len(data)} samples, {data.nbytes / 2**20:.1f} MiB, every "
          "byte matches its SHA-256" + (", every label one of its class names"
                                        if data.classes else ""))
    return 0


def _inspect(args: argparse.Namespace) -> int:
    import json

    import numpy as np

    data = _open_store(args.store)
    meta = json.loads((data.path / "meta.json").read_text())
    on_disk = sum(f.stat().st_size for f in data.path.iterdir() if f.is_file())
    print(f"{data.path}: {len(data)} {meta['kind']} samples, {data.nbytes / 2**20:.1f} MiB "
          f"of data ({on_disk / 2**20:.1f} MiB on disk), store format version "
          f"{meta['version']}, generation {data.identity}")
    for position, field in enumerate(meta["fields"]):
        if field.get("blobs"):
            sizes = data._arrays[position].sizes
            print(f"  field {field['name']!r}: encoded bytes, {len(sizes)} records of "
                  f"{sizes.min()}..{sizes.max()} bytes (mean {sizes.mean():.0f}); decode "
                  "them in the transform with stoker.augment.Decode()")
            continue
        shape = "x".join(map(str, field["shape"])) or "scalar"
        print(f"  field {field['name']!r}: {np.dtype(field['dtype'])} {shape}")
    if data.classes:
        shown = ", ".join(map(str, data.classes[:10]))
        more = f", ... ({len(data.classes)} in all)" if len(data.classes) > 10 else ""
        print(f"  classes: {shown}{more}")
    else:
        print("  classes: none (stoker ingest ... --classes FILE gives them)")
    if args.out is not None:
        path = _write_contact_sheet(data, meta, args.out, args.images)
        print(f"{path}: the first {min(args.images, len(data))} images")
    return 0


def _image_field(data, flag: str) -> int:
    """Which field of a store holds images (HxW, HxWx1 or HxWx3)."""
    encoded = [f["name"] for f in data._meta["fields"] if f.get("blobs")]
    for position, field in enumerate(data._meta["fields"]):
        shape = field.get("shape") or ()
        if len(shape) == 2 or (len(shape) == 3 and shape[2] in (1, 3)):
            return position
    if encoded:
        raise ValueError(f"{flag}: {data.path} holds encoded images (field {encoded[0]!r}), "
                         "not pixels; preview them through a loader whose transform decodes "
                         "them (stoker.augment.Decode())")
    raise ValueError(f"{flag}: {data.path} holds no images (no field is HxW or HxWxC)")


def _write_contact_sheet(data, meta, out: Path, count: int) -> Path:
    import numpy as np

    from .augment.preview import write_png

    blobs = [i for i, f in enumerate(meta["fields"]) if f.get("blobs")]
    if blobs and not any(len(f.get("shape") or ()) in (2, 3) for f in meta["fields"]):
        images = _thumbnails(data._arrays[blobs[0]][:count])
    else:
        images = np.asarray(data._arrays[_image_field(data, "--out")][:count])
    if images.dtype != np.uint8:
        low, high = float(images.min()), float(images.max())
        images = ((images - low) / (high - low or 1) * 255).astype(np.uint8)
    if images.ndim == 4 and images.shape[3] == 1:
        images = images[..., 0]
    n, h, w = images.shape[:3]
    columns = min(n, 8)
    rows = -(-n // columns)
    sheet = np.full((rows * (h + 2) + 2, columns * (w + 2) + 2, *images.shape[3:]), 96,
                    np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        sheet[2 + r * (h + 2):2 + r * (h + 2) + h, 2 + c * (w + 2):2 + c * (w + 2) + w] = image
    if sheet.ndim == 3:
        sheet = sheet[..., ::-1]  # RGB to OpenCV's BGR
    return write_png(out, sheet)


def _thumbnails(records, side: int = 96):
    """Encoded images decoded and fitted into ``side`` x ``side`` (grey borders), RGB."""
    import cv2
    import numpy as np

    from .augment import Decode

    out = np.full((len(records), side, side, 3), 96, np.uint8)
    for row, record in enumerate(records):
        try:
            image = Decode().decode(record)
        except ValueError as error:
            raise ValueError(f"sample {row}: {error}") from None
        scale = side / max(image.shape[:2])
        h, w = (max(1, round(n * scale)) for n in image.shape[:2])
        small = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
        top, left = (side - h) // 2, (side - w) // 2
        out[row, top:top + h, left:left + w] = small
    return out


def _train(args: argparse.Namespace) -> int:
    _import_tensorflow_quietly()
    from .train import TrainConfig, check_data_paths, run

    check_data_paths(tuple(args.data))
    run(TrainConfig(epochs=args.epochs, classes=args.classes, batch_size=args.batch_size,
                    workers=args.workers, seed=args.seed, out=args.out,
                    data=tuple(args.data)))
    return 0


_COMMANDS = {"train": _train, "preview": _preview, "bench": _bench, "ingest": _ingest,
             "verify": _verify, "inspect": _inspect}


def _cv2_error() -> type[BaseException]:
    """OpenCV's exception type when OpenCV is loaded (a bad image it was handed)."""
    cv2 = sys.modules.get("cv2")
    return getattr(cv2, "error", ValueError) if cv2 is not None else ValueError


def main(argv: list[str] | None = None) -> int:
    """Run one command; bad input is one line on stderr and exit status 2, never a
    traceback; Ctrl-C is exit status 130 (whatever was being written is discarded)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit:  # --help, --version, or a flag refused (one line said why)
        return exit.code if isinstance(exit.code, int) else 2
    try:
        return _COMMANDS[args.command](args)
    except Exception as error:  # one line, whatever it is; --debug shows the traceback
        if args.debug:
            raise
        text = " ".join(str(error).split()) or type(error).__name__
        if not isinstance(error, (ValueError, OSError, ImportError, _cv2_error())):
            text = (f"{type(error).__name__}: {text} (stoker --debug {args.command} ... "
                    "shows the traceback)")
        print(f"stoker {args.command}: {text}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"stoker {args.command}: interrupted; nothing half-written was left behind",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
