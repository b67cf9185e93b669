"""StatefulProcessPoolExecutor: a process pool built on owned worker slots.

This module is the public face: argument checks, ``submit`` and its refusals, ``wait_ready``,
``shutdown`` and ``terminate``.  The machinery (worker slots, the dispatcher thread, crash
and timeout verdicts) lives in :mod:`mtasklite._procpool`, whose docstring draws the data
flow.  The stdlib's private attributes that its test suite and tools touch are kept:
``_processes``, ``_shutdown_lock``, ``_shutdown_thread``, ``_broken``,
``_executor_manager_thread``, ``_call_queue.join_thread()``, ``_idle_worker_semaphore``,
``_max_workers`` and ``_mp_context``.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import signal
import threading
import time
import weakref
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Callable, Optional, Sequence, TypeVar, Union

from . import _shm
from ._cpu import usable_cpu_count
from ._force_stop import KILL, TERMINATE, ForceStopMixin
from ._futures import TaskFuture, cancel_dropped
from ._lifecycle import WAIT_AFTER_SHUTDOWN_MESSAGE, ExecutorLifecycle
from ._procpool import groups, wire
from ._procpool.control import PoolControl
from ._procpool.dispatcher import Dispatcher
from ._procpool.jobs import Job, Piece, StoppableFuture, copy_error
from ._procpool.slots import DEFAULT_STOP_GRACE, PoolConfig
from ._worker_stats import WorkerStats
from .executor_api import StatefulExecutorMixin, check_timeout
from .stateful import SentByValue, WorkerLike, describe_worker, resolve_workers
from .windowing import ChunkResult

__all__ = ["StatefulProcessExecutor", "StatefulProcessPoolExecutor"]

T = TypeVar("T")


class _Channels:
    """``_call_queue`` of the stdlib pool, kept for code that joins it: here the channels are
    the per-slot pipes, closed when the dispatcher exits."""

    def __init__(self, control: PoolControl):
        self._control = weakref.ref(control)

    def join_thread(self) -> None:
        control = self._control()
        if control is not None and control.thread is not None:
            control.thread.join()


class StatefulProcessPoolExecutor(
    StatefulExecutorMixin, ExecutorLifecycle, ForceStopMixin, ProcessPoolExecutor
):
    """``ProcessPoolExecutor`` on owned worker slots: stateful workers, crash isolation,
    per-task timeouts and lazy, adaptively chunked ``imap``.

    ``worker``: a ``@delayed_init`` spec or function (each worker process builds its own
    instance), or a list of them, one per worker.  ``max_workers`` defaults to the number of
    CPUs (``os.cpu_count()``), or to the length of a ``worker`` list.  ``mp_context``
    defaults to ``multiprocessing.get_context()``, the platform's default start method
    (``spawn`` when ``max_tasks_per_child`` is set); with ``spawn`` / ``forkserver`` specs
    and tasks are pickled, lambdas and closures by value when ``cloudpickle`` is installed.
    ``task_timeout``: default limit in seconds
    for every task.  ``on_worker_crash``: ``"isolate"`` (default) fails only the task whose
    worker died and respawns it; ``"break"`` breaks the whole pool as the stdlib does.
    ``cancel_running=True``: ``Future.cancel()`` (and cancelling an asyncio task awaiting
    ``run_in_executor``) also stops a running task, as a timeout does; the stdlib never stops
    running work.  ``shm_threshold``: arguments and results whose out-of-band pickle buffers
    (numpy arrays, ``pickle.PickleBuffer``) add up to this many bytes or more (default 1 MiB)
    travel through per-worker shared memory instead of the pipe; ``None`` or ``0``: never.
    ``stop_grace``: seconds a worker being stopped (a timeout, a cancel,
    ``terminate()``) gets to unwind before SIGKILL: the running task sees
    :class:`~mtasklite.WorkerStopping` raised inside it, so its ``finally`` blocks and ``with``
    exits run.  The default, 1 s, covers what cleanup usually does (delete a file, release a
    lock, close a connection) while a stuck task still delays only its replacement, and
    ``terminate()``, by a second; the future fails at the limit whatever the grace.
    ``max_memory_per_child``: bytes of resident memory above which a worker, after a task or
    chunk, retires gracefully and is replaced with the same spec (nothing fails; prefetching
    chunks is off, as with ``max_tasks_per_child``).
    """

    _default_chunksize = None
    _chunks_take_timeouts = True

    def __init__(
        self,
        max_workers: Optional[int] = None,
        mp_context: Optional[multiprocessing.context.BaseContext] = None,
        initializer: Optional[Callable[..., object]] = None,
        initargs: tuple[Any, ...] = (),
        *,
        max_tasks_per_child: Optional[int] = None,
        worker: Union[WorkerLike, Sequence[WorkerLike], None] = None,
        task_timeout: Optional[float] = None,
        on_worker_crash: str = "isolate",
        cancel_running: bool = False,
        shm_threshold: Optional[int] = _shm.DEFAULT_THRESHOLD,
        stop_grace: float = DEFAULT_STOP_GRACE,
        max_memory_per_child: Optional[int] = None,
    ):
        # The stdlib __init__ is deliberately not called: it builds queues we do not use.
        specs, max_workers = resolve_workers(worker, max_workers)
        max_workers = _checked_basics(max_workers, initializer, on_worker_crash)
        mp_context = _checked_context(mp_context, max_tasks_per_child)
        if specs is not None and mp_context.get_start_method(allow_none=False) != "fork":
            specs = _portable_specs(specs, mp_context.get_start_method(allow_none=False))
        self._max_workers = max_workers
        self._mp_context = mp_context
        self._initializer = initializer  # type: ignore[assignment]
        self._initargs = initargs
        self._max_tasks_per_child = max_tasks_per_child
        self._worker_specs = specs
        self._task_timeout = check_timeout("task_timeout", task_timeout)
        self._cancel_running = bool(cancel_running)
        self._shutdown_thread = False
        self._broken: Union[bool, str] = False  # type: ignore[assignment]  # str, as stdlib
        self._executor_manager_thread: Optional[threading.Thread] = None  # type: ignore[assignment]
        config = PoolConfig(
            ctx=mp_context,
            name=f"{type(self).__name__}-{id(self):x}",
            workers=max_workers,
            specs=specs,
            initializer=initializer,
            initargs=initargs,
            max_tasks=max_tasks_per_child,
            break_on_crash=on_worker_crash == "break",
            cancel_running=self._cancel_running,
            shm_threshold=_shm.check_threshold(shm_threshold),
            stop_grace=_checked_grace(stop_grace),
            max_memory=_checked_memory(max_memory_per_child),
        )
        self._control = PoolControl(self, _broken_reporter(self))
        self._dispatcher = Dispatcher(config, self._control)
        # The stdlib's names for the state the dispatcher shares with us.
        self._shutdown_lock = self._control.lock
        self._processes = self._dispatcher.slots.processes  # pid -> process
        self._idle_worker_semaphore = self._control.idle_workers
        self._call_queue = _Channels(self._control)

    # -- submission ---------------------------------------------------------------------------

    def _submit_timed(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: Optional[float],
    ) -> Future[Any]:
        return self._enqueue(fn, [(args, kwargs)], wire.CALL, timeout, True)

    def _submit_call(
        self, fn: Callable[..., Any], args: tuple[Any, ...], timeout: Optional[float]
    ) -> Future[Any]:
        return self._enqueue(fn, [args], wire.STAR, timeout, True)

    def _submit_chunk(
        self, fn: Callable[..., Any], items: Sequence[Any], passing: int, timeout: Optional[float]
    ) -> Future[ChunkResult]:
        return self._enqueue(fn, items, int(passing), timeout, False)  # the wire takes ints

    def _enqueue(
        self,
        fn: Callable[..., Any],
        items: Sequence[Any],
        mode: int,
        timeout: Optional[float],
        is_call: bool,
    ) -> Future[Any]:
        control = self._control
        with self._shutdown_lock:
            self._check_accepting()
            # Workers first: if none can start (the initializer or its arguments cannot be
            # sent to a spawned process, say), the caller gets the error and nothing is queued.
            if self._executor_manager_thread is None:
                self._executor_manager_thread = self._dispatcher.launch()
            else:
                self._dispatcher.grow()
            future: Future[Any] = (
                StoppableFuture(control.request_stop) if self._cancel_running else TaskFuture()
            )
            piece = Piece(Job(future, fn, items, mode, timeout, is_call), 0, len(items))
            if not is_call:
                control.backlog.add(piece)
                control.wakeup()
                return future
        # Outside the lock: pickling runs user code, which may call back into the pool.
        if self._dispatcher.hand_off(piece):
            return future
        with self._shutdown_lock:
            self._check_accepting()  # a shutdown since the check above: nothing was sent
            control.backlog.add(piece)
            control.wakeup()
        return future

    # -- the life-cycle's state (see _lifecycle.ExecutorLifecycle) ------------------------------

    def _is_broken(self) -> bool:
        return self._control.broken is not None

    def _is_shut_down(self) -> bool:
        return self._shutdown_thread

    def _broken_error(self) -> BaseException:
        broken = self._control.broken
        assert broken is not None
        return copy_error(broken)  # a fresh one: it is raised in many threads

    def _on_interrupt(self) -> None:
        # Ctrl-C during imap/map: one is enough, so stop the workers instead of letting them
        # finish chunks nobody will read (windowing cancels the queued tasks first).
        self.terminate(wait=False)

    # -- readiness and shutdown ---------------------------------------------------------------

    def wait_ready(self, timeout: Optional[float] = None) -> None:
        """Start every worker and wait until each has run its initializer and built its object.

        Raises the pool's :class:`~mtasklite.WorkerInitError` if a worker failed to
        initialise, ``TimeoutError`` if they are not all ready within ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        control, slots = self._control, self._dispatcher.slots
        with self._shutdown_lock:
            self._check_accepting(WAIT_AFTER_SHUTDOWN_MESSAGE)
            if self._executor_manager_thread is None:
                self._executor_manager_thread = self._dispatcher.launch()
            self._dispatcher.start_all()
        with control.ready_changed:
            while not slots.all_ready():
                if control.broken is not None:
                    raise copy_error(control.broken)
                if control.closed:
                    raise RuntimeError("the pool shut down before all its workers were ready")
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise concurrent.futures.TimeoutError(f"workers not ready within {timeout} s")
                control.ready_changed.wait(remaining)

    def worker_stats(self) -> list[WorkerStats]:
        """One :class:`~mtasklite.WorkerStats` per worker slot: its index and current pid,
        items completed, failed, timed out, crashes, restarts, seconds spent in tasks and
        resident memory (``None`` where unknown).  Counting costs no message: the pool counts
        what it already receives."""
        return self._dispatcher.slots.stats()

    def terminate(self, wait: bool = True) -> None:
        """Stop now: cancel queued tasks, fail running ones, stop every worker process.

        Running tasks' futures fail with ``BrokenProcessPool``; workers get SIGTERM (the
        running task sees :class:`~mtasklite.WorkerStopping`), then SIGKILL after
        ``stop_grace``.  The executor is shut down afterwards.
        """
        self._stop_workers(TERMINATE, wait)

    def _stop_workers(self, operation: str, wait: bool) -> None:
        """Abort all work and signal every worker (``operation``: the ``Process`` method that
        sends the signal); the dispatcher takes the deaths for the stop, not for crashes."""
        control = self._control
        with self._shutdown_lock:
            self._shutdown_thread = True
            control.shutting_down = True
            signum = signal.SIGKILL if operation == KILL else signal.SIGTERM
            control.stop_signal = signum  # before the flag: the dispatcher sends the same
            control.terminate_requested = True
            control.wakeup()
            # Signal now, from this thread: no worker may start another item while the
            # dispatcher wakes up (it escalates to SIGKILL and reaps them).
            for process in list(self._processes.values()):
                groups.signal_worker(process, signum)  # the processes its task started too
        self._join_dispatcher(wait)

    def _stop_now(self) -> None:
        self.terminate()  # do not make the user wait for work nobody will collect

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        control = self._control
        dropped: list[Future[Any]] = []
        with self._shutdown_lock:
            self._shutdown_thread = True
            control.shutting_down = True
            if cancel_futures:
                # Like the stdlib, whose call queue already holds (and runs) a few items
                # beyond the running ones: the next ``max_workers`` queued tasks still run.
                dropped = control.backlog.cancel_unstarted(grace=self._max_workers)
            control.wakeup()
        # Cancelled after the lock is released: cancelling runs done-callbacks, which may
        # submit, shut down, terminate or cancel (the lock is not reentrant).
        for future in dropped:
            cancel_dropped(future)
        self._join_dispatcher(wait)

    shutdown.__doc__ = ProcessPoolExecutor.shutdown.__doc__

    def _join_dispatcher(self, wait: bool) -> None:
        thread = self._executor_manager_thread
        if wait and thread is not None and thread is not threading.current_thread():
            thread.join()


