"""The question's own code (../shared/seed/question.txt, second version), unchanged in
substance: its ``distort_sample`` (PIL) and its conversions around it. Benchmarks and
tests run it as the real workload; it draws from ``random`` (a legacy transform)."""

from __future__ import annotations

import math
import random

import numpy as np
from PIL import Image as PImage
from PIL import ImageFilter

__all__ = ["distort_sample", "question_transform"]


def distort_sample(img: PImage.Image) -> tuple[PImage.Image, tuple, tuple]:
    """Distort the given image randomly (the question's v2, verbatim in behaviour)."""
    offset, scale = (0, 0), (64, 64)

    t = random.choice(["sine", "rotate", "shear", "scale"])
    f = random.choice(["blur", "sharpen", "smooth"])

    if "rotate" in t:
        img = img.rotate(random.uniform(-15, 15))

    if "shear" in t:
        y_shear = random.uniform(-0.2, 0.2)
        x_shear = random.uniform(-0.2, 0.2)
        img = img.transform(img.size, PImage.AFFINE, (1, x_shear, 0, y_shear, 1, 0))

    if "scale" in t:
        size_x = random.randrange(25, 63)
        size_y = random.randrange(25, 63)
        scale = (size_x, size_y)
        offset = (math.ceil((64 - size_x) / 2), math.ceil((64 - size_y) / 2))
        img = img.resize(scale)
        background = PImage.new("L", (64, 64))
        trans_x = random.randrange(0, math.floor(64 - size_x))
        trans_y = random.randrange(0, math.floor(64 - size_y))
        offset = (trans_x, trans_y)
        background.paste(img, offset)
        img = background

    if "sine" in t:
        t_img = np.array(img)
        A = t_img.shape[0] / 3.0
        w = 2.0 / t_img.shape[1]
        shift_factor = random.choice([-1, 1]) * random.uniform(0.15, 0.2)

        def shift(x):
            return shift_factor * A * np.sin(-2 * np.pi * x * w)

        for i in range(t_img.shape[0]):
            t_img[:, i] = np.roll(t_img[:, i], int(shift(i)))
        img = PImage.fromarray(t_img)

    if "blur" in f:
        img = img.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.5, 1.2)))
    if "sharpen" in f:
        img = img.filter(ImageFilter.SHARPEN)
    if "smooth" in f:
        img = img.filter(ImageFilter.SMOOTH)

    return img, offset, scale


def question_transform(sample: tuple[np.ndarray, np.integer]) -> tuple[np.ndarray, np.integer]:
    """The question's per-sample work: float16 [0, 1] -> uint8 PIL -> distort -> array."""
    base_img, label = sample
    img = PImage.fromarray(np.uint8(base_img.reshape(64, 64) * 255))
    img, *_ = distort_sample(img)
    return np.array(img).reshape(64, 64, 1), label


# -- The question's hand-made fix: RawArray + Pool.starmap over slices of each batch ----

_shared: dict = {}


def _pool_initializer(x_shared, y_shared) -> None:
    _shared["x"], _shared["y"] = x_shared, y_shared


def _generator_func(start_index, end_index, x_shape, y_shape):
    X, Y = [], []
    x_loc = np.frombuffer(_shared["x"], dtype="float16").reshape(x_shape)
    y_loc = np.frombuffer(_shared["y"], dtype="b").reshape(y_shape)
    for i in range(start_index, end_index):
        base_img = x_loc[i]
        img = PImage.fromarray(np.uint8(base_img.reshape(64, 64) * 255))
        img, *_ = distort_sample(img)
        X.append(np.array(img).reshape(64, 64, 1))  # the question appends it twice
        Y.append(y_loc[i])
        X.append(np.array(img).reshape(64, 64, 1))
        Y.append(y_loc[i])
    return X, Y


class QuestionPoolGenerator:
    """The question's v2 ``DataGenerator`` minus Keras: same slicing, same casts, same pool.

    Kept faithful on purpose, bugs included: int8 labels, float16 outputs, the remainder
    of ``batch_size // processes`` dropped, each augmented image twice; ``close()`` is
    ours (the question never closes its pool).
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, processes: int):
        import multiprocessing as mp

        self.x_shape, self.y_shape = x.shape, y.shape
        x_shared = mp.RawArray("h", x.size)  # float16 bits, as in the question
        np.frombuffer(x_shared, dtype=np.float16)[:] = x.ravel()
        y_shared = mp.RawArray("b", y.size)
        np.frombuffer(y_shared, dtype="b")[:] = y.ravel()
        self.num_samples = len(x)
        self.batch_size = batch_size // 2
        self.processes = processes
        self.pool = mp.Pool(processes, initializer=_pool_initializer, initargs=(x_shared, y_shared))

    def __len__(self) -> int:
        return self.num_samples // self.batch_size

    def augmented_per_batch(self) -> int:
        return (self.batch_size // self.processes) * self.processes

    def __getitem__(self, index: int):
        slice_size = self.batch_size // self.processes
        current = index * self.batch_size
        arguments = [
            (current + i * slice_size, current + (i + 1) * slice_size, self.x_shape, self.y_shape)
            for i in range(self.processes)
        ]
        results = self.pool.starmap(_generator_func, arguments)
        X = [imgs for imgs, _ in results]
        Y = [labels for _, labels in results]
        return np.concatenate(X).astype(np.float16), np.concatenate(Y).astype(np.float16)

    def close(self) -> None:
        self.pool.close()
        self.pool.join()
