"""The built-in data set: the JIS level-1 kanji, rendered from pip-installed fonts,
cached as stores, validation from a face training never sees."""

from __future__ import annotations

import numpy as np
import pytest

from stoker import store
from stoker.datasets import glyphs


def test_level_one_kanji_are_the_2965_of_rows_16_to_47():
    kanji = glyphs.level1_kanji()
    assert len(kanji) == 2965 == len(set(kanji))
    assert kanji[:3] == ("亜", "唖", "娃") and kanji[-1] == "腕"
    assert all("\u4e00" <= k <= "\u9fff" for k in kanji)


def test_every_face_renders_every_kanji_centred():
    for face in glyphs.TRAIN_FACES + glyphs.VALIDATION_FACES:
        images = glyphs.render(("亜", "腕", "語"), face, 64)
        assert images.shape == (3, 64, 64) and images.dtype == np.uint8
        for image in images:
            rows, cols = np.nonzero(image > 128)
            assert len(rows) > 40, face.label  # ink, not a missing-glyph box or nothing
            assert abs(rows.mean() - 32) < 10 and abs(cols.mean() - 32) < 10, face.label


def test_load_renders_once_then_memory_maps_the_cache(rendered_data_cache):
    data = glyphs.load(classes=7)
    assert data.classes == glyphs.level1_kanji()[:7] and data.size == 64
    assert len(data.train) == 7 * len(glyphs.TRAIN_FACES) and len(data.val) == 7
    image, label = data.train[len(data.train) - 1]
    assert image.shape == (64, 64, 1) and image.dtype == np.uint8 and 0 <= label < 7
    labels = sorted(int(data.val[i][1]) for i in range(7))
    assert labels == list(range(7))
    cached = sorted(p.name for p in rendered_data_cache.iterdir())
    assert cached == ["kanji64-v1-train.stoker", "kanji64-v1-val.stoker"]
    full = glyphs.load()
    assert isinstance(full.train, store.StoreSource) and full.train.classes[0] == "亜"
    # Training and validation faces differ: the same kanji never looks the same.
    train_image = full.train[0][0]
    assert not np.array_equal(train_image, full.val[0][0])


def test_a_damaged_cache_is_rendered_again(rendered_data_cache):
    glyphs.load(classes=2)
    meta = rendered_data_cache / "kanji64-v1-val.stoker" / "meta.json"
    meta.write_text("{broken")
    data = glyphs.load(classes=2)
    assert len(data.val) == 2
    store.verify(rendered_data_cache / "kanji64-v1-val.stoker")


@pytest.mark.parametrize(("kwargs", "message"), [({"classes": 1}, "between 2 and 2965"),
                                                 ({"classes": 3000}, "between 2 and 2965"),
                                                 ({"size": 8}, "size")])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        glyphs.load(**kwargs)
