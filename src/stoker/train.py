"""The main job: train a real Keras classifier on the built-in kanji, fed by stoker.

Augmentation is the question's recipe (``stoker.augment.kanji_distort``) applied to half
of the samples, as the question's batches held half originals, half distorted copies.
It runs in the loader's worker processes; images travel as uint8 and the model scales
them. Validation uses a font family that training never sees.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._extras import require
from .loader import Loader

__all__ = ["TrainConfig", "build_model", "run", "training_transform"]


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainConfig:
    epochs: int = 10
    classes: int = 100
    batch_size: int = 64
    workers: int | None = None
    seed: int = 0
    out: Path = Path("runs/train")
    data: tuple[Path, ...] = ()  # a store, or ETL files; empty: the built-in kanji

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        if self.workers is not None and self.workers < 0:
            raise ValueError("--workers must be >= 0")
        if not 2 <= self.classes <= 2965:
            raise ValueError(f"--classes must be between 2 and 2965 (JIS level-1 kanji), "
                             f"got {self.classes}")


def training_transform() -> Any:
    """Half the samples as they are, half through the question's distortions."""
    from .augment import RandomApply, kanji_distort

    return RandomApply(kanji_distort(), p=0.5)


def build_model(classes: int, size: int) -> Any:
    """A small CNN: four conv blocks with batch normalisation, global average pooling.

    Batch-norm momentum 0.9 (Keras' default is 0.99): a short run has a few hundred
    steps, too few for the slower moving averages, and validation would then be judged
    with statistics that do not describe the data yet.
    """
    keras = require("keras", "training", extra="train")
    layers = keras.layers
    blocks = []
    for filters in (32, 64, 128, 192):
        blocks += [layers.Conv2D(filters, 3, padding="same", use_bias=False),
                   layers.BatchNormalization(momentum=0.9), layers.ReLU()]
        if filters != 192:
            blocks.append(layers.MaxPooling2D())
    model = keras.Sequential([
        keras.Input((size, size, 1)),
        layers.Rescaling(1 / 255),  # the loader delivers uint8, 4x less to move
        *blocks,
        layers.GlobalAveragePooling2D(),
        layers.Dropout(0.3),
        layers.Dense(classes, activation="softmax"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(2e-3),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def _plot(history: dict[str, list[float]], path: Path, held_out: str) -> None:
    matplotlib = require("matplotlib", "the training curves", extra="train")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = range(1, len(history["loss"]) + 1)
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for key, axis in (("loss", left), ("accuracy", right)):
        axis.plot(epochs, history[key], "o-", label=f"training {key}")
        axis.plot(epochs, history[f"val_{key}"], "o-", label=f"validation {key} ({held_out})")
        axis.set_xlabel("epoch")
        axis.set_xticks(list(epochs))  # whole epochs, also for a one-epoch run
        axis.set_xlim(0.5, len(epochs) + 0.5)
        axis.set_title(key)
        axis.legend()
        axis.grid(alpha=0.3)
    figure.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    figure.savefig(tmp, dpi=100)
    plt.close(figure)
    tmp.replace(path)


def _without_keyword(message: str) -> str:
    """An ETL reader's message without its advice in keyword terms (format=)."""
    return message.split("; pass format=")[0].replace(" (pass format=)", "").rstrip(".")


def check_data_paths(paths: tuple[Path, ...]) -> None:
    """``--data`` that cannot work, refused before anything heavy is imported."""
    missing = [str(p) for p in paths if not Path(p).exists()]
    if missing:
        raise ValueError(
            f"--data: no store or file at {', '.join(missing)}. Create a store with `stoker "
            "ingest FILES --out DATA.stoker` (add --classes NAMES.txt for .npy files), then "
            "pass --data DATA.stoker"
        )
    if any(Path(p).suffix in (".npy", ".npz") for p in paths):
        raise ValueError(
            "--data takes a store or ETL files, not .npy/.npz files; make a store of them "
            "first: `stoker ingest X.npy Y.npy --out DATA.stoker --classes NAMES.txt` "
            "(one class name per line), then --data DATA.stoker"
        )


def user_data(paths: tuple[Path, ...], seed: int) -> Any:
    """A store (one directory) or ETL files as a GlyphSet: 90 % training, 10 % validation,
    a deterministic random split. Samples must be (uint8 image HxWx1, integer label)."""
    import numpy as np

    from . import store
    from .datasets import etl
    from .datasets.glyphs import GlyphSet

    check_data_paths(paths)
    if len(paths) == 1 and Path(paths[0]).is_dir():
        try:
            source = store.open(paths[0])
        except store.StoreError as error:
            raise ValueError(f"--data {paths[0]}: {error}") from None
    else:
        try:
            source = etl.load(list(paths))
        except ValueError as error:
            if "format=" not in str(error):
                raise
            raise ValueError(
                f"--data: {_without_keyword(str(error))}. stoker train reads ETL "
                "files under their distributed names (ETL8G_01, ETL9B_1, ...); for others, "
                "make a store first: `stoker ingest FILES --etl-format ETL8G --out "
                "DATA.stoker`, then --data DATA.stoker"
            ) from None
    sample = source[0]
    image = sample[0] if isinstance(sample, tuple) and len(sample) == 2 else sample
    if any(field.get("blobs") for field in getattr(source, "_meta", {}).get("fields", [])):
        raise ValueError(
            f"--data {paths[0]} holds encoded images (written by stoker ingest --encoded); "
            "stoker train trains on decoded square grey glyphs: ingest the folder again "
            "without --encoded, with --size 64"
        )
    if (not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3
            or image.shape[2] != 1 or image.shape[0] != image.shape[1]):
        raise ValueError(
            f"stoker train needs (image, label) samples with square uint8 HxWx1 images; "
            f"{paths[0]} holds {getattr(image, 'shape', type(image).__name__)} "
            f"{getattr(image, 'dtype', '')} images"
        )
    classes = getattr(source, "classes", None)
    if not classes:
        raise ValueError(
            f"--data {paths[0]} has no class names, which train needs for its report; write "
            "it again with `stoker ingest ... --classes NAMES.txt --overwrite` (one class "
            "name per line)"
        )
    train, val = source.split(0.9, seed=seed)
    return GlyphSet(train, val, tuple(str(c) for c in classes), image.shape[0])


def run(config: TrainConfig) -> dict[str, Any]:
    """Train, print per-epoch metrics and loader throughput, save model and curves."""
    keras = require("keras", "training", extra="train")

    from .adapters.keras import LoaderStatsCallback
    from .datasets import glyphs
    from .stats import plural

    keras.utils.set_random_seed(config.seed)
    if config.data:
        data = user_data(config.data, config.seed)
        print(f"{', '.join(map(str, config.data))}: {len(data.train)} training and "
              f"{len(data.val)} validation samples (a random split), {len(data.classes)} "
              "classes", flush=True)
    else:
        data = glyphs.load(classes=config.classes)
        print(f"kanji: {len(data.train)} training images ({len(glyphs.TRAIN_FACES)} faces), "
              f"{len(data.val)} validation images (Noto Serif JP, unseen), "
              f"{len(data.classes)} classes", flush=True)
    config.out.mkdir(parents=True, exist_ok=True)
    with Loader(data.train, batch_size=config.batch_size, transform=training_transform(),
                seed=config.seed, workers=config.workers) as train_loader, \
            Loader(data.val, batch_size=config.batch_size, shuffle=False,
                   workers=0) as val_loader:
        print(f"loader: {plural(train_loader.workers, 'worker process')}, "
              f"{plural(len(train_loader), 'batch')} per epoch", flush=True)

        class Throughput(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.started = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                seconds = time.perf_counter() - self.started
                print(f"  epoch {epoch + 1}: {len(data.train) / seconds:.0f} training "
                      f"samples/s end to end ({seconds:.1f} s)", flush=True)

        stats = LoaderStatsCallback(train_loader, print_fn=lambda line: print(line, flush=True))
        model = build_model(len(data.classes), data.size)
        history = model.fit(train_loader.keras(), validation_data=val_loader.keras(),
                            epochs=config.epochs, verbose=2, callbacks=[Throughput(), stats])
    model_path = config.out / "model.keras"
    tmp = config.out / "model.tmp.keras"
    model.save(tmp)
    tmp.replace(model_path)
    held_out = "the held-out 10 %" if config.data else "the unseen font"
    _plot(history.history, config.out / "curves.png", held_out.removeprefix("the "))
    final = history.history["val_accuracy"][-1]
    print(f"validation accuracy on {held_out}: {final:.3f} (chance: "
          f"{1 / len(data.classes):.3f}); model: {model_path}, curves: {config.out / 'curves.png'}",
          flush=True)
    return history.history
