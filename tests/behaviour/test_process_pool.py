"""StatefulProcessPoolExecutor: the stdlib contract, stateful workers, crash isolation, imap,
the cloudpickle path, and no leftover processes.

Everything sent to a worker lives in :mod:`support` (spawned workers import it by
name).  Most cases run under ``fork`` (cheap); the start-method matrix (the ``ctx`` fixture)
also runs them under ``spawn`` and ``forkserver`` (Linux's default from Python 3.14).
"""

from __future__ import annotations

import concurrent.futures
import functools
import gc
import itertools
import multiprocessing
import os
import pickle
import sys
import threading
import weakref
from collections import Counter as Tally
from concurrent.futures.process import BrokenProcessPool, _RemoteTraceback
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

import mtasklite as mt
from mtasklite.stateful import WORKER_HANDLE
from support import files, processes, specs, tasks
from support.executors import on_every_worker, outcomes, with_barrier

BLOCK_LIMIT = 10.0


PPE = mt.StatefulProcessPoolExecutor


FORK = multiprocessing.get_context("fork")


SPAWN = multiprocessing.get_context("spawn")


FORKSERVER = multiprocessing.get_context("forkserver")


@pytest.fixture(params=["fork", "spawn", "forkserver"])
def ctx(request: pytest.FixtureRequest) -> Any:
    return multiprocessing.get_context(request.param)


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


def test_failing_spec_build_breaks_pool_and_names_the_worker() -> None:
    bad = specs.FailingBuild("bad")
    with PPE(mp_context=FORK, worker=[specs.Counter("ok"), bad]) as ex:
        # only worker 0 can take it (worker 1 never gets ready), so it fails with the pool
        fut = ex.submit(tasks.hang_forever)
        with pytest.raises(mt.WorkerInitError) as info:
            fut.result(BLOCK_LIMIT)
        err = info.value
        assert "worker 1" in str(err)
        assert repr(bad) in str(err)
        assert isinstance(err.__cause__, ValueError)
        assert str(err.__cause__) == "cannot load bad"
        with pytest.raises(mt.WorkerInitError):
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

        waiting_again = threading.Event()
        wait_timeout = dispatcher._wait_timeout

        def spy_wait_timeout() -> Optional[float]:
            # called right before the dispatcher blocks; after the injection it means the
            # dispatcher has looked at its queue for the last time before sleeping
            if injected.is_set():
                waiting_again.set()
            return wait_timeout()

        monkeypatch.setattr(dispatcher, "_wait_timeout", spy_wait_timeout)
        monkeypatch.setattr(waiting, "os", RacingOs())
        wake.wakeup()
        assert injected.wait(BLOCK_LIMIT)
        assert waiting_again.wait(BLOCK_LIMIT)
        monkeypatch.setattr(waiting, "os", real_os)
        fut = ex.submit(tasks.square, 3)
        done, _ = concurrent.futures.wait([fut], timeout=2.0)
        assert done, "the submit's wakeup was lost: the task is never dispatched"
        assert fut.result(0) == 9
    finally:
        # unstick a dispatcher that lost its wakeup
        os.write(ex._dispatcher.control.wake.write_fd, b"\0")
        ex.shutdown()


@pytest.mark.timeout(30)
def test_max_tasks_per_child_respawns_slot_with_same_spec(tmp_path: Path) -> None:
    init_log, build_log = str(tmp_path / "init.log"), str(tmp_path / "build.log")
    with PPE(
        1,
        SPAWN,
        tasks.record_init,
        ("t", init_log),
        max_tasks_per_child=2,
        worker=specs.Counter("m", build_log),
    ) as ex:
        seen = [ex.submit(tasks.call_worker, i).result(BLOCK_LIMIT) for i in range(5)]
    assert [s.x for s in seen] == list(range(5))
    assert {(s.name, s.index) for s in seen} == {("m", 0)}
    assert [s.calls for s in seen] == [1, 2, 1, 2, 1], "each new process builds a fresh object"
    pids = [s.pid for s in seen]
    assert pids[0] == pids[1] and pids[2] == pids[3]
    assert len({pids[0], pids[2], pids[4]}) == 3
    builds_seen = [s.build_id for s in seen]
    assert builds_seen[0] == builds_seen[1] and builds_seen[2] == builds_seen[3]
    assert len({builds_seen[0], builds_seen[2], builds_seen[4]}) == 3
    inits = [int(line.split()[0]) for line in files.read_lines(init_log)]
    assert inits == [pids[0], pids[2], pids[4]], "the initializer runs again in each new process"
    builds = [line.split() for line in files.read_lines(build_log)]
    assert [(int(b[0]), b[1], b[2]) for b in builds] == [(p, "0", "m") for p in inits]
    assert [b[3] for b in builds] == [seen[0].build_id, seen[2].build_id, seen[4].build_id]


