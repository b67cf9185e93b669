"""Module-level helpers for the fault-and-abuse suite (test_faults, test_interrupts, ...).

Worker processes started with ``spawn`` or ``forkserver`` unpickle task functions and worker
specs *by name*, so everything a test sends to a worker lives here, in a module importable as
``fault_helpers`` (pytest puts ``tests/`` on ``sys.path``; spawned children inherit that
path through multiprocessing's preparation data; the standalone scripts under
``tests/scripts/`` put ``tests/`` on ``sys.path`` themselves).

Tasks report what they did through files (one ``O_APPEND`` write per line, safe from any
process), never through shared synchronisation objects, because a worker that is killed while
holding a multiprocessing lock would wedge the parent.

The second half holds the process-table and thread checks the tests use to prove that no
worker survives its executor.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import signal
import sys
import threading
import time
from typing import Any, Iterable, Iterator, Optional

import mtasklite as mt
import process_helpers
from process_helpers import append_line, read_lines  # re-exported for the tests

#: upper bound for any blocking wait inside a worker (never reached when things work)
BLOCK_LIMIT = 10.0
#: how long a task that is meant to hang would hang if nothing stopped it
HANG = 3600.0

# --- files -----------------------------------------------------------------------------------


def wait_for(predicate: Any, timeout: float = BLOCK_LIMIT, interval: float = 0.005) -> bool:
    """Poll ``predicate()`` until it is true or ``timeout`` passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return bool(value)
        time.sleep(interval)  # sleep-ok: polling an observable condition under a deadline


def wait_for_lines(path: Any, count: int, timeout: float = BLOCK_LIMIT) -> list[str]:
    """Wait until ``path`` holds at least ``count`` lines; returns them (maybe fewer)."""
    wait_for(lambda: len(read_lines(path)) >= count, timeout)
    return read_lines(path)


# --- plain tasks -----------------------------------------------------------------------------


def square(x: int) -> int:
    return x * x


def identity(x: Any) -> Any:
    return x


def pid_of(_: Any = None) -> int:
    return os.getpid()


def index_and_pid(_: Any = None) -> tuple[Optional[int], int]:
    return mt.worker_index(), os.getpid()


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


def block_from(x: int, first_blocked: int, log: str, release_file: str) -> int:
    """Items below ``first_blocked`` return at once; the others log their start and block
    until ``release_file`` exists (see :func:`hang_unless`)."""
    if x < first_blocked:
        return x
    return hang_unless(x, log, release_file)  # type: ignore[no-any-return]


def log_then_hang(x: Any, log: str) -> Any:
    """Log the start of item ``x``, then hang until the pool kills the worker."""
    log_start(x, log)
    time.sleep(HANG)  # sleep-ok: meant to hang until the pool kills us
    return x  # pragma: no cover


def hang_unless(x: Any, log: str, release_file: str) -> Any:
    """Log the start, then wait (polling, so a thread pool's asynchronous exception can land)
    until ``release_file`` exists; returns ``x``."""
    log_start(x, log)
    while not os.path.exists(release_file):
        time.sleep(0.02)  # sleep-ok: a task that runs until the test releases it
    return x


def wait_event(x: Any, event: threading.Event, started: Optional[threading.Event] = None) -> Any:
    """Thread pools only: block on ``event`` (a ``threading.Event``) and return ``x``.

    Loops over short waits so the thread pool's asynchronous timeout exception can land."""
    if started is not None:
        started.set()
    deadline = time.monotonic() + BLOCK_LIMIT * 3
    while not event.wait(0.02) and time.monotonic() < deadline:
        pass
    return x


def fail_on(x: int, target: int) -> int:
    if x == target:
        raise ValueError(f"bad item {x}")
    return x * 10


def slow_square(x: int, seconds: float = 0.002) -> int:
    time.sleep(seconds)  # sleep-ok: a task that is meant to take this long
    return x * x


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
        import faulthandler

        faulthandler.disable()
        ctypes.string_at(0)
    else:  # pragma: no cover - a test typo
        raise ValueError(how)
    time.sleep(HANG)  # sleep-ok: the signal is delivered before we get here


