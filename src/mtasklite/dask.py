"""StatefulDaskExecutor: mtasklite's executor API on a Dask cluster (``mtasklite[dask]``).

``StatefulDaskExecutor(client, worker=..., task_timeout=...)`` is a
``concurrent.futures.Executor`` whose tasks run on the workers of a
``distributed.Client``.  It shares ``imap``/``imap_unordered``/``map`` with the other mtasklite
executors (:class:`~mtasklite.executor_api.StatefulExecutorMixin` over the windowing engine), so
input is pulled lazily with a bounded window; ``Client.map`` instead needs a sized input and
submits every task up front.

Where the state lives.  Every task is a call to ``run_task`` (or ``run_chunk_task``) of
:mod:`~mtasklite._dask_worker` on a Dask worker, carrying a small ``Job``: the executor's random
token, the spec and, when pinned, the spec's index.  The worker process keeps the objects built
from specs in that module's ``instances`` dict, keyed by ``(token, spec index, worker
address)``, so each Dask worker builds its object on the first task that needs it and reuses it
afterwards.  A replacement worker (a new process) starts with an empty dict and builds again
from the same spec.  Calls to a ``@delayed_init`` object are serialised by a lock, so it is
never used by two tasks at once even on a multi-threaded Dask worker.  Shutdown clears the dict
on every worker.

Routing.  One spec (or none) is *replicated*: tasks go wherever Dask schedules them, and Dask
itself reruns the tasks of a worker that dies.  A *list* of specs pins spec ``i`` to one Dask
worker (the workers sorted by name, so LocalCluster worker ``i`` gets spec ``i``); its tasks
carry ``workers=[address], allow_other_workers=False`` and each call goes to the spec with the
fewest calls in flight.  Dask never retargets such restrictions: a task pinned to a dead
worker waits forever.  So a service thread checks the pinned addresses about once a second
while calls are in flight (:mod:`~mtasklite._dask_service`); when one is gone it moves the
spec as :func:`reassign_slots` decides and resubmits that spec's unfinished calls there.

Futures.  Every call returns a plain ``concurrent.futures.Future``.  A done-callback on the
Dask future (run in Dask's callback thread) fetches the outcome and settles it.  Races, all
decided under the executor's lock by the ``_Call`` record:

- a rerouted call gets a new Dask future; the callback of the old one finds it is no longer the
  call's current future and does nothing;
- a user ``cancel()`` settles the call first, so a result arriving later is dropped, and the
  Dask future is cancelled; a result settled first makes the ``cancel()`` a no-op on Dask's
  side and its late ``set_result`` is ignored.  Until the result arrives the future stays
  *pending* (the client cannot see when a Dask task starts), so ``cancel()`` succeeds even
  while the task runs; Dask then lets the task finish and drops its result;
- Dask cancellations are batched by the service thread (one scheduler round trip per batch),
  because closing an ``imap`` cancels its whole window future by future.

Task timeouts.  A Dask task cannot be stopped from outside short of restarting its worker.
With ``task_timeout`` the call runs in a helper thread on the worker while the Dask task waits
for it; at the limit (counted from when the call starts on the worker, not from submission)
the task fails with :class:`~mtasklite.TaskTimeoutError`, frees its Dask slot, and the
helper thread is sent an asynchronous exception, which stops pure-Python code but not code
blocked in C.  The spec's object is then rebuilt for the next call, as a thread pool replaces
the thread (the abandoned call may still be using the old one).
"""

from __future__ import annotations

import concurrent.futures
import functools
import threading
import time
import uuid
from concurrent.futures import Future
from typing import Any, Callable, Optional, Sequence, Union

try:
    import distributed  # noqa: F401  # the import error below names the extra to install
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "mtasklite.dask needs the 'distributed' package: pip install 'mtasklite[dask]'"
    ) from exc

from ._chunk_run import ChunkResult
from ._dask_service import HEALTH_INTERVAL, Service
from ._dask_worker import Job, call_label, instances, run_chunk_task, run_task, stats_for
from ._futures import TaskFuture
from ._lifecycle import ExecutorLifecycle
from ._validate import check_timeout
from ._worker_stats import WorkerStats
from .errors import WorkerInitError
from .executor_api import StatefulExecutorMixin
from .stateful import DelayedInit, WorkerLike, resolve_workers

__all__ = ["HEALTH_INTERVAL", "REPLACEMENT_GRACE", "StatefulDaskExecutor"]

#: Seconds a pinned spec waits for a free or same-named worker before sharing a busy one.
REPLACEMENT_GRACE = 10.0
#: each Dask worker's built objects (the worker-side registry, importable from here)
_instances = instances


# === client side ===========================================================================


