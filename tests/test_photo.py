"""stoker.augment.photo: encoded images decoded in the workers, cropped and resized to one
size, bit-identical for any executor and after a resume; each kernel against its
definition; corrupt records named."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

import stoker
from stoker import store
from stoker.augment import (
    CenterCrop,
    Compose,
    Decode,
    HorizontalFlip,
    Normalize,
    OneOf,
    RandomApply,
    RandomResizedCrop,
    Resize,
    Rotate,
    VerticalFlip,
)
from stoker.executors._produce import _batch_capable
from stoker.plan import Purpose, epoch_key
from test_batch_transforms import EXECUTORS  # inline, fork, forkserver 2 and 4, spawn
from test_many import assert_same, epochs_of

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def photo(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth RGB picture with some texture: what JPEG is made for."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width, y / height, (x + y) / (width + height)], axis=-1) * 200
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def encoded(count: int, seed: int = 0) -> list[bytes]:
    """``count`` JPEG and PNG files of differing sizes and shapes (portrait, landscape)."""
    records = []
    for i in range(count):
        image = photo(24 + (i * 7) % 41, 24 + (i * 11) % 53, seed + i)
        ext = ".png" if i % 5 == 4 else ".jpg"
        records.append(cv2.imencode(ext, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes())
    return records


def recipe(size: int = 16) -> Compose:
    return Compose([Decode(), RandomResizedCrop(size), HorizontalFlip(), Normalize(MEAN, STD)])


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    path = tmp_path_factory.mktemp("photos") / "photos.stoker"
    records = encoded(90)
    store.save(path, (records, np.arange(90) % 3), classes=["a", "b", "c"])
    return store.open(path)


def expected_epoch(source, transform, *, seed, epoch, batch_size=16):
    """The plan's batches, each sample transformed with its keyed generator, here,
    without a loader."""
    with stoker.Loader(source, batch_size=batch_size, seed=seed) as plain:
        plan = plain.epoch_batches(epoch)
    key = epoch_key(seed, epoch, Purpose.SAMPLES)
    batches = []
    for indices in plan:
        outputs = [transform(source[int(i)], np.random.Generator(np.random.Philox(
            key=key, counter=[0, 0, int(i), 0]))) for i in indices]
        batches.append((np.stack([image for image, _ in outputs]),
                        np.array([label for _, label in outputs])))
    return batches


# -- the pipeline, over every executor ---------------------------------------------------


@pytest.mark.parametrize("executor", EXECUTORS)
def test_an_encoded_store_gives_the_plans_batches_for_any_executor(photos, executor):
    transform = recipe()
    expected = [expected_epoch(photos, transform, seed=3, epoch=e) for e in (0, 1)]
    assert expected[0][0][0].shape == (16, 16, 16, 3)
    assert expected[0][0][0].dtype == np.float32
    with stoker.Loader(photos, batch_size=16, transform=transform, seed=3, **executor) as loader:
        for mine, theirs in zip(epochs_of(loader), expected, strict=True):
            assert_same(mine, theirs)


@pytest.mark.parametrize("executor", EXECUTORS[:3])
def test_a_mid_epoch_resume_continues_where_it_stopped(photos, executor):
    options = dict(batch_size=16, transform=recipe(), seed=8, **executor)
    expected = expected_epoch(photos, recipe(), seed=8, epoch=1)
    with stoker.Loader(photos, **options) as loader:
        list(loader)
        epoch = iter(loader)
        next(epoch), next(epoch)
        state = loader.state_dict()
    with stoker.Loader(photos, **options) as loader:
        loader.load_state_dict(state)
        assert_same([(x.copy(), y.copy()) for x, y in loader], expected[2:])


def test_every_record_is_decoded_once_per_epoch(photos):
    def tagged(sample, rng):
        record, _ = sample
        image = Decode().decode(record)
        return cv2.resize(image, (8, 8), interpolation=cv2.INTER_AREA), np.int64(len(record))

    lengths = sorted(int(n) for n in photos.arrays[0].sizes)
    with stoker.Loader(photos, batch_size=7, transform=tagged, workers=2, seed=1) as loader:
        for _ in range(2):
            assert sorted(int(n) for _, y in loader for n in y) == lengths


def test_encoded_stores_mix_and_concatenate(photos, tmp_path):
    other = store.open(store.save(tmp_path / "more", (encoded(20, seed=5), np.arange(20) % 3),
                                  classes=["a", "b", "c"]))
    for source in (stoker.concat([photos, other]),
                   stoker.mix([photos, other], weights=[1, 1], length=50, seed=0)):
        with stoker.Loader(source, batch_size=16, transform=recipe(), workers=2) as loader:
            assert sum(len(x) for x, _ in loader) == len(source)


@pytest.mark.slow
def test_keras_fit_trains_on_an_encoded_store(photos):
    keras = pytest.importorskip("keras")
    with stoker.Loader(photos, batch_size=15, transform=recipe(12), seed=0, workers=2,
                       drop_remainder=True) as loader:
        model = keras.Sequential([keras.Input((12, 12, 3)), keras.layers.Flatten(),
                                  keras.layers.Dense(3)])
        model.compile(keras.optimizers.Adam(0.01),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        history = model.fit(loader.keras(), epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2
    assert np.isfinite(history.history["loss"]).all()


# -- Decode -------------------------------------------------------------------------------


def test_decode_gives_rgb_or_grey_pixels_of_any_format():
    image = photo(30, 41, 0)
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    for ext in (".jpg", ".png", ".webp", ".bmp", ".tiff", ".ppm"):
        record = cv2.imencode(ext, bgr)[1]
        pixels = Decode().decode(record)
        truth = cv2.cvtColor(cv2.imdecode(record, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(pixels, truth)
        if ext in (".png", ".bmp", ".tiff", ".ppm"):  # lossless
            np.testing.assert_array_equal(pixels, image)
        grey = Decode("grey").decode(record.tobytes())  # bytes as well as arrays
        assert grey.shape == (30, 41, 1) and grey.dtype == np.uint8
    sample = (cv2.imencode(".png", bgr)[1], 7)
    out = Decode()(sample, np.random.default_rng(0))
    assert out[1] == 7 and out[0].shape == (30, 41, 3)


def test_a_record_that_does_not_decode_says_what_it_is():
    record = cv2.imencode(".jpg", photo(40, 40, 1))[1]
    png = cv2.imencode(".png", photo(40, 40, 1))[1]
    cases = {
        "no end marker after its last scan: truncated": record[: len(record) // 2],
        "no IEND chunk: truncated": png[: len(png) // 2],
        "refused it": np.concatenate([png[:60], png[-12:]]),
        "it is empty": np.zeros(0, np.uint8),
        "not those of a JPEG, PNG": np.frombuffer(b"hello, world" * 10, np.uint8),
    }
    for why, bad in cases.items():
        with pytest.raises(ValueError, match=f"of {len(bad)} bytes.*does not decode: .*{why}"):
            Decode().decode(bad)
    # A JPEG cut in its scan, whose EXIF thumbnail's end marker is all that is left.
    thumbnail = cv2.imencode(".jpg", photo(16, 16, 2))[1].tobytes()
    app1 = b"\xff\xe1" + (len(thumbnail) + 2).to_bytes(2, "big") + thumbnail
    main = record.tobytes()
    cut = np.frombuffer(main[:2] + app1 + main[2:len(main) // 2], np.uint8)
    with pytest.raises(ValueError, match="does not decode"):  # quick check, then OpenCV's
        Decode().decode(cut)
    whole = np.frombuffer(main[:2] + app1 + main[2:], np.uint8)
    assert Decode().decode(whole).shape == (40, 40, 3)
    # Bytes after the image (a phone's motion photo: a video after the JPEG), start-of-
    # scan-like pairs included, are the file's business: the image decodes.
    trailer = np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes()
    motion = np.frombuffer(main + b"\xff\xda" + trailer + b"\xff\xda\x00\x08", np.uint8)
    assert Decode().decode(motion).shape == (40, 40, 3)
    from stoker.augment.photo import undecodable

    assert undecodable(motion, thorough=True) == ""
    assert "truncated" in undecodable(cut, thorough=True)
    with pytest.raises(TypeError, match=r"already pixels: leave Decode out"):
        Decode().decode(photo(8, 8, 0))
    with pytest.raises(ValueError, match="mode must be 'rgb' or 'grey'"):
        Decode("cmyk")


@pytest.mark.parametrize("workers", [0, 2])
def test_a_corrupt_record_in_a_store_names_the_sample(tmp_path, workers):
    records = encoded(12)
    records[9] = records[9][:100]
    source = store.open(store.save(tmp_path / "s", (records, np.arange(12))))
    with stoker.Loader(source, batch_size=4, transform=recipe(), workers=workers,
                       shuffle=False) as loader:
        with pytest.raises(stoker.TransformError, match=r"sample 9 failed in the transform: "
                                                        r"ValueError: an encoded record of 100"):
            list(loader)


def test_records_left_encoded_or_decoded_to_many_sizes_get_the_fix(photos):
    for transform, fix in ((None, r"encoded records .*Decode\(\), RandomResizedCrop"),
                           (Decode(), r"images of differing sizes: .* RandomResizedCrop")):
        with stoker.Loader(photos, batch_size=8, transform=transform, shuffle=False) as loader:
            with pytest.raises(stoker.TransformError, match=fix):
                list(loader)


# -- the crops and resizes ----------------------------------------------------------------


def test_random_resized_crop_draws_within_its_scale_and_ratio():
    crop = RandomResizedCrop(20, scale=(0.2, 0.6), ratio=(0.5, 2.0))
    rng = np.random.default_rng(0)
    for shape in ((100, 80, 3), (37, 300, 3), (300, 37, 1)):
        for _ in range(300):
            top, left, h, w = crop.draw(rng, shape)
            assert 0 <= top <= shape[0] - h and 0 <= left <= shape[1] - w
            area = (h * w) / (shape[0] * shape[1])
            fitted = area <= 0.6 + 0.05 and 0.5 - 0.1 <= w / h <= 2.0 + 0.1
            central = (top, left) == ((shape[0] - h) // 2, (shape[1] - w) // 2)
            assert fitted or central, (shape, top, left, h, w)
            if fitted and not central:  # a draw that fitted: its area within the scale
                assert 0.2 - 0.05 <= area, (shape, h, w)
    out = crop.transform_image(photo(100, 80, 2), np.random.default_rng(1))
    assert out.shape == (20, 20, 3) and out.dtype == np.uint8
    grey = RandomResizedCrop((10, 14)).transform_image(photo(50, 60, 2)[..., :1],
                                                       np.random.default_rng(1))
    assert grey.shape == (10, 14, 1)
    # The same generator state gives the same crop; the crop is the image's own pixels.
    image = photo(64, 64, 3)
    same = [RandomResizedCrop(64, scale=(0.25, 0.25), ratio=(1, 1)).transform_image(
        image, np.random.default_rng(5)) for _ in range(2)]
    np.testing.assert_array_equal(*same)
    top, left, h, w = RandomResizedCrop(64, scale=(0.25, 0.25), ratio=(1, 1)).draw(
        np.random.default_rng(5), image.shape)
    assert (h, w) == (32, 32)
    np.testing.assert_array_equal(same[0], cv2.resize(image[top:top + 32, left:left + 32],
                                                      (64, 64), interpolation=cv2.INTER_LINEAR))


def test_a_crop_that_never_fits_falls_back_to_the_centre_within_the_ratio():
    crop = RandomResizedCrop(8, scale=(0.9, 1.0), ratio=(1.0, 1.0))
    top, left, h, w = crop.draw(np.random.default_rng(0), (10, 200, 3))  # far too wide
    assert (h, w) == (10, 10) and (top, left) == (0, 95)


def test_resize_center_crop_and_normalize_are_what_they_say():
    image = photo(60, 90, 4)
    assert Resize(30).transform_image(image, None).shape == (30, 45, 3)
    assert Resize(30).transform_image(image.transpose(1, 0, 2), None).shape == (45, 30, 3)
    np.testing.assert_array_equal(Resize((20, 25)).transform_image(image, None),
                                  cv2.resize(image, (25, 20), interpolation=cv2.INTER_AREA))
    np.testing.assert_array_equal(Resize((120, 180)).transform_image(image, None),
                                  cv2.resize(image, (180, 120), interpolation=cv2.INTER_LINEAR))
    np.testing.assert_array_equal(CenterCrop((20, 30)).transform_image(image, None),
                                  image[20:40, 30:60])
    with pytest.raises(ValueError, match=r"smaller; put Resize\(100\) before it"):
        CenterCrop(100).transform_image(image, None)
    out = Normalize(MEAN, STD).transform_image(image, None)
    truth = (image.astype(np.float64) / 255 - np.array(MEAN)) / np.array(STD)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, truth, rtol=1e-5, atol=1e-5)
    scale = (1 / (255 * np.array(STD))).astype(np.float32)
    shift = (np.array(MEAN) / np.array(STD)).astype(np.float32)
    np.testing.assert_array_equal(out, image.astype(np.float32) * scale - shift)  # bit for bit
    grey = Normalize(0.5, 0.25).transform_image(image[..., :1], None)
    assert grey.shape == (60, 90, 1)
    floats = Normalize(0.5, 0.25).transform_image(image.astype(np.float32) / 255, None)
    np.testing.assert_allclose(floats, (image / 255 - 0.5) / 0.25, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="3 means and 3 stds for an image of 1 channels"):
        Normalize(MEAN, STD).transform_image(image[..., :1], None)
    for bad in (lambda: Resize(0), lambda: Resize((2.5, 3)), lambda: Normalize(0.5, 0),
                lambda: RandomResizedCrop(8, scale=(0.5, 2)),
                lambda: RandomResizedCrop(8, ratio=(5e-324, 5e-324)),
                lambda: RandomResizedCrop(8, interpolation="bilinear")):
        with pytest.raises((ValueError, TypeError)):
            bad()


def test_flips_on_a_stack_are_the_flips_of_each_image():
    images = np.stack([photo(9, 13, i) for i in range(12)])
    for flip, axis in ((HorizontalFlip(), 1), (VerticalFlip(0.7), 0)):
        rngs = [np.random.default_rng(i) for i in range(12)]
        stacked = flip.transform_batch(images, rngs)
        one_by_one = [flip.transform_image(image, np.random.default_rng(i))
                      for i, image in enumerate(images)]
        np.testing.assert_array_equal(stacked, np.stack(one_by_one))
        flipped = [not np.array_equal(a, b) for a, b in zip(stacked, images, strict=True)]
        assert 0 < sum(flipped) < 12
        for out, image, changed in zip(stacked, images, flipped, strict=True):
            np.testing.assert_array_equal(out, np.flip(image, axis) if changed else image)
    assert _batch_capable(Compose([HorizontalFlip(), Rotate()]))  # still the batch path
    with pytest.raises(ValueError, match="probability"):
        HorizontalFlip(1.5)
    assert HorizontalFlip(np.float32(0.5)).p == 0.5


def test_flips_take_any_image_as_it_is():
    rng = np.random.default_rng(0)
    for shape, dtype in (((1, 50, 3), np.uint8), ((50, 1), np.uint8), ((1, 1), np.uint8),
                         ((7, 5, 2), np.float64), ((3, 4), np.int32)):
        image = rng.random(shape).astype(dtype) if dtype == np.float64 else \
            rng.integers(0, 100, shape).astype(dtype)
        out = HorizontalFlip(1.0).transform_image(image, np.random.default_rng(0))
        np.testing.assert_array_equal(out, image[:, ::-1])  # bit for bit, any dtype
        out = VerticalFlip(1.0).transform_image(image, np.random.default_rng(0))
        np.testing.assert_array_equal(out, image[::-1])
    thin = cv2.imencode(".png", photo(1, 40, 0))[1]  # a spacer pixel row, as scraped
    out = Compose([Decode(), HorizontalFlip(1.0), RandomResizedCrop(8)])(
        (thin, 0), np.random.default_rng(0))
    assert out[0].shape == (8, 8, 3)


def test_normalize_comes_last_and_a_dict_names_its_image_field():
    from stoker.augment import Lambda, Sharpen

    with pytest.raises(TypeError, match=r"Sharpen after Normalize: .* clip .* Put Normalize "
                                        r"last"):
        Compose([Decode(), RandomResizedCrop(8), Normalize(MEAN, STD), Sharpen()])
    with pytest.raises(TypeError, match="Normalize after Normalize"):
        Compose([Decode(), Normalize(0.5, 0.5), Normalize(0.5, 0.5)])
    with pytest.raises(TypeError, match="Rotate after Normalize"):
        Compose([Compose([Decode(), Normalize(0.5, 0.5)]), Compose([Rotate()])])
    Compose([Decode(), Normalize(MEAN, STD), RandomResizedCrop(8), HorizontalFlip(),
             Lambda(lambda image, rng: image)])  # these take any values as they are
    record = cv2.imencode(".jpg", photo(20, 20, 0))[1]
    with pytest.raises(TypeError, match=r"this one has \['jpeg', 'label'\]: name the image "
                                        r"field 'image'"):
        recipe()({"jpeg": record, "label": 1}, np.random.default_rng(0))
    out = recipe()({"image": record, "label": 1}, np.random.default_rng(0))
    assert out["image"].shape == (16, 16, 3) and out["label"] == 1


def test_compositions_that_cannot_draw_ahead_say_where_to_put_them():
    assert not _batch_capable(recipe())  # each image drawn with its own size
    for make in (lambda: OneOf([Decode(), Rotate()]),
                 lambda: RandomApply(RandomResizedCrop(8))):
        with pytest.raises(TypeError, match=r"put .* after the step that gives every image "
                                            r"one size"):
            make()
    # After the crop, anything goes: OneOf and RandomApply draw for the fixed size.
    transform = Compose([Decode(), RandomResizedCrop(16), RandomApply(Rotate(), p=0.5),
                         OneOf([HorizontalFlip(1.0), VerticalFlip(1.0)])])
    record = cv2.imencode(".jpg", photo(40, 50, 0))[1]
    first = transform((record, 1), np.random.default_rng(3))
    again = transform((record, 1), np.random.default_rng(3))
    np.testing.assert_array_equal(first[0], again[0])
    assert first[0].shape == (16, 16, 3)
