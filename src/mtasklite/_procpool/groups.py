"""Process groups: nothing a task starts outlives its worker.

Guarantee: every worker process leads its own process group, and wherever the pool stops a
worker (an overrun, ``cancel_running``, ``terminate()``, ``kill_workers()``, shutdown, a
crash) it signals the whole group, so the processes a task started go with it.  When the
parent itself dies, the worker takes its group down (:func:`die_with_group`).

What escapes: a process that leaves the group itself (``setsid``, ``setpgid``, a daemon that
double-forks into a new session).  A worker started by a parent that no longer exists, or
on a platform without process groups, falls back to signalling the worker alone.
"""

from __future__ import annotations

import os
import signal
from typing import Any, NoReturn

#: the kernel's signal to a worker whose parent died (``PR_SET_PDEATHSIG``): a catchable
#: one, so that the worker can take its group with it (SIGKILL would leave it behind)
PARENT_DEATH_SIGNAL = signal.SIGHUP


def lead_own_group() -> None:
    """Make the calling (worker) process the leader of a new process group.

    Its children join the group, the pool signals it as a whole.  A terminal's Ctrl-C no
    longer reaches the worker, which ignored it anyway: the parent decides what stops."""
    if hasattr(os, "setpgid"):
        try:
            os.setpgid(0, 0)
        except OSError:  # pragma: no cover - already a session or group leader
            pass


def kill_own_group() -> NoReturn:
    """SIGKILL this process's whole group (this process included) when it leads one; else
    exit at once (the parent is gone: nothing is left to report to)."""
    if hasattr(os, "getpgid") and os.getpgid(0) == os.getpid():
        os.killpg(0, signal.SIGKILL)
    os._exit(1)


def die_with_group(_signum: int, _frame: Any) -> NoReturn:
    """Signal handler for :data:`PARENT_DEATH_SIGNAL`."""
    kill_own_group()


def signal_worker(process: Any, signum: int) -> None:
    """Send ``signum`` to worker ``process`` and, if it leads its group, to every process in
    that group (the callers are those that signalled the process alone before)."""
    try:
        pid = process.pid
    except ValueError:  # pragma: no cover - a closed Process object
        return
    if pid is None:
        return
    if _leads_group(pid):
        try:
            os.killpg(pid, signum)
            return
        except OSError:
            pass  # gone meanwhile: fall through to the process itself
    try:
        os.kill(pid, signum)
    except OSError:
        pass  # already exited: its sentinel reports it


def kill_leftovers(pid: int) -> None:
    """SIGKILL whatever is left of the group worker ``pid`` led, once the worker itself has
    exited and been reaped.  While any member lives the kernel keeps the id reserved, so the
    signal reaches that group only; called right after the reap, when no member is left, a
    new process would have to reuse the id and lead a group in between to be hit."""
    if not hasattr(os, "killpg"):  # pragma: no cover - no process groups
        return
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass  # no member left (the usual case)


def _leads_group(pid: int) -> bool:
    try:
        return hasattr(os, "getpgid") and os.getpgid(pid) == pid
    except OSError:
        return False
