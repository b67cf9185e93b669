"""Module-level helpers for the process-pool tests.

Worker processes started with ``spawn`` or ``forkserver`` unpickle task functions and worker
specs *by name*, so everything a test sends to a worker lives here, in an importable module
(pytest puts ``tests/`` on ``sys.path``; spawned children inherit it through multiprocessing's
preparation data).

Synchronisation objects (``multiprocessing`` events and barriers) cannot be pickled into a
task; they can only be inherited when a process starts.  Tests therefore hand them to every
worker with the pool ``initializer``: ``initializer=install, initargs=({"release": ev},)``
puts them in :data:`SHARED` in each worker.  A waiter that gets killed inside
``Event.wait`` would make a later ``Event.set`` block forever (the multiprocessing condition
waits for every registered sleeper to wake up), so tasks that are *meant* to be killed never
wait on one: they sleep, spin or block in a C call.  Facts a task reports back (its pid, when
it started) are written to files in a directory the test passes in.
"""

from __future__ import annotations

import os
import select
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any, NamedTuple, Optional

import mtasklite as mt

#: upper bound for any blocking wait inside a worker (never reached when things work)
BLOCK_LIMIT = 10.0
#: how long a task that is meant to hang would hang if nothing stopped it
HANG = 3600.0

# --- objects inherited by every worker -------------------------------------------------------

#: filled in each worker by :func:`install` (the pool initializer)
SHARED: dict[str, Any] = {}
#: set by :func:`record_init` in each worker: (tag, pid)
INIT_SEEN: Optional[tuple[Any, int]] = None


def install(objects: dict[str, Any]) -> None:
    """Pool initializer: make ``objects`` (events, barriers, ...) visible to tasks."""
    SHARED.clear()
    SHARED.update(objects)


def record_init(
    tag: Any, log: Optional[str] = None, shared: Optional[dict[str, Any]] = None
) -> None:
    """Pool initializer: remember ``tag``, (optionally) append ``"<pid> <tag>"`` to ``log``
    and install ``shared`` as :func:`install` does."""
    global INIT_SEEN
    if shared is not None:
        install(shared)
    INIT_SEEN = (tag, os.getpid())
    if log is not None:
        append_line(log, f"{os.getpid()} {tag}")


def init_seen(_: Any = None) -> Optional[tuple[Any, int]]:
    return INIT_SEEN


def failing_initializer() -> None:
    raise OSError("no device")


# --- files -----------------------------------------------------------------------------------


def append_line(path: str, line: str) -> None:
    """Append one line atomically (a single O_APPEND write), from any process."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def read_lines(path: Any) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except FileNotFoundError:
        return []


def stamp(directory: str, tag: str) -> None:
    """Record ``"<pid> <monotonic start time>"`` in ``directory/tag``."""
    append_line(os.path.join(directory, tag), f"{os.getpid()} {time.monotonic()!r}")


def read_stamp(directory: Any, tag: str) -> tuple[int, float]:
    pid, started = read_lines(os.path.join(directory, tag))[-1].split()
    return int(pid), float(started)


# --- stateful workers ------------------------------------------------------------------------


class Seen(NamedTuple):
    """What a call of a :class:`Counter` worker saw."""

    name: str
    index: Optional[int]
    pid: int
    build_id: str
    calls: int
    x: Any


@mt.delayed_init
class Counter:
    """A stateful worker that counts its own calls; every build gets a fresh ``build_id``.

    ``log``: a file to which each build appends ``"<pid> <worker index> <name> <build id>"``.
    """

    def __init__(self, name: str, log: Optional[str] = None) -> None:
        self.name = name
        self.build_id = uuid.uuid4().hex
        self.calls = 0
        if log is not None:
            append_line(log, f"{os.getpid()} {mt.worker_index()} {name} {self.build_id}")

    def __call__(self, x: Any = None) -> Seen:
        self.calls += 1
        return Seen(self.name, mt.worker_index(), os.getpid(), self.build_id, self.calls, x)


@mt.delayed_init
class FailingBuild:
    def __init__(self, name: str) -> None:
        raise ValueError(f"cannot load {name}")

    def __call__(self, x: Any) -> Any:  # pragma: no cover - never built
        return x


@mt.delayed_init
class ExitingBuild:
    """Its constructor kills the worker process (exit code 5)."""

    def __init__(self) -> None:
        os._exit(5)

    def __call__(self, x: Any) -> Any:  # pragma: no cover - never built
        return x


@mt.delayed_init
class GatedBuild:
    """Its constructor waits until the parent sets ``gate`` (a slow model load)."""

    def __init__(self, gate: Any) -> None:
        gate.wait(BLOCK_LIMIT)
        self.build_id = uuid.uuid4().hex

    def __call__(self, x: Any) -> Any:
        return x


def call_worker(x: Any = None) -> Seen:
    """Call the calling worker's own object (what ``ex.worker`` does)."""
    return mt.current_worker()(x)  # type: ignore[no-any-return]


