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
