"""Helpers for ``concurrent.futures.Future`` state the stdlib leaves to executors."""

from __future__ import annotations

from concurrent.futures import Future, _base
from typing import Any, Optional, TypeVar

__all__ = ["TaskFuture", "cancel_dropped"]

T = TypeVar("T")


class TaskFuture(Future[T]):
    """The future our executors return: ``result()`` raises the task's exception on every
    Python, also one whose ``bool()`` is false (``__bool__`` / ``__len__``).

    The stdlib's ``Future.result()`` before 3.14 tested the exception for truth and returned
    ``None`` for such an exception (gh-132063); ``exception()`` always reported it.
    """

    def result(self, timeout: Optional[float] = None) -> T:
        value = super().result(timeout)
        if value is not None:
            return value  # a failed future holds no result: only None needs the check
        # Finished (result() returned): exception() answers at once, falsey or not.
        error = super().exception(0)
        if error is not None:
            try:
                raise error
            finally:
                del error  # no reference cycle through this frame
        return value


def cancel_dropped(future: Future[Any]) -> None:
    """Cancel a queued future the executor drops, and tell ``wait()``/``as_completed()``.

    ``cancel()`` alone leaves the notification to whoever dequeues the future, and a dropped
    future is never dequeued (the stdlib's ``shutdown(cancel_futures=True)`` has this hang).
    """
    future.cancel()
    if future._state == _base.CANCELLED:
        future.set_running_or_notify_cancel()