def whoami(_: Any = None) -> tuple[Optional[int], int, Optional[str]]:
    """(worker index, pid, build id of the worker's object, if any) without counting a call."""
    obj = mt.current_worker()
    return mt.worker_index(), os.getpid(), getattr(obj, "build_id", None)


def rendezvous(x: Any = None) -> tuple[Optional[int], int, Optional[str]]:
    """Wait at ``SHARED["barrier"]`` (so each of n tasks runs on a distinct worker)."""
    SHARED["barrier"].wait(BLOCK_LIMIT)
    return whoami(x)


def rendezvous_call(x: Any = None) -> Seen:
    SHARED["barrier"].wait(BLOCK_LIMIT)
    return call_worker(x)


# --- plain tasks -----------------------------------------------------------------------------


def square(x: int) -> int:
    return x * x


def add(a: int, b: int = 0) -> int:
    return a + b


def identity(x: Any) -> Any:
    return x


def pid_of(_: Any = None) -> int:
    return os.getpid()


def inflate(payload: bytes, factor: int = 3) -> bytes:
    """A result several times the size of its argument (fills the pipe back to the parent)."""
    return payload * factor


def fail_with_value_error(x: Any) -> Any:
    raise ValueError(f"bad input {x!r}")


def record_run(x: int, log: str) -> int:
    """Append ``"<x> <pid>"`` to ``log`` and return ``x * 10``."""
    append_line(log, f"{x} {os.getpid()}")
    return x * 10


def block_until_released(x: Any = None) -> Any:
    """Set ``SHARED["started"]``, then wait for ``SHARED["release"]`` (never killed)."""
    SHARED["started"].set()
    SHARED["release"].wait(BLOCK_LIMIT)
    return x


def hang_forever(_: Any = None) -> None:
    time.sleep(HANG)  # sleep-ok: meant to hang until the pool kills us


def hang_after_started(_: Any = None) -> None:
    """Set ``SHARED["started"]``, then hang (``Event.set`` is safe to be killed after)."""
    SHARED["started"].set()
    time.sleep(HANG)  # sleep-ok: meant to hang until the pool kills us


def block_on(x: int, target: int) -> int:
    """Item ``target`` blocks until released; every item returns ``x * 10``."""
    if x == target:
        block_until_released()
    return x * 10


def record_and_block_on(x: int, target: int, log: str) -> int:
    """Append ``x`` to ``log``; item ``target`` then blocks until released."""
    append_line(log, str(x))
    return block_on(x, target)


# --- crashes ---------------------------------------------------------------------------------


def _die(how: str) -> None:
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif how == "exit":
        os._exit(3)
    else:  # pragma: no cover - a test typo
        raise ValueError(how)
    time.sleep(HANG)  # sleep-ok: SIGKILL is delivered before we get here


def crash_on(x: int, target: int, how: str, directory: Optional[str] = None) -> int:
    """Item ``target`` kills its worker (``how``: ``"sigkill"`` or ``"exit"``, code 3); the
    others return ``x * 10``.  The dying worker first records its pid in ``directory``."""
    if x == target:
        if directory is not None:
            stamp(directory, f"crash-{x}")
        _die(how)
    return x * 10


def crash_when_released(_: Any = None) -> None:
    """Wait for ``SHARED["release"]``, then kill the worker with SIGKILL (after ``wait``
    returned, so no multiprocessing lock or sleeper count is left behind)."""
    SHARED["release"].wait(BLOCK_LIMIT)
    _die("sigkill")


def crash_every(x: int, every: int) -> int:
    """Items with ``x % every == every - 1`` kill their worker with SIGKILL."""
    if x % every == every - 1:
        _die("sigkill")
    return x * 10


class ExitOnPickle:
    """Pickling it (to send it back as a result) kills the worker with exit code 7."""

    def __reduce__(self) -> Any:
        os._exit(7)


def exit_when_result_is_pickled(x: int, target: int) -> Any:
    return ExitOnPickle() if x == target else x * 10


def _exit_in_child(parent_pid: int, value: Any) -> Any:
    if os.getpid() != parent_pid:
        os._exit(9)
    return value  # pragma: no cover - only ever unpickled in a worker


class ExitOnUnpickleInWorker:
    """An argument whose unpickling (in the worker, never in the parent) kills the worker."""

    def __init__(self, value: Any) -> None:
        self.parent = os.getpid()
        self.value = value

    def __reduce__(self) -> Any:
        return _exit_in_child, (self.parent, self.value)


def _raise_in_child(parent_pid: int, value: Any) -> Any:
    if os.getpid() != parent_pid:
        raise ImportError(f"cannot rebuild {value!r} here")
    return value  # pragma: no cover - only ever unpickled in a worker


