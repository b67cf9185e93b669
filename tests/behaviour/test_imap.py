"""Lazy, bounded ``imap`` / ``imap_unordered`` on the executors' own methods: results in order
(or as they complete), input read only as far as the window needs, errors in place
(``return_exceptions``), nothing running on after the pool stopped, and no deadlock whatever the
loop body or the tasks do.

The thread pool's one-item engine (drainers, ``chunksize=1``) is pinned here against what a
drainer design can get wrong (starving other work, running on after the pool dropped its
queue, keeping results alive); the regressions first, each with a comment saying what went
wrong.  Where a test must show that something does *not* happen, it waits for it on an event
under :data:`WAIT` seconds, so a correct engine passes at once and a wrong one fails after the
wait instead of hanging.  The process pool's imap and the chunk sizing have their own
sections; the engine's shared semantics over any executor are in
``test_imap_over_any_executor.py``.
"""

from __future__ import annotations

import concurrent.futures
import functools
import gc
import itertools
import multiprocessing
import queue
import subprocess
import sys
import textwrap
import threading
import weakref
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import pytest

import mtasklite as mt
from support import files, tasks
from support.executors import outcomes

BLOCK_LIMIT = 10.0
TPE = mt.StatefulThreadPoolExecutor
PPE = mt.StatefulProcessPoolExecutor
FORK = multiprocessing.get_context("fork")
SPAWN = multiprocessing.get_context("spawn")


# --- on both pools: consumed too late, return_exceptions ------------------------------------------


def fail_on_two(x: int) -> int:
    if x == 2:
        raise ValueError("two")
    return x


def thread_pool() -> Any:
    return mt.StatefulThreadPoolExecutor(2, "mt-fh-imap")


def process_pool() -> Any:
    return mt.StatefulProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork"))


POOLS = pytest.mark.parametrize("make", [thread_pool, process_pool], ids=["threads", "processes"])


@POOLS
@pytest.mark.timeout(30)
def test_imap_returned_out_of_its_with_block_says_to_consume_it_inside(
    make: Callable[[], Any],
) -> None:
    def lazy_squares() -> Any:
        with make() as ex:
            return ex.imap(abs, range(-5, 0))

    results = lazy_squares()
    with pytest.raises(RuntimeError, match="after shutdown") as info:
        list(results)
    assert "must be consumed before its executor shuts down" in str(info.value)


@POOLS
@pytest.mark.timeout(30)
def test_return_exceptions_yields_ordered_outcomes(make: Callable[[], Any]) -> None:
    with make() as ex:
        outcomes = list(ex.imap(fail_on_two, range(5), return_exceptions=True))
        unordered = list(ex.imap_unordered(fail_on_two, range(5), return_exceptions=True))
        with pytest.raises(ValueError, match="two"):
            list(ex.imap(fail_on_two, range(5)))  # the default still raises
    assert outcomes[:2] == [0, 1] and outcomes[3:] == [3, 4]
    assert isinstance(outcomes[2], ValueError) and str(outcomes[2]) == "two"
    assert sorted(x for x in unordered if isinstance(x, int)) == [0, 1, 3, 4]
    assert [str(x) for x in unordered if isinstance(x, ValueError)] == ["two"]


@pytest.mark.timeout(30)
def test_return_exceptions_with_chunks_and_timeouts_on_processes() -> None:
    with process_pool() as ex:
        chunked = list(ex.imap(fail_on_two, range(6), chunksize=3, return_exceptions=True))
        timed = list(ex.imap(fail_on_two, range(4), task_timeout=30, return_exceptions=True))
    assert [type(x).__name__ for x in chunked] == ["int"] * 2 + ["ValueError"] + ["int"] * 3
    assert [type(x).__name__ for x in timed] == ["int", "int", "ValueError", "int"]


# --- the thread pool's drainers -------------------------------------------------------------------


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


#: how long a test waits for something the engine should make happen
WAIT = 5.0


def imap_of(ex: Any, ordered: bool) -> Any:
    return ex.imap if ordered else ex.imap_unordered


ORDERED = pytest.mark.parametrize("ordered", [True, False], ids=["ordered", "unordered"])


