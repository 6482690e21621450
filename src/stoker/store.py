"""The on-disk store: data larger than RAM, memory-mapped by every worker.

A store is a directory of plain ``.npy`` files, one per field, each holding every
sample's value of that field, and ``meta.json``, the manifest: format version, sample
count, structure, field dtypes and shapes, class names, a SHA-256 per file, the store's
generation (its identity) and a checksum of the manifest itself. numpy reads the files
without stoker; stoker memory-maps them, so workers share the page cache.

**One commit point, like LMDB's meta page.** The field files of a write are named by
its generation (``field_0.<generation>.npy``) and are written, fsynced and put in place
before anything names them; the write becomes the store at the instant ``meta.json`` is
replaced (``os.replace``, atomic), and the previous generation's files are removed
after that. So at every instant ``path`` holds the old store or the new one, for a
reader, for a writer killed at any step and for writers racing each other (the last
commit wins; commits and clean-ups take the store's lock, ``.lock``, in turn). A reader
that finds a file gone re-reads the manifest (an overwrite happened between the two);
one that already mapped the old files reads them until it closes. A new store is built
in a hidden directory next to ``path`` and renamed into place, so a killed first write
leaves no store at all.

**Temporaries are leased, not judged by pid.** Each writer holds a lock (``flock``) on
its lease file for as long as it writes; the next writer removes only temporaries whose
lease nobody holds, which stays true on shared storage and across pid namespaces.

:func:`open` refuses anything that is not a complete store of a version it reads (no
or a tampered ``meta.json``, a foreign format, a truncated or resized file) with a
message naming the file; :func:`verify` checks every byte against the checksums and
every label against the class names.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import math
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._fork import ProcessLock
from ._system import fsync_path
from .blobs import Blobs, BytesList, is_blob_list, offsets_problem
from .sources import ArraySource, Subset, _ArrayFields, field_arrays

__all__ = ["FORMAT", "VERSION", "StoreError", "StoreSource", "Writer", "open", "save", "verify"]

FORMAT = "stoker-store"
VERSION = 2  # 2: generations and a checksummed manifest; version 1 stores still open
BLOBS_VERSION = 3  # 3: blob fields (variable-length bytes); written only by stores with one
READS = (1, 2, 3)
META = "meta.json"
LOCK = ".lock"
HEADER_BYTES = 256  # every .npy header is padded to this, so data starts 64-byte aligned
_CHUNK_BYTES = 64 << 20  # what save() and verify() handle at a time: constant memory
_STORED_KINDS = "biufc"  # numbers and booleans: what np.load and open read back
_OURS = re.compile(r"field_\d+(\.[0-9a-f]{16})?(\.data)?\.npy|\.meta-[0-9a-f]{16}\.tmp")
_MAX_FIELDS = 16  # a longer tuple or list is a list of samples, not of fields
_OPEN_ATTEMPTS = 50  # an overwrite between reading the manifest and mapping the files

try:
    import fcntl
except ImportError:  # Windows: no flock; leases and the store lock are not enforced there
    fcntl = None  # type: ignore[assignment]


def _flock(fd: int, blocking: bool = True) -> None:
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)


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


def _structure(batch: Any, caller: str = "Writer.append") -> tuple[
        str, list[tuple[str, np.ndarray]]]:
    """(kind, [(name, array)]) of a batch, read as ``from_arrays`` reads its arguments:
    an array, a tuple/list of fields or a dict of fields, each one numeric array."""
    if isinstance(batch, Mapping):
        arrays, named = (), batch
    elif is_blob_list(batch):  # records alone: one blob field, as one array is one field
        arrays, named = (batch,), {}
    elif isinstance(batch, (tuple, list)):
        arrays, named = tuple(batch), {}
        if len(arrays) > _MAX_FIELDS:
            raise ValueError(
                f"{caller} got a {type(batch).__name__} of {len(arrays)} items; a tuple or "
                f"list is read as fields (x, y, ...), as from_arrays reads its arguments, and "
                f"stores hold at most {_MAX_FIELDS}. For {len(arrays)} samples, stack them "
                "first: np.stack(images)"
            )
    else:
        arrays, named = (batch,), {}
    return field_arrays(arrays, named, caller=caller, refuse_kinds="", allow_empty=True,
                        blobs=True)


def _canonical(meta: Mapping[str, Any]) -> bytes:
    return json.dumps({k: v for k, v in meta.items() if k != "meta_sha256"}, sort_keys=True,
                      separators=(",", ":")).encode()


def _classes(classes: Iterable[Any] | None) -> list[Any] | None:
    """Class names as stored: a list of unique str / int names (numpy scalars become
    Python ones), or None."""
    if classes is None:
        return None
    if (isinstance(classes, (str, bytes, Mapping, AbstractSet))
            or not isinstance(classes, Iterable)):
        raise TypeError(f"classes must be a list of class names (in label order), got "
                        f"{type(classes).__name__}")
    names = [c.item() if isinstance(c, np.generic) else c for c in classes]
    bad = [c for c in names if isinstance(c, bool) or not isinstance(c, (str, int))]
    if bad:
        raise TypeError(f"class names must be str or int, got {bad[0]!r}")
    if len(set(names)) != len(names):
        seen: set[Any] = set()
        twice = next(c for c in names if c in seen or seen.add(c))
        raise ValueError(f"class name {twice!r} appears twice; class names must be unique")
    return names


# -- leases: who is still writing ------------------------------------------------------------

# This process's own leases: where flock is emulated with per-process POSIX locks (NFS),
# a second descriptor of the same process would get the lock; the set answers then.
_live_leases: set[str] = set()  # real paths
_live_lock = ProcessLock()


class _Lease:
    """An exclusive ``flock`` on a file, held while a writer's temporary exists. The
    kernel drops it when the process dies, however it dies."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pid = os.getpid()  # a forked child must not release its parent's lease
        with _live_lock:
            _live_leases.add(str(path))
        while True:
            fresh = path.with_name(path.name + "-" + uuid.uuid4().hex[:8])
            self._fd = os.open(fresh, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                _flock(self._fd)
                os.rename(fresh, path)  # visible under its name only once locked
                return
            except FileNotFoundError:  # a cleaner took it in the instant before the lock
                os.close(self._fd)
            except BaseException:  # Ctrl-C, or the lock or rename failed: nothing stays
                for name in (fresh, path):
                    with contextlib.suppress(OSError):
                        name.unlink()
                os.close(self._fd)
                self._fd = -1
                with _live_lock:
                    _live_leases.discard(str(path))
                raise

    def release(self) -> None:
        if self._fd < 0 or os.getpid() != self._pid:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = -1
        with _live_lock:
            _live_leases.discard(str(self.path))


def _remove_stale_temporaries(path: Path) -> list[Path]:
    """Delete the temporaries of writers of ``path`` that are gone (their lease is not
    held); return what was removed. A live writer's lease cannot be taken, here or on
    another host sharing the storage."""
    removed = []
    for legacy in path.parent.glob(f".{glob.escape(path.name)}.tmp-*-*"):
        _remove_legacy_temporary(legacy)
    for lease in path.parent.glob(f".{glob.escape(path.name)}.tmp-*.lease*"):
        final = lease.name.endswith(".lease")  # else one being created (``.lease-<id>``)
        with _live_lock:
            if str(lease if final else lease.with_name(lease.name.rsplit("-", 1)[0])) \
                    in _live_leases:
                continue
        try:
            fd = os.open(lease, os.O_RDWR)
        except OSError:
            continue
        try:
            try:
                _flock(fd, blocking=False)
            except OSError:
                continue  # held: that writer is alive
            if final:
                temporary = lease.with_name(lease.name[: -len(".lease")])
                shutil.rmtree(temporary, ignore_errors=True)
                removed.append(temporary)
            with contextlib.suppress(FileNotFoundError):
                lease.unlink()
        finally:
            os.close(fd)
    return removed


def _remove_legacy_temporary(candidate: Path) -> None:
    """A temporary of stoker before leases (``.NAME.tmp-<pid>-<hex>``): judged by its pid,
    as it was written."""
    match = re.fullmatch(r".*\.tmp-(\d+)-[0-9a-f]{8}", candidate.name)
    if match is None or not candidate.is_dir():
        return
    try:
        os.kill(int(match.group(1)), 0)
    except ProcessLookupError:
        shutil.rmtree(candidate, ignore_errors=True)
    except (OSError, ValueError):
        pass


@contextlib.contextmanager
def _store_lock(path: Path) -> Iterator[None]:
    """The store's lock, held while a commit replaces the manifest and clears out what
    the manifest no longer names (readers never take it)."""
    fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _flock(fd)
        yield
    finally:
        os.close(fd)


def _collect_garbage(path: Path, meta: Mapping[str, Any]) -> None:
    """Remove field files the manifest does not name and manifests never committed:
    only names this module writes, never anything else in the directory."""
    keep = {name for field in meta["fields"] for name in _files_of(field)}
    for entry in os.scandir(path):
        if (_OURS.fullmatch(entry.name) and entry.name not in keep
                and entry.is_file(follow_symlinks=False)):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)


