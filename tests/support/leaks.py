"""The leak guard: no pool thread and no child process a test starts outlives it.

``conftest.py`` runs :func:`snapshot` before every test and :func:`check` after it (an
autouse fixture).  What counts:

* threads: the live pool threads (:func:`support.processes.is_pool_thread`: thread-pool
  workers and watchdogs, ``Pool``/pqdm threads, process-pool dispatchers) that were not there
  before the test;
* processes: our children and the fork server's (:func:`support.processes.child_processes`)
  that were not there before; a zombie counts until it is reaped, so a pool that never reaps
  its dead workers fails too.

Leftovers get until a deadline to go (joined, or waited for through pidfds; never by a fixed
sleep).  Processes that outlive tests by design -- the workers of a module-scoped Dask cluster,
which its nannies restart -- are declared with :func:`keep`.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Iterable, NamedTuple

from support import processes

#: how long teardown waits for a test's pool threads and worker processes to be gone
EXIT_DEADLINE = 10.0

#: callables returning pids that may outlive a test (see :func:`keep`)
_keepers: list[Callable[[], Iterable[int]]] = []


class Snapshot(NamedTuple):
    threads: set[threading.Thread]
    pids: set[int]


#: a snapshot of nothing: checking against it means "no pool thread or child at all"
NOTHING = Snapshot(set(), set())


def snapshot() -> Snapshot:
    """The pool threads and child processes that exist now."""
    return Snapshot(processes.pool_threads(), set(processes.child_processes()))


def started_since(before: Snapshot) -> bool:
    """Whether a pool thread or child process has appeared since ``before``."""
    now = snapshot()
    return bool(now.threads - before.threads or now.pids - before.pids)


def keep(owner: Callable[[], Iterable[int]]) -> Callable[[], None]:
    """Declare that the processes ``owner()`` names (asked afresh at each check) may outlive
    a test; returns the function that withdraws the declaration."""
    _keepers.append(owner)
    return lambda: _keepers.remove(owner)


def _kept() -> set[int]:
    pids: set[int] = set()
    for owner in _keepers:
        pids.update(owner())
    return pids


def leftovers(before: Snapshot, timeout: float) -> tuple[list[str], dict[int, str]]:
    """Pool threads and child processes started since ``before`` that are still there
    ``timeout`` seconds from now: (thread names, pid -> state letter)."""
    deadline = time.monotonic() + timeout
    while True:
        threads = [t for t in processes.pool_threads() - before.threads if t.is_alive()]
        kept = _kept()
        left = {
            pid: state
            for pid, state in processes.child_processes().items()
            if pid not in before.pids and pid not in kept
        }
        if (not threads and not left) or time.monotonic() >= deadline:
            return [f"{t.name} (daemon={t.daemon})" for t in threads], left
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        running = {pid for pid, state in left.items() if state != "Z"}
        if running:
            # in slices: a kept owner (a Dask nanny) may name a process it is still starting
            processes.wait_for_exit(running, min(deadline, time.monotonic() + 0.25))
        elif left:  # only zombies: their reaper (the dispatcher, multiprocessing) is about to run
            time.sleep(0.01)  # sleep-ok: polling /proc for reaping, nothing to wait on


def check(before: Snapshot, timeout: float = EXIT_DEADLINE) -> None:
    """Fail if pool threads or child processes started since ``before`` are still there after
    ``timeout`` seconds."""
    threads, left = leftovers(before, timeout)
    assert not threads, "pool threads survived the test: " + ", ".join(threads)
    assert not left, f"child processes survived the test (pid -> state): {left}"
