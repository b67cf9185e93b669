"""The Dask worker side of :class:`~mtasklite.dask.StatefulDaskExecutor`: what each task runs.

Guarantee: on each Dask worker process, a spec's object is built on the first task that needs
it and reused by later ones (keyed by executor token, spec index and worker address), and
calls to one ``@delayed_init`` object never overlap; a build failure fails every later call
with :class:`~mtasklite.WorkerInitError`.  With a time limit the call runs in a helper thread:
at the limit the task fails with :class:`~mtasklite.TaskTimeoutError`, the helper is sent an
asynchronous exception and the object is rebuilt for the next call.
"""

from __future__ import annotations

import collections
import contextvars
import functools
import os
import re
import threading
import time
from typing import Any, Callable, NamedTuple, Optional, Sequence

import distributed

from ._async_exc import Abandoned, set_async_exception
from ._chunk_run import ChunkResult, run_chunk
from ._passing import Passing
from ._procpool.memory import resident_bytes
from ._task_text import timeout_error
from ._worker_stats import SlotCounters
from .errors import TaskTimeoutError, WorkerInitError
from .stateful import (
    DelayedInit,
    WorkerContext,
    WorkerHandle,
    WorkerLike,
    build_worker,
    close_worker,
    describe_worker,
    set_thread_context,
)

__all__ = ["Job", "call_label", "forget", "instances", "run_chunk_task", "run_task", "stats_for"]


class Job(NamedTuple):
    """What every task carries besides the user's call."""

    token: str
    slot: Optional[int]  # the spec's index when pinned, else None
    spec: Optional[WorkerLike]
    timeout: Optional[float]


class _Instance:
    """An object built from a spec on one Dask worker; ``lock`` serialises calls to it."""

    __slots__ = ("built", "error", "lock", "value")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.built = False
        self.value: Any = None
        self.error: Optional[str] = None  # why building failed (every later call fails too)


_InstanceKey = tuple[str, Optional[int], str]
instances: dict[_InstanceKey, _Instance] = {}
_instances_lock = threading.Lock()


_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9_.]")


def _locate(job: Job) -> tuple[Optional[int], str]:
    """``(worker_index(), worker address)`` for a task of ``job`` on this Dask worker."""
    try:
        worker = distributed.get_worker()
    except ValueError:  # not on a Dask worker (e.g. called directly in a test)
        return job.slot, ""
    if job.slot is not None:
        return job.slot, str(worker.address)
    # Replicated: Dask has no worker numbering; LocalCluster and other SpecCluster
    # deployments name workers 0..n-1 and a restarted worker keeps its name.
    name = worker.name
    index = name if isinstance(name, int) and not isinstance(name, bool) else None
    return index, str(worker.address)


def _acquire(key: _InstanceKey, spec: DelayedInit[Any], index: Optional[int]) -> _Instance:
    """The built instance for ``key``, its lock held by the caller; builds it on first use."""
    while True:
        with _instances_lock:
            entry = instances.get(key)
            if entry is None:
                entry = instances[key] = _Instance()
        entry.lock.acquire()
        with _instances_lock:
            current = instances.get(key) is entry
        if current:
            break
        entry.lock.release()  # retired by a timeout (or forgotten) while we waited: retry
    if not entry.built:
        try:
            entry.value = build_worker(spec)
        except BaseException as exc:
            entry.error = (
                f"building worker {index} ({describe_worker(spec)}) on Dask worker "
                f"{key[2] or '?'} failed: {exc!r}; the executor is not usable anymore"
            )
        entry.built = True
    if entry.error is not None:
        entry.lock.release()
        raise WorkerInitError(entry.error)
    return entry


def _retire(key: _InstanceKey, entry: _Instance) -> None:
    """Make the next call on ``key`` build a fresh instance (the old one is abandoned)."""
    with _instances_lock:
        if instances.get(key) is entry:
            del instances[key]


#: per Dask worker thread: the contexts of the executors it served lately, kept between
#: tasks so that a spec called as the function is built once per thread (Dask runs one task
#: per thread at a time, so its calls never overlap); a bounded number, least recent dropped
_thread_contexts = threading.local()
CONTEXTS_KEPT_PER_THREAD = 8


def _context_for(key: _InstanceKey, index: Optional[int], instance: Any) -> WorkerContext:
    """This thread's context for ``key``, made on first use and kept."""
    contexts: Optional[collections.OrderedDict[_InstanceKey, WorkerContext]]
    contexts = getattr(_thread_contexts, "by_key", None)
    if contexts is None:
        contexts = _thread_contexts.by_key = collections.OrderedDict()
    ctx = contexts.get(key)
    if ctx is None:
        # Replicated workers without an integer name have no index (the context types int).
        ctx = contexts[key] = WorkerContext(index, instance)  # type: ignore[arg-type]
        if len(contexts) > CONTEXTS_KEPT_PER_THREAD:
            contexts.popitem(last=False)
    else:
        ctx.index, ctx.instance = index, instance
        contexts.move_to_end(key)
    return ctx


def _drop_context(key: _InstanceKey) -> None:
    """Forget this thread's context for ``key``: an abandoned call may still use its objects."""
    contexts = getattr(_thread_contexts, "by_key", None)
    if contexts is not None:
        contexts.pop(key, None)


def forget(token: str) -> int:
    """Drop every instance an executor built in this process (run on each worker at
    shutdown), closing each (``close_worker``) once; its ``worker_stats()`` counts too."""
    with _counters_lock:
        for key in [key for key in _counters if key[0] == token]:
            del _counters[key]
    with _instances_lock:
        keys = [key for key in instances if key[0] == token]
        dropped = [instances.pop(key) for key in keys]
    for entry in dropped:
        if entry.built and entry.error is None:
            close_worker(entry.value)
    return len(keys)


