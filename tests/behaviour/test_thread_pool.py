"""StatefulThreadPoolExecutor: construction and argument checks, stdlib behaviour without
``worker=``, stateful workers, initialisation failures and garbage collection (its task
timeouts are in ``test_timeouts.py``).
"""

from __future__ import annotations

import concurrent.futures
import gc
import itertools
import logging
import threading
import time
from concurrent.futures.thread import BrokenThreadPool
from typing import Any

import pytest

import mtasklite as mt
from support import executors, specs

BLOCK_LIMIT = 10.0


#: per-task limit for timeout tests: short, yet far above what a trivial task needs
LIMIT = 0.3


STPE = mt.StatefulThreadPoolExecutor


def pool_threads(prefix: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(prefix) and t.is_alive()]


def join_all(threads: list[threading.Thread], timeout: float = BLOCK_LIMIT) -> None:
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))


def test_alias_and_stdlib_subclass() -> None:
    assert mt.StatefulThreadExecutor is mt.StatefulThreadPoolExecutor
    assert issubclass(STPE, concurrent.futures.ThreadPoolExecutor)


def test_stdlib_positional_signature(prefix: str) -> None:
    seen: list[Any] = []
    with STPE(1, prefix, seen.append, ("hello",)) as ex:
        assert ex.submit(threading.current_thread).result(BLOCK_LIMIT).name == f"{prefix}_0"
    assert seen == ["hello"]


def test_worker_and_task_timeout_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        STPE(1, "mt-x", None, (), specs.LoggedModel("m"))  # type: ignore[misc]


def test_worker_list_sets_max_workers(prefix: str) -> None:
    with STPE(
        thread_name_prefix=prefix,
        worker=[specs.LoggedModel("a"), specs.LoggedModel("b"), specs.LoggedModel("c")],
    ) as ex:
        ex.wait_ready(BLOCK_LIMIT)
        assert len(pool_threads(prefix)) == 3
        assert sorted(i[3] for i in specs.BUILD_EVENTS.of("build")) == ["a", "b", "c"]


def test_worker_tuple_is_accepted(prefix: str) -> None:
    with STPE(2, prefix, worker=(specs.LoggedModel("a"), specs.LoggedModel("b"))) as ex:
        seen = executors.run_on_every_worker(ex, 2, specs.logged_whoami)
    assert sorted(s[:2] for s in seen) == [(0, "a"), (1, "b")]


def test_worker_list_with_mismatched_max_workers_names_both_numbers() -> None:
    with pytest.raises(ValueError, match=r"max_workers=2\b.*\b3 workers"):
        STPE(2, worker=[specs.LoggedModel("a"), specs.LoggedModel("b"), specs.LoggedModel("c")])


def test_worker_list_with_non_callable_item_names_its_index() -> None:
    with pytest.raises(TypeError, match=r"worker\[1\]"):
        STPE(worker=[specs.LoggedModel("a"), "not callable", specs.LoggedModel("c")])


@pytest.mark.parametrize("empty", [[], ()])
def test_empty_worker_list_is_value_error(empty: Any) -> None:
    with pytest.raises(ValueError):
        STPE(worker=empty)


def test_non_callable_single_worker_is_type_error() -> None:
    with pytest.raises(TypeError):
        STPE(worker=42)  # type: ignore[arg-type]


def test_non_positive_max_workers_is_value_error() -> None:
    with pytest.raises(ValueError):
        STPE(0)
    with pytest.raises(ValueError):
        STPE(0, worker=specs.LoggedModel("m"))


@pytest.mark.parametrize("bad", [0, -1, "1", True])
def test_bad_task_timeout_is_value_error(bad: Any) -> None:
    with pytest.raises(ValueError):
        STPE(1, task_timeout=bad)


