"""stoker.augment: fidelity to Pillow, dtype/shape handling, determinism (per image and per
batch), the question's distribution, composition, errors, and use inside the Loader."""

from __future__ import annotations

import math
import random

import cv2
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter, ImageFont

import stoker
from stoker import augment
from stoker.augment import functional as F


def glyph_images(n: int, seed: int = 0, size: int = 64) -> np.ndarray:
    """uint8 (n, size, size) images: a character from a real font plus random strokes,
    bright ink on black, like the question's binarised kanji."""
    import matplotlib

    font = ImageFont.truetype(
        str(matplotlib.get_data_path()) + "/fonts/ttf/DejaVuSans.ttf", size=int(size * 0.7)
    )
    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size), np.uint8)
    for i in range(n):
        image = Image.new("L", (size, size))
        draw = ImageDraw.Draw(image)
        draw.text((size * 0.15, size * 0.05), chr(int(rng.integers(0x41, 0x5B))), fill=255,
                  font=font)
        for _ in range(int(rng.integers(1, 4))):
            x0, y0, x1, y1 = rng.integers(6, size - 6, 4).tolist()
            draw.line((x0, y0, x1, y1), fill=int(rng.integers(128, 256)),
                      width=int(rng.integers(2, 5)))
        out[i] = np.asarray(image)
    return out


@pytest.fixture(scope="module")
def glyphs() -> np.ndarray:
    return glyph_images(60)


def mae(a, b) -> float:
    return float(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).mean())


# -- Fidelity against Pillow, operation by operation ----------------------------------------


def test_sine_warp_is_exactly_the_questions_loop(glyphs):
    rng = np.random.default_rng(0)
    for image in glyphs:
        factor = float(rng.choice([-1, 1]) * rng.uniform(0.15, 0.2))
        expected = image.copy()
        amplitude, w = expected.shape[0] / 3.0, 2.0 / expected.shape[1]
        for i in range(expected.shape[0]):
            expected[:, i] = np.roll(expected[:, i],
                                     int(factor * amplitude * np.sin(-2 * np.pi * i * w)))
        np.testing.assert_array_equal(F.sine_warp(image, factor), expected)


def test_rotate_matches_pil_rotate(glyphs):
    # OpenCV's nearest sampling works in 1/1024 pixel fixed point, Pillow in float: a
    # pixel whose source lies within 1/1024 of a boundary may come from the neighbour.
    rng = np.random.default_rng(1)
    errors = []
    for image in glyphs:
        angle = rng.uniform(-15, 15)
        errors.append(mae(F.rotate(image, angle), Image.fromarray(image).rotate(angle)))
    assert np.mean(errors) < 0.05 and max(errors) < 0.5


def test_shear_matches_pil_affine_transform(glyphs):
    rng = np.random.default_rng(2)
    errors = []
    for image in glyphs:
        xs, ys = rng.uniform(-0.2, 0.2, 2)
        expected = Image.fromarray(image).transform((64, 64), Image.AFFINE, (1, xs, 0, ys, 1, 0))
        errors.append(mae(F.shear(image, xs, ys), expected))
    assert np.mean(errors) < 0.05 and max(errors) < 0.5


def test_scale_translate_matches_pil_resize_and_paste(glyphs):
    rng = np.random.default_rng(3)
    worst = 0
    errors = []
    for image in glyphs:
        sx, sy = (int(v) for v in rng.integers(25, 63, 2))
        left, top = int(rng.integers(0, 64 - sx)), int(rng.integers(0, 64 - sy))
        expected = Image.new("L", (64, 64))
        expected.paste(Image.fromarray(image).resize((sx, sy)), (left, top))
        ours = F.scale_translate(image, sx, sy, left, top)
        errors.append(mae(ours, expected))
        worst = max(worst, int(np.abs(ours.astype(int) - np.asarray(expected, int)).max()))
    # Pillow's coefficients and pass order, float32 products: at most one grey level off.
    assert np.mean(errors) < 0.01 and worst <= 1


@pytest.mark.parametrize("radius", [0.5, 0.8, 1.2, 2.0])
def test_gaussian_blur_matches_pil_gaussian_blur(glyphs, radius):
    # Pillow rounds to uint8 after each of its six box passes; one rounding here.
    errors, worst = [], 0
    for image in glyphs:
        expected = Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius=radius))
        ours = F.gaussian_blur(image, radius)
        errors.append(mae(ours, expected))
        worst = max(worst, int(np.abs(ours.astype(int) - np.asarray(expected, int)).max()))
    assert np.mean(errors) < 0.15 and worst <= 2


