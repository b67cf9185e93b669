"""StatefulProcessPoolExecutor: a process pool built on owned worker slots.

The following diagram describes the data flow through the system:

  caller threads               dispatcher thread                      worker processes
 ----------------      ---------------------------------------      --------------------
  submit / imap         waits (connection.wait) on                   slot 0: own spec,
    |                     - the wakeup pipe       <-- new work        own pipe, own
    v                     - every slot's pipe     <== Results         progress cell
  _Job(future, items)     - every process sentinel <-- deaths
    |                     - the nearest task deadline                 slot 1: ...
    v                   for each idle slot: pops a piece,
  pending: deque        pickles one Run, sends it  ================>  runs the items,
  of _Piece  ---------> records results, sets futures                writes which item
  (+ wakeup byte)       on a death or an overrun: fails exactly       it is running into
                        the item that was running, re-queues the      its progress cell
                        rest, respawns the slot with the same spec

Slot ``i`` always has spec ``i`` (worker ``i``'s arguments), its own pipe and its own cell
in a shared array; it runs one piece of work at a time, so the dispatcher knows at every
moment which items each slot is running and since when.  A piece is a contiguous range of
one job's items: a ``submit`` call is a one-item job, an ``imap`` chunk a many-item one.
Once every worker is up, a busy slot running an untimed chunk is also sent its next chunk
(``next_piece``), so it never idles while the dispatcher unpickles its results.  Only a
chunk that fits in a quarter of the socket's send buffer goes ahead: a busy worker does not
read, and a send that waited for it while the worker waits for us to read its results would
deadlock both (a bigger chunk waits, pickled, for an idle worker).

Who touches what:
- ``pending``, ``_processes``, the never-started slot counter and the flags live under
  ``_shutdown_lock``; callers append, the dispatcher pops.  Callers start never-started
  slots (so ``submit`` grows the pool synchronously, as the stdlib does); only the
  dispatcher touches a slot once it has been started.
- A slot's pipe is read and written only by the dispatcher.  A slot has at most two Runs
  outstanding and runs them in order, so a Results message needs no task id: it belongs to
  ``piece`` until its last message promotes ``next_piece``.

Races, and how they are settled:
- A worker dies with a Run outstanding: its pipe is drained first (results sent before the
  death count), then its progress cell names the item that was running; that item fails
  with WorkerCrashedError and every other unreported item is re-queued.  If the cell says
  UNTRACKED (a chunk run without per-item writes), the unreported items are re-queued as
  one tracked piece instead, so a crash that repeats names its item.
- A timed item overruns: its future fails at once; the worker gets SIGTERM, then SIGKILL
  after a grace period; results of earlier items still arriving are kept, anything from
  the late item on is dropped and re-queued.
- A worker dies holding a ``next_piece``: that piece never started, so it is re-queued
  whole and nothing of it is charged.
- A sentinel or pipe hangs up while its process still runs (a task closed its descriptors),
  or stays open after the process died (a process it forked holds it): a death is confirmed
  by pid (``Process.exitcode``, a non-blocking waitpid), polled often while a death is
  expected and now and then while work is outstanding; the dispatcher never joins a worker.
- A future is cancelled while queued: the dispatcher skips it when it pops it
  (``set_running_or_notify_cancel``); once sent, it runs (with ``cancel_running=True`` the
  worker is stopped instead).  Futures the pool drops itself are cancelled *and* notified,
  so ``wait()``/``as_completed()`` see them.
- ``terminate()`` signals the workers from the caller's thread at once; the dispatcher,
  seeing a death with ``terminate_requested`` set, aborts everything instead of treating
  it as a crash.
"""

from __future__ import annotations

import concurrent.futures
import math
import multiprocessing
import multiprocessing.connection
import os
import select
import socket
import threading
import time
import weakref
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor, _base
from concurrent.futures._base import LOGGER
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Deque, Optional, Sequence, TypeVar, Union, cast

from . import _shm, _wire
from ._cpu import usable_cpu_count
from ._force_stop import TERMINATE, ForceStopMixin
from ._futures import TaskFuture, cancel_dropped
from ._outcomes import task_outcome
from ._process_worker import worker_main
from ._salvage import find_unrebuildable, salvage
from .errors import (
    DeserializationError,
    TaskPicklingError,
    TaskTimeoutError,
    WorkerCrashedError,
    WorkerInitError,
    abrupt_exit_cause,
)
from .executor_api import SHUTDOWN_MESSAGE, StatefulExecutorMixin, check_timeout
from .stateful import SentByValue, WorkerLike, describe_worker, resolve_workers, spec_for
from .windowing import ChunkResult

__all__ = ["StatefulProcessExecutor", "StatefulProcessPoolExecutor"]

T = TypeVar("T")

#: seconds between SIGTERM and SIGKILL when stopping an overrunning worker
KILL_GRACE = 0.2
#: a slot whose worker dies this many times in a row outside any task breaks the pool
MAX_FRUITLESS_DEATHS = 3
#: seconds between exit checks by pid of a worker whose death is expected (stopped, killed)
#: or whose pipes hung up while it still ran (see ``_Dispatcher._poll_deaths``)
DEATH_POLL = 0.02
#: seconds between exit checks by pid of every worker while work is outstanding: a worker's
#: sentinel and pipe stay open while a process it forked lives on, so they may never report
SLOW_DEATH_POLL = 0.5

_global_shutdown = False
_live_dispatchers: weakref.WeakSet[_Dispatcher] = weakref.WeakSet()


def _python_exit() -> None:
    # Like the stdlib: let every pool finish its queued work, then stop its workers.
    global _global_shutdown
    _global_shutdown = True
    for dispatcher in list(_live_dispatchers):
        dispatcher.wakeup()
    for dispatcher in list(_live_dispatchers):
        if dispatcher.thread is not None:
            dispatcher.thread.join()


threading._register_atexit(_python_exit)  # type: ignore[attr-defined]


def _after_fork_in_child() -> None:
    # A forked worker must not run the parent's pools' exit hook: their dispatcher threads
    # and locks did not survive the fork.
    _live_dispatchers.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class _Job:
    """One future's worth of work: a ``submit`` call (one item) or an imap chunk."""

    __slots__ = (
        "elapsed",
        "errors",
        "fn",
        "future",
        "is_call",
        "items",
        "mode",
        "nbytes",
        "remaining",
        "started",
        "timeout",
        "values",
    )

    def __init__(
        self,
        future: Future[Any],
        fn: Callable[..., Any],
        items: Sequence[Any],
        mode: int,
        timeout: Optional[float],
        is_call: bool,
    ):
        self.future = future
        self.fn = fn
        self.items = items
        self.mode = mode
        self.timeout = timeout
        self.is_call = is_call  # the future's result is the value, not a ChunkResult
        self.values: list[Any] = [None] * len(items)
        self.errors: dict[int, BaseException] = {}
        self.remaining = len(items)
        self.elapsed = 0.0
        self.nbytes = 0
        self.started = False


class _Piece:
    """Items ``start:stop`` of a job, sent to one slot as one Run.  ``track``: the worker
    names each item before running it (set when re-running after an unattributed death)."""

    __slots__ = ("data", "job", "start", "stop", "track")

    def __init__(self, job: _Job, start: int, stop: int, track: bool = False):
        self.job = job
        self.start = start
        self.stop = stop
        self.track = track
        self.data: Optional[bytes] = None  # the pickled Run, once made (kept if not sent)
        # (only a plain pickle is kept: one in a slot's shared memory is that slot's alone)


