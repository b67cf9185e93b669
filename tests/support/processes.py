"""The process table and the pool threads: who is still there, and waiting for them to go.

Processes are read from ``/proc`` (Linux): our children, and the fork server's (which are pool
workers too), zombies included -- a worker that exited but was never reaped is still a leak.
multiprocessing's own long-lived helpers (the resource tracker, the fork server) are not
counted.  Threads are recognised by name (see :func:`is_pool_thread`).
"""

from __future__ import annotations

import os
import select
import signal
import threading
import time
from typing import Iterable

from support import BLOCK_LIMIT
from support.files import wait_for

# --- processes -------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[bytes]:
    """The fields of ``/proc/<pid>/stat`` after the command name (state, ppid, pgrp, ...);
    raises ``OSError`` if there is no such process."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    # the command name may hold spaces and parentheses: the fields follow the last ')'
    return data[data.rindex(b")") + 2 :].split()


def _ppid_map() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state letter) for every process visible in /proc."""
    table: dict[int, tuple[int, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = _stat_fields(int(entry))
        except (OSError, ValueError):
            continue  # exited while we looked
        table[int(entry)] = (int(fields[1]), fields[0].decode())
    return table


def long_lived_helpers() -> set[int]:
    """multiprocessing's own long-lived helpers: the resource tracker, the fork server."""
    from multiprocessing import forkserver, resource_tracker

    pids = {
        getattr(resource_tracker._resource_tracker, "_pid", None),
        getattr(forkserver._forkserver, "_forkserver_pid", None),
    }
    return {p for p in pids if p}


def child_processes() -> dict[int, str]:
    """Our child processes (and the fork server's, which are pool workers too) -> state
    letter, excluding the long-lived helpers themselves.  Zombies (state ``Z``) count."""
    table = _ppid_map()
    helpers = long_lived_helpers()
    parents = {os.getpid()} | {h for h in helpers if table.get(h, (0, ""))[0] == os.getpid()}
    return {
        pid: state for pid, (ppid, state) in table.items() if ppid in parents and pid not in helpers
    }


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as dead)."""
    try:
        return _stat_fields(pid)[0] != b"Z"
    except OSError:
        return False


def wait_for_exit(pids: Iterable[int], deadline: float) -> None:
    """Block until every pid in ``pids`` has exited (zombies count as exited) or ``deadline``
    (a ``time.monotonic()`` value) passes; waits on pidfds, never by sleeping."""
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except (ProcessLookupError, OSError):
            continue
        try:
            select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        finally:
            os.close(fd)


def signal_pending(pid: int, signum: int) -> bool:
    """Whether ``signum`` was sent to ``pid`` and not yet delivered (its handler not yet
    entered): the process-wide or main-thread pending set in ``/proc/<pid>/status``."""
    bit = 1 << (signum - 1)
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(("SigPnd:", "ShdPnd:")) and int(line.split()[1], 16) & bit:
                return True
    return False


def wait_gone(pids: Iterable[int], timeout: float) -> set[int]:
    """Wait until none of ``pids`` is alive (zombies count as gone; for processes that are not
    our children, such as a killed parent's, init reaps them); returns the survivors."""
    pids = set(pids)
    wait_for(lambda: not any(alive(p) for p in pids), timeout)
    return {p for p in pids if alive(p)}


def wait_children_gone(pids: Iterable[int], timeout: float) -> dict[int, str]:
    """Wait until none of ``pids`` is still our child, *reaped* included; returns the
    survivors (pid -> state)."""
    pids = set(pids)

    def left() -> dict[int, str]:
        return {p: st for p, st in child_processes().items() if p in pids}

    wait_for(lambda: not left(), timeout)
    return left()


def kill_quietly(pids: Iterable[int]) -> None:
    """SIGKILL processes this test started (cleanup after a failed assertion)."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def open_fds() -> int:
    """How many file descriptors this process has open."""
    return len(os.listdir("/proc/self/fd"))


# --- threads ---------------------------------------------------------------------------------

#: name prefixes of the threads that belong to executors: tests name their thread pools
#: ``mt-...``; stdlib-style default names are ``ThreadPoolExecutor-<n>_<i>`` (and
#: ``..._watchdog``); :class:`mtasklite.Pool` and the thread pqdm name theirs
#: ``mtasklite-pool``; a process pool's dispatcher is ``StatefulProcessPoolExecutor-<id>-...``
POOL_THREAD_PREFIXES: tuple[str, ...] = (
    "mt-",
    "ThreadPoolExecutor-",
    "mtasklite-pool",
    "StatefulProcessPoolExecutor-",
)


def is_pool_thread(thread: threading.Thread) -> bool:
    """A thread that belongs to an executor (see :data:`POOL_THREAD_PREFIXES`)."""
    return thread.name.startswith(POOL_THREAD_PREFIXES)


def pool_threads() -> set[threading.Thread]:
    """The live pool threads."""
    return {t for t in threading.enumerate() if is_pool_thread(t) and t.is_alive()}


def threads_named(prefix: str) -> list[threading.Thread]:
    """The live threads whose name starts with ``prefix`` (one pool's, by its prefix)."""
    return [t for t in threading.enumerate() if t.name.startswith(prefix) and t.is_alive()]


def dispatcher_threads() -> set[threading.Thread]:
    """The live dispatcher threads of process pools."""
    return {
        t
        for t in threading.enumerate()
        if t.name.startswith("StatefulProcessPoolExecutor-") and t.name.endswith("-dispatcher")
    }


def wait_threads_gone(
    threads: Iterable[threading.Thread], timeout: float = BLOCK_LIMIT
) -> list[str]:
    """Join ``threads`` until ``timeout``; returns the names of those still alive."""
    deadline = time.monotonic() + timeout
    threads = list(threads)
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return [t.name for t in threads if t.is_alive()]


def assert_gone(
    pids: Iterable[int] = (), threads: Iterable[threading.Thread] = (), timeout: float = 5.0
) -> None:
    """Fail unless every process in ``pids`` has exited and been reaped, and every thread in
    ``threads`` has ended, within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    left_threads = wait_threads_gone(threads, timeout)
    left = wait_children_gone(pids, max(0.0, deadline - time.monotonic()))
    assert not left_threads, f"threads survived the executor: {left_threads}"
    assert not left, f"worker processes survived the executor (pid -> state): {left}"