def test_gaussian_kernel_has_pillows_sigma():
    for radius in (0.5, 0.9, 1.2, 1.7, 3.0):
        kernel = F.gaussian_kernel(radius).astype(np.float64)
        offsets = np.arange(len(kernel)) - len(kernel) // 2
        assert kernel.sum() == pytest.approx(1.0, abs=1e-6)
        assert (offsets**2 @ kernel) == pytest.approx(radius**2, rel=1e-5)


@pytest.mark.parametrize(("ours", "theirs"), [(F.sharpen, ImageFilter.SHARPEN),
                                              (F.smooth, ImageFilter.SMOOTH)])
def test_sharpen_and_smooth_equal_pil_filters(glyphs, ours, theirs):
    for image in glyphs:
        np.testing.assert_array_equal(ours(image), np.asarray(Image.fromarray(image)
                                                              .filter(theirs)))


# -- Dtypes and shapes ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.float16, np.float32, np.float64])
@pytest.mark.parametrize("shape", [(64, 64), (64, 64, 1), (64, 64, 3), (48, 80)])
def test_every_transform_keeps_dtype_and_shape(dtype, shape):
    rng = np.random.default_rng(4)
    base = rng.integers(0, 256, shape).astype(np.uint8)
    image = base if dtype == np.uint8 else (base / 255).astype(dtype)
    transforms = [augment.Rotate(), augment.Shear(), augment.ScaleTranslate(),
                  augment.SineWarp(), augment.GaussianBlur(), augment.Sharpen(),
                  augment.Smooth(), augment.kanji_distort()]
    for transform in transforms:
        out = transform(image, np.random.default_rng(5))
        assert out.dtype == image.dtype and out.shape == image.shape, transform
        if dtype != np.uint8:
            assert 0.0 <= out.min() and out.max() <= 1.0, transform


@pytest.mark.parametrize("op", ["rotate", "shear", "scale", "sine", "blur", "sharpen", "smooth"])
def test_float_images_agree_with_uint8_images(glyphs, op):
    calls = {
        "rotate": lambda im: F.rotate(im, 7.5),
        "shear": lambda im: F.shear(im, 0.1, -0.15),
        "scale": lambda im: F.scale_translate(im, 40, 31, 5, 20),
        "sine": lambda im: F.sine_warp(im, -0.17),
        "blur": lambda im: F.gaussian_blur(im, 0.9),
        "sharpen": F.sharpen,
        "smooth": F.smooth,
    }
    for image in glyphs[:10]:
        as_uint8 = calls[op](image).astype(np.float32) / 255
        as_float = calls[op](image.astype(np.float32) / 255)
        # uint8 rounds once per pass; scaling makes two passes.
        assert np.abs(as_float - as_uint8).max() <= (2 if op == "scale" else 1) / 255 + 1e-6


def test_input_images_are_never_written(glyphs):
    image = glyphs[0].copy()
    image.setflags(write=False)  # as a sample read from the loader's shared memory
    augment.kanji_distort()(image, np.random.default_rng(0))
    for transform in (augment.Sharpen(), augment.SineWarp(), augment.ScaleTranslate()):
        transform(image, np.random.default_rng(0))
    np.testing.assert_array_equal(image, glyphs[0])


# -- Determinism: per image and per batch ----------------------------------------------------


def test_same_rng_state_gives_the_same_image(glyphs):
    recipe = augment.kanji_distort()
    for seed in range(20):
        first = recipe(glyphs[seed], np.random.default_rng(seed))
        second = recipe(glyphs[seed], np.random.default_rng(seed))
        np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("dtype", [np.uint8, np.float16, np.float32])
@pytest.mark.parametrize("channel_axis", [False, True])
def test_batch_path_is_bit_identical_to_one_image_at_a_time(glyphs, dtype, channel_axis):
    images = glyphs if dtype == np.uint8 else (glyphs / 255).astype(dtype)
    if channel_axis:
        images = images[..., None]
    transforms = [augment.kanji_distort(), augment.SineWarp(), augment.Sharpen(),
                  augment.Smooth(), augment.RandomApply(augment.Rotate(), p=0.5),
                  augment.OneOf([augment.Shear(), augment.GaussianBlur()], weights=[1, 3]),
                  augment.Compose([augment.Lambda(_invert), augment.ScaleTranslate()])]
    for transform in transforms:
        one_by_one = np.stack([transform(image, np.random.default_rng(i))
                               for i, image in enumerate(images)])
        batched = transform.transform_batch(
            images, (np.random.default_rng(i) for i in range(len(images))))
        assert batched.dtype == images.dtype and batched.shape == images.shape
        np.testing.assert_array_equal(batched, one_by_one, err_msg=repr(transform))


