"""Work waiting for a worker: jobs, the pieces they are cut into, and the backlog.

A *job* is one future's worth of work: a ``submit`` call (one item) or an ``imap`` chunk
(many).  A *piece* is a contiguous range of one job's items, sent to one slot as one Run;
a job starts as one piece and is cut into more only when something goes wrong (a death, an
overrun, an unpicklable item).  The *backlog* is the queue of pieces waiting for a slot.

Guarantee: a job's future is settled exactly once, when its last item is resolved, and a
cancelled or already failed job is never sent again.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future, InvalidStateError, _base
from typing import Any, Callable, Deque, Iterable, NamedTuple, Optional, Sequence

from .. import _shm
from .._futures import TaskFuture, cancel_dropped
from .._outcomes import task_outcome
from ..errors import TaskPicklingError
from ..windowing import ChunkResult
from . import wire


def set_result(future: Future[Any], value: Any) -> None:
    # No done() check first: a caller's cancel() (cancel_running) may land between the check
    # and the set; the future keeps whichever outcome came first.
    try:
        future.set_result(value)
    except InvalidStateError:
        pass


def set_exception(future: Future[Any], error: BaseException) -> None:
    try:
        future.set_exception(error)
    except InvalidStateError:
        pass


def copy_error(error: BaseException) -> BaseException:
    """A fresh exception of the same type and message, with the same cause (each future and
    each refused caller gets its own instance)."""
    copy = type(error)(*error.args)
    copy.__cause__ = error.__cause__
    return copy


class StoppableFuture(TaskFuture[Any]):
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


class Job:
    """One future's worth of work and the outcomes of its items gathered so far."""

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
        self.mode = mode  # a wire mode: SINGLE, STAR or CALL
        self.timeout = timeout
        self.is_call = is_call  # the future's result is the value, not a ChunkResult
        self.values: list[Any] = [None] * len(items)
        self.errors: dict[int, BaseException] = {}
        self.remaining = len(items)
        self.elapsed = 0.0
        self.nbytes = 0
        self.started = False  # its future is RUNNING

    def claim(self) -> bool:
        """Mark the job running before a piece of it is sent; ``False`` if it must be
        skipped instead (cancelled while queued, or already settled)."""
        if not self.started:
            if not self.future.set_running_or_notify_cancel():
                return False
            self.started = True
            return True
        return not self.future.done()  # a re-queued rest of a job that failed or was cancelled

    def add_results(self, offset: int, results: wire.Results, keep: int) -> None:
        """Take the first ``keep`` outcomes of ``results`` for items ``offset`` onwards."""
        self.elapsed += results.elapsed
        if keep <= 0:
            return
        if keep == self.remaining == len(self.values):
            self.values = results.values  # the common case: one message carries the job
        else:
            self.values[offset : offset + keep] = results.values[:keep]
        if results.errors:
            for index, error in results.errors.items():
                if index < keep:
                    self.errors[offset + index] = error
        self.remaining -= keep
        if self.remaining == 0:
            self.complete()

    def fail_item(self, index: int, error: BaseException) -> None:
        self.values[index] = None
        self.errors[index] = error
        self.remaining -= 1
        if self.remaining == 0:
            self.complete()

    def complete(self) -> None:
        if self.is_call:
            error = self.errors.get(0)
            if error is None:
                set_result(self.future, self.values[0])
            else:  # a KeyboardInterrupt from the task is its outcome, not a Ctrl-C here
                set_exception(self.future, task_outcome(error))
        else:
            result = ChunkResult(self.values, self.errors or None, self.elapsed, self.nbytes)
            set_result(self.future, result)
        self.items = self.values = []  # drop references the caller no longer needs
        self.fn = None  # type: ignore[assignment]


class Piece:
    """Items ``start:stop`` of a job, sent to one slot as one Run.  ``track``: the worker
    names each item before running it (set when re-running after an unattributed death)."""

    __slots__ = ("data", "job", "start", "stop", "track")

    def __init__(self, job: Job, start: int, stop: int, track: bool = False):
        self.job = job
        self.start = start
        self.stop = stop
        self.track = track
        self.data: Optional[bytes] = None  # the pickled Run, once made (kept if not sent)
        # (only a plain pickle is kept: one in a slot's shared memory is that slot's alone)


class Span(NamedTuple):
    """Items ``start:stop`` of some job, to be re-queued (``track``: run tracked)."""

    start: int
    stop: int
    track: bool = False


