"""Large pickled buffers through shared memory instead of the pipe.

Guarantees:

* ``decode`` of an ``encode``\\d message gives what ``pickle.loads(pickle.dumps(obj))``
  gives, and the receiver owns it: every out-of-band buffer is copied out of shared memory
  into fresh, private, writable memory before ``decode`` returns, so nothing the receiver
  holds can change under it, and the sender may reuse the region as soon as the receiver
  has copied it.  Each buffer arrives as a ``bytearray``, as a writable buffer pickled
  in-band does (a numpy array is rebuilt on it, writable).
* Small payloads cost what they cost before: an object whose pickle has no out-of-band
  buffer of at least ``min(64 KiB, threshold)`` bytes is pickled once, exactly as the pipe
  always carried it.  Only when the out-of-band buffers (pickle protocol 5: numpy arrays,
  ``pickle.PickleBuffer`` and anything else that offers one) add up to ``threshold`` bytes
  or more do they travel through shared memory; smaller ones go back into the pickle.
* Nothing can leak, whoever dies how: a segment never has a name anyone could forget to
  remove.  It is an anonymous ``memfd`` (Linux) or, without ``memfd_create``, a file
  created in ``/dev/shm`` and unlinked by the next system call, before any other process
  could use it (a SIGKILL between those two calls is the only way to leave one behind);
  the other side gets the descriptor itself over the (Unix socket) connection.  The
  kernel frees the memory when the last descriptor and mapping are gone: a crash, a
  SIGKILL of either side, an abandoned message (a descriptor still in a socket dies with
  the socket) all free it.  This is why no ``multiprocessing.resource_tracker`` is
  involved (its behaviour for ``SharedMemory`` differs across 3.9..3.13: attach-time
  registration, ``track=False`` only from 3.13), and why no ``/dev/shm`` entry survives
  any fault.  (A process forked while a sender or receiver is open inherits its
  descriptor and mapping like any other, and keeps that memory alive until it exits.)
* Where shared memory cannot be had (no memfd and no ``/dev/shm``, as on macOS; creating
  or sizing a segment fails; the connection is not a socket), the message takes the pipe.
* An arena keeps the size of the largest messages in flight at once (plus a quarter)
  until the sender is closed.

Mechanism: each :class:`Sender` (one per connection direction, e.g. per worker slot and
direction) writes into its own *arena*, a segment it reuses for every message, so steady
traffic writes into memory that is already faulted in.  The arena's first 8 bytes hold the
sequence number of the last message the receiver has copied out.  Messages are consumed in
the order they were sent, so the arena is a ring: a new message goes at the start when
everything before it has been consumed, else in the free space after the newest unconsumed
message or, wrapping around, before the oldest; where it fits nowhere the sender moves to a
larger arena (announced with its descriptor) and closes the old one once its last message is
consumed.  Messages must reach the receiver in the order they were encoded (one sender, one
stream).
"""

from __future__ import annotations

import io
import mmap
import os
import pickle
import socket
import stat
import struct
import tempfile
from collections import deque
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler
from typing import Any, Callable, Deque, NamedTuple, Optional

#: Out-of-band buffers adding up to this many bytes or more travel through shared memory.
DEFAULT_THRESHOLD = 1 << 20
#: A buffer smaller than this stays inside the pickle whatever the total: copying it through
#: the pipe costs less than describing it.
_INBAND_BELOW = 64 << 10
#: Where segments are created when the platform has no ``memfd_create``.
SHM_DIR = "/dev/shm"

_HEADER = 64  # bytes at the start of an arena: the consumed counter, then padding
_ALIGN = 64  # buffers start on cache-line boundaries
_CONSUMED = struct.Struct("<q")
_SHM_TAG = 0  # first byte of a shared-memory message; a pickle starts with PROTO (0x80)
_FRAME = struct.Struct("<BQQQBI")  # tag, arena id, sequence, arena size, fd follows, count
_SPAN = struct.Struct("<QQ")  # offset in the arena, length


class SharedMemoryUnavailable(OSError):
    """No shared-memory segment could be created here (the caller uses the pipe)."""


class DescriptorLost(EOFError):
    """The descriptor a message announced did not arrive: the peer is gone (or the stream
    is out of step), never a problem of the object itself."""