def test_plain_pool_behaves_like_stdlib(prefix: str) -> None:
    with STPE(2, prefix) as ex:
        assert ex.submit(pow, 2, 10).result(BLOCK_LIMIT) == 1024
        assert list(ex.map(pow, range(6), itertools.repeat(2))) == [0, 1, 4, 9, 16, 25]
        names = {f.result(BLOCK_LIMIT).name for f in [ex.submit(threading.current_thread)]}
        assert names <= {f"{prefix}_0", f"{prefix}_1"}
        fut = ex.submit(int, "x")
        with pytest.raises(ValueError):
            fut.result(BLOCK_LIMIT)
    with pytest.raises(RuntimeError):
        ex.submit(abs, 1)


def test_default_thread_names_follow_stdlib() -> None:
    with STPE(1) as ex:
        name = ex.submit(threading.current_thread).result(BLOCK_LIMIT).name
    assert name.startswith("ThreadPoolExecutor-")
    assert name.endswith("_0")


def test_initializer_runs_once_per_thread_with_initargs(prefix: str) -> None:
    calls: list[tuple[str, Any]] = []

    def init(tag: Any) -> None:
        calls.append((threading.current_thread().name, tag))

    with STPE(2, prefix, init, ("t",)) as ex:
        executors.run_on_every_worker(ex, 2, lambda: None)
        executors.run_on_every_worker(ex, 2, lambda: None)
    assert sorted(calls) == [(f"{prefix}_0", "t"), (f"{prefix}_1", "t")]


def test_shutdown_cancel_futures_cancels_queued_work(prefix: str, release: threading.Event) -> None:
    started = threading.Event()

    def block() -> None:
        started.set()
        release.wait(BLOCK_LIMIT)

    ex = STPE(1, prefix)
    running = ex.submit(block)
    assert started.wait(BLOCK_LIMIT)
    queued = [ex.submit(abs, i) for i in range(5)]
    ex.shutdown(wait=False, cancel_futures=True)
    release.set()
    ex.shutdown(wait=True)
    assert running.result(BLOCK_LIMIT) is None
    assert all(f.cancelled() for f in queued)


def test_each_worker_runs_initializer_then_builds_once_before_its_first_task(prefix: str) -> None:
    def init() -> None:
        specs.BUILD_EVENTS.add("init", threading.current_thread().name, mt.worker_index())

    def task(x: int) -> int:
        specs.BUILD_EVENTS.add("task", threading.current_thread().name, mt.worker_index(), x)
        return x

    with STPE(3, prefix, init, worker=specs.LoggedModel("m")) as ex:
        executors.run_on_every_worker(ex, 3, lambda: task(-1))
        assert list(ex.map(task, range(30))) == list(range(30))
        assert [f.result(BLOCK_LIMIT) for f in [ex.submit(task, i) for i in range(10)]] == list(
            range(10)
        )
        assert list(ex.imap(task, range(10))) == list(range(10))
    per_thread: dict[str, list[str]] = {}
    for kind, name, *_ in specs.BUILD_EVENTS.items:
        per_thread.setdefault(name, []).append(kind)
    assert sorted(per_thread) == [f"{prefix}_{i}" for i in range(3)]
    for name, kinds in per_thread.items():
        assert kinds[:2] == ["init", "build"], name
        assert kinds.count("init") == 1, name
        assert kinds.count("build") == 1, name
        assert set(kinds[2:]) == {"task"}, name


def test_per_worker_arguments_land_on_distinct_workers(prefix: str) -> None:
    names = ["a", "b", "c"]
    with STPE(thread_name_prefix=prefix, worker=[specs.LoggedModel(n) for n in names]) as ex:
        seen = executors.run_on_every_worker(
            ex,
            3,
            lambda: (mt.worker_index(), mt.current_worker().name, threading.current_thread().name),
        )
    assert sorted(seen) == [(i, n, f"{prefix}_{i}") for i, n in enumerate(names)]
    assert sorted(b[1:] for b in specs.BUILD_EVENTS.of("build")) == [
        (f"{prefix}_{i}", i, n) for i, n in enumerate(names)
    ]


def test_replicated_spec_gives_each_worker_its_own_instance(prefix: str) -> None:
    with STPE(3, prefix, worker=specs.LoggedModel("m")) as ex:
        seen = executors.run_on_every_worker(
            ex, 3, lambda: (mt.worker_index(), id(mt.current_worker()))
        )
    assert sorted(i for i, _ in seen) == [0, 1, 2]
    assert len({obj for _, obj in seen}) == 3
    assert len(specs.BUILD_EVENTS.of("build")) == 3


