"""Worker slots: slot ``i`` always runs worker spec ``i``, in one process at a time.

A slot's life: EMPTY -> STARTING (process started, building its object) -> IDLE <-> BUSY
(running a piece) -> STOPPING (told to exit) or KILLING (being stopped: overrun, cancelled,
terminated) -> EMPTY when the dispatcher reaps the process, and then maybe STARTING again
with a fresh process and the same spec.

Guarantee: the dispatcher knows at every moment which piece each slot runs, which of its
items have been reported, and (through the progress cell) which item is running now.
"""

from __future__ import annotations

import enum
import multiprocessing.connection
import os
import signal
import socket
import threading
import time
from collections import deque
from typing import Any, Callable, Deque, NamedTuple, Optional

from .. import _shm
from .._worker_stats import SlotCounters, WorkerStats
from ..stateful import WorkerLike, spec_for
from . import groups, wire
from .child import worker_main
from .jobs import Piece, copy_error, set_exception
from .memory import resident_bytes

#: seconds a stopped worker gets to unwind (``finally`` blocks, ``with`` exits, teardown)
#: between SIGTERM and SIGKILL, unless the executor's ``stop_grace`` says otherwise
DEFAULT_STOP_GRACE = 1.0
#: the send buffer asked for on the parent's end of each worker's socket pair (the kernel
#: caps it at net.core.wmem_max); a quarter of what it grants bounds a Run sent ahead
SEND_BUFFER = 1 << 20


class PoolConfig(NamedTuple):
    """What the pool was built with; fixed for its life."""

    ctx: Any  # a multiprocessing context (its stubs lack Process and RawArray)
    name: str  # prefix of the thread and process names
    workers: int
    specs: Optional[list[WorkerLike]]  # one per slot, or None
    initializer: Optional[Callable[..., object]]
    initargs: tuple[Any, ...]
    max_tasks: Optional[int]  # items a process runs before it is replaced
    break_on_crash: bool  # on_worker_crash="break"
    cancel_running: bool  # Future.cancel() stops running work
    shm_threshold: int  # bytes of out-of-band buffers that go through shared memory (0: never)
    stop_grace: float = DEFAULT_STOP_GRACE  # seconds between SIGTERM and SIGKILL
    max_memory: Optional[int] = None  # resident bytes above which a process is replaced

    @property
    def prefetch(self) -> bool:
        """Send a busy worker its next chunk ahead (off where a slot's work is counted or
        stopped piece by piece)."""
        return self.max_tasks is None and self.max_memory is None and not self.cancel_running


class SlotState(enum.Enum):
    EMPTY = "empty"
    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    KILLING = "killing"
    STOPPING = "stopping"


EMPTY, STARTING, IDLE, BUSY, KILLING, STOPPING = SlotState  # the hot loop compares these


class Slot:
    """Worker ``index``: its spec, and while started, its process, pipe and piece."""

    __slots__ = (
        "accept",
        "conn",
        "counters",
        "deaths_in_a_row",
        "done_items",
        "ever_ready",
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
        "spec",
        "state",
    )

    def __init__(self, index: int, spec: Optional[WorkerLike]):
        self.index = index
        self.spec = spec
        self.state = EMPTY
        self.process: Any = None
        self.conn: Optional[multiprocessing.connection.Connection] = None
        self.prefetch_bytes = 0  # largest Run that may be sent ahead (see room_for_prefetch)
        self.done_items = 0  # items run by the current process (max_tasks_per_child)
        self.ever_ready = False  # some process of this slot has built its object
        self.deaths_in_a_row = 0  # deaths that resolved no item, since the last that did
        self.init_failure: Optional[wire.InitFailed] = None  # reported, process not yet gone
        self.kill_at = 0.0  # KILLING: when to escalate to SIGKILL (inf: SIGKILL sent)
        # The piece being run: ``received`` of its items reported so far, of which the first
        # ``accept`` count (an overrun item and those after it are dropped).
        self.piece: Optional[Piece] = None
        self.received = 0
        self.accept = 0
        self.next_piece: Optional[Piece] = None  # sent ahead, runs after ``piece``
        self.counters = SlotCounters()  # for worker_stats()
        # Shared memory for big buffers (see _shm): Runs out, Results in; new per process.
        self.sender = _shm.Sender(0)
        self.receiver = _shm.Receiver()

    def close_transport(self) -> None:
        """Unmap this slot's shared memory (the worker's own mappings stay valid)."""
        self.sender.close()
        self.receiver.close()

    def assign(self, piece: Piece) -> None:
        """``piece`` is what the worker runs now."""
        self.state, self.piece, self.received = BUSY, piece, 0
        self.accept = piece.stop - piece.start

    @property
    def unreported(self) -> int:
        """Index in the job of the first item of ``piece`` not reported yet."""
        assert self.piece is not None
        return self.piece.start + self.received

    def escalate(self, now: float) -> None:
        """KILLING or STOPPING: SIGKILL once the grace after SIGTERM or Stop is over (a
        ``close()`` that never returns must not hold up shutdown)."""
        if now >= self.kill_at and self.process is not None:
            groups.signal_worker(self.process, signal.SIGKILL)
            self.kill_at = float("inf")

    def stop_at(self, kill_at: float, signum: int = signal.SIGTERM) -> None:
        """Signal now (SIGTERM unless told otherwise); the dispatcher sends SIGKILL at
        ``kill_at`` if it is still alive."""
        self.state, self.kill_at = KILLING, kill_at
        groups.signal_worker(self.process, signum)