# === regressions ==============================================================================


@pytest.mark.timeout(30)
@ORDERED
def test_input_fed_by_earlier_tasks_does_not_deadlock(prefix: str, ordered: bool) -> None:
    work: queue.Queue[Any] = queue.Queue()
    work.put(0)

    def source() -> Iterator[int]:
        while True:
            try:
                x = work.get(timeout=WAIT)
            except queue.Empty:
                raise AssertionError("no pulled item ran while the input was read") from None
            if x is None:
                return
            yield x

    def task(x: int) -> int:
        work.put(x + 1 if x < 5 else None)  # each task discovers the next item
        return x

    with TPE(2, prefix) as ex:
        assert sorted(imap_of(ex, ordered)(task, source(), chunksize=1)) == list(range(6))


@pytest.mark.timeout(30)
def test_first_item_runs_before_the_window_is_read(prefix: str) -> None:
    first_started = threading.Event()
    waited: list[bool] = []

    def source() -> Iterator[int]:
        yield 0
        waited.append(first_started.wait(WAIT))  # a slow input: item 1 arrives later
        yield from range(1, 4)

    def task(x: int) -> int:
        if x == 0:
            first_started.set()
        return x

    with TPE(2, prefix) as ex:
        assert list(ex.imap(task, source(), chunksize=1)) == [0, 1, 2, 3]
    assert waited == [True], "item 0 did not start until the input had been read further"


@pytest.mark.timeout(30)
def test_no_item_pulled_after_shutdown_runs(prefix: str, release: threading.Event) -> None:
    started: list[int] = []
    started_ev = [threading.Event() for _ in range(64)]
    item2_running = threading.Event()
    shut = threading.Event()
    after: list[int] = []  # items pulled after shutdown

    def task(x: int) -> int:
        started.append(x)
        started_ev[x].set()
        if x == 2:  # holds the only thread (with its drainer) across the shutdown
            item2_running.set()
            release.wait(BLOCK_LIMIT)
        return x

    def source() -> Iterator[int]:
        for i in itertools.count():
            if shut.is_set():
                if after:
                    # Pulling a second item after shutdown: give the pool every chance to
                    # start the first one (free the thread, wait for it to take the item).
                    release.set()
                    started_ev[after[0]].wait(WAIT)
                after.append(i)
            yield i

    ex = TPE(1, prefix)
    results = ex.imap(task, source(), buffersize=4, chunksize=1)
    assert [next(results), next(results)] == [0, 1]
    assert item2_running.wait(BLOCK_LIMIT)
    ex.shutdown(wait=False)
    shut.set()
    with pytest.raises(RuntimeError, match="after shutdown"):
        for _ in results:
            pass
    release.set()
    ex.shutdown(wait=True)
    assert after, "nothing was pulled after shutdown"
    ran_after = sorted(set(after) & set(started))
    assert not ran_after, f"items pulled after shutdown ran: {ran_after} (pulled after: {after})"


@pytest.mark.timeout(30)
def test_next_on_a_shut_down_pool_reads_at_most_one_item(prefix: str) -> None:
    ex = TPE(2, prefix)
    source = iter(range(1000))
    results = ex.imap(identity, source, chunksize=1)
    ex.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        next(results)
    lost = next(source)
    assert lost <= 1, f"{lost} input items were read and dropped"


class _Doubler:
    def __call__(self, x: int) -> int:
        return 2 * x


class _CannotBuild:
    def __init__(self) -> None:
        raise OSError("no device")


@pytest.mark.timeout(30)
def test_unordered_imap_on_a_broken_pool_raises_while_an_item_still_runs(prefix: str) -> None:
    raised = threading.Event()
    waited: list[bool] = []

    def task(x: int) -> int:
        if x == 0:  # runs on the healthy worker until the consumer has seen the error
            waited.append(raised.wait(WAIT))
        return x

    ex = TPE(
        thread_name_prefix=prefix,
        worker=[mt.delayed_init(_Doubler)(), mt.delayed_init(_CannotBuild)()],
    )
    with pytest.raises(mt.WorkerInitError):
        try:
            for _ in ex.imap_unordered(task, range(10), chunksize=1):
                pass
        finally:
            raised.set()
    ex.shutdown(wait=True)
    assert waited == [True], "WorkerInitError waited for the running item to end"


