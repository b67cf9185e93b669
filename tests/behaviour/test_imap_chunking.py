"""How imap batches items into tasks on threads (the default: chunks sized from measured
durations) and on unbounded runs.

What users rely on: tiny items are batched (far fewer tasks than items), while an item that
takes about a millisecond or more always runs in a task of its own, so slow (I/O-bound) items
spread over every thread exactly as with ``chunksize=1``.  ``Pool`` and the pqdm functions on
threads use the same default; ``chunksize=1`` still selects the one-item drainer engine; an
unbounded pqdm / Pool run chunks adaptively like a bounded one.  The sizing rules themselves
are unit tests (``unit/test_window_rules.py``).
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from typing import Any, Callable, Iterator, Optional, Sequence

import pytest

import mtasklite as mt
from mtasklite.processes import pqdm as process_pqdm
from mtasklite.threads import pqdm
from support import tasks
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


# --- unbounded pqdm / Pool chunk adaptively -------------------------------------------------------


@pytest.mark.parametrize("entry", ["pqdm default", "Pool(bounded=False)", "Pool(bounded=True)"])
def test_unbounded_runs_chunk_adaptively_like_bounded_ones(
    monkeypatch: pytest.MonkeyPatch, entry: str
) -> None:
    chunk_sizes: list[int] = []
    submit_chunk = mt.StatefulProcessPoolExecutor._submit_chunk

    def counting(self: Any, fn: Any, items: Any, star: bool, timeout: Any) -> Any:
        chunk_sizes.append(len(items))
        return submit_chunk(self, fn, items, star, timeout)

    monkeypatch.setattr(mt.StatefulProcessPoolExecutor, "_submit_chunk", counting)
    items = range(20_000)
    if entry == "pqdm default":  # pqdm's default is bounded=False
        out = list(
            process_pqdm(
                items,
                tasks.square,
                n_jobs=2,
                mp_context=multiprocessing.get_context("fork"),
                disable=True,
            )
        )
    else:
        bounded = entry == "Pool(bounded=True)"
        with mt.Pool(
            tasks.square, 2, bounded=bounded, mp_context=multiprocessing.get_context("fork")
        ) as pool:
            out = list(pool(items))
    assert out == [x * x for x in items]
    assert sum(chunk_sizes) == len(items)
    # one task per item was 20000 tasks; adaptive sizing needs a few dozen at most (the cap
    # alone, total / (4 x workers) = 2500 items, allows 8)
    assert len(chunk_sizes) <= 100, f"{len(chunk_sizes)} chunks: {chunk_sizes[:10]}..."
    assert max(chunk_sizes) > 100
