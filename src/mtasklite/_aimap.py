"""``async for`` over an executor's lazy, bounded ``imap``, without blocking the event loop.

Guarantees: the window, order, chunking and error semantics are those of ``imap`` (this
module drives the very same window from :mod:`~mtasklite.windowing`, one step at a time);
the loop is never blocked waiting for a result; no thread waits on the loop's behalf; and
cancelling or leaving the iteration stops reading input and cancels the queued tasks.

How: every task's future gets a done-callback that, while the consumer waits, wakes the
loop through ``loop.call_soon_threadsafe`` (at most one wake-up pending at a time); the
consumer's ``__anext__`` suspends on a loop future until the window's next result is ready,
then takes it without waiting.  Async inputs are read on the loop into a buffer just before
each refill, exactly as many items as that refill may pull (the window's ``wants()``), so the
window reads them as lazily as it reads an ordinary iterator; ordinary inputs are read on the
loop too, as ``imap`` reads them.  A consumer running through results that are
already there lets the loop run other tasks every ``_SLICE`` seconds.
"""

from __future__ import annotations

import asyncio
import collections.abc
import concurrent.futures
import time
from collections import deque
from concurrent.futures import Future
from typing import (
    Any,
    AsyncIterable,
    AsyncIterator,
    Callable,
    Deque,
    Iterable,
    Optional,
    Protocol,
    Sequence,
    TypeVar,
    Union,
)

from ._chunk_run import ChunkResult
from ._chunk_sizing import AdaptiveChunkSize
from ._window import Submitter, open_window

__all__ = ["AsyncInput", "AsyncResultIterator", "async_result_iterator"]

T = TypeVar("T")

#: what ``aimap`` accepts as an input
AsyncInput = Union[Iterable[Any], AsyncIterable[Any]]

#: longest a consumer may run on results that are already there before the iterator lets
#: the loop run its other tasks (seconds)
_SLICE = 0.005


class _Steps(Protocol):
    """What the iterator needs of a window (:func:`~mtasklite.windowing.open_window`)."""

    input_error: Optional[BaseException]

    def wants(self) -> float: ...

    def fill(self) -> None: ...

    def in_flight(self) -> bool: ...

    def ready(self) -> bool: ...

    def take_outputs(self) -> tuple[list[Any], Optional[BaseException]]: ...

    def cancel_all(self) -> None: ...


class _Recorder:
    """The executor's own submission, noting each new future so the iterator can watch it."""

    def __init__(self, executor: Submitter, fresh: list[Future[Any]]):
        self.executor = executor
        self.fresh = fresh

    def _submit_call(
        self, fn: Callable[..., Any], args: tuple[Any, ...], timeout: Optional[float]
    ) -> Future[Any]:
        future = self.executor._submit_call(fn, args, timeout)
        self.fresh.append(future)
        return future

    def _submit_chunk(
        self, fn: Callable[..., Any], items: Sequence[Any], passing: int, timeout: Optional[float]
    ) -> Future[ChunkResult]:
        future = self.executor._submit_chunk(fn, items, passing, timeout)
        self.fresh.append(future)
        return future