def gated_batch(n: int) -> tuple[Iterator[int], Any, list[threading.Event]]:
    pulled = [threading.Event() for _ in range(n)]
    started = [threading.Event() for _ in range(n)]

    def source() -> Iterator[int]:
        for i in range(n):
            pulled[i].set()  # set as item i is pulled: item i - 1's cell is already queued
            yield i

    def task(x: int) -> int:
        started[x].set()
        if x + 2 < n:
            assert pulled[x + 2].wait(BLOCK_LIMIT)
        return x

    return source(), task, started


BATCH = 16  # _thread_imap._MIN_BATCH, > buffersize 4


@pytest.mark.timeout(30)
def test_pulled_items_keep_running_while_the_loop_body_waits(prefix: str) -> None:
    n = BATCH + 2
    source, task, started = gated_batch(n)
    with TPE(1, prefix) as ex, ex.imap(task, source, buffersize=4, chunksize=1) as results:
        for x in results:
            if x == BATCH - 1:
                # Items 16 and 17 were pulled long ago; a free thread should take them.
                assert started[BATCH].wait(WAIT), "pulled item 16 never started"
        assert x == n - 1


@pytest.mark.timeout(30)
def test_items_pulled_before_shutdown_are_delivered(prefix: str) -> None:
    n = BATCH + 2
    source, task, _ = gated_batch(n)
    ex = TPE(1, prefix)
    results = ex.imap(task, source, buffersize=4, chunksize=1)
    got = list(itertools.islice(results, BATCH))
    assert got == list(range(BATCH))
    # The whole input is pulled.  This runs behind whatever drainer holds the thread.
    assert ex.submit(identity, "marker").result(BLOCK_LIMIT) == "marker"
    ex.shutdown(wait=False)
    assert list(results) == [BATCH, BATCH + 1]
    ex.shutdown(wait=True)


@pytest.mark.timeout(30)
@ORDERED
def test_a_free_worker_takes_the_next_item_within_buffersize(prefix: str, ordered: bool) -> None:
    started3 = threading.Event()
    waited: dict[int, bool] = {}

    def task(x: int) -> int:
        if x == 3:
            started3.set()
        if x in (1, 2):  # slow: they end once item 3 is running (or after WAIT)
            waited[x] = started3.wait(WAIT)
        return x

    with TPE(3, prefix) as ex:
        got = list(imap_of(ex, ordered)(task, range(5), buffersize=3, chunksize=1))
    assert sorted(got) == list(range(5))
    assert waited == {1: True, 2: True}, "item 3 waited for a slow item although a worker was free"


@pytest.mark.timeout(30)
@ORDERED
def test_a_kept_task_exception_does_not_keep_the_executor_alive(prefix: str, ordered: bool) -> None:
    def fail(x: int) -> int:
        raise ValueError(x)

    ex = TPE(2, prefix)
    ref = weakref.ref(ex)
    kept = None
    try:
        list(imap_of(ex, ordered)(fail, range(3), chunksize=1))
    except ValueError as exc:
        kept = exc
    assert kept is not None
    del ex
    gc.collect()
    holders = [
        getattr(getattr(r, "f_code", None), "co_name", type(r).__name__)
        for r in (gc.get_referrers(ref()) if ref() is not None else [])
    ]
    del kept  # let the pool go either way, so its threads exit before the leak check
    gc.collect()
    assert not holders, f"the kept exception keeps the executor alive (held by {holders})"


SIGNAL_SCRIPT = """
import os, signal, sys, threading
import mtasklite as mt
release = threading.Event()
ex = mt.StatefulThreadPoolExecutor(1, "mt-signal")
blocker = ex.submit(release.wait, 30)  # the only thread is busy: the drainer stays queued
signal.signal(signal.SIGTERM, lambda *_: ex.shutdown(wait=False, cancel_futures=True))
raised = []
def land_signal(frame, event, arg):
    if event == "call" and not raised and frame.f_code.co_name in ("_ready", "exception"):
        raised.append(frame.f_code.co_name)
        signal.raise_signal(signal.SIGTERM)  # its handler runs at the next bytecode
sys.setprofile(land_signal)
try:
    next(iter(ex.imap(abs, range(5), chunksize=1)))
except BaseException as exc:
    print("RAISED", type(exc).__name__, flush=True)
sys.setprofile(None)
release.set()
print("SIGNALLED IN", raised, flush=True)
"""


