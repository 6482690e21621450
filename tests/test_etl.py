"""ETL readers, against files written here from the published record layouts: every
field and every pixel comes back; truncated and foreign files are refused by name."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from stoker.datasets import etl

KANJI = [(0x3021, "亜"), (0x3022, "唖"), (0x4B5C, "本")]
HIRAGANA = [(0x2422, "あ")]


def pack_4bit(pixels: np.ndarray) -> bytes:
    flat = pixels.reshape(-1).astype(np.uint8)
    return ((flat[0::2] << 4) | flat[1::2]).astype(np.uint8).tobytes()


def write_g(path, fmt: str, rows):
    """ETL8G / ETL9G: rows of (jis code, 128x127 4-bit pixels, serial)."""
    layout = etl.FORMATS[fmt].layout
    with open(path, "wb") as handle:
        for sheet, (code, pixels, serial) in enumerate(rows, start=1):
            handle.write(struct.pack(layout, sheet, code, b"READING ", serial, 1, 2, 0, 35,
                                     serial, 7, 8, 3011, 9, 10, pack_4bit(pixels)))


def write_m(path, rows):
    """ETL1 (M-type): rows of (JIS X 0201 byte, 64x63 4-bit pixels)."""
    layout = etl.FORMATS["ETL1"].layout
    with open(path, "wb") as handle:
        for number, (code, pixels) in enumerate(rows):
            handle.write(struct.pack(layout, number, b"  ", 5, code, 0xC1, 1, 2, 3, 4, 99,
                                     6, 7, 8, 9, 1, 2, 3, 4, pack_4bit(pixels)))


def write_b(path, fmt: str, rows):
    """ETL8B / ETL9B: a dummy record, then rows of (jis code, 64x63 bits)."""
    layout = etl.FORMATS[fmt].layout
    with open(path, "wb") as handle:
        handle.write(struct.pack(layout, 0, 0, b"    ", b"\0" * 504))
        for sheet, (code, bits) in enumerate(rows, start=1):
            handle.write(struct.pack(layout, sheet, code, b"ABCD",
                                     np.packbits(bits.reshape(-1)).tobytes()))


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.mark.parametrize("fmt", ["ETL8G", "ETL9G"])
def test_etl8g_and_etl9g_records_come_back_field_by_field(tmp_path, rng, fmt):
    rows = [(code, rng.integers(0, 16, (127, 128)), 1000 + i)
            for i, (code, _) in enumerate(KANJI + HIRAGANA)]
    path = tmp_path / f"{fmt}_01"
    write_g(path, fmt, rows)
    got = list(etl.records(path, size=None))
    assert [r.character for r in got] == [c for _, c in KANJI + HIRAGANA]
    for record, (code, pixels, serial) in zip(got, rows, strict=True):
        np.testing.assert_array_equal(record.image, pixels * 17)
        assert record.image.dtype == np.uint8 and record.image.shape == (127, 128)
        assert record.fields[:4] == (record.number + 1, code, b"READING ", serial)
        assert record.fields[4:14] == (1, 2, 0, 35, serial, 7, 8, 3011, 9, 10)
    resized = next(etl.records(path, size=64))
    assert resized.image.shape == (64, 64) and resized.image.dtype == np.uint8


def test_etl1_m_type_reads_jis_x_0201_katakana(tmp_path, rng):
    rows = [(0xB1, rng.integers(0, 16, (63, 64))), (0xB6, rng.integers(0, 16, (63, 64))),
            (0x41, rng.integers(0, 16, (63, 64)))]
    path = tmp_path / "ETL1C_07"
    write_m(path, rows)
    got = list(etl.records(path, size=None))
    assert [r.character for r in got] == ["ｱ", "ｶ", "A"]
    for record, (code, pixels) in zip(got, rows, strict=True):
        np.testing.assert_array_equal(record.image, pixels * 17)
        assert record.fields[0] == record.number and record.fields[3] == code
        assert record.fields[4] == 0xC1 and record.fields[9] == 99
    assert next(etl.records(path)).image.shape == (64, 64)


@pytest.mark.parametrize(("fmt", "name"), [("ETL8B", "ETL8B2C1"), ("ETL9B", "ETL9B_1")])
def test_binary_formats_skip_the_dummy_and_unpack_bits(tmp_path, rng, fmt, name):
    rows = [(code, rng.integers(0, 2, (63, 64))) for code, _ in KANJI]
    path = tmp_path / name
    write_b(path, fmt, rows)
    got = list(etl.records(path, size=None))
    assert [r.number for r in got] == [1, 2, 3]
    assert [r.character for r in got] == [c for _, c in KANJI]
    for record, (_, bits) in zip(got, rows, strict=True):
        np.testing.assert_array_equal(record.image, bits * 255)
        assert record.fields[2] == b"ABCD"


def test_truncated_and_unknown_files_are_named(tmp_path, rng):
    path = tmp_path / "ETL8G_02"
    write_g(path, "ETL8G", [(0x3021, rng.integers(0, 16, (127, 128)), 1)] * 3)
    with open(path, "ab") as handle:
        handle.write(b"\0" * 100)
    with pytest.raises(ValueError, match=r"ETL8G_02 is not a whole number of 8199-byte ETL8G "
                                         r"records .*record 3 is incomplete"):
        list(etl.records(path))
    with pytest.raises(ValueError, match=r"cannot tell the ETL format of .*mystery\.bin"):
        list(etl.records(tmp_path / "mystery.bin"))
    (tmp_path / "mystery.bin").write_bytes(b"\0" * 512 * 2)
    assert len(list(etl.records(tmp_path / "mystery.bin", format="etl8b"))) == 1
    empty = tmp_path / "ETL9G_01"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="ETL9G_01"):
        list(etl.records(empty))


def test_load_gathers_files_and_selects_characters(tmp_path, rng):
    write_g(tmp_path / "ETL8G_01", "ETL8G",
            [(code, rng.integers(0, 16, (127, 128)), i) for i, (code, _) in
             enumerate(KANJI + HIRAGANA)])
    write_b(tmp_path / "ETL9B_1", "ETL9B", [(0x3021, rng.integers(0, 2, (63, 64)))])
    everything = etl.load([tmp_path / "ETL8G_01", tmp_path / "ETL9B_1"])
    kanji = etl.load([tmp_path / "ETL8G_01", tmp_path / "ETL9B_1"], characters="kanji",
                     size=32)
    try:
        assert everything.classes == sorted(["亜", "唖", "本", "あ"])
        images, labels = everything.arrays
        assert images.shape == (5, 64, 64, 1) and images.dtype == np.uint8
        assert [everything.classes[i] for i in labels] == ["亜", "唖", "本", "あ", "亜"]
        assert kanji.classes == ["亜", "唖", "本"] and kanji.arrays[0].shape == (4, 32, 32, 1)
        with pytest.raises(ValueError, match="no records"):
            etl.load(tmp_path / "ETL9B_1", characters="ん")
        only = etl.load(tmp_path / "ETL8G_01", characters="本あ")
        assert only.classes == ["あ", "本"]
        only.release()
    finally:
        everything.release()
        kanji.release()
    with pytest.raises(ValueError, match="unknown character group"):
        etl.character_group("emoji")


def test_load_with_fixed_classes_labels_by_them(tmp_path, rng):
    write_g(tmp_path / "ETL8G_01", "ETL8G",
            [(code, rng.integers(0, 16, (127, 128)), i) for i, (code, _) in
             enumerate(KANJI + HIRAGANA)])
    fixed = ("唖", "x", "亜")  # as another source labels them; 本 and あ are not among them
    data = etl.load(tmp_path / "ETL8G_01", classes=fixed)
    try:
        assert data.classes == list(fixed)
        assert [data.classes[i] for i in data.arrays[1]] == ["亜", "唖"]
    finally:
        data.release()
    with pytest.raises(TypeError, match="not one string"):
        etl.load(tmp_path / "ETL8G_01", classes="亜唖")
    with pytest.raises(ValueError, match="names a character twice"):
        etl.load(tmp_path / "ETL8G_01", classes=["亜", "亜"])
    with pytest.raises(ValueError, match="no records"):
        etl.load(tmp_path / "ETL8G_01", classes=["x"])