# Slot states.
EMPTY, STARTING, IDLE, BUSY, KILLING, STOPPING = range(6)


class _Slot:
    """Worker ``index``: its spec, and while started, its process and pipe."""

    __slots__ = (
        "accept",
        "conn",
        "done_items",
        "ever_ready",
        "fruitless_deaths",
        "index",
        "init_failure",
        "kill_at",
        "next_piece",
        "piece",
        "prefetch_bytes",
        "process",
        "received",
        "receiver",
        "sender",
        "since",
        "spec",
        "state",
    )

    def __init__(self, index: int, spec: Optional[WorkerLike]):
        self.index = index
        self.spec = spec
        self.state = EMPTY
        self.process: Any = None
        self.conn: Optional[multiprocessing.connection.Connection] = None
        self.piece: Optional[_Piece] = None
        self.next_piece: Optional[_Piece] = None  # sent ahead, runs after ``piece``
        self.prefetch_bytes = 0  # largest Run that may be sent ahead (see _prefetch)
        self.received = 0  # items of ``piece`` reported so far
        self.accept = 0  # items of ``piece`` whose results still count
        self.since = 0.0  # when ``piece`` was sent
        self.kill_at = 0.0  # KILLING: when to escalate to SIGKILL
        self.done_items = 0  # items run by the current process (max_tasks_per_child)
        self.ever_ready = False  # some process of this slot has built its object
        self.fruitless_deaths = 0  # deaths in a row that resolved no item
        self.init_failure: Optional[_wire.InitFailed] = None  # reported, process not yet gone
        # Shared memory for big buffers (see _shm): Runs out, Results in; new per process.
        self.sender = _shm.Sender(0)
        self.receiver = _shm.Receiver()

    def close_transport(self) -> None:
        """Unmap this slot's shared memory (the worker's own mappings stay valid)."""
        self.sender.close()
        self.receiver.close()


class _StoppableFuture(TaskFuture[Any]):
    """A future whose ``cancel()`` also works while it runs (``cancel_running=True``): it is
    cancelled at once and the dispatcher stops the worker running it, as for a timeout."""

    def __init__(self, on_cancel_running: Callable[[Future[Any]], None]):
        super().__init__()
        self._on_cancel_running = on_cancel_running

    def cancel(self) -> bool:
        with self._condition:
            if self._state != _base.RUNNING:
                return super().cancel()
            self._state = _base.CANCELLED_AND_NOTIFIED
            for waiter in self._waiters:
                waiter.add_cancelled(self)
            self._condition.notify_all()
        self._invoke_callbacks()  # type: ignore[attr-defined]
        self._on_cancel_running(self)
        return True


def _set_result(future: Future[Any], value: Any) -> None:
    # No done() check first: a caller's cancel() (cancel_running) may land between the check
    # and the set; the future keeps whichever outcome came first.
    try:
        future.set_result(value)
    except concurrent.futures.InvalidStateError:
        pass


def _set_exception(future: Future[Any], error: BaseException) -> None:
    try:
        future.set_exception(error)
    except concurrent.futures.InvalidStateError:
        pass


class _Poller:
    """``multiprocessing.connection.wait`` on a ``select.poll`` kept between calls, instead
    of a selector built and filled on every call (the dispatcher waits several times per
    task)."""

    def __init__(self) -> None:
        self._poll = select.poll()
        self._objects: dict[int, Any] = {}  # fd -> what the caller passed

    def wait(self, objects: list[Any], timeout: Optional[float]) -> list[Any]:
        """The objects (connections or file descriptors) that are ready, like ``wait()``."""
        wanted = {obj if isinstance(obj, int) else obj.fileno(): obj for obj in objects}
        if wanted.keys() != self._objects.keys():
            for fd in self._objects.keys() - wanted.keys():
                self._poll.unregister(fd)
            for fd in wanted.keys() - self._objects.keys():
                self._poll.register(fd, select.POLLIN)
        self._objects = wanted
        ms = None if timeout is None else math.ceil(max(0.0, timeout) * 1000)
        events = self._poll.poll(ms)
        # Any event counts (POLLHUP: the peer is gone), as in wait().
        return [wanted[fd] for fd, _ in events]