class _TimedCall:
    """One call run in a helper thread so the Dask task can give up on it at a deadline."""

    def __init__(self, ctx: WorkerContext, call: Callable[[], Any]):
        self._ctx = ctx
        self._call = call
        self._lock = threading.Lock()
        self.finished = threading.Event()
        self._abandoned = False
        self.value: Any = None
        self.error: Optional[BaseException] = None

    def run(self) -> None:
        try:
            set_thread_context(self._ctx)
            try:
                value, error = self._call(), None
            except Abandoned:
                raise
            except BaseException as exc:
                value, error = None, exc
            with self._lock:
                self.value, self.error = value, error
                self.finished.set()
                abandoned = self._abandoned
            if abandoned:  # lost the race: clear the exception abandon() left pending
                set_async_exception(threading.get_ident(), None)
        except Abandoned:
            pass

    def abandon(self, thread: threading.Thread) -> bool:
        """Give up on the call; ``False`` if it finished first (its outcome then stands)."""
        with self._lock:
            if self.finished.is_set():
                return False
            self._abandoned = True
            set_async_exception(thread.ident, Abandoned)
            return True


def call_label(fn: Callable[..., Any]) -> str:
    """A short name for ``fn``: messages and Dask task keys (the dashboard groups by it)."""
    if isinstance(fn, WorkerHandle):
        return "worker"
    name = getattr(fn, "__qualname__", None) or type(fn).__name__
    return _UNSAFE_KEY_CHARS.sub("_", str(name))


def _execute(
    job: Job, call: Callable[[], Any], fn: Callable[..., Any], item: Any, passing: int
) -> Any:
    """Run ``call`` (``fn`` with ``item`` passed as ``passing`` says) with the worker context
    of ``job`` set, honouring its time limit."""
    index, address = _locate(job)
    key: _InstanceKey = (job.token, job.slot, address)
    entry: Optional[_Instance] = None
    instance: Any = None
    if isinstance(job.spec, DelayedInit):
        entry = _acquire(key, job.spec, index)
        instance = entry.value
    elif job.spec is not None:
        instance = job.spec  # a plain callable is its own (stateless) worker object
    ctx = _context_for(key, index, instance)
    try:
        if job.timeout is None:
            set_thread_context(ctx)
            try:
                return call()
            finally:
                set_thread_context(None)
        timed = _TimedCall(ctx, call)
        # Copy the context so distributed.get_worker() also works inside the helper thread.
        runner = threading.Thread(
            target=contextvars.copy_context().run,
            args=(timed.run,),
            name="mtasklite-dask-timed",
            daemon=True,
        )
        runner.start()
        if not timed.finished.wait(job.timeout) and timed.abandon(runner):
            _drop_context(key)
            if entry is not None:
                _retire(key, entry)
            rebuilt = " and the worker object will be rebuilt" if entry is not None else ""
            raise timeout_error(
                fn, item, passing, job.timeout, index, f"Dask worker {address or '?'}",
                f"the call was abandoned{rebuilt}",
            )  # fmt: skip
        if timed.error is not None:
            raise timed.error
        return timed.value
    finally:
        if entry is not None:
            entry.lock.release()


def run_task(
    job: Job, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """The Dask task behind ``submit``: ``fn(*args, **kwargs)`` in the worker context."""
    call = functools.partial(fn, *args, **kwargs)
    return _counted(job, lambda: _execute(job, call, fn, (args, kwargs), Passing.CALL))


def run_chunk_task(
    job: Job, fn: Callable[..., Any], items: Sequence[Any], passing: int
) -> ChunkResult:
    """The Dask task behind one ``imap`` chunk (never timed: timed imap sends single items)."""
    call = functools.partial(run_chunk, fn, items, passing)
    result: ChunkResult = _counted(job, lambda: _execute(job, call, fn, items, Passing.SINGLE))
    return result


# --- worker_stats(): counted here, in the Dask worker's process, fetched on demand ----------

#: (executor token, worker address) -> what this worker ran for that executor
_counters: dict[tuple[str, str], SlotCounters] = {}
#: Dask runs several tasks at once in one worker process: updates take this lock
_counters_lock = threading.Lock()


def _counted(job: Job, run: Callable[[], Any]) -> Any:
    """``run()``, counted for ``worker_stats()`` (no message: the counts stay here)."""
    start = time.perf_counter()
    try:
        result = run()
    except TaskTimeoutError:
        with _counters_lock:
            _counters_of(job).timeouts += 1
        raise
    except BaseException:
        with _counters_lock:
            _counters_of(job).add_one(True, time.perf_counter() - start)
        raise
    with _counters_lock:
        _counters_of(job).add_outcome(result, False, time.perf_counter() - start)
    return result


def _counters_of(job: Job) -> SlotCounters:
    key = (job.token, _locate(job)[1])
    counters = _counters.get(key)
    if counters is None:
        counters = _counters[key] = SlotCounters()
    return counters


def stats_for(token: str, dask_worker: Any = None) -> tuple[int, int, int, int, float, int]:
    """Run on every Dask worker by ``worker_stats()`` (``client.run`` passes ``dask_worker``):
    (pid, items completed, failed, timed out, busy seconds, resident bytes or 0)."""
    address = "" if dask_worker is None else str(dask_worker.address)
    with _counters_lock:
        c = _counters.get((token, address)) or SlotCounters()
        counts = (c.tasks_completed, c.failures, c.timeouts, c.busy_seconds)
    return (os.getpid(), *counts, resident_bytes())
