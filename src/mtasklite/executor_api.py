"""What every stateful executor (thread, process, Dask) adds to ``concurrent.futures``: one mixin.

The concrete pools provide ``_submit_call`` / ``_submit_chunk`` (the windowing engine's
:class:`~mtasklite.windowing.Submitter` protocol) and ``_submit_timed``; everything users call
beyond the stdlib API (``imap``, ``imap_unordered``, ``map(buffersize=)``,
``submit_with_timeout``, ``worker``) is written once here, with the defaults of the hooks
the rest of the package calls on any of them: ``_on_interrupt`` (Ctrl-C in an ``imap``),
``_stop_now`` and ``_close_within`` (what :class:`PoolBackend`, ``Pool``'s view of an
executor, needs).
"""

from __future__ import annotations

import sys
import threading
from concurrent.futures import Executor, Future
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Iterable,
    Iterator,
    Literal,
    Optional,
    Protocol,
    Sequence,
    TypeVar,
    cast,
)

if sys.version_info >= (3, 10):
    from typing import ParamSpec
else:  # pragma: no cover - 3.9 only (typing_extensions costs ~10 ms of import time)
    from typing_extensions import ParamSpec

from ._chunk_run import ChunkResult
from ._chunk_sizing import AdaptiveChunkSize
from ._imap_api import DEFAULT, ImapMethods
from ._lifecycle import SHUTDOWN_MESSAGE
from ._outcomes import is_ctrl_c
from ._validate import check_buffersize, check_timeout
from .stateful import WORKER_HANDLE, WorkerHandle, WorkerLike
from .windowing import (
    ResultIterator,
    check_imap_args,
    make_result_iterator,
    submits_everything,
)

if TYPE_CHECKING:  # asyncio loads only when aimap is used
    from ._aimap import AsyncInput, AsyncResultIterator

# SHUTDOWN_MESSAGE and check_timeout live in _lifecycle and _validate; importable from here.
__all__ = ["SHUTDOWN_MESSAGE", "PoolBackend", "StatefulExecutorMixin", "check_timeout"]

T = TypeVar("T")
P = ParamSpec("P")

_DEFAULT: Any = DEFAULT  # "use the executor's chunksize / task_timeout"

#: ``imap``'s default window, in tasks per worker.  A chunk can hold thousands of items, so
#: few of them; a single item is cheap to hold but each one costs a hand-off to a worker, and
#: a deeper window lets workers run through several before the consumer must wake them (the
#: thread pool, where an item is a small cell rather than a message, goes deeper still).
CHUNKS_IN_FLIGHT_PER_WORKER = 4
ITEMS_IN_FLIGHT_PER_WORKER = 16


_FAILURES_DOC = """
        Besides the task's own exception, the future can fail with
        :class:`~mtasklite.TaskTimeoutError` (the task overran ``task_timeout``),
        :class:`~mtasklite.WorkerCrashedError` (its worker process died),
        :class:`~mtasklite.TaskPicklingError` (``fn`` or an argument could not be sent to a
        worker process) or :class:`~mtasklite.WorkerInitError` (a worker's object could not
        be built).  Raises ``RuntimeError`` once the executor has shut down.
        """


