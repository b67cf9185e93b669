"""StatefulThreadPoolExecutor: the stdlib thread pool plus stateful workers and task timeouts.

Worker ``i`` is a thread that runs the stdlib ``initializer``, then builds its object from
spec ``i`` once, then serves the shared work queue until shutdown, exactly like the stdlib
worker loop.  Threads start lazily (one per submit while none is idle), as in the stdlib.

Timeouts.  A Python thread cannot be killed.  A watchdog thread, started on the first timed
task, tracks the deadline of every running timed task.  At the deadline it fails the future
with ``TaskTimeoutError``, marks the stuck thread *abandoned*, starts a replacement thread
with the same index (which builds a fresh object from the same spec, so the pool keeps its
size), and asks the stuck thread to stop with an asynchronous exception.  Whatever the stuck
thread later returns is discarded.

Races, and who settles them (all under the watchdog's lock):
- task finishes as its deadline passes: the worker's ``end`` and the watchdog's expiry both
  take the lock; whoever comes first owns the future.
- the asynchronous exception is set only while the task is still registered as running, so
  it can reach the stuck thread only before or inside its ``end``; the thread clears any
  still-pending one before leaving, so it never fires in unrelated code.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import os
import queue
import threading
import time
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures._base import LOGGER
from typing import Any, Callable, Optional, Sequence, TypeVar, Union

from ._cpu import default_thread_workers
from ._futures import TaskFuture, cancel_dropped
from ._outcomes import task_outcome
from ._thread_chunks import ThreadChunkSize
from ._thread_imap import drained_imap
from .errors import TaskTimeoutError, WorkerInitError
from .executor_api import StatefulExecutorMixin, check_timeout
from .stateful import (
    WorkerContext,
    WorkerLike,
    build_worker,
    close_worker,
    current_worker,
    describe_worker,
    resolve_workers,
    set_thread_context,
    spec_for,
)
from .windowing import ChunkResult, run_chunk

__all__ = ["StatefulThreadExecutor", "StatefulThreadPoolExecutor"]

T = TypeVar("T")

# Live pool threads -> their work queue, for the interpreter-exit hook.  Abandoned (stuck)
# threads are removed, so exit never waits for a task that timed out.
_live_threads: weakref.WeakKeyDictionary[threading.Thread, queue.SimpleQueue[Any]] = (
    weakref.WeakKeyDictionary()
)
_global_shutdown = False
_global_shutdown_lock = threading.Lock()
#: numbers the pools created without a thread_name_prefix (as the stdlib names them)
_pool_numbers = itertools.count()
#: seconds between re-checks while shutdown(wait=True) waits on a pool with timed tasks
_JOIN_RECHECK = 0.05


def _python_exit() -> None:
    global _global_shutdown
    with _global_shutdown_lock:
        _global_shutdown = True
    items = list(_live_threads.items())
    for _, work_queue in items:
        work_queue.put(None)
    for thread, _ in items:
        thread.join()


# Pool threads are daemons (a stuck, abandoned one must not block exit); this hook, run before
# the interpreter joins non-daemon threads, waits for the live ones as the stdlib does.
threading._register_atexit(_python_exit)  # type: ignore[attr-defined]


def _after_fork_in_child() -> None:
    # A forked child (e.g. a process-pool worker) inherits neither our threads nor the state
    # of this lock, which another thread may have held at the fork: its exit hook must not
    # wait for either.
    _global_shutdown_lock._at_fork_reinit()  # type: ignore[attr-defined]
    _live_threads.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class _Abandoned(BaseException):
    """Raised asynchronously in a worker thread whose task timed out."""


class _WorkItem:
    __slots__ = ("args", "fn", "future", "kwargs", "timeout")

    def __init__(
        self,
        future: Future[Any],
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: Optional[float],
    ):
        self.future = future
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.timeout = timeout


class _Watchdog:
    """Fails timed-out tasks and replaces their threads (see the module docstring)."""

    def __init__(self, executor: StatefulThreadPoolExecutor):
        # A collected executor stops its watchdog (which then exits once its tasks end).
        self._executor_ref = weakref.ref(executor, lambda _: self.stop())
        self._cond = threading.Condition()
        # worker index -> (thread, item, deadline) of each running timed task
        self._running: dict[int, tuple[threading.Thread, _WorkItem, float]] = {}
        self._name = f"{executor._thread_name_prefix}_watchdog"
        self._stopped = False
        self._active = False  # a watchdog thread is running (it exits once idle and stopped)

    def begin(self, index: int, item: _WorkItem) -> None:
        assert item.timeout is not None
        with self._cond:
            deadline = time.monotonic() + item.timeout
            self._running[index] = (threading.current_thread(), item, deadline)
            if not self._active:
                self._active = True
                threading.Thread(target=self._run, name=self._name, daemon=True).start()
            self._cond.notify()

    def end(self, index: int, item: _WorkItem) -> bool:
        """Unregister; ``False`` when the watchdog already took the task away."""
        try:
            with self._cond:
                entry = self._running.get(index)
                if entry is None or entry[1] is not item:
                    return False
                del self._running[index]
                return True
        except _Abandoned:
            # The watchdog expired us while we waited for its lock: the exception can land
            # right after the acquire, before ``with`` could arrange the release.
            if self._cond._is_owned():  # type: ignore[attr-defined]
                self._cond.release()
            raise

    def stop(self) -> None:
        """Exit once no timed task is running (a later timed task restarts the thread)."""
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._stopped and not self._running:
                        self._active = False
                        return
                    now = time.monotonic()
                    expired = [(i, e) for i, e in self._running.items() if e[2] <= now]
                    if expired:
                        break
                    wait = min((e[2] for e in self._running.values()), default=now + 3600) - now
                    self._cond.wait(timeout=wait)
                for index, (thread, _, _) in expired:
                    # Still under the lock, before the stuck thread's ``end`` can run: the
                    # asynchronous exception can only land inside its task (module docstring).
                    del self._running[index]
                    _live_threads.pop(thread, None)
                    _raise_in_thread(thread, _Abandoned)
            # Outside the lock: done-callbacks and thread starts may take other locks.
            for index, (thread, item, _) in expired:
                executor = self._executor_ref()
                if executor is not None:
                    executor._replace_abandoned(index, thread)
                del executor
                item.future.set_exception(_timeout_error(item, index, thread))
            del expired


def _timeout_error(item: _WorkItem, index: int, thread: threading.Thread) -> TaskTimeoutError:
    fn_name = getattr(item.fn, "__qualname__", None) or repr(item.fn)
    return TaskTimeoutError(
        f"task {fn_name}{_short_args(item.args)} exceeded its {item.timeout:g} s limit in "
        f"worker {index} (thread {thread.name}); the worker thread was replaced"
    )


def _short_args(args: tuple[Any, ...], limit: int = 60) -> str:
    text = repr(args)
    text = "(" + text[1:-2] + ")" if text.endswith(",)") else text
    return text if len(text) <= limit else text[: limit - 4] + "...)"


def _raise_in_thread(thread: threading.Thread, exc_type: Optional[type[BaseException]]) -> None:
    """Best effort: make ``exc_type`` pending in ``thread`` (``None`` clears a pending one)."""
    import ctypes  # here, not at the top: only timeouts need it, and it costs ~2 ms to load

    set_async = getattr(ctypes.pythonapi, "PyThreadState_SetAsyncExc", None)
    if set_async is None or thread.ident is None:  # pragma: no cover - non-CPython
        return
    set_async(ctypes.c_ulong(thread.ident), ctypes.py_object(exc_type) if exc_type else None)


def _run_item(item: _WorkItem, index: int, watchdog: Optional[_Watchdog]) -> bool:
    """Run one work item; ``False`` if this thread was abandoned and must exit."""
    future = item.future
    if not future.set_running_or_notify_cancel():
        return True
    if item.timeout is None or watchdog is None:
        try:
            result = item.fn(*item.args, **item.kwargs)
        except BaseException as exc:
            future.set_exception(task_outcome(exc))  # its KeyboardInterrupt is no Ctrl-C
        else:
            future.set_result(result)
        return True
    try:
        watchdog.begin(index, item)
        try:
            result, error = item.fn(*item.args, **item.kwargs), None
        except _Abandoned:
            raise
        except BaseException as exc:
            result, error = None, exc
        owned = watchdog.end(index, item)
    except _Abandoned:
        owned = False
    if not owned:
        try:
            _raise_in_thread(threading.current_thread(), None)
        except _Abandoned:
            pass
        return False
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(task_outcome(error))
    return True


def _worker(
    executor_ref: weakref.ref[StatefulThreadPoolExecutor],
    index: int,
    work_queue: queue.SimpleQueue[Optional[_WorkItem]],
    initializer: Optional[Callable[..., object]],
    initargs: tuple[Any, ...],
    spec: Optional[WorkerLike],
    ready: threading.Event,
) -> None:
    set_thread_context(WorkerContext(index, None))
    if initializer is not None:
        try:
            initializer(*initargs)
        except BaseException as exc:
            LOGGER.critical("Exception in initializer:", exc_info=True)
            executor = executor_ref()
            if executor is not None:
                executor._worker_init_failed(index, None, exc)
            ready.set()
            return
    if spec is not None:
        try:
            set_thread_context(WorkerContext(index, build_worker(spec)))
        except BaseException as exc:
            executor = executor_ref()
            if executor is not None:
                executor._worker_init_failed(index, spec, exc)
            ready.set()
            return
    ready.set()
    try:
        while True:
            item = work_queue.get(block=True)
            if item is not None:
                watchdog = None
                if item.timeout is not None:
                    executor = executor_ref()
                    watchdog = None if executor is None else executor._watchdog
                    del executor
                if not _run_item(item, index, watchdog):
                    return  # abandoned: a replacement thread serves this index now
                del item, watchdog
                executor = executor_ref()
                if executor is not None:
                    executor._idle_semaphore.release()
                del executor
                continue
            executor = executor_ref()
            if _global_shutdown or executor is None or executor._shutdown:
                if executor is not None:
                    executor._shutdown = True
                _retire_thread(work_queue)  # tells the next thread, closes our object
                return
            del executor
    except _Abandoned:
        pass
    except BaseException:
        LOGGER.critical("Exception in worker", exc_info=True)
    finally:
        set_thread_context(None)


def _retire_thread(work_queue: queue.SimpleQueue[Optional[_WorkItem]]) -> None:
    """A worker thread leaves at shutdown: tell the next thread, close its object."""
    work_queue.put(None)
    close_worker(current_worker())


class StatefulThreadPoolExecutor(StatefulExecutorMixin, ThreadPoolExecutor):
    """``ThreadPoolExecutor`` with stateful workers, lazy ``imap`` and per-task timeouts.

    With no ``worker`` it behaves exactly like the stdlib class.  ``worker`` is a
    ``@delayed_init`` spec or a function (every worker gets its own instance), or a list of
    them, one per worker (``max_workers`` then defaults to its length).  ``task_timeout`` is
    the default limit, in seconds, for every task.
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
    _work_queue: queue.SimpleQueue[Optional[_WorkItem]]  # type: ignore[assignment]
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
        self._worker_specs = specs
        self._task_timeout = check_timeout("task_timeout", task_timeout)
        self._broken_cause: Optional[BaseException] = None
        self._watchdog: Optional[_Watchdog] = None
        self._ready = [threading.Event() for _ in range(self._max_workers)]
        # The thread serving each index.  An abandoned thread is replaced here and dropped
        # from ``_threads``, so shutdown(wait=True) never waits for a task that timed out.
        self._index_threads: list[Optional[threading.Thread]] = [None] * self._max_workers
        self._started = 0  # indices started so far (threads start lazily, in index order)

    # -- submission ---------------------------------------------------------------------------

    def _submit_timed(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: Optional[float],
    ) -> Future[Any]:
        with self._shutdown_lock, _global_shutdown_lock:
            self._check_accepting()
            if timeout is not None and self._watchdog is None:
                self._watchdog = _Watchdog(self)
            future: Future[Any] = TaskFuture()
            self._work_queue.put(_WorkItem(future, fn, args, kwargs, timeout))
            self._adjust_thread_count()
            return future

    def _check_accepting(self) -> None:
        """Raise what ``submit`` raises when the pool takes no new work."""
        if self._accepting():
            return
        if self._broken:
            raise self._broken_error()
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if _global_shutdown:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    def _accepting(self) -> bool:
        return not (self._broken or self._shutdown or _global_shutdown)

    def _submit_chunk(
        self, fn: Callable[..., Any], items: Sequence[Any], star: bool, timeout: Optional[float]
    ) -> Future[ChunkResult]:
        # Timed imap sends single items (_chunks_take_timeouts is False), never a timed chunk.
        return self._submit_timed(run_chunk, (fn, items, star), {}, None)

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
            target=_worker,
            args=(
                weakref.ref(self, weakref_cb),
                index,
                self._work_queue,
                self._pool_initializer,
                self._pool_initargs,
                spec_for(self._worker_specs, index),
                self._ready[index],
            ),
            daemon=True,
        )
        thread.start()
        self._index_threads[index] = thread
        self._threads.add(thread)
        _live_threads[thread] = self._work_queue

    def _replace_abandoned(self, index: int, stuck: threading.Thread) -> None:
        with self._shutdown_lock:
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
            if self._shutdown:
                raise RuntimeError("cannot wait for workers after shutdown")
            while self._started < self._max_workers and not self._broken:
                self._start_thread(self._started)
                self._started += 1
        for event in self._ready:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not event.wait(remaining) and not self._broken:
                raise concurrent.futures.TimeoutError(f"workers not ready within {timeout} s")
            if self._broken:
                raise self._broken_error()

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


StatefulThreadExecutor = StatefulThreadPoolExecutor
