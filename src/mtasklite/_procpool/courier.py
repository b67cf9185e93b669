"""The conversation over each slot's pipe: pieces out, results back.

Guarantee: each result lands in the item it belongs to, although no message names its
task: a slot runs its Runs in order, at most two outstanding (``piece`` and the
``next_piece`` sent ahead), so the next Results are always ``piece``'s, and its last message
promotes ``next_piece``.  Only the dispatcher thread calls this class.
"""

from __future__ import annotations

import signal
import time
from typing import Optional

from .. import _shm
from .._futures import cancel_dropped
from ..errors import DeserializationError, WorkerInitError
from ..stateful import describe_worker
from . import blame, wire
from .control import PoolControl
from .jobs import Piece, RunEncoder, Span
from .salvage import find_unrebuildable, salvage
from .slots import (
    BUSY,
    IDLE,
    STARTING,
    STOPPING,
    PoolConfig,
    Slot,
    SlotTable,
    may_send_ahead,
)
from .waiting import readable_now


class Courier:
    """Sends pieces to slots (``dispatch``, ``send_ahead``) and handles what slots send back
    (``drain``)."""

    def __init__(
        self,
        config: PoolConfig,
        control: PoolControl,
        slots: SlotTable,
    ):
        self.control = control
        self.backlog = control.backlog
        self.slots = slots
        self.max_tasks = config.max_tasks
        self.max_memory = config.max_memory
        self.stop_grace = config.stop_grace
        self.encoder = RunEncoder(control.backlog)

    # -- sending ------------------------------------------------------------------------------

    def dispatch(self) -> None:
        """Give the first queued pieces to the idle slots."""
        idle = self.slots.idle
        while idle:
            piece = self.backlog.take()
            if piece is None:
                return
            if piece.job.claim():
                self._give(idle.popleft(), piece)

    def hand_off(self, piece: Piece) -> bool:
        """Give ``piece`` to an idle slot now, from the submitting thread (which holds
        ``slots.handoff``); ``False`` if none is idle or work is queued ahead of it."""
        idle = self.slots.idle
        if not idle or self.backlog:
            return False
        if not piece.job.claim():
            return True  # cancelled already: nothing to run
        slot = idle[0]
        try:
            idle.popleft()
            self._give(slot, piece)
            if self.backlog:  # the worker died, or part of the piece waits: tell the dispatcher
                self.control.wakeup()
        except BaseException:
            # A Ctrl-C in the submitting thread, part way: what reached the worker is
            # unknown, so it is replaced rather than trusted (its death is not a crash).
            if slot.state is IDLE and slot not in idle and slot.process is not None:
                slot.stop_at(float("inf"), signal.SIGKILL)  # inf: no escalation to come
                self.control.wakeup()
            raise
        return True

    def _give(self, slot: Slot, piece: Piece) -> None:
        """Send ``piece`` to the idle ``slot``.  If its worker is gone the piece is re-queued
        (the slot stops); an unpicklable piece is failed and the slot stays idle."""
        if self.max_tasks is not None:
            self._fit_budget(slot, piece)
        sent = self._send_piece(slot, piece)
        if sent is None:
            self.slots.idle.appendleft(slot)
        elif not sent:
            slot.state, slot.kill_at = STOPPING, time.monotonic() + self.stop_grace
        else:
            slot.assign(piece)

    def _fit_budget(self, slot: Slot, piece: Piece) -> None:
        """Cut ``piece`` to what the slot's process may still run (max_tasks_per_child)."""
        assert self.max_tasks is not None
        budget = self.max_tasks - slot.done_items
        if piece.stop - piece.start > budget:
            self.backlog.requeue(piece.job, [Span(piece.start + budget, piece.stop, piece.track)])
            piece.stop = piece.start + budget

    def send_ahead(self) -> None:
        """Send each busy slot its next chunk, so it never idles while we unpickle its
        results.  Only chunks, and only once every worker is up: a single task must never
        wait behind another one while some worker could take it."""
        if self.slots.idle or not self.slots.all_up():
            return
        for slot in self.slots.all:
            if not may_send_ahead(slot):
                continue
            piece = self.backlog.take_chunk()
            if piece is None:
                return
            message = self._encode(slot, piece)
            if message is None:
                continue  # unpicklable: its items are failed or re-queued already
            if len(message.data) > slot.prefetch_bytes:
                # It might not fit in the socket buffer while the busy worker is not reading
                # (see room_for_prefetch): it waits, pickled, for the next idle worker; one
                # written into this slot's shared memory is taken back from it first.
                if piece.data is None:
                    kept = slot.sender.withdraw(message)
                    piece.data = None if kept is None else kept.data
                self.backlog.put_back(piece)
                return
            if piece.job.claim() and self._send_piece(slot, piece, message):
                slot.next_piece = piece

    def _encode(self, slot: Slot, piece: Piece) -> Optional[_shm.Outgoing]:
        """``piece`` as a message for ``slot``: the plain pickle kept from an earlier try,
        else a fresh one (big buffers in the slot's shared memory); ``None``: unpicklable."""
        if piece.data is not None:
            return _shm.Outgoing(piece.data, None)
        return self.encoder.encode(piece, slot.sender)

    def _send_piece(
        self, slot: Slot, piece: Piece, message: Optional[_shm.Outgoing] = None
    ) -> Optional[bool]:
        """Send ``piece`` (``message``: already encoded for ``slot``) to ``slot``: ``True``
        once sent; ``False`` if the worker is gone (the piece is re-queued); ``None`` if it
        could not be pickled (already reported)."""
        if message is None:
            message = self._encode(slot, piece)
        piece.data = None
        if message is None:
            return None
        assert slot.conn is not None
        try:
            slot.conn.send_bytes(message.data)
            if message.fd is not None:
                _shm.send_fd(slot.conn, message.fd)
        except OSError:  # the worker died; its sentinel will report it
            self.backlog.requeue(piece.job, [Span(piece.start, piece.stop)])
            return False
        # Shared-memory bytes count too: chunk sizes stay bounded by what items weigh.
        piece.job.nbytes += len(message.data) + message.shared_nbytes
        return True

    # -- receiving ----------------------------------------------------------------------------

    def drain(self, slot: Slot, readable: bool = False) -> None:
        """Handle every message ``slot`` has sent (``readable``: the wait just said so)."""
        conn = slot.conn
        while conn is not None and slot.conn is conn:
            try:
                if not readable and not readable_now(conn):
                    return
                readable = False
                data = conn.recv_bytes()
            except (EOFError, OSError):
                # The worker is exiting (its sentinel reports it), or it closed its end while
                # running on: stop waiting on a pipe that stays readable; watch its pid too.
                if slot.process is not None:
                    self.slots.pipe_closed.add(slot.process.pid)
                return
            self._on_message(slot, data)

    def _on_message(self, slot: Slot, data: bytes) -> None:
        conn = slot.conn
        assert conn is not None
        try:
            message = slot.receiver.decode(data, lambda: _shm.recv_fd(conn))
        except _shm.DescriptorLost:
            return  # the worker died sending it: its sentinel reports the death
        except BaseException as exc:
            self._unreadable_results(slot, exc, data)
            return
        del data
        if isinstance(message, wire.Results):
            self.record(slot, message)
        elif isinstance(message, wire.Ready):
            if slot.state is STARTING:
                slot.state = IDLE
                self.slots.idle.append(slot)
            if not slot.ever_ready:
                slot.ever_ready = True
                self.control.notify_ready()
        elif isinstance(message, wire.Unreadable):
            self._unreadable_run(slot, message.error)
        elif isinstance(message, wire.InitFailed):
            # Acted on when the process has exited, so whatever it did while failing (its
            # log records, say) is complete before callers see the pool break.
            slot.init_failure = message

    def record(self, slot: Slot, results: wire.Results) -> None:
        piece = slot.piece
        if piece is None:
            return
        count = len(results.values)
        first = slot.received
        slot.received += count
        keep = min(count, slot.accept - first)  # an overrun item and later ones are dropped
        slot.counters.add_results(max(0, keep), results.errors, results.elapsed)
        piece.job.add_results(piece.start + first, results, keep)
        if results.last and slot.state is BUSY:
            self._piece_done(slot)

    def _piece_done(self, slot: Slot) -> None:
        piece = slot.piece
        assert piece is not None
        slot.piece = None
        slot.deaths_in_a_row = 0
        slot.done_items += piece.stop - piece.start
        if slot.next_piece is not None:  # already sent: the worker is on it now
            slot.assign(slot.next_piece)
            slot.next_piece = None
            return
        resident = self.slots.cells.resident(slot.index)
        if blame.retires(slot.done_items, self.max_tasks, resident, self.max_memory):
            self._retire(slot)
        else:
            slot.state = IDLE
            self.slots.idle.append(slot)
        self.control.idle_workers.release()

    def _retire(self, slot: Slot) -> None:
        """``max_tasks_per_child`` or ``max_memory_per_child`` reached: stop this process
        (gracefully: it closes its object), start a fresh one in its place."""
        self.slots.retire(slot)
        if not self.control.should_stop() or self.backlog:
            with self.control.lock:
                self.slots.start(slot)

    def _unreadable_results(self, slot: Slot, exc: BaseException, data: bytes) -> None:
        piece = slot.piece
        if piece is None:
            break_pool(self.control, self.slots, init_error(slot, exc, slot.spec is not None))
            return
        if self._salvage_results(slot, data):
            return
        remedy = blame.unreadable_results(True, piece.job.timeout is not None)
        error = blame.unreadable_result_error(slot.index, exc)
        if remedy is blame.Remedy.FAIL_ONE:
            last = slot.received + 1 >= piece.stop - piece.start
            self.record(slot, wire.Results([None], {0: error}, 0.0, last))
        else:
            self._finish_piece_with(slot, error, exc)

    def _salvage_results(self, slot: Slot, data: bytes) -> bool:
        """Record a batch of results ``loads`` refused, failing only the items whose outcome
        cannot be rebuilt here (nothing runs twice); ``False`` if it cannot be read even so."""
        try:
            message, stand_ins = salvage(data)
        except BaseException:  # whatever the bytes run while read (sys.exit() too) stays here
            return False
        if not isinstance(message, wire.Results) or not stand_ins:
            return False
        values, errors = list(message.values), dict(message.errors or {})
        for index, value in enumerate(values):
            bad = find_unrebuildable(value)
            if bad is None and index in errors:
                bad = find_unrebuildable(errors[index])
            if bad is not None:
                values[index] = None
                errors[index] = blame.unreadable_result_error(slot.index, bad.error)
        self.record(slot, wire.Results(values, errors or None, message.elapsed, message.last))
        return True

    def _unreadable_run(self, slot: Slot, cause: BaseException) -> None:
        piece = slot.piece
        unreported = 0 if piece is None else piece.stop - slot.unreported
        if blame.unreadable_run(unreported) is blame.Remedy.SPLIT:
            self._split_piece(slot)  # nothing ran; the items come back one by one
            return
        error = DeserializationError(f"worker {slot.index} could not unpickle the task: {cause!r}")
        self._finish_piece_with(slot, error, cause)

    def _split_piece(self, slot: Slot) -> None:
        """Re-queue the unreported items of ``slot``'s piece one by one; free the slot."""
        piece = slot.piece
        assert piece is not None
        spans = [Span(index, index + 1) for index in range(slot.unreported, piece.stop)]
        self.backlog.requeue(piece.job, spans)
        slot.received = piece.stop - piece.start
        self._piece_done(slot)

    def _finish_piece_with(self, slot: Slot, error: BaseException, cause: object) -> None:
        """Fail every unreported item of ``slot``'s piece with ``error``; free the slot."""
        piece = slot.piece
        if piece is None:
            return
        if isinstance(cause, BaseException):
            error.__cause__ = cause
        for index in range(slot.unreported, piece.stop):
            piece.job.fail_item(index, error)
        slot.received = piece.stop - piece.start
        self._piece_done(slot)

    # -- stopping -----------------------------------------------------------------------------

    def stop_cancelled(self) -> None:
        """Callers cancelled running futures (``cancel_running``): drop what is queued of
        them and stop the workers running them."""
        for future in self.backlog.drop_cancelled():
            cancel_dropped(future)  # no lock held: this runs the future's callbacks
        kill_at = time.monotonic() + self.stop_grace
        for slot in self.slots.all:
            piece = slot.piece
            if slot.state is BUSY and piece is not None and piece.job.future.cancelled():
                # Stopped like an overrun, but nothing is charged or re-queued: the whole
                # job is cancelled.  The slot respawns when its process is reaped.
                slot.piece = None
                slot.stop_at(kill_at)


def break_pool(control: PoolControl, slots: SlotTable, error: BaseException) -> None:
    """Fail every queued and running future with ``error`` and stop all workers (the first
    time the pool breaks; later calls do nothing)."""
    if control.mark_broken(error):
        control.backlog.abort(error, cancel_queued=False)
        slots.abort(error)


def init_error(slot: Slot, error: BaseException, in_spec: bool) -> WorkerInitError:
    """The error that breaks the pool when ``slot``'s worker reported that its spec
    (``in_spec``) or the pool initializer raised ``error``."""
    spec = describe_worker(slot.spec) if in_spec and slot.spec is not None else None
    return blame.init_error(blame.initialising(slot.index, spec), error)
