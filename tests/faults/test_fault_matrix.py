"""The fault-and-abuse matrix (issues 7 and 9): what happens when things go wrong.

Every fault runs on worker processes under ``fork``, ``spawn`` and ``forkserver`` and, where
it applies, on worker threads (the ``kind`` fixture).  Each test checks that the call returns
or raises within :data:`FAULT_LIMIT` seconds of the fault, that every future ends up resolved
(a result, an exception or cancelled), that the pool keeps working when it should, and that no
worker process or pool thread outlives the executor (``guard.check()``, the leak guard of
:mod:`support.leaks` with that short deadline, on top of the one every test gets).

Nothing sleeps to synchronise: tasks report through files (see :mod:`support.tasks`), and the
tests wait for an observable condition under a deadline.  Tasks that must block forever on a
thread pool poll an event or a file that the test sets or creates at teardown.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import functools
import gc
import io
import itertools
import multiprocessing
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from concurrent.futures.thread import BrokenThreadPool
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
from tqdm import tqdm

import mtasklite as mt
import support
from mtasklite.processes import pqdm as process_pqdm
from mtasklite.threads import pqdm as thread_pqdm
from support import files, inputs, processes, specs, tasks
from support.executors import (
    FAULT_LIMIT,
    PPE,
    PROCESS_KINDS,
    TPE,
    Guard,
    new_executor,
    returns_within,
)
from support.inputs import CountingIterator

pytestmark = pytest.mark.timeout(30)

SCRIPTS = support.SCRIPTS

SPAWN = multiprocessing.get_context("spawn")


def settle(ex: Any, fn: Callable[..., Any], *args: Any) -> cf.Future[Any]:
    """``ex.submit(fn, *args)``, or a future holding the exception ``submit`` raised."""
    try:
        return ex.submit(fn, *args)  # type: ignore[no-any-return]
    except BaseException as exc:
        fut: cf.Future[Any] = cf.Future()
        fut.set_exception(exc)
        return fut


def all_done(futures: list[cf.Future[Any]], timeout: float = FAULT_LIMIT) -> bool:
    """Whether every future is done (finished or cancelled) within ``timeout``.  Polls
    ``done()`` instead of ``concurrent.futures.wait``: see the wait/as_completed tests."""
    return files.wait_for(lambda: all(f.done() for f in futures), timeout)


def blocker(kind: str, guard: Guard) -> Callable[[Any], Any]:
    """A task that logs its start and blocks until the guard lets go (it polls a file, so on
    processes it can be killed and on threads a timeout's asynchronous exception lands)."""
    return functools.partial(tasks.hang_unless, log=guard.log, release_file=guard.release_file)


# --- worker crashes --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", PROCESS_KINDS)
@pytest.mark.parametrize(
    ("how", "exitcode", "text"),
    [("sigkill", -9, "killed by SIGKILL"), ("exit", 3, "exit code 3"), ("segv", -11, "SIGSEGV")],
)
def test_worker_crash_fails_only_that_future(
    guard: Guard, kind: str, how: str, exitcode: int, text: str
) -> None:
    ex = guard.make(kind)
    futures = [ex.submit(tasks.crash_on, i, 2, how, guard.log) for i in range(6)]
    err = futures[2].exception(FAULT_LIMIT)
    assert isinstance(err, mt.WorkerCrashedError), err
    assert isinstance(err, BrokenProcessPool)
    _, pid, index, _ = guard.starts()[0]
    assert (err.pid, err.slot, err.exitcode) == (int(pid), int(index), exitcode)
    assert f"worker {index}" in str(err) and text in str(err)
    assert [f.result(FAULT_LIMIT) for i, f in enumerate(futures) if i != 2] == [0, 10, 30, 40, 50]
    assert not processes.alive(int(pid))
    # the pool goes on, with a fresh process in the dead one's slot
    assert list(ex.imap(tasks.square, range(20), chunksize=3)) == [x * x for x in range(20)]
    # a crash inside an imap chunk fails that item only, after the earlier ones
    got = []
    with pytest.raises(mt.WorkerCrashedError):
        for value in ex.imap(tasks.crash_on, range(10), [5] * 10, [how] * 10, chunksize=4):
            got.append(value)
    assert got == [0, 10, 20, 30, 40]
    assert ex.submit(tasks.square, 5).result(FAULT_LIMIT) == 25
    ex.shutdown()
    guard.check()


@pytest.mark.parametrize("kind", PROCESS_KINDS)
def test_crash_inside_an_untracked_chunk_is_named_on_the_tracked_rerun(
    guard: Guard, kind: str
) -> None:
    # Chunks run at C speed without naming each item; after a death the unreported items
    # run again with per-item tracking, so a crash that repeats fails exactly its item.
    ex = guard.make(kind)
    items = range(40)
    with pytest.raises(mt.WorkerCrashedError) as caught:
        for value in ex.imap(
            tasks.crash_on, items, [17] * 40, ["exit"] * 40, [guard.log] * 40, chunksize=10
        ):
            assert value < 170
    assert "while running this task" in str(caught.value)
    attempts = guard.starts()
    assert [line[0] for line in attempts] == ["17", "17"], "run once untracked, once tracked"
    assert attempts[0][1] != attempts[1][1], "the rerun is on the respawned worker"
    assert list(ex.imap(tasks.square, range(30), chunksize=10)) == [x * x for x in range(30)]
    ex.shutdown()
    guard.check()


@pytest.mark.parametrize("kind", PROCESS_KINDS)
def test_crash_inside_a_chunk_that_does_not_repeat_is_survived(
    guard: Guard, kind: str, tmp_path: Path
) -> None:
    ex = guard.make(kind)
    marker = str(tmp_path / "crashed-once")
    n = 40
    got = list(
        ex.imap(
            tasks.crash_once,
            range(n),
            [17] * n,
            ["sigkill"] * n,
            [guard.log] * n,
            [marker] * n,
            chunksize=10,
        )
    )
    assert got == [x * 10 for x in range(n)]
    first, second = guard.starts()
    assert first[1] != second[1] and not processes.alive(int(first[1]))
    ex.shutdown()
    guard.check()


# --- tasks that never return -----------------------------------------------------------------


@pytest.mark.parametrize("kind", PROCESS_KINDS)
@pytest.mark.parametrize("stop", ["shutdown-then-terminate", "terminate"])
def test_never_returning_task_without_limit_processes(guard: Guard, kind: str, stop: str) -> None:
    ex = guard.make(kind)
    running = [ex.submit(tasks.log_then_hang, i, guard.log) for i in range(2)]
    queued = [ex.submit(tasks.square, i) for i in range(6)]
    assert len(files.wait_for_lines(guard.log, 2)) == 2
    start = time.monotonic()
    if stop == "shutdown-then-terminate":
        ex.shutdown(wait=False, cancel_futures=True)
        assert time.monotonic() - start < FAULT_LIMIT
        # Like the stdlib, the next max_workers queued tasks are kept; the rest are cancelled.
        assert sum(f.cancelled() for f in queued) == len(queued) - 2
        assert not any(f.done() for f in running), "nothing can stop an untimed task but terminate"
    ex.terminate()
    assert all_done(running + queued)
    assert time.monotonic() - start < FAULT_LIMIT
    for fut in running:
        error = fut.exception(0)
        assert isinstance(error, BrokenProcessPool) and "terminated" in str(error)
    assert all(f.cancelled() for f in queued)
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(tasks.square, 1)
    guard.check()


@pytest.mark.parametrize("kind", PROCESS_KINDS)
def test_never_returning_task_with_limit_processes(guard: Guard, kind: str) -> None:
    ex = guard.make(kind, task_timeout=0.5)
    first = ex.submit(tasks.log_then_hang, "a", guard.log)
    assert isinstance(first.exception(FAULT_LIMIT), mt.TaskTimeoutError)
    _, pid, index, _ = guard.starts()[0]
    assert f"0.5 s limit in worker {index}" in str(first.exception(0))
    # the worker was stopped and replaced; the pool goes on
    assert processes.wait_gone([int(pid)], FAULT_LIMIT) == set()
    assert list(ex.imap(tasks.square, range(10))) == [x * x for x in range(10)]
    # hung again, then shut down without waiting: the limit still ends the hung tasks
    hung = [ex.submit(tasks.log_then_hang, i, guard.log) for i in range(2)]
    queued = [ex.submit(tasks.square, i) for i in range(6)]
    assert len(files.wait_for_lines(guard.log, 3)) == 3
    start = time.monotonic()
    ex.shutdown(wait=False, cancel_futures=True)
    assert all_done(hung + queued)
    assert time.monotonic() - start < FAULT_LIMIT
    assert all(isinstance(f.exception(0), mt.TaskTimeoutError) for f in hung)
    assert all(f.cancelled() or f.result(0) == i * i for i, f in enumerate(queued))
    guard.check()


def test_never_returning_task_without_limit_threads(guard: Guard) -> None:
    ex = guard.make("threads")
    started = [threading.Event() for _ in range(2)]
    running = [ex.submit(tasks.wait_event, i, guard.release, started[i]) for i in range(2)]
    queued = [ex.submit(tasks.square, i) for i in range(6)]
    assert all(e.wait(FAULT_LIMIT) for e in started)
    start = time.monotonic()
    ex.shutdown(wait=False, cancel_futures=True)
    assert time.monotonic() - start < FAULT_LIMIT
    assert all(f.cancelled() for f in queued)
    assert not any(f.done() for f in running), "a thread cannot be stopped"
    guard.release.set()  # the only way out for an untimed task on a thread
    assert [f.result(FAULT_LIMIT) for f in running] == [0, 1]
    guard.check()


def test_never_returning_task_with_limit_threads(guard: Guard) -> None:
    ex = guard.make("threads", task_timeout=0.3)
    first = ex.submit(tasks.wait_event, "a", guard.release)
    error = first.exception(FAULT_LIMIT)
    assert isinstance(error, mt.TaskTimeoutError) and "0.3 s limit in worker 0" in str(error)
    assert list(ex.imap(tasks.square, range(10))) == [x * x for x in range(10)]
    started = [threading.Event() for _ in range(2)]
    hung = [ex.submit(tasks.wait_event, i, guard.release, started[i]) for i in range(2)]
    queued = [ex.submit(tasks.square, i) for i in range(6)]
    # (idle threads are reused before new ones start, so the second may wait for a timeout)
    assert all(e.wait(FAULT_LIMIT) for e in started)
    start = time.monotonic()
    ex.shutdown(wait=False, cancel_futures=True)
    assert all_done(hung + queued)
    assert time.monotonic() - start < FAULT_LIMIT
    assert all(isinstance(f.exception(0), mt.TaskTimeoutError) for f in hung)
    assert all(f.cancelled() or f.result(0) == i * i for i, f in enumerate(queued))
    # the release event is never set: the abandoned threads must end by themselves
    guard.check()


# --- serialisation trouble -------------------------------------------------------------------


SERIAL_CASES = [
    "unpicklable-argument",
    "unpicklable-result",
    "unpicklable-exception",
    "two-arg-exception",
    "200MB-result",
]


def check_serial_outcome(kind: str, case: str, fut: cf.Future[Any]) -> None:
    """The faulty item's future holds what ``case`` should produce on ``kind``."""
    if case == "200MB-result":
        value = fut.result(FAULT_LIMIT * 2)
        assert len(value) == 200 * 2**20 and value[-1:] == b"\0"
        return
    error = fut.exception(FAULT_LIMIT)
    if kind == "threads":  # nothing is pickled: the task's own outcome comes back
        if case == "unpicklable-argument":
            assert error is None and isinstance(fut.result(), tasks.Unpicklable)
        elif case == "unpicklable-result":
            assert error is None and "lock" in type(fut.result()).__name__.lower()
        elif case == "unpicklable-exception":
            assert isinstance(error, tasks.UnpicklableError)
        else:
            assert isinstance(error, tasks.TwoArgError)
        return
    if case == "unpicklable-argument":
        assert isinstance(error, mt.TaskPicklingError), error
        assert "cannot send the arguments of this task" in str(error)
        assert error.__cause__ is not None
    elif case == "unpicklable-result":
        assert isinstance(error, (TypeError, mt.TaskPicklingError)), error
        assert "pickle" in str(error)
    else:
        assert isinstance(error, mt.RemoteError), error
        name = "UnpicklableError" if case == "unpicklable-exception" else "TwoArgError"
        assert error.type_name == f"support.tasks.{name}"
        assert ("unsendable 2" if name == "UnpicklableError" else "two-arg 2") in str(error)


@pytest.mark.parametrize("case", SERIAL_CASES)
def test_serialisation_fault_fails_only_that_future(guard: Guard, kind: str, case: str) -> None:
    ex = guard.make(kind)
    items: list[Any] = [0, 1, 2, 3, 4]
    if case == "unpicklable-argument":
        items[2] = tasks.Unpicklable()
    futures = [ex.submit(tasks.serial_fault, item, case) for item in items]
    check_serial_outcome(kind, case, futures[2])
    assert [f.result(FAULT_LIMIT) for i, f in enumerate(futures) if i != 2] == [0, 1, 3, 4]
    if case != "200MB-result":
        # Within one imap chunk, too, only the faulty item fails.  ``_imap`` with
        # ``return_exceptions`` is the engine behind Pool's "ignore" mode.
        got = list(
            ex._imap(tasks.serial_fault, (items, [case] * 5), True, None, 5, None, None, True)
        )
        assert [g for i, g in enumerate(got) if i != 2] == [0, 1, 3, 4]
        fut: cf.Future[Any] = cf.Future()
        if isinstance(got[2], BaseException):
            fut.set_exception(got[2])
        else:
            fut.set_result(got[2])
        check_serial_outcome(kind, case, fut)
    # the pool goes on
    assert list(ex.imap(tasks.square, range(10), chunksize=3)) == [x * x for x in range(10)]
    ex.shutdown()
    guard.check()


# --- a worker that cannot be built -----------------------------------------------------------


def failing_specs(which: str) -> tuple[Any, Optional[int], str]:
    """(worker=, max_workers, pattern naming the failing worker)"""
    if which == "one-slot":
        return (
            [specs.NamedModel("a"), specs.NamedModel("b", fail=True)],
            None,
            r"worker 1 \(NamedModel\('b', fail=True\)\)",
        )
    return specs.NamedModel("m", fail=True), 2, r"worker [01] \(NamedModel\('m', fail=True\)\)"


def check_init_error(kind: str, error: Optional[BaseException], pattern: str) -> None:
    assert isinstance(error, mt.WorkerInitError), error
    assert isinstance(error, BrokenThreadPool if kind == "threads" else BrokenProcessPool)
    assert re.search(pattern, str(error)), str(error)
    assert isinstance(error.__cause__, RuntimeError) and "cannot load model" in str(error.__cause__)


@pytest.mark.parametrize("which", ["one-slot", "all-slots"])
def test_worker_init_error_from_wait_ready(guard: Guard, kind: str, which: str) -> None:
    worker, workers, pattern = failing_specs(which)
    ex = guard.make(kind, workers, worker=worker)
    start = time.monotonic()
    with pytest.raises(mt.WorkerInitError) as info:
        ex.wait_ready(FAULT_LIMIT)
    assert time.monotonic() - start < FAULT_LIMIT
    check_init_error(kind, info.value, pattern)
    with pytest.raises(mt.WorkerInitError) as again:  # broken for good
        ex.submit(tasks.square, 1)
    check_init_error(kind, again.value, pattern)
    ex.shutdown()
    guard.check()


@pytest.mark.parametrize("which", ["one-slot", "all-slots"])
def test_worker_init_error_from_submit(guard: Guard, kind: str, which: str) -> None:
    worker, workers, pattern = failing_specs(which)
    ex = guard.make(kind, workers, worker=worker)
    # Tasks that block, so a good worker cannot finish them before the pool breaks; the
    # second submit starts the second worker (they start lazily), or raises once broken.
    futures = [settle(ex, blocker(kind, guard), 0)]
    if kind == "threads" and which == "one-slot":
        # the good thread must hold task 0 before the failing one drains the queue
        assert len(files.wait_for_lines(guard.log, 1)) == 1
    futures.append(settle(ex, blocker(kind, guard), 1))
    if kind == "threads" and which == "one-slot":
        # The good thread took task 0 and cannot be stopped; the queued task 1 fails.
        check_init_error(kind, futures[1].exception(FAULT_LIMIT), pattern)
        assert not futures[0].done()
        guard.let_go()
        assert futures[0].result(FAULT_LIMIT) == 0
    else:  # a process pool stops its running tasks when it breaks
        for fut in futures:
            check_init_error(kind, fut.exception(FAULT_LIMIT), pattern)
    check_init_error(kind, settle(ex, tasks.square, 1).exception(0), pattern)
    ex.shutdown()
    guard.check()


@pytest.mark.parametrize("which", ["one-slot", "all-slots"])
def test_worker_init_error_from_imap(guard: Guard, kind: str, which: str) -> None:
    worker, workers, pattern = failing_specs(which)
    ex = guard.make(kind, workers, worker=worker)
    releaser = None
    if kind == "threads":
        # The good thread's first task cannot be stopped: release it once the pool broke.
        def release_when_broken() -> None:
            if files.wait_for(lambda: ex._broken, FAULT_LIMIT):
                guard.let_go()

        releaser = threading.Thread(target=release_when_broken, name="mt-fault-releaser")
        releaser.start()
    got = []
    start = time.monotonic()
    with pytest.raises(mt.WorkerInitError) as info:
        for value in ex.imap(blocker(kind, guard), range(10), chunksize=1):
            got.append(value)
    assert time.monotonic() - start < FAULT_LIMIT
    check_init_error(kind, info.value, pattern)
    assert got in ([], [0]) if kind == "threads" else got == []
    if releaser is not None:
        releaser.join(FAULT_LIMIT)
    ex.shutdown()
    guard.check()


# --- the input iterator fails ----------------------------------------------------------------


def test_input_error_reaches_the_consumer_after_earlier_results(guard: Guard, kind: str) -> None:
    ex = guard.make(kind)
    for chunksize, method in itertools.product([1, 4, None], ["imap", "imap_unordered"]):
        pulled: list[int] = []
        got = []
        start = time.monotonic()
        with pytest.raises(LookupError, match="input broke at 17"):
            for value in getattr(ex, method)(
                tasks.square, inputs.failing_input(30, 17, pulled), chunksize=chunksize
            ):
                got.append(value)
        assert time.monotonic() - start < FAULT_LIMIT
        if method == "imap_unordered":
            got.sort()
        assert got == [x * x for x in range(17)], (chunksize, method)
        assert pulled == list(range(17))
    assert ex.submit(tasks.square, 3).result(FAULT_LIMIT) == 9
    ex.shutdown()
    guard.check()


# --- the consumer walks away -----------------------------------------------------------------


#: a task long enough that queued tasks are still queued when the consumer walks away
ABANDON_TASK_SECONDS = 0.1


def walk_away(make_results: Callable[[], Any], how: str) -> list[Any]:
    """Take two results, then ``break``, raise inside the loop, or drop the iterator unclosed."""
    got: list[Any] = []
    if how == "break":
        for value in make_results():
            got.append(value)
            if len(got) == 2:
                break
    elif how == "raise":
        with pytest.raises(KeyError):
            for value in make_results():
                got.append(value)
                if len(got) == 2:
                    raise KeyError("the consumer failed")
    else:
        results = make_results()
        got = [next(results), next(results)]
        del results
    gc.collect()
    return got


@pytest.mark.parametrize("how", ["break", "raise", "drop"])
def test_consumer_walking_away_from_imap(guard: Guard, kind: str, how: str) -> None:
    ex = guard.make(kind)
    source = CountingIterator(itertools.count())
    task = functools.partial(tasks.log_then_work, log=guard.log, seconds=ABANDON_TASK_SECONDS)
    got = walk_away(lambda: ex.imap(task, source, chunksize=1, buffersize=8), how)
    assert got == [0, 1]
    pulled = source.pulled
    assert pulled <= 2 + 8
    # The pool stays usable; once this task is through, every imap task that was not
    # cancelled has started (both executors run queued work in order).
    assert ex.submit(tasks.square, 4).result(FAULT_LIMIT) == 16
    assert source.pulled == pulled, "input was read after the consumer left"
    started = len(guard.starts())
    assert started < pulled, f"all {pulled} pulled items ran: queued tasks were not cancelled"
    ex.shutdown()
    guard.check()


@pytest.mark.parametrize("how", ["break", "raise", "drop"])
def test_consumer_walking_away_from_pqdm(guard: Guard, kind: str, how: str) -> None:
    source = CountingIterator(itertools.count())  # unsized: pqdm runs bounded
    task = functools.partial(tasks.log_then_work, log=guard.log, seconds=ABANDON_TASK_SECONDS)
    if kind == "threads":
        run = functools.partial(thread_pqdm, source, task, 2, file=io.StringIO())
    else:
        ctx = multiprocessing.get_context(kind)
        run = functools.partial(process_pqdm, source, task, 2, file=io.StringIO(), mp_context=ctx)
    got = walk_away(run, how)
    assert got == [0, 1]
    pulled = source.pulled
    guard.check()  # pqdm owned its pool: workers and threads are gone
    assert source.pulled == pulled, "input was read after the consumer left"
    assert len(guard.starts()) < pulled, "queued tasks were not cancelled"


# --- the executor is dropped while its imap runs ---------------------------------------------


def test_executor_collected_while_its_imap_is_consumed(guard: Guard, kind: str) -> None:
    it = new_executor(kind).imap(tasks.square, range(1000))
    gc.collect()
    assert list(it) == [x * x for x in range(1000)]
    # and one dropped half-way: the pool goes away with its last reference
    it = new_executor(kind).imap_unordered(tasks.square, range(1000), chunksize=1)
    assert len([next(it) for _ in range(10)]) == 10
    del it
    gc.collect()
    guard.check()


# --- shutdown from odd places ----------------------------------------------------------------


def test_shutdown_from_a_done_callback(guard: Guard, kind: str) -> None:
    ex = guard.make(kind)
    errors: list[BaseException] = []
    called = threading.Event()

    def callback(_: cf.Future[Any]) -> None:
        try:
            ex.shutdown()  # wait=True, from whichever thread completes the future
        except BaseException as exc:
            errors.append(exc)
        finally:
            called.set()

    first = ex.submit(blocker(kind, guard), "first")
    queued = [ex.submit(tasks.square, i) for i in range(5)]
    assert files.wait_for_lines(guard.log, 1)
    first.add_done_callback(callback)
    guard.let_go()
    assert called.wait(FAULT_LIMIT)
    assert first.result(0) == "first"
    assert [f.result(FAULT_LIMIT) for f in queued] == [0, 1, 4, 9, 16]  # queued work still runs
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(tasks.square, 1)
    guard.check()
    assert errors == []


@pytest.mark.parametrize("cancel", [False, True])
def test_shutdown_from_another_thread_while_imap_runs(
    guard: Guard, kind: str, cancel: bool
) -> None:
    ex = guard.make(kind)
    shutter = threading.Thread(
        target=ex.shutdown, kwargs={"cancel_futures": cancel}, name="mt-fault-shutter"
    )
    got: list[int] = []
    error: Optional[BaseException] = None
    began = time.monotonic()
    try:
        for value in ex.imap(tasks.slow_square, itertools.count(), chunksize=1, buffersize=4):
            got.append(value)
            if len(got) == 5:
                shutter.start()
                began = time.monotonic()
    except (RuntimeError, cf.CancelledError) as exc:
        error = exc
    assert time.monotonic() - began < FAULT_LIMIT
    assert got == [x * x for x in range(len(got))]
    if isinstance(error, RuntimeError):
        assert "after shutdown" in str(error)
    else:
        assert cancel and isinstance(error, cf.CancelledError), error
    shutter.join(FAULT_LIMIT)
    guard.check()


# --- asyncio ---------------------------------------------------------------------------------


def test_asyncio_run_in_executor_and_cancelling_a_queued_item(guard: Guard, kind: str) -> None:
    ex = guard.make(kind)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(ex, tasks.square, 7) == 49
        busy = [loop.run_in_executor(ex, blocker(kind, guard), i) for i in range(2)]
        assert len(files.wait_for_lines(guard.log, 2)) == 2
        queued = loop.run_in_executor(ex, tasks.log_start, "queued", guard.log)
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        # Let the loop run the callback that cancels the executor's future (call_soon).
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        guard.let_go()
        assert await asyncio.wait_for(asyncio.gather(*busy), FAULT_LIMIT) == [0, 1]
        assert await loop.run_in_executor(ex, tasks.square, 3) == 9

    asyncio.run(main())
    assert [s[0] for s in guard.starts()] in (["0", "1"], ["1", "0"]), "the cancelled item ran"
    ex.shutdown()
    guard.check()


@pytest.mark.parametrize("kind", PROCESS_KINDS)
def test_cancel_running_stops_the_task_and_replaces_its_worker(guard: Guard, kind: str) -> None:
    ex = guard.make(kind, cancel_running=True)

    def started(name: str) -> tuple[int, int]:
        files.wait_for(lambda: any(s[0] == name for s in guard.starts()))
        _, pid, index, _ = next(s for s in guard.starts() if s[0] == name)
        return int(pid), int(index)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        a = loop.run_in_executor(ex, tasks.log_then_hang, "a", guard.log)
        b = loop.run_in_executor(ex, tasks.log_then_hang, "b", guard.log)
        pid_a, index_a = started("a")
        pid_b, _ = started("b")
        a.cancel()  # the asyncio task awaiting a running item
        await asyncio.sleep(0)
        assert processes.wait_gone([pid_a], FAULT_LIMIT) == set(), (
            "the running item was not stopped"
        )
        # b still occupies the other worker, so this runs in a's slot
        index, pid = await asyncio.wait_for(
            loop.run_in_executor(ex, tasks.index_and_pid), FAULT_LIMIT
        )
        assert (index, pid != pid_a) == (index_a, True)
        # Future.cancel() on a running task
        c = ex.submit(tasks.log_then_hang, "c", guard.log)
        pid_c, index_c = started("c")
        assert index_c == index_a
        assert c.cancel() is True
        assert c.cancelled()
        assert processes.wait_gone([pid_c], FAULT_LIMIT) == set()
        index, pid = ex.submit(tasks.index_and_pid).result(FAULT_LIMIT)
        assert (index, pid != pid_c) == (index_c, True)
        assert processes.alive(pid_b), "the other worker was untouched"
        b.cancel()
        await asyncio.sleep(0)

    asyncio.run(main())
    ex.shutdown()
    guard.check()


# --- after shutdown(cancel_futures=True) -----------------------------------------------------


def start_blocked_and_queued(kind: str, guard: Guard) -> tuple[Any, list[Any], list[Any]]:
    ex = guard.make(kind)
    blocked = [ex.submit(blocker(kind, guard), i) for i in range(2)]
    queued = [ex.submit(tasks.square, i) for i in range(20)]
    assert len(files.wait_for_lines(guard.log, 2)) == 2
    return ex, blocked, queued


def test_shutdown_cancel_futures_resolves_every_future(guard: Guard, kind: str) -> None:
    ex, blocked, queued = start_blocked_and_queued(kind, guard)
    start = time.monotonic()
    ex.shutdown(wait=False, cancel_futures=True)
    assert time.monotonic() - start < FAULT_LIMIT
    guard.let_go()
    assert all_done(blocked + queued)
    assert [f.result(0) for f in blocked] == [0, 1]
    assert all(f.cancelled() or f.result(0) == i * i for i, f in enumerate(queued))
    # the stdlib keeps up to max_workers queued tasks for processes, none for threads
    assert sum(f.cancelled() for f in queued) >= len(queued) - (0 if kind == "threads" else 2)
    guard.check()


def assert_wait_and_as_completed_return(futures: list[Any]) -> None:
    assert all_done(futures), "not every future was resolved"
    start = time.monotonic()
    _, not_done = cf.wait(futures, timeout=1.0)
    assert not not_done, f"wait() did not see {len(not_done)} resolved futures"
    assert len(list(cf.as_completed(futures, timeout=1.0))) == len(futures)
    assert time.monotonic() - start < FAULT_LIMIT


def test_wait_and_as_completed_after_shutdown_cancel_futures(guard: Guard, kind: str) -> None:
    ex, blocked, queued = start_blocked_and_queued(kind, guard)
    ex.shutdown(wait=False, cancel_futures=True)
    guard.let_go()
    ex.shutdown(wait=True)
    assert_wait_and_as_completed_return(blocked + queued)


@pytest.mark.parametrize("how", ["terminate", "cancel-running"])
def test_wait_and_as_completed_after_terminate_or_cancel_running(guard: Guard, how: str) -> None:
    ex = guard.make("fork", 1, cancel_running=True)
    running = ex.submit(tasks.log_then_hang, 0, guard.log)
    queued = [ex.submit(tasks.square, i) for i in range(5)]
    assert files.wait_for_lines(guard.log, 1)
    if how == "terminate":
        ex.terminate()
    else:
        assert queued[0].cancel()  # a caller cancels a queued task...
        assert running.cancel()  # ...and a running one
        assert [f.result(FAULT_LIMIT) for f in queued[1:]] == [1, 4, 9, 16]
        ex.shutdown(wait=True)
    assert_wait_and_as_completed_return([running, *queued])


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_no_leaked_resource_warning_at_interpreter_exit(method: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "exit_cleanly.py"), method],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["OK"]
    assert "leaked" not in proc.stderr, proc.stderr
    assert "resource_tracker" not in proc.stderr, proc.stderr


