"""One ``imap`` iteration's window: pulls input, submits tasks, keeps at most ``limit`` in flight.

Guarantee: input is read only when a task slot is free (``buffersize`` tasks in flight at
most, so memory stays bounded however long the input is), in input order, by the thread that
calls :meth:`Window.fill`; an error reading the input stops the reading and is kept for the
consumer, after the items read before it.  The window never waits: the generators of
:mod:`~mtasklite.windowing` block on its futures, and ``aimap`` steps it from an event loop.
"""

from __future__ import annotations

import itertools
import math
import queue
import weakref
from collections import deque
from concurrent.futures import Future
from typing import (
    Any,
    Callable,
    Deque,
    Iterable,
    Iterator,
    Optional,
    Protocol,
    Sequence,
    runtime_checkable,
)

from ._chunk_run import ChunkResult
from ._chunk_sizing import AdaptiveChunkSize, ChunkSizer, FixedChunkSize
from ._passing import Passing, input_items, passing_for
from ._validate import check_buffersize, check_timeout, input_length, positive_int_or_none

__all__ = ["Submitter", "Window", "check_imap_args", "chunk_outputs", "open_window"]


@runtime_checkable
class Submitter(Protocol):
    """How the engine hands work to an executor."""

    def _submit_call(
        self, fn: Callable[..., Any], args: tuple[Any, ...], timeout: Optional[float]
    ) -> Future[Any]:
        """Run ``fn(*args)``; the future's result is its return value."""

    def _submit_chunk(
        self, fn: Callable[..., Any], items: Sequence[Any], passing: int, timeout: Optional[float]
    ) -> Future[ChunkResult]:
        """Run ``fn`` over ``items`` (passed as :class:`~mtasklite._passing.Passing` says);
        the future's result is a :class:`ChunkResult`."""


_SLICEABLE = (list, tuple, range)


class Window:
    """Pulls input and submits tasks for one iteration, keeping at most ``limit`` in flight.

    Ordered iteration keeps in-flight tasks in a FIFO; unordered iteration in a dict plus a
    queue their done-callbacks feed, so it can wait for whichever finishes first.
    """

    def __init__(
        self,
        submitter: Submitter,
        fn: Callable[..., Any],
        iterables: tuple[Iterable[Any], ...],
        sizer: Optional[ChunkSizer],
        task_timeout: Optional[float],
        buffersize: Optional[int],
        ordered: bool,
    ):
        self.submitter = submitter
        self.submitter_ref = weakref.ref(submitter)  # outlives ``submitter`` (Ctrl-C handling)
        self.fn = fn
        self.passing = passing_for(iterables)
        self.source: Iterator[Any] = input_items(iterables)
        # Chunks of a list, tuple or range are slices: no per-item work here, and a range
        # chunk travels as a range.
        self.sequence: Optional[Sequence[Any]] = None
        if sizer is not None and type(iterables[0]) in _SLICEABLE and len(iterables) == 1:
            self.sequence = iterables[0]  # type: ignore[assignment]
        self.sizer = sizer  # None: one submit_call per item
        self.task_timeout = task_timeout
        self.limit = buffersize if buffersize is not None else math.inf
        self.pulled = 0  # input items submitted so far (the next task's first index)
        self.exhausted = False
        self.input_error: Optional[BaseException] = None
        self.fifo: Deque[tuple[Future[Any], int]] = deque()  # ordered: oldest first
        # unordered: future -> (item count, input index of its first item)
        self.pending: dict[Future[Any], tuple[int, int]] = {}
        self.done: queue.SimpleQueue[Future[Any]] = queue.SimpleQueue()
        self.ordered = ordered
        self.read_all = False  # read the whole input on the first fill (see read_input_now)

    def read_input_now(self) -> None:
        """Unbounded adaptive chunking: read the whole input at the first fill, as submitting
        it all at once would, and cut chunks from it as they get sized (the first chunks
        measure the task time before the rest goes out)."""
        if self.sequence is None and self.sizer is not None:
            self.read_all = True

    def _read_all(self) -> None:
        self.read_all = False
        items: list[Any] = []
        try:
            items.extend(self.source)
        except Exception as exc:  # raised to the consumer after the items read before it
            self.input_error = exc
        self.sequence = items

    def fill(self) -> None:
        """Submit until ``limit`` tasks are in flight or the input ends (or raises)."""
        if self.read_all:
            self._read_all()
        sizer, fifo, pending = self.sizer, self.fifo, self.pending
        while len(fifo) + len(pending) < self.limit and not self.exhausted:
            if sizer is None:
                try:
                    item = next(self.source)
                except StopIteration:
                    self.exhausted = True
                    break
                except Exception as exc:
                    self._input_failed(exc)
                    break
                args = item if self.passing is Passing.STAR else (item,)
                fut = self.submitter._submit_call(self.fn, args, self.task_timeout)
                count = 1
            else:
                if len(fifo) + len(pending) >= sizer.inflight_limit:
                    break
                want = sizer.size
                items: Sequence[Any]
                if self.sequence is not None:
                    items = self.sequence[self.pulled : self.pulled + want]
                else:
                    items = []
                    try:
                        items.extend(itertools.islice(self.source, want))
                    except Exception as exc:  # items pulled before the error still run
                        self._input_failed(exc)
                if not items:
                    self.exhausted = True
                    break
                if len(items) < want:
                    self.exhausted = True
                fut = self.submitter._submit_chunk(self.fn, items, self.passing, self.task_timeout)
                count = len(items)
            if self.ordered:
                fifo.append((fut, count))
            else:
                pending[fut] = (count, self.pulled)
                fut.add_done_callback(self.done.put)
            self.pulled += count
        if self.exhausted:
            # Nothing left to submit: let go of the executor, so dropping it (with tasks
            # still in flight) shuts it down as the stdlib's map allows.
            self.submitter = None  # type: ignore[assignment]

    def _input_failed(self, exc: Exception) -> None:
        # Raised to the consumer after the items pulled before it are yielded.
        self.input_error = exc
        self.exhausted = True

    def interrupt_target(self) -> object:
        return self.submitter_ref()

    def cancel_all(self) -> None:
        """Cancel every in-flight task that has not started and forget them all."""
        for fut, _ in self.fifo:
            fut.cancel()
        for fut in self.pending:
            fut.cancel()
        self.fifo.clear()
        self.pending.clear()

    # -- stepping without blocking, for a driver that waits elsewhere (aimap: an event loop)

    def wants(self) -> float:
        """The most input items the next :meth:`fill` may pull (``inf``: no bound)."""
        if self.exhausted:
            return 0
        room = self.limit - len(self.fifo) - len(self.pending)
        if self.sizer is None:
            return max(0, room)
        room = min(room, self.sizer.inflight_limit - len(self.fifo) - len(self.pending))
        return max(0, room) * self.sizer.size

    def in_flight(self) -> bool:
        return bool(self.fifo or self.pending)

    def ready(self) -> bool:
        """Whether :meth:`take_outputs` has a finished task to report (it never waits)."""
        if self.ordered:
            return bool(self.fifo) and self.fifo[0][0].done()
        return not self.done.empty()

    def take_outputs(self) -> tuple[list[Any], Optional[BaseException]]:
        """The next finished task's outputs in input order, and the error to raise after
        them; only once :meth:`ready`."""
        if self.ordered:
            fut, count = self.fifo.popleft()
        else:
            fut = self.done.get_nowait()
            count, _ = self.pending.pop(fut)
        if self.sizer is not None:
            return chunk_outputs(self, fut, count, False)
        error = fut.exception(timeout=0)
        return ([], error) if error is not None else ([fut.result()], None)


