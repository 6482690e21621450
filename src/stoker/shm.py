"""Shared-memory blocks and who owns them.

Ownership rules:

* A block has exactly one owner: the object that ``create``\\ d it in the consumer
  process (an ``ArraySource`` for the dataset, a processes executor for its batch slots).
  Only the owner unlinks, and only after the workers that attached to it are gone.
* Workers ``attach`` by name and only ever ``close`` (unmap); they never unlink. A block
  pickles as its name, so sending one to a worker attaches there.
* ``release`` is idempotent, and a ``weakref.finalize`` calls it when an owner is
  garbage-collected or the interpreter exits; if the owning process is killed outright,
  multiprocessing's resource tracker unlinks what was left.
* Ownership does not travel through ``fork``: a forked child's copy of an owner only
  unmaps (its parent, still running, reads the block), as a child's copy of a loader
  stops no worker (``loader.py``, ``processes.py``). A batch lent to the consumer (a
  view of a slot) is made private in the child (``privatize``), so that the parent's
  and the child's copies are each their own, as any other array is after a fork.
* **Unlinking may be eager; unmapping never happens under a live view.** Every numpy
  view ``ndarray`` hands out holds a buffer export on the mapping, so ``release`` cannot
  unmap while one is alive: it closes the file descriptor and unlinks (the owner) at
  once, and the mapping (and the descriptor Python's ``mmap`` keeps of its own) goes
  with the last view. An array stoker hands out can never point into unmapped memory
  (a segfault), whoever dropped the block first. A batch the processes executor lent
  (a view of its slot, ``_batches.py``) is such a view too.
* A Ray actor on the consumer's node writes batches into a landing block of the
  executor's through ``map_shared``: mapped by name, never registered with the actor's
  own resource tracker (which would unlink the block when the actor exits) and never
  unlinked there; the mapping outlives the name, so an owner that lets go first leaves
  the actor writing into memory nobody reads, never into freed memory.
* Space is reserved when a block is created (``posix_fallocate``), so a full /dev/shm
  raises a clear ``OSError`` here instead of a SIGBUS in a worker later.
"""

from __future__ import annotations

import errno
import mmap
import os
import secrets
import shutil
import weakref
from multiprocessing import shared_memory
from typing import Any

import numpy as np

from ._fork import install as install_fork_hook

__all__ = ["NAME_PREFIX", "BlockGone", "SharedBlock", "map_private", "map_shared", "privatize"]

NAME_PREFIX = "stoker_"
_ALIGN = 64


class BlockGone(FileNotFoundError):
    """A block to attach no longer exists: its owner released it, or exited."""

    def __init__(self, name: str, purpose: str = "data") -> None:
        owner = name[len(NAME_PREFIX):].split("_")[0] if name.startswith(NAME_PREFIX) else "?"
        alive = owner.isdigit() and _alive(int(owner))
        made_by = f"pid {owner}{', still running' if alive else ', which has exited'}"
        if purpose in ("data", "dataset"):
            said = (f"the shared memory {name} no longer exists: the process that made it "
                    f"({made_by}) freed it (release(), close(), or its exit). Make the "
                    "source again in this process (stoker.from_arrays(...)) and a new "
                    "Loader over it")
        else:  # a loader's own block (batch slots, counters, ...): it was closed
            said = (f"the shared memory {name} ({purpose}) no longer exists: the loader "
                    f"that made it ({made_by}) was closed, or its process exited, before "
                    "this worker attached it; nothing waits for this worker. Make a new "
                    "Loader if that one is still needed")
        super().__init__(said)
        self.name = name

    def __reduce__(self) -> tuple[Any, tuple[type, str, str], dict[str, Any]]:
        # as made, not made again: the message was judged where the block was missed;
        # its attributes (add_note()'s too) and its class come along
        return _block_gone, (type(self), self.name, str(self)), self.__dict__