def _invert(image, rng):
    top = 255 if image.dtype == np.uint8 else 1.0
    return (top - image) if rng.random() < 0.5 else image.copy()


# -- The question's distribution -------------------------------------------------------------


def test_kanji_distort_draws_the_questions_branches_and_ranges():
    recipe = augment.kanji_distort()
    rng = np.random.default_rng(2024)
    n = 12000
    geometry, filters = np.zeros(4), np.zeros(3)
    angles, shears, sizes, offsets, factors, radii = [], [], [], [], [], []
    for _ in range(n):
        (geo, geo_params), (flt, flt_params) = recipe.draw(rng, (64, 64))
        geometry[geo] += 1
        filters[flt] += 1
        if geo == 0:
            factors.append(geo_params)
        elif geo == 1:
            angles.append(geo_params)
        elif geo == 2:
            shears.extend(geo_params)
        else:
            width, height, left, top = geo_params
            sizes += [width, height]
            offsets += [(left, 64 - width), (top, 64 - height)]
        if flt == 0:
            radii.append(flt_params)
    # One of four, then one of three, each equally likely (binomial, 5 sigma).
    assert np.all(np.abs(geometry / n - 1 / 4) < 5 * math.sqrt(0.25 * 0.75 / n))
    assert np.all(np.abs(filters / n - 1 / 3) < 5 * math.sqrt(2 / 9 / n))
    assert -15 <= min(angles) < -14.9 and 14.9 < max(angles) <= 15
    assert -0.2 <= min(shears) < -0.199 and 0.199 < max(shears) <= 0.2
    # random.randrange(25, 63): every size 25..62, uniformly.
    counts = np.bincount(sizes, minlength=64)[25:63]
    assert set(sizes) == set(range(25, 63))
    assert counts.min() > 0.7 * counts.mean() and counts.max() < 1.3 * counts.mean()
    # random.randrange(0, 64 - size): the image stays inside, every offset possible.
    assert all(0 <= offset < limit for offset, limit in offsets)
    assert {offset for offset, limit in offsets if limit == 30} == set(range(30))
    magnitudes = np.abs(factors)
    assert 0.15 <= magnitudes.min() < 0.151 and 0.199 < magnitudes.max() <= 0.2
    assert abs(np.mean(np.sign(factors))) < 0.1
    assert 0.5 <= min(radii) < 0.51 and 1.19 < max(radii) <= 1.2


def test_question_and_stoker_recipes_change_images_alike(glyphs, question):
    """Same distribution, same kernels: the mean change per image (over many random
    draws) agrees between the question's PIL code and kanji_distort."""
    random.seed(0)
    rng = np.random.default_rng(0)
    recipe = augment.kanji_distort()
    theirs, ours = [], []
    for _ in range(10):
        for image in glyphs:
            pil_out, *_ = question.distort_sample(Image.fromarray(image))
            theirs.append(mae(np.asarray(pil_out), image))
            ours.append(mae(recipe(image, rng), image))
    assert np.mean(ours) == pytest.approx(np.mean(theirs), rel=0.08)


# -- Composition and errors ----------------------------------------------------------------


def test_one_of_follows_its_weights_and_random_apply_its_probability():
    one_of = augment.OneOf([augment.Sharpen(), augment.Smooth(), augment.SineWarp()],
                           weights=[1, 0, 3])
    rng = np.random.default_rng(0)
    picks = np.bincount([one_of.draw(rng, (8, 8))[0] for _ in range(8000)], minlength=3)
    assert picks[1] == 0 and abs(picks[0] / 8000 - 0.25) < 0.025
    maybe = augment.RandomApply(augment.Sharpen(), p=0.3)
    applied = np.mean([maybe.draw(rng, (8, 8))[0] for _ in range(8000)])
    assert abs(applied - 0.3) < 0.025


def test_samples_tuples_and_dicts_keep_everything_but_the_image(glyphs):
    recipe = augment.kanji_distort()
    image = glyphs[0]
    expected = recipe(image, np.random.default_rng(9))
    out_tuple = recipe((image, np.int32(7), "meta"), np.random.default_rng(9))
    out_dict = recipe({"image": image, "label": 3}, np.random.default_rng(9))
    np.testing.assert_array_equal(out_tuple[0], expected)
    assert out_tuple[1:] == (7, "meta")
    np.testing.assert_array_equal(out_dict["image"], expected)
    assert out_dict["label"] == 3


