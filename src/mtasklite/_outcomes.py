"""Telling a task's own ``KeyboardInterrupt`` from the user's Ctrl-C.

A Ctrl-C stops the process pool's workers (one is enough); a ``KeyboardInterrupt`` that a task
raised is only that task's outcome, re-raised to the caller with the pool still usable, as the
stdlib does.  The pools mark such an exception when they hand it on (:func:`task_outcome`), so
the code that reacts to an interrupt can ask :func:`is_ctrl_c` which one it is.
"""

from __future__ import annotations

from typing import Optional

__all__ = ["is_ctrl_c", "task_outcome"]

#: set on a KeyboardInterrupt that a task raised and a pool hands on to the caller
_TASK_OUTCOME = "_mtasklite_task_outcome"


def task_outcome(error: BaseException) -> BaseException:
    """``error``, a task's own outcome about to reach the caller, marked so that a
    ``KeyboardInterrupt`` a task raised is not taken for the user's Ctrl-C."""
    if isinstance(error, KeyboardInterrupt):
        error.__dict__[_TASK_OUTCOME] = True
    return error


def is_ctrl_c(exc: Optional[BaseException]) -> bool:
    """Whether ``exc`` is a Ctrl-C that reached this process (a ``KeyboardInterrupt`` from
    the signal), not one a task raised and a pool handed back as the task's outcome."""
    return isinstance(exc, KeyboardInterrupt) and not exc.__dict__.get(_TASK_OUTCOME, False)