class StatefulExecutorMixin(ImapMethods):
    """imap, timeouts and the worker handle, shared by the thread, process and Dask executors."""

    _max_workers: int
    _worker_specs: Optional[list[WorkerLike]]
    _task_timeout: Optional[float]
    #: chunksize ``imap`` uses when the caller does not say
    _default_chunksize: Optional[int] = 1
    #: how ``chunksize=None`` sizes chunks on this executor
    _adaptive_sizer: type[AdaptiveChunkSize] = AdaptiveChunkSize
    #: whether one chunk can carry a per-item time limit (else timed imap sends single items)
    _chunks_take_timeouts: bool = False
    #: ``imap``'s default window for single items, per worker
    _items_in_flight_per_worker: int = ITEMS_IN_FLIGHT_PER_WORKER
    #: a leaner ``imap`` engine for untimed one-item tasks, where the executor has one:
    #: ``engine(executor, fn, iterables, *, ordered, timeout, buffersize, return_exceptions,
    #: indexed)``
    _one_by_one_engine: Optional[Callable[..., ResultIterator[Any]]] = None

    # -- provided by the concrete executor ------------------------------------------------

    def _submit_timed(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: Optional[float],
    ) -> Future[Any]:
        raise NotImplementedError

    def _submit_chunk(
        self, fn: Callable[..., Any], items: Sequence[Any], passing: Any, timeout: Optional[float]
    ) -> Future[ChunkResult]:
        # ``passing``: a Passing value (an int).  Typed Any while the process pool still
        # names it ``star: bool`` (the values agree: SINGLE is falsy, STAR truthy).
        raise NotImplementedError

    def _submit_call(
        self, fn: Callable[..., Any], args: tuple[Any, ...], timeout: Optional[float]
    ) -> Future[Any]:
        return self._submit_timed(fn, args, {}, timeout)

    #: the concrete executor's ``shutdown`` (annotation only: never shadows it)
    shutdown: Callable[..., None]

    def _stop_now(self) -> None:
        """Leave ``with`` on Ctrl-C without waiting for work nobody will collect (running
        threads cannot be stopped: drop the queue and do not wait)."""
        self.shutdown(wait=False, cancel_futures=True)

    def _on_interrupt(self) -> None:
        """Ctrl-C reached an ``imap`` on this executor, which already cancelled its queued
        tasks: stop running work if this pool can (threads cannot; the process pool does)."""

    def _close_within(self, timeout: float) -> None:
        """Shut down, cancelling queued work, and give running tasks ``timeout`` seconds to
        finish before stopping them as :meth:`_stop_now` does (``Pool(join_timeout=)``)."""
        self.shutdown(wait=False, cancel_futures=True)
        # A process pool's work ends with its management thread (the stdlib's attribute,
        # which ours keeps); other executors override this method or have nothing to wait for.
        thread = cast(Optional[threading.Thread], getattr(self, "_executor_manager_thread", None))
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                self._stop_now()

    # -- public API -----------------------------------------------------------------------

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        return self._submit_timed(fn, args, kwargs, self._task_timeout)

    submit.__doc__ = (Executor.submit.__doc__ or "") + _FAILURES_DOC

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> Literal[False]:
        if is_ctrl_c(exc_val):
            self._stop_now()
        else:
            self.shutdown(wait=True)
        return False

    @property
    def worker(self) -> WorkerHandle:
        """A picklable handle: called inside a pool worker, it calls that worker's own object."""
        if self._worker_specs is None:
            raise AttributeError(
                f"{type(self).__name__} was created without worker=, so it has no worker handle"
            )
        return WORKER_HANDLE

    def submit_with_timeout(
        self, timeout: Optional[float], fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> Future[T]:
        """``submit`` with this task's own time limit (seconds from when it starts running).

        A late task's future fails with :class:`~mtasklite.TaskTimeoutError` and the worker is
        replaced; ``None`` means no limit.  Raises ``ValueError`` for a bad ``timeout``.
        """
        return self._submit_timed(fn, args, kwargs, check_timeout("timeout", timeout))

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: Optional[float] = None,
        chunksize: int = 1,
        buffersize: Optional[int] = None,
    ) -> Iterator[T]:
        """``Executor.map`` with the stdlib semantics, plus ``buffersize`` on every Python.

        Without ``buffersize`` every task is submitted before this returns, as the stdlib does;
        with it, at most ``buffersize`` tasks are in flight and input is read lazily (the
        Python 3.14 contract), so the result must be consumed before the executor shuts down.
        Iterating raises what a task raised, or what :meth:`imap` lists for the pool's own
        failures.
        """
        if isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        check_buffersize(buffersize)  # before reading the input, as 3.14 does
        if not iterables:
            iterables = ((),)  # map(fn): no calls and an empty iterator, as the stdlib gives
        if self._task_timeout is not None and not self._chunks_take_timeouts:
            chunksize = 1  # a chunk cannot carry per-item limits here; keep the limit
        return make_result_iterator(
            self,
            fn,
            iterables,
            timeout=timeout,
            chunksize=chunksize,
            buffersize=buffersize,
            task_timeout=self._task_timeout,
            workers=self._max_workers,
            eager=True,
        )

    def _imap(
        self,
        fn: Callable[..., Any],
        iterables: tuple[Iterable[Any], ...],
        ordered: bool,
        timeout: Optional[float],
        chunksize: Optional[int],
        buffersize: Optional[int],
        task_timeout: Optional[float],
        return_exceptions: bool = False,
        indexed: bool = False,
    ) -> ResultIterator[Any]:
        chunksize, buffersize, task_timeout = self._imap_args(chunksize, buffersize, task_timeout)
        check_imap_args(iterables, chunksize, buffersize, task_timeout)
        engine = self._one_by_one_engine
        if engine is not None and chunksize is None and submits_everything(iterables, buffersize):
            # Every item is submitted before one is measured, so adaptive chunks would hold
            # one item each: the one-item engine does exactly that, for less.
            chunksize = 1
        if engine is not None and chunksize == 1 and task_timeout is None:
            return engine(
                self,
                fn,
                iterables,
                ordered=ordered,
                timeout=timeout,
                buffersize=buffersize,
                return_exceptions=return_exceptions,
                indexed=indexed,
            )
        return make_result_iterator(
            self,
            fn,
            iterables,
            ordered=ordered,
            timeout=timeout,
            chunksize=chunksize,
            buffersize=buffersize,
            task_timeout=task_timeout,
            return_exceptions=return_exceptions,
            workers=self._max_workers,
            indexed=indexed,
            adaptive=self._adaptive_sizer,
        )

    def _imap_args(
        self, chunksize: Optional[int], buffersize: Optional[int], task_timeout: Optional[float]
    ) -> tuple[Optional[int], Optional[int], Optional[float]]:
        """The chunk size, window and per-task limit an ``imap`` runs with, defaults applied."""
        if chunksize is _DEFAULT:
            chunksize = self._default_chunksize
        if task_timeout is _DEFAULT:
            task_timeout = self._task_timeout
        else:
            task_timeout = check_timeout("task_timeout", task_timeout)
        if task_timeout is not None and not self._chunks_take_timeouts:
            chunksize = 1
        if buffersize is None:
            per_worker = (
                self._items_in_flight_per_worker if chunksize == 1 else CHUNKS_IN_FLIGHT_PER_WORKER
            )
            buffersize = per_worker * self._max_workers
        return chunksize, buffersize, task_timeout

    # -- asyncio ----------------------------------------------------------------------------

    def aimap(
        self,
        fn: Callable[..., T],
        *iterables: AsyncInput,
        timeout: Optional[float] = None,
        chunksize: Optional[int] = _DEFAULT,
        buffersize: Optional[int] = None,
        task_timeout: Optional[float] = _DEFAULT,
    ) -> AsyncResultIterator[T]:
        """:meth:`imap` for ``async for``: the same window, order, chunks and errors, and the
        event loop is never blocked while results are awaited.

        Inputs may be async iterables too (pulled on the loop, as lazily as ``imap`` pulls).
        Cancelling the consuming task, leaving the loop early, ``aclose()`` or leaving
        ``async with`` stops reading input and cancels queued tasks (running ones too with
        ``cancel_running=True``).
        """
        return self._async_imap(fn, iterables, True, timeout, chunksize, buffersize, task_timeout)

    def aimap_unordered(
        self,
        fn: Callable[..., T],
        *iterables: AsyncInput,
        timeout: Optional[float] = None,
        chunksize: Optional[int] = _DEFAULT,
        buffersize: Optional[int] = None,
        task_timeout: Optional[float] = _DEFAULT,
    ) -> AsyncResultIterator[T]:
        """Like :meth:`aimap`, but yields results as tasks complete."""
        return self._async_imap(fn, iterables, False, timeout, chunksize, buffersize, task_timeout)

    def _async_imap(
        self,
        fn: Callable[..., Any],
        iterables: tuple[AsyncInput, ...],
        ordered: bool,
        timeout: Optional[float],
        chunksize: Optional[int],
        buffersize: Optional[int],
        task_timeout: Optional[float],
    ) -> AsyncResultIterator[Any]:
        from ._aimap import async_result_iterator  # here: asyncio loads only when used

        chunksize, buffersize, task_timeout = self._imap_args(chunksize, buffersize, task_timeout)
        return async_result_iterator(
            self,
            fn,
            iterables,
            ordered=ordered,
            timeout=timeout,
            chunksize=chunksize,
            buffersize=buffersize,
            task_timeout=task_timeout,
            workers=self._max_workers,
            adaptive=self._adaptive_sizer,
        )


class PoolBackend(Protocol):
    """What :class:`~mtasklite.Pool` needs of the executor it runs on (every stateful one)."""

    _max_workers: int

    @property
    def worker(self) -> WorkerHandle: ...

    def _imap(
        self,
        fn: Callable[..., Any],
        iterables: tuple[Iterable[Any], ...],
        ordered: bool,
        timeout: Optional[float],
        chunksize: Optional[int],
        buffersize: Optional[int],
        task_timeout: Optional[float],
        return_exceptions: bool = False,
        indexed: bool = False,
    ) -> ResultIterator[Any]: ...

    def _close_within(self, timeout: float) -> None: ...

    def _stop_now(self) -> None: ...

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None: ...
