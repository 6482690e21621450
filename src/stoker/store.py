"""The on-disk store: data larger than RAM, memory-mapped by every worker.

A store is a directory of plain ``.npy`` files, one per field (``field_0.npy``, ...),
each holding every sample's value of that field, plus ``meta.json`` (format version,
sample count, structure, field dtypes and shapes, class names, a SHA-256 per file).
numpy can read it without stoker; stoker memory-maps it, so workers share the page
cache and nothing is copied per worker.

Writes are atomic. A :class:`Writer` streams into a hidden temporary directory next to
the target, fsyncs every file and the directory, and only then renames it into place:
after a crash, a kill or Ctrl-C mid-write, ``path`` holds the previous store or
nothing, never a half-written one. :func:`open` refuses anything that is not a complete
store of this version (no ``meta.json``, a foreign format, a truncated or resized file)
with a message naming the file; :func:`verify` also checks every byte against the
checksums.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ._system import fsync_path
from .sources import _ArrayFields

__all__ = ["FORMAT", "VERSION", "StoreError", "StoreSource", "Writer", "open", "save", "verify"]

FORMAT = "stoker-store"
VERSION = 1
META = "meta.json"
HEADER_BYTES = 256  # every .npy header is padded to this, so data starts 64-byte aligned
_CHUNK_BYTES = 64 << 20  # what save() and verify() handle at a time: constant memory


class StoreError(ValueError):
    """A path that is not a complete, intact store of this version."""


# -- .npy files whose header is rewritten at the end ------------------------------------------


def _npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """A version 1.0 ``.npy`` header of exactly ``HEADER_BYTES`` bytes."""
    described = repr({"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                      "shape": tuple(shape)})
    magic = b"\x93NUMPY\x01\x00"
    length = HEADER_BYTES - len(magic) - 2
    text = described.encode("latin1")
    if len(text) + 1 > length:
        raise StoreError(f"a field of shape {shape} does not fit a {HEADER_BYTES}-byte header")
    text = text + b" " * (length - len(text) - 1) + b"\n"
    return magic + length.to_bytes(2, "little") + text


def _structure(batch: Any) -> tuple[str, list[tuple[str, np.ndarray]]]:
    """(kind, [(name, array)]) of a batch: an array, a tuple/list or a dict of arrays."""
    if isinstance(batch, Mapping):
        if not batch:
            raise ValueError("a dict batch needs at least one field")
        return "dict", [(str(k), np.asarray(v)) for k, v in batch.items()]
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise ValueError("a tuple batch needs at least one field")
        return "tuple", [(str(i), np.asarray(v)) for i, v in enumerate(batch)]
    return "array", [("0", np.asarray(batch))]


class Writer:
    """Stream batches into a new store; commit atomically on :meth:`close`.

        with stoker.store.Writer("kanji.stoker", classes=names) as writer:
            for images, labels in chunks:        # any number, any size
                writer.append((images, labels))  # leading axis: samples

    The first batch fixes the structure (an array, a tuple or a dict of arrays), the
    dtypes and the per-sample shapes; later batches must match exactly. Leaving the
    ``with`` block by an exception (Ctrl-C included) discards everything written.
    """

    def __init__(self, path: str | os.PathLike, *, classes: Iterable[Any] | None = None,
                 overwrite: bool = False) -> None:
        self.path = Path(path)
        self.classes = None if classes is None else [_plain(c) for c in classes]
        self.overwrite = overwrite
        if self.path.exists() and not overwrite:
            raise FileExistsError(
                f"{self.path} already exists; pass overwrite=True to replace it (atomically)"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(self.path)
        self._tmp = self.path.parent / f".{self.path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._tmp.mkdir()
        self._kind: str | None = None
        self._fields: list[dict[str, Any]] = []
        self._files: list[Any] = []
        self._hashes: list[Any] = []
        self.count = 0
        self._closed = False

    def append(self, batch: Any) -> None:
        """Add a batch of samples (leading axis: samples) in the store's structure."""
        if self._closed:
            raise ValueError(f"the writer for {self.path} is closed")
        kind, fields = _structure(batch)
        lengths = {len(a) if a.ndim else -1 for _, a in fields}
        if -1 in lengths or len(lengths) != 1:
            raise ValueError(
                "every field of a batch needs the same leading (sample) axis, got shapes "
                + ", ".join(f"{n}: {a.shape}" for n, a in fields)
            )
        if self._kind is None:
            self._start(kind, fields)
        self._check(kind, fields)
        self._check_labels(fields)
        for handle, digest, (_, array) in zip(self._files, self._hashes, fields, strict=True):
            data = np.ascontiguousarray(array).view(np.uint8).reshape(-1)
            handle.write(data)
            digest.update(data)
        self.count += lengths.pop()

    def _start(self, kind: str, fields: list[tuple[str, np.ndarray]]) -> None:
        for position, (name, array) in enumerate(fields):
            if array.dtype == object or array.dtype.kind in "OUSV" or array.dtype.hasobject:
                raise TypeError(f"field {name!r} has dtype {array.dtype}; stores hold numeric "
                                "arrays only")
            file = f"field_{position}.npy"
            self._fields.append({"name": name, "file": file, "dtype": array.dtype.str,
                                 "shape": list(array.shape[1:])})
            handle = (self._tmp / file).open("wb")
            handle.write(b"\0" * HEADER_BYTES)  # rewritten with the final count on close
            self._files.append(handle)
            self._hashes.append(hashlib.sha256())
        self._kind = kind

    def _check(self, kind: str, fields: list[tuple[str, np.ndarray]]) -> None:
        expected = [(f["name"], np.dtype(f["dtype"]), tuple(f["shape"])) for f in self._fields]
        got = [(n, a.dtype, a.shape[1:]) for n, a in fields]
        if kind != self._kind or [n for n, *_ in got] != [n for n, *_ in expected]:
            raise ValueError(f"batch structure changed: the store holds {self._kind} samples "
                             f"with fields {[n for n, *_ in expected]}, this batch is {kind} "
                             f"with {[n for n, *_ in got]}")
        for (name, dtype, shape), (_, got_dtype, got_shape) in zip(expected, got, strict=True):
            if got_dtype != dtype or got_shape != shape:
                raise ValueError(
                    f"field {name!r} changed from {shape} {dtype} to {got_shape} {got_dtype}; "
                    "every batch must match the first (convert before appending)"
                )

    def _label_position(self) -> int | None:
        """Which field holds class indices, when ``classes`` are given: the ``label``
        entry of dict samples, the second of (image, label) tuples; integer scalars."""
        if self.classes is None:
            return None
        names = [f["name"] for f in self._fields]
        position = (names.index("label") if self._kind == "dict" and "label" in names
                    else 1 if self._kind == "tuple" and len(names) == 2 else None)
        if position is None:
            return None
        field = self._fields[position]
        return position if not field["shape"] and np.dtype(field["dtype"]).kind in "iu" else None

    def _check_labels(self, fields: list[tuple[str, np.ndarray]]) -> None:
        position = self._label_position()
        if position is None:
            return
        labels = fields[position][1]
        bad = np.flatnonzero((labels < 0) | (labels >= len(self.classes)))
        if len(bad):
            raise ValueError(
                f"sample {self.count + int(bad[0])} has label {labels[bad[0]]}, outside the "
                f"{len(self.classes)} classes given (0..{len(self.classes) - 1}); pass the "
                "full class list or fix the labels"
            )

    def close(self) -> Path:
        """Finish the files, fsync, and rename the store into place. Returns its path."""
        if self._closed:
            return self.path
        if self.count == 0:
            self.abort()
            raise ValueError(f"no samples were written to {self.path}; nothing was saved")
        try:
            for handle, field in zip(self._files, self._fields, strict=True):
                handle.seek(0)
                handle.write(_npy_header(np.dtype(field["dtype"]),
                                         (self.count, *field["shape"])))
                handle.flush()
                os.fsync(handle.fileno())
                handle.close()
            for field, digest in zip(self._fields, self._hashes, strict=True):
                field["sha256"] = digest.hexdigest()
            meta = {"format": FORMAT, "version": VERSION, "count": self.count,
                    "kind": self._kind, "fields": self._fields, "classes": self.classes}
            with (self._tmp / META).open("w") as handle:
                json.dump(meta, handle, indent=1)
                handle.flush()
                os.fsync(handle.fileno())
            fsync_path(self._tmp)
            self._commit()
        except BaseException:
            self.abort()
            raise
        self._closed = True
        return self.path

    def _commit(self) -> None:
        old = None
        if self.path.exists():
            if not self.overwrite:
                raise FileExistsError(f"{self.path} appeared while writing; nothing replaced")
            if self.path.is_dir() and not (self.path / META).exists() and any(
                    self.path.iterdir()):
                raise FileExistsError(f"{self.path} is a directory that is not a stoker store; "
                                      "refusing to replace it")
            old = self.path.parent / f".{self.path.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(self.path, old)
        os.replace(self._tmp, self.path)
        fsync_path(self.path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()

    def abort(self) -> None:
        """Discard everything written; ``path`` is left as it was."""
        for handle in self._files:
            handle.close()
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._closed = True

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, kind: Any, error: Any, traceback: Any) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            self.abort()