# --- progress bars ---------------------------------------------------------------------------


N_ITEMS = 103


@pytest.mark.parametrize("chunksize", [None, 7])
def test_tqdm_over_chunked_imap_counts_items(
    guard: Guard, kind: str, chunksize: Optional[int]
) -> None:
    ex = guard.make(kind)
    out = io.StringIO()
    results = ex.imap(tasks.square, range(N_ITEMS), chunksize=chunksize)
    bar = tqdm(results, file=out, miniters=1, mininterval=0)
    assert bar.total == N_ITEMS
    lag = {bar.n - i for i, _ in enumerate(bar)}  # before each item, the bar shows i done
    assert lag == {0}
    assert bar.n == N_ITEMS
    bar.close()
    assert f"{N_ITEMS}/{N_ITEMS}" in out.getvalue()
    ex.shutdown()
    guard.check()


def test_pqdm_bar_counts_items(guard: Guard, kind: str) -> None:
    bars: list[tqdm[Any]] = []

    class RecordingBar(tqdm):  # type: ignore[type-arg]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            bars.append(self)

    extra: dict[str, Any] = {}
    if kind != "threads":
        extra["mp_context"] = multiprocessing.get_context(kind)
    pq = thread_pqdm if kind == "threads" else process_pqdm
    results = pq(
        range(N_ITEMS), tasks.square, 2, chunk_size=7, tqdm_class=RecordingBar,
        file=io.StringIO(), miniters=1, mininterval=0, **extra,
    )  # fmt: skip
    got = []
    for i, value in enumerate(results):
        assert bars[0].n == i
        got.append(value)
    assert got == [x * x for x in range(N_ITEMS)]
    assert len(bars) == 1
    assert (bars[0].n, bars[0].total) == (N_ITEMS, N_ITEMS)
    guard.check()


