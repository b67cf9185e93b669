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
import itertools
import math
import queue
import sys
import time
import weakref
from collections import deque
from concurrent.futures import Future
from typing import (
    Any,
    Callable,
    Deque,
    Generic,
    Iterable,
    Iterator,
    NamedTuple,
    Optional,
    Protocol,
    Sequence,
    TypeVar,
    Union,
)

from ._outcomes import is_ctrl_c, task_outcome

__all__ = [
    "AdaptiveChunkSize",
    "ChunkResult",
    "ExecutorSubmitter",
    "Interruptible",
    "ResultIterator",
    "SizedResultIterator",
    "Submitter",
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


class ChunkResult(NamedTuple):
    """What running one chunk produced: per-item values, per-item errors, time spent."""

    values: list[Any]
    #: index within the chunk -> exception; ``None`` when every item succeeded
    errors: Optional[dict[int, BaseException]]
    #: seconds spent inside the task function for the whole chunk (drives adaptive sizing)
    elapsed: float
    #: pickled size of the chunk's input when the executor knows it, else 0
    nbytes: int = 0


def run_chunk(fn: Callable[..., Any], items: Sequence[Any], star: bool) -> ChunkResult:
    """Run ``fn`` over ``items`` (each a tuple of arguments when ``star``), catching per item."""
    values: list[Any] = []
    errors: Optional[dict[int, BaseException]] = None
    start = time.perf_counter()
    for i, item in enumerate(items):
        try:
            values.append(fn(*item) if star else fn(item))
        except BaseException as exc:
            if errors is None:
                errors = {}
            errors[i] = exc
            values.append(None)
    return ChunkResult(values, errors, time.perf_counter() - start)


class Submitter(Protocol):
    """How the engine hands work to an executor."""

    def _submit_call(
        self, fn: Callable[..., Any], args: tuple[Any, ...], timeout: Optional[float]
    ) -> Future[Any]:
        """Run ``fn(*args)``; the future's result is its return value."""

    def _submit_chunk(
        self, fn: Callable[..., Any], items: Sequence[Any], star: bool, timeout: Optional[float]
    ) -> Future[ChunkResult]:
        """Run ``fn`` over ``items``; the future's result is a :class:`ChunkResult`."""


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
        self, fn: Callable[..., Any], items: Sequence[Any], star: bool, timeout: Optional[float]
    ) -> Future[ChunkResult]:
        _refuse_timeout(timeout)
        return self.executor.submit(run_chunk, fn, items, star)


def _refuse_timeout(timeout: Optional[float]) -> None:
    if timeout is not None:
        raise ValueError(
            "task_timeout needs an mtasklite executor; this executor cannot stop tasks"
        )


# --- chunk sizing ---------------------------------------------------------------------------


#: longest a blocked ``imap`` waits before it looks for a pending Ctrl-C (seconds)
_INTERRUPT_POLL = 0.25


class FixedChunkSize:
    """Every chunk has the same size."""

    inflight_limit = math.inf

    def __init__(self, size: int):
        self.size = size

    def observe(self, result: ChunkResult, count: int) -> None:
        """Fixed sizes ignore measurements."""