class Outgoing(NamedTuple):
    """An encoded message: send ``data``; then, if ``fd`` is set, send it with
    :func:`send_fd` right after (the receiver expects it there).  ``shared_nbytes``: what
    travels through shared memory besides ``data`` (what the message weighs in all is
    ``len(data) + shared_nbytes``)."""

    data: bytes
    fd: Optional[int]
    shared_nbytes: int = 0


def check_threshold(value: Optional[int]) -> int:
    """The byte threshold as an int, ``0`` meaning "never use shared memory" (``None`` too);
    a clear error for anything else."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"shm_threshold must be an int number of bytes or None, not {value!r}")
    if value < 0:
        raise ValueError(f"shm_threshold must be >= 0 bytes (0 or None disables), not {value}")
    return value


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step


def _pickle(obj: object, buffer_callback: Optional[Callable[[Any], bool]] = None) -> bytes:
    """Pickle with multiprocessing's reducers at protocol 5; ``buffer_callback`` as in
    :class:`pickle.Pickler` (passed by position: ``ForkingPickler`` takes no keywords)."""
    buf = io.BytesIO()
    ForkingPickler(buf, 5, True, buffer_callback).dump(obj)
    return buf.getbuffer().tobytes()


def create_segment(size: int, tag: str) -> int:
    """A descriptor of ``size`` bytes of shared memory that has no name (see the module
    docstring); the memory is reserved now, so a full ``/dev/shm`` fails here with an
    ``OSError`` instead of killing a writer with SIGBUS later."""
    fd = -1
    name = f"mtasklite-{os.getpid()}-{tag}"
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None:
        try:
            fd = memfd_create(name, os.MFD_CLOEXEC)
        except OSError:
            fd = -1  # e.g. forbidden by a seccomp profile: try /dev/shm
    if fd < 0:
        if not os.path.isdir(SHM_DIR):
            raise SharedMemoryUnavailable(f"neither memfd_create nor {SHM_DIR} is available")
        fd, path = tempfile.mkstemp(prefix=f"{name}-", dir=SHM_DIR)
        os.unlink(path)  # before anyone else can see it: nothing is left to clean up
    try:
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(fd, 0, size)
        else:  # pragma: no cover - macOS: sized only
            os.ftruncate(fd, size)
    except BaseException:
        os.close(fd)
        raise
    return fd


def can_pass_descriptors(conn: Connection) -> bool:
    """Whether ``conn`` is a Unix socket (a duplex ``Pipe``), which shared memory needs."""
    try:
        return stat.S_ISSOCK(os.fstat(conn.fileno()).st_mode)
    except (OSError, ValueError):
        return False


def send_fd(conn: Connection, fd: int) -> None:
    """Pass ``fd`` over the Unix socket under ``conn`` (one byte with the descriptor)."""
    with socket.fromfd(conn.fileno(), socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        socket.send_fds(sock, [b"F"], [fd])


def recv_fd(conn: Connection) -> int:
    """Receive the descriptor :func:`send_fd` passed over ``conn`` (:class:`DescriptorLost`
    if it does not come)."""
    try:
        with socket.fromfd(conn.fileno(), socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            data, fds, flags, _ = socket.recv_fds(sock, 1, 1)
    except OSError as exc:
        raise DescriptorLost(f"the shared-memory segment did not arrive: {exc!r}") from exc
    if data != b"F" or len(fds) != 1 or flags & getattr(socket, "MSG_CTRUNC", 0):
        for fd in fds:
            os.close(fd)
        raise DescriptorLost("the shared-memory segment announced by the peer did not arrive")
    return fds[0]


def _private_copy(source: memoryview) -> bytearray:
    """A writable copy of ``source`` that nothing else maps, of the type an in-band pickle
    of a writable buffer gives.  (A private mapping advised for huge pages copied 64 MiB in
    8 ms instead of 30, but stalled for 100-400 ms at times on the shared test machine,
    which made the pool's round trips slower and unpredictable.)"""
    return bytearray(source)


class _Arena:
    """One segment a sender writes into, with the messages the receiver has not consumed."""

    def __init__(self, ident: int, size: int, tag: str):
        self.ident = ident
        self.size = size
        self.fd = create_segment(size, f"{tag}-{ident}")
        try:
            self.map = mmap.mmap(self.fd, size)
        except BaseException:
            os.close(self.fd)
            raise
        self.announced = False  # its descriptor went out with a message
        # Regions of messages sent but not yet consumed, oldest first: (sequence, start, end).
        # The receiver consumes them in order, so the free space is a ring.
        self.in_flight: Deque[tuple[int, int, int]] = deque()

    def live_bytes(self) -> int:
        """Bytes of messages the receiver has not consumed yet (forgets consumed ones)."""
        (consumed,) = _CONSUMED.unpack_from(self.map, 0)
        while self.in_flight and self.in_flight[0][0] <= consumed:
            self.in_flight.popleft()
        return sum(end - start for _, start, end in self.in_flight)

    def place(self, nbytes: int) -> Optional[int]:
        """Where ``nbytes`` fit without touching unconsumed data (``None``: nowhere)."""
        self.live_bytes()
        if not self.in_flight:
            return _HEADER if _HEADER + nbytes <= self.size else None
        head = self.in_flight[0][1]
        tail = _round_up(self.in_flight[-1][2], _ALIGN)
        if self.in_flight[-1][1] < head:  # wrapped: the free space is [tail, head)
            return tail if tail + nbytes <= head else None
        if tail + nbytes <= self.size:  # free space: [tail, size) and [_HEADER, head)
            return tail
        return _HEADER if _HEADER + nbytes <= head else None

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)