class _Waker:
    """Wakes the consumer waiting on the loop when a task finishes (in any thread).

    A finisher wakes the loop only while the consumer waits, and only if no wake-up is queued
    already; the consumer publishes its waiter *before* it checks for a result one last time,
    and a finisher marks its future done *before* it looks for the waiter, so under the GIL
    one of the two sees the other.  It holds neither the iterator nor the window: a future's
    callback must not keep an abandoned iteration alive.
    """

    def __init__(self) -> None:
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self.waiter: Optional[asyncio.Future[None]] = None
        self.queued = False  # a wake-up is queued on the loop and has not run yet

    def task_done(self, _: Future[Any]) -> None:
        loop = self.loop
        if self.waiter is None or self.queued or loop is None:
            return
        self.queued = True
        try:
            loop.call_soon_threadsafe(self.wake)
        except RuntimeError:  # the loop is closed: nobody is waiting on it any more
            self.queued = False

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wake the consumer on ``loop`` from now on."""
        if loop is not self.loop:
            self.loop = loop
            self.queued = False  # one queued on an earlier loop may never run

    def wake(self) -> None:
        """Resume the waiting consumer (on the loop's thread)."""
        self.queued = False
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class _AsyncFeed:
    """An ordinary iterator over what the loop has read ahead from an async iterable."""

    def __init__(self, source: AsyncIterable[Any]):
        self.source = source.__aiter__()
        self.buffer: Deque[Any] = deque()
        self.ended = False
        self.error: Optional[Exception] = None  # raised once the buffer is used up

    def __iter__(self) -> _AsyncFeed:
        return self

    def __next__(self) -> Any:
        if self.buffer:
            return self.buffer.popleft()
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        if self.ended:
            raise StopIteration
        # The window pulled more than wants() promised: a bug, never silent truncation.
        raise RuntimeError("aimap read past its async input's read-ahead")

    async def read_ahead(self, count: float) -> None:
        """Hold ``count`` items (fewer once the source ends or fails)."""
        while len(self.buffer) < count and not self.ended:
            try:
                item = await self.source.__anext__()
            except StopAsyncIteration:
                self.ended = True
            except Exception as exc:  # the window raises it after the items before it
                self.error = exc
                self.ended = True
            else:
                self.buffer.append(item)


class AsyncResultIterator(AsyncIterator[T]):
    """What ``aimap`` returns: an async iterator and async context manager with :meth:`aclose`.

    Results come in ``imap``'s order (completion order for ``aimap_unordered``); a task's
    error is raised where its result would be, and ends the iteration.  Leaving ``async
    with``, :meth:`aclose`, an exception or cancellation reaching the consumer, or dropping
    the iterator after ``break`` stop reading input and cancel every task not yet started
    (running ones too on a process pool made with ``cancel_running=True``).
    """

    def __init__(
        self,
        window: _Steps,
        fresh: list[Future[Any]],
        feeds: list[_AsyncFeed],
        deadline: Optional[float],
    ):
        self._window = window
        self._fresh = fresh  # futures submitted by the last refill, not yet watched
        self._feeds = feeds
        self._deadline = deadline
        self._waker = _Waker()
        self._outputs: Deque[Any] = deque()  # the current task's results not yet yielded
        self._error: Optional[BaseException] = None  # raised once _outputs are yielded
        self._closed = False
        self._busy = False
        self._paused_at = time.monotonic()  # when the consumer last let the loop run

    def __aiter__(self) -> AsyncResultIterator[T]:
        return self

    async def __anext__(self) -> T:
        if self._busy:
            raise RuntimeError("aimap iterator is already being awaited by another task")
        self._busy = True
        try:
            if time.monotonic() - self._paused_at > _SLICE:
                await asyncio.sleep(0)  # results keep coming without a wait: let others run
                self._paused_at = time.monotonic()
            if self._outputs:
                return self._outputs.popleft()  # type: ignore[no-any-return]
            return await self._advance()
        except BaseException:  # StopAsyncIteration, an error, cancellation: all end it
            self._close()
            raise
        finally:
            self._busy = False

    async def _advance(self) -> T:
        """Refill the window, wait for its next result and return it (raise its error)."""
        window = self._window
        self._waker.bind(asyncio.get_running_loop())
        while True:
            if self._error is not None:
                raise self._error
            for feed in self._feeds:
                await feed.read_ahead(window.wants())
            if self._closed:  # by aclose() from another task while we read input
                raise StopAsyncIteration
            self._refill()
            if not window.in_flight():
                if window.input_error is not None:
                    raise window.input_error
                raise StopAsyncIteration
            if not window.ready():
                await self._until_ready()
            values, self._error = window.take_outputs()
            if values:
                self._outputs.extend(values)
                return self._outputs.popleft()  # type: ignore[no-any-return]

    def _refill(self) -> None:
        fresh = self._fresh
        try:
            self._window.fill()
        finally:
            # After fill: the window's own callbacks (unordered: its done queue) run first.
            for future in fresh:
                future.add_done_callback(self._waker.task_done)
            fresh.clear()

    async def _until_ready(self) -> None:
        """Suspend until the window's next result is ready; ``TimeoutError`` at the deadline."""
        window, waker = self._window, self._waker
        assert waker.loop is not None
        expired: list[bool] = []
        timer = None
        if self._deadline is not None:
            delay = self._deadline - time.monotonic()
            if delay <= 0:
                raise concurrent.futures.TimeoutError()

            def expire() -> None:
                expired.append(True)
                waker.wake()

            timer = waker.loop.call_later(delay, expire)
        try:
            while True:
                waker.waiter = waker.loop.create_future()  # published first: see _Waker
                if window.ready():
                    break
                if self._closed:
                    raise StopAsyncIteration
                if expired:
                    raise concurrent.futures.TimeoutError()
                await waker.waiter
        finally:
            waker.waiter = None
            if timer is not None:
                timer.cancel()
            self._paused_at = time.monotonic()

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._outputs.clear()
        self._error = None
        self._feeds = []
        self._window.cancel_all()
        if self._waker.waiter is not None:
            self._waker.wake()  # a task still waiting in __anext__ ends its iteration

    async def aclose(self) -> None:
        """Stop: read no more input, cancel tasks not yet started."""
        self._close()

    async def __aenter__(self) -> AsyncResultIterator[T]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._close()

    def __del__(self) -> None:
        # ``break`` does not close an async iterator; dropping it must still stop the work.
        if not getattr(self, "_closed", True):
            self._close()


def async_result_iterator(
    executor: Submitter,
    fn: Callable[..., Any],
    iterables: tuple[AsyncInput, ...],
    *,
    ordered: bool,
    timeout: Optional[float],
    chunksize: Optional[int],
    buffersize: Optional[int],
    task_timeout: Optional[float],
    workers: int,
    adaptive: type[AdaptiveChunkSize] = AdaptiveChunkSize,
) -> AsyncResultIterator[Any]:
    """Check the arguments and set up one ``aimap`` over ``executor`` (nothing runs yet)."""
    feeds: list[_AsyncFeed] = []
    sources: list[Iterable[Any]] = []
    for source in iterables:
        if isinstance(source, collections.abc.AsyncIterable):
            feed = _AsyncFeed(source)
            feeds.append(feed)
            sources.append(feed)
        else:
            sources.append(source)
    fresh: list[Future[Any]] = []
    window = open_window(
        _Recorder(executor, fresh),
        fn,
        tuple(sources),
        ordered=ordered,
        chunksize=chunksize,
        buffersize=buffersize,
        task_timeout=task_timeout,
        workers=workers,
        adaptive=adaptive,
    )
    deadline = None if timeout is None else time.monotonic() + timeout
    return AsyncResultIterator(window, fresh, feeds, deadline)
