"""The lazy windowing engine behind every ``imap``, ``imap_unordered`` and ``map``.

It needs nothing from an executor but a way to submit work and get futures back (the
:class:`Submitter` protocol), so the thread pool, the process pool and any third-party
``concurrent.futures.Executor`` share it.

Input is pulled by the consumer's own ``next()`` calls, never by a background thread: at
most ``buffersize`` chunks are submitted and not yet yielded, so memory is bounded by
``buffersize * chunk size`` items however long (or infinite) the input is.  Tasks are sent
one by one (``chunksize=1``), in fixed chunks, or in chunks sized adaptively from measured
task durations (``chunksize=None``).
"""

from __future__ import annotations

import concurrent.futures
import queue
import time
from concurrent.futures import Future
from typing import Any, Callable, Deque, Iterable, Iterator, Optional, Sequence, TypeVar

from ._chunk_run import ChunkResult, run_chunk
from ._chunk_sizing import AdaptiveChunkSize
from ._outcomes import task_outcome
from ._result_iterators import (
    INTERRUPT_POLL,
    Interruptible,
    ResultIterator,
    SizedResultIterator,
    StopsOnInterrupt,
    guarded,
    interrupted,
    wrap_results,
)
from ._validate import check_buffersize, input_length
from ._window import Submitter, Window, check_imap_args, chunk_outputs, open_window

# The engine's parts live in their own modules; these names stay importable from here.
__all__ = [
    "AdaptiveChunkSize",
    "ChunkResult",
    "ExecutorSubmitter",
    "Interruptible",
    "ResultIterator",
    "SizedResultIterator",
    "StopsOnInterrupt",
    "Submitter",
    "check_buffersize",
    "check_imap_args",
    "imap",
    "imap_unordered",
    "interrupted",
    "make_result_iterator",
    "open_window",
    "run_chunk",
    "submits_everything",
]

T = TypeVar("T")


class ExecutorSubmitter:
    """Adapts any ``concurrent.futures.Executor`` (stdlib, loky, Dask, ...) to the engine."""

    def __init__(self, executor: concurrent.futures.Executor):
        self.executor = executor

    def _submit_call(
        self, fn: Callable[..., Any], args: tuple[Any, ...], timeout: Optional[float]
    ) -> Future[Any]:
        _refuse_timeout(timeout)
        return self.executor.submit(fn, *args)

    def _submit_chunk(
        self, fn: Callable[..., Any], items: Sequence[Any], passing: int, timeout: Optional[float]
    ) -> Future[ChunkResult]:
        _refuse_timeout(timeout)
        return self.executor.submit(run_chunk, fn, items, passing)


def _refuse_timeout(timeout: Optional[float]) -> None:
    if timeout is not None:
        raise ValueError(
            "task_timeout needs an mtasklite executor; this executor cannot stop tasks"
        )


def _wait_exception(fut: Future[Any], deadline: Optional[float]) -> Optional[BaseException]:
    """The future's exception (or ``None``); ``TimeoutError`` once ``deadline`` passes."""
    if deadline is None:
        # Wake up now and then: a Ctrl-C that lands just before the thread blocks is only
        # seen at its next wakeup, and one Ctrl-C must be enough.
        while True:
            try:
                return fut.exception(timeout=INTERRUPT_POLL)
            except concurrent.futures.TimeoutError:
                continue
    return fut.exception(timeout=max(0.0, deadline - time.monotonic()))


def _single_output(fut: Future[Any], deadline: Optional[float], return_exceptions: bool) -> Any:
    """A one-item task's output once it finishes: its value, or its error (raised, or
    returned with ``return_exceptions``); ``TimeoutError`` once ``deadline`` passes."""
    try:
        return fut.result(timeout=0)  # the common case, a single lock: it has finished
    except Exception:
        pass  # not finished yet, failed or cancelled: sorted out below
    except BaseException as exc:
        # The task's own KeyboardInterrupt or SystemExit, or a Ctrl-C landing right here.
        if not (fut.done() and not fut.cancelled() and fut.exception() is exc):
            raise
    error = _wait_exception(fut, deadline)
    if error is None:
        return fut.result()
    if return_exceptions:
        return error
    raise task_outcome(error)


def _pop_output(
    inflight: Deque[tuple[Future[Any], int]], deadline: Optional[float], return_exceptions: bool
) -> Any:
    # The head task's output; popped only once it is known, so a deadline that passes
    # leaves the task where cancel_all finds it.
    output = _single_output(inflight[0][0], deadline, return_exceptions)
    inflight.popleft()
    return output


def _next_done(done: queue.SimpleQueue[Future[Any]], deadline: Optional[float]) -> Future[Any]:
    """The next finished future; ``TimeoutError`` once ``deadline`` passes."""
    while True:
        if deadline is None:
            wait = INTERRUPT_POLL  # see _wait_exception
        else:
            wait = min(INTERRUPT_POLL, max(0.0, deadline - time.monotonic()))
        try:
            return done.get(timeout=wait)
        except queue.Empty:
            if deadline is not None and time.monotonic() >= deadline:
                raise concurrent.futures.TimeoutError() from None


# The two generators below yield single outputs when every task is one item, and whole
# lists (one per chunk) when chunking: make_result_iterator flattens those with
# itertools.chain, so per-item iteration runs at C speed.  ``guarded`` ends them.