class Sender:
    """Encodes objects for one receiver, one message after the other (not thread-safe).

    ``threshold``: out-of-band buffers totalling this many bytes or more go through shared
    memory (``0``/``None``: never).  ``tag`` makes segment names in ``/proc/<pid>/fd``
    telling (they have no name in the file system).
    """

    def __init__(self, threshold: Optional[int] = DEFAULT_THRESHOLD, tag: str = "shm"):
        self.threshold = check_threshold(threshold)
        self.tag = tag
        self._inband_below = min(_INBAND_BELOW, self.threshold)
        self._arena: Optional[_Arena] = None
        self._retired: list[_Arena] = []  # replaced arenas with unconsumed messages
        self._sequence = 0
        self._arenas_made = 0
        self._conn_checked = False

    @property
    def arenas_created(self) -> int:
        """How many arenas this sender has made (steady traffic keeps reusing one)."""
        return self._arenas_made

    def encode(self, obj: object) -> Outgoing:
        """The message for ``obj``; send every message, in order, before encoding the next."""
        if not self.threshold:
            return Outgoing(_pickle(obj), None)
        raws: list[memoryview] = []
        minimum = self._inband_below

        def out_of_band(buffer: pickle.PickleBuffer) -> bool:
            try:
                raw = buffer.raw()
            except BufferError:  # not contiguous: let pickle copy it in-band
                return True
            if raw.nbytes < minimum:
                return True
            raws.append(raw)
            return False

        data = _pickle(obj, out_of_band)
        if not raws:
            return Outgoing(data, None)
        try:
            if sum(raw.nbytes for raw in raws) >= self.threshold:
                try:
                    return self._through_arena(data, raws)
                except OSError:
                    pass  # no shared memory to be had now: the pipe still works
            return Outgoing(_pickle(obj), None)
        finally:
            for raw in raws:
                raw.release()

    def send(self, conn: Connection, obj: object) -> int:
        """Encode ``obj`` and send it over ``conn``; the number of bytes the pipe carried."""
        if not self._conn_checked:
            self._conn_checked = True
            if not can_pass_descriptors(conn):  # descriptors pass over Unix sockets only
                self.threshold = 0
        message = self.encode(obj)
        conn.send_bytes(message.data)
        if message.fd is not None:
            send_fd(conn, message.fd)
        return len(message.data)

    def withdraw(self, message: Outgoing) -> Optional[Outgoing]:
        """Take back ``message``, the last one encoded, which will not be sent after all.
        Returns it if it is a plain pickle any receiver can read; ``None`` if it was written
        into this sender's arena (its room is freed: encode the object again if needed)."""
        if message.data[:1] != bytes([_SHM_TAG]):
            return message
        _, ident, sequence, *_ = _FRAME.unpack_from(message.data, 0)
        arena = self._arena
        if arena is None or arena.ident != ident or sequence != self._sequence:
            raise ValueError("only the last message encoded can be withdrawn")
        arena.in_flight.pop()
        self._sequence -= 1
        if message.fd is not None:
            arena.announced = False
        return None

    def _through_arena(self, data: bytes, raws: list[memoryview]) -> Outgoing:
        spans = []
        offset = 0
        for raw in raws:
            spans.append((offset, raw.nbytes))
            offset = _round_up(offset + raw.nbytes, _ALIGN)
        arena, start = self._allocate(offset)
        view = memoryview(arena.map)
        try:
            for (relative, length), raw in zip(spans, raws):
                view[start + relative : start + relative + length] = raw
        finally:
            view.release()
        self._sequence += 1
        arena.in_flight.append((self._sequence, start, start + offset))
        fd = None if arena.announced else arena.fd
        arena.announced = True
        frame = [
            _FRAME.pack(
                _SHM_TAG, arena.ident, self._sequence, arena.size, fd is not None, len(spans)
            )
        ]
        frame.extend(_SPAN.pack(start + relative, length) for relative, length in spans)
        frame.append(data)
        return Outgoing(b"".join(frame), fd, sum(length for _, length in spans))

    def _allocate(self, nbytes: int) -> tuple[_Arena, int]:
        """An arena and an offset with ``nbytes`` free there; a larger arena if needed."""
        self._close_consumed_retired()
        arena = self._arena
        live = 0
        if arena is not None:
            start = arena.place(nbytes)
            if start is not None:
                return arena, start
            live = arena.live_bytes()
            if live:
                self._retired.append(arena)
            else:
                arena.close()
            self._arena = None
        # Room for what is still unconsumed too, and a quarter to spare, so a stream of
        # similar messages settles on one arena instead of growing by a little each time.
        size = _round_up(_HEADER + (live + nbytes) * 5 // 4, mmap.PAGESIZE)
        self._arenas_made += 1
        self._arena = _Arena(self._arenas_made, size, self.tag)
        return self._arena, _HEADER

    def _close_consumed_retired(self) -> None:
        if self._retired:
            for arena in [a for a in self._retired if not a.live_bytes()]:
                self._retired.remove(arena)
                arena.close()

    def close(self) -> None:
        """Unmap and close every arena (the receiver's copies stay valid)."""
        for arena in [*self._retired, *([self._arena] if self._arena else [])]:
            arena.close()
        self._retired.clear()
        self._arena = None


class Receiver:
    """Decodes what one :class:`Sender` encoded, in the same order (not thread-safe)."""

    def __init__(self) -> None:
        self._ident = 0
        self._map: Optional[mmap.mmap] = None

    def recv(self, conn: Connection) -> Any:
        """Receive and decode the next message from ``conn``."""
        return self.decode(conn.recv_bytes(), lambda: recv_fd(conn))

    def decode(self, data: bytes, fetch_fd: Callable[[], int]) -> Any:
        """The object in ``data``; ``fetch_fd`` receives the descriptor of a new arena when the
        message announces one (it must be called for such a message, and only then)."""
        if not data or data[0] != _SHM_TAG:
            return pickle.loads(data)
        _, ident, sequence, size, has_fd, count = _FRAME.unpack_from(data, 0)
        if has_fd:
            self._attach(fetch_fd(), ident, size)
        elif ident != self._ident or self._map is None:
            raise EOFError(f"a shared-memory message refers to unknown segment {ident}")
        shared = self._map
        assert shared is not None
        position = _FRAME.size
        buffers = []
        try:
            with memoryview(shared) as view:
                for _ in range(count):
                    offset, length = _SPAN.unpack_from(data, position)
                    position += _SPAN.size
                    buffers.append(_private_copy(view[offset : offset + length]))
        finally:
            # Copied out (or never will be: a failed copy must not pin the region either),
            # so the sender may reuse it.
            _CONSUMED.pack_into(shared, 0, sequence)
        return pickle.loads(memoryview(data)[position:], buffers=buffers)

    def _attach(self, fd: int, ident: int, size: int) -> None:
        try:
            shared = mmap.mmap(fd, size)
        finally:
            os.close(fd)  # the mapping keeps the memory
        # Messages arrive in order: none will refer to an earlier arena again.
        self.close()
        self._ident, self._map = ident, shared

    def close(self) -> None:
        """Unmap the arena (objects already decoded are the receiver's own)."""
        if self._map is not None:
            self._map.close()
            self._map = None
