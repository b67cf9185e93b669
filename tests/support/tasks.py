"""Picklable task functions (and the objects they need) that the tests' workers run.

Worker processes started with ``spawn`` or ``forkserver`` unpickle what they run *by name*, so
everything a test sends to a worker lives in an importable module (see :mod:`support`).
Thread-pool tests use the same functions, so every back end runs identical code.

Synchronisation objects (``multiprocessing`` events and barriers) cannot be pickled into a
task; they can only be inherited when a process starts.  Tests therefore hand them to every
worker with the pool ``initializer``: ``initializer=install, initargs=({"release": ev},)``
puts them in :data:`SHARED` in each worker (the test process's own copy, used by thread
pools, is cleared after every test).  A waiter that gets killed inside ``Event.wait`` would
make a later ``Event.set`` block forever (the multiprocessing condition waits for every
registered sleeper to wake up), so tasks that are *meant* to be killed never wait on one:
they sleep, spin, poll a file or block in a C call, and report what they did through files
(:mod:`support.files`).
"""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

import mtasklite as mt
from support import BLOCK_LIMIT, HANG
from support.files import append_line, stamp, wait_for, wait_for_lines, write_atomically

# --- objects inherited by every worker -------------------------------------------------------

#: filled in each worker by :func:`install` (the pool initializer)
SHARED: dict[str, Any] = {}
#: set by :func:`record_init` in each worker: (tag, pid)
INIT_SEEN: Optional[tuple[Any, int]] = None


def install(objects: dict[str, Any]) -> None:
    """Pool initializer: make ``objects`` (events, barriers, ...) visible to tasks."""
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


def exit_shortly_after_start(delay: float) -> None:
    """Initializer: the worker process exits by itself ``delay`` seconds after starting,
    idle or not (a worker that keeps dying outside any task)."""
    threading.Timer(delay, os._exit, (7,)).start()


def log_to(path: str) -> None:
    """Pool initializer: the worker's ``concurrent.futures`` log records go to ``path``."""
    logger = logging.getLogger("concurrent.futures")
    logger.addHandler(logging.FileHandler(path))


class Boom(Exception):
    """The worker's own exception type (must survive the trip back from a worker process)."""


# --- plain tasks -----------------------------------------------------------------------------


def square(x: int) -> int:
    return x * x


def double(x: int) -> int:
    return x * 2


def add(a: int, b: int = 0) -> int:
    return a + b


def scaled_sum(a: int, b: int, scale: int = 1) -> int:
    return (a + b) * scale


def identity(x: Any) -> Any:
    return x


def unused(_: Any = None) -> None:
    """Nothing: a task for a pool that must start a worker."""


def pid_of(_: Any = None) -> int:
    return os.getpid()


def index_and_pid(_: Any = None) -> tuple[Optional[int], int]:
    return mt.worker_index(), os.getpid()


def where(x: Any) -> tuple[Any, int, str]:
    """``(x, pid, thread name)`` of the code that ran the task."""
    return x, os.getpid(), threading.current_thread().name


#: a module global a test may change in the parent: forked workers see the change, spawned
#: ones (which import this module afresh) see this default
MARKER = "module default"


def marker(x: Any) -> tuple[Any, str]:
    return x, MARKER


def inflate(payload: bytes, factor: int = 3) -> bytes:
    """A result several times the size of its argument (fills the pipe back to the parent)."""
    return payload * factor


def big_result(megabytes: int = 200) -> bytes:
    return bytes(megabytes * 2**20)


def slow_square(x: int, seconds: float = 0.002) -> int:
    time.sleep(seconds)  # sleep-ok: a task that is meant to take this long
    return x * x


def sleep_for(x: Any, seconds: float) -> Any:
    """Run for ``seconds`` (deliberately longer than some limit), then return ``x``."""
    time.sleep(seconds)  # sleep-ok: a task that is meant to take this long
    return x


def first_word(line: str) -> str:
    """Raises ``StopIteration`` for a line without words (the classic ``next(iter(...))``)."""
    return next(iter(line.split()))


_held: list[bytes] = []


def hold_memory(megabytes: int) -> int:
    """Keep ``megabytes`` of touched memory alive in this worker (a leak); return its pid."""
    _held.append(b"\x01" * (megabytes << 20))
    return os.getpid()