class _Call:
    """One submitted call: its public future and the Dask future currently running it."""

    __slots__ = ("dask_future", "future", "key_prefix", "payload", "settled", "slot")

    def __init__(
        self,
        payload: tuple[Any, ...],
        key_prefix: str,
        slot: Optional[int],
    ):
        self.future: Future[Any] = TaskFuture()
        self.payload = payload  # (task function, *arguments) for client.submit
        self.key_prefix = key_prefix
        self.slot = slot
        self.dask_future: Any = None  # None while (re)submitting
        self.settled = False  # outcome decided (result, error or cancelled)


def reassign_slots(
    addresses: list[str],
    slot_names: list[Any],
    lost_since: list[Optional[float]],
    names: dict[str, Any],
    now: float,
) -> set[int]:
    """Give each pinned spec whose worker vanished a new one; the specs moved.

    ``addresses[i]`` is where spec ``i`` is pinned, ``slot_names[i]`` that worker's name and
    ``lost_since[i]`` when it was first found gone; ``names`` maps the live workers'
    addresses to their names.  The choice, in order: a live worker with the lost one's name
    (the nanny's restart), a worker hosting no spec, and after ``REPLACEMENT_GRACE`` seconds
    the one hosting the fewest.  Updates the three lists in place.
    """
    changed: set[int] = set()
    for i, address in enumerate(addresses):
        if address in names:
            lost_since[i] = None
            continue
        lost = lost_since[i]
        if lost is None:
            lost = lost_since[i] = now
        hosting = {a: addresses.count(a) for a in names}
        choice = next((a for a in sorted(names) if names[a] == slot_names[i]), None)
        if choice is None:
            choice = next((a for a in sorted(names) if hosting[a] == 0), None)
        if choice is None and names and now - lost >= REPLACEMENT_GRACE:
            choice = min(sorted(names), key=hosting.__getitem__)
        if choice is not None:
            addresses[i] = choice
            slot_names[i] = names[choice]
            lost_since[i] = None
            changed.add(i)
    return changed


def _worker_order(item: tuple[str, Any]) -> tuple[int, Any, str]:
    name = item[1].get("name")
    if isinstance(name, int) and not isinstance(name, bool):
        return (0, name, item[0])
    return (1, str(name), item[0])


def _collect_stats(client: Any, token: str) -> list[WorkerStats]:
    """One record per Dask worker, ranked as pinned specs are placed (by worker name)."""
    replies = client.run(stats_for, token)  # one round trip per call, none per task
    workers = client.scheduler_info()["workers"]
    ranked = sorted(((a, workers.get(a, {})) for a in replies), key=_worker_order)
    records = []
    for rank, (address, _) in enumerate(ranked):
        pid, done, failed, timeouts, busy, resident = replies[address]
        records.append(
            WorkerStats(
                index=rank,
                pid=pid,
                tasks_completed=done,
                failures=failed,
                timeouts=timeouts,
                crashes=None,  # Dask replaces a dead worker itself; its counts start again
                restarts=None,
                busy_seconds=busy,
                resident_bytes=resident or None,
            )
        )
    return records


