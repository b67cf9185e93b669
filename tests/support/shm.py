"""Processes for the shared-memory transport tests (importable by spawned children).

:class:`Blob` is a buffer that pickles out-of-band at protocol 5 without numpy, so the core
path is tested on a bare interpreter.  :func:`echo_server` is the child side of a parent/child
pair: it decodes what the parent sends and answers with a transformed copy, so a test sees
both directions (and both arenas) at work.  :func:`middle_parent` is a parent that a test
can SIGKILL: it runs its own echo child and reports what it started on stdout.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import sys
import threading
import time
import zlib
from typing import Any

from mtasklite import _shm

#: where tests look for leftovers; every segment this module could ever name starts so
SHM_PREFIX = "mtasklite"


class Blob:
    """A bytearray that travels out-of-band at pickle protocol 5 (like a numpy array)."""

    def __init__(self, data: Any):
        # Keep a writable buffer as it arrives (what the receiver got is what it holds).
        with memoryview(data) as view:
            self.data = bytearray(data) if view.readonly else data

    def __reduce_ex__(self, protocol: Any) -> Any:
        if protocol >= 5:
            return Blob, (pickle.PickleBuffer(self.data),)
        return Blob, (bytes(self.data),)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Blob):
            return NotImplemented
        with memoryview(self.data) as mine, memoryview(other.data) as theirs:
            return mine == theirs

    __hash__ = None  # type: ignore[assignment]


def pattern(size: int, seed: int) -> bytearray:
    """``size`` bytes that differ from one ``seed`` to the next (not all zeros)."""
    block = bytes((seed + i) % 251 for i in range(4096))
    return bytearray((block * (size // 4096 + 1))[:size])


def shm_entries() -> set[str]:
    """Our entries in /dev/shm (other processes on the machine have their own)."""
    try:
        return {name for name in os.listdir(_shm.SHM_DIR) if name.startswith(SHM_PREFIX)}
    except FileNotFoundError:
        return set()


def own_segment_fds() -> int:
    """Descriptors of this process that point at one of our segments."""
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        count += SHM_PREFIX in target
    return count


def force_dev_shm() -> None:
    """Make this process create segments as files in /dev/shm (as without memfd_create)."""
    if hasattr(os, "memfd_create"):
        del os.memfd_create


def echo_server(conn: Any, dev_shm: bool, threshold: int) -> None:
    """Answer each ``Blob`` with ``(crc32, reversed Blob)``; ``"exit"`` ends cleanly,
    ``"die"`` SIGKILLs this process before answering, ``"hold"`` answers only after
    a second message (so the first one stays unconsumed on purpose)."""
    if dev_shm:
        force_dev_shm()
    _exit_with_parent()
    receiver, sender = _shm.Receiver(), _shm.Sender(threshold, tag="child")
    try:
        while True:
            try:
                message = receiver.recv(conn)
            except EOFError:
                return
            if message == "exit":
                return
            if message == "die":
                os.kill(os.getpid(), signal.SIGKILL)
            if isinstance(message, Blob):
                sender.send(conn, (zlib.crc32(message.data), Blob(message.data[::-1])))
            else:
                sender.send(conn, message)
    finally:
        sender.close()
        receiver.close()


def _exit_with_parent() -> None:
    # A forked child also holds the parent's end of the pipe, so it would never see EOF:
    # watch the parent itself, as the pool's workers do.
    parent = multiprocessing.parent_process()
    if parent is not None:
        sentinel = parent.sentinel
        threading.Thread(
            target=lambda: (multiprocessing.connection.wait([sentinel]), os._exit(1)),
            daemon=True,
        ).start()


def middle_parent(start_method: str, dev_shm: bool, size: int) -> None:
    """Start an echo child, make both arenas exist, print the child's pid and ``ready``,
    then block until killed."""
    if dev_shm:
        force_dev_shm()
    ctx = multiprocessing.get_context(start_method)
    mine, theirs = ctx.Pipe(duplex=True)
    child = ctx.Process(target=echo_server, args=(theirs, dev_shm, 1 << 16), daemon=True)
    child.start()
    theirs.close()
    sender, receiver = _shm.Sender(1 << 16, tag="middle"), _shm.Receiver()
    sender.send(mine, Blob(pattern(size, 1)))
    receiver.recv(mine)
    sender.send(mine, Blob(pattern(size, 2)))  # left unread by us: in flight when we die
    print(child.pid, flush=True)
    print("ready", flush=True)
    sys.stdin.read()  # until the test kills us (or closes our stdin)


# --- tasks for the process pool tests ---------------------------------------------------------


def reverse(blob: Blob) -> Blob:
    """A task: the blob reversed (a new buffer of the same size comes back)."""
    return Blob(blob.data[::-1])


def numpy_plus_one(array: Any) -> Any:
    return array + 1


def report_then_hang(blob: Blob, path: str) -> None:
    """A task meant to be killed: note that it received ``blob`` (its CRC) in ``path``."""
    with open(path + ".tmp", "w") as out:
        out.write(str(zlib.crc32(blob.data)))
    os.replace(path + ".tmp", path)
    time.sleep(3600)  # sleep-ok: hangs until the pool kills this worker


def die_holding(blob: Blob) -> None:
    """A task: SIGKILL the worker while it holds the argument (and its arena is mapped)."""
    os.kill(os.getpid(), signal.SIGKILL)


def pool_parent(start_method: str, path: str) -> None:
    """A pool parent for the SIGKILL test: big blobs both ways, then every worker hangs
    holding one; prints the worker pids and blocks until killed."""
    import mtasklite as mt

    force_dev_shm()
    ex = mt.StatefulProcessPoolExecutor(2, multiprocessing.get_context(start_method))
    big = Blob(pattern(2 << 20, 3))
    assert ex.submit(reverse, big).result(60) == Blob(big.data[::-1])
    futures = [ex.submit(report_then_hang, big, f"{path}.{i}") for i in range(2)]
    deadline = time.monotonic() + 60
    while not all(os.path.exists(f"{path}.{i}") for i in range(2)):
        if time.monotonic() > deadline:
            raise TimeoutError("the workers did not start their tasks")
        time.sleep(0.01)  # sleep-ok: polling files written by the workers, bounded
    print(*sorted(p.pid for p in multiprocessing.active_children()), flush=True)
    print("ready", flush=True)
    sys.stdin.read()
    del futures


def reverse_pair(pair: tuple[Blob, bytes]) -> tuple[Blob, bytes]:
    """A task on a big out-of-band blob plus in-band bytes: both reversed."""
    blob, data = pair
    return reverse(blob), data[::-1]
