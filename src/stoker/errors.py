"""The exceptions stoker raises: one base class, and one class per way a loader can fail."""

from __future__ import annotations

import signal

__all__ = ["LoaderError", "RemoteTraceback", "TransformError", "WorkerCrashed"]


class LoaderError(RuntimeError):
    """Base class of every error that stoker raises while loading data."""


class RemoteTraceback(Exception):
    """The traceback text of an exception raised in a worker process.

    Attached as ``__cause__`` of the original exception, so that Python prints the
    worker's stack above the consumer's (as ``concurrent.futures`` does).
    """

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text}"""'


class TransformError(LoaderError):
    """Producing one sample failed: the source's ``__getitem__`` or the transform raised,
    or the transform returned something that does not fit the batch; or the
    ``batch_transform`` failed on a batch, or returned something that does not fit.

    ``message`` says what happened; ``index`` is the sample's position in the loader's
    source (None for a batch transform's failure) and ``batch`` the batch's number in
    its epoch (None for a sample's); ``epoch`` is its epoch (None where not known). The
    original exception is ``__cause__`` (with the worker's traceback as its own
    ``__cause__``).
    """

    def __init__(self, message: str, *, index: int | None, epoch: int | None = None,
                 batch: int | None = None) -> None:
        super().__init__(message)
        self.index = index
        self.epoch = epoch
        self.batch = batch


class WorkerCrashed(LoaderError):
    """A worker process died without reporting an error (killed, segfault, out of memory).

    ``message`` says what happened and ``worker_id`` which worker died; ``exitcode``
    follows ``multiprocessing``: negative for a signal (``-9`` is SIGKILL).
    ``crashes`` lists every crash seen by this loader, oldest first, as
    ``(worker_id, exitcode)`` pairs.
    """

    def __init__(
        self,
        message: str,
        *,
        exitcode: int | None,
        worker_id: int,
        crashes: tuple[tuple[int, int | None], ...] = (),
    ) -> None:
        super().__init__(message)
        self.exitcode = exitcode
        self.worker_id = worker_id
        self.crashes = crashes

    @property
    def signal(self) -> signal.Signals | None:
        """The signal that killed the worker, or None if it exited by itself."""
        if self.exitcode is None or self.exitcode >= 0:
            return None
        try:
            return signal.Signals(-self.exitcode)
        except ValueError:
            return None


def describe(error: BaseException) -> str:
    """'KeyError: 5' — an exception of user code, for messages. One whose ``__str__``
    raises is still named (formatting it must not become a second failure)."""
    try:
        text = str(error)
    except Exception as broken:
        text = f"<its str() raised {type(broken).__name__}>"
    return f"{type(error).__name__}: {text}"


def describe_exitcode(exitcode: int | None) -> str:
    """'killed by SIGKILL (-9)' / 'exited with code 1' / 'no exit code' — for messages."""
    if exitcode is None:
        return "is unresponsive (no exit code)"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = ""
        if -exitcode == signal.SIGKILL:
            hint = " (often the kernel's out-of-memory killer: check `dmesg`)"
        elif -exitcode == signal.SIGSEGV:
            hint = " (a crash in native code, e.g. an extension used by the transform)"
        return f"was killed by {name} ({exitcode}){hint}"
    return f"exited with code {exitcode}"