class Backlog:
    """Pieces waiting for a slot, in order; caller threads add, the dispatcher takes.

    Guarantee: each operation is atomic (one lock), and pieces put back go to the front, in
    the order given, so re-run work goes before new work.

    Unbounded, like the stdlib's pending work items: ``submit`` never blocks, and ``imap``
    bounds what it submits with its own window.  Pieces leave it only for a slot that can
    run them at once (or the one Run a busy slot may hold ahead), so a queued future can
    still be cancelled.
    """

    def __init__(self) -> None:
        self._pieces: Deque[Piece] = deque()
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self._pieces)

    def __len__(self) -> int:
        return len(self._pieces)

    def add(self, piece: Piece) -> None:
        with self._lock:
            self._pieces.append(piece)

    def take(self) -> Optional[Piece]:
        with self._lock:
            return self._pieces.popleft() if self._pieces else None

    def take_chunk(self) -> Optional[Piece]:
        """The first piece if it is an untimed ``imap`` chunk (work that may wait behind
        another in a busy worker), else ``None``."""
        with self._lock:
            if not self._pieces:
                return None
            head = self._pieces[0].job
            if head.is_call or head.timeout is not None:
                return None
            return self._pieces.popleft()

    def put_back(self, piece: Piece) -> None:
        with self._lock:
            self._pieces.appendleft(piece)

    def requeue(self, job: Job, spans: Iterable[Span]) -> None:
        """Put ``spans`` of ``job`` (empty ones skipped) back at the front, in order."""
        pieces = [Piece(job, span.start, span.stop, span.track) for span in spans]
        with self._lock:
            for piece in reversed(pieces):
                if piece.start < piece.stop:
                    self._pieces.appendleft(piece)

    def drop_cancelled(self) -> list[Future[Any]]:
        """Drop the pieces whose future was cancelled while queued; their futures are
        returned, for the caller to notify once it holds no lock (see ``cancel_dropped``)."""
        with self._lock:
            return self._keep(lambda piece: not piece.job.future.cancelled())

    def cancel_unstarted(self, grace: int) -> list[Future[Any]]:
        """``shutdown(cancel_futures=True)``: drop the jobs that never started, except the
        first ``grace`` pieces (the stdlib's call queue also runs a few beyond the running).
        Their futures are returned, for the caller to cancel once it holds no lock."""
        left = [grace]

        def keep(piece: Piece) -> bool:
            if piece.job.started:
                return True
            left[0] -= 1
            return left[0] >= 0

        with self._lock:
            return self._keep(keep)

    def _keep(self, wanted: Callable[[Piece], bool]) -> list[Future[Any]]:
        kept: Deque[Piece] = deque()
        dropped: list[Future[Any]] = []
        for piece in self._pieces:
            if wanted(piece):
                kept.append(piece)
            else:
                dropped.append(piece.job.future)
        self._pieces = kept
        return dropped

    def abort(self, error: BaseException, cancel_queued: bool) -> None:
        """Empty the backlog: jobs never started are cancelled (``cancel_queued``) or fail
        with a copy of ``error``, like those already running."""
        with self._lock:
            pieces, self._pieces = list(self._pieces), deque()
        for piece in pieces:
            job = piece.job
            if not job.started and cancel_queued:
                cancel_dropped(job.future)
            elif job.started or job.future.set_running_or_notify_cancel():
                job.started = True
                set_exception(job.future, copy_error(error))


class RunEncoder:
    """Pickles pieces into Runs: plain pickle first, cloudpickle for what needs it.

    Guarantee: an item that cannot be sent fails alone with ``TaskPicklingError``; the
    sendable items around it go back to the backlog.
    """

    def __init__(self, backlog: Backlog):
        self._backlog = backlog
        self._cloud_fn: Any = None  # last function that needed cloudpickle: skip pickle

    def encode(self, piece: Piece, sender: _shm.Sender) -> Optional[_shm.Outgoing]:
        """The pickled Run, its big buffers written through ``sender`` (the shared memory of
        the slot it goes to), or ``None`` when it cannot be pickled (its items are failed or
        re-queued already)."""
        job = piece.job
        items = job.items
        if piece.start or piece.stop != len(items):
            items = items[piece.start : piece.stop]
        run = wire.Run(job.fn, items, job.mode, job.timeout is not None, piece.track)
        if job.fn is not self._cloud_fn:
            try:
                return sender.encode(run)
            except BaseException as exc:
                _reraise_ctrl_c(exc)
        try:
            data = wire.cloud_dumps(run)
        except BaseException as exc:
            _reraise_ctrl_c(exc)
            data = None
        if data is not None:
            self._cloud_fn = job.fn
            return _shm.Outgoing(data, None)
        self._fail_unpicklable(piece, items)
        return None

    def _fail_unpicklable(self, piece: Piece, items: Sequence[Any]) -> None:
        job = piece.job
        problem = pickling_problem(job.fn)
        if problem is not None:
            hint = ""
            if not wire.has_cloudpickle():
                hint = (
                    "; lambdas, closures and functions defined interactively need cloudpickle: "
                    "pip install 'mtasklite[cloudpickle]'"
                )
            error = TaskPicklingError(
                f"cannot send {job.fn!r} to a worker process: {problem}{hint}"
            )
            error.__cause__ = problem
            for index in range(piece.start, piece.stop):
                job.fail_item(index, error)
            return
        sendable: list[Span] = []
        good_from = None
        for offset, item in enumerate(items):
            index = piece.start + offset
            problem = pickling_problem(item)
            if problem is None:
                if good_from is None:
                    good_from = index
                continue
            if good_from is not None:
                sendable.append(Span(good_from, index))
                good_from = None
            error = TaskPicklingError(f"cannot send the arguments of this task: {problem}")
            error.__cause__ = problem
            job.fail_item(index, error)
        if good_from is not None:
            sendable.append(Span(good_from, piece.stop))
        self._backlog.requeue(job, sendable)


def pickling_problem(obj: object) -> Optional[BaseException]:
    """Why ``obj`` cannot be sent to a worker (``None`` if it can, cloudpickle included)."""
    try:
        wire.dumps(obj)
    except BaseException as exc:
        _reraise_ctrl_c(exc)
        try:
            if wire.cloud_dumps(obj) is not None:
                return None
        except BaseException as cloud_exc:
            _reraise_ctrl_c(cloud_exc)
        return exc
    return None


def _reraise_ctrl_c(exc: BaseException) -> None:
    """Pickling runs user code, and any exception it raises marks the object unsendable,
    except a Ctrl-C: in the main thread (a ``submit`` that hands its task to a worker
    itself) a ``KeyboardInterrupt`` is the user's, and goes on up."""
    if isinstance(exc, KeyboardInterrupt) and threading.current_thread() is threading.main_thread():
        raise exc
