"""The worker process: initialise once, then serve Runs from its pipe until told to stop.

Guarantee: whatever a task raises fails that item alone; the worker keeps serving.  The
worker also keeps its progress cell current (see :class:`~.wire.ProgressCells`), so that if
it dies, or overruns a limit, the dispatcher can tell which item was running, without a
message per item.  An untracked batch (an ``imap`` chunk on its first attempt) skips those
per-item writes, which would cost as much as a tiny task itself, and marks the whole batch
``UNTRACKED`` instead.
"""

from __future__ import annotations

import itertools
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import time
from concurrent.futures._base import LOGGER
from typing import Any, Callable, Optional

from .. import _shm
from .._passing import call_item
from ..errors import WorkerStopping
from ..stateful import (
    WorkerContext,
    WorkerLike,
    build_worker,
    close_worker,
    set_process_context,
)
from . import groups, memory, parent_death, wire
from .wire import PHASE, RESIDENT, STARTED

Connection = multiprocessing.connection.Connection
#: this worker's progress cell: a view of doubles (typeshed types memoryview items as int)
Cell = Any
Outcomes = tuple[list[Any], Optional[dict[int, BaseException]]]

# This process's shared-memory transport to the parent (a worker has one connection): Runs
# come in through ``_receiver``, Results go out through ``_sender``'s arena.
_sender = _shm.Sender(0)
#: write resident memory to the progress cell after each Run (max_memory_per_child is set)
_measure_memory = False
_receiver = _shm.Receiver()


def worker_main(
    slot: int,
    conn: Connection,
    progress: Any,
    spec: Optional[WorkerLike],
    initializer: Optional[Callable[..., object]],
    initargs: tuple[Any, ...],
    die_with_parent: bool,
    shm_threshold: int = 0,
    measure_memory: bool = False,
) -> None:
    """Entry point of worker process ``slot`` (the target of its ``Process``)."""
    global _sender, _measure_memory
    _measure_memory = measure_memory
    groups.lead_own_group()  # first: whatever a task starts joins the group the pool signals
    # Ctrl-C reaches the whole process group: the parent decides what stops, not us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Never outlive the parent, nor let the group do so.  Before any user code (which may
    # take long); with none, once we have reported ready: the guard's thread costs a new
    # worker a little, and a one-shot script waits for its workers' reports.  Until then a
    # parent death shows as the end of our pipe, and nothing we could leave behind has run.
    guarded = initializer is not None or spec is not None
    if guarded:
        parent_death.guard(die_with_parent)
    cell = wire.ProgressCells(progress).cell(slot)
    cell[PHASE] = wire.IDLE
    # Made after the first cell write: a death before it is still a launch failure.
    _sender = _shm.Sender(shm_threshold, tag=f"results-{slot}")
    set_process_context(WorkerContext(slot, None))
    if initializer is not None:
        try:
            initializer(*initargs)
        except BaseException as exc:
            LOGGER.critical("Exception in initializer:", exc_info=True)
            _send(conn, wire.InitFailed(wire.wrap_exception(exc), in_spec=False))
            return
    instance = None
    if spec is not None:
        try:
            instance = build_worker(spec)
            set_process_context(WorkerContext(slot, instance))
        except BaseException as exc:
            _send(conn, wire.InitFailed(wire.wrap_exception(exc), in_spec=True))
            return
    _send(conn, wire.Ready())
    if not guarded:
        parent_death.guard(die_with_parent)
    _serve_then_close(conn, cell, instance)


