"""Ingest: turn the user's files into a store, streaming, in constant memory.

Three kinds of input, each read in chunks and appended to a :class:`stoker.store.Writer`
(so an interrupted ingest leaves no store behind):

* ``.npy`` files (memory-mapped): one file gives bare samples, several give tuples
  ``(a[i], b[i], ...)``; a ``.npz`` file gives dict samples (its arrays are read one at a
  time, each whole: zip members cannot be memory-mapped).
* an image folder with one sub-folder per class: ``(image, label)`` samples, ``label``
  indexing the sorted folder names (``store.classes``); decoded to one size, or with
  ``encoded=True`` each file's bytes as they are (a blob field, decoded in the workers
  by ``stoker.augment.Decode``).
* ETL Character Database files: ``(image, label)`` samples, ``label`` indexing the
  characters found (sorted), optionally only a group such as ``kanji``.
"""

from __future__ import annotations

import contextlib
import os
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from . import store
from .datasets import etl

__all__ = ["Plan", "from_etl", "from_folder", "from_numpy", "ingest"]

_CHUNK = 4096  # samples per append for per-file inputs
_CHUNK_BYTES = 64 << 20  # at most this many bytes of encoded files per append
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm")


@dataclass
class Plan:
    """What an ingest will write: batches to append, how many samples, class names."""

    chunks: Iterable[Any]
    total: int
    classes: list[Any] | None = None
    # what was converted on the way, counted while the chunks are read
    converted: dict[str, int] = field(default_factory=dict)

    def conversions(self) -> str:
        """What the ingest changed, in a line ("" when nothing)."""
        from .stats import plural

        said = {"grey": ("colour image", "made grey (--color keeps colour)"),
                "resized": ("image", "resized to --size")}
        return "; ".join(f"{plural(n, said[k][0])} {said[k][1]}"
                         for k, n in self.converted.items() if n)