StatefulProcessExecutor = StatefulProcessPoolExecutor


def _checked_context(
    mp_context: Optional[multiprocessing.context.BaseContext], max_tasks_per_child: Optional[int]
) -> multiprocessing.context.BaseContext:
    """The multiprocessing context to use, checked against ``max_tasks_per_child``."""
    if mp_context is None:
        if max_tasks_per_child is not None:
            mp_context = multiprocessing.get_context("spawn")
        else:
            mp_context = multiprocessing.get_context()
    if max_tasks_per_child is not None:
        if not isinstance(max_tasks_per_child, int):
            raise TypeError("max_tasks_per_child must be an integer")
        if max_tasks_per_child <= 0:
            raise ValueError("max_tasks_per_child must be >= 1")
        if mp_context.get_start_method(allow_none=False) == "fork":
            raise ValueError(
                "max_tasks_per_child is incompatible with the 'fork' multiprocessing start "
                "method; supply a different mp_context."
            )
    return mp_context


def _checked_basics(
    max_workers: Optional[int], initializer: Optional[Callable[..., object]], on_crash: str
) -> int:
    """The worker count (the usable CPUs by default), once the stdlib's checks and ours on
    ``initializer`` and ``on_worker_crash`` passed."""
    if max_workers is None:
        max_workers = usable_cpu_count()
    elif max_workers <= 0:
        raise ValueError("max_workers must be greater than 0")
    if initializer is not None and not callable(initializer):
        raise TypeError("initializer must be a callable")
    if on_crash not in ("isolate", "break"):
        raise ValueError(f"on_worker_crash must be 'isolate' or 'break', got {on_crash!r}")
    return max_workers


