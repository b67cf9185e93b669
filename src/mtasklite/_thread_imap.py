"""One-item-per-task ``imap`` on the thread pool, without a future per item.

At ``chunksize=1`` a tiny task costs far less than its future, work item and queue hand-off.
Here the consumer's ``next()`` pulls input into a shared deque of cells, and up to
``max_workers`` *drainers* (ordinary tasks in the pool's queue) pop cells one at a time, run
them and write the outcome into the cell.  Each item is still its own task: a free thread
takes the next item at once, and no item waits behind a slow one.

  consumer (next())                         pool threads
  pulls input -> _Cell -> todo (deque) ---> drainer: popleft, run fn, fill in the cell
              \\-> fifo (ordered)                      (unordered: append to ``finished``)
  waits on ``cond`` for fifo[0] / finished <-- notify, only while ``waiting`` is set

Bounds and fairness: at most ``limit`` cells are pulled and not yet yielded.  The consumer
refills only once half the window is drained (but before fewer cells than workers are
left), so drainers see batches, and a drainer returns its thread to the pool after ``batch``
items, queueing its successor behind other work submitted meanwhile, which is not starved.

Races, and how they are settled:
- The consumer sleeps while a drainer finishes the awaited item: the consumer sets
  ``waiting`` before it checks the cell (under ``lock``); the drainer fills the cell before it
  reads ``waiting``.  Under the GIL one of the two sees the other's write, and the notify
  takes ``lock``, so it cannot slip in between the consumer's check and its wait.
- The last drainer finds ``todo`` empty as the consumer adds cells: drainers never decide
  about their successors.  Their done-callbacks only lower ``active`` and notify under
  ``lock``; the consumer starts drainers (outside ``lock``: submitting takes the pool's lock,
  and ``shutdown`` runs these callbacks while holding it) before every wait.
- The pool drops its queued work (``shutdown(cancel_futures=True)``, a broken pool): it sets
  ``_stop_draining``, which running drainers check before each item; queued drainers are
  cancelled or failed, and their callback gives their place back.
- The pool refuses a new drainer (shut down, broken) while others still run: a drainer
  may be finishing the very cell the consumer waits for, so the refusal is kept and raised
  only once no drainer is active and the cell is still not done.
- Closing the iterator clears ``todo``: no further item starts; running ones finish and are
  dropped.
"""

from __future__ import annotations

import concurrent.futures
import functools
import threading
import time
import weakref
from collections import deque
from concurrent.futures import Future
from typing import Any, Callable, Deque, Iterable, Iterator, Optional, Protocol

from ._outcomes import task_outcome
from ._passing import Passing, input_items, passing_for
from ._result_iterators import INTERRUPT_POLL, ResultIterator, guarded, wrap_results
from ._worker_stats import Tally

__all__ = ["DrainHost", "drained_imap"]

#: fewest items a drainer runs before it hands its thread back to the pool's queue (it runs
#: a window's worth when the window is larger)
_MIN_BATCH = 16


class DrainHost(Protocol):
    """What the drainers need of their executor (the stateful thread pool)."""

    _max_workers: int
    #: set when the pool drops its queued work (broken, ``cancel_futures``): drainers start
    #: no further item
    _stop_draining: bool

    def _submit_timed(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: Optional[float],
    ) -> Future[Any]: ...

    def _check_accepting(self, after_shutdown: str = ...) -> None: ...

    def _accepting(self) -> bool: ...

    def _is_broken(self) -> bool: ...

    def _broken_error(self) -> BaseException: ...


class _Cell:
    """One input item and, once run, its outcome."""

    __slots__ = ("done", "error", "index", "item", "value")

    def __init__(self, index: int, item: Any):
        self.index = index
        self.item = item
        self.value: Any = None
        self.error: Optional[BaseException] = None
        self.done = False