class RaiseOnUnpickleInWorker:
    """An argument whose unpickling fails in the worker (the worker itself survives)."""

    def __init__(self, value: Any) -> None:
        self.parent = os.getpid()
        self.value = value

    def __reduce__(self) -> Any:
        return _raise_in_child, (self.parent, self.value)


def _raise_outside(origin_pid: int, value: Any) -> Any:
    if os.getpid() != origin_pid:
        raise ImportError(f"cannot rebuild result {value!r} outside its worker")
    return value  # pragma: no cover


class RaiseOnUnpickleInParent:
    """A result that pickles fine in the worker but cannot be unpickled in the parent."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __reduce__(self) -> Any:
        return _raise_outside, (os.getpid(), self.value)


def unreadable_result_on(x: int, target: int) -> Any:
    return RaiseOnUnpickleInParent(x) if x == target else x * 10


def unpicklable_result(_: Any = None) -> Any:
    return threading.Lock()


def unpicklable_result_on(x: int, target: int) -> Any:
    return threading.Lock() if x == target else x * 10


class UnpicklableError(Exception):
    """An exception that cannot be pickled (it holds a lock)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


class TwoArgError(Exception):
    """Pickles, but unpickling calls ``TwoArgError(a)``, which raises TypeError."""

    def __init__(self, a: str, b: str) -> None:
        super().__init__(a)
        self.b = b


def raise_unpicklable(x: Any) -> Any:
    raise UnpicklableError(f"unsendable {x!r}")


def raise_two_arg(x: Any) -> Any:
    raise TwoArgError(f"two-arg {x!r}", "extra")


# --- tasks that hang (for timeouts) ----------------------------------------------------------


def hang_sleep(directory: str, tag: str) -> None:
    stamp(directory, tag)
    time.sleep(HANG)  # sleep-ok: meant to hang until the pool kills us


def hang_spin(directory: str, tag: str) -> None:
    stamp(directory, tag)
    n = 0
    while n >= 0:  # pure-Python busy loop, never ends
        n += 1


def hang_select(directory: str, tag: str) -> None:
    stamp(directory, tag)
    select.select([], [], [], HANG)


def hang_ignoring_sigterm(directory: str, tag: str) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    stamp(directory, tag)
    time.sleep(HANG)  # sleep-ok: meant to hang; only SIGKILL stops us


def hang_swallowing_sigterm(directory: str, tag: str) -> None:
    """Installs a Python SIGTERM handler that does nothing (sleep resumes after it, PEP 475)."""
    signal.signal(signal.SIGTERM, lambda *_: None)
    stamp(directory, tag)
    time.sleep(HANG)  # sleep-ok: meant to hang; only SIGKILL stops us


HANGS = {
    "sleep": hang_sleep,
    "spin": hang_spin,
    "select": hang_select,
    "sigterm-ignored": hang_ignoring_sigterm,
    "sigterm-swallowed": hang_swallowing_sigterm,
}


def hang_if(x: int, hang_on: int, every: int = 0) -> int:
    """``x * 2``, except that item ``hang_on`` (or, with ``every``, each item with
    ``x % every == hang_on``) sleeps forever."""
    hangs = x % every == hang_on if every else x == hang_on
    if hangs:
        time.sleep(HANG)  # sleep-ok: meant to hang until the pool kills us
    return x * 2


def record_and_hang_if(x: int, hang_on: int, log: str) -> int:
    append_line(log, f"{x} {os.getpid()}")
    return hang_if(x, hang_on)


# --- leaked process detection ----------------------------------------------------------------

#: how long teardown waits for a test's worker processes to be gone (exited and reaped)
PROCESS_EXIT_DEADLINE = 10.0