def resident() -> int:
    """This worker's resident memory in bytes."""
    from mtasklite._procpool import memory

    return memory.resident_bytes()


# --- tasks that fail -------------------------------------------------------------------------


def fail_with_value_error(x: Any) -> Any:
    raise ValueError(f"bad input {x!r}")


def fail_on(x: int, target: int) -> int:
    if x == target:
        raise ValueError(f"bad item {x}")
    return x * 10


def fail_odd(x: int) -> int:
    """``x * 2``; odd items raise :class:`Boom` naming the item."""
    if x % 2:
        raise Boom(f"odd {x}")
    return x * 2


def raiser(exc_type: type[BaseException], message: str) -> None:
    raise exc_type(message)


class FalseyBoolError(Exception):
    """An exception whose ``bool()`` is false."""

    def __bool__(self) -> bool:
        return False


class FalseyLenError(Exception):
    """An exception whose ``len()`` is 0 (so its ``bool()`` is false too)."""

    def __len__(self) -> int:
        return 0


def raise_keyboard_interrupt_on(x: int, target: int) -> int:
    """A task that raises ``KeyboardInterrupt`` itself (no signal involved) for ``target``."""
    if x == target:
        raise KeyboardInterrupt(f"raised by task {x}")
    return x * 10


def release_then_raise_keyboard_interrupt(release_file: str) -> None:
    """Let blocked tasks go (see :func:`hang_unless`), then raise ``KeyboardInterrupt`` as a
    task's own outcome."""
    Path(release_file).touch()
    raise KeyboardInterrupt("raised by a task")


# --- tasks that report through files ---------------------------------------------------------


def record_run(x: int, log: str) -> int:
    """Append ``"<x> <pid>"`` to ``log`` and return ``x * 10``."""
    append_line(log, f"{x} {os.getpid()}")
    return x * 10


def log_start(x: Any, log: str) -> Any:
    """Append ``"<x> <pid> <worker index> <monotonic time>"`` to ``log``, return ``x``."""
    append_line(log, f"{x} {os.getpid()} {mt.worker_index()} {time.monotonic()!r}")
    return x


def log_then_work(x: Any, log: str, seconds: float) -> Any:
    """Log the start of item ``x`` (see :func:`log_start`), then run for ``seconds``."""
    log_start(x, log)
    time.sleep(seconds)  # sleep-ok: a task that is meant to take this long
    return x


def quick_then_slow(x: int, log: str, quick: int, seconds: float) -> int:
    """Log the start of item ``x``; items below ``quick`` return at once, the others run for
    ``seconds``."""
    log_start(x, log)
    if x >= quick:
        time.sleep(seconds)  # sleep-ok: a task that is meant to take this long
    return x


def report_then_wait(value: Any, log: str, release: str) -> Any:
    """Append ``"<value> <pid>"`` to ``log``, wait until the file ``release`` exists, return
    ``value`` (safe to kill at any point: no lock is held)."""
    append_line(log, f"{value} {os.getpid()}")
    wait_for(lambda: os.path.exists(release), 2 * BLOCK_LIMIT)
    return value


