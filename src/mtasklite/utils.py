"""Upstream mtasklite's ``mtasklite.utils`` import path (code written for it runs unchanged).

``is_exception`` is the package's own (:func:`mtasklite.is_exception`), re-exported here.
"""

from __future__ import annotations

import sys

from .pool import is_exception

__all__ = ["current_function_name", "is_exception"]


def current_function_name() -> str:
    """The name of the function that calls this (upstream's helper for log messages)."""
    return sys._getframe(1).f_code.co_name