def _collect_unnamed(path: Path) -> None:
    """What the store's current manifest does not name, removed (best effort; the
    caller holds the store's lock: only a lock holder moves files in)."""
    with contextlib.suppress(StoreError, OSError, KeyError, TypeError):
        _collect_garbage(path, _read_meta(path)[0])


def _sweep(path: Path) -> None:
    """``_collect_unnamed`` under the store's lock."""
    with contextlib.suppress(OSError), _store_lock(path):
        _collect_unnamed(path)


def _is_store(path: Path) -> bool:
    return path.is_dir() and (path / META).exists()


def _refuse_target(path: Path, overwrite: bool) -> None:
    if path.is_symlink() or path.exists():
        if not overwrite:
            raise FileExistsError(
                f"{path} already exists; pass overwrite=True to replace it (atomically)"
            )
        if not path.is_dir() or (not _is_store(path) and any(path.iterdir())):
            raise FileExistsError(f"{path} is not a stoker store (no {META}); refusing to "
                                  "replace it: choose another path or remove it yourself")
        if (path / META).exists() and not (path / META).is_file():
            raise FileExistsError(f"{path / META} is not a file, so {path} is not a stoker "
                                  "store; refusing to replace it: remove it yourself")


def _files_of(field: Mapping[str, Any]) -> list[str]:
    """The files of one field of the manifest: its ``.npy``, and a blob field's data."""
    return [field["file"], field["data"]] if field.get("blobs") else [field["file"]]