class Remains(NamedTuple):
    """What a slot held when its process was found dead."""

    process: Any
    state: SlotState
    piece: Optional[Piece]
    received: int  # items of ``piece`` reported
    accept: int  # items of ``piece`` whose results count (fewer after an overrun)
    next_piece: Optional[Piece]


class SlotTable:
    """Every slot of the pool, their processes, and the processes retired but not reaped.

    ``processes`` (pid -> process, as the stdlib keeps it) and ``fresh`` change under the
    pool's lock; otherwise only the dispatcher thread touches a slot once it has started.
    """

    def __init__(self, config: PoolConfig):
        self.config = config
        self.all = [Slot(i, spec_for(config.specs, i)) for i in range(config.workers)]
        self.cells = wire.ProgressCells.allocate(config.workers)
        self.processes: dict[int, Any] = {}
        self.idle: Deque[Slot] = deque()  # ready for a piece, in the order they became so
        self.retiring: list[Any] = []  # stopped processes not yet reaped
        self.kill_retired_at: dict[int, float] = {}  # pid -> when to SIGKILL a retired one
        self.fresh = 0  # slots started at least once (callers start them in index order)
        # Held by the dispatcher thread whenever it is not waiting, and by a submitting
        # thread that hands a task straight to an idle worker (Dispatcher.hand_off), so the
        # two never change a slot at once.  Others only try it (never block on it): a
        # submit from a done-callback or from pickling code queues its task instead.
        self.handoff = threading.Lock()
        # pids whose sentinel hung up while the process still ran (it closed its descriptors):
        # no longer waited on (it stays readable), checked by pid instead
        self.hung_up: set[int] = set()
        # pids whose pipe reached its end: the pipe is no longer read, but the sentinel is
        # still waited on, so an exiting worker (the usual reason) is seen at once
        self.pipe_closed: set[int] = set()

    # -- starting -----------------------------------------------------------------------------

    def start_fresh(self) -> None:
        """Start the next never-started slot (a caller thread, under the pool's lock)."""
        slot = self.all[self.fresh]
        self.start(slot, die_with_parent=threading.current_thread() is threading.main_thread())
        self.fresh += 1  # only once it started: a failed start is retried by the next caller

    def start(self, slot: Slot, die_with_parent: bool = True) -> None:
        """Start (or restart) ``slot``'s process.  Callers hold the pool's lock."""
        config = self.config
        parent_end, child_end = config.ctx.Pipe(duplex=True)
        threshold = config.shm_threshold if _shm.can_pass_descriptors(parent_end) else 0
        # Overwritten by the worker's first line of our code: a death before that happened
        # while the process was still being set up (importing the main module, ...).
        self.cells.set_phase(slot.index, wire.LAUNCHING)
        process = config.ctx.Process(
            target=worker_main,
            name=f"{config.name}-worker-{slot.index}",
            args=(
                slot.index,
                child_end,
                self.cells.array,
                slot.spec,
                config.initializer,
                config.initargs,
                die_with_parent,
                threshold,
                config.max_memory is not None,
            ),
        )
        try:
            process.start()
        except BaseException:
            parent_end.close()
            child_end.close()
            raise
        child_end.close()
        slot.counters.starts += 1
        slot.prefetch_bytes = room_for_prefetch(parent_end)
        slot.close_transport()
        slot.sender = _shm.Sender(threshold, tag=f"runs-{slot.index}")
        slot.receiver = _shm.Receiver()
        slot.process, slot.conn, slot.state = process, parent_end, STARTING
        slot.piece, slot.done_items = None, 0
        self.processes[process.pid] = process

    def stats(self) -> list[WorkerStats]:
        """One record per slot (any thread: a snapshot, see :mod:`mtasklite._worker_stats`)."""
        records = []
        for slot in self.all:
            process = slot.process  # read once: the dispatcher may clear it meanwhile
            pid = None if process is None else process.pid
            resident = self.cells.resident(slot.index) if self.config.max_memory else 0.0
            if not resident and pid is not None:
                resident = resident_bytes(str(pid))
            known = int(resident) if resident and pid is not None else None
            records.append(slot.counters.snapshot(slot.index, pid, known))
        return records

    def all_ready(self) -> bool:
        return all(slot.ever_ready for slot in self.all)

    def all_up(self) -> bool:
        """Every slot has a process that finished initialising."""
        return not any(slot.state is EMPTY or slot.state is STARTING for slot in self.all)

    # -- stopping -----------------------------------------------------------------------------

    def send_stop(self, slot: Slot) -> None:
        """Ask an idle worker to exit."""
        try:
            assert slot.conn is not None
            slot.conn.send_bytes(wire.dumps(wire.Stop()))
        except OSError:
            pass  # already dead: the sentinel reports it
        if slot in self.idle:
            self.idle.remove(slot)
        slot.state = STOPPING
        slot.kill_at = time.monotonic() + self.config.stop_grace  # to tear down, then SIGKILL

    def retire(self, slot: Slot) -> None:
        """Let ``slot``'s process exit in the background; the slot is EMPTY at once."""
        process = slot.process
        self.send_stop(slot)
        if slot.conn is not None:
            slot.conn.close()
        slot.close_transport()
        self.processes.pop(process.pid, None)
        self.retiring.append(process)
        self.kill_retired_at[process.pid] = slot.kill_at
        slot.process, slot.conn, slot.state = None, None, EMPTY

    def sentinel_fired(self, sentinel: int) -> None:
        """A retired process's sentinel fired: it exited, or only closed its descriptors;
        either way :meth:`collect_exited` finds out by pid."""
        for process in self.retiring:
            if process.sentinel == sentinel:
                self.hung_up.add(process.pid)

    def collect_exited(self) -> None:
        """Forget the retired processes that have exited (checked by pid, never blocking)."""
        now = time.monotonic()
        for process in list(self.retiring):
            if process.exitcode is not None:
                process.join()  # returns at once: it has exited
                groups.kill_leftovers(process.pid)
                self.retiring.remove(process)
                self.forget_pid(process.pid)
                self.kill_retired_at.pop(process.pid, None)
            elif now >= self.kill_retired_at.get(process.pid, now):
                groups.signal_worker(process, signal.SIGKILL)  # its teardown overran the grace
                self.kill_retired_at[process.pid] = float("inf")

    def checked_by_pid(self, pid: int) -> bool:
        """Whether ``pid``'s sentinel or pipe hung up, so its exit is watched by pid."""
        return pid in self.hung_up or pid in self.pipe_closed

    def forget_pid(self, pid: int) -> None:
        """``pid`` has been reaped: it may be reused by a new process."""
        self.hung_up.discard(pid)
        self.pipe_closed.discard(pid)

    def clear_dead(self, slot: Slot) -> Remains:
        """The process of ``slot`` has exited (its ``exitcode`` is known): close its pipe and
        make the slot EMPTY; what it held is returned for the dispatcher to judge."""
        process = slot.process
        process.join()  # returns at once: it has exited
        groups.kill_leftovers(process.pid)
        self.forget_pid(process.pid)
        self.processes.pop(process.pid, None)
        if slot.conn is not None:
            slot.conn.close()
        slot.close_transport()
        remains = Remains(
            process, slot.state, slot.piece, slot.received, slot.accept, slot.next_piece
        )
        slot.process, slot.conn, slot.state = None, None, EMPTY
        slot.piece = slot.next_piece = None
        if slot in self.idle:
            self.idle.remove(slot)
        return remains

    def terminate_all(self, signum: int = signal.SIGTERM) -> None:
        """SIGTERM (or ``signum``) every live worker now, SIGKILL after the grace period."""
        kill_at = time.monotonic() + self.config.stop_grace
        for slot in self.all:
            if slot.process is not None and slot.state is not EMPTY:
                slot.stop_at(kill_at, signum)
        self.idle.clear()

    def abort(self, error: BaseException, signum: int = signal.SIGTERM) -> None:
        """Fail the futures of every piece the slots hold with a copy of ``error``, and
        stop every worker (``signum`` first)."""
        for slot in self.all:
            for held in (slot.piece, slot.next_piece):
                if held is not None:
                    set_exception(held.job.future, copy_error(error))
            slot.piece = slot.next_piece = None
        self.terminate_all(signum)

    def reap_all_blocking(self) -> None:
        for slot in self.all:
            if slot.process is not None:
                slot.process.join(self.config.stop_grace)
                if slot.process.is_alive():
                    groups.signal_worker(slot.process, signal.SIGKILL)
                    slot.process.join()
                groups.kill_leftovers(slot.process.pid)
                self.processes.pop(slot.process.pid, None)
                slot.process, slot.state = None, EMPTY

    def close(self) -> None:
        for process in self.retiring:
            process.join()
            groups.kill_leftovers(process.pid)
        self.retiring.clear()
        for slot in self.all:
            if slot.conn is not None:
                slot.conn.close()
                slot.conn = None
            slot.close_transport()

    # -- waiting ------------------------------------------------------------------------------

    def waitables(self) -> tuple[dict[Any, Slot], dict[int, Optional[Slot]]]:
        """Pipes to read, by slot; process sentinels, by slot (``None``: a retired process).
        Hung-up pipes and sentinels are left out: they would stay readable."""
        conns: dict[Any, Slot] = {}
        sentinels: dict[int, Optional[Slot]] = {}
        hung_up, pipe_closed = self.hung_up, self.pipe_closed
        for slot in self.all:
            pid = None if slot.state is EMPTY else slot.process.pid
            if pid is not None and pid not in hung_up:
                if slot.conn is not None and pid not in pipe_closed:
                    conns[slot.conn] = slot
                sentinels[slot.process.sentinel] = slot
        for process in self.retiring:
            if process.pid not in hung_up:
                sentinels[process.sentinel] = None
        return conns, sentinels

    def death_watch(self) -> tuple[bool, bool]:
        """(a process is about to exit (stopped, killed, retired) or hung up its pipes; a
        worker is up and could die unseen), for the death poll."""
        expecting, outstanding = bool(self.retiring), False
        for slot in self.all:
            state = slot.state
            if state is KILLING or state is STOPPING:
                expecting = True
            elif state is not EMPTY:
                # Idle ones too: a submitting thread may hand one a task while we wait.
                outstanding = True
            if slot.process is not None and self.checked_by_pid(slot.process.pid):
                expecting = True
        return expecting, outstanding


def room_for_prefetch(conn: multiprocessing.connection.Connection) -> int:
    """Widen the parent's send buffer to a worker; the largest Run that may be sent ahead.

    The prefetch rule: a busy worker does not read its pipe, so a Run sent ahead must fit
    in the socket buffer beside the one the worker is reading, or the send would wait for
    the worker while the worker waits for us to read its results.  A quarter of the buffer
    always fits.  0 (never send ahead) if the connection is not a socket."""
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


def may_send_ahead(slot: Slot) -> bool:
    """``slot`` may be sent its next piece now: it runs an untimed piece (a timed one needs
    its progress cell per piece) and holds nothing ahead yet."""
    current = slot.piece
    return (
        slot.state is BUSY
        and slot.next_piece is None
        and current is not None
        and current.job.timeout is None
    )
