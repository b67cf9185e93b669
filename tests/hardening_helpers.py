"""Module-level tasks and specs for tests/test_hardening.py (importable by name, so spawned and
forkserver workers can unpickle them; see :mod:`fault_helpers` for the conventions: tasks
report through files, never through shared locks)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import fault_helpers as fh
import mtasklite as mt
import process_helpers as ph

#: upper bound for any blocking wait inside a worker (never reached when things work)
BLOCK_LIMIT = 10.0


def first_word(line: str) -> str:
    """Raises ``StopIteration`` for a line without words (the classic ``next(iter(...))``)."""
    return next(iter(line.split()))


def close_fds_then_sleep(seconds: float, log: str) -> str:
    """Close every inherited descriptor (as daemonising code does), then run ``seconds``."""
    fh.append_line(log, f"start {os.getpid()}")
    os.closerange(3, 4096)
    time.sleep(seconds)  # sleep-ok: a task that is meant to take this long
    return "done"


def fork_child_then_hang(pid_file: str, release_file: str) -> None:
    """Fork a child that outlives this task (it inherits the worker's descriptors, the
    sentinel pipe among them) and lives until ``release_file`` exists; then hang.  The child
    leaves the worker's process group (``setsid``, as a daemon would), the one way a process a
    task starts escapes when the pool stops the worker."""
    child = os.fork()
    if child == 0:
        try:
            os.setsid()
            fh.append_line(pid_file, str(os.getpid()))
            deadline = time.monotonic() + 30.0
            while not os.path.exists(release_file) and time.monotonic() < deadline:
                time.sleep(0.02)  # sleep-ok: polling a file under a deadline
        finally:
            os._exit(0)
    time.sleep(fh.HANG)  # sleep-ok: stopped by the task's timeout


def raise_keyboard_interrupt_on(x: int, target: int) -> int:
    """A task that raises ``KeyboardInterrupt`` itself (no signal involved) for ``target``."""
    if x == target:
        raise KeyboardInterrupt(f"raised by task {x}")
    return x * 10


def count_then_unreadable_on(x: int, target: int, log: str) -> Any:
    """Log one execution of ``x``; ``target``'s result cannot be unpickled in the parent."""
    fh.append_line(log, str(x))
    return ph.RaiseOnUnpickleInParent(x) if x == target else x * 10


class ExitOnUnpickleInParent:
    """A result whose reconstructor calls ``sys.exit()`` in the parent (the stdlib's
    ``test_exit_during_result_unpickle_in_result_handler`` case)."""

    def __reduce__(self) -> Any:
        return _exit_outside, (os.getpid(),)


def _exit_outside(worker_pid: int) -> None:
    if os.getpid() != worker_pid:
        sys.exit(1)


def count_then_exit_on_unpickle_on(x: int, target: int, log: str) -> Any:
    """Log one execution of ``x``; unpickling ``target``'s result in the parent exits."""
    fh.append_line(log, str(x))
    return ExitOnUnpickleInParent() if x == target else x * 10


def count_then_nested_unreadable_on(x: int, target: int, log: str) -> Any:
    """Like :func:`count_then_unreadable_on`, the bad object nested inside a container."""
    fh.append_line(log, str(x))
    return {"item": [x, ph.RaiseOnUnpickleInParent(x)]} if x == target else x * 10


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
    fh.append_line(log, str(x))
    return _NotInParent(x) if x == target else x * 10


@mt.delayed_init
class SlowRebuild:
    """Builds at once the first time; every later build (a replacement) logs its pid and waits
    until ``release_file`` exists (a slow model load the OOM killer may cut short)."""

    def __init__(self, log: str, release_file: str) -> None:
        earlier = fh.read_lines(log)
        fh.append_line(log, str(os.getpid()))
        if earlier:
            deadline = time.monotonic() + BLOCK_LIMIT
            while not Path(release_file).exists() and time.monotonic() < deadline:
                time.sleep(0.01)  # sleep-ok: polling a file under a deadline

    def __call__(self, x: Any) -> Any:
        return x


def release_then_raise_keyboard_interrupt(release_file: str) -> None:
    """Let blocked tasks go (see :func:`fault_helpers.hang_unless`), then raise
    ``KeyboardInterrupt`` as a task's own outcome."""
    Path(release_file).touch()
    raise KeyboardInterrupt("raised by a task")
