"""Reporting through files, and polling for what other processes write.

A task that may be killed never holds a multiprocessing lock (a worker killed while holding
one would wedge the parent), so tasks report through files: one ``O_APPEND`` write per line
is atomic from any process; a pid file is written whole (temporary file, then rename).
Tests wait for these files under a deadline: polling an observable condition is the one kind
of sleeping allowed.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

from support import BLOCK_LIMIT


def append_line(path: Any, line: str) -> None:
    """Append one line atomically (a single O_APPEND write), from any process."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def read_lines(path: Any) -> list[str]:
    """The lines of ``path``; none if it does not exist (yet)."""
    try:
        return Path(path).read_text().splitlines()
    except FileNotFoundError:
        return []


def write_atomically(path: str, text: str) -> None:
    """Write ``path`` whole: a reader never sees it half written."""
    temporary = f"{path}.{os.getpid()}.tmp"
    Path(temporary).write_text(text)
    os.replace(temporary, path)


def stamp(directory: str, tag: str) -> None:
    """Record ``"<pid> <monotonic start time>"`` in ``directory/tag``."""
    append_line(os.path.join(directory, tag), f"{os.getpid()} {time.monotonic()!r}")


def read_stamp(directory: Any, tag: str) -> tuple[int, float]:
    pid, started = read_lines(os.path.join(directory, tag))[-1].split()
    return int(pid), float(started)


def wait_for(
    predicate: Callable[[], Any], timeout: float = BLOCK_LIMIT, interval: float = 0.005
) -> bool:
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


def wait_for_file(path: Any, timeout: float = BLOCK_LIMIT) -> bool:
    """Whether ``path`` exists within ``timeout`` seconds."""
    return wait_for(lambda: os.path.exists(path), timeout, interval=0.01)


def read_pid(pid_file: Any, timeout: float = BLOCK_LIMIT) -> int:
    """The pid written (atomically) to ``pid_file``, waiting up to ``timeout`` for it."""
    pids: list[int] = []

    def ready() -> bool:
        try:
            pids.append(int(Path(pid_file).read_text()))
        except (OSError, ValueError):
            return False
        return True

    if not wait_for(ready, timeout, interval=0.01):
        raise AssertionError(f"no pid in {pid_file} within {timeout} s")
    return pids[-1]
