"""How the dispatcher thread sleeps: one wait on every pipe, sentinel and its wakeup pipe."""

from __future__ import annotations

import math
import os
import select
import threading
from typing import Any, Optional


class WakeupPipe:
    """Lets any thread make the dispatcher look at its queue and flags.

    Guarantee: a ``wakeup()`` made after a state change is never lost, and costs a system
    call only when the dispatcher may be asleep.  The dispatcher calls ``arm()`` before it
    reads the state that decides whether it may sleep; from then on a ``wakeup()`` writes a
    byte (at most one is pending), so a change it did not see ends its wait at once.  Once
    the wait returns it calls ``awake()``: until it arms again, ``wakeup()`` writes nothing,
    since the dispatcher reads the state again after arming.  (A caller changes the state,
    then calls ``wakeup()``; the dispatcher arms, then reads the state: either the caller
    sees the pipe armed and writes, or the dispatcher sees the change.)
    """

    def __init__(self) -> None:
        self.read_fd = self.write_fd = -1
        self.lock = threading.Lock()  # orders writes against draining and closing the pipe
        self.pending = True  # no write needed: a byte is pending, or the dispatcher is awake

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

    def arm(self) -> None:
        """The dispatcher is about to read the state before it may sleep: wake it from now."""
        with self.lock:
            self.pending = False

    def awake(self, readable: bool) -> None:
        """The dispatcher's wait returned (``readable``: the pipe has a byte): no writes
        until it arms again."""
        with self.lock:
            self.pending = True
            if not readable:
                return
            try:
                # One read is enough unless it fills the buffer (each system call also costs
                # a GIL hand-off while a caller thread runs).
                while len(os.read(self.read_fd, 4096)) == 4096:
                    pass
            except BlockingIOError:
                pass

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


def readable_now(conn: Any) -> bool:
    """Whether ``conn`` has data (or its peer hung up) right now, without waiting.  What
    ``Connection.poll()`` answers, at a tenth of its cost: that builds a selector per call,
    and the dispatcher asks after every message it reads."""
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN)
    return bool(poller.poll(0))
