"""How a task is named in the pools' messages, and the one message for an overrun.

Guarantee: a :class:`~mtasklite.TaskTimeoutError` reads the same on every backend: the
task's name and (shortened) arguments, its limit, the worker it ran in and what the pool did
about it, e.g. ``task load(3) exceeded its 0.5 s limit in worker 1 (pid 4242); the worker was
stopped and replaced``.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from ._passing import Passing
from .errors import TaskTimeoutError

__all__ = ["describe_item", "task_name", "timeout_error"]

#: longest argument text a message shows (longer ones end in ``...``)
ARGS_LIMIT = 60


def task_name(fn: Callable[..., Any]) -> str:
    """``fn``'s qualified name, or its ``repr`` when it has none (a ``partial``, say)."""
    return getattr(fn, "__qualname__", None) or repr(fn)


def describe_item(item: Any, passing: int) -> str:
    """The arguments ``item`` is called with (see :mod:`~mtasklite._passing`), as ``(...)``."""
    if passing == Passing.CALL:
        args, kwargs = item
        text = ", ".join([repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()])
    elif passing == Passing.STAR:
        text = ", ".join(repr(a) for a in item)
    else:
        text = repr(item)
    return f"({text})" if len(text) <= ARGS_LIMIT else f"({text[: ARGS_LIMIT - 4]}...)"


def timeout_error(
    fn: Callable[..., Any],
    item: Any,
    passing: int,
    limit: float,
    worker: Optional[int],
    place: str,
    outcome: str,
) -> TaskTimeoutError:
    """The error of a task that overran ``limit`` seconds in ``worker`` (``None``: unknown),
    ``place`` saying where that worker is and ``outcome`` what the pool did about it."""
    where = "" if worker is None else f" in worker {worker}"
    return TaskTimeoutError(
        f"task {task_name(fn)}{describe_item(item, passing)} exceeded its {limit:g} s limit"
        f"{where} ({place}); {outcome}"
    )
