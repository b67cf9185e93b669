"""How one input item becomes a call of the task function, on every backend.

Guarantee: an item is passed the same way whichever pool runs it: ``fn(item)`` for an
``imap`` over one iterable, ``fn(*item)`` over several (the item is their ``zip``), and
``fn(*args, **kwargs)`` for a ``submit``.  The values are those the process pool's wire
format uses, so a mode crosses a pipe as a small int.
"""

from __future__ import annotations

import enum
from typing import Any, Callable, Iterable, Iterator

__all__ = ["Passing", "call_item", "input_items", "passing_for"]


class Passing(enum.IntEnum):
    """How an item is passed (``SINGLE`` is falsy, ``STAR`` truthy: code that still takes a
    ``star`` flag reads them right)."""

    SINGLE = 0  #: ``fn(item)``
    STAR = 1  #: ``fn(*item)``
    CALL = 2  #: the item is ``(args, kwargs)``: ``fn(*args, **kwargs)``


def passing_for(iterables: tuple[Iterable[Any], ...]) -> Passing:
    """How ``imap(fn, *iterables)`` passes its items."""
    return Passing.SINGLE if len(iterables) == 1 else Passing.STAR


def input_items(iterables: tuple[Iterable[Any], ...]) -> Iterator[Any]:
    """The items of ``imap(fn, *iterables)``, as :func:`passing_for` passes them."""
    return iter(iterables[0]) if len(iterables) == 1 else zip(*iterables)


def call_item(fn: Callable[..., Any], item: Any, passing: int) -> Any:
    """Call ``fn`` with ``item`` passed as ``passing`` says."""
    if passing == Passing.SINGLE:
        return fn(item)
    if passing == Passing.STAR:
        return fn(*item)
    args, kwargs = item
    return fn(*args, **kwargs)