def _serve_then_close(conn: Connection, cell: Cell, instance: object) -> None:
    """Serve Runs until told to stop (a Stop, a SIGTERM, or the parent gone), then close the
    worker's object once; a SIGTERM leaves with the signal's exit status."""
    global _stopping
    try:
        # From now on a SIGTERM unwinds the running task (see WorkerStopping); while starting
        # it still ends the process at once, so a stopped start never reports an InitFailed.
        # Both ends inside the ``try``: a WorkerStopping raised anywhere else would reach
        # multiprocessing, which prints it.
        signal.signal(signal.SIGTERM, _stop_gracefully)
        _serve(conn, cell)
        # Serving is over (a Stop, or the parent is gone): a SIGTERM from now on (say
        # ``terminate()`` as the pool winds down) has no task to unwind, and lets close()
        # finish within the grace period.
        _stopping = True
    except WorkerStopping:
        close_worker(instance)
        _exit_stopped()
    close_worker(instance)


_stopping = False  # a SIGTERM has started the unwinding, or serving is over: drop SIGTERMs


def _stop_gracefully(_signum: int, _frame: Any) -> None:
    """SIGTERM handler: raise :class:`WorkerStopping` in whatever runs (a task, or our own
    wait for work); one unwinding only, the pool's SIGKILL follows its grace period.

    Later SIGTERMs (the pool may signal the group twice: ``terminate()``'s caller and the
    dispatcher) are dropped here, not by switching to ``SIG_IGN``: Python reports a signal
    that arrived while its handler was being replaced as an ``OSError`` ("ignored due to
    race condition") raised into the unwinding."""
    global _stopping
    if _stopping:
        return
    _stopping = True
    raise WorkerStopping("the pool is stopping this worker process")


def _exit_stopped() -> None:
    """The stop has unwound: exit as the SIGTERM would have (the exit status says so)."""
    sys.stdout.flush()
    sys.stderr.flush()
    # Python switches a handler in two steps (its own table, then the kernel's); a second
    # SIGTERM landing between them is reported as "ignored due to race condition", a
    # traceback on the user's terminal for the very signal we are about to exit by.
    sys.unraisablehook = _quiet_about_signal_races
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)
    os._exit(1)  # pragma: no cover - SIGTERM blocked by the task


def _quiet_about_signal_races(unraisable: Any) -> None:
    """Drop the ``OSError`` Python reports for a signal that arrived while its handler was
    being replaced; report anything else as usual."""
    error = unraisable.exc_value
    if isinstance(error, OSError) and "race condition" in str(error):
        return
    sys.__unraisablehook__(unraisable)


def _serve(conn: Connection, cell: Cell) -> None:
    # Read inline: the parent never sends a Run ahead that its socket buffer cannot hold
    # whole (see the prefetch rule in slots.py), so our sends and its sends never block on
    # each other, and no reader thread hop sits on every round trip.
    while True:
        cell[PHASE] = wire.IDLE
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return  # the parent is gone
        cell[PHASE] = wire.RECEIVING
        try:
            run = _receiver.decode(data, lambda: _shm.recv_fd(conn))
        except _shm.DescriptorLost:
            return  # the parent is gone
        except BaseException as exc:
            _reraise_stop(exc)
            _send(conn, wire.Unreadable(wire.wrap_exception(exc)))
            continue
        del data
        if isinstance(run, wire.Stop):
            return
        if run.stream:
            _run_streaming(conn, run, cell)
        else:
            _run_batch(conn, run, cell)
        del run


def _run_batch(conn: Connection, run: wire.Run, cell: Cell) -> None:
    start = time.perf_counter()
    if run.track or run.mode == wire.CALL:
        values, errors = _loop_tracked(run, cell)
    else:
        cell[PHASE] = wire.UNTRACKED
        values, errors = _loop_untracked(run)
    elapsed = time.perf_counter() - start
    cell[PHASE] = wire.SENDING
    if _measure_memory:  # before the results: the dispatcher reads it when they arrive
        cell[RESIDENT] = memory.resident_bytes()
    _send_results(conn, values, errors, elapsed, last=True)


