"""Stopping a thread that overran its time limit, as far as Python allows.

Guarantee: :func:`set_async_exception` makes an exception pending in another thread, which
raises it at its next Python bytecode; code blocked in C is not interrupted.  ``None`` clears
a pending one, so a thread that won the race against the limit never sees it later.  On a
Python without ``PyThreadState_SetAsyncExc`` it does nothing.
"""

from __future__ import annotations

from typing import Optional

__all__ = ["Abandoned", "set_async_exception"]


class Abandoned(BaseException):
    """Raised asynchronously in a thread whose call ran past its time limit."""


def set_async_exception(ident: Optional[int], exc_type: Optional[type[BaseException]]) -> None:
    """Best effort: make ``exc_type`` pending in thread ``ident`` (``None`` clears it)."""
    import ctypes  # here, not at the top: only timeouts need it, and it costs ~2 ms to load

    set_async = getattr(ctypes.pythonapi, "PyThreadState_SetAsyncExc", None)
    if set_async is None or ident is None:  # pragma: no cover - non-CPython
        return
    set_async(ctypes.c_ulong(ident), ctypes.py_object(exc_type) if exc_type else None)