def _described(field: Mapping[str, Any]) -> tuple[str, Any, Any]:
    """(name, dtype, per-sample shape) of a manifest field; a blob field's are words."""
    if field.get("blobs"):
        return field["name"], "bytes", "variable"
    return field["name"], np.dtype(field["dtype"]), tuple(field["shape"])


_OFFSET = np.dtype("<i8")  # a blob field's offsets, on disk


class _FieldOut:
    """One field's files while they are written: its ``.npy`` (the rows, or a blob
    field's offsets, from 0) and a blob field's data, each with its running SHA-256; the
    headers are written with the final sizes by :meth:`finish`."""

    def __init__(self, folder: Path, entry: dict[str, Any]) -> None:
        self.entry = entry
        self.blobs = bool(entry.get("blobs"))
        self._handles = []
        self._digests = []
        for file in _files_of(entry):
            handle = (folder / file).open("wb")
            self._handles.append(handle)
            handle.write(b"\0" * HEADER_BYTES)  # rewritten with the final sizes
            self._digests.append(hashlib.sha256())
        self.total = 0  # a blob field's bytes so far
        if self.blobs:
            self._put(0, np.zeros(1, _OFFSET))

    def _put(self, which: int, array: np.ndarray) -> None:
        data = np.ascontiguousarray(array).view(np.uint8).reshape(-1)
        self._handles[which].write(data)
        self._digests[which].update(data)

    def write(self, value: Any) -> None:
        if not self.blobs:
            self._put(0, value)
            return
        if isinstance(value, BytesList):
            value = value.blobs()
        start, stop = int(value.offsets[0]), int(value.offsets[-1])
        self._put(1, value.data[start:stop])
        self._put(0, value.offsets[1:].astype(_OFFSET) - start + self.total)
        self.total += stop - start

    def finish(self, count: int) -> None:
        if self.blobs:
            headers = [_npy_header(_OFFSET, (count + 1,)),
                       _npy_header(np.dtype(np.uint8), (self.total,))]
        else:
            headers = [_npy_header(np.dtype(self.entry["dtype"]),
                                   (count, *self.entry["shape"]))]
        for handle, header in zip(self._handles, headers, strict=True):
            handle.seek(0)
            handle.write(header)
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
        self.entry["sha256"] = self._digests[0].hexdigest()
        if self.blobs:
            self.entry["data_sha256"] = self._digests[1].hexdigest()

    def close(self) -> None:
        for handle in self._handles:
            handle.close()