# --- one GPU per worker ----------------------------------------------------------------------


def gpu_round(ex: Any, guard: Guard, round_no: int, crash: bool = False) -> list[Any]:
    """Run one task on each of the two workers at once (each waits for the other to start)."""
    futures = [
        ex.submit(
            tasks.gpu_probe_together, f"r{round_no}-{i}", guard.log, 2 * (round_no + 1), crash
        )
        for i in range(2)
    ]
    outcomes = []
    for fut in futures:
        error = fut.exception(FAULT_LIMIT * 3)
        outcomes.append(error if error is not None else fut.result())
    return outcomes


def check_devices(outcomes: list[Any]) -> set[int]:
    """Each worker's framework saw its own device; returns the pids."""
    assert sorted((index, devices) for index, _, devices, _ in outcomes) == [(0, "0"), (1, "1")]
    return {pid for _, pid, _, _ in outcomes}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("respawn", ["max_tasks_per_child", "crash"])
def test_gpu_per_worker_environment_survives_respawns(guard: Guard, respawn: str) -> None:
    parent_env = os.environ.get("CUDA_VISIBLE_DEVICES")
    extra = {"max_tasks_per_child": 1} if respawn == "max_tasks_per_child" else {}
    ex = PPE(mp_context=SPAWN, worker=[specs.GpuWorker("0"), specs.GpuWorker("1")], **extra)
    guard.executors.append(ex)
    first = check_devices(gpu_round(ex, guard, 0))
    if respawn == "crash":
        crashed = gpu_round(ex, guard, 1, crash=True)
        assert all(isinstance(c, mt.WorkerCrashedError) for c in crashed), crashed
    second = check_devices(gpu_round(ex, guard, 2 if respawn == "crash" else 1))
    assert not first & second, "the workers were not replaced"
    assert os.environ.get("CUDA_VISIBLE_DEVICES") == parent_env
    assert "support.fakegpu" not in sys.modules  # only the workers imported it
    ex.shutdown()
    guard.check()


