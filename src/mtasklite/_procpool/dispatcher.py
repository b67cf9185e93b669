"""The dispatcher thread: one loop that waits on everything and applies the verdicts.

Guarantee: every future the pool accepted is settled (result, error or cancellation), and
every worker process it started is reaped, before the thread exits.
"""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures._base import LOGGER
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Optional

from ..stateful import describe_worker
from . import blame, groups, wire
from .control import PoolControl
from .courier import Courier, break_pool, init_error
from .jobs import Piece, Span, copy_error, set_exception
from .slots import (
    BUSY,
    EMPTY,
    IDLE,
    KILLING,
    STARTING,
    STOPPING,
    PoolConfig,
    Remains,
    Slot,
    SlotTable,
)
from .waiting import Poller


class Dispatcher:
    """Owns the slots and runs the dispatcher thread (see the package docstring)."""

    def __init__(self, config: PoolConfig, control: PoolControl):
        self.config = config
        self.control = control
        self.backlog = control.backlog
        self.slots = SlotTable(config)
        self.courier = Courier(config, control, self.slots)
        self.poller = Poller()
        self.terminated = False  # terminate() has been acted on
        self.next_slow_poll = 0.0  # when to check every worker's exit by pid next
        self.prefetch = config.prefetch

    # -- called from caller threads, under the pool's lock ------------------------------------

    def launch(self) -> threading.Thread:
        """Start the first worker (every worker with fork) and the dispatcher thread."""
        # Like the stdlib: with fork, start every worker now, before our thread exists (a
        # fork from a multi-threaded process is fragile); otherwise start them on demand.
        if self.config.ctx.get_start_method(allow_none=False) == "fork":
            self.start_all()
        else:
            self.slots.start_fresh()
        self.control.wake.open()
        thread = threading.Thread(
            target=self.run, name=f"{self.config.name}-dispatcher", daemon=True
        )
        self.control.thread = thread
        thread.start()
        return thread

    def grow(self) -> None:
        """Start one more worker unless one is idle (``submit`` grows the pool, as the
        stdlib's does)."""
        acquired = self.control.idle_workers.acquire(blocking=False)
        if not acquired and self.slots.fresh < self.config.workers:
            self.slots.start_fresh()
            self.control.wakeup()  # the dispatcher must wait on the new worker too

    def hand_off(self, piece: Piece) -> bool:
        """Send ``piece`` straight to an idle worker from the submitting thread, sparing the
        dispatcher's wakeup and one round of its loop (a quarter of a ``submit`` round trip);
        ``False``: queue it as usual.  Callers do not hold the pool's lock: pickling runs
        user code, which may call back into the pool.  Only untimed pieces
        (the dispatcher computes the item deadlines it must wake for before it waits); never
        while the dispatcher is at work (it holds ``slots.handoff``; it takes queued work
        before it waits again), nor from its own thread (a done-callback that submits)."""
        control = self.control
        if (
            piece.job.timeout is not None
            or control.stop_requests
            or control.terminate_requested
            or threading.current_thread() is control.thread
        ):
            return False
        if not self.slots.handoff.acquire(blocking=False):
            return False
        try:
            return self.courier.hand_off(piece)
        finally:
            self.slots.handoff.release()

    def start_all(self) -> None:
        while self.slots.fresh < self.config.workers:
            self.slots.start_fresh()
        self.control.wakeup()  # wait on them too (a no-op before the dispatcher thread exists)

    # -- the dispatcher thread ----------------------------------------------------------------

    def run(self) -> None:
        control, courier, wake = self.control, self.courier, self.control.wake
        handoff = self.slots.handoff
        handoff.acquire()  # released only while waiting (see hand_off)
        try:
            while True:
                wake.arm()  # before reading what callers change (see WakeupPipe)
                if control.terminate_requested and not self.terminated:
                    self._terminate()
                if control.stop_requests:
                    control.clear_stop_requests()
                    courier.stop_cancelled()
                courier.dispatch()
                if self.prefetch:
                    courier.send_ahead()
                if self._finished():
                    break
                conns, sentinels = self.slots.waitables()
                timeout = _wait_timeout(self.slots, self.next_slow_poll)
                objects = [wake.read_fd, *conns, *sentinels]
                handoff.release()
                try:
                    ready = self.poller.wait(objects, timeout)
                finally:
                    handoff.acquire()
                wake.awake(wake.read_fd in ready)
                # Results before deaths: what a worker sent before dying still counts.
                for obj in ready:
                    slot = conns.get(obj)
                    if slot is not None:
                        courier.drain(slot, readable=True)
                for obj in ready:
                    if obj in sentinels:
                        self._reap(sentinels[obj], obj)
                self._poll_deaths()
                self._enforce_deadlines()
        except BaseException as exc:  # pragma: no cover - a bug here must not hang callers
            LOGGER.critical("mtasklite dispatcher failed", exc_info=True)
            self._break(BrokenProcessPool(f"the process pool's dispatcher failed: {exc!r}"))
            self.slots.terminate_all()
            self.slots.reap_all_blocking()
        finally:
            self.slots.close()
            self.control.close()
            handoff.release()

    def _finished(self) -> bool:
        """Winding down with nothing left to run: stop the workers; ``True`` once all are
        gone."""
        if not self.control.should_stop() or self.backlog:
            return False
        for slot in self.slots.all:
            if slot.state is BUSY or slot.state is KILLING:
                return False
            if slot.state is IDLE:
                self.slots.send_stop(slot)
            elif slot.state is STARTING:
                # nothing left to do: don't wait for a slow init
                groups.signal_worker(slot.process, signal.SIGTERM)
                slot.state, slot.kill_at = STOPPING, time.monotonic() + self.config.stop_grace
        return all(slot.state is EMPTY for slot in self.slots.all) and not self.slots.retiring

    # -- overruns -----------------------------------------------------------------------------

    def _enforce_deadlines(self) -> None:
        now = time.monotonic()
        cells = self.slots.cells
        for slot in self.slots.all:
            if slot.state is KILLING or slot.state is STOPPING:
                slot.escalate(now)
            if slot.state is not BUSY or slot.piece is None:
                continue
            timeout = slot.piece.job.timeout
            if timeout is None:
                continue
            phase, started = cells.phase(slot.index), cells.started(slot.index)
            running, deadline = blame.item_deadline(phase, slot.received, started, timeout, now)
            if running is not None and now >= deadline:
                self._overrun(slot, running, timeout)

    def _overrun(self, slot: Slot, running: int, timeout: float) -> None:
        """Item ``running`` of ``slot``'s piece passed its limit: it fails now; the worker is
        stopped, and results of earlier items still arriving are kept (``accept``)."""
        piece = slot.piece
        assert piece is not None
        job = piece.job
        slot.accept = running
        slot.counters.timeouts += 1
        slot.stop_at(time.monotonic() + self.config.stop_grace)
        index = piece.start + running
        error = blame.timeout_error(
            job.fn, job.items[index], job.mode, timeout, slot.index, slot.process.pid
        )
        job.fail_item(index, error)

    # -- deaths -------------------------------------------------------------------------------

    def _poll_deaths(self) -> None:
        """Reap workers that exited without their sentinel saying so (checked by pid, never
        blocking): expected deaths and hung-up pipes at once, any worker now and then."""
        now = time.monotonic()
        slow = now >= self.next_slow_poll
        if slow:
            self.next_slow_poll = now + blame.SLOW_DEATH_POLL
        for slot in self.slots.all:
            process = slot.process
            if process is None or slot.state is EMPTY:
                continue
            expected = (
                slot.state is KILLING
                or slot.state is STOPPING
                or self.slots.checked_by_pid(process.pid)
            )
            if (expected or slow) and process.exitcode is not None:
                self._reap(slot, process.sentinel)
        if self.slots.retiring:
            self.slots.collect_exited()

    def _reap(self, slot: Optional[Slot], sentinel: int) -> None:
        """``sentinel`` fired (or a poll found the process gone): judge the death."""
        if slot is None:  # a retired process exited (or only closed its sentinel)
            self.slots.sentinel_fired(sentinel)
            return
        if slot.process is None or slot.process.sentinel != sentinel:
            return  # already reaped (and maybe restarted) in this round
        if self.control.terminate_requested and not self.terminated:
            # terminate() signalled the workers itself: this death is not a crash.
            self._terminate()
        self.courier.drain(slot)
        if not _exit_confirmed(slot.process):
            # The sentinel closed but the process runs on (a task closed its inherited
            # descriptors): never block on one worker; _poll_deaths reaps it by pid.
            self.slots.hung_up.add(slot.process.pid)
            return
        init_failure, slot.init_failure = slot.init_failure, None
        remains = self.slots.clear_dead(slot)
        if remains.state in (BUSY, IDLE, STARTING) and not self.control.terminate_requested:
            slot.counters.crashes += 1  # a death nobody asked for
        if remains.next_piece is not None:  # never started: back to the queue, uncharged
            ahead = remains.next_piece
            self.backlog.requeue(ahead.job, [Span(ahead.start, ahead.stop)])
        verdict = blame.judge_death(self._death(slot, remains, init_failure is not None))
        self._apply(slot, remains, verdict, init_failure)

    def _death(self, slot: Slot, remains: Remains, init_failed: bool) -> blame.Death:
        """What is known of the death of ``slot``'s process, for blame.judge_death."""
        piece, phase = remains.piece, self.slots.cells.phase(slot.index)
        unreported, running, accepted_until = None, None, 0
        if piece is not None:
            unreported = Span(piece.start + remains.received, piece.stop)
            accepted_until = piece.start + remains.accept
            item = blame.running_item(phase, remains.received)
            running = None if item is None else piece.start + item
        return blame.Death(
            state=remains.state,
            unreported=unreported,
            accepted_until=accepted_until,
            phase=phase,
            running=running,
            init_failed=init_failed,
            ever_ready=slot.ever_ready,
            winding_down=self.control.should_stop(),
            pool_broken=self.control.broken is not None,
            work_waiting=bool(self.backlog),
            break_on_crash=self.config.break_on_crash,
            deaths_in_a_row=slot.deaths_in_a_row,
        )

    def _apply(
        self,
        slot: Slot,
        remains: Remains,
        verdict: blame.Verdict,
        init_failure: Optional[wire.InitFailed],
    ) -> None:
        process, piece = remains.process, remains.piece
        slot.deaths_in_a_row = verdict.deaths_in_a_row
        if verdict.breaks is blame.Breakage.INIT:
            if init_failure is not None:
                self._break(init_error(slot, init_failure.error, init_failure.in_spec))
            else:
                self._break(self._start_death_error(slot, process.exitcode))
            return
        if verdict.breaks is blame.Breakage.CRASH:
            assert piece is not None
            broken = blame.broken_by_crash(process.pid, process.exitcode)
            set_exception(piece.job.future, copy_error(broken))  # no longer held by the slot
            self._break(broken)
            return
        if verdict.breaks is blame.Breakage.DEATHS:
            self._break(blame.deaths_error(slot.index, verdict.deaths_in_a_row, process.exitcode))
            return
        if piece is not None:
            if verdict.charged is not None:
                crash = blame.crash_error(slot.index, process.pid, process.exitcode, verdict.during)
                piece.job.fail_item(verdict.charged, crash)
            self.backlog.requeue(piece.job, verdict.requeue)
        if verdict.respawn:
            with self.control.lock:
                self.slots.start(slot)

    # -- failure and exit ---------------------------------------------------------------------

    def _start_death_error(self, slot: Slot, exitcode: Optional[int]) -> BaseException:
        """Slot ``slot``'s worker died while starting, without reporting why."""
        spec = None if slot.spec is None else describe_worker(slot.spec)
        has_code = slot.spec is not None or self.config.initializer is not None
        return blame.start_death_error(
            slot.index,
            exitcode,
            reached_our_code=self.slots.cells.phase(slot.index) != wire.LAUNCHING,
            what=blame.initialising(slot.index, spec) if has_code else None,
            start_method=self.config.ctx.get_start_method(),
        )

    def _terminate(self) -> None:
        """Act on terminate(): queued futures are cancelled, running ones fail."""
        self.terminated = True
        error = blame.terminated_error()
        self.backlog.abort(error, cancel_queued=True)
        # kill_workers() must not be overtaken by a SIGTERM of ours: the signal it asked for
        self.slots.abort(error, self.control.stop_signal)

    def _break(self, error: BaseException) -> None:
        break_pool(self.control, self.slots, error)


