"""Helpers for ``concurrent.futures.Future`` state the stdlib leaves to executors."""

from __future__ import annotations

from concurrent.futures import Future, _base
from typing import Any

__all__ = ["cancel_dropped"]


def cancel_dropped(future: Future[Any]) -> None:
    """Cancel a queued future the executor drops, and tell ``wait()``/``as_completed()``.

    ``cancel()`` alone leaves the notification to whoever dequeues the future, and a dropped
    future is never dequeued (the stdlib's ``shutdown(cancel_futures=True)`` has this hang).
    """
    future.cancel()
    if future._state == _base.CANCELLED:
        future.set_running_or_notify_cancel()
