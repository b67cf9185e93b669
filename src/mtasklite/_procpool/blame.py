"""Verdicts: what a death, an overrun or an unreadable message means for the work in flight.

Every function here is pure: it takes what the dispatcher observed (slot state, progress
cell, which items were reported) and returns what to do, so each rule can be read, and
tested, without starting a process.  The dispatcher applies the verdicts.

The rules, in short:
- only the item that was running when a worker died is charged (``WorkerCrashedError``);
  every other unreported item runs again;
- when the cell cannot name that item (an untracked batch; a death while unpickling a Run
  or pickling its results), the items run again, tracked or one by one, so that a crash
  that repeats names its item, and one that does not repeat is survived;
- a piece sent ahead never started: it goes back whole, charged nothing;
- a death during initialisation breaks the pool (a respawned worker would only die again),
  unless some process of the slot got ready before: its initializer and spec then work, so
  a death while rebuilding (the OOM killer, say) is survived, like a death between items;
- too many deaths in a row that resolved nothing break the pool;
- a death is confirmed by pid, not by a sentinel or pipe alone: a task may close those while
  its process runs on, and a process it forked may hold them open after it died.
"""

from __future__ import annotations

import enum
import signal
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, NamedTuple, Optional

from .._task_text import timeout_error as task_timeout_error
from ..errors import (
    DeserializationError,
    TaskTimeoutError,
    WorkerCrashedError,
    WorkerInitError,
    abrupt_exit_cause,
)
from .jobs import Span
from .slots import SlotState
from .wire import RECEIVING, SENDING, UNTRACKED

#: a slot whose worker dies this many times in a row outside any task breaks the pool
MAX_DEATHS_IN_A_ROW = 3
#: seconds between exit checks by pid of a worker whose death is expected (stopped, killed)
#: or whose pipes hung up while it still ran
DEATH_POLL = 0.02
#: seconds between exit checks by pid of every worker while work is outstanding: a worker's
#: sentinel and pipe stay open while a process it forked lives on, so they may never report
SLOW_DEATH_POLL = 0.5

WHILE_RUNNING = "while running this task"
WHILE_PICKLING = "while receiving this task or sending its result"


# --- which item is running --------------------------------------------------------------------


def running_item(phase: float, reported: int) -> Optional[int]:
    """Index (within the piece) of the item a worker is running now, per its progress cell
    ``phase``, if it has not reported that item yet (``reported`` items came back)."""
    if phase < 0 or phase < reported:
        return None
    return int(phase)


def item_deadline(
    phase: float, reported: int, started: float, timeout: float, now: float
) -> tuple[Optional[int], float]:
    """The running item and when its limit passes.  Between items the next start is unknown
    but cannot be earlier than ``now``."""
    running = running_item(phase, reported)
    return running, (now if running is None else started) + timeout


def death_poll_interval(
    expecting_death: bool, work_outstanding: bool, until_slow_poll: float
) -> Optional[float]:
    """How soon to check workers' exits by pid again (``None``: no need).  Often while a
    death is expected or a worker hung up its pipes; now and then while work is outstanding
    (a death its sentinel never reports); not at all when every worker is idle."""
    if expecting_death:
        return DEATH_POLL
    if work_outstanding:
        return max(0.0, until_slow_poll)
    return None


# --- retiring -----------------------------------------------------------------------------


def retires(
    done_items: int, max_tasks: Optional[int], resident: float, max_memory: Optional[int]
) -> bool:
    """Whether a worker that just finished a piece is replaced by a fresh process: it ran its
    ``max_tasks_per_child`` budget, or holds more than ``max_memory_per_child`` resident
    bytes (0: not measured, never a reason).  The piece's results stand either way."""
    if max_tasks is not None and done_items >= max_tasks:
        return True
    return max_memory is not None and resident > max_memory


# --- deaths -------------------------------------------------------------------------------


class Breakage(enum.Enum):
    """Why a death breaks the whole pool."""

    INIT = "a worker could not initialise"
    CRASH = "on_worker_crash='break'"
    DEATHS = "a worker keeps dying outside any task"


