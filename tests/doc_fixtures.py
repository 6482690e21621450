"""What the README's and docs' code blocks assume already exists, made small and real.

A block names the fixture it needs in the ``<!-- setup: ... -->`` comment just above it;
``tests/test_docs.py`` runs that line, then the block, in a fresh process and folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def kanji_arrays(classes: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """The built-in kanji's training images (uint8 64x64x1) and labels."""
    import stoker

    return stoker.datasets.glyphs.load(classes=classes).train.arrays


def small_model(shape: tuple[int, ...] = (8, 8, 1), classes: int = 2) -> Any:
    """A compiled Keras model that trains in milliseconds."""
    import keras

    model = keras.Sequential([keras.Input(shape), keras.layers.Flatten(),
                              keras.layers.Dense(classes, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def small_arrays(count: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Float images 8x8x1 and two classes of labels."""
    x = np.random.default_rng(0).random((count, 8, 8, 1)).astype("float32")
    return x, (x.mean(axis=(1, 2, 3)) > 0.5).astype("int32")


def loader_and_model() -> tuple[Any, Any]:
    """A two-worker loader over ``small_arrays`` and a model for it."""
    import stoker

    loader = stoker.Loader(stoker.from_arrays(*small_arrays()), batch_size=32, workers=2)
    return loader, small_model()


def flip(sample: tuple[np.ndarray, Any], rng: np.random.Generator) -> tuple[np.ndarray, Any]:
    """A seeded transform: mirror the image half of the time."""
    image, label = sample
    return (image[:, ::-1] if rng.random() < 0.5 else image), label


def ingest_inputs(folder: str | Path = ".") -> None:
    """The files the README's ``stoker ingest`` lines read: ``x.npy``, ``y.npy``,
    ``names.txt``, a ``photos/`` folder with a sub-folder per class, and two ETL8G files
    written from the published record layout."""
    import cv2

    from test_etl import KANJI, write_g

    folder = Path(folder)
    rng = np.random.default_rng(0)
    np.save(folder / "x.npy", rng.integers(0, 256, (20, 8, 8), dtype=np.uint8))
    np.save(folder / "y.npy", np.arange(20) % 2)
    (folder / "names.txt").write_text("even\nodd\n")
    for name in ("cat", "dog"):
        (folder / "photos" / name).mkdir(parents=True)
        for i in range(3):
            photo = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
            cv2.imwrite(str(folder / "photos" / name / f"{i}.jpg"), photo)
    (folder / "ETL8G").mkdir()
    for part in (1, 2):
        write_g(folder / "ETL8G" / f"ETL8G_0{part}", "ETL8G",
                [(code, rng.integers(0, 16, (127, 128)), i) for i, (code, _) in enumerate(KANJI)])