class NotesWhenCollected:
    """Appends ``collected <pid>`` to ``path`` when the process that holds it frees it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __del__(self) -> None:
        append_line(self.path, f"collected {os.getpid()}")


class Plain:
    def method(self) -> None:
        pass


def make_plain(_: Any = None) -> Plain:
    return Plain()


# --- tasks that block until released ---------------------------------------------------------


def block_until_released(x: Any = None) -> Any:
    """Set ``SHARED["started"]``, then wait for ``SHARED["release"]`` (never killed)."""
    SHARED["started"].set()
    SHARED["release"].wait(BLOCK_LIMIT)
    return x


def block_on(x: int, target: int) -> int:
    """Item ``target`` blocks until released; every item returns ``x * 10``."""
    if x == target:
        block_until_released()
    return x * 10


def record_and_block_on(x: int, target: int, log: str) -> int:
    """Append ``x`` to ``log``; item ``target`` then blocks until released."""
    append_line(log, str(x))
    return block_on(x, target)


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


def hang_unless(x: Any, log: str, release_file: str) -> Any:
    """Log the start, then wait (polling, so a thread pool's asynchronous exception can land)
    until ``release_file`` exists; returns ``x``."""
    log_start(x, log)
    while not os.path.exists(release_file):
        time.sleep(0.02)  # sleep-ok: a task that runs until the test releases it
    return x


def block_from(x: int, first_blocked: int, log: str, release_file: str) -> int:
    """Items below ``first_blocked`` return at once; the others log their start and block
    until ``release_file`` exists (see :func:`hang_unless`)."""
    if x < first_blocked:
        return x
    return hang_unless(x, log, release_file)  # type: ignore[no-any-return]


def wait_event(x: Any, event: threading.Event, started: Optional[threading.Event] = None) -> Any:
    """Thread pools only: block on ``event`` (a ``threading.Event``) and return ``x``.

    Loops over short waits so the thread pool's asynchronous timeout exception can land."""
    if started is not None:
        started.set()
    deadline = time.monotonic() + BLOCK_LIMIT * 3
    while not event.wait(0.02) and time.monotonic() < deadline:
        pass
    return x


# --- tasks that hang until the pool stops them -----------------------------------------------


def hang_forever(_: Any = None) -> None:
    time.sleep(HANG)  # sleep-ok: meant to hang until the pool kills us


def hang_after_started(_: Any = None) -> None:
    """Set ``SHARED["started"]``, then hang (``Event.set`` is safe to be killed after)."""
    SHARED["started"].set()
    time.sleep(HANG)  # sleep-ok: meant to hang until the pool kills us


def signal_then_hang(x: int) -> int:
    """Item 0 sets ``SHARED["started"]`` and hangs until the pool stops it; others return."""
    if x == 0:
        SHARED["started"].set()
        time.sleep(HANG)  # sleep-ok: meant to hang until the pool terminates this worker
    return x


def hang_on(x: int, target: int) -> int:
    """``x * 2``; item ``target`` hangs until the pool stops it."""
    if x == target:
        time.sleep(HANG)  # sleep-ok: meant to hang until the pool kills this worker
    return x * 2


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


def exit_on_sigterm_then_hang_if(x: int, hang_on: int, log: str) -> int:
    """Like :func:`record_and_hang_if`, but SIGTERM raises SystemExit inside the task (a common
    application handler), so the worker survives SIGTERM and goes on with its next items."""

    def on_term(*_: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_term)
    return record_and_hang_if(x, hang_on, log)


def fail_first_then_hang(x: int, log: str) -> int:
    """Item 0 raises :class:`Boom`; every other item records that it started, then hangs."""
    if x == 0:
        raise Boom("first item failed")
    append_line(log, str(x))
    time.sleep(HANG)  # sleep-ok: meant to hang until the pool terminates this worker
    return x  # pragma: no cover - never reached


def log_then_hang(x: Any, log: str) -> Any:
    """Log the start of item ``x``, then hang until the pool kills the worker."""
    log_start(x, log)
    time.sleep(HANG)  # sleep-ok: meant to hang until the pool kills us
    return x  # pragma: no cover


def nap_on_three(x: int) -> int:
    """Hangs on item 3 until its worker process is stopped (a timed task that overruns)."""
    if x == 3:
        time.sleep(HANG)  # sleep-ok: stopped by the task timeout, never waited for
    return x


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


#: the ways a task can hang, by how hard it is to stop
HANGS = {
    "sleep": hang_sleep,
    "spin": hang_spin,
    "select": hang_select,
    "sigterm-ignored": hang_ignoring_sigterm,
    "sigterm-swallowed": hang_swallowing_sigterm,
}


def hang_with_finally(pid_file: str, marker: str) -> None:
    """Write this worker's pid, then hang; the ``finally`` block writes ``marker``."""
    try:
        write_atomically(pid_file, str(os.getpid()))
        while True:
            time.sleep(0.05)  # sleep-ok: hangs until the pool stops this worker
    finally:
        write_atomically(marker, "unwound")


def hang_ignoring_stops(pid_file: str, log: str) -> None:
    """Write this worker's pid, then hang, swallowing every exception raised into it (and
    logging it to ``log``): only SIGKILL ends it."""
    write_atomically(pid_file, str(os.getpid()))
    while True:
        try:
            while True:
                time.sleep(0.05)  # sleep-ok: hangs until SIGKILLed
        except BaseException as exc:
            append_line(log, type(exc).__name__)


def close_fds_then_sleep(seconds: float, log: str) -> str:
    """Close every inherited descriptor (as daemonising code does), then run ``seconds``."""
    append_line(log, f"start {os.getpid()}")
    os.closerange(3, 4096)
    time.sleep(seconds)  # sleep-ok: a task that is meant to take this long
    return "done"


# --- tasks that start processes of their own -------------------------------------------------

#: the subprocesses a task started, kept referenced so their objects never warn on collection
_children: list[subprocess.Popen[bytes]] = []


def start_sleeper(pid_file: str) -> int:
    """Start ``sleep 300`` from this (worker) process; its pid goes to ``pid_file``."""
    child = subprocess.Popen(["sleep", "300"])
    _children.append(child)
    write_atomically(pid_file, str(child.pid))
    return child.pid


def sleeper_then(pid_file: str, then: str) -> int:
    """Start a sleeper, then ``then``: "return" its pid, "crash" (SIGKILL this worker), or
    "hang" until stopped."""
    pid = start_sleeper(pid_file)
    if then == "return":
        return pid
    if then == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
    while True:
        time.sleep(0.05)  # sleep-ok: hangs until the pool stops this worker


def fork_child_then_hang(pid_file: str, release_file: str) -> None:
    """Fork a child that outlives this task (it inherits the worker's descriptors, the
    sentinel pipe among them) and lives until ``release_file`` exists; then hang.  The child
    leaves the worker's process group (``setsid``, as a daemon would), the one way a process a
    task starts escapes when the pool stops the worker."""
    child = os.fork()
    if child == 0:
        try:
            os.setsid()
            append_line(pid_file, str(os.getpid()))
            deadline = time.monotonic() + 30.0
            while not os.path.exists(release_file) and time.monotonic() < deadline:
                time.sleep(0.02)  # sleep-ok: polling a file under a deadline
        finally:
            os._exit(0)
    time.sleep(HANG)  # sleep-ok: stopped by the task's timeout


# --- crashes ---------------------------------------------------------------------------------


def die(how: str) -> None:
    """Kill the calling worker: ``"sigkill"``, ``"exit"`` (``os._exit(3)``) or ``"segv"``."""
    sys.stdout.flush()
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif how == "exit":
        os._exit(3)
    elif how == "segv":
        # Keep the crash quiet: faulthandler (enabled by pytest in the parent and inherited
        # under fork) would print a traceback of every thread to stderr.
        import ctypes
        import faulthandler

        faulthandler.disable()
        ctypes.string_at(0)
    else:  # pragma: no cover - a test typo
        raise ValueError(how)
    time.sleep(HANG)  # sleep-ok: the signal is delivered before we get here


def crash_on(x: int, target: int, how: str, log: Optional[str] = None) -> int:
    """Item ``target`` kills its worker (see :func:`die`) after logging ``"<x> <pid> ..."``
    to ``log`` (see :func:`log_start`); the others return ``x * 10``."""
    if x == target:
        if log is not None:
            log_start(x, log)
        die(how)
    return x * 10


def crash_once(x: int, target: int, how: str, log: str, marker: str) -> int:
    """Like :func:`crash_on`, but item ``target`` kills its worker only the first time (the
    first attempt creates ``marker``); it is logged on every attempt."""
    if x == target:
        log_start(x, log)
        try:
            os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return x * 10
        die(how)
    return x * 10


def crash_when_released(_: Any = None) -> None:
    """Wait for ``SHARED["release"]``, then kill the worker with SIGKILL (after ``wait``
    returned, so no multiprocessing lock or sleeper count is left behind)."""
    SHARED["release"].wait(BLOCK_LIMIT)
    die("sigkill")


def crash_every(x: int, every: int) -> int:
    """Items with ``x % every == every - 1`` kill their worker with SIGKILL."""
    if x % every == every - 1:
        die("sigkill")
    return x * 10


def gpu_probe_together(x: Any, log: str, count: int, crash: bool = False) -> Any:
    """Log the start, wait until ``log`` holds ``count`` lines (so that the tasks of one round
    run at the same time, on distinct workers), then crash or report what the worker's
    framework saw (see :class:`support.specs.GpuWorker`)."""
    log_start(x, log)
    wait_for_lines(log, count)
    if crash:
        die("sigkill")
    return mt.current_worker()(x)


# --- serialisation trouble --------------------------------------------------------------------


class Unpicklable:
    """Cannot be pickled at all (not even by cloudpickle): it holds a lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()


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
    """Pickles, but unpickling calls ``TwoArgError(a)``, which raises ``TypeError``."""

    def __init__(self, a: str, b: str) -> None:
        super().__init__(a)
        self.b = b


def raise_unpicklable(x: Any) -> Any:
    raise UnpicklableError(f"unsendable {x!r}")


def raise_two_arg(x: Any) -> Any:
    raise TwoArgError(f"two-arg {x!r}", "extra")


def serial_fault(x: Any, case: str) -> Any:
    """Item ``2`` produces serialisation trouble ``case``; every other item is returned as is
    (for ``"unpicklable-argument"`` the trouble is the item itself)."""
    if x == 2:
        if case == "unpicklable-result":
            return threading.Lock()
        if case == "unpicklable-exception":
            raise UnpicklableError(f"unsendable {x!r}")
        if case == "two-arg-exception":
            raise TwoArgError(f"two-arg {x!r}", "extra")
        if case == "200MB-result":
            return big_result(200)
    return x


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


def count_then_unreadable_on(x: int, target: int, log: str) -> Any:
    """Log one execution of ``x``; ``target``'s result cannot be unpickled in the parent."""
    append_line(log, str(x))
    return RaiseOnUnpickleInParent(x) if x == target else x * 10


def count_then_nested_unreadable_on(x: int, target: int, log: str) -> Any:
    """Like :func:`count_then_unreadable_on`, the bad object nested inside a container."""
    append_line(log, str(x))
    return {"item": [x, RaiseOnUnpickleInParent(x)]} if x == target else x * 10


def _exit_outside(worker_pid: int) -> None:
    if os.getpid() != worker_pid:
        sys.exit(1)


class ExitOnUnpickleInParent:
    """A result whose reconstructor calls ``sys.exit()`` in the parent (the stdlib's
    ``test_exit_during_result_unpickle_in_result_handler`` case)."""

    def __reduce__(self) -> Any:
        return _exit_outside, (os.getpid(),)


def count_then_exit_on_unpickle_on(x: int, target: int, log: str) -> Any:
    """Log one execution of ``x``; unpickling ``target``'s result in the parent exits."""
    append_line(log, str(x))
    return ExitOnUnpickleInParent() if x == target else x * 10


class _NotInParent:
    """A result whose class only workers can find (see :func:`define_not_in_parent`)."""

    def __init__(self, value: Any) -> None:
        self.value = value


def define_not_in_parent() -> None:
    """Pool initializer: publish ``NotInParent`` in this worker only (pickled by name, its
    results then cannot be rebuilt in the parent, which never runs this)."""
    _NotInParent.__qualname__ = "NotInParent"
    globals()["NotInParent"] = _NotInParent


def count_then_missing_class_on(x: int, target: int, log: str) -> Any:
    append_line(log, str(x))
    return _NotInParent(x) if x == target else x * 10


# --- stateful-worker helpers -------------------------------------------------------------------


def call_worker(x: Any = None) -> Any:
    """Call the calling worker's own object (what ``ex.worker`` does)."""
    return mt.current_worker()(x)


def whoami(_: Any = None) -> tuple[Optional[int], int, Optional[str]]:
    """(worker index, pid, build id of the worker's object, if any) without counting a call."""
    obj = mt.current_worker()
    return mt.worker_index(), os.getpid(), getattr(obj, "build_id", None)


def rendezvous(x: Any = None) -> tuple[Optional[int], int, Optional[str]]:
    """Wait at ``SHARED["barrier"]`` (so each of n tasks runs on a distinct worker)."""
    SHARED["barrier"].wait(BLOCK_LIMIT)
    return whoami(x)


def rendezvous_call(x: Any = None) -> Any:
    SHARED["barrier"].wait(BLOCK_LIMIT)
    return call_worker(x)


def worker_pid(x: Any) -> int:
    """The pid of the worker process running this task (through its stateful object)."""
    return int(mt.current_worker()(x))


def worker_pid_then(x: Any, then: str) -> int:
    """``worker_pid``, then "hang" until stopped or "crash" (SIGKILL this worker)."""
    pid = worker_pid(x)
    if then == "crash":
        os.kill(pid, signal.SIGKILL)
    while True:
        time.sleep(0.05)  # sleep-ok: hangs until the pool stops this worker


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
