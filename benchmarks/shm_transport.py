"""Micro-benchmark of the shared-memory transport: ``python -m benchmarks.shm_transport``.

A numpy array makes a round trip parent -> child -> parent over a real ``multiprocessing``
Pipe, decoded into a fresh array on each side, in two ways:

* ``pipe``: what the process pool does without shared memory, one pickle (protocol 5,
  buffers in-band) through the pipe each way;
* ``shm``: :mod:`mtasklite._shm`'s ``Sender.send`` / ``Receiver.recv`` each way (the array
  goes through the sender's reused arena and is copied out by the receiver).

With the executors (unless ``--no-pool``), the same array makes the round trip through
``submit`` on mtasklite's process pool (shared memory, and ``shm_threshold=None``) and on
``ProcessPoolExecutor``, and six of them go through mtasklite's ``imap`` and the stdlib's
``map``, all with 2 workers.

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


def identity(value: Any) -> Any:
    """The pool task: send the argument straight back (pure transport)."""
    return value


def _pool_cases(ctx: Any) -> dict[str, Any]:
    import concurrent.futures

    import mtasklite as mt

    return {
        "pool_shm": mt.StatefulProcessPoolExecutor(2, ctx),
        "pool_pipe": mt.StatefulProcessPoolExecutor(2, ctx, shm_threshold=None),
        "stdlib": concurrent.futures.ProcessPoolExecutor(2, ctx),
    }


def measure_pools(mib: int, repeats: int, start_method: str) -> dict[str, list[float]]:
    """Seconds per ``submit(identity, array).result()`` and per six arrays through ``imap``
    (the stdlib: ``map``) on 2 workers, for mtasklite with and without shared memory and for
    ``ProcessPoolExecutor``; the pools alternate, each warmed up first."""
    import numpy as np

    array = np.random.default_rng(1).integers(0, 255, mib << 20, dtype=np.uint8)
    pools = _pool_cases(multiprocessing.get_context(start_method))
    times: dict[str, list[float]] = {}
    try:
        for pool in pools.values():
            if not np.array_equal(pool.submit(identity, array).result(), array):
                raise AssertionError("the array came back changed")
            list(pool.map(identity, [array] * 6))
        for _ in range(repeats):
            for name, pool in pools.items():
                submit = times.setdefault(f"{name}_submit", [])
                submit.append(_timed(lambda pool=pool: pool.submit(identity, array).result()))
                many = getattr(pool, "imap", pool.map)
                six = times.setdefault(f"{name}_six", [])
                six.append(_timed(lambda many=many: list(many(identity, [array] * 6))))
    finally:
        for pool in pools.values():
            pool.shutdown()
    return times


def _table(labels: dict[str, str], times: dict[str, list[float]], base: str, vs: str) -> None:
    baseline = statistics.median(times[base])
    print(f"| Case | median (ms) | fastest (ms) | {vs} (higher is better) |")
    print("|---|---|---|---|")
    for key, label in labels.items():
        median = statistics.median(times[key])
        fastest = min(times[key])
        print(f"| {label} | {median * 1e3:.1f} | {fastest * 1e3:.1f} | {baseline / median:.1f}x |")


def _report(mib: int, times: dict[str, list[float]]) -> None:
    transport = {
        "pipe": f"{mib} MiB round trip, pickle through the pipe",
        "shm": f"{mib} MiB round trip, shared memory (_shm)",
        "warm_copy": f"{mib} MiB warm copy (np.copyto into faulted-in memory)",
        "fresh_copy": f"{mib} MiB copy into fresh memory (array.copy())",
    }
    _table(transport, times, "pipe", "vs pipe")
    if "stdlib_submit" not in times:
        return
    submit = {
        "pool_shm_submit": f"mtasklite `submit` round trip of {mib} MiB (shared memory)",
        "pool_pipe_submit": "mtasklite `submit`, `shm_threshold=None` (pipe)",
        "stdlib_submit": f"`ProcessPoolExecutor.submit` round trip of {mib} MiB",
    }
    six = {
        "pool_shm_six": f"mtasklite `imap`, six {mib} MiB arrays (shared memory)",
        "pool_pipe_six": "mtasklite `imap`, six arrays, `shm_threshold=None` (pipe)",
        "stdlib_six": f"`ProcessPoolExecutor.map`, six {mib} MiB arrays",
    }
    for labels, base in ((submit, "stdlib_submit"), (six, "stdlib_six")):
        print()
        _table(labels, times, base, "vs stdlib")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--start-method", default="fork")
    parser.add_argument("--no-pool", action="store_true", help="skip the executor cases")
    args = parser.parse_args(argv)
    times = measure(args.mib, args.repeats, args.start_method)
    if not args.no_pool:
        times.update(measure_pools(args.mib, args.repeats, args.start_method))
    print(
        f"Python {platform.python_version()}, {multiprocessing.cpu_count()} CPUs, "
        f"start method {args.start_method}; the machine may be shared (expect noise)."
    )
    _report(args.mib, times)
    print(MARKER + json.dumps({"mib": args.mib, "seconds": times}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