def from_numpy(paths: Sequence[str | os.PathLike]) -> Plan:
    paths = [Path(p) for p in paths]
    archives = [p for p in paths if p.suffix == ".npz"]
    if archives and len(paths) > 1:
        raise ValueError(
            f"{archives[0]} is an .npz archive among {len(paths)} inputs; an archive holds "
            "its fields itself: ingest it alone, or give .npy files, one per field"
        )
    if archives:
        archive_path = archives[0]
        with _loaded(archive_path, archive=True) as archive:
            names = list(archive.files)
            if not names:
                raise ValueError(f"{archive_path} holds no arrays")
            lengths = {name: _rows(_read(archive, name, archive_path),
                                   f"{archive_path} ({name})") for name in names}

        def from_npz() -> Iterator[Any]:
            with np.load(archive_path, allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in names}
                for start in range(0, total, _CHUNK):
                    yield {k: v[start:start + _CHUNK] for k, v in arrays.items()}
        total = _equal_lengths(lengths, archive_path)
        return Plan(from_npz(), total)
    arrays = []
    for path in paths:
        with _loaded(path, archive=False, mmap_mode="r") as array:
            arrays.append(array)
    total = _equal_lengths({str(p): _rows(a, str(p)) for p, a in zip(paths, arrays, strict=True)},
                           paths[0])
    row_bytes = max(1, sum(a[:1].nbytes for a in arrays))
    step = max(1, (64 << 20) // row_bytes)

    def sliced() -> Iterator[Any]:
        for start in range(0, total, step):
            parts = tuple(np.asarray(a[start:start + step]) for a in arrays)
            yield parts[0] if len(parts) == 1 else parts
    return Plan(sliced(), total)


@contextlib.contextmanager
def _loaded(path: Path, *, archive: bool, **options: Any) -> Iterator[Any]:
    """``np.load(path)`` (never unpickling): an .npz archive (``archive``) or a .npy
    array, a file that is no such thing said so."""
    what = "an .npz archive" if archive else "a .npy array"
    try:
        loaded = np.load(path, allow_pickle=False, **options)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        text = str(error)
        why = ("it is shorter than its header says: truncated (an interrupted copy or "
               "download?)" if "mmap length" in text
               else "it is no .npy file (no .npy header: another format, or pickled Python "
               "objects, which a store cannot hold)" if "allow_pickle" in text
               else "it is no zip archive, or a cut-off one" if isinstance(
                   error, zipfile.BadZipFile) else text or type(error).__name__)
        raise ValueError(f"cannot read {path} as {what}: {why}") from None
    if archive != isinstance(loaded, np.lib.npyio.NpzFile):
        if isinstance(loaded, np.lib.npyio.NpzFile):
            loaded.close()
        kind, suffix = ("a .npy array", ".npy") if archive else ("an .npz archive", ".npz")
        rename = f": name it {path.stem}{suffix}" if path.suffix != suffix else ""
        raise ValueError(f"{path} is {kind}, not {what}{rename}")
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            yield loaded
    else:
        yield loaded


def _read(archive: Any, name: str, path: Path) -> np.ndarray:
    try:
        return archive[name]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        why = ("it holds pickled Python objects, which a store cannot hold"
               if "allow_pickle" in str(error) else str(error) or type(error).__name__)
        raise ValueError(f"cannot read array {name!r} of {path}: {why}") from None


def _rows(array: np.ndarray, where: str) -> int:
    """The samples of a field: its first axis (a 0-d array holds none)."""
    if array.ndim == 0:
        raise ValueError(f"{where} holds a single value (a 0-d array), not samples: a field "
                         "needs one row per sample along its first axis")
    return len(array)


def _equal_lengths(lengths: dict[str, int], where: Path) -> int:
    if len(set(lengths.values())) != 1:
        raise ValueError(f"arrays of different lengths in {where}: {lengths}")
    total = next(iter(lengths.values()))
    if total == 0:
        raise ValueError(f"{where} holds no samples")
    return total


def from_folder(root: str | os.PathLike, *, size: int | None = None, color: bool = False,
                encoded: bool = False) -> Plan:
    root = Path(root)
    if encoded and (size is not None or color):
        raise ValueError(
            "encoded=True keeps each file's bytes as they are, so size= and color= do not "
            "apply: decode, resize and choose colour in the transform (Decode(mode='rgb' "
            "or 'grey'), RandomResizedCrop(224) or Resize(...))"
        )
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = [(label, path) for label, name in enumerate(classes)
             for path in sorted((root / name).iterdir())
             if path.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise ValueError(
            f"no images in {root}: expected one sub-folder per class holding image files "
            f"({', '.join(IMAGE_SUFFIXES)})"
        )
    held = {label for label, _ in files}
    for label, name in enumerate(classes):  # a class of no samples: a stray folder
        if label not in held:
            raise ValueError(
                f"{root / name} holds no images ({', '.join(IMAGE_SUFFIXES)}), so it would "
                "be a class without samples; remove it, or add its images"
            )
    for _, path in files:  # an image's name on what is no file loses a sample unseen
        if not path.is_file():
            what = "a folder" if path.is_dir() else "a link to nothing" if path.is_symlink() \
                else "not a regular file"
            raise ValueError(f"{path} is named as an image but is {what}; remove it or "
                             "point it at the image")
    for _, path in files:  # before anything is written: a bad file ends it at once (a
        _refuse_unless_image(path)  # cut-off JPEG decodes, its missing part grey)
    if encoded:
        return Plan(_encoded(files), len(files), classes)
    converted = {"grey": 0, "resized": 0}

    def read() -> Iterator[Any]:
        shape = None
        for start in range(0, len(files), _CHUNK):
            images, labels = [], []
            for label, path in files[start:start + _CHUNK]:
                image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
                if image is None:
                    raise ValueError(f"{path} is not a readable image (corrupt or truncated?)")
                if image.dtype.kind not in "u":
                    raise ValueError(
                        f"{path} holds {image.dtype} pixels; an image folder is ingested as "
                        "8-bit images (16-bit ones are converted): convert it to 8 or 16 "
                        "bits, or load such images into an array and ingest it as .npy"
                    )
                if image.dtype != np.uint8:  # 16-bit PNG/TIFF: to 8 bits, as IMREAD_COLOR
                    image = cv2.convertScaleAbs(image, alpha=255 / np.iinfo(image.dtype).max)
                if image.ndim == 3 and image.shape[2] == 4:
                    image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
                if color:
                    image = (cv2.cvtColor(image, cv2.COLOR_GRAY2RGB) if image.ndim == 2
                             else cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
                elif image.ndim == 3:
                    converted["grey"] += int(not _is_grey(image))
                    image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
                if size is not None and image.shape[:2] != (size, size):
                    image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
                    converted["resized"] += 1
                if not color:
                    image = image[..., None]
                if shape is None:
                    shape = image.shape
                elif image.shape != shape:
                    raise ValueError(
                        f"{path} is {image.shape[1]}x{image.shape[0]}, the first image was "
                        f"{shape[1]}x{shape[0]}; pass --size to resize them all"
                    )
                images.append(image)
                labels.append(label)
            yield np.stack(images), np.asarray(labels, np.int32)
    return Plan(read(), len(files), classes, converted)


def _refuse_unless_image(path: Path) -> None:
    """A ValueError naming ``path`` if it is surely no image (its first bytes, and a
    JPEG's end), reading only its ends."""
    from .augment.photo import undecodable

    with path.open("rb") as handle:
        head = handle.read(16)
        size = handle.seek(0, os.SEEK_END)
        handle.seek(0 if size <= 8192 else size - 4096)
        rest = handle.read()
    problem = undecodable(np.frombuffer(rest if size <= 8192 else head + rest, np.uint8),
                          known=True)
    if problem and size > 8192:  # a JPEG's end marker may lie further in: read it all
        problem = undecodable(np.fromfile(path, np.uint8), known=True)
    _refuse(path, problem)


def _refuse(path: Path, problem: str) -> None:
    if problem:
        raise ValueError(f"{path} is not an image stoker can decode: {problem}; remove or "
                         "replace it")


def _encoded(files: list[tuple[int, Path]]) -> Iterator[Any]:
    """(list of the files' bytes, labels) chunks of at most ``_CHUNK_BYTES``. Each file
    is checked whole here (a JPEG's segments walked: one cut behind an embedded
    thumbnail's end), the first pass having looked at its ends only."""
    from .augment.photo import undecodable

    records: list[bytes] = []
    labels: list[int] = []
    held = 0
    for label, path in files:
        data = path.read_bytes()
        _refuse(path, undecodable(np.frombuffer(data, np.uint8), known=True, thorough=True))
        records.append(data)
        labels.append(label)
        held += len(data)
        if held >= _CHUNK_BYTES or len(records) >= _CHUNK:
            yield records, np.asarray(labels, np.int32)
            records, labels, held = [], [], 0
    if records:
        yield records, np.asarray(labels, np.int32)


def _is_grey(image: np.ndarray) -> bool:
    """Whether a 3-channel image holds grey pixels only (nothing lost making it grey)."""
    return bool((image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all())


def from_etl(paths: Sequence[str | os.PathLike], *, size: int = 64,
             characters: str | Iterable[str] | None = None, format: str | None = None) -> Plan:
    paths = [Path(p) for p in paths]
    keep = etl.selector(characters)
    found: set[str] = set()
    total = 0
    for path in paths:  # first pass: the characters only, so labels are known up front
        for character in etl.characters(path, format=format):
            if keep(character):
                found.add(character)
                total += 1
    if not total:
        raise ValueError(f"no records of the requested characters in {', '.join(map(str, paths))}")
    classes = sorted(found)
    lookup = {c: i for i, c in enumerate(classes)}

    def read() -> Iterator[Any]:
        images, labels = [], []
        for path in paths:
            for record in etl.records(path, format=format, size=size):
                if record.character in lookup:
                    images.append(record.image[..., None])
                    labels.append(lookup[record.character])
                    if len(images) == _CHUNK:
                        yield np.stack(images), np.asarray(labels, np.int32)
                        images, labels = [], []
        if images:
            yield np.stack(images), np.asarray(labels, np.int32)
    return Plan(read(), total, classes)


def ingest(plan: Plan, out: str | os.PathLike, *, overwrite: bool = False,
           progress: bool = True) -> Path:
    """Write ``plan`` to a store at ``out`` (atomically), with a progress bar."""
    with store.Writer(out, classes=plan.classes, overwrite=overwrite) as writer, \
            store.progress_bar(plan.total, f"ingesting into {Path(out).name}", progress) as bar:
        for chunk in plan.chunks:
            before = writer.count
            writer.append(chunk)
            bar.update(writer.count - before)
    return writer.path