@pytest.mark.timeout(30)
def test_max_tasks_per_child_splits_chunks(tmp_path: Path) -> None:
    log = str(tmp_path / "runs.log")
    with PPE(1, SPAWN, max_tasks_per_child=3) as ex:
        fn = functools.partial(tasks.record_run, log=log)
        assert list(ex.imap(fn, range(10), chunksize=5)) == [x * 10 for x in range(10)]
    runs = [line.split() for line in files.read_lines(log)]
    assert sorted(int(x) for x, _ in runs) == list(range(10)), "every item runs exactly once"
    per_pid = Tally(pid for _, pid in runs)
    assert max(per_pid.values()) <= 3, per_pid
    assert len(per_pid) == 4, per_pid


def test_max_tasks_per_child_defaults_to_spawn() -> None:
    with PPE(1, max_tasks_per_child=1) as ex:
        assert ex._mp_context.get_start_method() == "spawn"
        assert ex.submit(tasks.square, 3).result(BLOCK_LIMIT) == 9


def test_per_worker_specs_run_on_distinct_processes(ctx: Any, tmp_path: Path) -> None:
    log = str(tmp_path / "builds.log")
    init, initargs = with_barrier(ctx, 2)
    with PPE(
        mp_context=ctx,
        initializer=init,
        initargs=initargs,
        worker=[specs.Counter("a", log), specs.Counter("b", log)],
    ) as ex:
        seen = on_every_worker(ex, 2, tasks.rendezvous_call)
        again = on_every_worker(ex, 2, tasks.rendezvous_call)
    assert [(s.index, s.name, s.calls) for s in seen] == [(0, "a", 1), (1, "b", 1)]
    assert [(s.index, s.name, s.calls) for s in again] == [(0, "a", 2), (1, "b", 2)]
    assert [s.pid for s in seen] == [s.pid for s in again]
    assert len({seen[0].pid, seen[1].pid, os.getpid()}) == 3
    builds = sorted(line.split() for line in files.read_lines(log))
    assert builds == sorted([str(s.pid), str(s.index), s.name, s.build_id] for s in seen)


def test_instance_is_built_once_and_survives_submit_map_and_imap(ctx: Any, tmp_path: Path) -> None:
    log = str(tmp_path / "builds.log")
    init, initargs = with_barrier(ctx, 2)
    seen: list[specs.Seen] = []
    with PPE(2, ctx, init, initargs, worker=specs.Counter("m", log)) as ex:
        seen += on_every_worker(ex, 2, tasks.rendezvous_call)
        seen += [f.result(BLOCK_LIMIT) for f in [ex.submit(tasks.call_worker, i) for i in range(8)]]
        seen += ex.map(tasks.call_worker, range(8))
        seen += ex.map(tasks.call_worker, range(8), chunksize=3)
        seen += ex.imap(tasks.call_worker, range(8))
        seen += ex.imap(tasks.call_worker, range(8), chunksize=1)
        seen += ex.imap_unordered(tasks.call_worker, range(8), chunksize=2)
        seen += ex.map(ex.worker, range(8))
        seen += on_every_worker(ex, 2, tasks.rendezvous_call)
    builds = [line.split() for line in files.read_lines(log)]
    assert sorted(b[1] for b in builds) == ["0", "1"], "one build per worker"
    by_build: dict[str, list[specs.Seen]] = {}
    for s in seen:
        by_build.setdefault(s.build_id, []).append(s)
    assert set(by_build) == {b[3] for b in builds}
    for calls in by_build.values():
        assert len({(s.pid, s.index) for s in calls}) == 1
        # the same object served every call: its counter saw each call exactly once
        assert sorted(s.calls for s in calls) == list(range(1, len(calls) + 1))
    assert {s.name for s in seen} == {"m"}


