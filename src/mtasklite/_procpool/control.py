"""What the executor and its dispatcher share: the backlog, the wakeup and the life-cycle.

The executor (caller threads) and the dispatcher (its own thread) never reach into each
other: callers add work and change the flags here, under ``lock``, then wake the
dispatcher; the dispatcher reads them, and reports a broken pool through ``mark_broken``,
which tells the executor through the callback it was built with.
"""

from __future__ import annotations

import signal
import threading
import weakref
from concurrent.futures import Future
from typing import Any, Callable, Optional

from .._exit_hooks import interpreter_exiting, on_exit_and_fork
from .jobs import Backlog
from .waiting import WakeupPipe

_live_controls: weakref.WeakSet[PoolControl] = weakref.WeakSet()


def _finish_at_exit() -> None:
    # Like the stdlib: let every pool finish its queued work, then stop its workers.
    for control in list(_live_controls):
        control.wakeup()
    for control in list(_live_controls):
        if control.thread is not None:
            control.thread.join()


# A forked worker forgets the parent's pools: their dispatcher threads and locks did not
# survive the fork, and it must not wait for them at its exit.
on_exit_and_fork(_finish_at_exit, _live_controls.clear)


class PoolControl:
    """The state one executor and its dispatcher share.

    ``lock`` (the executor's ``_shutdown_lock``) guards the flags, the slot table's process
    map and never-started counter; the backlog has its own lock.  ``owner`` (the executor)
    is held weakly: once it is collected the dispatcher finishes the queued work and exits.
    """

    def __init__(self, owner: object, on_broken: Callable[[BaseException], None]):
        self.lock = threading.Lock()
        self.backlog = Backlog()
        self.wake = WakeupPipe()
        #: make the dispatcher look at its queue and flags (any thread, lock held or not)
        self.wakeup: Callable[[], None] = self.wake.wakeup
        self.idle_workers = threading.Semaphore(0)  # a freed worker releases it, submit takes
        self.shutting_down = False
        self.terminate_requested = False  # terminate(): stop all work now
        self.stop_signal: int = signal.SIGTERM  # the signal terminate() / kill_workers() sends
        self.broken: Optional[BaseException] = None
        self.closed = False  # the dispatcher has exited
        self.ready_changed = threading.Condition(threading.Lock())  # wait_ready() sleeps here
        self.stop_requests: list[Future[Any]] = []  # running futures cancelled by callers
        self.thread: Optional[threading.Thread] = None
        self._owner = weakref.ref(owner, lambda _: self.wakeup())
        self._on_broken = on_broken
        _live_controls.add(self)

    def should_stop(self) -> bool:
        """No more work will come: finish what is queued, then exit."""
        if self.shutting_down or interpreter_exiting() or self.broken is not None:
            return True
        if self._owner() is None:
            self.shutting_down = True
            return True
        return False

    def request_stop(self, future: Future[Any]) -> None:
        """A running future was cancelled (``cancel_running``): stop its worker."""
        with self.lock:
            self.stop_requests.append(future)
        self.wakeup()

    def clear_stop_requests(self) -> None:
        """The dispatcher is about to stop the workers of every cancelled running future."""
        with self.lock:
            self.stop_requests = []

    def mark_broken(self, error: BaseException) -> bool:
        """Record that the pool is broken (``False`` if it already was) and tell the owner."""
        with self.lock:
            if self.broken is not None:
                return False
            self.broken = error
            self._on_broken(error)
        self.notify_ready()
        return True

    def notify_ready(self) -> None:
        """Wake ``wait_ready()`` callers: a worker became ready, or it never will."""
        with self.ready_changed:
            self.ready_changed.notify_all()

    def close(self) -> None:
        """The dispatcher has exited."""
        self.wake.close()
        _live_controls.discard(self)
        self.closed = True
        self.notify_ready()
