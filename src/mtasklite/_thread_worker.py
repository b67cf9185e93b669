"""What runs in a stateful pool thread, and the watchdog that gives up on a stuck one.

Guarantee: worker ``i`` runs the pool ``initializer``, then builds its object from spec ``i``
once, then serves the shared work queue until shutdown; a failure to initialise breaks the
pool (reported to the executor), never a hang.  A timed task is failed at its deadline with
:class:`~mtasklite.TaskTimeoutError` and its thread is *abandoned*: the executor starts a
replacement with the same index, the stuck thread is sent an asynchronous exception, and
whatever it later returns is discarded.  Live threads are joined at interpreter exit (an
abandoned one is not), and a forked child forgets them.

Races, and who settles them (all under the watchdog's lock):
- task finishes as its deadline passes: the worker's ``end`` and the watchdog's expiry both
  take the lock; whoever comes first owns the future.
- the asynchronous exception is set only while the task is still registered as running, so
  it can reach the stuck thread only before or inside its ``end``; the thread clears any
  still-pending one before leaving, so it never fires in unrelated code.
"""

from __future__ import annotations

import queue
import threading
import time
import weakref
from concurrent.futures import Future
from concurrent.futures._base import LOGGER
from typing import Any, Callable, Optional, Protocol

from ._async_exc import Abandoned, set_async_exception
from ._exit_hooks import interpreter_exiting, on_exit_and_fork
from ._outcomes import task_outcome
from ._passing import Passing
from ._task_text import timeout_error
from ._worker_stats import SlotCounters
from .stateful import (
    WorkerContext,
    WorkerLike,
    build_worker,
    close_worker,
    current_worker,
    set_thread_context,
)

__all__ = ["ThreadHost", "Watchdog", "WorkItem", "live_threads", "serve"]

# Live pool threads -> their work queue, for the interpreter-exit hook.  Abandoned (stuck)
# threads are removed, so exit never waits for a task that timed out.
live_threads: weakref.WeakKeyDictionary[threading.Thread, queue.SimpleQueue[Any]] = (
    weakref.WeakKeyDictionary()
)


def _join_live_threads() -> None:
    # Like the stdlib: wake every live thread, then wait for it to finish its queued work.
    items = list(live_threads.items())
    for _, work_queue in items:
        work_queue.put(None)
    for thread, _ in items:
        thread.join()


# A forked child (e.g. a process-pool worker) inherits none of our threads.
on_exit_and_fork(_join_live_threads, live_threads.clear)


class ThreadHost(Protocol):
    """What pool threads and the watchdog need of their executor (the stateful thread pool)."""

    _shutdown: bool
    _idle_semaphore: threading.Semaphore
    _watchdog: Optional[Watchdog]

    def _worker_init_failed(
        self, index: int, spec: Optional[WorkerLike], exc: BaseException
    ) -> None: ...

    def _replace_abandoned(self, index: int, stuck: threading.Thread) -> None: ...


class WorkItem:
    """One ``submit`` call waiting in the pool's queue (``timeout``: its limit, or ``None``)."""

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


class Watchdog:
    """Fails timed-out tasks and replaces their threads (see the module docstring)."""

    def __init__(self, executor: ThreadHost, name: str):
        # A collected executor stops its watchdog (which then exits once its tasks end).
        self._executor_ref = weakref.ref(executor, lambda _: self.stop())
        self._cond = threading.Condition()
        # worker index -> (thread, item, deadline) of each running timed task
        self._running: dict[int, tuple[threading.Thread, WorkItem, float]] = {}
        self._name = name
        self._stopped = False
        self._active = False  # a watchdog thread is running (it exits once idle and stopped)

    def begin(self, index: int, item: WorkItem) -> None:
        assert item.timeout is not None
        with self._cond:
            deadline = time.monotonic() + item.timeout
            self._running[index] = (threading.current_thread(), item, deadline)
            if not self._active:
                self._active = True
                threading.Thread(target=self._run, name=self._name, daemon=True).start()
            self._cond.notify()

    def end(self, index: int, item: WorkItem) -> bool:
        """Unregister; ``False`` when the watchdog already took the task away."""
        try:
            with self._cond:
                entry = self._running.get(index)
                if entry is None or entry[1] is not item:
                    return False
                del self._running[index]
                return True
        except Abandoned:
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
                    live_threads.pop(thread, None)
                    set_async_exception(thread.ident, Abandoned)
            # Outside the lock: done-callbacks and thread starts may take other locks.
            for index, (thread, item, _) in expired:
                executor = self._executor_ref()
                if executor is not None:
                    executor._replace_abandoned(index, thread)
                del executor
                item.future.set_exception(
                    timeout_error(
                        item.fn,
                        (item.args, item.kwargs),
                        Passing.CALL,
                        item.timeout or 0.0,  # always set: only timed items are watched
                        index,
                        f"thread {thread.name}",
                        "the worker thread was replaced",
                    )
                )
            del expired