def test_mixed_list_of_spec_and_plain_callable(prefix: str) -> None:
    def plain(x: Any) -> tuple[str, Any]:
        return "plain", x

    with STPE(thread_name_prefix=prefix, worker=[specs.LoggedModel("spec"), plain]) as ex:
        seen = executors.run_on_every_worker(ex, 2, lambda: (mt.worker_index(), ex.worker(7)))
    assert sorted(seen) == [(0, ("spec", 7)), (1, ("plain", 7))]


def test_instances_persist_across_submit_map_and_imap(prefix: str) -> None:
    with STPE(2, prefix, worker=specs.LoggedModel("m")) as ex:
        ex.wait_ready(BLOCK_LIMIT)
        seen = set(executors.run_on_every_worker(ex, 2, specs.logged_whoami))
        seen.update(
            f.result(BLOCK_LIMIT) for f in [ex.submit(specs.logged_whoami) for _ in range(20)]
        )
        seen.update(ex.map(specs.logged_whoami, range(20)))
        seen.update(ex.map(specs.logged_whoami, range(20), chunksize=4))
        seen.update(ex.map(specs.logged_whoami, range(20), buffersize=2))
        seen.update(ex.imap(specs.logged_whoami, range(20)))
        seen.update(ex.imap_unordered(specs.logged_whoami, range(20), chunksize=None))
        seen.update(executors.run_on_every_worker(ex, 2, specs.logged_whoami))
    assert len(specs.BUILD_EVENTS.of("build")) == 2
    assert {index for index, _, _ in seen} == {0, 1}
    assert len(seen) == 2, f"each worker index must keep one instance: {seen}"


def test_wait_ready_builds_every_worker_before_any_task(prefix: str) -> None:
    with STPE(3, prefix, worker=specs.LoggedModel("m")) as ex:
        ex.wait_ready(BLOCK_LIMIT)
        assert sorted(b[2] for b in specs.BUILD_EVENTS.of("build")) == [0, 1, 2]
        assert len(pool_threads(prefix)) == 3
        ex.wait_ready(BLOCK_LIMIT)  # idempotent
        assert len(specs.BUILD_EVENTS.of("build")) == 3


def test_wait_ready_times_out_while_a_worker_is_still_building(
    prefix: str, release: threading.Event
) -> None:
    with STPE(1, prefix, worker=specs.LoggedModel("slow", gate=release)) as ex:
        with pytest.raises(concurrent.futures.TimeoutError):  # 3.9/3.10: not the builtin
            ex.wait_ready(0.05)
        release.set()
        ex.wait_ready(BLOCK_LIMIT)
        assert ex.submit(specs.logged_whoami).result(BLOCK_LIMIT)[:2] == (0, "slow")


def test_wait_ready_after_shutdown_is_runtime_error(prefix: str) -> None:
    ex = STPE(1, prefix, worker=specs.LoggedModel("m"))
    ex.shutdown()
    with pytest.raises(RuntimeError):
        ex.wait_ready(BLOCK_LIMIT)


def test_failing_build_breaks_the_pool(prefix: str) -> None:
    spec = specs.LoggedModel("boom", fail=True)
    with STPE(1, prefix, worker=spec) as ex:
        fut = ex.submit(abs, -1)
        with pytest.raises(mt.WorkerInitError) as info:
            fut.result(BLOCK_LIMIT)
        err = info.value
        assert isinstance(err, BrokenThreadPool)
        assert "worker 0" in str(err)
        assert repr(spec) in str(err)
        assert isinstance(err.__cause__, ValueError)
        assert str(err.__cause__) == "cannot load boom"
        with pytest.raises(mt.WorkerInitError) as again:
            ex.submit(abs, -1)
        assert again.value.__cause__ is err.__cause__
        with pytest.raises(BrokenThreadPool):  # what stdlib code catches
            ex.wait_ready(BLOCK_LIMIT)


