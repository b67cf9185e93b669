"""The thread pool's one-item-per-task ``imap`` (drainers instead of a future per item).

The default is adaptive chunks (tests/test_thread_imap_adaptive.py); every call here asks for
this engine with ``chunksize=1``.

The engine's shared semantics (order, errors, laziness, timeouts, closing) are covered by
test_windowing.py, whose "stateful" backend runs this engine at ``chunksize=1``.  Here: what
only a drainer design can get wrong (starving other work, running on after the pool dropped
its queue, keeping results alive), and that timed imap still takes the futures path.
"""

from __future__ import annotations

import concurrent.futures
import gc
import itertools
import threading
import weakref
from typing import Any

import pytest

import mtasklite as mt

BLOCK_LIMIT = 10.0
#: the thread pool's default window of single items, per worker
PER_WORKER = 64


class Box:
    """A result that can be weakly referenced."""

    def __init__(self, value: int):
        self.value = value


def identity(x: Any) -> Any:
    return x


@pytest.mark.timeout(30)
@pytest.mark.parametrize("ordered", [True, False], ids=["ordered", "unordered"])
def test_endless_imap_does_not_starve_work_submitted_meanwhile(prefix: str, ordered: bool) -> None:
    # One thread, an endless input and a consumer that never waits: a drainer could keep the
    # thread for ever.  It hands the thread back after a batch, so the submitted task runs
    # within a window or two of items.
    with mt.StatefulThreadPoolExecutor(1, prefix) as ex:
        results = (ex.imap if ordered else ex.imap_unordered)(
            identity, itertools.count(), chunksize=1
        )
        with results:
            for consumed, _ in enumerate(results):
                if consumed == 100:
                    other = ex.submit(identity, "other")
                    submitted_at = consumed
                if consumed > 100 and other.done():
                    break
                assert consumed < 100_000, "the submitted task never ran"
        assert other.result() == "other"
        assert consumed - submitted_at <= 3 * PER_WORKER


@pytest.mark.timeout(30)
def test_waiting_inside_the_loop_for_other_work_does_not_deadlock(prefix: str) -> None:
    # The consumer blocks on a task queued behind the drainer: the drainer runs out of pulled
    # items and returns the only thread to the pool.
    with mt.StatefulThreadPoolExecutor(1, prefix) as ex:
        seen = []
        for x in ex.imap(identity, range(500), chunksize=1):
            seen.append(ex.submit(identity, x).result(timeout=BLOCK_LIMIT))
        assert seen == list(range(500))


@pytest.mark.timeout(30)
def test_shutdown_cancel_futures_starts_no_further_item(
    prefix: str, release: threading.Event
) -> None:
    started: list[int] = []
    busy = threading.Barrier(3)

    def task(x: int) -> int:
        started.append(x)
        if x >= 2:  # items 2 and 3 hold both threads until released
            busy.wait(BLOCK_LIMIT)
            release.wait(BLOCK_LIMIT)
        return x

    ex = mt.StatefulThreadPoolExecutor(2, prefix)
    results = ex.imap(task, range(1000), chunksize=1)
    assert [next(results), next(results)] == [0, 1]
    busy.wait(BLOCK_LIMIT)
    ex.shutdown(wait=False, cancel_futures=True)
    release.set()
    # The running items finish and are delivered; the next one never starts and fails as
    # its future would have: cancelled.
    assert [next(results), next(results)] == [2, 3]
    with pytest.raises(concurrent.futures.CancelledError):
        next(results)
    ex.shutdown(wait=True)
    assert sorted(started) == [0, 1, 2, 3]


@pytest.mark.timeout(30)
def test_shutdown_mid_iteration_raises_instead_of_hanging(
    prefix: str, release: threading.Event
) -> None:
    first = threading.Event()

    def task(x: int) -> int:
        if x == 1:
            first.set()
            release.wait(BLOCK_LIMIT)
        return x

    ex = mt.StatefulThreadPoolExecutor(2, prefix)
    results = ex.imap(task, itertools.count(), chunksize=1)
    assert next(results) == 0
    assert first.wait(BLOCK_LIMIT)
    ex.shutdown(wait=False)
    release.set()
    with pytest.raises(RuntimeError, match="after shutdown"):
        for _ in results:
            pass
    ex.shutdown(wait=True)  # every pool thread exits (the leak check verifies it)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("ordered", [True, False], ids=["ordered", "unordered"])
def test_yielded_results_are_not_kept_alive_by_the_iterator(prefix: str, ordered: bool) -> None:
    with mt.StatefulThreadPoolExecutor(2, prefix) as ex:
        results = (ex.imap if ordered else ex.imap_unordered)(Box, range(10), chunksize=1)
        box = next(results)
        first, ref = box.value, weakref.ref(box)
        del box
        gc.collect()
        assert ref() is None, "the suspended iterator still holds the yielded result"
        assert sorted([first, *(b.value for b in results)]) == list(range(10))


@pytest.mark.timeout(30)
def test_base_exceptions_from_items_are_that_items_error(prefix: str) -> None:
    def task(x: int) -> int:
        if x == 3:
            raise SystemExit(7)
        return x

    with mt.StatefulThreadPoolExecutor(2, prefix) as ex:
        got = []
        with pytest.raises(SystemExit) as info:
            for x in ex.imap(task, range(10), chunksize=1):
                got.append(x)
        assert info.value.code == 7 and got == [0, 1, 2]
        # The pool is unharmed and the next imap runs in full.
        assert list(ex.imap(task, range(3), chunksize=1)) == [0, 1, 2]


@pytest.mark.timeout(30)
def test_timed_imap_still_runs_one_future_per_item(prefix: str) -> None:
    # A per-item limit needs the watchdog, which works on futures: the drainer path is
    # only for untimed items.
    submitted = []
    with mt.StatefulThreadPoolExecutor(2, prefix) as ex:
        original = ex._submit_timed

        def counting(*args: Any) -> Any:
            submitted.append(args[0])
            return original(*args)

        ex._submit_timed = counting  # type: ignore[method-assign]
        assert list(ex.imap(identity, range(20), task_timeout=BLOCK_LIMIT)) == list(range(20))
        timed = len(submitted)
        assert list(ex.imap(identity, range(20), chunksize=1)) == list(range(20))
    assert timed == 20
    assert len(submitted) - timed <= 2  # one drainer per thread
