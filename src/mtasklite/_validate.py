"""Argument checks shared by every entry point (executors, ``imap``, ``Pool``, pqdm).

Guarantee: a bad argument is refused before any work starts, with an error that names the
argument as the caller spelled it and shows the value it got.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Optional

__all__ = ["check_buffersize", "check_timeout", "input_length", "positive_int_or_none"]


def positive_int_or_none(name: str, value: Optional[int]) -> Optional[int]:
    """``value`` if it is ``None`` or an integer of at least 1 (``bool`` is no integer here)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
    return value


def check_timeout(name: str, value: Optional[float]) -> Optional[float]:
    """Validate a timeout in seconds (``None`` and infinity mean no limit)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number of seconds or None, got {value!r}")
    if math.isinf(value):
        return None
    return float(value)


def check_buffersize(buffersize: Optional[int]) -> None:
    """Python 3.14's ``Executor.map`` rule for ``buffersize``, for every ``map`` and ``imap``:
    anything but an integer or ``None`` is a ``TypeError``, an integer below 1 a ``ValueError``.
    """
    if buffersize is None:
        return
    if not isinstance(buffersize, int):
        raise TypeError(f"buffersize must be an integer or None, got {buffersize!r}")
    if buffersize < 1:
        raise ValueError(f"buffersize must be None or > 0, got {buffersize!r}")


def input_length(*iterables: Iterable[Any]) -> Optional[int]:
    """How many items ``zip(*iterables)`` yields, or ``None`` if an input is unsized (or too
    long for ``len()``, as ``range(10**20)``)."""
    lengths = []
    for it in iterables:
        try:
            lengths.append(len(it))  # type: ignore[arg-type]
        except (TypeError, OverflowError):
            return None
    return min(lengths) if lengths else None
