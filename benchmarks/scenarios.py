"""The measured workloads: one function per scenario, run for one implementation at a time.

Each function takes the implementation name and the case's parameters and returns a dict of
metrics.  They run inside a fresh ``python -m benchmarks.worker`` subprocess, so the runner
never shares a warm interpreter, page cache of pickles or leftover pool between runs.
Timed sections start after the pool is created and warmed up, except in scenario 3 (memory
of the whole run) and scenarios 6, 8 and 9 (the cold start is the point).
"""

from __future__ import annotations

import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Iterator, Optional

from benchmarks import tasks
from benchmarks.arrays import ARRAY_WORKLOADS
from benchmarks.impls import open_adapter
from benchmarks.worker import MARKER

Params = dict[str, Any]
Metrics = dict[str, Any]

MIB = 1024 * 1024


def throughput(impl: str, p: Params) -> Metrics:
    """Scenarios 1 and 2: ``square`` over ``range(n)``; items per second of the whole map.

    The map is timed ``inner`` times in this process (each a fresh ``imap`` call on the warm
    pool) and the median counts: one map of 100k tiny items lasts ~10 ms, where a single
    scheduler hiccup would otherwise decide the row.
    """
    n = p["n"]
    pool = open_adapter(impl, p["workers"], p.get("chunksize"))
    walls = []
    try:
        pool.warm_up()
        for _ in range(p.get("inner", 1)):
            start = time.perf_counter()
            total = 0
            for value in pool.imap(tasks.square, range(n)):
                total += value
            walls.append(time.perf_counter() - start)
            _check(total == (n - 1) * n * (2 * n - 1) // 6, "wrong results")
    finally:
        pool.stop()
    wall = statistics.median(walls)
    return {"wall_s": wall, "items": n, "items_per_s": n / wall, "inner_walls_s": walls}


def lazy_memory(impl: str, p: Params) -> Metrics:
    """Scenario 3: an unsized generator of ``item_bytes`` payloads; peak RSS of the tree."""
    n, size = p["n"], p["item_bytes"]
    pulled = 0

    def payloads() -> Iterator[bytes]:
        nonlocal pulled
        for i in range(n):
            pulled += 1
            yield i.to_bytes(8, "little") * (size // 8)

    sampler = TreeRss(p.get("sample_s", 0.01))
    baseline = sampler.sample()
    sampler.start()
    start = time.perf_counter()
    pool = open_adapter(impl, p["workers"], p.get("chunksize"))
    try:
        results = pool.imap(tasks.payload_size, payloads())
        first = next(results)
        pulled_at_first = pulled
        first_s = time.perf_counter() - start
        count = 1 + sum(1 for _ in results)
        wall = time.perf_counter() - start
    finally:
        pool.stop()
        sampler.stop()
    _check(count == n and first == size, "wrong results")
    return {
        "peak_rss_mib": sampler.peak / MIB,
        "start_rss_mib": baseline / MIB,
        "pulled_at_first": pulled_at_first,
        "first_result_s": first_s,
        "wall_s": wall,
        "rss_method": sampler.method,
        "ru_maxrss_self_mib": _ru_maxrss(resource.RUSAGE_SELF),
        "ru_maxrss_children_mib": _ru_maxrss(resource.RUSAGE_CHILDREN),
    }


def infinite(impl: str, p: Params) -> Metrics:
    """Scenario 4: ``square`` over ``itertools.count()``; the first ``k`` results, then stop.

    An implementation that has not produced ``k`` results ``limit_s`` seconds after the call
    cannot handle infinite input: the run reports ``"cannot"`` and exits at once.
    """
    k = p["first"]
    pulled = 0

    def counted() -> Iterator[int]:
        nonlocal pulled
        for i in itertools.count():
            pulled += 1
            yield i

    def give_up() -> None:
        # The call never returns (it reads the whole input first): report and exit now.
        detail = f"no {k}th result within {limit:g} s; it had pulled {pulled:,} items by then"
        print(MARKER + json.dumps({"status": "cannot", "detail": detail}), flush=True)
        os._exit(0)

    limit = p["limit_s"]
    watchdog = threading.Timer(limit, give_up)
    watchdog.daemon = True
    pool = open_adapter(impl, p["workers"], p.get("chunksize"))
    try:
        pool.warm_up()
        start = time.perf_counter()
        watchdog.start()
        for i, value in enumerate(pool.imap(tasks.square, counted())):
            _check(value == i * i, "wrong results")
            if i + 1 == k:
                break
        first_k_s = time.perf_counter() - start
        watchdog.cancel()
        pulled_at_k = pulled
    except BaseException:
        pool.stop()
        raise
    pool.stop()
    total = time.perf_counter() - start
    return {
        "first_k_s": first_k_s,
        "total_s": total,
        "stop_s": total - first_k_s,
        "pulled_at_k": pulled_at_k,
        "pulled_total": pulled,
    }


def cpu_bound(impl: str, p: Params) -> Metrics:
    """Scenario 5: ``n`` items of ``burn(loops)`` (about 5 ms each); wall time of the map."""
    n, loops = p["n"], p["loops"]
    pool = open_adapter(impl, p["workers"], p.get("chunksize"))
    try:
        pool.warm_up()
        start = time.perf_counter()
        results = list(pool.imap(tasks.burn, itertools.repeat(loops, n)))
        wall = time.perf_counter() - start
    finally:
        pool.stop()
    _check(len(results) == n and set(results) == {tasks.burn(loops)}, "wrong results")
    return {"wall_s": wall, "per_item_ms": 1000 * wall / n}


def stateful_init(impl: str, p: Params) -> Metrics:
    """Scenario 6: cold start with a ``init_s`` per-worker model, then ``n`` tasks of ``task_s``.

    Wall time runs from creating the pool to the last result; the ideal is
    ``init_s + n * task_s / workers``.
    """
    n, workers, init_s, task_s = p["n"], p["workers"], p["init_s"], p["task_s"]
    start = time.perf_counter()
    pool = open_adapter(impl, workers, p.get("chunksize"), init=(init_s, task_s))
    try:
        results = list(pool.imap(pool.model_task, range(n)))
        wall = time.perf_counter() - start
    finally:
        pool.stop()
    _check(results == list(range(n)), "wrong results")
    ideal = init_s + n * task_s / workers
    return {"wall_s": wall, "ideal_s": ideal, "vs_ideal": wall / ideal}


def latency(impl: str, p: Params) -> Metrics:
    """Scenarios 7 and 13: sequential ``submit(identity, i).result()`` round trips, after
    warm-up; with ``array_bytes``, the argument is a numpy array of that size instead of
    ``i`` (scenario 13: a small array, which the shared-memory transport must not slow)."""
    pool = open_adapter(impl, p["workers"], None)
    executor = pool.pool
    payload: Optional[Any] = None
    if p.get("array_bytes"):
        import numpy as np

        payload = np.ones(p["array_bytes"], dtype=np.uint8)
    try:
        for i in range(p["warmup"]):
            executor.submit(tasks.identity, i if payload is None else payload).result()
        samples = []
        clock = time.perf_counter
        for i in range(p["calls"]):
            arg = i if payload is None else payload
            t0 = clock()
            executor.submit(tasks.identity, arg).result()
            samples.append(clock() - t0)
    finally:
        pool.stop()
    samples.sort()
    us = 1e6
    return {
        "median_us": statistics.median(samples) * us,
        "p10_us": samples[len(samples) // 10] * us,
        "p90_us": samples[len(samples) * 9 // 10] * us,
        "mean_us": statistics.fmean(samples) * us,
    }


def one_shot(impl: str, p: Params) -> Metrics:
    """Scenarios 8 and 9: what a script pays that maps once: create the pool, run one ``imap``
    of ``square`` over ``n`` items (``range(n)``, or a generator when ``sized`` is false),
    shut the pool down.  The clock covers all three; the imports a script starts with are
    done before it, since scenario 10 measures them: ``import multiprocessing.pool`` for the
    peer, ``from mtasklite import StatefulProcessPoolExecutor, StatefulThreadPoolExecutor``
    for us (``import mtasklite`` alone defers loading a pool class to its first use).
    """
    import concurrent.futures  # noqa: F401
    import multiprocessing.pool  # noqa: F401

    from mtasklite import StatefulProcessPoolExecutor, StatefulThreadPoolExecutor  # noqa: F401

    n = p["n"]
    items = range(n) if p["sized"] else _generated(n)
    start = time.perf_counter()
    pool = open_adapter(impl, p["workers"], p.get("chunksize"))
    try:
        total = 0
        for value in pool.imap(tasks.square, items):
            total += value
    finally:
        pool.stop()
    wall = time.perf_counter() - start
    _check(total == (n - 1) * n * (2 * n - 1) // 6, "wrong results")
    return {"wall_s": wall, "items": n, "items_per_s": n / wall}


def _generated(n: int) -> Iterator[int]:
    """``range(n)`` as an unsized generator (no length to size chunks from)."""
    yield from range(n)


def import_time(impl: str, p: Params) -> Metrics:
    """Scenario 10: wall time of the import statement ``p["statement"]`` in a fresh
    interpreter (interpreter start-up excluded), the median of ``p["runs"]`` interpreters."""
    code = (
        "import time; start = time.perf_counter(); "
        f"{p['statement']}; print(time.perf_counter() - start)"
    )
    samples = []
    for _ in range(p["runs"]):
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
        )
        samples.append(float(out.stdout.strip()) * 1000)
    samples.sort()
    return {
        "import_ms": statistics.median(samples),
        "min_ms": samples[0],
        "max_ms": samples[-1],
        "samples_ms": samples,
    }


#: scenario number -> its workload
WORKLOADS: dict[int, Callable[[str, Params], Metrics]] = {
    1: throughput,
    2: throughput,
    3: lazy_memory,
    4: infinite,
    5: cpu_bound,
    6: stateful_init,
    7: latency,
    8: one_shot,
    9: one_shot,
    10: import_time,
    **ARRAY_WORKLOADS,  # 11, 12
    13: latency,
}


# --- helpers --------------------------------------------------------------------------------


class WrongResults(AssertionError):
    """The implementation returned something else than the serial computation would."""


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise WrongResults(message)


def _ru_maxrss(who: int) -> float:
    # Linux reports kilobytes (macOS bytes; the suite targets POSIX/Linux runners).
    return resource.getrusage(who).ru_maxrss / 1024


class TreeRss:
    """Peak resident memory of this process plus all its descendants, sampled by a thread.

    Uses psutil when installed; otherwise falls back to ``getrusage`` (the self peak plus the
    largest child's peak, a lower bound of the true tree peak).
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        try:
            import psutil

            self._proc: Any = psutil.Process(os.getpid())
            self._gone: tuple[type[BaseException], ...] = (psutil.Error,)
            self.method = "psutil tree sampling"
        except ImportError:
            self._proc = None
            self.method = "getrusage self+children max"

    def sample(self) -> int:
        """Current RSS of the whole process tree, in bytes."""
        if self._proc is None:
            return int(
                (_ru_maxrss(resource.RUSAGE_SELF) + _ru_maxrss(resource.RUSAGE_CHILDREN)) * MIB
            )
        total = self._proc.memory_info().rss
        for child in self._proc.children(recursive=True):
            try:
                total += child.memory_info().rss
            except self._gone:
                pass
        return int(total)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.sample())
            self._stop.wait(self.interval)

    def start(self) -> None:
        """Start sampling in a daemon thread."""
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling and take one last sample."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, self.sample())