def crash_on(x: int, target: int, how: str, log: Optional[str] = None) -> int:
    """Item ``target`` kills its worker (see :func:`die`) after logging ``"<x> <pid> ..."``
    to ``log``; the others return ``x * 10``."""
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


# --- serialisation trouble --------------------------------------------------------------------


class Unpicklable:
    """Cannot be pickled at all (not even by cloudpickle): it holds a lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()


def unpicklable_result(x: Any = None) -> Any:
    return threading.Lock()


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


def big_result(megabytes: int = 200) -> bytes:
    return bytes(megabytes * 2**20)


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


# --- stateful workers ------------------------------------------------------------------------


@mt.delayed_init
class Model:
    """A stateful worker; ``fail=True`` makes its constructor raise."""

    def __init__(self, name: str, fail: bool = False) -> None:
        if fail:
            raise RuntimeError(f"cannot load model {name}")
        self.name = name

    def __call__(self, x: Any) -> tuple[str, Any]:
        return self.name, x


@mt.delayed_init
class GpuWorker:
    """The GPU-per-worker recipe: pick the device *before* importing the framework.

    ``__init__`` sets ``CUDA_VISIBLE_DEVICES`` and only then imports the (fake) framework,
    which reads the variable once, at import time, as CUDA runtimes do.
    """

    def __init__(self, device: str) -> None:
        os.environ["CUDA_VISIBLE_DEVICES"] = device
        self.framework = importlib.import_module("fault_helpers_fakegpu")

    def __call__(self, x: Any) -> tuple[Optional[int], int, str, Any]:
        return mt.worker_index(), os.getpid(), self.framework.DEVICES_AT_IMPORT, x


def gpu_probe_together(x: Any, log: str, count: int, crash: bool = False) -> Any:
    """Log the start, wait until ``log`` holds ``count`` lines (so that the tasks of one round
    run at the same time, on distinct workers), then crash or report what the worker's
    framework saw."""
    log_start(x, log)
    wait_for_lines(log, count)
    if crash:
        die("sigkill")
    return mt.current_worker()(x)


# --- input generators ------------------------------------------------------------------------


def failing_input(n: int, fail_at: int, pulled: Optional[list[int]] = None) -> Iterator[int]:
    """Yield ``0..n-1`` but raise ``LookupError`` instead of yielding ``fail_at``."""
    for i in range(n):
        if i == fail_at:
            raise LookupError(f"input broke at {i}")
        if pulled is not None:
            pulled.append(i)
        yield i


# --- process table ---------------------------------------------------------------------------


# Our child processes -> state letter (zombies included), without multiprocessing's helpers.
child_processes = process_helpers.pool_processes


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return False
    return data[data.rindex(b")") + 2 :].split()[0] != b"Z"


def wait_gone(pids: Iterable[int], timeout: float) -> set[int]:
    """Wait until none of ``pids`` is alive (zombies count as gone); returns the survivors."""
    pids = set(pids)
    wait_for(lambda: not any(alive(p) for p in pids), timeout)
    return {p for p in pids if alive(p)}


def wait_children_gone(pids: Iterable[int], timeout: float) -> dict[int, str]:
    """Wait until none of ``pids`` is still our child, *reaped* included; returns survivors."""
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


# --- threads ---------------------------------------------------------------------------------


def is_pool_thread(thread: threading.Thread) -> bool:
    """A thread that belongs to an executor: a process pool's dispatcher, or a thread pool's
    worker or watchdog (tests name their thread pools ``mt-...``; :class:`mtasklite.Pool` and
    the threads pqdm name theirs ``mtasklite-pool``)."""
    name = thread.name
    return name.startswith(("mt-", "mtasklite-pool")) or (
        name.startswith("StatefulProcessPoolExecutor-") and name.endswith("-dispatcher")
    )


def pool_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if is_pool_thread(t)}


def wait_threads_gone(threads: Iterable[threading.Thread], timeout: float) -> list[str]:
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