class AdaptiveChunkSize:
    """Sizes chunks so each one runs for about ``TARGET_SECONDS`` in a worker.

    It starts at one item.  The per-item estimate weighs chunks by their item count and
    fades old ones (``DECAY``); a chunk slower than the estimate takes over at once, so
    sizes shrink as soon as tasks get slower.  Growth is guarded twice against a fast
    sample that is not representative: a chunk holds at most ``GROWTH`` times the items
    measured so far, or (when that is more) the items the estimate says take
    ``TRUSTED_SECONDS``, an amount of work that stays harmless even if the estimate is off
    tenfold.  Chunks are capped at ``MAX_BYTES`` of pickled input when the executor reports
    sizes, and for a sized input at ``total / (4 * workers)``, so the tail of the work still
    spreads over every worker.

    ``unbounded`` (everything is to be submitted at once): the chunks in flight stay at
    ``UNSETTLED_CHUNKS_PER_WORKER`` per worker, as when bounded, until ``SETTLE_SECONDS`` of
    work per worker are measured; only then does the rest go out, all at the size known then,
    so one slow early sample cannot make it thousands of tiny chunks.
    """

    TARGET_SECONDS = 0.02
    TRUSTED_SECONDS = 0.001
    GROWTH = 4
    DECAY = 0.5
    MAX_BYTES = 1 << 20
    MAX_ITEMS = 1 << 14  # also bounds memory: a window holds 4 x workers chunks
    MAX_ITEMS_UNKNOWN_BYTES = 1 << 12
    SETTLE_SECONDS = 0.05
    UNSETTLED_CHUNKS_PER_WORKER = 4

    def __init__(self, workers: int, total: Optional[int] = None, unbounded: bool = False):
        self.size = 1
        if unbounded:
            self._trusted_limit = float(self.UNSETTLED_CHUNKS_PER_WORKER * max(1, workers))
            self._settle_seconds = self.SETTLE_SECONDS * max(1, workers)
        else:  # the window's own limit bounds the chunks in flight
            self._trusted_limit = self._settle_seconds = 0.0
        # Until TRUSTED_SECONDS of work are measured, one chunk per worker is in flight:
        # more would be chunks sized on too little knowledge, each paying a round trip.
        self.inflight_limit: float = max(1, workers)
        self._cap = self.MAX_ITEMS
        if total is not None:
            self._cap = max(1, min(self._cap, math.ceil(total / (4 * max(1, workers)))))
        self._items = 0.0  # decayed item count behind the estimate
        self._seconds = 0.0  # decayed seconds those items took
        self._measured = 0  # every item measured so far
        self._measured_seconds = 0.0  # and the time they took
        self._bytes_per_item: Optional[float] = None

    def observe(self, result: ChunkResult, count: int) -> None:
        """Fold one finished chunk of ``count`` items into the estimate."""
        self._measured += count
        self._measured_seconds += result.elapsed
        if self._measured_seconds >= self.TRUSTED_SECONDS:
            settled = self._measured_seconds >= self._settle_seconds
            self.inflight_limit = math.inf if settled else self._trusted_limit
        self._items = self.DECAY * self._items + count
        self._seconds = self.DECAY * self._seconds + result.elapsed
        per_item = max(self._seconds / self._items, result.elapsed / count)
        limit = self._cap
        if result.nbytes:
            self._bytes_per_item = result.nbytes / count
        if self._bytes_per_item:
            limit = min(limit, int(self.MAX_BYTES / self._bytes_per_item))
        else:
            limit = min(limit, self.MAX_ITEMS_UNKNOWN_BYTES)
        if per_item <= 0:
            self.size = max(1, min(limit, self.GROWTH * self._measured))
            return
        trusted = max(self.GROWTH * self._measured, self.TRUSTED_SECONDS / per_item)
        self.size = max(1, int(min(self.TARGET_SECONDS / per_item, trusted, limit)))


ChunkSizer = Union[FixedChunkSize, AdaptiveChunkSize]


# --- result iterators -----------------------------------------------------------------------


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


_SLICEABLE = (list, tuple, range)


class _Window:
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
        self.star = len(iterables) != 1
        self.source: Iterator[Any] = zip(*iterables) if self.star else iter(iterables[0])
        # Chunks of a list, tuple or range are slices: no per-item work here, and a range
        # chunk travels as a range.
        self.sequence: Optional[Sequence[Any]] = None
        if sizer is not None and type(iterables[0]) in _SLICEABLE and not self.star:
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
                args = item if self.star else (item,)
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
                fut = self.submitter._submit_chunk(self.fn, items, self.star, self.task_timeout)
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

    def interrupt_target(self) -> Any:
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
            return _chunk_batch(self, fut, count, False)
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
) -> _Window:
    """Check the arguments and set up one iteration (its window and chunk sizer).

    ``buffersize=None`` means unbounded (everything is submitted at once, like the stdlib
    ``map``); ``adaptive`` is the sizer ``chunksize=None`` uses (an executor whose hand-off
    is cheaper aims at shorter chunks).
    """
    check_imap_args(iterables, chunksize, buffersize, task_timeout)
    total = _total_length(iterables)
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
    window = _Window(submitter, fn, iterables, sizer, task_timeout, buffersize, ordered)
    if chunksize is None and unbounded:
        window.read_input_now()
    return window


def _wait_exception(fut: Future[Any], deadline: Optional[float]) -> Optional[BaseException]:
    """The future's exception (or ``None``); ``TimeoutError`` once ``deadline`` passes."""
    if deadline is None:
        # Wake up now and then: a Ctrl-C that lands just before the thread blocks is only
        # seen at its next wakeup, and one Ctrl-C must be enough.
        while True:
            try:
                return fut.exception(timeout=_INTERRUPT_POLL)
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


