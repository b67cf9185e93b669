"""The thread pool's default ``imap``: chunks sized from measured durations.

What users rely on: tiny items are batched (far fewer tasks than items), while an item that
takes about a millisecond or more always runs in a task of its own, so slow (I/O-bound) items
spread over every thread exactly as with ``chunksize=1``.  ``Pool`` and the pqdm functions on
threads use the same default; ``chunksize=1`` still selects the one-item drainer engine.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Iterator, Optional, Sequence

import pytest

import mtasklite as mt
from mtasklite._thread_chunks import ThreadChunkSize
from mtasklite.threads import pqdm
from mtasklite.windowing import ChunkResult, submits_everything
from support.inputs import SizedCounter

ORDERED = pytest.mark.parametrize("ordered", [True, False], ids=["ordered", "unordered"])


def identity(x: Any) -> Any:
    return x


def nap(seconds: float) -> float:
    time.sleep(seconds)  # sleep-ok: the workload itself (an I/O-bound item)
    return seconds


class ChunkLog:
    """Records the item count of every chunk a thread pool is handed (on the class, so
    executors that ``Pool`` and pqdm create are seen too)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.sizes: list[int] = []
        self.lock = threading.Lock()
        original = mt.StatefulThreadPoolExecutor._submit_chunk
        log = self

        def recording(
            ex: Any, fn: Callable[..., Any], items: Sequence[Any], star: bool, t: Optional[float]
        ) -> Any:
            with log.lock:
                log.sizes.append(len(items))
            return original(ex, fn, items, star, t)

        monkeypatch.setattr(mt.StatefulThreadPoolExecutor, "_submit_chunk", recording)


@pytest.fixture
def chunks(monkeypatch: pytest.MonkeyPatch) -> Iterator[ChunkLog]:
    yield ChunkLog(monkeypatch)


# --- the sizing rule (pure) -------------------------------------------------------------------


def observed(sizer: ThreadChunkSize, per_item: float, count: int) -> int:
    sizer.observe(ChunkResult([None] * count, None, per_item * count), count)
    return sizer.size


@pytest.mark.parametrize("per_item", [0.0006, 0.001, 0.05, 3.0])
def test_an_item_over_half_a_millisecond_gets_a_chunk_of_its_own(per_item: float) -> None:
    sizer = ThreadChunkSize(workers=4)
    assert [observed(sizer, per_item, 1) for _ in range(20)] == [1] * 20


def test_tiny_items_are_batched_up_to_the_cap() -> None:
    sizer = ThreadChunkSize(workers=2)
    sizes = [observed(sizer, 1e-7, 1)]
    while sizes[-1] < ThreadChunkSize.MAX_ITEMS_UNKNOWN_BYTES and len(sizes) < 20:
        sizes.append(observed(sizer, 1e-7, sizes[-1]))
    assert sizes[-1] == ThreadChunkSize.MAX_ITEMS_UNKNOWN_BYTES


def test_items_turning_slow_are_unbatched_from_the_next_chunk() -> None:
    sizer = ThreadChunkSize(workers=2)
    for _ in range(10):
        observed(sizer, 1e-6, sizer.size)
    assert sizer.size > 100
    assert observed(sizer, 0.002, 1) == 1


def test_a_sized_input_still_spreads_over_every_thread() -> None:
    # 4 chunks per worker at least, however cheap the items.
    sizer = ThreadChunkSize(workers=4, total=160)
    assert observed(sizer, 1e-7, 1) == 160 // (4 * 4)


def test_a_window_submits_everything_only_when_it_holds_the_whole_sized_input() -> None:
    assert submits_everything((range(10),), None)
    assert submits_everything((range(10),), 10)
    assert submits_everything((range(10), range(5)), 5)  # zip stops at the shortest
    assert not submits_everything((range(10),), 9)
    assert not submits_everything((iter(range(3)),), 100)  # unsized: never known to fit


# --- the executor's default -------------------------------------------------------------------


@pytest.mark.timeout(30)
@ORDERED
def test_slow_items_run_in_parallel_as_one_task_each(
    prefix: str, chunks: ChunkLog, ordered: bool
) -> None:
    # 40 items of 50 ms on 4 threads: 0.5 s when no item waits behind another in a chunk;
    # one item per chunk run serially would take 2 s, two per chunk about 1 s.
    n, seconds, threads = 40, 0.05, 4
    with mt.StatefulThreadPoolExecutor(threads, prefix) as ex:
        ex.wait_ready()
        start = time.monotonic()
        results = (ex.imap if ordered else ex.imap_unordered)(nap, [seconds] * n)
        assert list(results) == [seconds] * n
        elapsed = time.monotonic() - start
    assert chunks.sizes == [1] * n
    assert elapsed < 1.2, f"{n} items of {seconds} s on {threads} threads took {elapsed:.2f} s"


@pytest.mark.timeout(30)
def test_millisecond_items_are_never_batched(prefix: str, chunks: ChunkLog) -> None:
    with mt.StatefulThreadPoolExecutor(2, prefix) as ex:
        assert list(ex.imap(nap, [0.001] * 100)) == [0.001] * 100
    assert chunks.sizes == [1] * 100


@pytest.mark.timeout(30)
@ORDERED
def test_tiny_items_are_sent_in_chunks_by_default(
    prefix: str, chunks: ChunkLog, ordered: bool
) -> None:
    n = 20_000
    with mt.StatefulThreadPoolExecutor(2, prefix) as ex:
        results = (ex.imap if ordered else ex.imap_unordered)(identity, iter(range(n)))
        got = list(results)
    assert (got if ordered else sorted(got)) == list(range(n))
    assert sum(chunks.sizes) == n
    assert len(chunks.sizes) < n // 10, "tiny items were not batched"


@pytest.mark.timeout(30)
def test_chunksize_1_keeps_the_one_item_engine(prefix: str, chunks: ChunkLog) -> None:
    with mt.StatefulThreadPoolExecutor(2, prefix) as ex:
        assert list(ex.imap(identity, range(500), chunksize=1)) == list(range(500))
    assert chunks.sizes == []  # drainers take the items, no chunk is submitted


@pytest.mark.timeout(30)
def test_everything_submitted_up_front_runs_one_item_per_task(
    prefix: str, chunks: ChunkLog
) -> None:
    # A window that takes the whole input before anything is measured cannot size chunks:
    # the one-item engine runs it (no chunk submitted), and the whole input is pulled at once.
    source = SizedCounter(50)
    with mt.StatefulThreadPoolExecutor(2, prefix) as ex:
        results = ex.imap(identity, source, buffersize=50)
        assert next(results) == 0
        assert source.pulled == 50
        assert list(results) == list(range(1, 50))
    assert chunks.sizes == []


@pytest.mark.timeout(30)
def test_pool_and_pqdm_on_threads_batch_tiny_items_by_default(chunks: ChunkLog) -> None:
    # pqdm's default bounded=False takes a sized input up front (see above), so a generator
    # here; Pool is bounded by default.
    n = 5_000
    assert list(pqdm(iter(range(n)), identity, n_jobs=2, disable=True)) == list(range(n))
    from_pqdm = list(chunks.sizes)
    with mt.Pool(identity, n_jobs=2, use_threads=True) as pool:
        assert list(pool(range(n))) == list(range(n))
    from_pool = chunks.sizes[len(from_pqdm) :]
    for sizes in (from_pqdm, from_pool):
        assert sum(sizes) == n
        assert len(sizes) < n // 10, "tiny items were not batched"