class _DrainWindow:
    """The shared state of one ``imap`` call (see the module docstring)."""

    def __init__(
        self,
        executor: DrainHost,
        fn: Callable[..., Any],
        iterables: tuple[Iterable[Any], ...],
        limit: int,
        ordered: bool,
    ):
        # Held until the iteration ends: cells may still need a drainer after the input is
        # exhausted (the executor's own threads keep it alive until then anyway).
        self.executor: DrainHost = executor
        self.executor_ref = weakref.ref(executor)  # still there after cancel_all (Ctrl-C)
        self.fn = fn
        self.star = passing_for(iterables) is Passing.STAR
        self.source: Iterator[Any] = input_items(iterables)
        self.limit = limit
        self.max_drainers: int = executor._max_workers
        # Refill in steps of up to half the window, but never let fewer cells than workers
        # remain out before refilling: a small window must keep every worker busy.
        self.low_water: int = limit - max(1, min(limit // 2, limit - self.max_drainers))
        self.batch = max(_MIN_BATCH, limit)
        self.ordered = ordered
        self.todo: Deque[_Cell] = deque()  # pulled, not started
        self.fifo: Deque[_Cell] = deque()  # ordered: pulled, not yielded, oldest first
        self.finished: Deque[_Cell] = deque()  # unordered: run, not yielded
        self.outstanding = 0  # unordered: pulled, not yielded
        self.pulled = 0
        self.exhausted = False
        self.input_error: Optional[BaseException] = None
        # Reentrant: a signal handler calling shutdown(cancel_futures=True) runs a cancelled
        # drainer's callback in the consumer's thread, maybe while it holds this lock.
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self.waiting = False
        self.active = 0  # drainers submitted whose future is not done
        self.refusal: Optional[BaseException] = None  # why the pool took no further drainer

    # -- consumer side -------------------------------------------------------------------------

    def fill(self) -> None:
        """Pull input until ``limit`` cells are out; each one gets a drainer at once (an
        input may wait for earlier items to run)."""
        if self.exhausted:
            return
        todo, fifo, source, ordered = self.todo, self.fifo, self.source, self.ordered
        room = self.limit - (len(fifo) if ordered else self.outstanding)
        first = self.pulled
        while room > 0:
            try:
                item = next(source)
            except StopIteration:
                self.exhausted = True
                return
            except Exception as exc:  # raised to the consumer after the items before it
                self.input_error = exc
                self.exhausted = True
                return
            if self.pulled == first:
                # As submit does: a new item needs an open pool (checked before it is
                # queued, so no drainer still running can take it after a shutdown).
                self.executor._check_accepting()
            cell = _Cell(self.pulled, item)
            del item
            self.pulled += 1
            todo.append(cell)
            if ordered:
                fifo.append(cell)
            else:
                self.outstanding += 1
            del cell
            if self.active < self.max_drainers:
                self.start_drainers()
            room -= 1

    def needs_fill(self) -> bool:
        if self.exhausted:
            return False
        return (len(self.fifo) if self.ordered else self.outstanding) <= self.low_water

    def start_drainers(self) -> None:
        """Give waiting cells drainers: one more per waiting cell, at most one per thread.

        Active drainers may all be busy running a cell, so a waiting cell gets a drainer of
        its own while threads are left (one that finds nothing to do ends at once)."""
        started = 0
        while self.refusal is None:
            with self.lock:
                if self.active >= self.max_drainers or started >= len(self.todo):
                    return
            try:
                self.submit_drainer(self.executor)
            except BaseException as exc:
                if self.executor._accepting():
                    raise  # not the pool refusing work (no thread could start, say)
                self._refused(exc)
                return
            started += 1

    def submit_drainer(self, executor: DrainHost) -> None:
        """Queue one drainer, counted in ``active`` until its future is done."""
        with self.lock:
            self.active += 1
        try:
            future = executor._submit_timed(_drain, (weakref.ref(self),), {}, None)
        except BaseException:
            with self.lock:
                self.active -= 1
            raise
        future.add_done_callback(functools.partial(_drainer_done, weakref.ref(self)))

    def _refused(self, exc: BaseException) -> None:
        self.refusal = exc
        if self.executor._stop_draining:
            # The pool dropped its queued work (broken, or cancel_futures): so are the cells
            # nobody started, each failing as its future would.  Running ones still finish.
            broken = self.executor._is_broken()
            while True:
                try:
                    cell = self.todo.popleft()
                except IndexError:
                    break
                cell.item = None
                cell.error = (
                    self.executor._broken_error() if broken else concurrent.futures.CancelledError()
                )
                cell.done = True
                if not self.ordered:
                    self.finished.append(cell)
        # Otherwise (shut down, queue kept) running drainers may still finish what we wait
        # for: they do not stop at their batch end then, and wait() raises the refusal
        # once none is left.

    def wait(self, deadline: Optional[float]) -> None:
        """Block until the next result is ready (ordered: the oldest cell)."""
        while True:
            with self.lock:
                # ``waiting`` first, then the check: see the module docstring.
                self.waiting = True
                try:
                    if self._ready():
                        return
                    if self.refusal is not None and not self.active:
                        # What we wait for is not running (a running cell keeps its drainer
                        # active) and no drainer can start: the pool refused.
                        raise self.refusal
                    if (
                        self.refusal is not None
                        or not self.todo
                        or self.active >= self.max_drainers
                    ):
                        if deadline is None:
                            timeout = INTERRUPT_POLL  # wake now and then to see a late Ctrl-C
                        else:
                            timeout = min(INTERRUPT_POLL, deadline - time.monotonic())
                            if timeout <= 0:
                                raise concurrent.futures.TimeoutError()
                        self.cond.wait(timeout)
                        continue
                finally:
                    self.waiting = False
            self.start_drainers()  # cells wait with no drainer (one ended): start one first

    def _ready(self) -> bool:
        if self.ordered:
            return self.fifo[0].done
        return bool(self.finished)

    def interrupt_target(self) -> object:
        return self.executor_ref()

    def cancel_all(self) -> None:
        """Start no further item; forget every cell."""
        self.todo.clear()
        self.fifo.clear()
        self.finished.clear()
        self.exhausted = True
        self.executor = None  # type: ignore[assignment]


# The drainer and its callback reach the window through a weak reference, and drop their
# strong ones before they return: a task's exception kept by the caller keeps every frame
# below it alive (and the done-callback stays on the drainer's future), and none of them may
# keep the window, and with it the executor and its threads, alive.


def _drain(window_ref: weakref.ref[_DrainWindow]) -> Optional[Tally]:
    """A drainer: run cells until ``todo`` is empty or the batch is used up; what it ran is
    reported for ``worker_stats()``."""
    window = window_ref()
    executor = None if window is None else window.executor  # None once the iteration ended
    if window is None or executor is None:
        return None
    todo, fn, star, ordered, finished = (
        window.todo,
        window.fn,
        window.star,
        window.ordered,
        window.finished,
    )
    left = window.batch
    ran = failed = 0
    start = time.perf_counter()
    try:
        while True:
            if executor._stop_draining:
                break  # the pool dropped its queued work: these items are queued work too
            if left == 0:
                left = window.batch
                if todo:
                    try:
                        window.submit_drainer(executor)
                    except Exception:
                        pass  # none can start (shut down): finish the window ourselves
                    else:
                        break  # a successor waits in the pool's queue, behind other work
            left -= 1
            try:
                cell = todo.popleft()
            except IndexError:
                break
            ran += 1
            try:
                cell.value = fn(*cell.item) if star else fn(cell.item)
            except BaseException as exc:
                cell.error = exc
                failed += 1
            cell.item = None
            cell.done = True
            if not ordered:
                finished.append(cell)
            del cell
            if window.waiting:
                with window.cond:
                    window.cond.notify()
    finally:
        del window, executor, todo, fn, finished
    return Tally(ran, failed, time.perf_counter() - start)


def _drainer_done(window_ref: weakref.ref[_DrainWindow], _: Future[Any]) -> None:
    # Also for drainers that never ran: their place is free either way.
    window = window_ref()
    if window is not None:
        with window.cond:
            window.active -= 1
            window.cond.notify()


def _outcome(cell: _Cell, return_exceptions: bool) -> Any:
    """A finished cell's value, or its error (raised, or returned with ``return_exceptions``)."""
    error = cell.error
    if error is None:
        return cell.value
    if return_exceptions:
        return error
    raise task_outcome(error)


# The generators yield straight from _outcome: no local of theirs keeps a result alive while
# they are suspended.


def _ordered(
    window: _DrainWindow, deadline: Optional[float], return_exceptions: bool, indexed: bool
) -> Iterator[Any]:
    fifo = window.fifo
    position = 0
    while True:
        if window.needs_fill():
            window.fill()
        if not fifo:
            return
        if not fifo[0].done:
            window.wait(deadline)
        if indexed:
            yield position, _outcome(fifo.popleft(), return_exceptions)
        else:
            yield _outcome(fifo.popleft(), return_exceptions)
        position += 1


def _unordered(
    window: _DrainWindow, deadline: Optional[float], return_exceptions: bool, indexed: bool
) -> Iterator[Any]:
    finished = window.finished
    while True:
        if window.needs_fill():
            window.fill()
        if not window.outstanding:
            return
        if not finished:
            window.wait(deadline)
        window.outstanding -= 1
        if indexed:
            index = finished[0].index
            yield index, _outcome(finished.popleft(), return_exceptions)
        else:
            yield _outcome(finished.popleft(), return_exceptions)


def drained_imap(
    executor: DrainHost,
    fn: Callable[..., Any],
    iterables: tuple[Iterable[Any], ...],
    *,
    ordered: bool,
    timeout: Optional[float],
    buffersize: int,
    return_exceptions: bool,
    indexed: bool,
) -> ResultIterator[Any]:
    """The result iterator of a one-item-per-task ``imap`` on ``executor``."""
    window = _DrainWindow(executor, fn, iterables, buffersize, ordered)
    deadline = None if timeout is None else time.monotonic() + timeout
    run = _ordered if ordered else _unordered
    return wrap_results(
        guarded(window, run(window, deadline, return_exceptions, indexed)), iterables
    )
