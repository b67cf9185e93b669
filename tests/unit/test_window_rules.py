"""The rules behind lazy, bounded imap, without a pool: how big a chunk may be (the adaptive
sizers of the process pool and the thread pool) and the window's stepping protocol (futures
completed by hand, so every step is deterministic).
"""

from __future__ import annotations

import itertools
import math
from concurrent.futures import Future
from typing import Any, Optional

import pytest

from mtasklite import windowing
from mtasklite._thread_chunks import ThreadChunkSize
from mtasklite.windowing import ChunkResult, open_window, submits_everything
from support.inputs import CountingIterator

# --- adaptive chunk sizing (process pools) --------------------------------------------------------


def _measured(count: int, seconds: float, nbytes: int = 0) -> windowing.ChunkResult:
    return windowing.ChunkResult([None] * count, None, seconds, nbytes)


def test_adaptive_sizing_probes_with_one_item_per_worker() -> None:
    sizer = windowing.AdaptiveChunkSize(workers=3)
    assert (sizer.size, sizer.inflight_limit) == (1, 3)


def test_adaptive_sizing_stops_probing_once_chunks_reach_the_inputs_cap() -> None:
    # 10k tiny items on 2 workers: the first sample already vouches for the cap of
    # 10,000 / (4 x 2) items a chunk; the other chunks can go out at once, as a tuned
    # multiprocessing.Pool.imap sends them, instead of one round trip at a time.
    sizer = windowing.AdaptiveChunkSize(workers=2, total=10_000)
    sizer.observe(_measured(1, 0.5e-6), 1)
    assert sizer.size == 1250
    assert sizer.inflight_limit == math.inf
    unsized = windowing.AdaptiveChunkSize(workers=2)
    unsized.observe(_measured(1, 0.5e-6), 1)
    assert unsized.inflight_limit == 2, "no cap to reach: keep probing until 1 ms is measured"


def test_adaptive_sizing_grows_only_as_far_as_measurements_vouch() -> None:
    sizer = windowing.AdaptiveChunkSize(workers=2)
    sizer.observe(_measured(1, 10e-6, 100), 1)  # 10 µs an item: 2,000 would make 20 ms
    assert sizer.size == 100, "one sample vouches for 1 ms of work, not for 20 ms"
    assert sizer.inflight_limit == 2, "10 µs measured: keep probing one chunk per worker"
    sizer.observe(_measured(100, 1e-3, 10_000), 100)
    assert sizer.inflight_limit == math.inf
    assert sizer.size == 4 * 101, "at most four times the items measured so far"
    for _ in range(3):
        sizer.observe(_measured(sizer.size, sizer.size * 10e-6, sizer.size * 100), sizer.size)
    assert sizer.size == pytest.approx(2000, abs=1), "then the size that runs 20 ms"


def test_adaptive_sizing_shrinks_at_once_when_tasks_get_slower() -> None:
    sizer = windowing.AdaptiveChunkSize(workers=2)
    for _ in range(6):
        sizer.observe(_measured(sizer.size, sizer.size * 10e-6, sizer.size * 10), sizer.size)
    assert sizer.size == pytest.approx(2000, abs=1)
    sizer.observe(_measured(2000, 2000 * 1e-3, 20_000), 2000)  # 100 times slower
    assert sizer.size == 20


