"""Readers for the ETL Character Database (AIST), the question's data.

The files are big-endian fixed-length records without headers. Each supported format
is one :class:`EtlFormat` (record size, ``struct`` layout, image geometry, how the
character is coded); :func:`records` reads one file lazily, :func:`load` gathers files
into a source of ``(image, label)`` samples (``label`` an index into ``.classes``),
and ``stoker ingest`` streams them into a store. Images come out uint8, ink bright on
black as in the question, resized to ``size`` x ``size``.

Formats (from the published layouts; the first record of ETL8B/ETL9B files is a dummy):

* ETL8G, ETL9G: 8199-byte records, JIS X 0208 code in bytes 3-4, a 128 x 127 image
  at 4 bits per pixel (left pixel in the high nibble) from byte 61 (8G) or 65 (9G).
* ETL1, ETL6, ETL7 (M-type): 2052-byte records, JIS X 0201 code in byte 7, a 64 x 63
  4-bit image at bytes 33-2048.
* ETL8B2, ETL9B: 512- and 576-byte records, JIS X 0208 code in bytes 3-4, a 64 x 63
  1-bit image packed most significant bit first (1 = ink).
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

__all__ = ["FORMATS", "EtlFormat", "EtlRecord", "character_group", "characters",
           "detect_format", "load", "records", "selector"]


@dataclass(frozen=True)
class EtlFormat:
    name: str
    record_size: int
    layout: str  # struct format of one record
    width: int
    height: int
    bits: int  # bits per pixel: 4 or 1
    code_field: int  # index of the character code in the unpacked record
    image_field: int  # index of the image bytes in the unpacked record
    jis0208: bool  # True: JIS X 0208 two-byte code; False: JIS X 0201 one byte
    dummy_first: bool = False

    @property
    def code_offset(self) -> int:
        """Byte offset of the character code in a record (bytes 3-4, or byte 7)."""
        return 2 if self.jis0208 else 6

    def __post_init__(self) -> None:
        assert struct.calcsize(self.layout) == self.record_size, self.name


FORMATS = {
    "ETL8G": EtlFormat("ETL8G", 8199, ">HH8sIBBBBHHHHBB30x8128s11x", 128, 127, 4, 1, 14, True),
    "ETL9G": EtlFormat("ETL9G", 8199, ">HH8sIBBBBHHHHBB34x8128s7x", 128, 127, 4, 1, 14, True),
    "ETL1": EtlFormat("ETL1", 2052, ">H2sHBBBBBBIHHHHBBBB4x2016s4x", 64, 63, 4, 3, 18, False),
    "ETL8B": EtlFormat("ETL8B", 512, ">HH4s504s", 64, 63, 1, 1, 3, True, dummy_first=True),
    "ETL9B": EtlFormat("ETL9B", 576, ">HH4s504s64x", 64, 63, 1, 1, 3, True, dummy_first=True),
}
_NAMES = ((r"ETL8G", "ETL8G"), (r"ETL9G", "ETL9G"), (r"ETL8B", "ETL8B"), (r"ETL9B", "ETL9B"),
          (r"ETL[167](?![0-9])", "ETL1"))  # ETL1C_07, ETL6C, ETL7LC_1; never ETL10


@dataclass(frozen=True)
class EtlRecord:
    """One record: its position (``file``, and ``number``, 0-based, in it), the
    ``character``, the ``image`` (uint8, ink bright) and the raw unpacked ``fields``
    (sheet, serial, writer data, ...)."""

    file: Path
    number: int  # 0-based record number in the file
    character: str
    image: np.ndarray
    fields: tuple[Any, ...]


def detect_format(path: str | os.PathLike) -> EtlFormat:
    """The format of the file at ``path`` from its name as AIST distributes it
    (``ETL8G_01``, ``ETL9B_1``, ``ETL8B2C1``, ``ETL1C_07``, ...)."""
    name = Path(path).name.upper()
    for pattern, format_name in _NAMES:
        if re.match(pattern, name):
            return FORMATS[format_name]
    raise ValueError(
        f"cannot tell the ETL format of {path} from its name; pass format= one of "
        f"{sorted(FORMATS)}"
    )


def _decode_character(code: int, fmt: EtlFormat) -> str:
    try:
        if fmt.jis0208:
            return bytes([(code >> 8) | 0x80, (code & 0xFF) | 0x80]).decode("euc_jp")
        return bytes([code]).decode("shift_jis")  # JIS X 0201 (katakana at 0xA1-0xDF)
    except UnicodeDecodeError:
        return ""


def _decode_image(raw: bytes, fmt: EtlFormat, size: int | None) -> np.ndarray:
    packed = np.frombuffer(raw, np.uint8)
    if fmt.bits == 4:
        pixels = np.empty(packed.size * 2, np.uint8)
        pixels[0::2] = packed >> 4
        pixels[1::2] = packed & 0x0F
        image = (pixels * 17).reshape(fmt.height, fmt.width)  # 15 -> 255
    else:
        image = (np.unpackbits(packed)[:fmt.width * fmt.height] * 255).reshape(fmt.height,
                                                                              fmt.width)
    if size is not None and image.shape != (size, size):
        shrinking = size < fmt.width
        image = cv2.resize(image, (size, size),
                           interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    return image


def _checked_format(path: Path, format: str | None) -> EtlFormat:
    if format:
        try:
            fmt = FORMATS[format.upper()]
        except KeyError:
            raise ValueError(f"unknown ETL format {format!r}; one of {sorted(FORMATS)}") from None
    else:
        fmt = detect_format(path)
    total = path.stat().st_size
    if total == 0 or total % fmt.record_size:
        raise ValueError(
            f"{path} is not a whole number of {fmt.record_size}-byte {fmt.name} records "
            f"({total} bytes): record {total // fmt.record_size} is incomplete; the file is "
            "truncated or of another format (pass format=)"
        )
    return fmt


def characters(path: str | os.PathLike, *, format: str | None = None) -> list[str]:
    """The character of every record of the file at ``path``, in order, without decoding
    images (fast: reads the code bytes of a memory map). ``format`` (``"ETL8G"``, ...)
    overrides the format read from the file name."""
    path = Path(path)
    fmt = _checked_format(path, format)
    table = np.memmap(path, np.uint8, mode="r").reshape(-1, fmt.record_size)
    if fmt.dummy_first:
        table = table[1:]
    codes = table[:, fmt.code_offset].astype(np.int64)
    if fmt.jis0208:
        codes = (codes << 8) | table[:, fmt.code_offset + 1]
    unique, inverse = np.unique(codes, return_inverse=True)
    decoded = [_decode_character(int(code), fmt) for code in unique]
    return [decoded[i] for i in inverse.tolist()]


def records(path: str | os.PathLike, *, format: str | None = None, size: int | None = 64
            ) -> Iterator[EtlRecord]:
    """Read the records of the ETL file at ``path`` lazily (constant memory), images
    resized to ``size`` x ``size`` (``None``: as stored). ``format`` (``"ETL8G"``, ...)
    overrides the format read from the file name.

    A file whose size is not a whole number of records is refused before anything is
    read, naming the file and the incomplete record.
    """
    path = Path(path)
    fmt = _checked_format(path, format)
    unpack = struct.Struct(fmt.layout).unpack
    with path.open("rb") as handle:
        number = 0
        while raw := handle.read(fmt.record_size):
            if len(raw) != fmt.record_size:  # the file shrank while being read
                raise ValueError(f"{path}: record {number} is incomplete ({len(raw)} bytes)")
            if not (fmt.dummy_first and number == 0):
                fields = unpack(raw)
                character = _decode_character(fields[fmt.code_field], fmt)
                image = _decode_image(fields[fmt.image_field], fmt, size)
                yield EtlRecord(path, number, character, image, fields)
            number += 1


_GROUPS = {
    "kanji": lambda c: "\u4e00" <= c <= "\u9fff" or c == "\u3005",
    "hiragana": lambda c: "\u3040" <= c <= "\u309f",
    "katakana": lambda c: "\u30a0" <= c <= "\u30ff" or "\uff65" <= c <= "\uff9f",
    "digits": str.isdigit,
    "latin": lambda c: c.isascii() and c.isalpha(),
}


def character_group(name: str) -> Any:
    """A predicate for the group of characters called ``name``: kanji, hiragana, katakana, digits,
    latin (the question's ``ETLCharacterGroups.kanji``)."""
    try:
        return _GROUPS[name]
    except KeyError:
        raise ValueError(f"unknown character group {name!r}; one of {sorted(_GROUPS)}") from None


def selector(characters: str | Iterable[str] | None) -> Any:
    """A predicate keeping ``characters``: a group name, the characters themselves, or
    every decodable character for ``None``."""
    if characters is None:
        return lambda c: bool(c)
    if isinstance(characters, str) and characters in _GROUPS:
        return character_group(characters)
    wanted = set(characters)
    return wanted.__contains__


def load(paths: str | os.PathLike | Iterable[str | os.PathLike], *, size: int = 64,
         characters: str | Iterable[str] | None = None, format: str | None = None,
         classes: Iterable[str] | None = None) -> Any:
    """ETL files as a shared-memory source of ``(image uint8 (size, size, 1), label
    int32)`` samples, ``label`` an index into ``source.classes`` (characters, sorted).

    ``characters`` keeps only some: a group name (``"kanji"``, ``"hiragana"``,
    ``"katakana"``, ``"digits"``, ``"latin"``) or the characters themselves. For data
    larger than memory, ``stoker ingest`` writes the same samples to a store instead.
    ``paths`` is one file or several; ``format`` (``"ETL8G"``, ...) overrides the
    format read from the file name. ``classes`` fixes the labels instead (label i is
    ``classes[i]``, records of other characters are left out), so that sources can be
    mixed: ``etl.load(paths, classes=kanji.classes)``.
    """
    from ..sources import from_arrays

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("etl.load needs at least one file")
    keep = selector(characters)
    fixed = None
    if classes is not None:
        if isinstance(classes, str):
            raise TypeError("classes must be a list of characters (label i is classes[i]), "
                            "not one string")
        fixed = tuple(classes)
        if len(set(fixed)) != len(fixed):
            raise ValueError("classes names a character twice; label i is classes[i], so "
                             "each character must appear once")
    named = set(fixed) if fixed is not None else None
    images, chars = [], []
    for path in paths:
        for record in records(path, format=format, size=size):
            if keep(record.character) and (named is None or record.character in named):
                images.append(record.image)
                chars.append(record.character)
    if not images:
        raise ValueError(f"no records of the requested characters in {', '.join(map(str, paths))}")
    classes = list(fixed) if fixed is not None else sorted(set(chars))
    lookup = {c: i for i, c in enumerate(classes)}
    source = from_arrays(np.stack(images)[..., None],
                         np.array([lookup[c] for c in chars], np.int32))
    source.classes = classes
    return source