@pytest.mark.timeout(60)
def test_a_signal_handler_cancelling_the_pool_does_not_deadlock_the_consumer() -> None:
    try:
        done = subprocess.run(
            [sys.executable, "-c", SIGNAL_SCRIPT],
            check=False,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the consumer deadlocked in the signal handler's shutdown()")
    assert done.returncode == 0, done.stderr
    # The signal landed while the consumer held the window lock, and the dropped item failed
    # as its future would have.
    assert "SIGNALLED IN ['_ready']" in done.stdout, done.stdout
    assert "RAISED CancelledError" in done.stdout, done.stdout


# === paths that held, covered nowhere else ===================================================


@pytest.mark.timeout(30)
@ORDERED
def test_nested_imap_from_a_pool_task(prefix: str, ordered: bool) -> None:
    # One outer item nests an imap on the same pool; the other outer items are plain.  The
    # inner drainers get the second thread once the outer drainer there runs out of work.
    with TPE(2, prefix) as ex:

        def outer(x: int) -> Any:
            if x == 0:
                return sum(imap_of(ex, ordered)(identity, range(300), chunksize=1))
            return x

        got = list(imap_of(ex, ordered)(outer, range(200), chunksize=1))
    want = [sum(range(300)), *range(1, 200)]
    assert (got if ordered else sorted(got)) == (want if ordered else sorted(want))


@pytest.mark.timeout(30)
@ORDERED
def test_buffersize_one_runs_one_item_at_a_time(prefix: str, ordered: bool) -> None:
    lock = threading.Lock()
    running = [0]
    most = [0]

    def task(x: int) -> int:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        with lock:
            running[0] -= 1
        return x

    with TPE(4, prefix) as ex:
        got = list(imap_of(ex, ordered)(task, iter(range(300)), buffersize=1, chunksize=1))
    assert got == list(range(300))  # one at a time: even unordered keeps input order
    assert most[0] == 1


@pytest.mark.timeout(30)
@ORDERED
def test_shutdown_cancel_futures_from_inside_a_task(
    prefix: str, ordered: bool, release: threading.Event
) -> None:
    # shutdown(cancel_futures=True) runs the cancelled drainer's callback (which takes the
    # window lock) while holding the pool's _shutdown_lock, here on the pool thread of the
    # other drainer while the consumer waits.  The blocker holds thread 0, so of the two
    # drainers one runs and one is queued.
    def task(x: int) -> int:
        if x == 0:
            ex.shutdown(wait=False, cancel_futures=True)
        return x

    ex = TPE(2, prefix)
    blocker = ex.submit(release.wait, BLOCK_LIMIT)
    got = []
    with pytest.raises(concurrent.futures.CancelledError):
        for x in imap_of(ex, ordered)(task, range(50), chunksize=1):
            got.append(x)
    assert got == [0]  # the drainer stops after the item that shut the pool down
    release.set()
    ex.shutdown(wait=True)
    assert blocker.result(0) is True


@pytest.mark.timeout(30)
def test_shutdown_cancel_futures_from_the_loop_body_cancels_a_queued_drainer(
    prefix: str, release: threading.Event
) -> None:
    # The cancelled drainer's callback runs in the consumer thread under _shutdown_lock.
    ex = TPE(2, prefix)
    first = threading.Event()

    def task(x: int) -> int:
        if x == 1:
            first.set()
            release.wait(BLOCK_LIMIT)
        return x

    blocker = ex.submit(release.wait, BLOCK_LIMIT)
    results = ex.imap(task, range(50), chunksize=1)
    assert next(results) == 0
    assert first.wait(BLOCK_LIMIT)  # the second drainer is queued behind nothing runnable
    ex.shutdown(wait=False, cancel_futures=True)
    release.set()
    assert next(results) == 1  # the running item is delivered
    with pytest.raises(concurrent.futures.CancelledError):
        next(results)
    ex.shutdown(wait=True)
    assert blocker.result(0) is True


@pytest.mark.timeout(30)
def test_keyboard_interrupt_from_a_task_starts_no_further_item(
    prefix: str, release: threading.Event
) -> None:
    started: list[int] = []

    def task(x: int) -> int:
        started.append(x)
        if x == 3:
            raise KeyboardInterrupt
        if x == 4:
            release.wait(BLOCK_LIMIT)  # running when the consumer sees item 3's interrupt
        return x

    with TPE(1, prefix) as ex:
        got = []
        with pytest.raises(KeyboardInterrupt):
            for x in ex.imap(task, range(100), chunksize=1):
                got.append(x)
        release.set()
        assert got == [0, 1, 2]
        assert ex.submit(identity, 7).result(BLOCK_LIMIT) == 7  # behind the last drainer
        assert started in ([0, 1, 2, 3], [0, 1, 2, 3, 4])  # 4 only if it began first


@pytest.mark.timeout(60)
def test_interpreter_exit_with_a_drainer_running_and_a_consumer_thread() -> None:
    # At exit the pool's hook sets the global shutdown flag and joins the pool threads while a
    # non-daemon thread still consumes an endless imap: its next fill must be refused and the
    # drainers must end, so the interpreter exits.
    script = textwrap.dedent(
        """
        import itertools, threading, mtasklite as mt
        ex = mt.StatefulThreadPoolExecutor(2, "mt-exit")
        suspended = ex.imap(abs, itertools.count(), chunksize=1)
        next(suspended)
        running = threading.Event()
        def consume():
            try:
                for _ in ex.imap_unordered(abs, itertools.count(), chunksize=1):
                    running.set()
            except RuntimeError as exc:
                print("REFUSED", exc, flush=True)
        threading.Thread(target=consume).start()
        running.wait()
        print("EXITING", flush=True)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=40
    )
    assert done.returncode == 0, done.stderr
    assert "EXITING" in done.stdout
    # "after interpreter shutdown", or "after shutdown" once a worker saw the exit sentinel
    assert "REFUSED cannot schedule new futures after" in done.stdout


# --- the process pool's imap ----------------------------------------------------------------------


@pytest.mark.parametrize("chunksize", [1, 3, None])
def test_imap_and_imap_unordered_results(chunksize: Optional[int]) -> None:
    with PPE(2, FORK) as ex:
        assert list(ex.imap(tasks.square, range(50), chunksize=chunksize)) == [
            x * x for x in range(50)
        ]
        assert sorted(ex.imap_unordered(tasks.square, range(50), chunksize=chunksize)) == [
            x * x for x in range(50)
        ]
        assert list(ex.imap(tasks.add, range(5), range(10), chunksize=chunksize)) == [0, 2, 4, 6, 8]
        assert list(ex.imap(tasks.square, [], chunksize=chunksize)) == []


def test_imap_unordered_yields_as_tasks_complete() -> None:
    started, release = FORK.Event(), FORK.Event()
    try:
        with PPE(2, FORK, tasks.install, ({"started": started, "release": release},)) as ex:
            it = ex.imap_unordered(tasks.block_on, range(6), [0] * 6, chunksize=1)
            first = [next(it) for _ in range(5)]  # item 0 is still blocked meanwhile
            assert sorted(first) == [10, 20, 30, 40, 50]
            # Item 0 may reach the busier worker after the other five finished (both workers
            # serve from the start); it is running, and still blocked, by now or soon.
            assert started.wait(30)
            release.set()
            assert list(it) == [0]
    finally:
        release.set()


def test_imap_ordered_waits_for_the_head_item() -> None:
    started, release = FORK.Event(), FORK.Event()
    try:
        with PPE(2, FORK, tasks.install, ({"started": started, "release": release},)) as ex:
            it = ex.imap(tasks.block_on, range(6), [2] * 6, chunksize=1)
            assert [next(it), next(it)] == [0, 10]
            assert started.wait(BLOCK_LIMIT)
            release.set()
            assert list(it) == [20, 30, 40, 50]
    finally:
        release.set()


def test_imap_len_on_sized_input_only() -> None:
    with PPE(2, FORK) as ex:
        it = ex.imap(tasks.square, range(10))
        assert isinstance(it, mt.SizedResultIterator)
        assert len(it) == 10
        assert list(it) == [x * x for x in range(10)]
        assert len(ex.imap_unordered(tasks.add, range(10), [1, 2, 3])) == 3
        gen = ex.imap(tasks.square, (x for x in range(10)))
        with pytest.raises(TypeError):
            len(gen)  # type: ignore[arg-type]
        assert list(gen) == [x * x for x in range(10)]
        unordered = ex.imap_unordered(tasks.square, iter(range(7)), chunksize=2)
        assert sorted(unordered) == [x * x for x in range(7)]


def test_imap_default_chunksize_is_adaptive(monkeypatch: pytest.MonkeyPatch) -> None:
    with PPE(2, FORK) as ex:
        chunks: list[int] = []
        calls: list[Any] = []
        submit_chunk, submit_call = ex._submit_chunk, ex._submit_call

        def spy_chunk(fn: Any, items: list[Any], star: bool, timeout: Any) -> Any:
            chunks.append(len(items))
            return submit_chunk(fn, items, star, timeout)

        def spy_call(fn: Any, args: Any, timeout: Any) -> Any:
            calls.append(args)
            return submit_call(fn, args, timeout)

        monkeypatch.setattr(ex, "_submit_chunk", spy_chunk)
        monkeypatch.setattr(ex, "_submit_call", spy_call)
        assert list(ex.imap(tasks.square, range(400))) == [x * x for x in range(400)]
        assert calls == []
        assert sum(chunks) == 400
        assert chunks[0] == 1, "adaptive sizing starts at one item"
        assert max(chunks) > 1, f"chunks never grew: {chunks}"
        assert max(chunks) <= 50, "a sized input is split at least 4 ways per worker"
        chunks.clear()
        assert list(ex.imap(tasks.square, range(50), chunksize=7)) == [x * x for x in range(50)]
        assert chunks == [7] * 7 + [1]
        chunks.clear()
        assert list(ex.imap(tasks.square, range(5), chunksize=1)) == [x * x for x in range(5)]
        assert chunks == [] and len(calls) == 5


def test_imap_chunks_of_sequences_are_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    # A range chunk travels as a small range, list and tuple chunks are sliced at C speed;
    # other iterables are read item by item.
    with PPE(2, FORK) as ex:
        chunks: list[Any] = []
        submit_chunk = ex._submit_chunk

        def spy_chunk(fn: Any, items: Any, star: bool, timeout: Any) -> Any:
            chunks.append(items)
            return submit_chunk(fn, items, star, timeout)

        monkeypatch.setattr(ex, "_submit_chunk", spy_chunk)
        for source, kind in [
            (range(3, 40), range),
            (list(range(3, 40)), list),
            (tuple(range(3, 40)), tuple),
            (iter(range(3, 40)), list),
        ]:
            chunks.clear()
            assert list(ex.imap(tasks.square, source, chunksize=5)) == [x * x for x in range(3, 40)]
            assert {type(chunk) for chunk in chunks} == {kind}
            assert [x for chunk in chunks for x in chunk] == list(range(3, 40))


@pytest.mark.parametrize("chunksize", [1, 3])
def test_imap_buffersize_bounds_how_much_input_is_pulled(
    chunksize: int, counting: Callable[[Any], Any]
) -> None:
    source = counting(range(60))
    with PPE(2, FORK) as ex:
        it = ex.imap(tasks.square, source, chunksize=chunksize, buffersize=4)
        assert source.pulled == 0, "nothing is read before the first next()"
        consumed = 0
        for value in it:
            assert value == consumed * consumed
            consumed += 1
            assert source.pulled - consumed <= 4 * chunksize, (source.pulled, consumed)
        assert consumed == 60


@pytest.mark.timeout(30)
def test_imap_close_cancels_queued_tasks_and_stops_pulling(
    tmp_path: Path, counting: Callable[[Any], Any]
) -> None:
    log = str(tmp_path / "runs.log")
    started, release = FORK.Event(), FORK.Event()
    source = counting(itertools.count())
    try:
        with PPE(1, FORK, tasks.install, ({"started": started, "release": release},)) as ex:
            fn = functools.partial(tasks.record_and_block_on, target=1, log=log)
            it = ex.imap(fn, source, chunksize=1, buffersize=4)
            assert next(it) == 0
            assert started.wait(BLOCK_LIMIT)  # item 1 runs; items 2 and 3 are queued
            assert source.pulled == 4
            it.close()
            release.set()
        assert source.pulled == 4
        assert files.read_lines(log) == ["0", "1"], "queued items were cancelled, not run"
    finally:
        release.set()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("how", ["break", "with"])
def test_imap_leaving_early_stops_pulling(
    tmp_path: Path, how: str, counting: Callable[[Any], Any]
) -> None:
    log = str(tmp_path / "runs.log")
    started, release = FORK.Event(), FORK.Event()
    source = counting(itertools.count())
    try:
        with PPE(1, FORK, tasks.install, ({"started": started, "release": release},)) as ex:
            fn = functools.partial(tasks.record_and_block_on, target=1, log=log)
            if how == "break":
                for value in ex.imap(fn, source, chunksize=1, buffersize=4):
                    assert value == 0
                    break
            else:
                with ex.imap(fn, source, chunksize=1, buffersize=4) as it:
                    assert next(it) == 0
            release.set()
            assert ex.submit(tasks.square, 2).result(BLOCK_LIMIT) == 4
        assert source.pulled == 4
        ran = files.read_lines(log)
        assert ran in (["0"], ["0", "1"]), ran
    finally:
        release.set()


def test_imap_overall_timeout() -> None:
    started, release = FORK.Event(), FORK.Event()
    try:
        with PPE(1, FORK, tasks.install, ({"started": started, "release": release},)) as ex:
            it = ex.imap(tasks.block_on, range(3), [1] * 3, chunksize=1, timeout=0.3)
            assert next(it) == 0
            with pytest.raises(concurrent.futures.TimeoutError):  # 3.9/3.10: not the builtin
                next(it)
            release.set()
    finally:
        release.set()


@pytest.mark.timeout(30)
def test_imap_under_spawn() -> None:
    with PPE(2, SPAWN) as ex:
        assert list(ex.imap(tasks.square, range(100))) == [x * x for x in range(100)]
        gen = (x for x in range(30))
        assert sorted(ex.imap_unordered(tasks.square, gen, chunksize=4)) == [
            x * x for x in range(30)
        ]
        got = outcomes(ex, tasks.crash_on, range(10), [4] * 10, ["sigkill"] * 10, chunksize=None)
        assert isinstance(got[4], mt.WorkerCrashedError)
        assert [g for i, g in enumerate(got) if i != 4] == [i * 10 for i in range(10) if i != 4]


# --- chunks sent ahead, and the socket buffer ------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("item_kib", [8, 96, 3072], ids=["small", "medium", "large"])
def test_chunks_sent_ahead_never_deadlock_against_big_results(item_kib: int) -> None:
    # A busy worker does not read its pipe.  A chunk sent ahead that the socket buffer could
    # not hold would block the dispatcher, which then stops reading while the worker blocks
    # sending its (bigger) results: both would wait for good.  Chunks of 2 items of 8 KiB to
    # 3 MiB cover Runs that go ahead and Runs bigger than the socket buffer can take (they
    # wait for an idle worker; sent ahead, the large case deadlocks).
    payload = bytes(item_kib * 1024)
    items = [payload] * 8
    with PPE(2, FORK) as ex:
        ex.wait_ready(BLOCK_LIMIT)
        limit = min(slot.prefetch_bytes for slot in ex._dispatcher.slots.all)
        results = list(ex.imap(tasks.inflate, items, chunksize=2))
    assert [len(r) for r in results] == [3 * len(payload)] * len(items)
    assert limit > 0, "no chunk is ever sent ahead here"
    if item_kib == 3072:
        assert 2 * len(payload) > limit, "this case must cover chunks too big to go ahead"
    else:
        assert 2 * len(payload) < limit, "this case must cover chunks that go ahead"