def _block_gone(kind: type[BlockGone], name: str, message: str) -> BlockGone:
    error = kind.__new__(kind)
    FileNotFoundError.__init__(error, message)
    error.name = name
    return error


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _release(shm: shared_memory.SharedMemory, unlink: bool, pid: int) -> None:
    unlink = unlink and os.getpid() == pid  # a forked child's copy only unmaps
    try:
        shm.close()
    except BufferError:
        # Views into the block are still alive: the mapping goes when the last one does
        # (each holds an export on it). The descriptor is not needed by the mapping.
        # The views keep the mmap object alive through their exports; the block lets go
        # of it (and of the descriptor, which the mapping does not need) now.
        fd = getattr(shm, "_fd", -1)
        if fd >= 0:
            os.close(fd)
            shm._fd = -1  # type: ignore[attr-defined]
        shm._buf = None  # type: ignore[attr-defined]
        shm._mmap = None  # type: ignore[attr-defined]
    if unlink:
        try:
            shm.unlink()
        except FileNotFoundError:
            pass


def _shm_free_bytes() -> int | None:
    try:
        return shutil.disk_usage("/dev/shm").free
    except OSError:
        return None


class SharedBlock:
    """One shared-memory segment, owned (created here) or attached (created elsewhere)."""

    def __init__(self, shm: shared_memory.SharedMemory, *, owner: bool,
                 purpose: str = "data") -> None:
        self._shm = shm
        self.owner = owner
        self.purpose = purpose  # what it holds, for the error of a process that misses it
        self._finalizer = weakref.finalize(self, _release, shm, owner, os.getpid())

    @classmethod
    def create(cls, nbytes: int, *, purpose: str = "data") -> SharedBlock:
        """A new block of at least ``nbytes`` (never 0), owned by the returned object."""
        install_fork_hook()  # a forked child forgets the parent's (``_fork.py``)
        size = max(int(nbytes), 1)
        name = f"{NAME_PREFIX}{os.getpid()}_{secrets.token_hex(4)}"
        try:
            shm = shared_memory.SharedMemory(name=name, create=True, size=size)
        except OSError as error:
            raise _no_space_error(size, purpose) from error
        try:
            fd = getattr(shm, "_fd", -1)
            if fd >= 0 and hasattr(os, "posix_fallocate"):
                os.posix_fallocate(fd, 0, size)
        except OSError as error:
            _release(shm, unlink=True, pid=os.getpid())
            if error.errno in (errno.ENOSPC, errno.ENOMEM, errno.EFBIG):
                raise _no_space_error(size, purpose) from error
            if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
        return cls(shm, owner=True, purpose=purpose)

    @classmethod
    def create_many(cls, nbytes: int, count: int, *, purpose: str,
                    advice: str = "") -> list[SharedBlock]:
        """``count`` blocks of ``nbytes`` each, all or none; a shortage quotes the total."""
        blocks: list[SharedBlock] = []
        total = max(int(nbytes), 1) * count
        free = _shm_free_bytes()
        if free is not None and total > free:  # refused before anything is reserved
            raise _no_space_error(total, f"{purpose} ({count} of {total / count / 2**20:.1f} MiB)",
                                  advice)
        try:
            for _ in range(count):
                blocks.append(cls.create(nbytes, purpose=purpose))
        except OSError as error:
            for block in blocks:
                block.release()
            if error.errno != errno.ENOSPC:
                raise
            raise _no_space_error(
                max(int(nbytes), 1) * count,
                f"{purpose} ({count} of {max(int(nbytes), 1) / 2**20:.1f} MiB)",
                advice,
            ) from error.__cause__
        return blocks

    @classmethod
    def attach(cls, name: str, purpose: str = "data") -> SharedBlock:
        """Map a block that another process owns. Never unlinks it. ``BlockGone`` if it
        no longer exists."""
        try:
            shm = shared_memory.SharedMemory(name=name, create=False)
        except FileNotFoundError:
            raise BlockGone(name, purpose) from None
        return cls(shm, owner=False, purpose=purpose)

    @property
    def name(self) -> str:
        return self._shm.name

    @property
    def size(self) -> int:
        return self._shm.size

    def ndarray(self, shape: tuple[int, ...], dtype: np.dtype, offset: int = 0) -> np.ndarray:
        """A numpy view of part of the block (no copy) that keeps the mapping alive: it
        holds a buffer export on it for as long as it (or any view of it) lives."""
        dtype = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        flat = np.frombuffer(self._shm.buf, dtype=dtype, count=count, offset=offset)
        return flat.reshape(shape)

    def release(self) -> None:
        """Unmap, and unlink if this is the owner. Safe to call more than once."""
        self._finalizer()

    def __reduce__(self):
        return (SharedBlock.attach, (self.name, self.purpose))

    def __repr__(self) -> str:
        role = "owner" if self.owner else "attached"
        return f"SharedBlock({self.name!r}, {self.size} bytes, {role})"


