"""Module-level workers for the pqdm and Pool API tests.

Worker processes started with ``spawn`` import what they run *by name*, so everything a test
hands to a process pool lives here (pytest puts ``tests/`` on ``sys.path``; spawned children
inherit it).  Thread-pool tests use the same functions so both back ends run identical code.

Synchronisation objects reach worker processes in one of two ways: as constructor arguments
of a ``@delayed_init`` spec (``multiprocessing`` events and barriers may be pickled while a
process is being started), or through the pool initializer ``install`` (``initializer=install,
initargs=({"name": obj},)``), which puts them in :data:`SHARED` in each worker.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Iterator, Optional

import mtasklite as mt
from mtasklite import delayed_init

#: upper bound for any blocking wait inside a worker (never reached when things work)
BLOCK_LIMIT = 10.0
#: how long a task that is meant to hang would hang if nothing stopped it
HANG = 3600.0

#: filled in each worker process (or the test process, for threads) by :func:`install`
SHARED: dict[str, Any] = {}


def install(objects: dict[str, Any]) -> None:
    """Pool initializer: make ``objects`` (events, barriers, ...) visible to tasks."""
    SHARED.update(objects)


class Boom(Exception):
    """The worker's own exception type (must survive the trip back from a worker process)."""


# --- plain tasks -----------------------------------------------------------------------------


def double(x: int) -> int:
    return x * 2


def add(a: int, b: int = 0) -> int:
    return a + b


def scaled_sum(a: int, b: int, scale: int = 1) -> int:
    return (a + b) * scale


def fail_odd(x: int) -> int:
    """``x * 2``; odd items raise :class:`Boom` naming the item."""
    if x % 2:
        raise Boom(f"odd {x}")
    return x * 2


def where(x: Any) -> tuple[Any, int, str]:
    """``(x, pid, thread name)`` of the code that ran the task."""
    return x, os.getpid(), threading.current_thread().name


def append_line(path: str, line: str) -> None:
    """Append one line atomically (a single O_APPEND write), from any process."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def read_lines(path: str) -> list[str]:
    try:
        with open(path) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


# --- tasks that coordinate through SHARED ----------------------------------------------------


def zero_waits_for_go(x: int) -> int:
    """Item 0 waits until ``SHARED["go"]`` is set (by the test's consumer, once it has received
    a later item, or by the item ``SHARED["go_after"]``, when it starts); returns ``x``."""
    if x == 0:
        SHARED["go"].wait(BLOCK_LIMIT)
    elif x == SHARED.get("go_after"):
        SHARED["go"].set()
    return x


def zero_waits_for_go_then_fail(x: int) -> int:
    """Like :func:`zero_waits_for_go`, but items 0..3 raise ``Boom(f"bad {x}")``."""
    zero_waits_for_go(x)
    if x <= 3:
        raise Boom(f"bad {x}")
    return x


def hang_on(x: int, target: int) -> int:
    """``x * 2``; item ``target`` hangs until the pool stops it."""
    if x == target:
        time.sleep(HANG)  # sleep-ok: meant to hang until the pool kills this worker
    return x * 2


def fail_first_then_hang(x: int, log: str) -> int:
    """Item 0 raises :class:`Boom`; every other item records that it started, then hangs."""
    if x == 0:
        raise Boom("first item failed")
    append_line(log, str(x))
    time.sleep(HANG)  # sleep-ok: meant to hang until the pool terminates this worker
    return x  # pragma: no cover - never reached


# --- stateful workers ------------------------------------------------------------------------


@delayed_init
class Tagged:
    """A stateful worker built from its own arguments; results carry them.

    Its first call waits at ``barrier`` (if any) until every worker has an item, so the work
    is provably spread over all of them.  Each call returns ``(tag, scale * x, worker index,
    pid, calls so far)``.
    """

    def __init__(self, tag: str, scale: int = 1, barrier: Any = None) -> None:
        self.tag = tag
        self.scale = scale
        self.barrier = barrier
        self.calls = 0
        self.pid = os.getpid()

    def __call__(self, x: int) -> tuple[str, int, Optional[int], int, int]:
        if self.calls == 0 and self.barrier is not None:
            self.barrier.wait(BLOCK_LIMIT)
        self.calls += 1
        return self.tag, self.scale * x, mt.worker_index(), os.getpid(), self.calls


@delayed_init
class Worker:
    """The upstream README's worker: built once per worker with its id."""

    def __init__(self, worker_id: int) -> None:
        self.worker_id = worker_id

    def __call__(self, x: int) -> int:
        if x < 0:
            raise ValueError(f"negative input {x}")
        return x * x


# --- inputs ----------------------------------------------------------------------------------


class SizedCounter:
    """A sized iterable that counts how many items were pulled from it."""

    def __init__(self, n: int):
        self.n = n
        self.pulled = 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        for i in range(self.n):
            self.pulled += 1
            yield i


class Pulled:
    """An unsized iterator over ``iterable`` that counts how many items were pulled from it."""

    def __init__(self, iterable: Any):
        self._it = iter(iterable)
        self.pulled = 0

    def __iter__(self) -> Pulled:
        return self

    def __next__(self) -> Any:
        item = next(self._it)
        self.pulled += 1
        return item


# --- leftover detection ----------------------------------------------------------------------

#: names of the threads a Pool / pqdm run owns: thread-pool workers (and their watchdog) and
#: the process pool's dispatcher
POOL_THREAD_PREFIXES = ("mtasklite-pool", "StatefulProcessPoolExecutor-")


def pool_threads() -> set[threading.Thread]:
    return {
        t for t in threading.enumerate() if t.name.startswith(POOL_THREAD_PREFIXES) and t.is_alive()
    }


def children() -> set[Any]:
    import multiprocessing

    return set(multiprocessing.active_children())


def leftovers(
    threads_before: set[threading.Thread], children_before: set[Any], within: float
) -> tuple[list[str], list[str]]:
    """Pool threads and child processes started since ``*_before`` that are still alive after
    waiting up to ``within`` seconds for them (by joining, never by sleeping)."""
    deadline = time.monotonic() + within
    while True:
        threads = pool_threads() - threads_before
        procs = children() - children_before
        if not threads and not procs:
            return [], []
        if time.monotonic() >= deadline:
            return [t.name for t in threads], [f"{p.name} (pid {p.pid})" for p in procs]
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        for proc in procs:
            proc.join(max(0.0, deadline - time.monotonic()))


def signal_then_hang(x: int) -> int:
    """Item 0 sets ``SHARED["started"]`` and hangs until the pool stops it; others return."""
    if x == 0:
        SHARED["started"].set()
        time.sleep(HANG)  # sleep-ok: meant to hang until the pool terminates this worker
    return x


#: a module global a test may change in the parent: forked workers see the change, spawned
#: ones (which import this module afresh) see this default
MARKER = "module default"


def marker(x: Any) -> tuple[Any, str]:
    return x, MARKER
