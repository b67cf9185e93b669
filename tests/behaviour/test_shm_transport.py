"""The shared-memory transport (mtasklite._shm): round trips, ownership, arena reuse, the
pipe fallback, and no leftovers in /dev/shm across real processes and their deaths.

The core path is tested with :class:`support.shm.Blob` and ``pickle.PickleBuffer`` (no
numpy); numpy arrays get their own round trip where numpy is installed (the test extra).
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import threading
import zlib
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest

import support
from mtasklite import _shm
from support import processes, shm

MIB = 1 << 20
START_METHODS = ["fork", "spawn", "forkserver"]


@pytest.fixture()
def pair() -> Iterator[tuple[Any, Any]]:
    """Two ends of one duplex pipe in this process (small messages only)."""
    left, right = multiprocessing.Pipe(duplex=True)
    yield left, right
    left.close()
    right.close()


@pytest.fixture(autouse=True)
def no_leftovers() -> Iterator[None]:
    before = shm.shm_entries()
    yield
    assert shm.shm_entries() - before == set()


def _round_trip(sender: _shm.Sender, receiver: _shm.Receiver, obj: object) -> Any:
    message = sender.encode(obj)
    return receiver.decode(message.data, lambda: os.dup(message.fd))  # type: ignore[arg-type]


# --- the threshold ---------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [(None, 0), (0, 0), (1, 1), (MIB, MIB)])
def test_check_threshold_accepts_bytes_and_none(value: Any, expected: int) -> None:
    assert _shm.check_threshold(value) == expected


@pytest.mark.parametrize(
    ("value", "error", "words"),
    [
        (-1, ValueError, ">= 0"),
        ("1", TypeError, "int"),
        (True, TypeError, "int"),
        (1.5, TypeError, "int"),
    ],
)
def test_check_threshold_rejects_bad_values_naming_them(value: Any, error: Any, words: str) -> None:
    with pytest.raises(error, match="shm_threshold") as info:
        _shm.check_threshold(value)
    assert words in str(info.value)


# --- one process: encoding, ownership, reuse --------------------------------------------------


def test_small_objects_are_one_plain_pickle() -> None:
    sender = _shm.Sender()
    obj = {"x": [1, 2.5, "three"], "blob": shm.Blob(b"tiny")}
    message = sender.encode(obj)
    assert message.fd is None
    assert message.data[:1] == b"\x80"  # a plain pickle, as the pipe always carried
    assert pickle.loads(message.data) == obj
    assert sender.arenas_created == 0


def test_big_buffers_travel_through_shared_memory() -> None:
    sender, receiver = _shm.Sender(), _shm.Receiver()
    blobs = [shm.Blob(shm.pattern(2 * MIB, seed)) for seed in range(3)]
    obj = {"blobs": blobs, "raw": pickle.PickleBuffer(shm.pattern(MIB, 7)), "n": 5}
    message = sender.encode(obj)
    assert message.fd is not None
    assert len(message.data) < 4096  # the megabytes are not in the message...
    assert message.shared_nbytes == 7 * MIB  # ...but it says what they weigh
    decoded = receiver.decode(message.data, lambda: os.dup(message.fd))  # type: ignore[arg-type]
    assert decoded["blobs"] == blobs
    assert bytes(decoded["raw"]) == bytes(shm.pattern(MIB, 7))
    # The same type an in-band pickle gives (a writable buffer comes back a bytearray).
    in_band = pickle.loads(pickle.dumps(obj["raw"], protocol=5))
    assert type(decoded["raw"]) is type(in_band) is bytearray
    assert decoded["n"] == 5
    sender.close()
    receiver.close()


def test_buffers_adding_up_below_the_threshold_stay_in_the_pipe() -> None:
    sender, receiver = _shm.Sender(threshold=MIB), _shm.Receiver()
    obj = [shm.Blob(shm.pattern(200 << 10, seed)) for seed in range(4)]  # 800 KiB in all
    message = sender.encode(obj)
    assert message.fd is None and message.data[:1] == b"\x80"
    assert _round_trip(sender, receiver, obj) == obj
    assert sender.arenas_created == 0


def test_threshold_counts_the_total_not_each_buffer() -> None:
    sender, receiver = _shm.Sender(threshold=MIB), _shm.Receiver()
    obj = [shm.Blob(shm.pattern(300 << 10, seed)) for seed in range(4)]  # 1.2 MiB in all
    assert sender.encode(obj).fd is not None
    sender.close()
    receiver.close()


@pytest.mark.parametrize("threshold", [0, None])
def test_threshold_zero_or_none_disables_shared_memory(threshold: Any) -> None:
    sender = _shm.Sender(threshold=threshold)
    message = sender.encode(shm.Blob(shm.pattern(4 * MIB, 1)))
    assert message.fd is None
    assert pickle.loads(message.data) == shm.Blob(shm.pattern(4 * MIB, 1))


def test_what_the_receiver_gets_is_its_own() -> None:
    sender, receiver = _shm.Sender(threshold=MIB), _shm.Receiver()
    first = _round_trip(sender, receiver, shm.Blob(shm.pattern(2 * MIB, 1)))
    # The next message lands on the same bytes of the same arena...
    second = _round_trip(sender, receiver, shm.Blob(shm.pattern(2 * MIB, 2)))
    assert sender.arenas_created == 1
    # ...and the first value did not change: it was copied out, and is writable.
    assert not isinstance(first.data, bytes)
    assert first == shm.Blob(shm.pattern(2 * MIB, 1))
    assert second == shm.Blob(shm.pattern(2 * MIB, 2))
    first.data[0] ^= 0xFF
    assert second == shm.Blob(shm.pattern(2 * MIB, 2))
    sender.close()
    receiver.close()


def test_steady_traffic_reuses_one_arena() -> None:
    sender, receiver = _shm.Sender(threshold=MIB), _shm.Receiver()
    for seed in range(10):
        obj = shm.Blob(shm.pattern(3 * MIB, seed))
        assert _round_trip(sender, receiver, obj) == obj
    assert sender.arenas_created == 1
    obj = shm.Blob(shm.pattern(16 * MIB, 99))  # bigger: grows once...
    assert _round_trip(sender, receiver, obj) == obj
    for seed in range(3):  # ...and smaller ones fit the grown arena
        obj = shm.Blob(shm.pattern(3 * MIB, seed))
        assert _round_trip(sender, receiver, obj) == obj
    assert sender.arenas_created == 2
    sender.close()
    receiver.close()


def test_unconsumed_messages_are_never_overwritten() -> None:
    """Messages sent ahead (before the receiver read the previous one) get their own room."""
    sender, receiver = _shm.Sender(threshold=MIB), _shm.Receiver()
    objs = [shm.Blob(shm.pattern(2 * MIB, seed)) for seed in range(5)]
    messages = [sender.encode(obj) for obj in objs]
    fds = [m.fd for m in messages if m.fd is not None]
    for message, obj in zip(messages, objs):
        fd = message.fd
        assert receiver.decode(message.data, lambda fd=fd: os.dup(fd)) == obj  # type: ignore
    assert len(fds) == sender.arenas_created >= 2
    # Everything consumed: the next message goes back to the start of the current arena.
    made = sender.arenas_created
    assert _round_trip(sender, receiver, objs[0]) == objs[0]
    assert sender.arenas_created == made
    sender.close()
    receiver.close()


def test_a_pipelined_stream_wraps_around_the_arena_instead_of_growing() -> None:
    """Always one message unconsumed (a Run sent ahead): the arena fits two and wraps."""
    sender, receiver = _shm.Sender(threshold=MIB), _shm.Receiver()
    queue = [sender.encode(shm.Blob(shm.pattern(2 * MIB, 0)))]
    for seed in range(1, 12):
        queue.append(sender.encode(shm.Blob(shm.pattern(2 * MIB, seed))))
        oldest = queue.pop(0)
        fd = oldest.fd
        decoded = receiver.decode(oldest.data, lambda fd=fd: os.dup(fd))  # type: ignore
        assert decoded == shm.Blob(shm.pattern(2 * MIB, seed - 1))
    assert sender.arenas_created == 2  # one for the first message, one that holds two
    sender.close()
    receiver.close()


def test_a_failed_copy_out_does_not_pin_its_region(monkeypatch: pytest.MonkeyPatch) -> None:
    sender, receiver = _shm.Sender(threshold=MIB), _shm.Receiver()
    first = sender.encode(shm.Blob(shm.pattern(2 * MIB, 1)))
    with monkeypatch.context() as patch:
        patch.setattr(_shm, "_private_copy", lambda source: _fail_memory())
        with pytest.raises(MemoryError):
            receiver.decode(first.data, lambda: os.dup(first.fd))  # type: ignore[arg-type]
    obj = shm.Blob(shm.pattern(2 * MIB, 2))
    assert _round_trip(sender, receiver, obj) == obj
    assert sender.arenas_created == 1  # the region was released, not worked around
    sender.close()
    receiver.close()


def _fail_memory() -> Any:
    raise MemoryError


# --- the copy-out into fresh memory ----------------------------------------------------------

THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")


@pytest.mark.parametrize(
    ("setting", "advise"),
    [
        ("always [madvise] never\n", True),
        ("[always] madvise never\n", False),  # every big allocation gets huge pages unasked
        ("always madvise [never]\n", False),
        ("", False),
    ],
)
def test_huge_pages_are_advised_only_where_the_kernel_waits_for_advice(
    setting: str, advise: bool
) -> None:
    assert _shm.huge_pages_need_advice(setting) is advise


def _pretend_huge_page_setting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, setting: Optional[str]
) -> None:
    """Make ``_shm`` read ``setting`` as the kernel's (``None``: no such file) afresh."""
    path = tmp_path / "enabled"
    if setting is not None:
        path.write_text(setting)
    monkeypatch.setattr(_shm, "_THP_SETTING", str(path))
    monkeypatch.setattr(_shm, "_huge_page_calls", None)
    monkeypatch.setattr(_shm, "_huge_pages_checked", False)