def _checked_memory(max_memory_per_child: Optional[int]) -> Optional[int]:
    """``max_memory_per_child``: ``None`` or a positive number of bytes."""
    if max_memory_per_child is None:
        return None
    if isinstance(max_memory_per_child, bool) or not isinstance(max_memory_per_child, int):
        raise TypeError(
            f"max_memory_per_child must be an integer number of bytes or None, got "
            f"{max_memory_per_child!r}"
        )
    if max_memory_per_child <= 0:
        raise ValueError(f"max_memory_per_child must be > 0 bytes, got {max_memory_per_child}")
    return max_memory_per_child


def _checked_grace(stop_grace: float) -> float:
    """``stop_grace`` as a float, refused unless it is a finite number of seconds >= 0."""
    if isinstance(stop_grace, bool) or not isinstance(stop_grace, (int, float)):
        raise TypeError(f"stop_grace must be a number of seconds, got {stop_grace!r}")
    if not 0 <= stop_grace < float("inf"):
        raise ValueError(f"stop_grace must be a finite number of seconds >= 0, got {stop_grace!r}")
    return float(stop_grace)


_CLOUDPICKLE_HINT = (
    "; lambdas, closures and classes defined in a function need cloudpickle: "
    "pip install 'mtasklite[cloudpickle]'"
)