class _Dispatcher:
    """Owns the slots and runs the dispatcher thread (see the module docstring)."""

    def __init__(
        self,
        executor: StatefulProcessPoolExecutor,
        specs: Optional[list[WorkerLike]],
        max_workers: int,
        shm_threshold: Optional[int] = None,
    ):
        self.lock = executor._shutdown_lock
        # A BaseContext (never None here); its stubs lack Process and RawArray.
        self.ctx: Any = cast(Any, executor._mp_context)
        self.initializer = executor._initializer
        self.initargs = executor._initargs
        self.max_tasks = executor._max_tasks_per_child
        self.shm_threshold = _shm.check_threshold(shm_threshold)  # 0: no shared memory
        self.break_on_crash = executor._on_worker_crash == "break"
        # Send an untimed worker its next piece before it finishes the current one, so it
        # never idles while we unpickle its results (off where a slot's work is counted or
        # stopped piece by piece).
        self.prefetch = self.max_tasks is None and not executor._cancel_running
        self.processes = executor._processes
        self.idle_semaphore = executor._idle_worker_semaphore
        self.name = f"{type(executor).__name__}-{id(executor):x}"
        self.slots = [_Slot(i, spec_for(specs, i)) for i in range(max_workers)]
        self.fresh = 0  # slots started at least once (callers start them in index order)
        self.pending: Deque[_Piece] = deque()
        self.idle: Deque[_Slot] = deque()
        self.retiring: list[Any] = []  # stopped processes not yet reaped
        # pids whose sentinel or pipe hung up while the process still ran (it closed its
        # descriptors): no longer waited on (they stay readable), polled by pid instead
        self.hung_up: set[int] = set()
        self.next_slow_poll = 0.0
        self.progress = self.ctx.RawArray("d", 2 * max_workers)
        self.cells = memoryview(self.progress).cast("B").cast("d")
        self.wake_r = self.wake_w = -1  # the wakeup pipe, opened with the dispatcher thread
        self.wake_lock = threading.Lock()  # orders writes against closing the pipe
        self.wake_pending = True  # until the pipe exists nobody needs waking: no writes
        self.shutting_down = False
        self.terminate_requested = False  # terminate(): stop all work now (set under the lock)
        self.terminated = False
        self.ready_changed = threading.Condition(threading.Lock())  # wait_ready() sleeps here
        self.closed = False  # the dispatcher has exited
        self.stop_requests: list[Future[Any]] = []  # running futures cancelled by callers
        self.broken: Optional[BaseException] = None
        self.cloud_fn: Any = None  # last function that needed cloudpickle
        self.thread: Optional[threading.Thread] = None
        self.poller = _Poller()
        self.executor_ref = weakref.ref(executor, lambda _: self.wakeup())
        _live_dispatchers.add(self)

    # -- called from caller threads (under the lock) ------------------------------------------

    def wakeup(self) -> None:
        """Make the dispatcher look at its queue and flags (any thread, lock held or not)."""
        if self.wake_pending:
            return
        with self.wake_lock:
            if not self.wake_pending:
                self.wake_pending = True
                try:
                    os.write(self.wake_w, b"\0")
                except BlockingIOError:
                    pass  # full: a wakeup is pending anyway

    def open_wakeup(self) -> None:
        """Open the wakeup pipe (just before the dispatcher thread starts; it closes it)."""
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.wake_pending = False

    def start_fresh_slot(self) -> None:
        slot = self.slots[self.fresh]
        self.start_slot(slot, die_with_parent=threading.current_thread() is threading.main_thread())
        self.fresh += 1  # only once it started: a failed start is retried by the next caller

    def start_slot(self, slot: _Slot, die_with_parent: bool = True) -> None:
        """Start (or restart) ``slot``'s process.  Callers hold the lock."""
        parent_end, child_end = self.ctx.Pipe(duplex=True)
        shm_threshold = self.shm_threshold if _shm.can_pass_descriptors(parent_end) else 0
        # Overwritten by the worker's first line of our code: a death before that happened
        # while the process was still being set up (importing the main module, ...).
        self.cells[2 * slot.index] = _wire.LAUNCHING
        process = self.ctx.Process(
            target=worker_main,
            name=f"{self.name}-worker-{slot.index}",
            args=(
                slot.index,
                child_end,
                self.progress,
                slot.spec,
                self.initializer,
                self.initargs,
                die_with_parent,
                shm_threshold,
            ),
        )
        try:
            process.start()
        except BaseException:
            parent_end.close()
            child_end.close()
            raise
        child_end.close()
        slot.prefetch_bytes = _room_for_prefetch(parent_end)
        slot.close_transport()
        slot.sender = _shm.Sender(shm_threshold, tag=f"runs-{slot.index}")
        slot.receiver = _shm.Receiver()
        slot.process, slot.conn, slot.state = process, parent_end, STARTING
        slot.piece, slot.done_items = None, 0
        self.processes[process.pid] = process

    # -- the dispatcher thread ----------------------------------------------------------------

    def run(self) -> None:
        try:
            while True:
                if self.terminate_requested and not self.terminated:
                    self.terminated = True
                    self._abort_all(BrokenProcessPool("the process pool was terminated"))
                if self.stop_requests:
                    self._stop_cancelled()
                self._dispatch()
                if self.prefetch:
                    self._prefetch()
                if self._finished():
                    break
                conns, sentinels = self._waitables()
                ready = self.poller.wait([self.wake_r, *conns, *sentinels], self._wait_timeout())
                if self.wake_r in ready:
                    self._clear_wakeup()
                # Results before deaths: what a worker sent before dying still counts.
                for obj in ready:
                    slot = conns.get(obj)
                    if slot is not None:
                        self._drain(slot, readable=True)
                for obj in ready:
                    if obj in sentinels:
                        self._reap(sentinels[obj], obj)
                self._poll_deaths()
                self._enforce_deadlines()
        except BaseException as exc:  # pragma: no cover - a bug here must not hang callers
            LOGGER.critical("mtasklite dispatcher failed", exc_info=True)
            self._break(BrokenProcessPool(f"the process pool's dispatcher failed: {exc!r}"))
            self._terminate_all()
            self._reap_all_blocking()
        finally:
            self._close()

    def _waitables(self) -> tuple[dict[Any, _Slot], dict[int, Optional[_Slot]]]:
        """Pipes to read, by slot; process sentinels, by slot (``None``: a retired process)."""
        conns: dict[Any, _Slot] = {}
        sentinels: dict[int, Optional[_Slot]] = {}
        hung_up = self.hung_up
        for slot in self.slots:
            if slot.state != EMPTY and slot.process.pid not in hung_up:
                if slot.conn is not None:
                    conns[slot.conn] = slot
                sentinels[slot.process.sentinel] = slot
        for process in self.retiring:
            if process.pid not in hung_up:
                sentinels[process.sentinel] = None
        return conns, sentinels

    def _poll_deaths(self) -> None:
        """Reap workers that exited without their sentinel saying so (checked by pid, never
        blocking): expected deaths and hung-up pipes at once, any worker now and then."""
        now = time.monotonic()
        slow = now >= self.next_slow_poll
        if slow:
            self.next_slow_poll = now + SLOW_DEATH_POLL
        for slot in self.slots:
            process = slot.process
            if process is None or slot.state == EMPTY:
                continue
            expected = slot.state in (KILLING, STOPPING) or process.pid in self.hung_up
            if (expected or slow) and process.exitcode is not None:
                self._reap(slot, process.sentinel)
        for process in list(self.retiring):
            if process.exitcode is not None:
                self.retiring.remove(process)
                self.hung_up.discard(process.pid)

    def _death_poll_interval(self) -> Optional[float]:
        """How soon ``_poll_deaths`` must run again (``None``: nothing to watch)."""
        if self.retiring or any(
            slot.state in (KILLING, STOPPING)
            or (slot.process is not None and slot.process.pid in self.hung_up)
            for slot in self.slots
        ):
            return DEATH_POLL
        if any(slot.state in (STARTING, BUSY) for slot in self.slots):
            return max(0.0, self.next_slow_poll - time.monotonic())
        return None

    def _clear_wakeup(self) -> None:
        # Drain, then re-arm, both under the writers' lock: re-arming first would let a
        # writer's byte be drained while its flag stays set, and every later wakeup would be
        # skipped (a lost wakeup).  Callers change state before waking us, and we read state
        # only after this, so a wakeup skipped while the flag was set is never needed.
        with self.wake_lock:
            try:
                # One read is enough unless it fills the buffer (each system call also costs
                # a GIL hand-off while a caller thread runs).
                while len(os.read(self.wake_r, 4096)) == 4096:
                    pass
            except BlockingIOError:
                pass
            self.wake_pending = False

    def _wait_timeout(self) -> Optional[float]:
        """Seconds until the nearest deadline (an item's limit or a SIGKILL escalation)."""
        now = time.monotonic()
        nearest = None
        for slot in self.slots:
            when = None
            if slot.state == KILLING:
                if slot.kill_at != float("inf"):  # inf: SIGKILL sent, the sentinel will fire
                    when = slot.kill_at
            elif slot.state == BUSY and slot.piece is not None:
                timeout = slot.piece.job.timeout
                if timeout is not None:
                    running = self._running_item(slot)
                    # Between items the next start is unknown but cannot be earlier than now.
                    start = now if running is None else self.cells[2 * slot.index + 1]
                    when = start + timeout
            if when is not None and (nearest is None or when < nearest):
                nearest = when
        timeout = None if nearest is None else max(0.0, nearest - now)
        poll = self._death_poll_interval()
        if poll is not None and (timeout is None or poll < timeout):
            return poll
        return timeout

    def _running_item(self, slot: _Slot) -> Optional[int]:
        """Index (within the piece) of the item ``slot`` is running now, if it is running one
        it has not reported yet."""
        running = self.cells[2 * slot.index]
        if running < 0 or running < slot.received:
            return None
        return int(running)

    def _finished(self) -> bool:
        if not self._should_stop():
            return False
        with self.lock:
            if self.pending:
                return False
        for slot in self.slots:
            if slot.state in (BUSY, KILLING):
                return False
            if slot.state == IDLE:
                self._send_stop(slot)
            elif slot.state == STARTING:
                slot.process.terminate()  # nothing left to do: don't wait for a slow init
                slot.state = STOPPING
        return all(slot.state == EMPTY for slot in self.slots) and not self.retiring

    def _should_stop(self) -> bool:
        if self.shutting_down or _global_shutdown or self.broken is not None:
            return True
        if self.executor_ref() is None:
            self.shutting_down = True
            return True
        return False

    def request_stop(self, future: Future[Any]) -> None:
        """A running future was cancelled (``cancel_running``): stop its worker."""
        with self.lock:
            self.stop_requests.append(future)
        self.wakeup()

    def _stop_cancelled(self) -> None:
        dropped: list[Future[Any]] = []
        with self.lock:
            self.stop_requests = []
            kept: Deque[_Piece] = deque()
            for queued in self.pending:
                if queued.job.future.cancelled():
                    dropped.append(queued.job.future)
                else:
                    kept.append(queued)
            self.pending = kept
        for future in dropped:  # outside the lock: this runs the futures' callbacks
            cancel_dropped(future)
        kill_at = time.monotonic() + KILL_GRACE
        for slot in self.slots:
            piece = slot.piece
            if slot.state == BUSY and piece is not None and piece.job.future.cancelled():
                # Stopped like an overrun, but nothing is charged or re-queued: the whole
                # job is cancelled.  The slot respawns when its process is reaped.
                slot.piece = None
                slot.state, slot.kill_at = KILLING, kill_at
                slot.process.terminate()

    # -- sending work -------------------------------------------------------------------------

    def _dispatch(self) -> None:
        while self.idle:
            with self.lock:
                if not self.pending:
                    return
                piece = self.pending.popleft()
            if not self._claim(piece):
                continue
            slot = self.idle.popleft()
            if self.max_tasks is not None:
                budget = self.max_tasks - slot.done_items
                if piece.stop - piece.start > budget:
                    self._requeue(piece.job, piece.start + budget, piece.stop, piece.track)
                    piece.stop = piece.start + budget
            sent = self._send_piece(slot, piece)
            if sent is None:
                self.idle.appendleft(slot)
            elif not sent:
                slot.state = STOPPING
            else:
                slot.state, slot.piece, slot.received = BUSY, piece, 0
                slot.accept = piece.stop - piece.start
                slot.since = time.monotonic()

    def _prefetch(self) -> None:
        # Only imap chunks, and only once every worker is up: a single task must never wait
        # behind another one while some worker could take it.
        if self.idle or any(slot.state in (EMPTY, STARTING) for slot in self.slots):
            return
        for slot in self.slots:
            current = slot.piece
            if (
                slot.state != BUSY
                or slot.next_piece is not None
                or current is None
                or current.job.timeout is not None  # streaming: progress cells per piece
            ):
                continue
            with self.lock:
                if not self.pending:
                    return
                head = self.pending[0].job
                if head.is_call or head.timeout is not None:
                    return
                piece = self.pending.popleft()
            if piece.data is not None:  # a plain pickle made on an earlier try
                message: Optional[_shm.Outgoing] = _shm.Outgoing(piece.data, None)
            else:
                message = self._encode(piece, slot)
            if message is None:
                continue  # unpicklable: its items are failed or re-queued already
            if len(message.data) > slot.prefetch_bytes:
                # Sent ahead, it might not fit in the socket buffer while the worker, busy,
                # is not reading: we would block, and a worker sending us big results would
                # block too.  It waits (pickled, unclaimed) for the next idle worker instead;
                # one written into this slot's shared memory is taken back from it.
                if piece.data is None:
                    kept = slot.sender.withdraw(message)
                    piece.data = None if kept is None else kept.data
                self._requeue_piece(piece)
                return
            if self._claim(piece) and self._send_piece(slot, piece, message):
                slot.next_piece = piece

    def _claim(self, piece: _Piece) -> bool:
        """Mark ``piece``'s job running; ``False`` if it must be skipped instead."""
        job = piece.job
        if not job.started:
            if not job.future.set_running_or_notify_cancel():
                return False  # cancelled while queued
            job.started = True
            return True
        return not job.future.done()  # a re-queued rest of a job that failed or was cancelled

    def _send_piece(
        self, slot: _Slot, piece: _Piece, message: Optional[_shm.Outgoing] = None
    ) -> Optional[bool]:
        """Send ``piece`` (``message``: already encoded for ``slot``) to ``slot``: ``True``
        once sent; ``False`` if the worker is gone (the piece is re-queued); ``None`` if it
        could not be pickled (already reported)."""
        if message is None and piece.data is not None:
            message = _shm.Outgoing(piece.data, None)
        piece.data = None
        if message is None:
            message = self._encode(piece, slot)
            if message is None:
                return None
        assert slot.conn is not None
        try:
            slot.conn.send_bytes(message.data)
            if message.fd is not None:
                _shm.send_fd(slot.conn, message.fd)
        except OSError:  # the worker died; its sentinel will report it
            self._requeue(piece.job, piece.start, piece.stop)
            return False
        # Shared-memory bytes count too: chunk sizes are bounded by what items weigh.
        piece.job.nbytes += len(message.data) + message.shared_nbytes
        return True

    def _encode(self, piece: _Piece, slot: _Slot) -> Optional[_shm.Outgoing]:
        """Pickle ``piece`` as a Run for ``slot`` (big buffers into its shared memory); on
        failure fail the unpicklable items, re-queue the rest."""
        job = piece.job
        items = job.items
        if piece.start or piece.stop != len(items):
            items = items[piece.start : piece.stop]
        run = _wire.Run(job.fn, items, job.mode, job.timeout is not None, piece.track)
        if job.fn is not self.cloud_fn:
            try:
                return slot.sender.encode(run)
            except BaseException:
                pass
        try:
            data = _wire.cloud_dumps(run)
        except BaseException:
            data = None
        if data is not None:
            self.cloud_fn = job.fn
            return _shm.Outgoing(data, None)
        self._fail_unpicklable(piece, items)
        return None

    def _fail_unpicklable(self, piece: _Piece, items: Sequence[Any]) -> None:
        job = piece.job
        problem = _pickling_problem(job.fn)
        if problem is not None:
            hint = ""
            if not _wire.has_cloudpickle():
                hint = (
                    "; lambdas, closures and functions defined interactively need cloudpickle: "
                    "pip install 'mtasklite[cloudpickle]'"
                )
            error = TaskPicklingError(
                f"cannot send {job.fn!r} to a worker process: {problem}{hint}"
            )
            error.__cause__ = problem
            for index in range(piece.start, piece.stop):
                self._resolve(job, index, None, error)
            return
        good_from = None
        for offset, item in enumerate(items):
            index = piece.start + offset
            problem = _pickling_problem(item)
            if problem is None:
                if good_from is None:
                    good_from = index
                continue
            if good_from is not None:
                self._requeue(job, good_from, index)
                good_from = None
            error = TaskPicklingError(f"cannot send the arguments of this task: {problem}")
            error.__cause__ = problem
            self._resolve(job, index, None, error)
        if good_from is not None:
            self._requeue(job, good_from, piece.stop)

    def _requeue_piece(self, piece: _Piece) -> None:
        with self.lock:
            self.pending.appendleft(piece)

    def _requeue(self, job: _Job, start: int, stop: int, track: bool = False) -> None:
        if start < stop:
            with self.lock:
                self.pending.appendleft(_Piece(job, start, stop, track))

    def _send_stop(self, slot: _Slot) -> None:
        try:
            assert slot.conn is not None
            slot.conn.send_bytes(_wire.dumps(_wire.Stop()))
        except OSError:
            pass  # already dead: the sentinel reports it
        if slot in self.idle:
            self.idle.remove(slot)
        slot.state = STOPPING

    # -- receiving ----------------------------------------------------------------------------

    def _drain(self, slot: _Slot, readable: bool = False) -> None:
        """Handle every message ``slot`` has sent (``readable``: the wait just said so)."""
        conn = slot.conn
        while conn is not None and slot.conn is conn:
            try:
                if not readable and not conn.poll():
                    return
                readable = False
                data = conn.recv_bytes()
            except (EOFError, OSError):
                # The worker is gone (its sentinel reports it), or it closed its end while
                # running on: stop waiting on a pipe that stays readable; watch its pid.
                if slot.process is not None:
                    self.hung_up.add(slot.process.pid)
                return
            self._on_message(slot, data)

    def _on_message(self, slot: _Slot, data: bytes) -> None:
        conn = slot.conn
        try:
            message = slot.receiver.decode(data, lambda: _shm.recv_fd(conn))  # type: ignore[arg-type]
        except _shm.DescriptorLost:
            return  # the worker died sending it; its sentinel reports it
        except BaseException as exc:
            self._unreadable_results(slot, exc, data)
            return
        del data
        if isinstance(message, _wire.Results):
            self._record(slot, message)
        elif isinstance(message, _wire.Ready):
            if slot.state == STARTING:
                slot.state = IDLE
                self.idle.append(slot)
            if not slot.ever_ready:
                slot.ever_ready = True
                self._notify_ready()
        elif isinstance(message, _wire.Unreadable):
            if self._split_piece(slot):
                return  # nothing ran; the items come back one by one to find the culprit
            self._finish_piece_with(
                slot,
                DeserializationError(
                    f"worker {slot.index} could not unpickle the task: {message.error!r}"
                ),
                message.error,
            )
        elif isinstance(message, _wire.InitFailed):
            # Acted on when the process has exited, so whatever it did while failing (its
            # log records, say) is complete before callers see the pool break.
            slot.init_failure = message

    def _record(self, slot: _Slot, results: _wire.Results) -> None:
        piece = slot.piece
        if piece is None:
            return
        job = piece.job
        count = len(results.values)
        first = slot.received
        slot.received += count
        job.elapsed += results.elapsed
        keep = min(count, slot.accept - first)  # an overrun item and later ones are dropped
        if keep > 0:
            offset = piece.start + first
            if keep == job.remaining == len(job.values):
                job.values = results.values  # the common case: one message carries the job
            else:
                job.values[offset : offset + keep] = results.values[:keep]
            errors = results.errors
            if errors:
                for index, error in errors.items():
                    if index < keep:
                        job.errors[offset + index] = error
            job.remaining -= keep
            if job.remaining == 0:
                self._complete(job)
        if results.last and slot.state == BUSY:
            self._piece_done(slot)

    def _piece_done(self, slot: _Slot) -> None:
        piece = slot.piece
        assert piece is not None
        slot.piece = None
        slot.fruitless_deaths = 0
        slot.done_items += piece.stop - piece.start
        if slot.next_piece is not None:  # already sent: the worker is on it now
            piece, slot.next_piece = slot.next_piece, None
            slot.piece, slot.received = piece, 0
            slot.accept = piece.stop - piece.start
            slot.since = time.monotonic()
            return
        if self.max_tasks is not None and slot.done_items >= self.max_tasks:
            self._retire(slot)
        else:
            slot.state = IDLE
            self.idle.append(slot)
        self.idle_semaphore.release()

    def _unreadable_results(self, slot: _Slot, exc: BaseException, data: bytes) -> None:
        piece = slot.piece
        if piece is None:
            self._init_failed(slot, exc, in_spec=slot.spec is not None)
            return
        if self._salvage_results(slot, data):
            return
        streaming = piece.job.timeout is not None
        error = _unreadable_result_error(slot.index, exc)
        if streaming:  # exactly one item's result was in this message
            self._record(
                slot,
                _wire.Results(
                    [None], {0: error}, 0.0, slot.received + 1 >= (piece.stop - piece.start)
                ),
            )
        else:  # never run again: the items have run, and may have had side effects
            self._finish_piece_with(slot, error, exc)

    def _salvage_results(self, slot: _Slot, data: bytes) -> bool:
        """Record a batch of results ``loads`` refused, failing only the items whose outcome
        cannot be rebuilt here (nothing runs twice); ``False`` if it cannot be read even so."""
        try:
            message, stand_ins = salvage(data)
        except Exception:
            return False
        if not isinstance(message, _wire.Results) or not stand_ins:
            return False
        values, errors = list(message.values), dict(message.errors or {})
        for index, value in enumerate(values):
            bad = find_unrebuildable(value)
            if bad is None and index in errors:
                bad = find_unrebuildable(errors[index])
            if bad is not None:
                values[index] = None
                errors[index] = _unreadable_result_error(slot.index, bad.error)
        self._record(slot, _wire.Results(values, errors or None, message.elapsed, message.last))
        return True

    def _split_piece(self, slot: _Slot) -> bool:
        """Re-queue the unreported items of ``slot``'s piece one by one, if there are several,
        and free the slot; ``False`` (nothing done) for a lone item."""
        piece = slot.piece
        if piece is None:
            return False
        start = piece.start + slot.received
        if piece.stop - start <= 1:
            return False
        for index in reversed(range(start, piece.stop)):
            self._requeue(piece.job, index, index + 1)
        slot.received = piece.stop - piece.start
        self._piece_done(slot)
        return True

    def _finish_piece_with(self, slot: _Slot, error: BaseException, cause: object) -> None:
        """Fail every unreported item of ``slot``'s piece with ``error`` and free the slot."""
        piece = slot.piece
        if piece is None:
            return
        if isinstance(cause, BaseException):
            error.__cause__ = cause
        for index in range(piece.start + slot.received, piece.stop):
            self._resolve(piece.job, index, None, error)
        slot.received = piece.stop - piece.start
        self._piece_done(slot)

    def _resolve(self, job: _Job, index: int, value: Any, error: Optional[BaseException]) -> None:
        job.values[index] = value
        if error is not None:
            job.errors[index] = error
        job.remaining -= 1
        if job.remaining == 0:
            self._complete(job)

    def _complete(self, job: _Job) -> None:
        if job.is_call:
            error = job.errors.get(0)
            if error is None:
                _set_result(job.future, job.values[0])
            else:  # a KeyboardInterrupt from the task is its outcome, not a Ctrl-C here
                _set_exception(job.future, task_outcome(error))
        else:
            result = ChunkResult(job.values, job.errors or None, job.elapsed, job.nbytes)
            _set_result(job.future, result)
        job.items = job.values = []
        job.fn = None  # type: ignore[assignment]

    # -- deaths, overruns, recycling ----------------------------------------------------------

    def _reap(self, slot: Optional[_Slot], sentinel: int) -> None:
        if slot is None:  # a retired process exited (or only closed its sentinel)
            for process in list(self.retiring):
                if process.sentinel == sentinel:
                    self.hung_up.add(process.pid)  # reaped by pid in _poll_deaths
            return
        if slot.process is None or slot.process.sentinel != sentinel:
            return  # already reaped (and maybe restarted) in this round
        if self.terminate_requested and not self.terminated:
            # terminate() signalled the workers itself: this death is not a crash.
            self.terminated = True
            self._abort_all(BrokenProcessPool("the process pool was terminated"))
        self._drain(slot)
        process = slot.process
        if process.exitcode is None:
            # The sentinel closed but the process runs on (a task closed its inherited
            # descriptors): never block on one worker; _poll_deaths reaps it by pid.
            self.hung_up.add(process.pid)
            return
        self.hung_up.discard(process.pid)
        self.processes.pop(process.pid, None)
        if slot.conn is not None:
            slot.conn.close()
        slot.close_transport()
        state, piece = slot.state, slot.piece
        if slot.next_piece is not None:  # never started: back to the queue, uncharged
            ahead, slot.next_piece = slot.next_piece, None
            self._requeue(ahead.job, ahead.start, ahead.stop)
        slot.process, slot.conn, slot.state, slot.piece = None, None, EMPTY, None
        if slot in self.idle:
            self.idle.remove(slot)
        failure, slot.init_failure = slot.init_failure, None
        if failure is not None:
            self._init_failed(slot, failure.error, failure.in_spec)
            return
        starting = state == STARTING and not self._should_stop()
        if starting and not starting_death_is_a_crash(slot.ever_ready):
            self._init_failed(slot, None, slot.spec is not None, process.exitcode)
            return
        if piece is not None and self._lost_piece(slot, piece, state, process):
            slot.fruitless_deaths = 0
        elif (
            starting or (state in (IDLE, BUSY) and not self._should_stop())
        ) and self._fruitless_death(slot, process):
            # Died while idle, between items or rebuilding a spec that built before (killed,
            # say by the OOM killer): nothing to blame, so it is survived, but a worker that
            # keeps dying this way would be respawned for ever.
            return
        if (not self._should_stop() or self.pending) and self.broken is None:
            with self.lock:
                self.start_slot(slot)

    def _fruitless_death(self, slot: _Slot, process: Any) -> bool:
        """Count a death that resolved no item; ``True`` if it broke the pool (too many in a
        row: a worker that keeps dying would be respawned for ever)."""
        slot.fruitless_deaths += 1
        if slot.fruitless_deaths < MAX_FRUITLESS_DEATHS:
            return False
        self._break(
            BrokenProcessPool(
                f"worker {slot.index} died {slot.fruitless_deaths} times in a row "
                f"outside any task (last: {_describe_exit(process.exitcode)}); the "
                "process pool is not usable anymore"
            )
        )
        return True

    def _lost_piece(self, slot: _Slot, piece: _Piece, state: int, process: Any) -> bool:
        """The worker died with ``piece`` outstanding: charge the item that killed it, re-queue
        the others (items it ran but could not report run again).  ``False`` if nothing was
        charged: the death happened between items."""
        job = piece.job
        start = piece.start + slot.received
        if state == KILLING:  # overrun: the late item already failed
            late = piece.start + slot.accept
            self._requeue(job, late + 1, piece.stop)
            self._requeue(job, start, min(late, piece.stop))
            return True
        if self.break_on_crash:
            error = BrokenProcessPool(
                "A process in the process pool was terminated abruptly while the future was "
                "running or pending."
            )
            error.__cause__ = abrupt_exit_cause(process.pid, process.exitcode)
            _set_exception(job.future, _copy_error(error))  # no longer held by the slot
            self._break(error)
            return True
        phase = self.cells[2 * slot.index]
        running = self._running_item(slot)
        if running is not None:
            culprit = piece.start + running
            what = "while running this task"
        elif phase == _wire.UNTRACKED:
            if piece.stop - start > 1:
                # Some item of an untracked batch killed it: run them again, tracked, so a
                # repeat crash names its item (a crash that does not repeat is survived).
                self._requeue(job, start, piece.stop, track=True)
                return True
            culprit = start
            what = "while running this task"
        elif phase in (_wire.RECEIVING, _wire.SENDING):
            # Unpickling the Run or pickling its results killed it.  A lone item is the
            # culprit; several go back one by one, so a repeat crash names the culprit.
            if piece.stop - start > 1:
                for index in reversed(range(start, piece.stop)):
                    self._requeue(job, index, index + 1)
                return True  # narrowing down the culprit
            culprit = start
            what = "while receiving this task or sending its result"
        else:  # between items: nothing of ours was running, so nothing is charged
            self._requeue(job, start, piece.stop)
            return False
        self._resolve(
            job,
            culprit,
            None,
            WorkerCrashedError(
                f"worker {slot.index} (pid {process.pid}) died {what} "
                f"({_describe_exit(process.exitcode)})",
                slot=slot.index,
                pid=process.pid,
                exitcode=process.exitcode,
            ),
        )
        self._requeue(job, culprit + 1, piece.stop)
        self._requeue(job, start, culprit)  # ran, but their results died with the worker
        return True

    def _enforce_deadlines(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if slot.state == KILLING:
                if now >= slot.kill_at and slot.process is not None:
                    slot.process.kill()
                    slot.kill_at = float("inf")
            elif slot.state == BUSY and slot.piece is not None:
                timeout = slot.piece.job.timeout
                if timeout is None:
                    continue
                running = self._running_item(slot)
                if running is not None and now >= self.cells[2 * slot.index + 1] + timeout:
                    self._overrun(slot, running, timeout)

    def _overrun(self, slot: _Slot, running: int, timeout: float) -> None:
        piece = slot.piece
        assert piece is not None
        job = piece.job
        slot.accept = running
        slot.state = KILLING
        slot.kill_at = time.monotonic() + KILL_GRACE
        slot.process.terminate()
        index = piece.start + running
        fn_name = getattr(job.fn, "__qualname__", None) or repr(job.fn)
        self._resolve(
            job,
            index,
            None,
            TaskTimeoutError(
                f"task {fn_name}{_describe_item(job.items[index], job.mode)} exceeded its "
                f"{timeout:g} s limit in worker {slot.index} (pid {slot.process.pid}); the worker "
                "was stopped and replaced"
            ),
        )

    def _retire(self, slot: _Slot) -> None:
        """``max_tasks_per_child`` reached: stop this process, start a fresh one in its place."""
        process = slot.process
        self._send_stop(slot)
        if slot.conn is not None:
            slot.conn.close()
        slot.close_transport()
        self.processes.pop(process.pid, None)
        self.retiring.append(process)
        slot.process, slot.conn, slot.state = None, None, EMPTY
        if not self._should_stop() or self.pending:
            with self.lock:
                self.start_slot(slot)

    # -- failure and exit ---------------------------------------------------------------------

    def _init_failed(
        self,
        slot: _Slot,
        error: Optional[BaseException],
        in_spec: bool,
        exitcode: Optional[int] = None,
    ) -> None:
        if in_spec:
            what = f"building worker {slot.index} ({describe_worker(slot.spec)})"  # type: ignore[arg-type]
        else:
            what = f"the pool initializer in worker {slot.index}"
        if error is None:
            message = describe_start_death(
                slot.index,
                exitcode,
                reached_our_code=self.cells[2 * slot.index] != _wire.LAUNCHING,
                initialising=what if in_spec or self.initializer is not None else None,
                start_method=self.ctx.get_start_method(),
            )
        else:
            message = f"{what} failed: {error!r}"
        failure = WorkerInitError(f"{message}; the process pool is not usable anymore")
        failure.__cause__ = error
        self._break(failure)

    def all_ready(self) -> bool:
        return all(slot.ever_ready for slot in self.slots)

    def _notify_ready(self) -> None:
        with self.ready_changed:
            self.ready_changed.notify_all()

    def _break(self, error: BaseException) -> None:
        """Fail every queued and running future with ``error`` and stop all workers."""
        if self.broken is not None:
            return
        executor = self.executor_ref()
        with self.lock:
            self.broken = error
            if executor is not None:
                executor._broken = str(error)
        del executor
        self._notify_ready()
        self._abort_all(error, cancel_queued=False)

    def _abort_all(self, error: BaseException, cancel_queued: bool = True) -> None:
        """Stop every worker; queued futures are cancelled (or failed with ``error``),
        running ones fail with ``error``."""
        with self.lock:
            pending, self.pending = list(self.pending), deque()
        for piece in pending:
            job = piece.job
            if not job.started and cancel_queued:
                cancel_dropped(job.future)
            elif job.started or job.future.set_running_or_notify_cancel():
                job.started = True
                _set_exception(job.future, _copy_error(error))
        for slot in self.slots:
            for held in (slot.piece, slot.next_piece):
                if held is not None:
                    _set_exception(held.job.future, _copy_error(error))
            slot.piece = slot.next_piece = None
        self._terminate_all()

    def _terminate_all(self) -> None:
        # SIGTERM now, SIGKILL after the grace period (a task may ignore SIGTERM).
        kill_at = time.monotonic() + KILL_GRACE
        for slot in self.slots:
            if slot.process is not None and slot.state != EMPTY:
                slot.process.terminate()
                slot.state, slot.kill_at = KILLING, kill_at
        self.idle.clear()

    def _reap_all_blocking(self) -> None:
        for slot in self.slots:
            if slot.process is not None:
                slot.process.join(KILL_GRACE)
                if slot.process.is_alive():
                    slot.process.kill()
                    slot.process.join()
                self.processes.pop(slot.process.pid, None)
                slot.process, slot.state = None, EMPTY

    def _close(self) -> None:
        for process in self.retiring:
            process.join()
        self.retiring.clear()
        for slot in self.slots:
            if slot.conn is not None:
                slot.conn.close()
                slot.conn = None
            slot.close_transport()
        with self.wake_lock:
            self.wake_pending = True  # no more writes: the pipe is closed
            os.close(self.wake_r)
            os.close(self.wake_w)
        _live_dispatchers.discard(self)
        self.closed = True
        self._notify_ready()


#: the send buffer asked for on the parent's end of each worker's socket pair (the kernel
#: caps it at net.core.wmem_max); a quarter of what it grants bounds a Run sent ahead
SEND_BUFFER = 1 << 20


def _room_for_prefetch(conn: multiprocessing.connection.Connection) -> int:
    """Widen the parent's send buffer to a worker; the largest Run that may be sent ahead.

    A quarter of the buffer: a Run sent ahead then always fits beside the one the worker is
    reading, so the send never waits for a busy worker.  0 (never send ahead) if the
    connection is not a socket."""
    fd = os.dup(conn.fileno())
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        os.close(fd)
        return 0
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        except OSError:
            pass  # keep the default
        return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)) // 4
    finally:
        sock.close()


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
            _wire.dumps(spec)
        except RuntimeError:
            pass  # multiprocessing objects that pickle only while spawning (an Event): fine
        except Exception as exc:
            try:
                data = _wire.cloud_dumps(spec)
            except Exception:
                data = None
            if data is None:
                hint = "" if _wire.has_cloudpickle() else _CLOUDPICKLE_HINT
                raise TypeError(
                    f"worker {index} ({describe_worker(spec)}) cannot be pickled to start a "
                    f"{method!r} worker process: {exc}{hint}"
                ) from exc
            portable.append(SentByValue(spec, data))
            continue
        portable.append(spec)
    return portable


