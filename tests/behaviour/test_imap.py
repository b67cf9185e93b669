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
import gc
import itertools
import multiprocessing
import queue
import subprocess
import sys
import textwrap
import threading
import weakref
from typing import Any, Callable, Iterator

import pytest

import mtasklite as mt

# --- on both pools: consumed too late, return_exceptions ------------------------------------------


BLOCK_LIMIT = 10.0


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


# --- the thread pool's drainers: regressions ------------------------------------------------------


#: how long a test waits for something the engine should make happen
WAIT = 5.0


TPE = mt.StatefulThreadPoolExecutor


def imap_of(ex: Any, ordered: bool) -> Any:
    return ex.imap if ordered else ex.imap_unordered


ORDERED = pytest.mark.parametrize("ordered", [True, False], ids=["ordered", "unordered"])


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
