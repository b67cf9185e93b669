"""``ex.worker_stats()`` on the thread pool and on Dask (the process pool's own counts are in
``test_lifecycle.py``): one record per worker, counting what a user watches a pool for —
items done and failed, timeouts, replacements, time spent — and ``None`` where a field does
not apply to the backend.  Nothing sleeps: blocked tasks wait on events the test sets.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Iterator

import pytest

import mtasklite as mt

LIMIT = 10.0  # a bound on each wait; never reached when the code works

#: tasks that must outlive their deadline wait on this (set by the test afterwards)
_release = threading.Event()


def square(x: int) -> int:
    return x * x


def fail_odd(x: int) -> int:
    if x % 2:
        raise ValueError(x)
    return x


def block_until_released(_: Any = None) -> None:
    _release.wait(LIMIT)


@pytest.fixture
def released() -> Iterator[threading.Event]:
    _release.clear()
    yield _release
    _release.set()


def by_index(stats: list[mt.WorkerStats]) -> list[int]:
    return [s.index for s in stats]


# --- threads ----------------------------------------------------------------------------------


def test_thread_stats_count_submits_and_failures_per_thread(prefix: str) -> None:
    with mt.StatefulThreadPoolExecutor(2, thread_name_prefix=prefix) as ex:
        assert by_index(ex.worker_stats()) == [0, 1]
        assert sum(s.tasks_completed for s in ex.worker_stats()) == 0
        futures = [ex.submit(fail_odd, x) for x in range(10)]
        concurrent_done = [f.exception(LIMIT) for f in futures]
        stats = ex.worker_stats()
    assert sum(isinstance(e, ValueError) for e in concurrent_done) == 5
    assert sum(s.tasks_completed for s in stats) == 10
    assert sum(s.failures for s in stats) == 5
    for s in stats:
        assert s.pid is None and s.resident_bytes is None, "a thread has no process of its own"
        assert (s.crashes, s.timeouts, s.restarts) == (0, 0, 0)
    assert sum(s.busy_seconds for s in stats) > 0


@pytest.mark.parametrize("chunksize", [None, 1], ids=["adaptive-chunks", "drainers"])
def test_thread_stats_count_imap_items_not_chunks(prefix: str, chunksize: Any) -> None:
    with mt.StatefulThreadPoolExecutor(2, thread_name_prefix=prefix) as ex:
        results = list(ex.imap(fail_odd, range(1000), chunksize=chunksize, return_exceptions=True))
        stats = ex.worker_stats()
    assert sum(isinstance(r, ValueError) for r in results) == 500
    assert sum(s.tasks_completed for s in stats) == 1000
    assert sum(s.failures for s in stats) == 500


def test_thread_stats_count_a_timeout_and_the_replacement_thread(
    prefix: str, released: threading.Event
) -> None:
    with mt.StatefulThreadPoolExecutor(1, thread_name_prefix=prefix, task_timeout=0.2) as ex:
        late = ex.submit(block_until_released)
        assert isinstance(late.exception(LIMIT), mt.TaskTimeoutError)
        assert ex.submit(square, 3).result(LIMIT) == 9, "the replacement serves index 0"
        (stats,) = ex.worker_stats()
        released.set()  # let the abandoned thread finish before the leak check
    assert stats.timeouts == 1
    assert stats.restarts == 1
    assert stats.tasks_completed == 1, "the timed-out call is counted as a timeout only"
    assert stats.failures == 0


def test_thread_stats_cover_every_stateful_worker_index(prefix: str) -> None:
    with mt.StatefulThreadPoolExecutor(thread_name_prefix=prefix, worker=[square, square]) as ex:
        assert list(ex.imap(ex.worker, range(50))) == [x * x for x in range(50)]
        stats = ex.worker_stats()
    assert by_index(stats) == [0, 1]
    assert sum(s.tasks_completed for s in stats) == 50


# --- Dask -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    distributed = pytest.importorskip("distributed")  # the optional dask extra
    # In-process workers: a call abandoned at its deadline waits on this module's event.
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
    )
    with cluster, distributed.Client(cluster) as dask_client:
        yield dask_client


def test_dask_stats_count_items_failures_and_timeouts_per_dask_worker(
    client: Any, released: threading.Event
) -> None:
    from mtasklite.dask import StatefulDaskExecutor

    with StatefulDaskExecutor(client, task_timeout=0.3) as ex:
        assert sum(s.tasks_completed for s in ex.worker_stats()) == 0
        results = list(ex.imap(fail_odd, range(20), return_exceptions=True))
        late = ex.submit(block_until_released)
        assert isinstance(late.exception(LIMIT), mt.TaskTimeoutError)
        released.set()
        stats = ex.worker_stats()
    assert sum(isinstance(r, ValueError) for r in results) == 10
    assert by_index(stats) == [0, 1]
    assert sum(s.tasks_completed for s in stats) == 20
    assert sum(s.failures for s in stats) == 10
    assert sum(s.timeouts for s in stats) == 1
    for s in stats:
        assert s.pid == os.getpid(), "in-process Dask workers run in this process"
        assert s.crashes is None and s.restarts is None, "Dask restarts workers itself"
        assert s.resident_bytes is not None and s.resident_bytes > 1 << 20


def test_dask_stats_count_chunks_by_their_items(client: Any) -> None:
    from mtasklite.dask import StatefulDaskExecutor

    with StatefulDaskExecutor(client) as ex:
        assert list(ex.imap(square, range(500), chunksize=50)) == [x * x for x in range(500)]
        assert sum(s.tasks_completed for s in ex.worker_stats()) == 500
