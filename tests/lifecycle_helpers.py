"""Module-level tasks for tests/test_lifecycle.py (importable by name in spawned workers).

Each task reports through files: a pid file written atomically (so a reader never sees it
half written), marker files written by ``finally`` blocks and ``close()`` methods.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import mtasklite as mt

#: the subprocesses a task started, kept referenced so their objects never warn on collection
_children: list[subprocess.Popen[bytes]] = []


def write_atomically(path: str, text: str) -> None:
    temporary = f"{path}.{os.getpid()}.tmp"
    Path(temporary).write_text(text)
    os.replace(temporary, path)


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


def read_pid(pid_file: str, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return int(Path(pid_file).read_text())
        except (OSError, ValueError):
            time.sleep(0.01)  # sleep-ok: polling for a file under a deadline
    raise AssertionError(f"no pid in {pid_file} within {timeout} s")


def unused(_: Any = None) -> None:
    """Nothing: a task for a pool that must start a worker."""


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
            with open(log, "a") as f:
                f.write(f"{type(exc).__name__}\n")


def append(path: str, line: str) -> None:
    """One ``O_APPEND`` write: safe from several processes at once."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


@mt.delayed_init
class Closable:
    """A stateful worker that logs ``closed <pid>`` to ``log`` when closed (and raises then
    if ``fail``)."""

    def __init__(self, log: str, fail: bool = False) -> None:
        self.log = log
        self.fail = fail

    def __call__(self, x: Any) -> int:
        return os.getpid()

    def close(self) -> None:
        append(self.log, f"closed {os.getpid()}")
        if self.fail:
            raise RuntimeError("close failed")


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


def lines(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except OSError:
        return []


def log_to(path: str) -> None:
    """Pool initializer: the worker's ``concurrent.futures`` log records go to ``path``."""
    import logging

    logger = logging.getLogger("concurrent.futures")
    logger.addHandler(logging.FileHandler(path))


_held: list[bytes] = []


def hold_memory(megabytes: int) -> int:
    """Keep ``megabytes`` of touched memory alive in this worker (a leak); return its pid."""
    _held.append(b"\x01" * (megabytes << 20))
    return os.getpid()


def resident() -> int:
    """This worker's resident memory in bytes."""
    from mtasklite._procpool import memory

    return memory.resident_bytes()


@mt.delayed_init
class HangingClose:
    """A stateful worker whose ``close()`` never returns (it logs its start to ``log``)."""

    def __init__(self, log: str) -> None:
        self.log = log

    def __call__(self, x: Any) -> int:
        return os.getpid()

    def close(self) -> None:
        append(self.log, f"closing {os.getpid()}")
        while True:
            time.sleep(0.05)  # sleep-ok: a teardown that hangs until SIGKILLed