def open_window(
    submitter: Submitter,
    fn: Callable[..., Any],
    iterables: tuple[Iterable[Any], ...],
    *,
    ordered: bool,
    chunksize: Optional[int],
    buffersize: Optional[int],
    task_timeout: Optional[float],
    workers: int,
    adaptive: type[AdaptiveChunkSize] = AdaptiveChunkSize,
) -> Window:
    """Check the arguments and set up one iteration (its window and chunk sizer).

    ``buffersize=None`` means unbounded (everything is submitted at once, like the stdlib
    ``map``); ``adaptive`` is the sizer ``chunksize=None`` uses (an executor whose hand-off
    is cheaper aims at shorter chunks).
    """
    check_imap_args(iterables, chunksize, buffersize, task_timeout)
    total = input_length(*iterables)
    sizer: Optional[ChunkSizer]
    # Unbounded: everything is to be submitted at once.  With adaptive chunks it is read at
    # once, but goes out as chunks get sized (at the starting size of one item, the whole
    # input would be one task per item).
    unbounded = total is not None and (buffersize is None or buffersize >= total)
    if chunksize is None:
        sizer = adaptive(workers, total, unbounded)
    elif chunksize == 1:
        sizer = None
    else:
        sizer = FixedChunkSize(chunksize)
    window = Window(submitter, fn, iterables, sizer, task_timeout, buffersize, ordered)
    if chunksize is None and unbounded:
        window.read_input_now()
    return window


def chunk_outputs(
    window: Window, fut: Future[Any], count: int, return_exceptions: bool
) -> tuple[list[Any], Optional[BaseException]]:
    """A finished chunk's outputs in input order, and the error to raise after them."""
    exc = fut.exception()
    if exc is not None:  # the whole chunk failed (cancelled, pool broken, ...)
        return ([exc] * count, None) if return_exceptions else ([], exc)
    result: ChunkResult = fut.result()
    del fut
    assert window.sizer is not None
    window.sizer.observe(result, count)
    values, errors = result.values, result.errors
    if errors:
        if not return_exceptions:
            first = min(errors)
            return values[:first], errors[first]
        for index, error in errors.items():
            values[index] = error
    return values, None


def check_imap_args(
    iterables: tuple[Iterable[Any], ...],
    chunksize: Optional[int],
    buffersize: Optional[int],
    task_timeout: Optional[float],
) -> None:
    """Reject what no ``imap`` flavour accepts, with an error that names the argument."""
    if not iterables:
        raise TypeError("imap() needs at least one iterable")
    positive_int_or_none("chunksize", chunksize)
    check_buffersize(buffersize)
    check_timeout("task_timeout", task_timeout)