def _pickling_problem(obj: object) -> Optional[BaseException]:
    """Why ``obj`` cannot be sent to a worker (``None`` if it can, cloudpickle included)."""
    try:
        _wire.dumps(obj)
    except BaseException as exc:
        try:
            if _wire.cloud_dumps(obj) is not None:
                return None
        except BaseException:
            pass
        return exc
    return None


def _unreadable_result_error(index: int, cause: BaseException) -> DeserializationError:
    error = DeserializationError(f"a result from worker {index} could not be unpickled: {cause!r}")
    error.__cause__ = cause
    return error


def _copy_error(error: BaseException) -> BaseException:
    """A fresh exception of the same type and message, with the same cause."""
    copy = type(error)(*error.args)
    copy.__cause__ = error.__cause__
    return copy


def starting_death_is_a_crash(ever_ready: bool) -> bool:
    """Whether a worker that died while starting, without reporting a failure, is a crash to
    survive (respawn, within ``MAX_FRUITLESS_DEATHS`` in a row) rather than proof that the
    slot cannot start (``WorkerInitError``): it is once some process of the slot got ready,
    since its initializer and spec then demonstrably work (it was killed while rebuilding)."""
    return ever_ready


def describe_start_death(
    index: int,
    exitcode: Optional[int],
    reached_our_code: bool,
    initialising: Optional[str],
    start_method: str,
) -> str:
    """What happened when worker ``index`` died while starting without reporting why.
    ``initialising``: the initializer or spec build it was running, if it has one and had got
    that far (``reached_our_code``: the worker's own code had started)."""
    death = f"died while starting ({_describe_exit(exitcode)}), before running any task"
    if reached_our_code and initialising is not None:
        return f"{initialising} failed: the worker {death}"
    text = f"worker {index} {death}"
    if not reached_our_code and start_method in ("spawn", "forkserver"):
        text += f" (did its main module fail to import under {start_method}?)"
    return text


