"""Argument checks shared by the public constructors: each refusal names the argument,
what it must be and what it got (``True`` is no int, ``'no'`` is no bool)."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["boolean", "integer"]


def integer(name: str, value: Any, minimum: int, *, also: str = "") -> None:
    """``value`` is an int (numpy's too, never a bool) of at least ``minimum``; ``also``
    names what else is allowed (", None or \"auto\"")."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        # a string is a valid type where "auto" is allowed, only not that one
        kind = ValueError if also and isinstance(value, str) else TypeError
        raise kind(f"{name} must be an int{also}, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def boolean(name: str, value: Any) -> None:
    """``value`` is True or False (numpy's too), never a truthy string or number."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