def test_failing_build_of_one_listed_worker_names_that_worker(prefix: str) -> None:
    bad = specs.LoggedModel("bad", fail=True)
    with STPE(thread_name_prefix=prefix, worker=[specs.LoggedModel("ok"), bad]) as ex:
        with pytest.raises(mt.WorkerInitError) as info:
            ex.wait_ready(BLOCK_LIMIT)
        assert "worker 1" in str(info.value)
        assert "LoggedModel('bad', fail=True)" in str(info.value)
        assert isinstance(info.value.__cause__, ValueError)
        with pytest.raises(mt.WorkerInitError):
            ex.submit(abs, 1)
        with pytest.raises(mt.WorkerInitError):
            ex.map(abs, range(3))
        with pytest.raises(mt.WorkerInitError):
            next(ex.imap(abs, range(3)))


@pytest.mark.parametrize("worker", [None, specs.LoggedModel("m")], ids=["plain", "stateful"])
def test_failing_initializer_breaks_the_pool_and_logs(
    prefix: str, worker: Any, caplog: pytest.LogCaptureFixture
) -> None:
    def init() -> None:
        raise OSError("no device")

    quiet = caplog.at_level(logging.CRITICAL, logger="concurrent.futures")
    with quiet, STPE(1, prefix, init, worker=worker) as ex:
        fut = ex.submit(abs, -1)
        with pytest.raises(BrokenThreadPool) as info:
            fut.result(BLOCK_LIMIT)
        with pytest.raises(BrokenThreadPool):
            ex.submit(abs, -1)
    assert isinstance(info.value.__cause__, OSError)
    records = [
        r
        for r in caplog.records
        if r.name == "concurrent.futures"
        and r.levelno == logging.CRITICAL
        and "Exception in initializer:" in r.getMessage()
    ]
    assert len(records) == 1
    assert records[0].exc_info is not None
    assert records[0].exc_info[0] is OSError
    assert specs.BUILD_EVENTS.of("build") == [], (
        "the worker object is built only after the initializer"
    )


@pytest.mark.timeout(30)
def test_build_failure_after_shutdown_still_lets_healthy_workers_exit(
    prefix: str, release: threading.Event
) -> None:
    fail_now = threading.Event()
    started = threading.Event()

    def busy() -> str:
        started.set()
        release.wait(BLOCK_LIMIT)
        return "done"

    ex = STPE(
        thread_name_prefix=prefix,
        worker=[specs.LoggedModel("ok"), specs.LoggedModel("bad", fail_now, True)],
    )
    try:
        busy_future = ex.submit(busy)  # worker 0 takes it and blocks
        assert started.wait(BLOCK_LIMIT)
        queued = ex.submit(abs, -1)  # starts worker 1, whose build waits for fail_now
        ex.shutdown(wait=False)
        fail_now.set()
        with pytest.raises(mt.WorkerInitError):
            queued.result(BLOCK_LIMIT)
        release.set()
        assert busy_future.result(BLOCK_LIMIT) == "done"
        threads = pool_threads(prefix)
        join_all(threads, 1.0)
        assert not [t.name for t in threads if t.is_alive()]
    finally:
        release.set()


def test_threads_exit_when_executor_is_garbage_collected(prefix: str) -> None:
    ex = STPE(2, prefix, worker=specs.LoggedModel("m"))
    ex.wait_ready(BLOCK_LIMIT)
    assert ex.submit(specs.logged_whoami).result(BLOCK_LIMIT)[1] == "m"
    threads = pool_threads(prefix)
    del ex
    gc.collect()
    join_all(threads)
    assert not [t.name for t in threads if t.is_alive()]


def test_threads_exit_when_executor_with_timed_tasks_is_garbage_collected(prefix: str) -> None:
    ex = STPE(1, prefix)
    assert ex.submit_with_timeout(BLOCK_LIMIT, abs, -3).result(BLOCK_LIMIT) == 3
    threads = pool_threads(prefix)
    del ex
    gc.collect()
    join_all(threads, 1.0)
    assert not [t.name for t in threads if t.is_alive()]