def _loop_untracked(run: wire.Run) -> Outcomes:
    # map() calls fn at C speed; a per-item progress write would double the cost of tiny
    # tasks.  list.extend keeps what it appended before fn raised, so len(values) is the
    # failing item's index, and map resumes after it from the shared iterator.
    fn, items, count = run.fn, iter(run.items), len(run.items)
    mapper = itertools.starmap if run.mode == wire.STAR else map
    values: list[Any] = []
    errors: Optional[dict[int, BaseException]] = None
    while True:
        try:
            values.extend(mapper(fn, items))
            if len(values) == count:
                return values, errors
            # Short: the task raised StopIteration, which map() takes for its own end, so
            # extend() swallowed it (the exception object is gone).  Fail that item.
            exc: BaseException = _task_stop_iteration()
        except BaseException as raised:
            _reraise_stop(raised)
            exc = raised
        if errors is None:
            errors = {}
        errors[len(values)] = wire.wrap_exception(exc)
        values.append(None)


def _task_stop_iteration() -> StopIteration:
    return StopIteration(
        "the task raised StopIteration (its value and traceback are not kept on the fast "
        "path that runs a chunk)"
    )


def _loop_tracked(run: wire.Run, cell: Cell) -> Outcomes:
    fn, mode, items = run.fn, run.mode, run.items
    values: list[Any] = []
    append = values.append
    errors: Optional[dict[int, BaseException]] = None
    count = len(items)
    index = 0
    at = PHASE  # a local: this loop writes it once per item
    # One hot loop per mode, with the ``try`` outside, resumed after a failing item.
    while index < count:
        current = index
        try:
            if mode == wire.SINGLE:
                for current in range(index, count):
                    cell[at] = current
                    append(fn(items[current]))
            elif mode == wire.STAR:
                for current in range(index, count):
                    cell[at] = current
                    append(fn(*items[current]))
            else:
                for current in range(index, count):
                    cell[at] = current
                    args, kwargs = items[current]
                    append(fn(*args, **kwargs))
            break
        except BaseException as exc:
            _reraise_stop(exc)
            if errors is None:
                errors = {}
            errors[current] = wire.wrap_exception(exc)
            append(None)
            index = current + 1
    return values, errors


def _run_streaming(conn: Connection, run: wire.Run, cell: Cell) -> None:
    fn, mode, last_index = run.fn, run.mode, len(run.items) - 1
    for index, item in enumerate(run.items):
        # Start time first: a reader that sees the new index also sees its start time.
        cell[STARTED] = time.monotonic()
        cell[PHASE] = index
        start = time.perf_counter()
        errors: Optional[dict[int, BaseException]] = None
        try:
            value = call_item(fn, item, mode)
        except BaseException as exc:
            _reraise_stop(exc)
            value, errors = None, {0: wire.wrap_exception(exc)}
        elapsed = time.perf_counter() - start
        if _measure_memory and index == last_index:
            cell[RESIDENT] = memory.resident_bytes()
        _send_results(conn, [value], errors, elapsed, last=index == last_index)
        del value, errors


def _send_results(
    conn: Connection,
    values: list[Any],
    errors: Optional[dict[int, BaseException]],
    elapsed: float,
    last: bool,
) -> None:
    try:
        message = _sender.encode(wire.Results(values, errors, elapsed, last))
    except BaseException as problem:
        _reraise_stop(problem)
        # Some value does not pickle: it fails alone, the others still go.
        for index, value in enumerate(values):
            try:
                wire.dumps(value)
            except BaseException as exc:
                _reraise_stop(exc)
                if errors is None:
                    errors = {}
                errors[index] = wire.wrap_exception(exc)
                values[index] = None
        message = _sender.encode(wire.Results(values, errors, elapsed, last))
    conn.send_bytes(message.data)
    if message.fd is not None:
        _shm.send_fd(conn, message.fd)


def _reraise_stop(exc: BaseException) -> None:
    """A stop is never an item's outcome: it ends the worker (see ``_stop_gracefully``)."""
    if isinstance(exc, WorkerStopping):
        raise exc


def _send(conn: Connection, message: object) -> None:
    conn.send_bytes(wire.dumps(message))
