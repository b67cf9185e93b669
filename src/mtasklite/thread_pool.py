"""StatefulThreadPoolExecutor: the stdlib thread pool plus stateful workers and task timeouts.

Guarantee: with no ``worker`` it behaves as the stdlib's ``ThreadPoolExecutor``; worker ``i``
serves tasks with its own object built from spec ``i``, the pool keeps its size when a timed
task is abandoned (the thread that ran it is replaced), and once broken or shut down it
refuses new work as every mtasklite pool does (:mod:`~mtasklite._lifecycle`).  Threads start
lazily (one per submit while none is idle), as in the stdlib.  What runs in a thread, and
the watchdog that times tasks out, are in :mod:`~mtasklite._thread_worker`.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import queue
import threading
import time
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Optional, Sequence, TypeVar, Union

from ._chunk_run import ChunkResult, run_chunk
from ._cpu import default_thread_workers
from ._exit_hooks import EXIT_LOCK
from ._futures import TaskFuture, cancel_dropped
from ._lifecycle import WAIT_AFTER_SHUTDOWN_MESSAGE, ExecutorLifecycle
from ._thread_chunks import ThreadChunkSize
from ._thread_imap import drained_imap
from ._thread_worker import Watchdog, WorkItem, live_threads, serve
from ._validate import check_timeout
from ._worker_checks import stateful_thread_count, warn_shared_instances
from ._worker_stats import SlotCounters, WorkerStats
from .errors import WorkerInitError
from .executor_api import StatefulExecutorMixin
from .stateful import WorkerLike, describe_worker, resolve_workers, spec_for

__all__ = ["StatefulThreadExecutor", "StatefulThreadPoolExecutor"]

T = TypeVar("T")

#: numbers the pools created without a thread_name_prefix (as the stdlib names them)
_pool_numbers = itertools.count()
#: seconds between re-checks while shutdown(wait=True) waits on a pool with timed tasks
_JOIN_RECHECK = 0.05


class StatefulThreadPoolExecutor(StatefulExecutorMixin, ExecutorLifecycle, ThreadPoolExecutor):
    """``ThreadPoolExecutor`` with stateful workers, lazy ``imap`` and per-task timeouts.

    With no ``worker`` it behaves exactly like the stdlib class.  ``worker`` is a
    ``@delayed_init`` spec or a function (every worker gets its own instance), or a list of
    them, one per worker (``max_workers`` then defaults to its length).  ``task_timeout`` is
    the default limit, in seconds, for every task.  ``max_workers`` defaults to the stdlib's
    ``min(32, CPUs + 4)``, or to one thread per CPU with one ``@delayed_init`` spec (every
    thread builds its own object: 2 models on 2 cores, not 6).
    """

    # Chunks sized from measured durations by default: an item over half a millisecond
    # still gets a task of its own (see _thread_chunks); chunksize=1 selects the drainers.
    _default_chunksize = None
    _adaptive_sizer = ThreadChunkSize
    _items_in_flight_per_worker = 64  # a pending item is a small cell (see _thread_imap)
    _one_by_one_engine = staticmethod(drained_imap)  # drainers, not a future per item
    #: set when queued work is dropped (broken pool, ``cancel_futures``): imap drainers
    #: start no further item
    _stop_draining = False

    # The stdlib attributes, with the types this subclass puts in them.
    _work_queue: queue.SimpleQueue[Optional[WorkItem]]  # type: ignore[assignment]
    _threads: set[threading.Thread]
    _broken: Union[bool, str]  # type: ignore[assignment]
    #: what a broken pool raises (the stdlib's own submit uses ``BROKEN`` from 3.14 on)
    BROKEN = WorkerInitError

    def __init__(
        self,
        max_workers: Optional[int] = None,
        thread_name_prefix: str = "",
        initializer: Optional[Callable[..., object]] = None,
        initargs: tuple[Any, ...] = (),
        *,
        worker: Union[WorkerLike, Sequence[WorkerLike], None] = None,
        task_timeout: Optional[float] = None,
    ):
        specs, max_workers = resolve_workers(worker, max_workers)
        max_workers = stateful_thread_count(specs, max_workers)
        if max_workers is None:
            max_workers = default_thread_workers()
        # The stdlib __init__ validates the arguments; the state it leaves differs between
        # versions (3.14 dropped _initializer/_initargs for prepare_context()), so everything
        # this class reads is set here, as our own copy.
        super().__init__(max_workers, thread_name_prefix, initializer, initargs)
        self._max_workers = max_workers
        self._pool_initializer = initializer
        self._pool_initargs = initargs
        self._work_queue = queue.SimpleQueue()
        self._idle_semaphore = threading.Semaphore(0)
        self._threads = set()
        self._broken = False
        self._shutdown = False
        self._shutdown_lock = threading.Lock()
        self._thread_name_prefix = thread_name_prefix or f"ThreadPoolExecutor-{next(_pool_numbers)}"
        warn_shared_instances(specs, self._max_workers)
        self._worker_specs = specs
        self._task_timeout = check_timeout("task_timeout", task_timeout)
        self._broken_cause: Optional[BaseException] = None
        self._watchdog: Optional[Watchdog] = None
        self._ready = [threading.Event() for _ in range(self._max_workers)]
        # The thread serving each index.  An abandoned thread is replaced here and dropped
        # from ``_threads``, so shutdown(wait=True) never waits for a task that timed out.
        self._index_threads: list[Optional[threading.Thread]] = [None] * self._max_workers
        self._started = 0  # indices started so far (threads start lazily, in index order)
        # What each index ran, for worker_stats(); written by its own thread (and the
        # watchdog's timeouts, and the thread starts under the lock), read by anyone.
        self._counters = [SlotCounters() for _ in range(self._max_workers)]

    # -- submission ---------------------------------------------------------------------------

    def _submit_timed(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: Optional[float],
    ) -> Future[Any]:
        with self._shutdown_lock, EXIT_LOCK:
            self._check_accepting()
            if timeout is not None and self._watchdog is None:
                self._watchdog = Watchdog(self, f"{self._thread_name_prefix}_watchdog")
            future: Future[Any] = TaskFuture()
            self._work_queue.put(WorkItem(future, fn, args, kwargs, timeout))
            self._adjust_thread_count()
            return future

    def _is_broken(self) -> bool:
        return bool(self._broken)

    def _is_shut_down(self) -> bool:
        return self._shutdown

    def _submit_chunk(
        self, fn: Callable[..., Any], items: Sequence[Any], passing: int, timeout: Optional[float]
    ) -> Future[ChunkResult]:
        # Timed imap sends single items (_chunks_take_timeouts is False), never a timed chunk.
        return self._submit_timed(run_chunk, (fn, items, passing), {}, None)

    # -- worker threads -----------------------------------------------------------------------

    def _adjust_thread_count(self) -> None:
        if self._idle_semaphore.acquire(timeout=0):
            return
        if self._started < self._max_workers:
            self._start_thread(self._started)
            self._started += 1

    def _start_thread(self, index: int) -> None:
        # The weakref callback wakes the workers when the executor is collected.
        def weakref_cb(_: object, q: queue.SimpleQueue[Any] = self._work_queue) -> None:
            q.put(None)

        thread = threading.Thread(
            name=f"{self._thread_name_prefix}_{index}",
            target=serve,
            args=(
                weakref.ref(self, weakref_cb),
                index,
                self._work_queue,
                self._pool_initializer,
                self._pool_initargs,
                spec_for(self._worker_specs, index),
                self._ready[index],
                self._counters[index],
            ),
            daemon=True,
        )
        thread.start()
        self._counters[index].starts += 1
        self._index_threads[index] = thread
        self._threads.add(thread)
        live_threads[thread] = self._work_queue

    def _replace_abandoned(self, index: int, stuck: threading.Thread) -> None:
        with self._shutdown_lock:
            self._counters[index].timeouts += 1
            self._threads.discard(stuck)
            # Also after shutdown(): work may still be queued behind the stuck task, and the
            # replacement exits on the shutdown sentinel once the queue is drained.
            if self._index_threads[index] is stuck and not self._broken:
                self._start_thread(index)

    def wait_ready(self, timeout: Optional[float] = None) -> None:
        """Start every worker and wait until each has built its object.

        Raises the pool's :class:`~mtasklite.WorkerInitError` if a worker failed to
        initialise, ``TimeoutError`` if they are not all ready within ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._shutdown_lock:
            self._check_accepting(WAIT_AFTER_SHUTDOWN_MESSAGE)
            while self._started < self._max_workers and not self._broken:
                self._start_thread(self._started)
                self._started += 1
        for event in self._ready:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not event.wait(remaining) and not self._broken:
                raise concurrent.futures.TimeoutError(f"workers not ready within {timeout} s")
            if self._broken:
                raise self._broken_error()

    def worker_stats(self) -> list[WorkerStats]:
        """One :class:`~mtasklite.WorkerStats` per worker index: items completed, failed and
        timed out, threads started after the first (replacing timed-out ones), seconds spent
        in tasks.  ``pid`` and ``resident_bytes`` are ``None`` (a thread has no process of its
        own) and ``crashes`` is 0 (an exception in a thread is a failure, not a crash).
        Counting costs no message: each thread counts what it runs."""
        return [
            counters.snapshot(index, None, None) for index, counters in enumerate(self._counters)
        ]

    # -- failure and shutdown -----------------------------------------------------------------

    def _broken_error(self) -> WorkerInitError:
        error = WorkerInitError(self._broken)
        error.__cause__ = self._broken_cause
        return error

    def _worker_init_failed(
        self, index: int, spec: Optional[WorkerLike], exc: BaseException
    ) -> None:
        with self._shutdown_lock:
            if not self._broken:
                if spec is None:
                    what = "the pool initializer"
                else:
                    what = f"building worker {index} ({describe_worker(spec)})"
                self._broken = f"{what} failed: {exc!r}; the thread pool is not usable anymore"
                self._broken_cause = exc
                self._stop_draining = True
            queued = []
            while True:
                try:
                    item = self._work_queue.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    queued.append(item.future)
            if self._shutdown:
                self._work_queue.put(None)  # we may have drained shutdown's wake-up sentinel
        # Failed after the lock is released: setting a future runs its done-callbacks.
        for future in queued:
            if future.set_running_or_notify_cancel():
                future.set_exception(self._broken_error())

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        dropped = []
        with self._shutdown_lock:
            self._shutdown = True
            if cancel_futures:
                self._stop_draining = True  # imap items not yet started are pending work too
                while True:
                    try:
                        item = self._work_queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is not None:
                        dropped.append(item.future)
            self._work_queue.put(None)
            watchdog = self._watchdog
        # Cancelled after the lock is released: cancelling runs done-callbacks, which may
        # submit or shut down again (the lock is not reentrant).
        for future in dropped:
            cancel_dropped(future)
        if watchdog is not None:
            watchdog.stop()
        if wait:
            # Re-read the set each round: a timed-out thread leaves it (we must not wait for
            # it) and its replacement joins it.  Never join ourselves (shutdown() called from
            # a task or a done-callback).
            current = threading.current_thread()
            while True:
                with self._shutdown_lock:
                    alive = [t for t in self._threads if t is not current and t.is_alive()]
                if not alive:
                    break
                alive[0].join(_JOIN_RECHECK if watchdog is not None else None)

    shutdown.__doc__ = ThreadPoolExecutor.shutdown.__doc__

    def _close_within(self, timeout: float) -> None:
        # Threads cannot be stopped: give each running one ``timeout`` seconds, then leave
        # it (a daemon) to finish on its own.
        self.shutdown(wait=False, cancel_futures=True)
        for thread in list(self._threads):
            thread.join(timeout)


StatefulThreadExecutor = StatefulThreadPoolExecutor