def _plain(value: Any) -> Any:
    """A JSON-friendly class name (numpy scalars become Python ones)."""
    return value.item() if isinstance(value, np.generic) else value


def _remove_stale_temporaries(path: Path) -> None:
    """Delete temporaries of ``path`` left by writers whose process is gone."""
    for candidate in path.parent.glob(f".{path.name}.tmp-*"):
        try:
            pid = int(candidate.name.rsplit(".tmp-", 1)[1].split("-")[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(candidate, ignore_errors=True)
        except (ValueError, IndexError, PermissionError):
            continue


# -- Saving any data -----------------------------------------------------------------------


def save(path: str | os.PathLike, data: Any, *, classes: Iterable[Any] | None = None,
         overwrite: bool = False, progress: bool = True) -> Path:
    """Write ``data`` as a store at ``path``, streaming, in constant memory.

    ``data`` is an array, a tuple or dict of equal-length arrays, or any source
    (``from_arrays``, another store, anything with ``__len__``/``__getitem__``).
    ``classes`` defaults to ``data.classes`` when it has them.
    """
    if classes is None:
        classes = getattr(data, "classes", None)
    chunks, total = _chunks(data)
    with Writer(path, classes=classes, overwrite=overwrite) as writer, \
            progress_bar(total, f"saving {Path(path).name}", progress) as bar:
        for chunk in chunks:
            before = writer.count
            writer.append(chunk)
            bar.update(writer.count - before)
    return writer.path


def _chunks(data: Any) -> tuple[Iterable[Any], int]:
    arrays = getattr(data, "arrays", None)
    if arrays is not None and not isinstance(data, StoreSource):
        data = arrays  # an ArraySource: slice its shared arrays
    if isinstance(data, (np.ndarray, Mapping)) or (
            isinstance(data, tuple) and data and all(isinstance(a, np.ndarray) for a in data)):
        kind, fields = _structure(data)
        n = len(fields[0][1])
        if any(len(a) != n for _, a in fields):
            raise ValueError("save() needs arrays of equal length")
        row_bytes = max(1, sum(a[:1].nbytes for _, a in fields))
        step = max(1, _CHUNK_BYTES // row_bytes)

        def sliced():
            for start in range(0, n, step):
                part = [a[start:start + step] for _, a in fields]
                yield (part[0] if kind == "array" else
                       dict(zip([name for name, _ in fields], part, strict=True))
                       if kind == "dict" else tuple(part))
        return sliced(), n
    if not (hasattr(data, "__len__") and hasattr(data, "__getitem__")):
        raise TypeError(f"save() needs arrays or a source, got {type(data).__name__}")
    n = len(data)
    if n == 0:
        raise ValueError("the source is empty (0 samples); there is nothing to save")
    first_kind, first_fields = _structure(data[0])
    row_bytes = max(1, sum(np.asarray(a).nbytes for _, a in first_fields))
    step = max(1, _CHUNK_BYTES // row_bytes)

    def stacked():
        for start in range(0, n, step):
            samples = [data[i] for i in range(start, min(n, start + step))]
            yield _stack(samples, first_kind)
    return stacked(), n


def _stack(samples: list[Any], kind: str) -> Any:
    if kind == "array":
        return np.stack([np.asarray(s) for s in samples])
    if kind == "dict":
        return {k: np.stack([np.asarray(s[k]) for s in samples]) for k in samples[0]}
    return tuple(np.stack([np.asarray(s[i]) for s in samples]) for i in range(len(samples[0])))


class _NoProgress:
    def update(self, n: int) -> None:
        pass

    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def progress_bar(total: int, description: str, enabled: bool) -> Any:
    if not enabled:
        return _NoProgress()
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit=" samples", unit_scale=True,
                dynamic_ncols=True)


# -- Reading ---------------------------------------------------------------------------------


def _read_meta(path: Path) -> dict[str, Any]:
    meta_path = path / META
    if not path.exists():
        raise StoreError(f"no store at {path}")
    if not path.is_dir() or not meta_path.exists():
        raise StoreError(
            f"{path} is not a stoker store: {META} is missing (an interrupted write never "
            "leaves a store behind; write it again with stoker.store.save or stoker ingest)"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as error:
        raise StoreError(f"{meta_path} is corrupt: {error}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise StoreError(f"{meta_path} does not describe a stoker store (format "
                         f"{meta.get('format') if isinstance(meta, dict) else None!r})")
    if meta.get("version") != VERSION:
        raise StoreError(
            f"{meta_path} is store format version {meta.get('version')!r}; this stoker "
            f"reads version {VERSION}. Re-create it with this version (stoker ingest)."
        )
    try:
        count = meta["count"]
        fields = [_field(f, position) for position, f in enumerate(meta["fields"])]
        if (type(count) is not int or count < 1 or not fields
                or meta["kind"] not in ("array", "tuple", "dict")
                or (meta["kind"] == "array" and len(fields) != 1)):
            raise ValueError("bad kind, fields or count")
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise StoreError(f"{meta_path} is corrupt: {error}") from None
    for _, file, dtype, shape in fields:
        _check_file(path / file, dtype, (count, *shape))
    return meta


def _field(entry: Any, position: int) -> tuple[str, str, np.dtype, tuple[int, ...]]:
    """One field of ``meta.json``, checked: a plain name, the file this version names
    (never a path elsewhere), a numeric dtype, a shape of non-negative ints."""
    name, file, shape = entry["name"], entry["file"], entry["shape"]
    if not isinstance(name, str) or file != f"field_{position}.npy":
        raise ValueError(f"field {position} has name {name!r} and file {file!r}")
    if not isinstance(shape, list) or any(type(d) is not int or d < 0 for d in shape):
        raise ValueError(f"field {position} has shape {shape!r}")
    dtype = np.dtype(entry["dtype"]) if isinstance(entry["dtype"], str) else None
    if dtype is None or dtype.kind not in "biufc" or dtype.hasobject:
        raise ValueError(f"field {position} has dtype {entry['dtype']!r}")
    return name, file, dtype, tuple(shape)


def _check_file(file: Path, dtype: np.dtype, shape: tuple[int, ...]) -> None:
    if not file.exists():
        raise StoreError(f"{file} is missing from the store")
    expected = HEADER_BYTES + math.prod(shape) * dtype.itemsize
    size = file.stat().st_size
    if size != expected:
        raise StoreError(
            f"{file} is {'truncated' if size < expected else 'too long'}: {size} bytes, "
            f"expected {expected} for {shape} {dtype}"
        )
    with file.open("rb") as handle:
        try:
            version = np.lib.format.read_magic(handle)
            header = (np.lib.format.read_array_header_1_0(handle) if version == (1, 0)
                      else np.lib.format.read_array_header_2_0(handle))
        except Exception as error:  # numpy's header parser raises several kinds
            raise StoreError(f"{file} has a corrupt .npy header: {error}") from None
        if handle.tell() != HEADER_BYTES or header != (shape, False, dtype):
            raise StoreError(f"{file}'s header says {header}, the store's {META} says "
                             f"{shape} {dtype}")


class StoreSource(_ArrayFields):
    """A store, memory-mapped: samples are read-only views into the page cache.

    Pickles as its path: each worker maps the same files, so the data is held once by
    the operating system however many workers read it.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path).resolve()
        meta = _read_meta(self.path)
        self._meta = meta
        self._kind = meta["kind"]
        self._names = [f["name"] for f in meta["fields"]]
        self.classes = meta.get("classes")
        # Plain ndarray views of the maps: indexing a np.memmap costs microseconds of
        # subclass bookkeeping per sample, the view the same as shared memory.
        self._arrays = [
            np.asarray(np.memmap(self.path / f["file"], dtype=np.dtype(f["dtype"]), mode="r",
                                 offset=HEADER_BYTES, shape=(meta["count"], *f["shape"])))
            for f in meta["fields"]
        ]

    def __len__(self) -> int:
        return int(self._meta["count"])

    def __reduce__(self):
        return (StoreSource, (str(self.path),))

    def __repr__(self) -> str:
        fields = ", ".join(f"{f['name']}: {tuple(f['shape'])} {np.dtype(f['dtype'])}"
                           for f in self._meta["fields"])
        return f"<StoreSource {len(self)} samples ({fields}) at {self.path}>"


def open(path: str | os.PathLike) -> StoreSource:
    """Open the store at ``path`` as a source (memory-mapped; checks structure and sizes,
    not every byte: :func:`verify` does that)."""
    return StoreSource(path)


def verify(path: str | os.PathLike, *, progress: bool = False) -> None:
    """Check every byte of the store at ``path`` against its checksums; raise
    :class:`StoreError` naming the first file that differs."""
    path = Path(path)
    meta = _read_meta(path)
    total = sum(HEADER_BYTES + meta["count"] * np.dtype(f["dtype"]).itemsize
                * math.prod(f["shape"]) for f in meta["fields"])
    with progress_bar(total, f"verifying {path.name}", progress) as bar:
        for field in meta["fields"]:
            digest = hashlib.sha256()
            with (path / field["file"]).open("rb") as handle:
                handle.seek(HEADER_BYTES)
                while block := handle.read(_CHUNK_BYTES):
                    digest.update(block)
                    bar.update(len(block))
            if digest.hexdigest() != field.get("sha256"):
                raise StoreError(f"{path / field['file']} does not match its checksum: the data "
                                 "changed after it was written (disk or copy error?)")