class Writer:
    """Stream batches into a new store; commit atomically on :meth:`close`.

        with stoker.store.Writer("kanji.stoker", classes=names) as writer:
            for images, labels in chunks:        # any number, any size
                writer.append((images, labels))  # leading axis: samples

    A batch is what ``from_arrays`` takes: an array, a tuple or list of arrays (fields),
    or a dict of them. The first batch fixes the structure, the dtypes and the
    per-sample shapes; later batches must match exactly. Leaving the ``with`` block by
    an exception (Ctrl-C included) discards everything written; with
    ``overwrite=True`` the store at ``path`` is replaced at one instant, on close.
    """

    def __init__(self, path: str | os.PathLike, *, classes: Iterable[Any] | None = None,
                 overwrite: bool = False) -> None:
        if not isinstance(overwrite, bool):
            raise TypeError(f"overwrite must be True or False, got {overwrite!r}")
        # Absolute and through symlinks: the temporary is built beside the real target
        # (one filesystem, so renames stay atomic), whatever the working folder later is.
        self.path = Path(os.path.realpath(path))
        self.classes = _classes(classes)
        if self.classes == []:
            raise ValueError("classes is empty; pass the class names (label i is "
                             "classes[i]) or leave classes=None")
        self.overwrite = overwrite
        _refuse_target(self.path, overwrite)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(self.path)
        self.generation = uuid.uuid4().hex[:16]
        self._pid = os.getpid()
        self._closed = True  # until the temporary exists: nothing to discard
        self._committed = False
        self._broken: str | None = None  # why an append failed half-way
        self._moved: list[Path] = []  # files this write put in the store's folder
        self._tmp = self.path.parent / f".{self.path.name}.tmp-{self.generation}"
        self._lease = _Lease(self._tmp.with_name(self._tmp.name + ".lease"))
        try:
            self._tmp.mkdir()
        except BaseException:
            self._lease.release()
            raise
        self._kind: str | None = None
        self._fields: list[dict[str, Any]] = []
        self._outs: list[_FieldOut] = []
        self.count = 0
        self._closed = False

    def append(self, batch: Any) -> None:
        """Add a batch of samples (leading axis: samples) in the store's structure."""
        if self._closed:
            raise ValueError(f"the writer for {self.path} is closed")
        if self._broken:
            raise ValueError(f"the writer for {self.path} is broken: {self._broken}; "
                             "nothing can be saved from it, start a new one")
        kind, fields = _structure(batch)
        if self._kind is None:
            self._start(kind, fields)
        self._check(kind, fields)
        self._check_labels(fields)
        try:
            for out, (_, value) in zip(self._outs, fields, strict=True):
                out.write(value)
        except BaseException as error:
            # Some fields may have this batch and others not: the files no longer agree,
            # and close() must not commit them.
            self._broken = f"an append failed half-way ({type(error).__name__}: {error})"
            raise
        self.count += len(fields[0][1])

    def _start(self, kind: str, fields: list[tuple[str, np.ndarray]]) -> None:
        entries = []
        for position, (name, array) in enumerate(fields):  # all checked before any is kept
            file = f"field_{position}.{self.generation}.npy"
            if isinstance(array, (Blobs, BytesList)):
                entries.append({"name": name, "file": file, "blobs": True,
                                "data": f"field_{position}.{self.generation}.data.npy"})
                continue
            if array.dtype.kind == "S":
                raise TypeError(
                    f"field {name!r} is a numpy bytes array ({array.dtype}), which pads "
                    "every record to one length and drops trailing zero bytes; for "
                    "encoded records (JPEG, PNG) pass a list of bytes, which a store keeps "
                    "as they are (a blob field)"
                )
            if array.dtype.hasobject or array.dtype.kind not in _STORED_KINDS:
                raise TypeError(
                    f"field {name!r} has dtype {array.dtype}; stores hold numbers and "
                    "booleans only (convert dates with .astype('int64'); map strings to "
                    "integer labels and pass the names as classes=)"
                )
            _npy_header(array.dtype, (2**62, *array.shape[1:]))  # fits, whatever the count
            entries.append({"name": name, "file": file,
                            "dtype": array.dtype.str, "shape": list(array.shape[1:])})
        for entry in entries:
            self._outs.append(_FieldOut(self._tmp, entry))
            self._fields.append(entry)
        self._kind = kind

    def _check(self, kind: str, fields: list[tuple[str, np.ndarray]]) -> None:
        expected = [_described(f) for f in self._fields]
        got = [(n, "bytes", "variable") if isinstance(a, (Blobs, BytesList))
               else (n, a.dtype, a.shape[1:]) for n, a in fields]
        if kind != self._kind or [n for n, *_ in got] != [n for n, *_ in expected]:
            raise ValueError(f"batch structure changed: the store holds {self._kind} samples "
                             f"with fields {[n for n, *_ in expected]}, this batch is {kind} "
                             f"with {[n for n, *_ in got]}")
        for (name, dtype, shape), (_, got_dtype, got_shape) in zip(expected, got, strict=True):
            if str(got_dtype) != str(dtype) or got_shape != shape:
                raise ValueError(
                    f"field {name!r} changed from {shape} {dtype} to {got_shape} {got_dtype}; "
                    "every batch must match the first (convert before appending)"
                )

    def _label_position(self) -> int | None:
        return label_position(self._kind, self._fields, self.classes)

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
        """Finish the files, fsync, and commit the store. Returns its path."""
        if self._closed:
            return self.path
        if self._broken:
            self.abort()
            raise ValueError(f"{self._broken}, so nothing was saved and {self.path} is as "
                             "it was; write it again")
        if self.count == 0:
            self.abort()
            raise ValueError(f"no samples were written to {self.path}; nothing was saved")
        try:
            for out in self._outs:
                out.finish(self.count)
            blobs = any(field.get("blobs") for field in self._fields)
            meta: dict[str, Any] = {
                "format": FORMAT, "version": BLOBS_VERSION if blobs else VERSION,
                "generation": self.generation,
                "count": self.count, "kind": self._kind, "fields": self._fields,
                "classes": self.classes,
            }
            meta["meta_sha256"] = hashlib.sha256(_canonical(meta)).hexdigest()
            self._meta_bytes = json.dumps(meta, indent=1).encode()
            _write_synced(self._tmp / META, self._meta_bytes)
            fsync_path(self._tmp)
            self._commit(meta)
        except BaseException as error:
            if not self._committed:
                self.abort()  # which sees a commit that happened all the same
            if not self._committed:
                raise
            if not isinstance(error, Exception):
                raise  # Ctrl-C after the commit point: the store is saved, and it stops
        finally:
            if self._committed:  # saved: what follows the commit point is best effort
                self._closed = True
                with contextlib.suppress(OSError):
                    self._clean_up()
                if not getattr(self, "_swept", True):  # interrupted before it swept
                    _sweep(self.path)
        return self.path

    def _commit(self, meta: dict[str, Any]) -> None:
        if not (self.path.is_symlink() or self.path.exists()):
            try:  # a new store: the whole directory appears at once
                os.rename(self._tmp, self.path)
            except OSError:
                if not (self.path.is_symlink() or self.path.exists()):
                    raise
            else:
                self._committed = True
                with contextlib.suppress(OSError):
                    fsync_path(self.path.parent)
                return
        if not self.overwrite:  # another writer created it meanwhile
            raise FileExistsError(f"{self.path} appeared while writing; nothing replaced")
        _refuse_target(self.path, True)
        with _store_lock(self.path):
            _collect_unnamed(self.path)  # what writers killed in here left
            self._swept = False
            for field in meta["fields"]:  # named by nothing yet: invisible to readers
                for file in _files_of(field):
                    self._moved.append(self.path / file)
                    os.rename(self._tmp / file, self.path / file)
            fsync_path(self.path)
            staged = self.path / f".meta-{self.generation}.tmp"
            self._moved.append(staged)
            _write_synced(staged, self._meta_bytes)
            os.replace(staged, self.path / META)  # the commit point
            self._committed = True
            with contextlib.suppress(OSError):
                fsync_path(self.path)
            with contextlib.suppress(OSError):
                _collect_garbage(self.path, meta)
                self._swept = True

    def abort(self) -> None:
        """Discard everything written; ``path`` is left as it was. Does nothing in a
        forked child (the write is its parent's)."""
        if self._committed or os.getpid() != self._pid or self._on_disk():
            self._committed = self._committed or os.getpid() == self._pid
            self._closed = True
            return
        for out in self._outs:
            out.close()
        for moved in self._moved:  # moved into the store's folder, never committed
            with contextlib.suppress(OSError):
                moved.unlink()
        self._clean_up()
        self._closed = True

    def _on_disk(self) -> bool:
        """Whether the commit happened although this writer did not see it return (a
        Ctrl-C landing right after ``os.replace``): then the store is this write's, and
        nothing of it may be removed."""
        expected = getattr(self, "_meta_bytes", None)
        if expected is None:
            return False
        try:
            return (self.path / META).read_bytes() == expected
        except OSError:
            return False

    def _clean_up(self) -> None:
        if os.getpid() != self._pid:
            return
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._lease.release()

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, kind: Any, error: Any, traceback: Any) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True) and getattr(self, "_pid", None) == os.getpid():
            self.abort()