@pytest.mark.parametrize(("make", "message"), [
    (lambda: augment.Rotate(degrees=(10, -10)), "low <= high"),
    (lambda: augment.Rotate(degrees=15), "pair"),
    (lambda: augment.GaussianBlur(radius=(-1, 1)), "below 0"),
    (lambda: augment.ScaleTranslate(size=(0.5, 1.5)), "at most 1"),
    (lambda: augment.OneOf([augment.Sharpen()], weights=[1, 2]), "weights"),
    (lambda: augment.OneOf([augment.Sharpen()], weights=[0]), "not all 0"),
    (lambda: augment.OneOf([]), "at least one"),
    (lambda: augment.Compose(augment.Sharpen()), "list of transforms"),
    (lambda: augment.RandomApply(augment.Sharpen(), p=1.5), "[0, 1]"),
    (lambda: augment.Compose([42]), "callable"),
])
def test_bad_arguments_are_refused_at_construction(make, message):
    with pytest.raises((TypeError, ValueError), match=message.replace("[", r"\[")
                       .replace("]", r"\]")):
        make()


@pytest.mark.parametrize(("image", "error", "message"), [
    (np.zeros((64, 64), np.int32), TypeError, "uint8 or float"),
    (np.zeros((2, 64, 64, 1), np.uint8), ValueError, "HxW or HxWxC"),
    (np.zeros((64, 64, 7), np.uint8), ValueError, "C <= 4"),
    ([[0, 1], [2, 3]], TypeError, "expects an image array"),
    ("an image", TypeError, "expects an image array"),
])
def test_bad_images_get_a_clear_error(image, error, message):
    with pytest.raises(error, match=message):
        augment.kanji_distort()(image, np.random.default_rng(0))


def test_lambda_returning_the_wrong_shape_is_named():
    def crop(image, rng):
        return image[:10]

    with pytest.raises(ValueError, match="'crop' must return an image of shape"):
        augment.Compose([augment.Lambda(crop)])(np.zeros((16, 16), np.uint8),
                                                np.random.default_rng(0))


# -- Inside the Loader ---------------------------------------------------------------------


def _batches(loader):
    with loader:
        return [tuple(np.copy(part) for part in batch) for batch in loader]


def test_loader_batches_are_identical_with_and_without_the_batch_path(glyphs):
    x = glyphs[..., None]
    y = np.arange(len(x), dtype=np.int32)
    recipe = augment.kanji_distort()
    source = stoker.from_arrays(x, y)
    try:
        batched = _batches(stoker.Loader(source, batch_size=16, transform=recipe, seed=3))
        one_by_one = _batches(stoker.Loader(
            source, batch_size=16, transform=lambda s, rng: recipe(s, rng), seed=3))
        in_workers = _batches(stoker.Loader(source, batch_size=16, transform=recipe, seed=3,
                                            workers=2))
    finally:
        source.release()
    for a, b, c in zip(batched, one_by_one, in_workers, strict=True):
        for left, middle, right in zip(a, b, c, strict=True):
            np.testing.assert_array_equal(left, middle)
            np.testing.assert_array_equal(left, right)
    assert batched[0][0].dtype == np.uint8 and batched[0][1].dtype == np.int32


def test_a_failing_image_in_the_batch_path_is_named(glyphs):
    def explode_on_dark(image, rng):
        if image.max() == 0:
            raise RuntimeError("empty image")
        return image

    x = glyphs[:20].copy()
    x[13] = 0
    recipe = augment.Compose([augment.SineWarp(), augment.Lambda(explode_on_dark)])
    with stoker.Loader(stoker.from_arrays(x, np.arange(20)), batch_size=8, transform=recipe,
                       shuffle=False) as loader, pytest.raises(stoker.TransformError) as info:
        list(loader)
    assert info.value.index == 13
    assert isinstance(info.value.__cause__, RuntimeError)


def _opencv_threads(sample, rng):
    return sample[0], np.int32(cv2.getNumThreads())


def test_workers_run_opencv_on_one_thread(glyphs):
    x = glyphs[:32, ..., None]
    with stoker.Loader(stoker.from_arrays(x, np.arange(32)), batch_size=8, workers=2,
                       transform=_opencv_threads) as loader:
        threads = np.concatenate([labels for _, labels in loader])
    assert set(threads.tolist()) == {1}
