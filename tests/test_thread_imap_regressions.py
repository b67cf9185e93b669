"""Regression tests for the thread pool's drainer ``imap`` (``_thread_imap``), from a review.

Each pins a behaviour of the futures engine (``windowing``) that the first drainer design
broke; the comment above each says what went wrong (all fixed since).  The second part covers
paths that held and had no test elsewhere.  Every call asks for the drainers with
``chunksize=1`` (the default is adaptive chunks).

Nothing sleeps to synchronise.  Where a test must show that something does *not* happen, it
waits for it on an event under :data:`WAIT` seconds, so a correct engine passes at once (the
awaited thing happens) and a wrong one fails after the wait instead of hanging.
"""

from __future__ import annotations

import concurrent.futures
import gc
import itertools
import queue
import subprocess
import sys
import textwrap
import threading
import weakref
from typing import Any, Iterator

import pytest

import mtasklite as mt

#: how long a test waits for something the engine should make happen
WAIT = 5.0
BLOCK_LIMIT = 10.0

TPE = mt.StatefulThreadPoolExecutor


def identity(x: Any) -> Any:
    return x


def imap_of(ex: Any, ordered: bool) -> Any:
    return ex.imap if ordered else ex.imap_unordered


ORDERED = pytest.mark.parametrize("ordered", [True, False], ids=["ordered", "unordered"])


# === regressions ==============================================================================


# Was: fill() pulls the whole window before it starts any drainer, so no item runs while the
# input is being read.  An input that waits for earlier items (a work queue the tasks feed, as
# in a crawler) deadlocks, and a slow input gets its first result only after ``buffersize``
# items were read.  The futures engine submits each item as soon as it is pulled.


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


# Was: after shutdown(wait=False), fill() appends newly pulled cells to ``todo`` *before*
# _check_accepting() refuses them.  A drainer still running (after a plain shutdown it no longer
# stops at its batch end) pops and runs them in that gap, although the consumer then gets
# "cannot schedule new futures after shutdown".  The futures engine never runs an item pulled
# after shutdown: its submit fails first.


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


# Was, from the same cause (pull first, check the pool after): next() on a pool that is shut
# down (or broken) reads a whole window of input, ``buffersize`` items, and drops it.
# Items read from a one-shot source (a socket, a queue) are lost.  The futures engine reads one.


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


# Was (could hang): when the pool breaks (a worker's build fails), imap_unordered
# raises WorkerInitError only once no drainer runs, i.e. after every running item ended; an
# item that runs long (or waits for the consumer) delays the error as long.  The futures engine
# fails the queued items at once and imap_unordered raises on the first of them.


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


# Was: a drainer that uses up its batch returns while the pool accepts work, leaving pulled
# cells with no drainer until the consumer next *waits* inside next().  Meanwhile (a) nothing
# runs them: a loop body that waits for a later item deadlocks; (b) a shutdown in between loses
# them: next() raises RuntimeError although every item was pulled (and, in the futures engine,
# submitted) before the shutdown.  Whether items are lost depends on where the drainer was.
#
# Both tests make one drainer run exactly one batch (16 items, buffersize 4, one thread): item
# x waits until item x + 2 was pulled, so ``todo`` never runs dry before the batch ends.


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


# Was: the consumer refills only once half the window is
# drained (``low_water``), so with ``buffersize`` close to ``max_workers`` a worker sits idle
# while input is left: here 3 workers, buffersize=3, two slow items, and item 3 is not started
# when item 0 is yielded.  The futures engine keeps ``buffersize`` items in flight.


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


# Was: a task's exception, once raised to (or kept by) the caller, keeps the executor alive:
# its traceback holds the drainer's frame, whose local ``executor`` (and ``self``: the window
# with the input iterator) stay referenced.  The pool's threads never exit while the exception
# lives (an interactive session keeps the last one).  The futures engine's traceback holds
# only the work item.


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


# Was: the window lock is a plain Lock, and the done-callback of a cancelled
# drainer takes it.  A signal handler that calls shutdown(cancel_futures=True) (a common
# SIGTERM handler) runs in the main thread; if it lands while the consumer holds the window
# lock (each time wait() wakes up), the callback blocks on that lock forever.  The futures
# engine waits under a Future's Condition, an RLock, and its callbacks take no lock of it.
# The child raises the signal exactly while wait() holds the lock (on the call of _ready).

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