def _run_item(
    item: WorkItem, index: int, watchdog: Optional[Watchdog], counters: SlotCounters
) -> bool:
    """Run one work item; ``False`` if this thread was abandoned and must exit."""
    future = item.future
    if not future.set_running_or_notify_cancel():
        return True
    start = time.perf_counter()
    if item.timeout is None or watchdog is None:
        try:
            result = item.fn(*item.args, **item.kwargs)
        except BaseException as exc:
            counters.add_one(True, time.perf_counter() - start)
            future.set_exception(task_outcome(exc))  # its KeyboardInterrupt is no Ctrl-C
        else:
            counters.add_outcome(result, False, time.perf_counter() - start)
            future.set_result(result)
        return True
    try:
        watchdog.begin(index, item)
        try:
            result, error = item.fn(*item.args, **item.kwargs), None
        except Abandoned:
            raise
        except BaseException as exc:
            result, error = None, exc
        owned = watchdog.end(index, item)
    except Abandoned:
        owned = False
    if not owned:  # timed out: the watchdog counted it and failed the future
        try:
            set_async_exception(threading.get_ident(), None)
        except Abandoned:
            pass
        return False
    counters.add_outcome(result, error is not None, time.perf_counter() - start)
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(task_outcome(error))
    return True


def serve(
    executor_ref: weakref.ref[ThreadHost],
    index: int,
    work_queue: queue.SimpleQueue[Optional[WorkItem]],
    initializer: Optional[Callable[..., object]],
    initargs: tuple[Any, ...],
    spec: Optional[WorkerLike],
    ready: threading.Event,
    counters: SlotCounters,
) -> None:
    """The body of pool thread ``index`` (see the module docstring); it counts what it runs
    in ``counters`` (``worker_stats()``)."""
    set_thread_context(WorkerContext(index, None))
    initialised = _initialise(executor_ref, index, initializer, initargs, spec)
    ready.set()
    if not initialised:
        return
    try:
        _serve_queue(executor_ref, index, work_queue, counters)
    except Abandoned:
        pass
    except BaseException:
        LOGGER.critical("Exception in worker", exc_info=True)
    finally:
        set_thread_context(None)


def _initialise(
    executor_ref: weakref.ref[ThreadHost],
    index: int,
    initializer: Optional[Callable[..., object]],
    initargs: tuple[Any, ...],
    spec: Optional[WorkerLike],
) -> bool:
    """Run the initializer, build the worker's object; ``False`` (pool told) if either fails."""
    if initializer is not None:
        try:
            initializer(*initargs)
        except BaseException as exc:
            LOGGER.critical("Exception in initializer:", exc_info=True)
            executor = executor_ref()
            if executor is not None:
                executor._worker_init_failed(index, None, exc)
            return False
    if spec is not None:
        try:
            set_thread_context(WorkerContext(index, build_worker(spec)))
        except BaseException as exc:
            executor = executor_ref()
            if executor is not None:
                executor._worker_init_failed(index, spec, exc)
            return False
    return True


def _serve_queue(
    executor_ref: weakref.ref[ThreadHost],
    index: int,
    work_queue: queue.SimpleQueue[Optional[WorkItem]],
    counters: SlotCounters,
) -> None:
    # No local keeps the executor alive while waiting: a collected executor wakes us up.
    while True:
        item = work_queue.get(block=True)
        if item is not None:
            watchdog = None
            if item.timeout is not None:
                executor = executor_ref()
                watchdog = None if executor is None else executor._watchdog
                del executor
            if not _run_item(item, index, watchdog, counters):
                return  # abandoned: a replacement thread serves this index now
            del item, watchdog
            executor = executor_ref()
            if executor is not None:
                executor._idle_semaphore.release()
            del executor
            continue
        executor = executor_ref()
        if interpreter_exiting() or executor is None or executor._shutdown:
            if executor is not None:
                executor._shutdown = True
            work_queue.put(None)  # tell the next thread
            close_worker(current_worker())  # a graceful exit: close this thread's object
            return
        del executor