@pytest.mark.parametrize(
    ("total", "nbytes_per_item", "cap"),
    [(1000, 10, 125), (None, 1000, (1 << 20) // 1000), (None, 0, 1 << 12), (None, 1, 1 << 14)],
    ids=["sized-input", "big-items", "sizes-unknown", "items-cap"],
)
def test_adaptive_sizing_caps(total: Optional[int], nbytes_per_item: int, cap: int) -> None:
    sizer = windowing.AdaptiveChunkSize(workers=2, total=total)
    for _ in range(12):  # 1 ns an item: only the caps hold it back
        size = sizer.size
        sizer.observe(_measured(size, size * 1e-9, size * nbytes_per_item), size)
    assert sizer.size == cap


# --- adaptive chunk sizing (thread pools) ---------------------------------------------------------


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


# --- an unbounded run goes all in only once the estimate has settled ------------------------------


def test_unbounded_sizer_goes_all_in_only_once_the_estimate_has_settled() -> None:
    from mtasklite.windowing import AdaptiveChunkSize, ChunkResult

    def sample(seconds: float, count: int) -> ChunkResult:
        return ChunkResult([None] * count, None, seconds)

    bounded = AdaptiveChunkSize(2, 200_000)
    unbounded = AdaptiveChunkSize(2, 200_000, unbounded=True)
    assert bounded.inflight_limit == unbounded.inflight_limit == 2  # probing: one per worker
    # one slow early sample: trusted, but not yet a reason to send out everything at its size
    for sizer in (bounded, unbounded):
        sizer.observe(sample(0.002, 1), 1)
    assert bounded.inflight_limit == float("inf")  # the window's buffersize bounds it
    assert unbounded.inflight_limit == 2 * AdaptiveChunkSize.UNSETTLED_CHUNKS_PER_WORKER
    # fast chunks follow; the size grows as when bounded, then everything goes out
    while unbounded.inflight_limit != float("inf"):
        unbounded.observe(sample(0.01, unbounded.size), unbounded.size)
    assert unbounded.size >= 100  # the slow sample alone gave 4


# --- the window's stepping protocol (what aimap drives) -------------------------------------------


class HandSubmitter:
    """A Submitter whose futures the test completes itself."""

    def __init__(self) -> None:
        self.chunks: list[tuple[list[Any], Future[Any]]] = []

    def _submit_call(self, fn: Any, args: tuple[Any, ...], timeout: Optional[float]) -> Future[Any]:
        future: Future[Any] = Future()
        self.chunks.append((list(args), future))
        return future

    def _submit_chunk(
        self, fn: Any, items: Any, star: bool, timeout: Optional[float]
    ) -> Future[ChunkResult]:
        future: Future[ChunkResult] = Future()
        self.chunks.append((list(items), future))
        return future


def test_window_steps_never_wait_and_pull_only_what_wants_promised() -> None:
    submitter = HandSubmitter()
    source = CountingIterator(itertools.count())
    window = open_window(
        submitter,
        abs,
        (iter(source),),
        ordered=True,
        chunksize=3,
        buffersize=2,
        task_timeout=None,
        workers=2,
    )
    assert window.wants() == 6
    window.fill()
    assert source.pulled == 6 and window.wants() == 0 and window.in_flight()
    assert not window.ready()
    submitter.chunks[1][1].set_result(ChunkResult([30, 40, 50], None, 0.0))
    assert not window.ready()  # ordered: the head decides
    submitter.chunks[0][1].set_result(ChunkResult([0, 10, None], {2: KeyError("x")}, 0.0))
    assert window.ready()
    values, error = window.take_outputs()
    assert values == [0, 10] and isinstance(error, KeyError)
    assert window.wants() == 3  # one chunk's room again


def test_window_steps_unordered_and_one_by_one() -> None:
    submitter = HandSubmitter()
    window = open_window(
        submitter,
        abs,
        (range(5),),
        ordered=False,
        chunksize=1,
        buffersize=3,
        task_timeout=None,
        workers=2,
    )
    assert window.wants() == 3
    window.fill()
    assert window.wants() == 0 and not window.ready()
    submitter.chunks[2][1].set_result("c")
    assert window.ready()
    assert window.take_outputs() == (["c"], None)
    submitter.chunks[0][1].set_exception(OSError("a"))
    values, error = window.take_outputs()
    assert values == [] and isinstance(error, OSError)
    window.cancel_all()
    assert submitter.chunks[1][1].cancelled() and not window.in_flight()
