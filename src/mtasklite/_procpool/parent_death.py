"""A worker does not outlive its parent: when the parent dies, the worker kills its group.

Guarantee: from the moment :func:`guard` returns, a worker whose parent (the process that
owns the pool) dies takes its whole process group down (:func:`~.groups.kill_own_group`)
within moments, unless its main thread is stuck in C code that holds the GIL (nothing
Python can do runs then).

How: a watcher thread waits for the parent to end and then kills the group.  It acts
whatever the main thread runs and whichever thread started the pool.  What it waits on:

- the parent's *sentinel* (a pipe that closes when the parent dies): every platform, but
  blind while another process holds the pipe's other end.  With ``fork``, a sibling worker
  forked later does, and so does anything else the parent forked;
- a *pidfd* of the parent (Linux 5.3+), readable once the parent has exited, whoever holds
  what: it closes that blind spot;
- where there is no pidfd, the *kernel's parent-death signal* (Linux ``PR_SET_PDEATHSIG``,
  armed from the worker's main thread, only when the parent's main thread forked it: the
  kernel ties the signal to the forking thread) stands in.  Arming it needs ``ctypes``,
  about 2 ms of CPU per new worker, which the pidfd spares a starting pool.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
from typing import Any, Optional

from . import groups

__all__ = ["WATCH_PID", "guard"]

#: watch the parent through a pidfd where the platform has one (tests turn it off to
#: exercise the fallback)
WATCH_PID = True

_PR_SET_PDEATHSIG = 1


def guard(die_with_parent: bool) -> None:
    """Start guarding this worker process; call once, from its main thread.
    ``die_with_parent``: the parent's main thread forked us, so the kernel's signal would
    mean that the parent died."""
    parent = multiprocessing.parent_process()
    if parent is None:  # pragma: no cover - always set for a multiprocessing child
        return
    waitables: list[Any] = [parent.sentinel]
    pidfd = _open_pidfd(parent.pid)
    if pidfd is not None:
        waitables.append(pidfd)
    elif die_with_parent:
        _arm_kernel_signal(parent)
    watcher = threading.Thread(
        target=_watch, args=(waitables,), name="mtasklite-parent-watch", daemon=True
    )
    try:
        watcher.start()
    except RuntimeError:  # pragma: no cover - interpreter shutting down
        pass


def _watch(waitables: list[Any]) -> None:
    """The watcher thread: the first of the parent's signs of death ends the group."""
    multiprocessing.connection.wait(waitables)
    groups.kill_own_group()


def _open_pidfd(pid: Optional[int]) -> Optional[int]:
    """A pidfd of process ``pid``, or ``None`` where pidfds are missing (or turned off).
    If the parent is gone already (and reaped: a zombie still gives a pidfd, readable at
    once), the group ends here: its sentinel may be held open by another process."""
    if not WATCH_PID or pid is None or not hasattr(os, "pidfd_open"):
        return None
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        groups.kill_own_group()
    except OSError:  # an older kernel, or pidfds forbidden (seccomp)
        return None


def _arm_kernel_signal(parent: Any) -> None:
    """Have Linux signal us (and our handler kill the group) when the parent dies."""
    if not sys.platform.startswith("linux"):
        return
    forked_by = os.getppid()
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # pragma: no cover - exotic libc
        return
    signal.signal(groups.PARENT_DEATH_SIGNAL, groups.die_with_group)
    prctl(_PR_SET_PDEATHSIG, groups.PARENT_DEATH_SIGNAL, 0, 0, 0)
    # The parent may have died before the signal was armed: we were reparented by then,
    # or (if it died even earlier) its sentinel has closed.
    if os.getppid() != forked_by or not parent.is_alive():
        groups.kill_own_group()
