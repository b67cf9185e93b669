"""The iterator every ``imap`` returns, and the guard around each engine's generator.

Guarantee: however an iteration ends (exhausted, an error, ``close()``, leaving ``with``,
``break`` then garbage collection, or Ctrl-C) it reads no more input and cancels every task
it submitted that has not started; an error reading the input is raised after the items read
before it; Ctrl-C also tells the executor, which may stop its running work.  The two
``imap`` engines (:mod:`~mtasklite.windowing` and :mod:`~mtasklite._thread_imap`) get all
this from :func:`guarded` and :func:`wrap_results`.
"""

from __future__ import annotations

import itertools
import sys
from typing import (
    Any,
    Callable,
    Generic,
    Iterable,
    Iterator,
    Optional,
    Protocol,
    TypeVar,
    runtime_checkable,
)

from ._outcomes import is_ctrl_c
from ._validate import input_length

__all__ = [
    "INTERRUPT_POLL",
    "Interruptible",
    "ResultIterator",
    "SizedResultIterator",
    "StopsOnInterrupt",
    "guarded",
    "interrupted",
    "wrap_results",
]

T = TypeVar("T")

#: longest a blocked ``imap`` waits before it looks for a pending Ctrl-C (seconds): a Ctrl-C
#: that lands just before the thread blocks is only seen at its next wakeup, and one Ctrl-C
#: must be enough
INTERRUPT_POLL = 0.25


class ResultIterator(Generic[T]):
    """The lazy iterator ``imap`` returns: a context manager with :meth:`close`.

    ``for`` loops run directly on the inner iterator (``__iter__`` returns it), which keeps
    per-item overhead at generator speed, or C speed when chunking.  Closing it, leaving
    ``with``, breaking out of a loop over it and garbage collection all stop reading the input
    and cancel every submitted task that has not started.  Tasks already running finish; their
    results are dropped.
    """

    def __init__(
        self,
        generator: Iterator[Any],
        on_close: Optional[Callable[[], None]] = None,
        flatten: bool = False,
    ):
        self._gen = generator
        # ``generator`` yields one list per chunk when ``flatten``.
        self._iter: Iterator[T] = itertools.chain.from_iterable(generator) if flatten else generator
        # An eager map() has tasks in flight before its generator first runs; closing a
        # generator that never started skips its ``finally``, so cancel through this hook.
        self._on_close = on_close

    def __iter__(self) -> Iterator[T]:
        return self._iter

    def __next__(self) -> T:
        return next(self._iter)

    def close(self) -> None:
        """Stop: read no more input, cancel tasks not yet started."""
        close = getattr(self._gen, "close", None)
        if close is not None:
            close()
        if self._on_close is not None:
            self._on_close()

    def __enter__(self) -> ResultIterator[T]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class SizedResultIterator(ResultIterator[T]):
    """A :class:`ResultIterator` over sized inputs: ``len()`` is the total number of results."""

    def __init__(
        self,
        generator: Iterator[Any],
        length: int,
        on_close: Optional[Callable[[], None]] = None,
        flatten: bool = False,
    ):
        super().__init__(generator, on_close, flatten)
        self._length = length

    def __len__(self) -> int:
        return self._length


class Interruptible(Protocol):
    """What :func:`guarded` and :func:`interrupted` need of an iteration's state."""

    input_error: Optional[BaseException]

    def cancel_all(self) -> None:
        """Start no further task; cancel those submitted and not started."""

    def interrupt_target(self) -> object:
        """The executor to tell about a Ctrl-C (``None`` once it is gone)."""


@runtime_checkable
class StopsOnInterrupt(Protocol):
    """An executor that can stop its running work when Ctrl-C reaches an ``imap`` (every
    mtasklite executor has the hook; the process pool stops its workers)."""

    def _on_interrupt(self) -> None: ...


def interrupted(window: Interruptible) -> None:
    """Ctrl-C reached an ``imap`` generator: stop its window and tell the executor.  Does
    nothing for a task's own ``KeyboardInterrupt``: the pool stays usable, as the stdlib's."""
    if not is_ctrl_c(sys.exc_info()[1]):
        return
    # Cancel what has not started and let the executor stop the rest (the process pool
    # terminates its workers: one Ctrl-C must be enough).
    window.cancel_all()
    target = window.interrupt_target()
    if isinstance(target, StopsOnInterrupt):
        target._on_interrupt()


def guarded(window: Interruptible, outputs: Iterator[Any]) -> Iterator[Any]:
    """Yield ``outputs`` (an engine's generator over ``window``) with the guarantees of the
    module docstring: the input's error at the end, Ctrl-C handling, cancelling on exit."""
    try:
        yield from outputs
        if window.input_error is not None:
            raise window.input_error
    except KeyboardInterrupt:
        interrupted(window)
        raise
    finally:
        window.cancel_all()


def wrap_results(
    generator: Iterator[Any],
    iterables: tuple[Iterable[Any], ...],
    on_close: Optional[Callable[[], None]] = None,
    flatten: bool = False,
) -> ResultIterator[Any]:
    """The result iterator over ``generator``: sized when every input is."""
    total = input_length(*iterables)
    if total is None:
        return ResultIterator(generator, on_close, flatten=flatten)
    return SizedResultIterator(generator, total, on_close, flatten=flatten)
