"""Micro-benchmark of the shared-memory transport: ``python -m benchmarks.shm_transport``.

A numpy array makes a round trip parent -> child -> parent over a real ``multiprocessing``
Pipe, decoded into a fresh array on each side, in two ways:

* ``pipe``: what the process pool does without shared memory, one pickle (protocol 5,
  buffers in-band) through the pipe each way;
* ``shm``: :mod:`mtasklite._shm`'s ``Sender.send`` / ``Receiver.recv`` each way (the array
  goes through the sender's reused arena and is copied out by the receiver).

It also measures the limit a transport is held against: a warm copy of the array (into memory
already faulted in) and a copy into fresh memory (``array.copy()``).  The cases alternate
(pipe shm pipe shm ...) after one untimed warm-up round trip each, and the table reports the
median and the fastest of ``--repeats`` round trips.  Options: ``--mib N`` (array size,
default 64), ``--repeats R`` (default 9), ``--start-method`` (default fork).  The last line
is ``BENCH-RESULT {json}`` as in the suite's worker.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import pickle
import platform
import statistics
import sys
import time
from typing import Any, Callable

from mtasklite import _shm

MARKER = "BENCH-RESULT "


def _echo(conn: Any, mode: str) -> None:
    """Child: decode each message into its own array and send it straight back."""
    receiver, sender = _shm.Receiver(), _shm.Sender(tag="bench-child")
    while True:
        try:
            array = receiver.recv(conn) if mode == "shm" else pickle.loads(conn.recv_bytes())
        except EOFError:
            break
        if mode == "shm":
            sender.send(conn, array)
        else:
            conn.send_bytes(pickle.dumps(array, protocol=5))
        del array
    sender.close()
    receiver.close()


class _Peer:
    """A child process running :func:`_echo` over one duplex pipe."""

    def __init__(self, ctx: Any, mode: str):
        self.mode = mode
        self.conn, theirs = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=_echo, args=(theirs, mode), daemon=True)
        self.process.start()
        theirs.close()
        self.sender, self.receiver = _shm.Sender(tag="bench"), _shm.Receiver()

    def round_trip(self, array: Any) -> Any:
        if self.mode == "shm":
            self.sender.send(self.conn, array)
            return self.receiver.recv(self.conn)
        self.conn.send_bytes(pickle.dumps(array, protocol=5))
        return pickle.loads(self.conn.recv_bytes())

    def close(self) -> None:
        self.conn.close()
        self.process.join(10)
        self.sender.close()
        self.receiver.close()


def _timed(action: Callable[[], Any]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def measure(mib: int, repeats: int, start_method: str) -> dict[str, Any]:
    """Seconds per round trip (lists, one entry per repeat) by transport, and the copy limits."""
    import numpy as np

    array = np.random.default_rng(0).integers(0, 255, mib << 20, dtype=np.uint8)
    ctx = multiprocessing.get_context(start_method)
    peers = [_Peer(ctx, "pipe"), _Peer(ctx, "shm")]
    times: dict[str, list[float]] = {"pipe": [], "shm": []}
    try:
        for peer in peers:
            back = peer.round_trip(array)  # warm-up; also proves the data came back whole
            if not np.array_equal(back, array):
                raise AssertionError(f"{peer.mode}: the array came back changed")
        for _ in range(repeats):
            for peer in peers:
                times[peer.mode].append(_timed(lambda peer=peer: peer.round_trip(array)))
    finally:
        for peer in peers:
            peer.close()
    target = np.empty_like(array)
    np.copyto(target, array)
    times["warm_copy"] = [_timed(lambda: np.copyto(target, array)) for _ in range(repeats)]
    times["fresh_copy"] = [_timed(array.copy) for _ in range(repeats)]
    return times


def _report(mib: int, times: dict[str, list[float]]) -> None:
    labels = {
        "pipe": f"{mib} MiB round trip, pickle through the pipe",
        "shm": f"{mib} MiB round trip, shared memory (_shm)",
        "warm_copy": f"{mib} MiB warm copy (np.copyto into faulted-in memory)",
        "fresh_copy": f"{mib} MiB copy into fresh memory (array.copy())",
    }
    pipe = statistics.median(times["pipe"])
    print("| Case | median (ms) | fastest (ms) | vs pipe |")
    print("|---|---|---|---|")
    for key, label in labels.items():
        median = statistics.median(times[key])
        print(
            f"| {label} | {median * 1e3:.1f} | {min(times[key]) * 1e3:.1f} | {pipe / median:.1f}x |"
        )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--start-method", default="fork")
    args = parser.parse_args(argv)
    times = measure(args.mib, args.repeats, args.start_method)
    print(
        f"Python {platform.python_version()}, {multiprocessing.cpu_count()} CPUs, "
        f"start method {args.start_method}; the machine may be shared (expect noise)."
    )
    _report(args.mib, times)
    print(MARKER + json.dumps({"mib": args.mib, "seconds": times}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
