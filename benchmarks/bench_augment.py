"""Augmentation speed (issue #3): every operation of the question's recipe and the whole
recipe, µs per 64x64 image, stoker vs the question's PIL code vs albumentations 2.0.8.

One process, one thread for OpenCV (as in stoker's workers). Every implementation draws
its own random parameters per image. Each repeat times every implementation once over
the same images, in turn, so they share the machine's noise; the table gives the median
over repeats, after a warm-up pass. A fidelity column gives the mean absolute difference
from Pillow (grey levels, uint8) with the same parameters.

    python benchmarks/bench_augment.py [--images 512] [--repeats 7] [--no-write]
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cv2
import numpy as np
from PIL import Image, ImageFilter

from common import glyph_like_images, machine_line, write_results, write_section
from question import distort_sample, question_transform
from stoker import augment
from stoker.augment import functional as F

CHUNK = 128  # images per batch-path call: a batch of 256 split over 2 workers


@dataclass
class Row:
    name: str
    implementations: dict[str, Callable[[], None]]  # label -> one pass over the images
    images: int


def per_image(fn: Callable, images) -> Callable[[], None]:
    def run() -> None:
        for image in images:
            fn(image)
    return run


def batched(transform: augment.ImageTransform, stack: np.ndarray) -> Callable[[], None]:
    rng = np.random.default_rng(1)

    def run() -> None:
        for start in range(0, len(stack), CHUNK):
            part = stack[start:start + CHUNK]
            transform.transform_batch(part, (rng for _ in range(len(part))))
    return run


def albumentations_ops():
    import albumentations as A

    nearest = {"interpolation": cv2.INTER_NEAREST, "border_mode": cv2.BORDER_CONSTANT,
               "fill": 0}
    shear_deg = math.degrees(math.atan(0.2))
    return {
        "rotate": A.Rotate(limit=(-15, 15), p=1.0, **nearest),
        "shear": A.Affine(shear={"x": (-shear_deg, shear_deg), "y": (-shear_deg, shear_deg)},
                          p=1.0, interpolation=cv2.INTER_NEAREST,
                          border_mode=cv2.BORDER_CONSTANT, fill=0),
        "scale + translate": A.Affine(scale={"x": (25 / 64, 63 / 64), "y": (25 / 64, 63 / 64)},
                                      translate_percent=(-0.3, 0.3), p=1.0,
                                      interpolation=cv2.INTER_CUBIC,
                                      border_mode=cv2.BORDER_CONSTANT, fill=0),
        "gaussian blur": A.GaussianBlur(sigma_limit=(0.5, 1.2), blur_limit=0, p=1.0),
        "sharpen": A.Sharpen(alpha=(1.0, 1.0), lightness=(1.0, 1.0), p=1.0),
        "smooth": A.Blur(blur_limit=(3, 3), p=1.0),
    }


def pil_ops():
    """Each operation as the question writes it, on a PIL image, with its draws."""
    def rotate(img):
        return img.rotate(random.uniform(-15, 15))

    def shear(img):
        y_shear, x_shear = random.uniform(-0.2, 0.2), random.uniform(-0.2, 0.2)
        return img.transform(img.size, Image.AFFINE, (1, x_shear, 0, y_shear, 1, 0))

    def scale(img):
        size_x, size_y = random.randrange(25, 63), random.randrange(25, 63)
        resized = img.resize((size_x, size_y))
        background = Image.new("L", (64, 64))
        background.paste(resized, (random.randrange(0, 64 - size_x),
                                   random.randrange(0, 64 - size_y)))
        return background

    def sine(img):
        t_img = np.array(img)
        amplitude, w = t_img.shape[0] / 3.0, 2.0 / t_img.shape[1]
        factor = random.choice([-1, 1]) * random.uniform(0.15, 0.2)
        for i in range(t_img.shape[0]):
            t_img[:, i] = np.roll(t_img[:, i], int(factor * amplitude
                                                   * np.sin(-2 * np.pi * i * w)))
        return Image.fromarray(t_img)

    return {
        "rotate": rotate,
        "shear": shear,
        "scale + translate": scale,
        "sine warp": sine,
        "gaussian blur": lambda img: img.filter(
            ImageFilter.GaussianBlur(radius=random.uniform(0.5, 1.2))),
        "sharpen": lambda img: img.filter(ImageFilter.SHARPEN),
        "smooth": lambda img: img.filter(ImageFilter.SMOOTH),
    }


def stoker_ops():
    return {
        "rotate": augment.Rotate(),
        "shear": augment.Shear(),
        "scale + translate": augment.ScaleTranslate(),
        "sine warp": augment.SineWarp(),
        "gaussian blur": augment.GaussianBlur(),
        "sharpen": augment.Sharpen(),
        "smooth": augment.Smooth(),
    }


def fidelity(images: np.ndarray) -> dict[str, float]:
    """Mean absolute difference from Pillow, same parameters, over ``images`` (uint8)."""
    rng = np.random.default_rng(7)
    errors: dict[str, list[float]] = {}

    def record(name, ours, theirs):
        errors.setdefault(name, []).append(
            float(np.abs(ours.astype(np.int16) - np.asarray(theirs, np.int16)).mean()))

    for image in images:
        pil = Image.fromarray(image)
        angle = rng.uniform(-15, 15)
        record("rotate", F.rotate(image, angle), pil.rotate(angle))
        xs, ys = rng.uniform(-0.2, 0.2, 2)
        record("shear", F.shear(image, xs, ys),
               pil.transform(pil.size, Image.AFFINE, (1, xs, 0, ys, 1, 0)))
        sx, sy = (int(v) for v in rng.integers(25, 63, 2))
        left, top = int(rng.integers(0, 64 - sx)), int(rng.integers(0, 64 - sy))
        background = Image.new("L", (64, 64))
        background.paste(pil.resize((sx, sy)), (left, top))
        record("scale + translate", F.scale_translate(image, sx, sy, left, top), background)
        factor = float(rng.choice([-1, 1]) * rng.uniform(0.15, 0.2))
        rolled = image.copy()
        for i in range(64):
            rolled[:, i] = np.roll(rolled[:, i], int(factor * (64 / 3.0)
                                                     * np.sin(-2 * np.pi * i * (2.0 / 64))))
        record("sine warp", F.sine_warp(image, factor), rolled)
        radius = rng.uniform(0.5, 1.2)
        record("gaussian blur", F.gaussian_blur(image, radius),
               pil.filter(ImageFilter.GaussianBlur(radius=radius)))
        record("sharpen", F.sharpen(image), pil.filter(ImageFilter.SHARPEN))
        record("smooth", F.smooth(image), pil.filter(ImageFilter.SMOOTH))
    return {name: statistics.mean(values) for name, values in errors.items()}


def build_rows(x16: np.ndarray) -> list[Row]:
    x8 = np.rint(x16.astype(np.float32) * 255).astype(np.uint8)  # (N, 64, 64, 1)
    planes = np.ascontiguousarray(x8[..., 0])
    pil_images = [Image.fromarray(p) for p in planes]
    rng = np.random.default_rng(0)
    rows = []
    ours, theirs = stoker_ops(), pil_ops()
    try:
        album = albumentations_ops()
    except ImportError:  # the bench extra installs it; the table says when it is missing
        album = {}
    for name, transform in ours.items():
        implementations = {
            "question (PIL)": per_image(theirs[name], pil_images),
            "stoker, per image": per_image(lambda im, t=transform: t(im, rng), planes),
            "stoker, batch path": batched(transform, planes),
        }
        if name in album:
            implementations["albumentations 2.0.8"] = per_image(
                lambda im, t=album[name]: t(image=im)["image"], planes)
        rows.append(Row(name, implementations, len(planes)))

    recipe = augment.kanji_distort()
    whole = {
        "question (PIL)": per_image(lambda s: question_transform((s, 0)), x16),
        "question, distort_sample alone": per_image(distort_sample, pil_images),
        "stoker, per image": per_image(lambda im: recipe(im, rng), x8),
        "stoker, batch path": batched(recipe, x8),
        "stoker, per image, float16 in/out": per_image(lambda im: recipe(im, rng), x16),
        "stoker, batch path, float16 in/out": batched(recipe, x16),
    }
    if album:
        import albumentations as A
        pipeline = A.Compose([
            A.OneOf([album["rotate"], album["shear"], album["scale + translate"]], p=1.0),
            A.OneOf([album["gaussian blur"], album["sharpen"], album["smooth"]], p=1.0),
        ])
        whole["albumentations 2.0.8 (no sine warp)"] = per_image(
            lambda im: pipeline(image=im)["image"], x8)
    rows.append(Row("kanji_distort (whole recipe)", whole, len(x16)))
    return rows


def measure(row: Row, repeats: int) -> dict[str, float]:
    times: dict[str, list[float]] = {label: [] for label in row.implementations}
    for run in row.implementations.values():  # warm-up: caches, first calls
        run()
    for _ in range(repeats):
        for label, run in row.implementations.items():
            start = time.perf_counter()
            run()
            times[label].append((time.perf_counter() - start) / row.images * 1e6)
    return {label: statistics.median(values) for label, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()

    cv2.setNumThreads(1)
    random.seed(0)
    x16 = glyph_like_images(args.images)
    x8 = np.rint(x16[..., 0].astype(np.float32) * 255).astype(np.uint8)
    errors = fidelity(x8[:200])
    results = {}
    for row in build_rows(x16):
        results[row.name] = measure(row, args.repeats)
        print(row.name, {k: round(v, 1) for k, v in results[row.name].items()}, flush=True)

    lines = ["| operation | question (PIL) µs | stoker per image µs | stoker batch path µs "
             "| albumentations 2.0.8 µs | speed-up (batch path vs PIL) | MAE vs Pillow |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, values in results.items():
        if name.startswith("kanji"):
            continue
        album = values.get("albumentations 2.0.8")
        lines.append(
            f"| {name} | {values['question (PIL)']:.1f} | {values['stoker, per image']:.1f} "
            f"| {values['stoker, batch path']:.1f} "
            f"| {'n/a' if album is None else f'{album:.1f}'} "
            f"| {values['question (PIL)'] / values['stoker, batch path']:.1f}x "
            f"| {errors[name]:.4f} |")
    whole = results["kanji_distort (whole recipe)"]
    base = whole["question (PIL)"]
    recipe_lines = ["| implementation | µs per image | vs the question's transform |",
                    "|---|---:|---:|"]
    for label, value in whole.items():
        recipe_lines.append(f"| {label} | {value:.1f} | {base / value:.1f}x |")
    text = "\n".join([
        "## Augmentation (`benchmarks/bench_augment.py`)",
        "",
        f"Machine: {machine_line()}. {args.images} glyph-like 64x64 images, one process, "
        f"OpenCV on one thread; median over {args.repeats} repeats after a warm-up pass, "
        "every implementation timed in turn within each repeat. Every row draws its own "
        f"random parameters per image. The batch path is one call per {CHUNK} images "
        "(a batch of 256 split over 2 workers), as the loader makes it. MAE: mean absolute "
        "difference from Pillow in grey levels, same parameters, 200 images.",
        "",
        "### The whole recipe (the question's v2 `distort_sample`)",
        "",
        "The question's transform includes its float16 -> uint8 -> PIL -> numpy conversions "
        "(`benchmarks/question.py`); stoker's rows take uint8 HxWx1 images unless marked "
        "float16.",
        "",
        *recipe_lines,
        "",
        "### Each operation",
        "",
        "albumentations has no sine warp; its 'sharpen' and 'smooth' are the closest "
        "operations (`Sharpen`, `Blur(3)`), not the same kernels.",
        "",
        *lines,
    ])
    print(text)
    if args.no_write:
        return
    write_results("augment", {"images": args.images, "results": results,
                              "mae_vs_pillow": errors})
    write_section("augment", text)


if __name__ == "__main__":
    main()