#: How long a fired sentinel waits for its process's exit status before calling it hung up.
EXIT_STATUS_WAIT = 0.002


def _exit_confirmed(process: Any) -> bool:
    """Whether ``process`` has exited, allowing for the kernel's order: an exiting process's
    descriptors (its sentinel) close a moment before its exit status can be collected, so a
    fired sentinel is re-checked for up to ``EXIT_STATUS_WAIT`` before the process counts as
    running on (hung up, then polled by pid every ``DEATH_POLL``: 20 ms lost on every
    shutdown that lost this race)."""
    deadline = time.monotonic() + EXIT_STATUS_WAIT
    while process.exitcode is None:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.0001)
    return True


def _wait_timeout(slots: SlotTable, next_slow_poll: float) -> Optional[float]:
    """Seconds until the dispatcher's nearest deadline: an item's limit, a SIGKILL
    escalation or the next exit check by pid (``next_slow_poll``: when one is due)."""
    now = time.monotonic()
    nearest = None
    cells = slots.cells
    for slot in slots.all:
        when = None
        if slot.state is KILLING or slot.state is STOPPING:
            if slot.kill_at != float("inf"):  # inf: SIGKILL sent, the sentinel will fire
                when = slot.kill_at
        elif slot.state is BUSY and slot.piece is not None:
            timeout = slot.piece.job.timeout
            if timeout is not None:
                phase, started = cells.phase(slot.index), cells.started(slot.index)
                _, when = blame.item_deadline(phase, slot.received, started, timeout, now)
        if when is not None and (nearest is None or when < nearest):
            nearest = when
    timeout = None if nearest is None else max(0.0, nearest - now)
    poll = blame.death_poll_interval(*slots.death_watch(), next_slow_poll - now)
    if poll is not None and (timeout is None or poll < timeout):
        return poll
    return timeout