def _describe_exit(exitcode: Optional[int]) -> str:
    if exitcode is None:
        return "exit status unknown"
    if exitcode < 0:
        try:
            import signal

            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


def _describe_item(item: Any, mode: int) -> str:
    if mode == _wire.CALL:
        args, kwargs = item
        text = ", ".join([repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()])
    elif mode == _wire.STAR:
        text = ", ".join(repr(a) for a in item)
    else:
        text = repr(item)
    return f"({text})" if len(text) <= 60 else f"({text[:56]}...)"


class _Channels:
    """``_call_queue`` of the stdlib pool, kept for code that joins it: here the channels are
    the per-slot pipes, closed when the dispatcher exits."""

    def __init__(self, dispatcher: _Dispatcher):
        self._dispatcher = weakref.ref(dispatcher)

    def join_thread(self) -> None:
        dispatcher = self._dispatcher()
        if dispatcher is not None and dispatcher.thread is not None:
            dispatcher.thread.join()


class StatefulProcessPoolExecutor(StatefulExecutorMixin, ForceStopMixin, ProcessPoolExecutor):
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
    ):
        # The stdlib __init__ is deliberately not called: it builds queues we do not use.
        specs, max_workers = resolve_workers(worker, max_workers)
        if max_workers is None:
            max_workers = usable_cpu_count()
        elif max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
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
        if on_worker_crash not in ("isolate", "break"):
            raise ValueError(
                f"on_worker_crash must be 'isolate' or 'break', got {on_worker_crash!r}"
            )
        if specs is not None and mp_context.get_start_method(allow_none=False) != "fork":
            specs = _portable_specs(specs, mp_context.get_start_method(allow_none=False))
        self._max_workers = max_workers
        self._mp_context = mp_context
        self._initializer = initializer  # type: ignore[assignment]
        self._initargs = initargs
        self._max_tasks_per_child = max_tasks_per_child
        self._worker_specs = specs
        self._task_timeout = check_timeout("task_timeout", task_timeout)
        self._on_worker_crash = on_worker_crash
        self._cancel_running = bool(cancel_running)
        self._processes: dict[int, Any] = {}  # pid -> process, as in the stdlib
        self._shutdown_lock = threading.Lock()
        self._shutdown_thread = False
        self._broken: Union[bool, str] = False  # type: ignore[assignment]  # str, as stdlib
        self._idle_worker_semaphore = threading.Semaphore(0)
        self._executor_manager_thread: Optional[threading.Thread] = None  # type: ignore[assignment]
        self._dispatcher = _Dispatcher(self, specs, max_workers, shm_threshold)
        self._call_queue = _Channels(self._dispatcher)

    # -- submission ---------------------------------------------------------------------------

    def _submit_timed(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: Optional[float],
    ) -> Future[Any]:
        return self._enqueue(fn, [(args, kwargs)], _wire.CALL, timeout, True)

    def _submit_call(
        self, fn: Callable[..., Any], args: tuple[Any, ...], timeout: Optional[float]
    ) -> Future[Any]:
        return self._enqueue(fn, [args], _wire.STAR, timeout, True)

    def _submit_chunk(
        self, fn: Callable[..., Any], items: Sequence[Any], star: bool, timeout: Optional[float]
    ) -> Future[ChunkResult]:
        return self._enqueue(fn, items, _wire.STAR if star else _wire.SINGLE, timeout, False)

    def _enqueue(
        self,
        fn: Callable[..., Any],
        items: Sequence[Any],
        mode: int,
        timeout: Optional[float],
        is_call: bool,
    ) -> Future[Any]:
        dispatcher = self._dispatcher
        with self._shutdown_lock:
            if dispatcher.broken is not None:
                raise _copy_error(dispatcher.broken)
            if self._shutdown_thread:
                raise RuntimeError(SHUTDOWN_MESSAGE)
            if _global_shutdown:
                raise RuntimeError("cannot schedule new futures after interpreter shutdown")
            future: Future[Any] = (
                _StoppableFuture(dispatcher.request_stop) if self._cancel_running else TaskFuture()
            )
            dispatcher.pending.append(
                _Piece(_Job(future, fn, items, mode, timeout, is_call), 0, len(items))
            )
            try:
                if self._executor_manager_thread is None:
                    self._start_dispatcher()
                elif (
                    not self._idle_worker_semaphore.acquire(blocking=False)
                    and dispatcher.fresh < self._max_workers
                ):
                    dispatcher.start_fresh_slot()
            except BaseException:
                # No worker could start (the initializer or its arguments cannot be sent to a
                # spawned process, say): the caller gets the error, so the task must not run.
                dispatcher.pending.pop()
                raise
            dispatcher.wakeup()
        return future

    def _start_dispatcher(self) -> None:
        # Like the stdlib: with fork, start every worker now, before our thread exists (a
        # fork from a multi-threaded process is fragile); otherwise start them on demand.
        dispatcher = self._dispatcher
        if self._dispatcher.ctx.get_start_method(allow_none=False) == "fork":
            while dispatcher.fresh < self._max_workers:
                dispatcher.start_fresh_slot()
        else:
            dispatcher.start_fresh_slot()
        dispatcher.open_wakeup()
        thread = threading.Thread(
            target=dispatcher.run, name=f"{dispatcher.name}-dispatcher", daemon=True
        )
        dispatcher.thread = thread
        thread.start()
        self._executor_manager_thread = thread

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
        dispatcher = self._dispatcher
        with self._shutdown_lock:
            if dispatcher.broken is not None:
                raise _copy_error(dispatcher.broken)
            if self._shutdown_thread:
                raise RuntimeError("cannot wait for workers after shutdown")
            if self._executor_manager_thread is None:
                self._start_dispatcher()
            while dispatcher.fresh < self._max_workers:
                dispatcher.start_fresh_slot()
        with dispatcher.ready_changed:
            while not dispatcher.all_ready():
                if dispatcher.broken is not None:
                    raise _copy_error(dispatcher.broken)
                if dispatcher.closed:
                    raise RuntimeError("the pool shut down before all its workers were ready")
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise concurrent.futures.TimeoutError(f"workers not ready within {timeout} s")
                dispatcher.ready_changed.wait(remaining)

    def terminate(self, wait: bool = True) -> None:
        """Stop now: cancel queued tasks, fail running ones, stop every worker process.

        Running tasks' futures fail with ``BrokenProcessPool``; workers get SIGTERM, then
        SIGKILL after a short grace.  The executor is shut down afterwards.
        """
        self._stop_workers(TERMINATE, wait)

    def _stop_workers(self, operation: str, wait: bool) -> None:
        """Abort all work and signal every worker (``operation``: the ``Process`` method that
        sends the signal); the dispatcher takes the deaths for the stop, not for crashes."""
        dispatcher = self._dispatcher
        with self._shutdown_lock:
            self._shutdown_thread = True
            dispatcher.shutting_down = True
            dispatcher.terminate_requested = True
            dispatcher.wakeup()
            # Signal now, from this thread: no worker may start another item while the
            # dispatcher wakes up (it escalates to SIGKILL and reaps them).
            for process in list(self._processes.values()):
                try:
                    getattr(process, operation)()
                except (OSError, ValueError):  # pragma: no cover - already reaped or closed
                    pass
        thread = self._executor_manager_thread
        if wait and thread is not None and thread is not threading.current_thread():
            thread.join()

    def _stop_now(self) -> None:
        self.terminate()  # do not make the user wait for work nobody will collect

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        dispatcher = self._dispatcher
        dropped: list[Future[Any]] = []
        with self._shutdown_lock:
            self._shutdown_thread = True
            dispatcher.shutting_down = True
            if cancel_futures:
                # Like the stdlib, whose call queue already holds (and runs) a few items
                # beyond the running ones: the next ``max_workers`` queued tasks still run.
                kept: Deque[_Piece] = deque()
                grace = self._max_workers
                for piece in dispatcher.pending:
                    if piece.job.started:
                        kept.append(piece)
                    elif grace > 0:
                        grace -= 1
                        kept.append(piece)
                    else:
                        dropped.append(piece.job.future)
                dispatcher.pending = kept
            dispatcher.wakeup()
        # Cancelled after the lock is released: cancelling runs done-callbacks, which may
        # submit, shut down, terminate or cancel (the lock is not reentrant).
        for future in dropped:
            cancel_dropped(future)
        thread = self._executor_manager_thread
        if wait and thread is not None and thread is not threading.current_thread():
            thread.join()

    shutdown.__doc__ = ProcessPoolExecutor.shutdown.__doc__


StatefulProcessExecutor = StatefulProcessPoolExecutor