class StatefulDaskExecutor(StatefulExecutorMixin, ExecutorLifecycle, concurrent.futures.Executor):
    """A ``concurrent.futures.Executor`` running tasks on a Dask cluster, with stateful workers.

    ``client`` is a (synchronous) ``distributed.Client``; the executor never closes it.
    ``worker`` is a ``@delayed_init`` spec or a function, built once on every Dask worker
    that runs a task (tasks go wherever Dask schedules them), or a list of them, each pinned
    to its own Dask worker (the cluster needs at least that many).  When a Dask worker dies,
    its replacement builds its object again from the same spec.  Tasks see their worker
    through :func:`~mtasklite.current_worker`, :func:`~mtasklite.worker_index` (the spec's
    index when pinned, the Dask worker's integer name otherwise, ``None`` if it has none) and
    the picklable :attr:`worker` handle.  ``task_timeout`` is the default limit in seconds for
    every task, counted from when it starts on its worker.

    ``imap`` reads its input lazily, at most ``buffersize`` tasks ahead (four chunks or sixteen
    single items per worker by default, counted from the cluster's size when the executor is
    created), and sizes chunks adaptively unless ``chunksize`` is given.  Dask futures inside
    task arguments are resolved on the worker, as with ``Client.submit``.

    Requirements and limits: mtasklite must be importable on the workers.  The spec travels
    with every task, so give constructors small arguments (a path, not the data).  A future
    stays pending until its result arrives, so ``cancel()`` succeeds even on a running task,
    whose result is then dropped; ``shutdown`` never closes the client.
    """

    _default_chunksize: Optional[int] = None  # a Dask task costs ~1 ms: batch small items
    _chunks_take_timeouts = False

    def __init__(
        self,
        client: Any,
        *,
        worker: Union[WorkerLike, Sequence[WorkerLike], None] = None,
        task_timeout: Optional[float] = None,
    ):
        if not callable(getattr(client, "submit", None)):
            raise TypeError(f"client must be a distributed.Client, got {client!r}")
        if getattr(client, "asynchronous", False):
            raise ValueError("StatefulDaskExecutor needs a synchronous distributed.Client")
        pinned = isinstance(worker, (list, tuple))
        specs, _ = resolve_workers(worker, None)
        self._client = client
        self._worker_specs = specs
        self._task_timeout = check_timeout("task_timeout", task_timeout)
        self._token = uuid.uuid4().hex
        self._lock = threading.Lock()
        self._calls: set[_Call] = set()
        self._shutdown = False
        self._broken: Optional[str] = None
        self._slot_address: list[str] = []
        self._slot_name: list[Any] = []
        self._slot_lost: list[Optional[float]] = []
        self._slot_load: list[int] = []
        self._next_slot = 0
        workers = sorted(client.scheduler_info()["workers"].items(), key=_worker_order)
        if pinned:
            assert specs is not None
            if len(workers) < len(specs):
                raise ValueError(
                    f"worker= lists {len(specs)} specs but the cluster has {len(workers)} "
                    f"workers; start more (or call client.wait_for_workers({len(specs)}))"
                )
            for address, info in workers[: len(specs)]:
                self._slot_address.append(address)
                self._slot_name.append(info.get("name"))
                self._slot_lost.append(None)
                self._slot_load.append(0)
            self._max_workers = len(specs)
        elif specs is not None and isinstance(specs[0], DelayedInit):
            self._max_workers = max(1, len(workers))  # calls to one object are serialised
        else:
            self._max_workers = max(1, sum(int(info.get("nthreads", 1)) for _, info in workers))
        self._service = Service(self, client, self._token, pinned)

    def _is_broken(self) -> bool:
        return self._broken is not None

    def _is_shut_down(self) -> bool:
        return self._shutdown

    def _broken_error(self) -> WorkerInitError:
        return WorkerInitError(self._broken)

    @property
    def client(self) -> Any:
        """The ``distributed.Client`` this executor submits to."""
        return self._client

    # -- submission -------------------------------------------------------------------------

    def _submit_timed(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: Optional[float],
    ) -> Future[Any]:
        return self._start(run_task, (fn, args, kwargs), call_label(fn), timeout)

    def _submit_chunk(
        self, fn: Callable[..., Any], items: Sequence[Any], passing: int, timeout: Optional[float]
    ) -> Future[ChunkResult]:
        # Timed imap sends single items (_chunks_take_timeouts is False), never a timed chunk.
        return self._start(run_chunk_task, (fn, items, passing), call_label(fn), None)

    def _start(
        self,
        task: Callable[..., Any],
        args: tuple[Any, ...],
        label: str,
        timeout: Optional[float],
    ) -> Future[Any]:
        with self._lock:
            self._check_accepting()
            slot = self._pick_slot() if self._slot_address else None
            job = Job(self._token, slot, self._spec_for(slot), timeout)
            call = _Call((task, job, *args), f"mtasklite-{label}", slot)
            self._calls.add(call)
        self._service.ensure_started()
        call.future.add_done_callback(functools.partial(self._on_future_done, call))
        self._dispatch(call)
        return call.future

    def _spec_for(self, slot: Optional[int]) -> Optional[WorkerLike]:
        specs = self._worker_specs
        if specs is None:
            return None
        return specs[slot] if slot is not None else specs[0]

    def _pick_slot(self) -> int:
        """The pinned spec with the fewest calls in flight (round robin among equals)."""
        loads, n = self._slot_load, len(self._slot_load)
        best = self._next_slot
        for step in range(1, n):
            i = (self._next_slot + step) % n
            if loads[i] < loads[best]:
                best = i
        self._next_slot = (best + 1) % n
        loads[best] += 1
        return best

    def _dispatch(self, call: _Call) -> None:
        """Submit ``call`` to Dask (again, after a reroute) and relay its outcome."""
        while True:
            with self._lock:
                if call.settled:
                    return
                address = None if call.slot is None else self._slot_address[call.slot]
            task, *args = call.payload
            try:
                dask_future = self._client.submit(
                    task,
                    *args,
                    key=f"{call.key_prefix}-{uuid.uuid4().hex}",
                    pure=False,
                    workers=None if address is None else [address],
                    allow_other_workers=False,
                )
            except BaseException as exc:  # e.g. the client is closed
                self._fail(call, exc)
                return
            with self._lock:
                # A reroute or a cancel may have happened while we were submitting.
                moved = call.slot is not None and self._slot_address[call.slot] != address
                keep = not call.settled and not moved
                if keep:
                    call.dask_future = dask_future
            if keep:
                dask_future.add_done_callback(functools.partial(self._relay, call, dask_future))
                return
            self._service.cancel(dask_future)

    # -- outcomes (Dask's callback thread) ----------------------------------------------------

    def _relay(self, call: _Call, dask_future: Any, _: Any = None) -> None:
        if call.dask_future is not dask_future:
            return  # superseded by a reroute, or already settled
        value: Any = None
        error: Optional[BaseException] = None
        cancelled = dask_future.status == "cancelled"
        if not cancelled:
            try:
                value = dask_future.result()
            except BaseException as exc:
                error = exc
        with self._lock:
            if call.dask_future is not dask_future or call.settled:
                return
            self._settle(call)
            if isinstance(error, WorkerInitError) and self._broken is None:
                self._broken = str(error)
        future = call.future
        try:
            if cancelled:  # cancelled on Dask's side (client closed, someone else's cancel)
                if future.cancel():
                    future.set_running_or_notify_cancel()
            elif error is not None:
                future.set_exception(error)
            else:
                future.set_result(value)
        except concurrent.futures.InvalidStateError:
            pass  # the user cancelled it meanwhile; the outcome is dropped
        del future, value, error

    def _fail(self, call: _Call, error: BaseException) -> None:
        with self._lock:
            if call.settled:
                return
            self._settle(call)
        try:
            call.future.set_exception(error)
        except concurrent.futures.InvalidStateError:
            pass

    def _on_future_done(self, call: _Call, future: Future[Any]) -> None:
        if not future.cancelled():
            return
        with self._lock:
            if call.settled:
                return
            dask_future = call.dask_future
            self._settle(call)
        # Wake concurrent.futures.wait()/as_completed(), as a stdlib worker would.
        future.set_running_or_notify_cancel()
        if dask_future is not None:
            self._service.cancel(dask_future)

    def _settle(self, call: _Call) -> None:
        """Mark ``call`` decided and drop it from the books (caller holds the lock)."""
        call.settled = True
        call.dask_future = None  # releases the Dask key, so workers can free its result
        self._calls.discard(call)
        if call.slot is not None:
            self._slot_load[call.slot] -= 1
        if self._shutdown and not self._calls:
            self._service.wake()

    # -- pinned specs: follow their workers ---------------------------------------------------

    def _has_calls(self) -> bool:
        with self._lock:
            return bool(self._calls)

    def _check_slots(self) -> None:
        """Move pinned specs off dead workers and resubmit their unfinished calls."""
        with self._lock:
            addresses = list(self._slot_address)
        alive = self._client.nthreads(addresses)
        if len(alive) == len(set(addresses)):
            return
        workers = self._client.scheduler_info()["workers"]
        names = {address: info.get("name") for address, info in workers.items()}
        moved: list[_Call] = []
        old_futures: list[Any] = []
        with self._lock:
            changed = reassign_slots(
                self._slot_address, self._slot_name, self._slot_lost, names, time.monotonic()
            )
            for call in self._calls:
                if call.slot in changed and call.dask_future is not None:
                    old_futures.append(call.dask_future)
                    call.dask_future = None
                    moved.append(call)
        for dask_future in old_futures:
            self._service.cancel(dask_future)
        for call in moved:
            self._dispatch(call)

    def worker_stats(self) -> list[WorkerStats]:
        """One :class:`~mtasklite.WorkerStats` per Dask worker, counted in the worker's process
        until ``shutdown()``: one round trip per call, none per task (see ``_collect_stats``)."""
        return _collect_stats(self._client, self._token)

    # -- shutdown ---------------------------------------------------------------------------

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting tasks; optionally cancel pending ones and wait for the rest.

        Tasks already running on a worker always finish there (a cancelled one's result is
        dropped).  Once no call is in flight, every Dask worker drops the objects it built
        for this executor.  The client stays open.
        """
        with self._lock:
            self._shutdown = True
            calls = list(self._calls)
        if cancel_futures:
            for call in calls:
                call.future.cancel()
        if wait:
            concurrent.futures.wait([call.future for call in calls])
        self._service.stop(wait)

    def __repr__(self) -> str:
        mode = "pinned" if self._slot_address else "replicated"
        state = "shutdown" if self._shutdown else "running"
        return f"<{type(self).__name__} {mode} workers={self._max_workers} {state}>"