# --- wrong inputs ----------------------------------------------------------------------------


BAD_CONSTRUCTIONS: list[tuple[str, Callable[[], Any], type[BaseException], str]] = [
    ("process max_workers=0", lambda: PPE(0), ValueError, r"max_workers must be greater than 0"),
    ("process max_workers<0", lambda: PPE(-2), ValueError, r"max_workers must be greater than 0"),
    ("thread max_workers=0", lambda: TPE(0), ValueError, r"max_workers must be greater than 0"),
    ("Pool n_jobs=0", lambda: mt.Pool(tasks.square, 0), ValueError, r"n_jobs must be a positive"),
    ("process worker", lambda: PPE(2, worker=42), TypeError, r"worker= is not callable: 42"),
    ("thread worker", lambda: TPE(2, worker="m"), TypeError, r"worker= is not callable: 'm'"),
    (
        "worker list item",
        lambda: PPE(worker=[specs.NamedModel("a"), None]),
        TypeError,
        r"worker\[1\] is not callable: None",
    ),
    ("empty worker list", lambda: TPE(worker=[]), ValueError, r"worker= is an empty sequence"),
    (
        "process list length",
        lambda: PPE(3, worker=[specs.NamedModel("a"), specs.NamedModel("b")]),
        ValueError,
        r"max_workers=3 does not match the 2 workers given in worker=",
    ),
    (
        "thread list length",
        lambda: TPE(1, worker=[specs.NamedModel("a"), specs.NamedModel("b")]),
        ValueError,
        r"max_workers=1 does not match the 2 workers given in worker=",
    ),
    (
        "Pool list length",
        lambda: mt.Pool([specs.NamedModel("a"), specs.NamedModel("b")], 3, use_threads=True),
        ValueError,
        r"n_jobs=3 does not match the 2 workers",
    ),
    (
        "Pool argument_type",
        lambda: mt.Pool(tasks.square, 2, argument_type="kwarg"),
        ValueError,
        r"unknown argument_type 'kwarg'; expected one of 'single_arg', 'args', 'kwargs'",
    ),
    (
        "Pool exception_behavior",
        lambda: mt.Pool(tasks.square, 2, exception_behavior="raise"),
        ValueError,
        r"unknown exception behaviour 'raise'; expected one of 'ignore', 'immediate'",
    ),
    (
        "pqdm argument_type",
        lambda: process_pqdm([1], tasks.square, 1, argument_type="star"),
        ValueError,
        r"unknown argument_type 'star'",
    ),
    (
        "pqdm exception_behaviour",
        lambda: thread_pqdm([1], tasks.square, 1, exception_behaviour="later"),
        ValueError,
        r"unknown exception behaviour 'later'",
    ),
    (
        "Pool chunk_size",
        lambda: mt.Pool(tasks.square, 1, chunk_size=0),
        ValueError,
        r"chunk_size must be a positive integer or None, got 0",
    ),
    (
        "task_timeout",
        lambda: PPE(1, task_timeout=-1),
        ValueError,
        r"task_timeout must be a positive number of seconds or None, got -1",
    ),
    (
        "on_worker_crash",
        lambda: PPE(1, on_worker_crash="ignore"),
        ValueError,
        r"on_worker_crash must be 'isolate' or 'break', got 'ignore'",
    ),
]


