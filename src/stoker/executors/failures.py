"""Turning what went wrong in a worker into the exception the consumer sees."""

from __future__ import annotations

import pickle
import sys
from typing import Any

from ..errors import RemoteTraceback, TransformError, describe
from ..layout import LayoutMismatch

__all__ = ["exception_bytes", "failure_record", "rebuild_exception", "transform_error"]

_HINTS = {
    "assignment destination is read-only": (
        "samples from stoker.from_arrays are read-only views of shared memory; copy "
        "before modifying in place (e.g. image = image.copy())"
    ),
}


def _dumps(value: object) -> bytes | None:
    try:
        return pickle.dumps(value)
    except Exception:
        return None


def _loads(data: bytes | None) -> object:
    if data is None:
        return None
    try:
        return pickle.loads(data)
    except Exception:
        return None


def exception_bytes(error: BaseException) -> bytes | None:
    """The worker's exception for the consumer: pickled whole where it can be, and
    always its type's module and qualified name, its args and its attributes, so that
    the consumer can rebuild it when unpickling fails (a class defined in ``__main__``,
    an ``__init__`` that does not take its ``args`` back)."""
    cls = type(error)
    return _dumps({
        "whole": _dumps(error),
        "module": cls.__module__,
        "qualname": cls.__qualname__,
        "args": _dumps(error.args),
        "attributes": _dumps(getattr(error, "__dict__", None) or None),
    })


def failure_record(failure: Any) -> tuple[int, str, bytes | None, str, str]:
    """What a worker or an actor sends back for a failed sample (a ``SampleFailure``):
    ``(index, stage, exception_bytes, summary, traceback_text)``."""
    error = failure.error
    return (failure.index, failure.stage, exception_bytes(error),
            describe(error), failure.traceback)


def _find_class(module: str, qualname: str) -> type | None:
    """The class ``module.qualname`` in this process (the user's ``__main__`` too)."""
    found: object = sys.modules.get(module)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    return found if isinstance(found, type) and issubclass(found, BaseException) else None


def _rebuilt(record: dict) -> BaseException | None:
    error = _loads(record.get("whole"))
    if isinstance(error, BaseException):
        return error
    cls = _find_class(str(record.get("module")), str(record.get("qualname")))
    if cls is None:
        return None
    args = _loads(record.get("args"))
    args = tuple(args) if isinstance(args, tuple) else ()
    try:
        error = cls(*args)
    except Exception:
        try:
            error = cls.__new__(cls, *args)
        except Exception:
            return None
        error.args = args
    attributes = _loads(record.get("attributes"))
    if isinstance(attributes, dict):
        try:
            error.__dict__.update(attributes)
        except AttributeError:
            pass
    return error


def rebuild_exception(data: bytes | None, summary: str, traceback_text: str) -> BaseException:
    """The worker's original exception, of its own type wherever that type can be found
    here; otherwise a RuntimeError that names the original type (``original_type``) and
    says its message. The worker's traceback is attached as its ``__cause__``."""
    record = _loads(data)
    error = _rebuilt(record) if isinstance(record, dict) else None
    if error is None:
        name = summary.split(":", 1)[0]
        if isinstance(record, dict):
            name = f"{record.get('module')}.{record.get('qualname')}"
        error = RuntimeError(f"{name} (could not be rebuilt here): {summary}")
        error.original_type = name  # type: ignore[attr-defined]
    error.__cause__ = RemoteTraceback(traceback_text)
    return error


def _said(error: BaseException) -> str:
    """A checking failure as said: stoker's own (a layout mismatch) by its message,
    anything else by its type too."""
    if isinstance(error, LayoutMismatch):
        return str(error)
    return describe(error)


def transform_error(
    index: int, stage: str, error: BaseException, traceback_text: str, epoch: int | None
) -> TransformError:
    """The TransformError for sample ``index`` (for batch ``index`` at the stages
    "batch" and "batch-checking"); raise it ``from`` the original error."""
    text = describe(error)
    if stage.startswith("batch"):
        where = f"batch {index}" + (f" of epoch {epoch}" if epoch is not None else "")
        message = (f"the batch_transform's output for {where} does not fit the batch: "
                   f"{_said(error)}"
                   if stage == "batch-checking" else
                   f"the batch_transform failed on {where}: {text}")
        if traceback_text and stage == "batch":
            message += f"\n\nTraceback in the worker:\n{traceback_text.rstrip()}"
        return TransformError(message, index=None, epoch=epoch, batch=index)
    if stage == "checking":
        message = (f"the transform's output for sample {index} does not fit the batch: "
                   f"{_said(error)}")
    else:
        what = "reading it from the source" if stage == "reading" else "the transform"
        message = f"sample {index} failed in {what}: {text}"
    hints = [hint for needle, hint in _HINTS.items() if needle in text]
    if hints:
        message += f". Hint: {hints[0]}"
    if traceback_text and stage != "checking":
        message += f"\n\nTraceback in the worker:\n{traceback_text.rstrip()}"
    return TransformError(message, index=index, epoch=epoch)