def _ppid_map() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state letter) for every process visible in /proc."""
    table: dict[int, tuple[int, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue  # exited while we looked
        # the command name may hold spaces and parentheses: the fields follow the last ')'
        fields = data[data.rindex(b")") + 2 :].split()
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


def pool_processes() -> dict[int, str]:
    """Our child processes (and the fork server's, which are pool workers too) -> state,
    excluding the long-lived helpers themselves.  Zombies (state ``Z``) count: a worker that
    exited but was never reaped is still a leak."""
    table = _ppid_map()
    helpers = long_lived_helpers()
    parents = {os.getpid()} | {h for h in helpers if table.get(h, (0, ""))[0] == os.getpid()}
    return {
        pid: state for pid, (ppid, state) in table.items() if ppid in parents and pid not in helpers
    }


def wait_for_exit(pids: set[int], deadline: float) -> None:
    """Block until every pid in ``pids`` has exited (zombies count as exited) or deadline."""
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except (ProcessLookupError, OSError):
            continue
        try:
            select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        finally:
            os.close(fd)


def dispatcher_threads() -> set[threading.Thread]:
    return {
        t
        for t in threading.enumerate()
        if t.name.startswith("StatefulProcessPoolExecutor-") and t.name.endswith("-dispatcher")
    }


def assert_no_leftovers(before: set[int], threads_before: set[threading.Thread]) -> None:
    """Fail if processes or dispatcher threads that appeared since ``before`` are still there
    at the deadline."""
    deadline = time.monotonic() + PROCESS_EXIT_DEADLINE
    for thread in dispatcher_threads() - threads_before:
        thread.join(max(0.0, deadline - time.monotonic()))
    leftover_threads = [t.name for t in dispatcher_threads() - threads_before if t.is_alive()]
    while True:
        left = {pid: state for pid, state in pool_processes().items() if pid not in before}
        if not left or time.monotonic() >= deadline:
            break
        running = {pid for pid, state in left.items() if state != "Z"}
        if running:
            wait_for_exit(running, deadline)
        else:  # only zombies: their reaper (the dispatcher or multiprocessing) is about to run
            time.sleep(0.01)  # sleep-ok: polling /proc for reaping, nothing to wait on
    assert not leftover_threads, f"dispatcher threads survived the test: {leftover_threads}"
    assert not left, f"worker processes survived the test (pid -> state): {left}"


def sleep_for(x: Any, seconds: float) -> Any:
    """Run for ``seconds`` (deliberately longer than some limit), then return ``x``."""
    time.sleep(seconds)  # sleep-ok: a task that is meant to take this long
    return x


def exit_on_sigterm_then_hang_if(x: int, hang_on: int, log: str) -> int:
    """Like :func:`record_and_hang_if`, but SIGTERM raises SystemExit inside the task (a common
    application handler), so the worker survives SIGTERM and goes on with its next items."""

    def on_term(*_: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_term)
    return record_and_hang_if(x, hang_on, log)


# --- the thread pool's watchdog racing a task that ends at its deadline -----------------------

#: exit codes of :func:`watchdog_race_main`
RACE_OK, RACE_DEADLOCK, RACE_NOT_EXERCISED, RACE_STUCK = 0, 3, 5, 6


def watchdog_race_main(attempts: int = 250, limit: float = 0.03) -> None:
    """Run in a child interpreter: make a timed thread-pool task end exactly while the
    watchdog expires it, until the watchdog wins that race once; then check that the watchdog
    still works.  Exits with one of the ``RACE_*`` codes (``os._exit``: a deadlocked pool could
    not be shut down or garbage-collected)."""
    import concurrent.futures

    def task(entered: threading.Event, go: threading.Event, returned: threading.Event) -> str:
        entered.set()
        go.wait(BLOCK_LIMIT)
        returned.set()  # the task itself finished: a stop can only land in end() now
        return "done"

    ex = mt.StatefulThreadPoolExecutor(1, "race")
    ex.submit_with_timeout(BLOCK_LIMIT, abs, 1).result(BLOCK_LIMIT)  # creates the watchdog
    cond = ex._watchdog._cond  # type: ignore[union-attr]
    for _ in range(attempts):
        entered, go, returned = threading.Event(), threading.Event(), threading.Event()
        fut = ex.submit_with_timeout(limit, task, entered, go, returned)
        if not entered.wait(BLOCK_LIMIT):
            os._exit(RACE_STUCK)
        with cond:  # hold the watchdog's lock: neither the watchdog nor end() can proceed
            go.set()  # the task returns; its thread now waits for the lock in end()
            try:
                fut.result(timeout=2 * limit)  # cannot complete; meanwhile the deadline passes
            except concurrent.futures.TimeoutError:
                pass
        # released: the watchdog (expiring the task) and end() race for the lock
        timed_out = isinstance(fut.exception(BLOCK_LIMIT), mt.TaskTimeoutError)
        if timed_out and returned.is_set():
            break  # the watchdog won and stopped a thread that was inside end()
    else:
        os._exit(RACE_NOT_EXERCISED)
    if not cond.acquire(timeout=2.0):
        os._exit(RACE_DEADLOCK)  # the lock is held by a thread that has exited
    cond.release()
    probe = ex.submit_with_timeout(limit, go.wait, BLOCK_LIMIT)
    try:
        probe.result(BLOCK_LIMIT)
    except mt.TaskTimeoutError:
        pass
    except concurrent.futures.TimeoutError:
        os._exit(RACE_DEADLOCK)
    ex.shutdown()
    os._exit(RACE_OK)


def exit_shortly_after_start(delay: float) -> None:
    """Initializer: the worker process exits by itself ``delay`` seconds after starting,
    idle or not (a worker that keeps dying outside any task)."""
    threading.Timer(delay, os._exit, (7,)).start()