class Death(NamedTuple):
    """What the dispatcher knows when it finds a worker process dead.

    Item positions are indices in the job (``piece.start`` already added)."""

    state: SlotState  # the slot's state at that moment
    unreported: Optional[Span]  # the piece's items not reported yet (None: no piece)
    accepted_until: int  # overrun (KILLING): the item that overran, already failed
    phase: float  # the progress cell
    running: Optional[int]  # the item the cell says was running, if it names one
    init_failed: bool  # the worker reported InitFailed before exiting
    ever_ready: bool  # some process of this slot got ready before
    winding_down: bool  # shutting down, terminated or broken
    pool_broken: bool
    work_waiting: bool  # the backlog holds work (a piece sent ahead is back in it already)
    break_on_crash: bool
    deaths_in_a_row: int  # before this one


class Verdict(NamedTuple):
    requeue: tuple[Span, ...]  # back to the front of the backlog, in this order
    charged: Optional[int]  # the item that fails with WorkerCrashedError
    during: str  # what the worker was doing when it died (for the error)
    breaks: Optional[Breakage]
    deaths_in_a_row: int
    respawn: bool  # start a fresh process in the slot


def judge_death(death: Death) -> Verdict:
    """The verdict on a worker process found dead (see the module docstring)."""
    starting = death.state is SlotState.STARTING and not death.winding_down
    if death.init_failed or (starting and not starting_death_is_a_crash(death.ever_ready)):
        return Verdict((), None, "", Breakage.INIT, death.deaths_in_a_row, False)
    crashed_in_task = death.unreported is not None and death.state is not SlotState.KILLING
    if death.break_on_crash and crashed_in_task:  # the job fails with the whole pool
        return Verdict((), None, "", Breakage.CRASH, 0, False)
    charged, during, spans, resolved = _judge_piece(death)
    requeue = tuple(span for span in spans if span.start < span.stop)
    deaths = death.deaths_in_a_row
    breaks = None
    if resolved:
        deaths = 0
    elif starting or (death.state in (SlotState.IDLE, SlotState.BUSY) and not death.winding_down):
        # Died while idle, between items or rebuilding a spec that built before: nothing to
        # blame, but a worker that keeps dying this way would be respawned for ever.
        deaths += 1
        if deaths >= MAX_DEATHS_IN_A_ROW:
            breaks = Breakage.DEATHS
    respawn = (
        breaks is None
        and not death.pool_broken
        and (not death.winding_down or death.work_waiting or bool(requeue))
    )
    return Verdict(requeue, charged, during, breaks, deaths, respawn)


def starting_death_is_a_crash(ever_ready: bool) -> bool:
    """Whether a worker that died while starting, without reporting a failure, is a crash to
    survive (respawn, within ``MAX_DEATHS_IN_A_ROW``) rather than proof that the slot cannot
    start (``WorkerInitError``): it is once some process of the slot got ready, since its
    initializer and spec then demonstrably work (it was killed while rebuilding)."""
    return ever_ready


def _judge_piece(death: Death) -> tuple[Optional[int], str, tuple[Span, ...], bool]:
    """(charged item, during what, spans to re-run, whether an item was resolved) for the
    piece a dead worker held; resolved is ``False`` when the death fell between items."""
    lost = death.unreported
    if lost is None:
        return None, "", (), False
    start, stop = lost.start, lost.stop
    several = stop - start > 1
    if death.state is SlotState.KILLING:  # overrun: the late item already failed
        late = death.accepted_until
        return None, "", (Span(start, min(late, stop)), Span(late + 1, stop)), True
    if death.running is not None:
        culprit, during = death.running, WHILE_RUNNING
    elif death.phase == UNTRACKED and several:
        # Some item of an untracked batch killed it: run them again, tracked.
        return None, "", (Span(start, stop, track=True),), True
    elif death.phase in (RECEIVING, SENDING) and several:
        # Unpickling the Run or pickling its results killed it: the items go back one by
        # one, so a repeat crash names the culprit.
        return None, "", tuple(Span(i, i + 1) for i in range(start, stop)), True
    elif death.phase in (UNTRACKED, RECEIVING, SENDING):
        culprit = start  # a lone item is the culprit
        during = WHILE_RUNNING if death.phase == UNTRACKED else WHILE_PICKLING
    else:  # between items: nothing of ours was running, so nothing is charged
        return None, "", (Span(start, stop),), False
    # Items before the culprit ran, but their results died with the worker: run them again.
    return culprit, during, (Span(start, culprit), Span(culprit + 1, stop)), True