@pytest.mark.parametrize("setting", ["always [madvise] never", "[always] madvise never", None])
def test_a_big_copy_out_is_the_receivers_own_bytearray_whatever_the_setting(
    setting: Optional[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _pretend_huge_page_setting(monkeypatch, tmp_path, setting)
    size = 16 * MIB + 12345  # big enough to be advised; not a whole number of pages
    sender, receiver = _shm.Sender(threshold=MIB), _shm.Receiver()
    first = _round_trip(sender, receiver, shm.Blob(shm.pattern(size, 1)))
    second = _round_trip(sender, receiver, shm.Blob(shm.pattern(size, 2)))  # same arena bytes
    assert sender.arenas_created == 1
    assert type(first.data) is type(second.data) is bytearray
    # Every byte was written (storage that starts out unwritten holds nothing stale)...
    assert first == shm.Blob(shm.pattern(size, 1))
    assert second == shm.Blob(shm.pattern(size, 2))
    # ...and each copy is private: changing one changes nothing else.
    first.data[-1] ^= 0xFF
    first.data[0] ^= 0xFF
    assert second == shm.Blob(shm.pattern(size, 2))
    sender.close()
    receiver.close()


def _vm_flags(address: int) -> list[str]:
    """The ``VmFlags`` of the mapping of this process that holds ``address``."""
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                low, high = (int(part, 16) for part in head.split("-"))
                inside = low <= address < high
            elif inside and head == "VmFlags:":
                return line.split()[1:]
    raise AssertionError(f"no mapping holds {address:#x}")


@pytest.mark.skipif(not THP_SETTING.exists(), reason="no transparent huge pages here")
def test_big_copies_are_advised_for_huge_pages_where_that_helps(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import ctypes

    source = shm.pattern(16 * MIB, 3)
    _pretend_huge_page_setting(monkeypatch, tmp_path, "always [madvise] never")
    advised = _shm._private_copy(memoryview(source))
    assert advised == source
    address = ctypes.addressof(ctypes.c_char.from_buffer(advised))
    # A whole huge page of the buffer, whatever its alignment, is advised (flag "hg").
    assert "hg" in _vm_flags(address + 8 * MIB)
    # Where huge pages come unasked (or never), nothing is looked up or advised.
    _pretend_huge_page_setting(monkeypatch, tmp_path, "[always] madvise never")
    assert _shm._huge_page_api() is None
    assert _shm._private_copy(memoryview(source)) == source


def test_a_withdrawn_message_frees_its_room_and_its_announcement() -> None:
    sender, receiver = _shm.Sender(threshold=MIB), _shm.Receiver()
    plain = sender.encode(shm.Blob(b"small"))
    assert sender.withdraw(plain) is plain  # a plain pickle stays valid for anyone
    shared = sender.encode(shm.Blob(shm.pattern(2 * MIB, 1)))
    assert shared.fd is not None
    assert sender.withdraw(shared) is None
    # The next message reuses the room and announces the arena again (the first never went).
    obj = shm.Blob(shm.pattern(2 * MIB, 2))
    again = sender.encode(obj)
    assert again.fd == shared.fd
    assert receiver.decode(again.data, lambda: os.dup(again.fd)) == obj  # type: ignore
    assert sender.arenas_created == 1
    sender.close()
    receiver.close()


def test_only_the_last_message_can_be_withdrawn() -> None:
    sender = _shm.Sender(threshold=MIB)
    first = sender.encode(shm.Blob(shm.pattern(2 * MIB, 1)))
    sender.encode(shm.Blob(shm.pattern(2 * MIB, 2)))
    with pytest.raises(ValueError, match="last message"):
        sender.withdraw(first)
    sender.close()


def test_a_lost_descriptor_is_reported_as_such(pair: tuple[Any, Any]) -> None:
    left, right = pair
    sender, receiver = _shm.Sender(threshold=MIB), _shm.Receiver()
    message = sender.encode(shm.Blob(shm.pattern(2 * MIB, 1)))
    left.send_bytes(message.data)
    left.close()  # the sender dies before passing the descriptor
    with pytest.raises(_shm.DescriptorLost):
        receiver.recv(right)
    sender.close()


def test_close_releases_every_segment() -> None:
    before = shm.own_segment_fds()
    sender, receiver = _shm.Sender(threshold=MIB), _shm.Receiver()
    messages = [sender.encode(shm.Blob(shm.pattern(2 * MIB, seed))) for seed in range(3)]
    assert shm.own_segment_fds() > before
    first = messages[0]
    receiver.decode(first.data, lambda: os.dup(first.fd))  # type: ignore[arg-type]
    sender.close()
    receiver.close()
    assert shm.own_segment_fds() == before


# --- the pipe fallback ------------------------------------------------------------------------


def _fail(*args: Any) -> int:
    raise OSError(28, "No space left on device")


def test_falls_back_to_the_pipe_when_no_segment_can_be_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_shm, "create_segment", _fail)
    sender, receiver = _shm.Sender(threshold=MIB), _shm.Receiver()
    obj = shm.Blob(shm.pattern(4 * MIB, 3))
    message = sender.encode(obj)
    assert message.fd is None and message.data[:1] == b"\x80"
    assert receiver.decode(message.data, lambda: pytest.fail("no descriptor expected")) == obj


def test_without_memfd_segments_are_unlinked_dev_shm_files(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if not os.path.isdir(_shm.SHM_DIR):
        pytest.skip("no /dev/shm here")
    monkeypatch.delattr(os, "memfd_create", raising=False)
    sender, receiver = _shm.Sender(threshold=MIB), _shm.Receiver()
    obj = shm.Blob(shm.pattern(2 * MIB, 4))
    message = sender.encode(obj)
    assert message.fd is not None
    assert shm.shm_entries() == set() or all(
        not name.startswith(f"{shm.SHM_PREFIX}-{os.getpid()}-") for name in shm.shm_entries()
    )
    assert receiver.decode(message.data, lambda: os.dup(message.fd)) == obj  # type: ignore
    sender.close()
    receiver.close()


def test_without_memfd_or_dev_shm_the_pipe_carries_everything(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delattr(os, "memfd_create", raising=False)
    monkeypatch.setattr(_shm, "SHM_DIR", str(tmp_path / "missing"))
    with pytest.raises(_shm.SharedMemoryUnavailable):
        _shm.create_segment(4096, "probe")
    sender, receiver = _shm.Sender(threshold=MIB), _shm.Receiver()
    obj = shm.Blob(shm.pattern(2 * MIB, 5))
    message = sender.encode(obj)
    assert message.fd is None
    assert receiver.decode(message.data, lambda: pytest.fail("no descriptor expected")) == obj


def test_a_connection_that_cannot_pass_descriptors_uses_the_pipe() -> None:
    reader, writer = multiprocessing.Pipe(duplex=False)  # os.pipe(): no SCM_RIGHTS
    sender, receiver = _shm.Sender(threshold=MIB), _shm.Receiver()
    obj = shm.Blob(shm.pattern(MIB + 1, 6))
    thread = threading.Thread(target=sender.send, args=(writer, obj))
    thread.start()
    assert receiver.recv(reader) == obj
    thread.join()
    assert sender.arenas_created == 0
    reader.close()
    writer.close()


def test_send_and_recv_pass_the_arena_over_a_socket(pair: tuple[Any, Any]) -> None:
    left, right = pair
    sender, receiver = _shm.Sender(threshold=MIB), _shm.Receiver()
    for seed in range(3):
        obj = shm.Blob(shm.pattern(2 * MIB, seed))
        sent = sender.send(left, obj)
        assert sent < 4096
        assert receiver.recv(right) == obj
    sender.close()
    receiver.close()


# --- real processes ---------------------------------------------------------------------------


def _start_echo(method: str, dev_shm: bool) -> tuple[Any, Any]:
    ctx = multiprocessing.get_context(method)
    mine, theirs = ctx.Pipe(duplex=True)
    child = ctx.Process(target=shm.echo_server, args=(theirs, dev_shm, MIB), daemon=True)
    child.start()
    theirs.close()
    return mine, child


@pytest.mark.timeout(60)
@pytest.mark.parametrize("dev_shm", [False, True], ids=["memfd", "dev-shm"])
@pytest.mark.parametrize("method", START_METHODS)
def test_round_trips_between_processes(
    method: str, dev_shm: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if dev_shm:
        monkeypatch.delattr(os, "memfd_create", raising=False)
    before = shm.shm_entries()
    conn, child = _start_echo(method, dev_shm)
    sender, receiver = _shm.Sender(threshold=MIB), _shm.Receiver()
    try:
        for seed, size in enumerate([2 * MIB, 2 * MIB, 5 * MIB, 100, 3 * MIB]):
            data = shm.pattern(size, seed)
            sender.send(conn, shm.Blob(data))
            crc, echoed = receiver.recv(conn)
            assert crc == zlib.crc32(data)
            assert echoed == shm.Blob(data[::-1])
            assert shm.shm_entries() == before  # no name exists even while running
        sender.send(conn, "exit")
        child.join(20)
        assert child.exitcode == 0
    finally:
        sender.close()
        receiver.close()
        conn.close()
    assert shm.shm_entries() == before


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", START_METHODS)
def test_a_killed_receiver_leaves_nothing(method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "memfd_create", raising=False)  # the case with files in /dev/shm
    before, fds_before = shm.shm_entries(), shm.own_segment_fds()
    conn, child = _start_echo(method, dev_shm=True)
    sender, receiver = _shm.Sender(threshold=MIB), _shm.Receiver()
    sender.send(conn, shm.Blob(shm.pattern(2 * MIB, 1)))
    receiver.recv(conn)  # both arenas exist and are mapped on both sides
    sender.send(conn, shm.Blob(shm.pattern(2 * MIB, 2)))
    receiver.recv(conn)
    sender.send(conn, "die")
    try:  # a bigger arena: its descriptor is in the socket (or the send fails) as it dies
        sender.send(conn, shm.Blob(shm.pattern(8 * MIB, 3)))
    except OSError:
        pass
    child.join(20)
    assert child.exitcode == -signal.SIGKILL
    # EOF, or a reset where it died with our last message unread: the peer is gone either way.
    with pytest.raises((EOFError, ConnectionResetError)):
        receiver.recv(conn)
    sender.close()
    receiver.close()
    conn.close()
    assert shm.shm_entries() == before
    assert shm.own_segment_fds() == fds_before


@pytest.mark.timeout(90)
@pytest.mark.parametrize("method", START_METHODS)
def test_a_sigkilled_parent_leaves_nothing(method: str) -> None:
    before = shm.shm_entries()
    env = support.child_env()
    middle = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from support import shm; shm.middle_parent({method!r}, True, {2 * MIB})",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert middle.stdout is not None
        child_pid = int(middle.stdout.readline())
        assert middle.stdout.readline().strip() == "ready"
        middle.kill()
        middle.wait(20)
        # The child sees its pipe close (EOF) and exits; nothing else may remain.
        assert processes.wait_gone([child_pid], 20) == set()
    finally:
        if middle.poll() is None:
            middle.kill()
            middle.wait(20)
        for stream in (middle.stdin, middle.stdout):
            if stream is not None:
                stream.close()
    assert shm.shm_entries() == before


# --- numpy, where installed (the test extra) --------------------------------------------------


def test_numpy_arrays_round_trip_and_are_writable() -> None:
    np = pytest.importorskip("numpy")
    sender, receiver = _shm.Sender(threshold=MIB), _shm.Receiver()
    arrays = {
        "c": np.arange(MIB, dtype=np.float64).reshape(1024, 1024),
        "f": np.asfortranarray(np.arange(MIB, dtype=np.int32).reshape(1024, 1024)),
        "strided": np.arange(4 * MIB, dtype=np.uint8)[::2],  # not contiguous: in-band
        "small": np.arange(10),
    }
    decoded = _round_trip(sender, receiver, arrays)
    for key, array in arrays.items():
        assert decoded[key].dtype == array.dtype
        np.testing.assert_array_equal(decoded[key], array)
        decoded[key][...] = 0  # the receiver's own, writable memory
    assert decoded["f"].flags.f_contiguous
    np.testing.assert_array_equal(arrays["c"], np.arange(MIB, dtype=np.float64).reshape(1024, 1024))
    sender.close()
    receiver.close()
