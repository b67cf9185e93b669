"""How the dispatcher thread sleeps: one wait on every pipe, sentinel and its wakeup pipe."""

from __future__ import annotations

import math
import os
import select
import threading
from typing import Any, Optional


class WakeupPipe:
    """Lets any thread make the dispatcher look at its queue and flags.

    Guarantee: a ``wakeup()`` made after a state change is never lost: the dispatcher,
    once woken, reads state only after clearing the pipe.  At most one byte is pending at a
    time, so a burst of submits costs one system call, not one each.
    """

    def __init__(self) -> None:
        self.read_fd = self.write_fd = -1
        self.lock = threading.Lock()  # orders writes against clearing and closing the pipe
        self.pending = True  # until the pipe exists nobody needs waking: no writes

    def open(self) -> None:
        """Open the pipe (just before the dispatcher thread starts; it closes it)."""
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self.write_fd, False)
        self.pending = False

    def wakeup(self) -> None:
        """Any thread, the pool's lock held or not."""
        if self.pending:
            return
        with self.lock:
            if not self.pending:
                self.pending = True
                try:
                    os.write(self.write_fd, b"\0")
                except BlockingIOError:
                    pass  # full: a wakeup is pending anyway

    def clear(self) -> None:
        # Drain, then re-arm, both under the writers' lock: re-arming first would let a
        # writer's byte be drained while its flag stays set, and every later wakeup would be
        # skipped (a lost wakeup).  Callers change state before waking us, and we read state
        # only after this, so a wakeup skipped while the flag was set is never needed.
        with self.lock:
            try:
                # One read is enough unless it fills the buffer (each system call also costs
                # a GIL hand-off while a caller thread runs).
                while len(os.read(self.read_fd, 4096)) == 4096:
                    pass
            except BlockingIOError:
                pass
            self.pending = False

    def close(self) -> None:
        with self.lock:
            self.pending = True  # no more writes: the pipe is closed
            os.close(self.read_fd)
            os.close(self.write_fd)


class Poller:
    """``multiprocessing.connection.wait`` on a ``select.poll`` kept between calls, instead
    of a selector built and filled on every call (the dispatcher waits several times per
    task)."""

    def __init__(self) -> None:
        self._poll = select.poll()
        self._objects: dict[int, Any] = {}  # fd -> what the caller passed

    def wait(self, objects: list[Any], timeout: Optional[float]) -> list[Any]:
        """The objects (connections or file descriptors) that are ready, like ``wait()``."""
        wanted = {obj if isinstance(obj, int) else obj.fileno(): obj for obj in objects}
        if wanted.keys() != self._objects.keys():
            for fd in self._objects.keys() - wanted.keys():
                self._poll.unregister(fd)
            for fd in wanted.keys() - self._objects.keys():
                self._poll.register(fd, select.POLLIN)
        self._objects = wanted
        ms = None if timeout is None else math.ceil(max(0.0, timeout) * 1000)
        events = self._poll.poll(ms)
        # Any event counts (POLLHUP: the peer is gone), as in wait().
        return [wanted[fd] for fd, _ in events]