# --- unreadable messages ------------------------------------------------------------------


class Remedy(enum.Enum):
    SPLIT = "re-queue the unreported items one by one and free the slot"
    FAIL_REST = "fail every unreported item with the error and free the slot"
    FAIL_ONE = "fail the one item this message reported"
    INIT_FAILED = "the worker broke before running anything: break the pool"


def unreadable_results(has_piece: bool, streaming: bool) -> Remedy:
    """A message from a worker could not be unpickled, even item by item (see
    ``salvage``).  Its items have run, and may have had side effects: never run again."""
    if not has_piece:
        return Remedy.INIT_FAILED
    if streaming:  # exactly one item's result was in this message
        return Remedy.FAIL_ONE
    return Remedy.FAIL_REST


def unreadable_run(unreported: int) -> Remedy:
    """A worker could not unpickle the Run it was sent: nothing of it ran.  Several items go
    back one by one to find the culprit; a lone item is it."""
    return Remedy.SPLIT if unreported > 1 else Remedy.FAIL_REST


# --- the errors a verdict raises ------------------------------------------------------------


def describe_exit(exitcode: Optional[int]) -> str:
    if exitcode is None:
        return "exit status unknown"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


def crash_error(slot: int, pid: int, exitcode: Optional[int], during: str) -> WorkerCrashedError:
    return WorkerCrashedError(
        f"worker {slot} (pid {pid}) died {during} ({describe_exit(exitcode)})",
        slot=slot,
        pid=pid,
        exitcode=exitcode,
    )


def broken_by_crash(pid: int, exitcode: Optional[int]) -> BrokenProcessPool:
    """``on_worker_crash="break"``: the stdlib's error, with 3.15's cause on every Python."""
    error = BrokenProcessPool(
        "A process in the process pool was terminated abruptly while the future was "
        "running or pending."
    )
    error.__cause__ = abrupt_exit_cause(pid, exitcode)
    return error


def deaths_error(slot: int, deaths: int, exitcode: Optional[int]) -> BrokenProcessPool:
    return BrokenProcessPool(
        f"worker {slot} died {deaths} times in a row outside any task (last: "
        f"{describe_exit(exitcode)}); the process pool is not usable anymore"
    )


def initialising(slot: int, spec: Optional[str]) -> str:
    """What worker ``slot`` runs while starting: building ``spec`` (its description), or the
    pool initializer when there is no spec."""
    if spec is not None:
        return f"building worker {slot} ({spec})"
    return f"the pool initializer in worker {slot}"


def init_error(what: str, error: BaseException) -> WorkerInitError:
    """``what`` (see :func:`initialising`) raised ``error``: the pool breaks."""
    failure = WorkerInitError(f"{what} failed: {error!r}; the process pool is not usable anymore")
    failure.__cause__ = error
    return failure


def start_death_error(
    slot: int,
    exitcode: Optional[int],
    reached_our_code: bool,
    what: Optional[str],
    start_method: str,
) -> WorkerInitError:
    """Worker ``slot`` died while starting without saying why: the pool breaks."""
    message = describe_start_death(slot, exitcode, reached_our_code, what, start_method)
    return WorkerInitError(f"{message}; the process pool is not usable anymore")


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
    death = f"died while starting ({describe_exit(exitcode)}), before running any task"
    if reached_our_code and initialising is not None:
        return f"{initialising} failed: the worker {death}"
    text = f"worker {index} {death}"
    if not reached_our_code and start_method in ("spawn", "forkserver"):
        text += f" (did its main module fail to import under {start_method}?)"
    return text


def unreadable_result_error(slot: int, cause: BaseException) -> DeserializationError:
    error = DeserializationError(f"a result from worker {slot} could not be unpickled: {cause!r}")
    error.__cause__ = cause
    return error


def timeout_error(
    fn: Callable[..., Any], item: Any, mode: int, timeout: float, slot: int, pid: int
) -> TaskTimeoutError:
    return task_timeout_error(
        fn, item, mode, timeout, slot, f"pid {pid}", "the worker was stopped and replaced"
    )


def terminated_error() -> BrokenProcessPool:
    return BrokenProcessPool("the process pool was terminated")
