"""Worker-side helpers for the Python 3.14/3.15 semantics tests (importable by name, so
``spawn`` and ``forkserver`` workers can unpickle them; see :mod:`process_helpers`).

Tasks that may be killed never wait on a multiprocessing lock: they report through files
(one ``O_APPEND`` write per line) and poll for a release file.
"""

from __future__ import annotations

import os
import time
from typing import Any

from process_helpers import append_line, read_lines  # noqa: F401  # re-exported for the tests

#: upper bound for any wait inside a worker (never reached when things work)
WAIT_LIMIT = 20.0


class FalseyBoolError(Exception):
    """An exception whose ``bool()`` is false."""

    def __bool__(self) -> bool:
        return False


class FalseyLenError(Exception):
    """An exception whose ``len()`` is 0 (so its ``bool()`` is false too)."""

    def __len__(self) -> int:
        return 0


def raiser(exc_type: type[BaseException], message: str) -> None:
    raise exc_type(message)


def wait_until(predicate: Any, timeout: float = WAIT_LIMIT) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)  # sleep-ok: polling a file another process writes
    return True


def report_then_wait(value: Any, log: str, release: str) -> Any:
    """Append ``"<value> <pid>"`` to ``log``, wait until the file ``release`` exists, return
    ``value`` (safe to kill at any point: no lock is held)."""
    append_line(log, f"{value} {os.getpid()}")
    wait_until(lambda: os.path.exists(release))
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
