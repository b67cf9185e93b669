"""What passes between the dispatcher and a worker process: messages and progress cells.

Messages go over the slot's pipe, one small named type per kind.  A slot runs its Runs in
order and never has more than two outstanding, so no message carries a task id: the
dispatcher always knows which piece of work the next :class:`Results` belong to.

Progress cells are the second channel: a shared array in which each worker writes, without
a message, what it is doing (its *phase*: an item index, or one of the negative values
below) and when its current timed item started.  The dispatcher reads them when a worker
dies or may have overrun its limit.
"""

from __future__ import annotations

import io
import pickle
import traceback
from concurrent.futures.process import _RemoteTraceback
from multiprocessing.reduction import ForkingPickler
from typing import Any, Callable, NamedTuple, Optional, Sequence

from .._passing import Passing
from ..errors import RemoteError

# How a Run's items become calls (see ``_passing.call_item``): plain ints on the wire, so a
# Run pickles no enum reference.
SINGLE = int(Passing.SINGLE)
STAR = int(Passing.STAR)
CALL = int(Passing.CALL)

# Phases a worker writes to its progress cell besides item indices >= 0.
IDLE = -1.0  # waiting for work
RECEIVING = -2.0  # reading and unpickling a Run
SENDING = -3.0  # pickling and sending a batch of results
UNTRACKED = -4.0  # running a Run's items without naming each one (see ``Run.track``)
LAUNCHING = -5.0  # set by the parent before a start; the worker's code has not run yet


# --- parent -> worker -----------------------------------------------------------------------


class Run(NamedTuple):
    """Run ``fn`` over ``items``.  ``stream`` sends each outcome at once and stamps each
    item's start time (timed work needs both); otherwise one batch comes back at the end.
    ``track`` writes each item's index to the progress cell before running it, so a death
    names its item; an untracked batch runs at C speed and writes ``UNTRACKED`` once."""

    fn: Callable[..., Any]
    items: Sequence[Any]
    mode: int
    stream: bool
    track: bool


class Stop(NamedTuple):
    """Exit after the current work (never sent to a busy worker)."""


# --- worker -> parent -----------------------------------------------------------------------


class Ready(NamedTuple):
    """Initialisation succeeded; the worker takes work."""


class InitFailed(NamedTuple):
    """The ``initializer`` (``in_spec`` false) or the worker spec failed; the worker exits."""

    error: BaseException
    in_spec: bool


class Results(NamedTuple):
    """Outcomes of the next ``len(values)`` items of the current Run, in order."""

    values: list[Any]
    errors: Optional[dict[int, BaseException]]  # index within this batch -> exception
    elapsed: float  # seconds spent in the task function
    last: bool  # the Run is finished


class Unreadable(NamedTuple):
    """The worker could not unpickle the Run it was sent; nothing of it ran."""

    error: BaseException


# --- progress cells -------------------------------------------------------------------------

#: offsets within one slot's cell
PHASE = 0  # the item index being run, or one of the phases above
STARTED = 1  # time.monotonic() when the current timed item started
RESIDENT = 2  # resident bytes after the worker's last Run (0: not measured)
CELL_SIZE = 3


class ProgressCells:
    """One cell of ``CELL_SIZE`` doubles per slot, in memory shared with every worker.

    Guarantee: a reader that sees a worker's new item index in ``PHASE`` also sees that
    item's start time (the worker writes ``STARTED`` first).  The array itself is what a
    worker process receives; each worker writes only its own cell (:meth:`cell`).
    """

    def __init__(self, array: Any):
        # The shared block (picklable while spawning a process): a ``multiprocessing.heap``
        # buffer, as under ``RawArray`` but without ``ctypes``, whose import costs a
        # one-shot script 2 ms.
        self.array = array
        self._doubles = array.create_memoryview().cast("d")

    @classmethod
    def allocate(cls, slots: int) -> ProgressCells:
        from multiprocessing import heap

        cells = cls(heap.BufferWrapper(CELL_SIZE * slots * 8))
        cells._doubles.cast("B")[:] = bytes(CELL_SIZE * slots * 8)  # a reused block is dirty
        return cells

    def cell(self, slot: int) -> Any:
        """Slot ``slot``'s cell, as a writable view of its doubles (index with PHASE and
        STARTED); the worker's hot loop writes it directly."""
        base = CELL_SIZE * slot
        return self._doubles[base : base + CELL_SIZE]

    def set_phase(self, slot: int, phase: float) -> None:
        self._doubles[CELL_SIZE * slot + PHASE] = phase

    def phase(self, slot: int) -> float:
        return float(self._doubles[CELL_SIZE * slot + PHASE])

    def started(self, slot: int) -> float:
        return float(self._doubles[CELL_SIZE * slot + STARTED])

    def resident(self, slot: int) -> float:
        return float(self._doubles[CELL_SIZE * slot + RESIDENT])


# --- serialisation --------------------------------------------------------------------------


def dumps(obj: object) -> bytes:
    """Pickle with multiprocessing's reducers (connections, shared memory handles, ...)."""
    buf = io.BytesIO()
    ForkingPickler(buf, pickle.HIGHEST_PROTOCOL).dump(obj)
    return buf.getbuffer().tobytes()


def cloud_dumps(obj: object) -> Optional[bytes]:
    """Pickle by value with cloudpickle when it is installed (lambdas, closures, __main__)."""
    try:
        import cloudpickle  # type: ignore[import-not-found, import-untyped, unused-ignore]
    except ImportError:
        return None
    return cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)  # type: ignore[no-any-return]


def has_cloudpickle() -> bool:
    try:
        import cloudpickle  # type: ignore[import-not-found, unused-ignore]  # noqa: F401
    except ImportError:
        return False
    return True


loads = pickle.loads


class _ExceptionWithTraceback:
    """Carries an exception and its formatted traceback; unpickles as the exception with the
    remote traceback chained as ``__cause__`` (the stdlib's ``_RemoteTraceback`` type)."""

    def __init__(self, exc: BaseException, tb: str):
        self.exc = exc
        self.tb = tb

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild_exception, (self.exc, self.tb)


def _rebuild_exception(exc: BaseException, tb: str) -> BaseException:
    exc.__cause__ = _RemoteTraceback(tb)  # type: ignore[arg-type]  # stub says traceback
    return exc


def wrap_exception(exc: BaseException) -> Any:
    """Make ``exc`` safe to send: keep its type when it survives a pickle round trip, else
    stand in with :class:`~mtasklite.RemoteError`; either way attach the traceback text."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    tb = f'\n"""\n{tb}"""'
    exc.__traceback__ = None
    try:
        loads(dumps(exc))
    except BaseException as problem:
        name = f"{type(exc).__module__}.{type(exc).__qualname__}"
        stand_in = RemoteError(name, f"{exc} (not sendable: {problem!r})")
        return _ExceptionWithTraceback(stand_in, tb)
    return _ExceptionWithTraceback(exc, tb)