@pytest.mark.parametrize(
    ("call", "error", "pattern"),
    [
        pytest.param(call, error, pattern, id=name)
        for name, call, error, pattern in BAD_CONSTRUCTIONS
    ],
)
def test_wrong_construction_arguments_get_clear_errors(
    guard: Guard, call: Callable[[], Any], error: type[BaseException], pattern: str
) -> None:
    with pytest.raises(error, match=pattern) as info:
        call()
    assert type(info.value) is error
    guard.check()  # nothing was started


@pytest.mark.parametrize("kind", ["fork", "threads"])
def test_wrong_call_arguments_get_clear_errors(guard: Guard, kind: str) -> None:
    ex = guard.make(kind)
    positive = "must be a positive integer or None, got"
    seconds = "must be a positive number of seconds or None, got"
    below_one = "buffersize must be None or > 0, got"  # Python 3.14's map() wording
    sq, r3 = tasks.square, range(3)
    calls: list[tuple[Callable[[], Any], type[BaseException], str]] = [
        (lambda: ex.imap(sq, r3, chunksize=0), ValueError, f"chunksize {positive} 0"),
        (lambda: ex.imap(sq, r3, chunksize=-4), ValueError, f"chunksize {positive} -4"),
        (lambda: ex.imap(sq, r3, buffersize=0), ValueError, f"{below_one} 0"),
        (lambda: ex.imap_unordered(sq, r3, buffersize=-1), ValueError, f"{below_one} -1"),
        (lambda: ex.imap(sq, r3, buffersize="2"), TypeError, "buffersize must be an integer or"),
        (lambda: ex.map(sq, r3, chunksize=0), ValueError, "chunksize must be >= 1"),
        (lambda: ex.map(sq, r3, buffersize=0), ValueError, f"{below_one} 0"),
        (lambda: ex.map(sq, r3, buffersize=2.0), TypeError, "buffersize must be an integer or"),
        (lambda: ex.imap(sq, r3, task_timeout=0), ValueError, f"task_timeout {seconds} 0"),
        (lambda: ex.submit_with_timeout(-1, sq, 1), ValueError, f"^timeout {seconds} -1"),
        (lambda: ex.imap(sq), TypeError, r"imap\(\) needs at least one iterable"),
    ]
    for call, error, pattern in calls:
        with pytest.raises(error, match=pattern) as info:
            call()
        assert type(info.value) is error
    assert ex.submit(tasks.square, 3).result(FAULT_LIMIT) == 9  # nothing was submitted
    ex.shutdown()
    guard.check()