def _write_synced(path: Path, data: bytes) -> None:
    with path.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def label_position(kind: str | None, fields: list[Mapping[str, Any]],
                   classes: list[Any] | None) -> int | None:
    """Which field holds class indices, when there are class names: the ``label`` entry
    of dict samples, the second of (image, label) tuples; integer scalars only."""
    if classes is None:
        return None
    names = [f["name"] for f in fields]
    position = (names.index("label") if kind == "dict" and "label" in names
                else 1 if kind == "tuple" and len(names) == 2 else None)
    if position is None:
        return None
    field = fields[position]
    if field.get("blobs"):
        return None
    return position if not field["shape"] and np.dtype(field["dtype"]).kind in "iu" else None


# -- Saving any data -----------------------------------------------------------------------


def save(path: str | os.PathLike, data: Any, *, classes: Iterable[Any] | None = None,
         overwrite: bool = False, progress: bool = False) -> Path:
    """Write ``data`` as a store at ``path``, streaming, in constant memory.

    ``data`` is what ``from_arrays`` takes, as one argument: an array, a tuple or list
    of equal-length arrays (the fields: ``(x, y)``), or a dict of them; or any source
    (``from_arrays``, another store, a ``split`` of either, anything with
    ``__len__``/``__getitem__``), read a chunk at a time. ``classes`` defaults to
    ``data.classes`` when it has them; ``progress=True`` shows a progress bar. A store
    already at ``path`` is refused unless ``overwrite=True``: then it is replaced at one
    instant (readers see the old store or the new one).
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
    """The batches ``save`` appends, each at most about ``_CHUNK_BYTES``, and their total."""
    if isinstance(data, (ArraySource, StoreSource)):
        return _sliced(data.arrays, "save")  # views and maps: slicing copies nothing
    if isinstance(data, Subset) and isinstance(data.base, (ArraySource, StoreSource)):
        return _gathered(data.base.arrays, data.indices)
    if isinstance(data, (np.ndarray, Mapping, tuple, list)):
        return _sliced(data, "save")
    if not (hasattr(data, "__len__") and hasattr(data, "__getitem__")):
        raise TypeError(
            f"save() needs arrays (x, a tuple (x, y) or a dict of arrays) or a source, got "
            f"{type(data).__name__}"
        )
    n = len(data)
    if n == 0:
        raise ValueError("the source is empty (0 samples); there is nothing to save")
    first = data[0]
    first_kind, first_fields = _sample_fields(first)
    row_bytes = max(1, sum(a.nbytes for _, a in first_fields))
    step = max(1, _CHUNK_BYTES // row_bytes)
    reference = _Reference.of(first, first_kind)

    def stacked():
        for start in range(0, n, step):
            samples = [data[i] for i in range(start, min(n, start + step))]
            for offset, sample in enumerate(samples):
                reference.check(sample, start + offset)
            yield _stack(samples, first_kind)
    return stacked(), n


@dataclass(frozen=True)
class _Reference:
    """Sample 0 of a source that ``save`` reads sample by sample: its structure, and each
    field's shape and dtype (None: a field of byte records). Every other sample must
    match it, so that no field is dropped and no dtype promoted without a word."""

    kind: str
    names: tuple[str, ...]
    fields: tuple[tuple[tuple[int, ...], np.dtype] | None, ...]

    @classmethod
    def of(cls, sample: Any, kind: str) -> _Reference:
        values = _values_of(sample, kind)
        names = tuple(str(k) for k in sample) if kind == "dict" else tuple(
            str(i) for i in range(len(values)))
        fields = tuple(None if is_blob_list([v]) else (np.shape(v), np.asarray(v).dtype)
                       for v in values)
        return cls(kind, names, fields)

    def _field(self, position: int) -> str:
        return {"dict": f"field {self.names[position]!r}", "tuple": f"element {position}",
                "array": "the sample"}[self.kind]

    def check(self, sample: Any, index: int) -> None:
        kind = ("dict" if isinstance(sample, Mapping) else "tuple"
                if isinstance(sample, (tuple, list)) else "array")
        names = (tuple(str(k) for k in sample) if kind == "dict"
                 else tuple(str(i) for i in range(len(sample))) if kind == "tuple" else ())
        if kind != self.kind or (kind != "array" and names != self.names):
            raise ValueError(
                f"sample {index} is {_describe(kind, names)}, but sample 0 is "
                f"{_describe(self.kind, self.names)}; save() stores one structure for every "
                "sample: make the source return the same fields for each"
            )
        for position, (value, field) in enumerate(
                zip(_values_of(sample, kind), self.fields, strict=True)):
            blob = is_blob_list([value])
            if field is None or blob:
                if field is None and blob:
                    continue
                was = "byte records" if field is None else "an array"
                raise ValueError(
                    f"sample {index}: {self._field(position)} is "
                    f"{'byte records' if blob else 'an array'}, but sample 0's is {was}; "
                    "every sample must hold the same kind of field"
                )
            shape, dtype = np.shape(value), np.asarray(value).dtype
            if (shape, dtype) != field:
                raise ValueError(
                    f"sample {index}: {self._field(position)} has shape {shape} and dtype "
                    f"{dtype}, but sample 0's has shape {field[0]} and dtype {field[1]}; "
                    "save() stores every sample with one shape and dtype per field, never "
                    "converting one: make them equal in the source ("
                    + (f"e.g. .astype(np.{field[1]}))" if shape == field[0]
                       else "one size for every image, e.g. cv2.resize)")
                )


def _values_of(sample: Any, kind: str) -> list[Any]:
    if kind == "dict":
        return list(sample.values())
    return list(sample) if kind == "tuple" else [sample]


def _describe(kind: str, names: tuple[str, ...]) -> str:
    if kind == "dict":
        return f"a dict with keys {list(names)}"
    return f"a tuple of {len(names)} elements" if kind == "tuple" else "an array"


def _rebuild(kind: str, fields: list[tuple[str, np.ndarray]], parts: list[np.ndarray]) -> Any:
    if kind == "array":
        return parts[0]
    if kind == "dict":
        return dict(zip([name for name, _ in fields], parts, strict=True))
    return tuple(parts)


def _step(fields: list[tuple[str, Any]]) -> int:
    row_bytes = max(1, sum(a.nbytes // max(1, len(a)) if isinstance(a, (Blobs, BytesList))
                           else a[:1].nbytes
                           for _, a in fields))
    return max(1, _CHUNK_BYTES // row_bytes)


def _sliced(data: Any, caller: str) -> tuple[Iterable[Any], int]:
    if isinstance(data, (tuple, list, Mapping)) and not data:
        raise ValueError(f"{caller}() got an empty {type(data).__name__}: there is nothing to "
                         "save; pass arrays, e.g. save(path, (x, y))")
    kind, fields = _structure(data, caller)
    n = len(fields[0][1])
    if n == 0:
        raise ValueError(f"{caller}() got empty arrays (0 samples); there is nothing to save")
    step = _step(fields)

    def sliced():
        for start in range(0, n, step):
            yield _rebuild(kind, fields, [a[start:start + step] for _, a in fields])
    return sliced(), n


def _gathered(arrays: Any, indices: np.ndarray) -> tuple[Iterable[Any], int]:
    """A subset of arrays, a chunk of rows at a time (never the whole subset at once)."""
    kind, fields = _structure(arrays, "save")
    step = _step(fields)

    def gathered():
        for start in range(0, len(indices), step):
            rows = indices[start:start + step]
            yield _rebuild(kind, fields, [a[rows] for _, a in fields])
    return gathered(), len(indices)


def _sample_fields(sample: Any) -> tuple[str, list[tuple[str, np.ndarray]]]:
    """(kind, [(name, value)]) of one sample: an array, a tuple or a dict of
    arrays/scalars."""
    if isinstance(sample, Mapping):
        return "dict", [(str(k), np.asarray(v)) for k, v in sample.items()]
    if isinstance(sample, (tuple, list)):
        return "tuple", [(str(i), np.asarray(v)) for i, v in enumerate(sample)]
    return "array", [("0", np.asarray(sample))]


def _column(values: list[Any]) -> Any:
    """One field of a chunk of samples: stacked, or a list of ``bytes`` as they are (a
    blob field)."""
    if is_blob_list(values):
        return values
    return np.stack([np.asarray(v) for v in values])


def _stack(samples: list[Any], kind: str) -> Any:
    if kind == "array":
        return _column(samples)
    if kind == "dict":
        return {k: _column([s[k] for s in samples]) for k in samples[0]}
    return tuple(_column([s[i] for s in samples]) for i in range(len(samples[0])))


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


def _read_meta(path: Path) -> tuple[dict[str, Any], bytes]:
    """The manifest, validated field by field (not the files it names), and its bytes."""
    meta_path = path / META
    if not path.exists():
        raise StoreError(f"no store at {path}")
    if not path.is_dir():
        raise StoreError(f"{path} is a file, not a stoker store (a store is a directory)")
    try:
        raw = meta_path.read_bytes()
    except FileNotFoundError:
        raise StoreError(
            f"{path} is not a stoker store: {META} is missing (an interrupted write never "
            "leaves a store behind; write it again with stoker.store.save or stoker ingest)"
        ) from None
    except OSError as error:
        raise StoreError(f"{meta_path} cannot be read: {error}") from None
    try:
        meta = json.loads(raw)
    except (ValueError, RecursionError) as error:  # RecursionError: absurdly nested
        raise StoreError(f"{meta_path} is corrupt: {error}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise StoreError(f"{meta_path} does not describe a stoker store (format "
                         f"{meta.get('format') if isinstance(meta, dict) else None!r})")
    if type(meta.get("version")) is int and meta["version"] > max(READS):
        raise StoreError(
            f"{meta_path} is store format version {meta['version']}, written by a newer "
            f"stoker; this one reads versions {', '.join(map(str, READS))}: upgrade stoker "
            "(pip install -U stoker)"
        )
    if type(meta.get("version")) is not int or meta["version"] not in READS:
        raise StoreError(
            f"{meta_path} is store format version {meta.get('version')!r}; this stoker "
            f"reads versions {', '.join(map(str, READS))}. Re-create it with this version "
            "(stoker ingest)."
        )
    if meta["version"] >= 2 and meta.get("meta_sha256") != hashlib.sha256(
            _canonical(meta)).hexdigest():
        raise StoreError(f"{meta_path} does not match its own checksum: it was edited or "
                         "damaged after it was written. Write the store again.")
    try:
        _check_meta(meta)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise StoreError(f"{meta_path} is corrupt: {error}") from None
    return meta, raw


def _check_meta(meta: dict[str, Any]) -> None:
    """Everything ``open`` relies on, checked: the count, the structure, each field,
    unique names, the class names and the generation."""
    count, kind, entries = meta["count"], meta["kind"], meta["fields"]
    if type(count) is not int or count < 1:
        raise ValueError(f"count {count!r} is not a positive int")
    if kind not in ("array", "tuple", "dict") or not isinstance(entries, list) or not entries:
        raise ValueError(f"kind {kind!r} with fields {entries!r}")
    if kind == "array" and len(entries) != 1:
        raise ValueError(f"an array store has one field, this one {len(entries)}")
    generation = meta.get("generation") if meta["version"] >= 2 else None
    if meta["version"] >= 2 and not (isinstance(generation, str)
                                     and re.fullmatch(r"[0-9a-f]{16}", generation)):
        raise ValueError(f"generation {generation!r}")
    if meta["version"] < BLOBS_VERSION and any(
            isinstance(entry, dict) and "blobs" in entry for entry in entries):
        raise ValueError(f"a blob field in a version {meta['version']} store")
    names = [_field(entry, position, generation)[0] for position, entry in enumerate(entries)]
    if len(set(names)) != len(names):
        raise ValueError(f"two fields share a name: {names}")
    if kind == "tuple" and names != [str(i) for i in range(len(names))]:
        raise ValueError(f"tuple fields are named {names}")
    classes = meta.get("classes")
    if classes is not None:
        if not isinstance(classes, list):
            raise ValueError(f"classes is {classes!r}, not a list of class names")
        _classes(classes)


def _field(entry: Any, position: int, generation: str | None
           ) -> tuple[str, str, np.dtype | None, tuple[int, ...] | None]:
    """One field of ``meta.json``, checked: a plain name, the file this version names
    (never a path elsewhere), a numeric dtype, a shape of non-negative ints; a blob
    field (dtype and shape None) its data file and both checksums."""
    name, file = entry["name"], entry["file"]
    expected = (f"field_{position}.npy" if generation is None
                else f"field_{position}.{generation}.npy")
    if not isinstance(name, str) or file != expected:
        raise ValueError(f"field {position} has name {name!r} and file {file!r}")
    if "blobs" in entry:
        data = f"field_{position}.{generation}.data.npy"
        if entry["blobs"] is not True or generation is None or entry.get("data") != data:
            raise ValueError(f"blob field {position} names data {entry.get('data')!r}")
        if not (isinstance(entry.get("sha256"), str)
                and isinstance(entry.get("data_sha256"), str)):
            raise ValueError(f"blob field {position} has no checksums")
        return name, file, None, None
    shape = entry["shape"]
    if not isinstance(shape, list) or any(type(d) is not int or d < 0 for d in shape):
        raise ValueError(f"field {position} has shape {shape!r}")
    dtype = np.dtype(entry["dtype"]) if isinstance(entry["dtype"], str) else None
    if dtype is None or dtype.kind not in _STORED_KINDS or dtype.hasobject:
        raise ValueError(f"field {position} has dtype {entry['dtype']!r}")
    if not isinstance(entry.get("sha256"), str):
        raise ValueError(f"field {position} has no checksum")
    return name, file, dtype, tuple(shape)


def _fields(meta: dict[str, Any]) -> list[tuple[str, str, Any, Any]]:
    generation = meta.get("generation") if meta["version"] >= 2 else None
    return [_field(entry, position, generation) for position, entry in enumerate(meta["fields"])]


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


def _identity(meta: dict[str, Any], raw: bytes) -> str:
    """What tells this store from any other written at the same path."""
    return meta.get("generation") or hashlib.sha256(raw).hexdigest()[:16]


def _mapped_blobs(path: Path, file: str, count: int) -> Blobs:
    """A blob field's two files mapped and its offsets checked (``field_N.GEN.npy`` and
    ``field_N.GEN.data.npy``)."""
    _check_file(path / file, _OFFSET, (count + 1,))
    offsets = np.asarray(np.memmap(path / file, dtype=_OFFSET, mode="r", offset=HEADER_BYTES,
                                   shape=(count + 1,)))
    data_file = path / file.replace(".npy", ".data.npy")
    total = int(offsets[-1])
    if total < 0:
        raise StoreError(f"{path / file} is corrupt: its last offset is {total}")
    try:
        _check_file(data_file, np.dtype(np.uint8), (total,))
    except StoreError as error:
        raise StoreError(f"{error} (the last record offset in {path / file} says {total} "
                         "bytes)") from None
    data = (np.asarray(np.memmap(data_file, dtype=np.uint8, mode="r", offset=HEADER_BYTES,
                                 shape=(total,))) if total else np.empty(0, np.uint8))
    problem = offsets_problem(offsets, total)
    if problem:
        raise StoreError(f"{path / file} is corrupt: the record offsets {problem}")
    return Blobs(offsets, data, check=False)


def _mapped(path: Path) -> tuple[dict[str, Any], str, list[np.ndarray]]:
    """The manifest, the store's identity and its files mapped, consistently: a file
    gone or changed under an overwrite sends the reader back to the new manifest."""
    for _ in range(_OPEN_ATTEMPTS):
        meta, raw = _read_meta(path)
        try:
            arrays: list[Any] = []
            for _, file, dtype, shape in _fields(meta):
                if dtype is None:
                    arrays.append(_mapped_blobs(path, file, meta["count"]))
                    continue
                _check_file(path / file, dtype, (meta["count"], *shape))
                # Plain ndarray views of the maps: indexing a np.memmap costs
                # microseconds of subclass bookkeeping per sample.
                arrays.append(np.asarray(np.memmap(path / file, dtype=dtype, mode="r",
                                                   offset=HEADER_BYTES,
                                                   shape=(meta["count"], *shape))))
            return meta, _identity(meta, raw), arrays
        except (StoreError, OSError, ValueError):
            with contextlib.suppress(OSError):
                if (path / META).read_bytes() != raw:
                    continue  # overwritten meanwhile: read the new store
            raise
    raise StoreError(f"the store at {path} was overwritten {_OPEN_ATTEMPTS} times while it was "
                     "being opened; open it again when its writers are done")


class StoreSource(_ArrayFields):
    """A store, memory-mapped: samples are read-only views into the page cache.

    Pickles as its path and identity: each worker maps the same files, so the data is
    held once by the operating system however many workers read it, and a worker that
    finds another store at the path (overwritten since) refuses it.
    """

    def __init__(self, path: str | os.PathLike, identity: str | None = None) -> None:
        self.path = Path(path).resolve()
        meta, self.identity, self._arrays = _mapped(self.path)
        if identity is not None and identity != self.identity:
            raise StoreError(
                f"the store at {self.path} was replaced (overwritten) after this loader "
                "opened it, so its workers would read other data than it planned for. "
                "Open the store again (stoker.store.open) and make a new Loader."
            )
        self._meta = meta
        self._kind = meta["kind"]
        self._names = [f["name"] for f in meta["fields"]]
        self.classes = meta.get("classes")

    def __len__(self) -> int:
        return int(self._meta["count"])

    def __reduce__(self):
        return (StoreSource, (str(self.path), self.identity))

    def __repr__(self) -> str:
        fields = ", ".join(f"{f['name']}: encoded bytes" if f.get("blobs") else
                           f"{f['name']}: {tuple(f['shape'])} {np.dtype(f['dtype'])}"
                           for f in self._meta["fields"])
        return f"<StoreSource {len(self)} samples ({fields}) at {self.path}>"


def open(path: str | os.PathLike) -> StoreSource:
    """Open the store at ``path`` as a source (memory-mapped; checks the manifest,
    structure and sizes, not every byte: :func:`verify` does that)."""
    return StoreSource(path)


def verify(path: str | os.PathLike, *, progress: bool = False) -> None:
    """Check every byte of the store at ``path`` against its checksums, and its labels
    against its class names; raise :class:`StoreError` naming the first problem.
    ``progress=True`` shows a progress bar."""
    path = Path(path)
    # One consistent generation, mapped: an overwrite meanwhile does not pull files
    # from under the check (mapped files stay readable after they are removed).
    meta, _, arrays = _mapped(path)
    checked = []  # (file, its data after the header, the checksum it must have)
    for field, array in zip(meta["fields"], arrays, strict=True):
        if isinstance(array, Blobs):
            checked += [(field["file"], array.offsets, field["sha256"]),
                        (field["data"], array.data, field["data_sha256"])]
        else:
            checked.append((field["file"], array, field.get("sha256")))
    total = sum(array.nbytes for _, array, _ in checked)
    with progress_bar(total, f"verifying {path.name}", progress) as bar:
        for file, array, expected in checked:
            digest = hashlib.sha256()
            flat = array.reshape(-1).view(np.uint8)
            for start in range(0, len(flat), _CHUNK_BYTES):
                block = flat[start:start + _CHUNK_BYTES]
                digest.update(block)
                bar.update(len(block))
            if digest.hexdigest() != expected:
                raise StoreError(f"{path / file} does not match its checksum: the data "
                                 "changed after it was written (disk or copy error?)")
    position = label_position(meta["kind"], meta["fields"], meta.get("classes"))
    if position is not None:
        labels = arrays[position]
        for start in range(0, len(labels), _CHUNK_BYTES // 8):
            part = labels[start:start + _CHUNK_BYTES // 8]
            bad = np.flatnonzero((part < 0) | (part >= len(meta["classes"])))
            if len(bad):
                raise StoreError(
                    f"sample {start + int(bad[0])} of {path} has label {part[bad[0]]}, outside "
                    f"its {len(meta['classes'])} class names"
                )
