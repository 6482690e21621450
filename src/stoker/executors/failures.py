"""Turning what went wrong in a worker into the exception the consumer sees."""

from __future__ import annotations

import pickle

from ..errors import RemoteTraceback, TransformError

__all__ = ["exception_bytes", "rebuild_exception", "transform_error"]

_HINTS = {
    "assignment destination is read-only": (
        "samples from stoker.from_arrays are read-only views of shared memory; copy "
        "before modifying in place (e.g. image = image.copy())"
    ),
}


def exception_bytes(error: BaseException) -> bytes | None:
    """The worker's exception, pickled for the consumer (None if it cannot be)."""
    try:
        return pickle.dumps(error)
    except Exception:
        return None


def rebuild_exception(data: bytes | None, summary: str, traceback_text: str) -> BaseException:
    """The worker's original exception (or a stand-in if it cannot be unpickled), with
    the worker's traceback attached as its ``__cause__``."""
    error: BaseException
    try:
        error = pickle.loads(data) if data is not None else RuntimeError(summary)
    except Exception:
        error = RuntimeError(summary)
    error.__cause__ = RemoteTraceback(traceback_text)
    return error


def transform_error(
    index: int, stage: str, error: BaseException, traceback_text: str, epoch: int | None
) -> TransformError:
    """The TransformError for sample ``index``; raise it ``from`` the original error."""
    text = f"{type(error).__name__}: {error}"
    if stage == "checking":
        message = f"the transform's output for sample {index} does not fit the batch: {error}"
    else:
        what = "reading it from the source" if stage == "reading" else "the transform"
        message = f"sample {index} failed in {what}: {text}"
    hints = [hint for needle, hint in _HINTS.items() if needle in text]
    if hints:
        message += f". Hint: {hints[0]}"
    if traceback_text and stage != "checking":
        message += f"\n\nTraceback in the worker:\n{traceback_text.rstrip()}"
    return TransformError(message, index=index, epoch=epoch)