def map_private(name: str) -> np.ndarray:
    """All of block ``name`` as writable bytes mapped copy-on-write (``MAP_PRIVATE``):
    the pages are shared with every other mapping until this process writes one, which
    then becomes its own. Nothing is registered or ever unlinked here; the mapping
    outlives the name (the owner may unlink it at any time after this returns)."""
    from multiprocessing import shared_memory as stdlib

    opener = getattr(stdlib, "_posixshmem", None)
    if opener is None:  # no POSIX shared memory (Windows): the block itself, shared
        block = SharedBlock.attach(name)
        return block.ndarray((block.size,), np.uint8)
    fd = opener.shm_open("/" + name, os.O_RDONLY, mode=0o600)
    try:
        size = os.fstat(fd).st_size
        mapping = mmap.mmap(fd, size, access=mmap.ACCESS_COPY)
    finally:
        os.close(fd)
    return np.frombuffer(mapping, np.uint8)


def map_shared(name: str) -> np.ndarray:
    """All of block ``name`` as writable bytes shared with its owner (``MAP_SHARED``),
    without registering it anywhere: for a process that writes into a block another
    process owns and must never unlink (see the ownership rules). FileNotFoundError
    where no such block exists (another machine, or already unlinked)."""
    from multiprocessing import shared_memory as stdlib

    opener = getattr(stdlib, "_posixshmem", None)
    if opener is None:  # no POSIX shared memory (Windows): attached as usual
        block = SharedBlock.attach(name)
        return block.ndarray((block.size,), np.uint8)
    fd = opener.shm_open("/" + name, os.O_RDWR, mode=0o600)
    try:
        size = os.fstat(fd).st_size
        mapping = mmap.mmap(fd, size, access=mmap.ACCESS_WRITE)
    finally:
        os.close(fd)
    return np.frombuffer(mapping, np.uint8)


_libc_mmap: Any = None


def prepare_privatize() -> None:
    """Load what ``privatize`` needs, here and now: it runs in a fork hook, where
    nothing should be imported or looked up."""
    global _libc_mmap
    if _libc_mmap is None and os.name == "posix":
        import ctypes

        try:
            function = ctypes.CDLL(None, use_errno=True).mmap
        except (OSError, AttributeError):
            return
        function.restype = ctypes.c_void_p
        function.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                             ctypes.c_int, ctypes.c_int64]
        _libc_mmap = (function, ctypes)


def privatize(array: np.ndarray) -> bool:
    """Make the pages under ``array`` this process's own: the same bytes, in anonymous
    private memory mapped at the same address (``MAP_FIXED``), so that writes by the
    processes it shared them with no longer show here and its own no longer show
    there. For a forked child's copy of a lent batch. False where it cannot."""
    if _libc_mmap is None or array.nbytes == 0:
        return False
    function, ctypes = _libc_mmap
    page = mmap.PAGESIZE
    start = array.ctypes.data // page * page
    end = -(-(array.ctypes.data + array.nbytes) // page) * page
    saved = ctypes.string_at(start, end - start)
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_FIXED", 0x10)
    got = function(start, end - start, mmap.PROT_READ | mmap.PROT_WRITE, flags, -1, 0)
    if got != start:  # MAP_FAILED: nothing was replaced
        return False
    ctypes.memmove(start, saved, end - start)
    return True


def aligned(offset: int) -> int:
    """``offset`` rounded up to a cache line, so each array in a block starts aligned."""
    return -(-offset // _ALIGN) * _ALIGN


def _no_space_error(size: int, purpose: str, advice: str = "") -> OSError:
    free = _shm_free_bytes()
    have = f"{free / 2**20:.0f} MiB are free" if free is not None else "its free space is unknown"
    return OSError(
        errno.ENOSPC,
        f"not enough shared memory for the {purpose}: {size / 2**20:.1f} MiB are needed and "
        f"{have} in /dev/shm. {advice}Free space there (remove stale segments), enlarge it "
        "(Docker: `--shm-size=2g`; Linux: `mount -o remount,size=8G /dev/shm`), or for a "
        "dataset larger than memory use an on-disk store (stoker.store), which is "
        "memory-mapped instead.",
    )
