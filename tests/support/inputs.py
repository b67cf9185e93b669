"""Inputs for ``imap`` and friends: iterables that count what was pulled, inputs that fail."""

from __future__ import annotations

import threading
from typing import Any, Iterator, Optional


class CountingIterator:
    """An unsized iterator over ``iterable`` that counts how many items were pulled from it
    (by any thread)."""

    def __init__(self, iterable: Any):
        self._it = iter(iterable)
        self.pulled = 0
        self._lock = threading.Lock()

    def __iter__(self) -> CountingIterator:
        return self

    def __next__(self) -> Any:
        item = next(self._it)
        with self._lock:
            self.pulled += 1
        return item


class SizedCounter:
    """A sized iterable over ``range(n)`` that counts how many items were pulled from it."""

    def __init__(self, n: int):
        self.n = n
        self.pulled = 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        for i in range(self.n):
            self.pulled += 1
            yield i


def failing_input(n: int, fail_at: int, pulled: Optional[list[int]] = None) -> Iterator[int]:
    """Yield ``0..n-1`` but raise ``LookupError`` instead of yielding ``fail_at``."""
    for i in range(n):
        if i == fail_at:
            raise LookupError(f"input broke at {i}")
        if pulled is not None:
            pulled.append(i)
        yield i