def test_pqdm_items_of_the_wrong_shape_fail_alone(guard: Guard, kind: str) -> None:
    extra: dict[str, Any] = {"file": io.StringIO()}
    if kind != "threads":
        extra["mp_context"] = multiprocessing.get_context(kind)
    pq = thread_pqdm if kind == "threads" else process_pqdm
    got = list(pq([{"x": 1}, 5, {"x": 3}, ["x"]], tasks.square, 2, argument_type="kwargs", **extra))
    assert (got[0], got[2]) == (1, 9)
    assert isinstance(got[1], TypeError)
    assert "argument_type='kwargs' needs a mapping of keyword arguments" in str(got[1])
    assert "got int: 5" in str(got[1])
    assert isinstance(got[3], TypeError) and "got list: ['x']" in str(got[3])
    got = list(pq([(2,), 7, (4,)], tasks.square, 2, argument_type="args", **extra))
    assert (got[0], got[2]) == (4, 16)
    assert isinstance(got[1], TypeError)
    assert "argument_type='args' needs an iterable of arguments" in str(got[1])
    guard.check()


# --- the dispatcher's wakeup pipe ------------------------------------------------------------


def test_a_wakeup_racing_with_the_drain_is_not_lost(
    guard: Guard, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller's wakeup() lands while the dispatcher drains its wakeup pipe; the next
    wakeup (shutdown's) must still rouse the idle dispatcher.  Its by-pid exit checks (the
    only timer of an idle pool) are pushed an hour away: a lost wakeup would leave it
    asleep, and shutdown would not finish."""
    from mtasklite._procpool import blame, slots, waiting

    monkeypatch.setattr(blame, "SLOW_DEATH_POLL", 3600.0)
    ex = guard.make("fork")
    ex.wait_ready(FAULT_LIMIT)
    dispatcher = ex._dispatcher
    wake = dispatcher.control.wake
    thread = ex._executor_manager_thread
    real_os, real_wait = waiting.os, dispatcher.poller.wait
    raced, idle_sleep = threading.Event(), threading.Event()
    idle_timers: list[Optional[float]] = []

    class RacingOs:
        """``os`` for the module of the wakeup pipe: just before the dispatcher's first read of its
        wakeup pipe, a caller thread calls wakeup() (as when the GIL switches there)."""

        def __getattr__(self, name: str) -> Any:
            return getattr(real_os, name)

        def read(self, fd: int, size: int) -> bytes:
            if fd == wake.read_fd and not raced.is_set():
                raced.set()
                caller = threading.Thread(target=wake.wakeup, name="mt-fault-waker")
                caller.start()
                caller.join(0.5)  # it may wait for a lock the dispatcher holds: let it
            return real_os.read(fd, size)

    asleep = threading.Event()

    def traced_wait(objects: Any, timeout: Optional[float] = None) -> Any:
        if (
            threading.current_thread() is thread
            and raced.is_set()
            and all(s.state is slots.IDLE for s in dispatcher.slots.all)
        ):
            idle_timers.append(timeout)
            idle_sleep.set()
        asleep.set()
        ready = real_wait(objects, timeout)
        asleep.clear()
        return ready

    monkeypatch.setattr(dispatcher.poller, "wait", traced_wait)
    wake.wakeup()  # out of the wait it entered before the patch, into a traced one
    assert asleep.wait(FAULT_LIMIT)
    monkeypatch.setattr(waiting, "os", RacingOs())
    # A timed task while the dispatcher sleeps: the submitting thread queues it and wakes
    # the dispatcher (an untimed one would be handed straight to the idle worker, and a
    # wakeup while the dispatcher is awake writes nothing), and that wakeup drives a drain.
    assert ex.submit_with_timeout(FAULT_LIMIT, tasks.square, 3).result(FAULT_LIMIT) == 9
    assert raced.is_set()
    assert idle_sleep.wait(FAULT_LIMIT)
    timer = idle_timers[-1]
    assert timer is None or timer > 10 * FAULT_LIMIT, f"a {timer} s timer would hide a loss"
    ex.shutdown(wait=False)
    thread.join(FAULT_LIMIT)
    alive = thread.is_alive()
    monkeypatch.undo()
    if alive:
        wake.wakeup()  # let it go, then report
        thread.join(FAULT_LIMIT)
    assert not alive, "shutdown()'s wakeup was lost: the idle dispatcher slept on"
    guard.check()


# --- a task times out after shutdown ---------------------------------------------------------


def test_queued_work_runs_when_a_task_times_out_after_shutdown(guard: Guard, kind: str) -> None:
    ex = guard.make(kind, 1)
    hung = ex.submit_with_timeout(0.3, blocker(kind, guard), "hung")
    queued = [ex.submit(tasks.square, i) for i in range(3)]
    assert files.wait_for_lines(guard.log, 1)
    start = time.monotonic()
    ex.shutdown(wait=True)  # the timed task times out while shutdown waits
    assert time.monotonic() - start < FAULT_LIMIT
    assert isinstance(hung.exception(0), mt.TaskTimeoutError)
    assert all(f.done() for f in queued), "shutdown(wait=True) returned with pending futures"
    assert [f.result(0) for f in queued] == [0, 1, 4]
    guard.check()


# --- a task that raises StopIteration -------------------------------------------------------------


LINES = ["alpha beta", "gamma", "", "delta epsilon", "", "zeta"] * 3


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", PROCESS_KINDS)
def test_stop_iteration_from_a_task_fails_exactly_that_item(guard: Guard, kind: str) -> None:
    ex = guard.make(kind)
    # pqdm's way: every item's outcome in place, the failing ones as their exception
    outcomes = list(
        process_pqdm(
            LINES,
            tasks.first_word,
            n_jobs=2,
            mp_context=multiprocessing.get_context(kind),
            chunk_size=6,
        )
    )
    assert len(outcomes) == len(LINES)
    for line, outcome in zip(LINES, outcomes):
        if line:
            assert outcome == line.split()[0]
        else:
            assert isinstance(outcome, StopIteration), outcome
    # imap stops at the first failing item, after the ones before it; as in the stdlib's
    # map, the StopIteration surfaces as the RuntimeError a generator turns it into
    got = []
    with pytest.raises(RuntimeError) as caught:
        for word in ex.imap(tasks.first_word, LINES, chunksize=len(LINES)):
            got.append(word)
    assert isinstance(caught.value.__cause__, StopIteration)
    assert got == ["alpha", "gamma"]
    futures = [ex.submit(tasks.first_word, line) for line in LINES[:3]]
    assert isinstance(futures[2].exception(FAULT_LIMIT), StopIteration)
    assert ex.submit(tasks.square, 4).result(FAULT_LIMIT) == 16
    ex.shutdown()


# --- a task that closes its inherited descriptors -------------------------------------------------


@pytest.mark.timeout(40)
@pytest.mark.parametrize("kind", PROCESS_KINDS)
def test_task_closing_its_descriptors_never_freezes_the_pool(guard: Guard, kind: str) -> None:
    ex = guard.make(kind, 2)
    ex.wait_ready(FAULT_LIMIT)
    started = time.monotonic()
    closer = ex.submit_with_timeout(1.0, tasks.close_fds_then_sleep, support.HANG, guard.log)
    assert files.wait_for_lines(guard.log, 1)
    # the other worker keeps serving while the closer runs on with its pipes gone
    assert ex.submit(tasks.square, 5).result(FAULT_LIMIT) == 25
    assert time.monotonic() - started < 1.0 + FAULT_LIMIT
    # its limit is enforced and reported as such, not as a crash
    err = closer.exception(FAULT_LIMIT)
    assert isinstance(err, mt.TaskTimeoutError), err
    assert time.monotonic() - started < 1.0 + FAULT_LIMIT
    # a task that closes them and returns cannot report back: it fails, nothing hangs
    short = ex.submit(tasks.close_fds_then_sleep, 0.0, guard.log)
    assert isinstance(short.exception(FAULT_LIMIT), mt.WorkerCrashedError)
    assert [ex.submit(tasks.square, i).result(FAULT_LIMIT) for i in range(4)] == [0, 1, 4, 9]
    returned, _ = returns_within(ex.shutdown, FAULT_LIMIT)
    assert returned