def _chunk_batch(
    window: _Window, fut: Future[Any], count: int, return_exceptions: bool
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


def _next_done(done: queue.SimpleQueue[Future[Any]], deadline: Optional[float]) -> Future[Any]:
    """The next finished future; ``TimeoutError`` once ``deadline`` passes."""
    while True:
        if deadline is None:
            wait = _INTERRUPT_POLL  # see _wait_exception
        else:
            wait = min(_INTERRUPT_POLL, max(0.0, deadline - time.monotonic()))
        try:
            return done.get(timeout=wait)
        except queue.Empty:
            if deadline is not None and time.monotonic() >= deadline:
                raise concurrent.futures.TimeoutError() from None


class Interruptible(Protocol):
    """What :func:`interrupted` needs of an iteration's state."""

    def cancel_all(self) -> None: ...

    def interrupt_target(self) -> Any: ...


def interrupted(window: Interruptible) -> None:
    """Ctrl-C reached an ``imap`` generator: stop its window and tell the executor.  Does
    nothing for a task's own ``KeyboardInterrupt``: the pool stays usable, as the stdlib's."""
    if not is_ctrl_c(sys.exc_info()[1]):
        return
    # Ctrl-C while waiting: cancel what has not started and let the executor stop the rest
    # (the process pool terminates its workers: one Ctrl-C must be enough).
    window.cancel_all()
    on_interrupt = getattr(window.interrupt_target(), "_on_interrupt", None)
    if on_interrupt is not None:
        on_interrupt()


# The two generators below yield single outputs when every task is one item, and whole
# lists (one per chunk) when chunking: make_result_iterator flattens those with
# itertools.chain, so per-item iteration runs at C speed.


def _ordered(
    window: _Window, deadline: Optional[float], return_exceptions: bool, indexed: bool
) -> Iterator[Any]:
    inflight = window.fifo
    position = 0
    try:
        while True:
            window.fill()
            if not inflight:
                break
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
            values, error = _chunk_batch(window, fut, count, return_exceptions)
            del fut
            if indexed:
                values = list(zip(range(position, position + len(values)), values))
            position += len(values)
            yield values
            del values
            if error is not None:
                raise task_outcome(error)
        if window.input_error is not None:
            raise window.input_error
    except KeyboardInterrupt:
        interrupted(window)
        raise
    finally:
        window.cancel_all()


def _unordered(
    window: _Window, deadline: Optional[float], return_exceptions: bool, indexed: bool
) -> Iterator[Any]:
    inflight, done = window.pending, window.done
    try:
        while True:
            window.fill()
            if not inflight:
                break
            fut = _next_done(done, deadline)
            count, first = inflight.pop(fut)
            if window.sizer is None:
                output = _single_output(fut, None, return_exceptions)
                del fut
                yield (first, output) if indexed else output
                del output
                continue
            values, error = _chunk_batch(window, fut, count, return_exceptions)
            del fut
            if indexed:
                values = list(zip(range(first, first + len(values)), values))
            yield values
            del values
            if error is not None:
                raise task_outcome(error)
        if window.input_error is not None:
            raise window.input_error
    except KeyboardInterrupt:
        interrupted(window)
        raise
    finally:
        window.cancel_all()


def _total_length(iterables: tuple[Iterable[Any], ...]) -> Optional[int]:
    lengths = []
    for it in iterables:
        try:
            lengths.append(len(it))  # type: ignore[arg-type]
        except (TypeError, OverflowError):  # unsized, or too long for len() (range(10**20))
            return None
    return min(lengths) if lengths else None


def _check_positive(name: str, value: Optional[int]) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be a positive integer or None, got {value!r}")


def submits_everything(iterables: tuple[Iterable[Any], ...], buffersize: Optional[int]) -> bool:
    """Whether a window of ``buffersize`` tasks takes the whole input at its first fill, so
    adaptive chunks are sized before anything is measured: one item each."""
    if buffersize is None:
        return True
    total = _total_length(iterables)
    return total is not None and buffersize >= total


def check_buffersize(buffersize: Optional[int]) -> None:
    """Python 3.14's ``Executor.map`` rule for ``buffersize``, for every ``map`` and ``imap``:
    anything but an integer or ``None`` is a ``TypeError``, an integer below 1 a ``ValueError``.
    """
    if buffersize is None:
        return
    if not isinstance(buffersize, int):
        raise TypeError(f"buffersize must be an integer or None, got {buffersize!r}")
    if buffersize < 1:
        raise ValueError(f"buffersize must be None or > 0, got {buffersize!r}")


def check_imap_args(
    iterables: tuple[Iterable[Any], ...],
    chunksize: Optional[int],
    buffersize: Optional[int],
    task_timeout: Optional[float],
) -> None:
    """Reject what no ``imap`` flavour accepts, with an error that names the argument."""
    if not iterables:
        raise TypeError("imap() needs at least one iterable")
    _check_positive("chunksize", chunksize)
    check_buffersize(buffersize)
    if task_timeout is not None and not task_timeout > 0:
        raise ValueError(f"task_timeout must be a positive number of seconds, got {task_timeout!r}")


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
    total = _total_length(iterables)
    deadline = None if timeout is None else time.monotonic() + timeout
    if eager:
        window.fill()
    run = _ordered if ordered else _unordered
    generator = run(window, deadline, return_exceptions, indexed)
    on_close = window.cancel_all if eager else None
    if total is None:
        return ResultIterator(generator, on_close, flatten=flatten)
    return SizedResultIterator(generator, total, on_close, flatten=flatten)


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
    if native is not None and hasattr(executor, "_submit_chunk"):
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