def _ordered(
    window: Window, deadline: Optional[float], return_exceptions: bool, indexed: bool
) -> Iterator[Any]:
    inflight = window.fifo
    position = 0
    while True:
        window.fill()
        if not inflight:
            return
        if window.sizer is None:
            # No local may keep the future (and so the result) alive while suspended.
            if indexed:
                yield position, _pop_output(inflight, deadline, return_exceptions)
                position += 1
            else:
                yield _pop_output(inflight, deadline, return_exceptions)
            continue
        fut, count = inflight[0]
        _wait_exception(fut, deadline)
        inflight.popleft()
        values, error = chunk_outputs(window, fut, count, return_exceptions)
        del fut
        if indexed:
            values = list(zip(range(position, position + len(values)), values))
        position += len(values)
        yield values
        del values
        if error is not None:
            raise task_outcome(error)


def _unordered(
    window: Window, deadline: Optional[float], return_exceptions: bool, indexed: bool
) -> Iterator[Any]:
    inflight, done = window.pending, window.done
    while True:
        window.fill()
        if not inflight:
            return
        fut = _next_done(done, deadline)
        count, first = inflight.pop(fut)
        if window.sizer is None:
            output = _single_output(fut, None, return_exceptions)
            del fut
            yield (first, output) if indexed else output
            del output
            continue
        values, error = chunk_outputs(window, fut, count, return_exceptions)
        del fut
        if indexed:
            values = list(zip(range(first, first + len(values)), values))
        yield values
        del values
        if error is not None:
            raise task_outcome(error)


def submits_everything(iterables: tuple[Iterable[Any], ...], buffersize: Optional[int]) -> bool:
    """Whether a window of ``buffersize`` tasks takes the whole input at its first fill, so
    adaptive chunks are sized before anything is measured: one item each."""
    if buffersize is None:
        return True
    total = input_length(*iterables)
    return total is not None and buffersize >= total


def make_result_iterator(
    submitter: Submitter,
    fn: Callable[..., Any],
    iterables: tuple[Iterable[Any], ...],
    *,
    ordered: bool = True,
    timeout: Optional[float] = None,
    chunksize: Optional[int] = 1,
    buffersize: Optional[int] = None,
    task_timeout: Optional[float] = None,
    return_exceptions: bool = False,
    workers: int = 1,
    eager: bool = False,
    indexed: bool = False,
    adaptive: type[AdaptiveChunkSize] = AdaptiveChunkSize,
) -> ResultIterator[Any]:
    """Build the result iterator all ``imap`` flavours return.

    ``buffersize=None`` means unbounded (everything is submitted at once, like the stdlib
    ``map``); ``eager`` submits the first window now rather than on the first ``next()``;
    ``indexed`` yields ``(input position, output)`` pairs (for unordered consumers that need
    to know which input an output belongs to); ``adaptive`` is the sizer ``chunksize=None``
    uses (an executor whose hand-off is cheaper aims at shorter chunks).
    """
    window = open_window(
        submitter,
        fn,
        iterables,
        ordered=ordered,
        chunksize=chunksize,
        buffersize=buffersize,
        task_timeout=task_timeout,
        workers=workers,
        adaptive=adaptive,
    )
    flatten = window.sizer is not None
    deadline = None if timeout is None else time.monotonic() + timeout
    if eager:
        window.fill()
    run = _ordered if ordered else _unordered
    generator = guarded(window, run(window, deadline, return_exceptions, indexed))
    on_close = window.cancel_all if eager else None
    return wrap_results(generator, iterables, on_close, flatten)


def imap(
    executor: concurrent.futures.Executor,
    fn: Callable[..., T],
    *iterables: Iterable[Any],
    timeout: Optional[float] = None,
    chunksize: Optional[int] = 1,
    buffersize: Optional[int] = None,
) -> ResultIterator[T]:
    """Lazy, bounded, ordered ``map`` over any ``concurrent.futures.Executor``.

    With an mtasklite executor prefer its own ``imap`` method (it knows its worker count and
    supports ``task_timeout``).  ``buffersize`` defaults to 16 tasks in flight.
    """
    return _generic(executor, fn, iterables, True, timeout, chunksize, buffersize)


def imap_unordered(
    executor: concurrent.futures.Executor,
    fn: Callable[..., T],
    *iterables: Iterable[Any],
    timeout: Optional[float] = None,
    chunksize: Optional[int] = 1,
    buffersize: Optional[int] = None,
) -> ResultIterator[T]:
    """Like :func:`imap` but yields results as tasks complete."""
    return _generic(executor, fn, iterables, False, timeout, chunksize, buffersize)


def _generic(
    executor: concurrent.futures.Executor,
    fn: Callable[..., Any],
    iterables: tuple[Iterable[Any], ...],
    ordered: bool,
    timeout: Optional[float],
    chunksize: Optional[int],
    buffersize: Optional[int],
) -> ResultIterator[Any]:
    native = getattr(executor, "imap" if ordered else "imap_unordered", None)
    if native is not None and isinstance(executor, Submitter):  # an mtasklite executor
        return native(  # type: ignore[no-any-return]
            fn, *iterables, timeout=timeout, chunksize=chunksize, buffersize=buffersize
        )
    workers = getattr(executor, "_max_workers", None) or 4
    return make_result_iterator(
        ExecutorSubmitter(executor),
        fn,
        iterables,
        ordered=ordered,
        timeout=timeout,
        chunksize=chunksize,
        buffersize=buffersize if buffersize is not None else 4 * workers,
        workers=workers,
    )