def _portable_specs(specs: Sequence[WorkerLike], method: str) -> list[WorkerLike]:
    """``specs`` made sendable to spawned workers: what plain pickle cannot send goes by value
    with cloudpickle, as task functions do; fail fast, naming the worker, if neither can."""
    portable: list[WorkerLike] = []
    for index, spec in enumerate(specs):
        try:
            wire.dumps(spec)
        except RuntimeError:
            pass  # multiprocessing objects that pickle only while spawning (an Event): fine
        except Exception as exc:
            try:
                data = wire.cloud_dumps(spec)
            except Exception:
                data = None
            if data is None:
                hint = "" if wire.has_cloudpickle() else _CLOUDPICKLE_HINT
                raise TypeError(
                    f"worker {index} ({describe_worker(spec)}) cannot be pickled to start a "
                    f"{method!r} worker process: {exc}{hint}"
                ) from exc
            portable.append(SentByValue(spec, data))
            continue
        portable.append(spec)
    return portable


def _broken_reporter(executor: StatefulProcessPoolExecutor) -> Callable[[BaseException], None]:
    """How the dispatcher tells the executor it broke (``_broken``, as the stdlib keeps it)
    without keeping the executor alive."""
    executor_ref = weakref.ref(executor)

    def report(error: BaseException) -> None:
        executor = executor_ref()
        if executor is not None:
            executor._broken = str(error)

    return report