def test_worker_handle_with_submit_map_and_imap() -> None:
    with PPE(1, FORK, worker=specs.Counter("h")) as ex:
        handle = ex.worker
        assert handle is WORKER_HANDLE
        assert pickle.loads(pickle.dumps(handle)) is handle
        first = ex.submit(ex.worker, "s").result(BLOCK_LIMIT)
        mapped = list(ex.map(ex.worker, ["m1", "m2"]))
        imapped = list(ex.imap(ex.worker, ["i1", "i2"]))
        unordered = list(ex.imap_unordered(ex.worker, ["u1"]))
    everything = [first, *mapped, *imapped, *unordered]
    assert [s.x for s in everything] == ["s", "m1", "m2", "i1", "i2", "u1"]
    assert [s.calls for s in everything] == [1, 2, 3, 4, 5, 6]
    assert {(s.name, s.index, s.build_id) for s in everything} == {("h", 0, first.build_id)}


def test_plain_function_as_worker_spec() -> None:
    with PPE(2, FORK, worker=tasks.square) as ex:
        assert list(ex.map(ex.worker, range(4))) == [0, 1, 4, 9]
        assert ex.submit(ex.worker, 5).result(BLOCK_LIMIT) == 25


def test_worker_handle_needs_worker_spec() -> None:
    with PPE(1, FORK) as ex:
        with pytest.raises(AttributeError):
            ex.worker  # noqa: B018
        with pytest.raises(RuntimeError, match="outside a pool worker"):
            ex.submit(WORKER_HANDLE, 1).result(BLOCK_LIMIT)
        assert ex.submit(tasks.whoami).result(BLOCK_LIMIT)[0] == 0


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


def test_workers_exit_when_executor_is_garbage_collected() -> None:
    threads_before = processes.dispatcher_threads()
    ex = PPE(2, FORK)
    assert ex.submit(tasks.square, 3).result(BLOCK_LIMIT) == 9
    pids = set(ex._processes)
    assert len(pids) == 2
    threads = processes.dispatcher_threads() - threads_before
    assert len(threads) == 1
    del ex
    gc.collect()
    for thread in threads:
        thread.join(BLOCK_LIMIT)
        assert not thread.is_alive()
    assert not pids & set(processes.child_processes())


class _Resource:
    """Stands for something an initializer receives that must be released (a queue's
    semaphore, say): weakly referenceable, so the test sees when it is freed."""


def _fail_with(_: Any) -> None:
    raise OSError("no device")


@pytest.mark.parametrize("initializer", [tasks.install, _fail_with], ids=["ok", "failing"])
def test_a_shut_down_pool_frees_its_initargs_without_the_garbage_collector(
    initializer: Callable[..., None],
) -> None:
    # The stdlib's resource-tracker test counts on this: a queue passed in initargs is
    # unlinked as soon as the executor goes, not at some later garbage collection.
    resource = _Resource()
    resource_ref = weakref.ref(resource)
    gc.disable()
    try:
        ex = PPE(2, FORK, initializer, ({"resource": resource},))
        try:
            ex.submit(tasks.square, 3).result(BLOCK_LIMIT)
        except mt.WorkerInitError:
            assert initializer is _fail_with
        ex.shutdown()
        executor_ref = weakref.ref(ex)
        del ex, resource
        assert executor_ref() is None, "a reference cycle keeps the executor alive"
        assert resource_ref() is None, "a reference cycle keeps the initargs alive"
    finally:
        gc.enable()


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
