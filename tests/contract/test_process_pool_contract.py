"""StatefulProcessPoolExecutor keeps the stdlib ``ProcessPoolExecutor`` contract: it is one (alias
and subclass), takes its arguments (checked as the stdlib checks them), and ``submit`` /
``map`` / ``shutdown`` / initializers / done-callbacks / remote tracebacks behave as the
stdlib's, under ``fork``, ``spawn`` and ``forkserver`` (the ``ctx`` fixture).  Everything sent
to a worker lives in :mod:`support` (spawned workers import it by name).
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import sys
import threading
from concurrent.futures.process import BrokenProcessPool, _RemoteTraceback
from pathlib import Path
from typing import Any, Optional

import pytest

import mtasklite as mt
from support import files, specs, tasks
from support.executors import on_every_worker, with_barrier

BLOCK_LIMIT = 10.0
PPE = mt.StatefulProcessPoolExecutor
FORK = multiprocessing.get_context("fork")
SPAWN = multiprocessing.get_context("spawn")
FORKSERVER = multiprocessing.get_context("forkserver")


# --- construction ---------------------------------------------------------------------------------


def test_alias_and_stdlib_subclass() -> None:
    assert mt.StatefulProcessExecutor is mt.StatefulProcessPoolExecutor
    assert issubclass(PPE, concurrent.futures.ProcessPoolExecutor)


def test_constructor_argument_checks() -> None:
    with pytest.raises(ValueError):
        PPE(0)
    with pytest.raises(ValueError):
        PPE(-1, FORK)
    with pytest.raises(TypeError):
        PPE(1, FORK, initializer=42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="on_worker_crash"):
        PPE(1, FORK, on_worker_crash="ignore")
    with pytest.raises(ValueError, match="fork"):
        PPE(1, FORK, max_tasks_per_child=2)
    with pytest.raises(ValueError):
        PPE(1, SPAWN, max_tasks_per_child=0)
    with pytest.raises(TypeError):
        PPE(1, SPAWN, max_tasks_per_child=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        PPE(1, FORK, task_timeout=0)
    with pytest.raises(TypeError):
        PPE(1, FORK, None, (), specs.Counter("m"))  # type: ignore[misc]  # worker= is keyword-only
    with pytest.raises(ValueError, match=r"max_workers=3\b.*\b2 workers"):
        PPE(3, FORK, worker=[specs.Counter("a"), specs.Counter("b")])


def test_worker_list_sets_max_workers() -> None:
    ex = PPE(mp_context=FORK, worker=[specs.Counter("a"), specs.Counter("b"), specs.Counter("c")])
    assert ex._max_workers == 3
    ex.shutdown()


# --- the stdlib contract --------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_submit_map_and_context_manager(ctx: Any) -> None:
    with PPE(2, ctx) as ex:
        assert ex.submit(tasks.square, 7).result(BLOCK_LIMIT) == 49
        assert ex.submit(tasks.add, 2, b=3).result(BLOCK_LIMIT) == 5
        assert list(ex.map(tasks.square, range(10))) == [x * x for x in range(10)]
        assert list(ex.map(tasks.add, range(5), range(5), chunksize=2)) == [0, 2, 4, 6, 8]
        assert list(ex.map(tasks.square, [])) == []
        with pytest.raises(ValueError, match="bad input 1"):
            ex.submit(tasks.fail_with_value_error, 1).result(BLOCK_LIMIT)
        it = ex.map(int, ["1", "x", "3"])
        assert next(it) == 1
        with pytest.raises(ValueError):
            next(it)
        pids = {f.result(BLOCK_LIMIT) for f in [ex.submit(tasks.pid_of) for _ in range(6)]}
        assert os.getpid() not in pids
        assert 1 <= len(pids) <= 2
    with pytest.raises(RuntimeError):
        ex.submit(tasks.square, 1)
    with pytest.raises(RuntimeError):
        ex.map(tasks.square, [1])


@pytest.mark.timeout(30)
def test_forkserver_smoke(tmp_path: Path) -> None:
    init, initargs = with_barrier(FORKSERVER, 2)
    with PPE(
        mp_context=FORKSERVER,
        initializer=init,
        initargs=initargs,
        worker=[specs.Counter("a"), specs.Counter("b")],
    ) as ex:
        seen = on_every_worker(ex, 2, tasks.rendezvous_call)
        assert [(s.index, s.name) for s in seen] == [(0, "a"), (1, "b")]
        assert len({s.pid for s in seen} | {os.getpid()}) == 3
        futures = [
            ex.submit(tasks.crash_on, i, 2, "sigkill", str(tmp_path / "crash")) for i in range(5)
        ]
        with pytest.raises(mt.WorkerCrashedError):
            futures[2].result(BLOCK_LIMIT)
        assert [f.result(BLOCK_LIMIT) for i, f in enumerate(futures) if i != 2] == [0, 10, 30, 40]
        assert list(ex.imap(lambda x: x + 1, range(5))) == [1, 2, 3, 4, 5]
        assert [s.index for s in on_every_worker(ex, 2, tasks.rendezvous_call)] == [0, 1]


def test_remote_traceback_is_chained_as_cause() -> None:
    with PPE(1, FORK) as ex:
        fut = ex.submit(tasks.fail_with_value_error, "x")
        with pytest.raises(ValueError) as info:
            fut.result(BLOCK_LIMIT)
    cause = info.value.__cause__
    assert isinstance(cause, _RemoteTraceback)
    text = str(cause)
    assert "support/tasks.py" in text
    assert "in fail_with_value_error" in text
    assert "ValueError: bad input 'x'" in text


@pytest.mark.timeout(30)
def test_shutdown_cancel_futures_cancels_queued_work() -> None:
    started, release = FORK.Event(), FORK.Event()
    ex = PPE(1, FORK, tasks.install, ({"started": started, "release": release},))
    try:
        running = ex.submit(tasks.block_until_released, "r")
        assert started.wait(BLOCK_LIMIT)
        queued = [ex.submit(tasks.square, i) for i in range(8)]
        ex.shutdown(wait=False, cancel_futures=True)
        assert not running.done() and not running.cancelled()
        # Like the stdlib (whose call queue holds a few items beyond the running ones), up to
        # max_workers + 1 of the oldest queued tasks may still run; the rest are cancelled
        # at once, newest first.
        cancelled = [f.cancelled() for f in queued]
        assert sum(cancelled) >= len(queued) - 2, cancelled
        assert cancelled == sorted(cancelled), "only a suffix of the queue is cancelled"
        release.set()
        ex.shutdown(wait=True)
        assert running.result(0) == "r"
        for i, fut in enumerate(queued):
            assert fut.cancelled() or fut.result(0) == i * i
    finally:
        release.set()
        ex.shutdown()


@pytest.mark.timeout(30)
def test_shutdown_wait_runs_queued_work_to_completion() -> None:
    started, release = FORK.Event(), FORK.Event()
    ex = PPE(1, FORK, tasks.install, ({"started": started, "release": release},))
    try:
        running = ex.submit(tasks.block_until_released, "r")
        assert started.wait(BLOCK_LIMIT)
        queued = [ex.submit(tasks.square, i) for i in range(5)]
        ex.shutdown(wait=False)  # returns at once although a task is blocked
        assert not running.done()
        with pytest.raises(RuntimeError):
            ex.submit(tasks.square, 1)
        release.set()
        ex.shutdown(wait=True)
        assert running.done() and all(f.done() for f in queued)
        assert running.result(0) == "r"
        assert [f.result(0) for f in queued] == [0, 1, 4, 9, 16]
    finally:
        release.set()
        ex.shutdown()


def test_initializer_runs_once_per_worker_with_initargs(ctx: Any, tmp_path: Path) -> None:
    log = str(tmp_path / "init.log")
    shared = {"barrier": ctx.Barrier(2)}
    with PPE(2, ctx, tasks.record_init, ("tag", log, shared)) as ex:
        on_every_worker(ex, 2)
        seen = {f.result(BLOCK_LIMIT) for f in [ex.submit(tasks.init_seen) for _ in range(10)]}
        seen.update(ex.map(tasks.init_seen, range(10)))
        on_every_worker(ex, 2)
    lines = files.read_lines(log)
    assert len(lines) == 2, lines
    pids = {int(line.split()[0]) for line in lines}
    assert len(pids) == 2
    assert {line.split()[1] for line in lines} == {"tag"}
    assert seen <= {("tag", pid) for pid in pids}
    assert os.getpid() not in pids


def test_failing_initializer_breaks_pool_with_worker_init_error(ctx: Any) -> None:
    with PPE(1, ctx, tasks.failing_initializer) as ex:
        fut = ex.submit(tasks.square, 2)
        with pytest.raises(mt.WorkerInitError) as info:
            fut.result(BLOCK_LIMIT)
        err = info.value
        assert isinstance(err, BrokenProcessPool)
        assert "initializer" in str(err)
        assert isinstance(err.__cause__, OSError)
        assert str(err.__cause__) == "no device"
        assert "failing_initializer" in str(err.__cause__.__cause__)  # the remote traceback
        with pytest.raises(BrokenProcessPool):
            ex.submit(tasks.square, 2)


def test_system_exit_in_a_task_is_reported_on_its_future() -> None:
    with PPE(1, FORK) as ex:
        pid = ex.submit(tasks.pid_of).result(BLOCK_LIMIT)
        with pytest.raises(SystemExit) as info:
            ex.submit(sys.exit, 3).result(BLOCK_LIMIT)
        # args, not .code: importing distributed (test_dask) registers a copyreg reducer for
        # exceptions that rebuilds SystemExit without its .code
        assert info.value.args == (3,)
        assert ex.submit(tasks.pid_of).result(BLOCK_LIMIT) == pid, "the worker survives"


@pytest.mark.timeout(30)
def test_large_arguments_and_results() -> None:
    big = b"x" * (8 << 20)  # far beyond any pipe buffer
    with PPE(2, FORK) as ex:
        assert ex.submit(tasks.identity, big).result(BLOCK_LIMIT) == big
        assert [len(b) for b in ex.imap(tasks.identity, [big] * 4, chunksize=2)] == [len(big)] * 4


def test_done_callbacks_may_submit_more_work() -> None:
    done = threading.Event()
    out: list[int] = []
    with PPE(2, FORK) as ex:

        def chain(fut: concurrent.futures.Future[int]) -> None:
            follow_up = ex.submit(tasks.square, fut.result())
            follow_up.add_done_callback(lambda f: (out.append(f.result()), done.set()))

        ex.submit(tasks.square, 3).add_done_callback(chain)
        assert done.wait(BLOCK_LIMIT)
    assert out == [81]


def test_concurrent_submitters() -> None:
    results: dict[int, list[concurrent.futures.Future[int]]] = {}
    ex = PPE(2, FORK)
    try:

        def submit_many(k: int) -> None:
            results[k] = [ex.submit(tasks.add, k, i) for i in range(50)]

        threads = [threading.Thread(target=submit_many, args=(k,)) for k in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(BLOCK_LIMIT)
        for k, futures in sorted(results.items()):
            assert [f.result(BLOCK_LIMIT) for f in futures] == [k + i for i in range(50)]
        assert sorted(results) == [0, 1, 2, 3]
    finally:
        ex.shutdown(wait=False)
        dispatcher = ex._executor_manager_thread
        assert dispatcher is not None
        dispatcher.join(BLOCK_LIMIT)
        lost = dispatcher.is_alive()
        if lost:  # unstick it, or its idle workers would hang interpreter exit
            os.write(ex._dispatcher.control.wake.write_fd, b"\0")
            dispatcher.join(BLOCK_LIMIT)
        assert not lost, "a lost wakeup left the dispatcher asleep"


def test_a_wakeup_during_the_dispatchers_drain_is_not_lost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mtasklite._procpool import waiting

    ex = PPE(1, FORK)
    try:
        assert ex.submit(tasks.square, 2).result(BLOCK_LIMIT) == 4  # the dispatcher is idle now
        dispatcher = ex._dispatcher
        real_os = waiting.os
        wake = dispatcher.control.wake
        injected = threading.Event()

        class RacingOs:
            """``os`` for the dispatcher: another thread's wakeup() lands right before the
            dispatcher's first read of its wake-up pipe (the window the race needs)."""

            def __getattr__(self, name: str) -> Any:
                return getattr(real_os, name)

            def read(self, fd: int, n: int) -> bytes:
                if fd == wake.read_fd and not injected.is_set():
                    injected.set()
                    wake.wakeup()
                return real_os.read(fd, n)

        waiting_again, asleep = threading.Event(), threading.Event()
        submitted, woken = threading.Event(), threading.Event()
        real_wait = dispatcher.poller.wait

        def spy_wait(objects: Any, timeout: Optional[float] = None) -> Any:
            # the dispatcher is about to block; after the injection it means it has looked
            # at its queue for the last time before sleeping
            if injected.is_set():
                waiting_again.set()
            asleep.set()
            try:
                ready = real_wait(objects, timeout)
            finally:
                asleep.clear()
            if submitted.is_set() and wake.read_fd in ready:
                woken.set()  # by the wakeup, not by its 0.5 s check of the workers
            return ready

        monkeypatch.setattr(dispatcher.poller, "wait", spy_wait)
        monkeypatch.setattr(waiting, "os", RacingOs())
        assert asleep.wait(BLOCK_LIMIT)  # a wakeup writes only while the dispatcher sleeps
        wake.wakeup()
        assert injected.wait(BLOCK_LIMIT)
        assert waiting_again.wait(BLOCK_LIMIT)
        monkeypatch.setattr(waiting, "os", real_os)
        # timed, so it is queued and needs the wakeup (an untimed one is handed off)
        submitted.set()
        fut = ex.submit_with_timeout(BLOCK_LIMIT, tasks.square, 3)
        assert fut.result(BLOCK_LIMIT) == 9
        assert woken.wait(BLOCK_LIMIT), "the submit's wakeup was lost"
    finally:
        # unstick a dispatcher that lost its wakeup
        os.write(ex._dispatcher.control.wake.write_fd, b"\0")
        ex.shutdown()
