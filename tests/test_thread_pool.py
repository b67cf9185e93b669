"""StatefulThreadPoolExecutor: stdlib behaviour, stateful workers, init failures, task timeouts."""

from __future__ import annotations

import concurrent.futures
import gc
import itertools
import logging
import threading
import time
from concurrent.futures.thread import BrokenThreadPool
from typing import Any, Optional

import pytest

import mtasklite as mt

BLOCK_LIMIT = 10.0
#: per-task limit for timeout tests: short, yet far above what a trivial task needs
LIMIT = 0.3

STPE = mt.StatefulThreadPoolExecutor


class EventLog:
    """Thread-safe ordered record of what happened where."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.items: list[tuple[Any, ...]] = []

    def add(self, *item: Any) -> None:
        with self._lock:
            self.items.append(item)

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        with self._lock:
            return [i for i in self.items if i[0] == kind]

    def clear(self) -> None:
        with self._lock:
            self.items.clear()


LOG = EventLog()
_serials = itertools.count(1)


@pytest.fixture(autouse=True)
def _reset_log() -> None:
    LOG.clear()


@mt.delayed_init
class Model:
    """Records its construction (thread, worker index, name) and gets a unique serial."""

    def __init__(
        self, name: str, gate: Optional[threading.Event] = None, fail: bool = False
    ) -> None:
        if gate is not None:
            gate.wait(BLOCK_LIMIT)
        LOG.add("build", threading.current_thread().name, mt.worker_index(), name)
        if fail:
            raise ValueError(f"cannot load {name}")
        self.name = name
        self.serial = next(_serials)

    def __call__(self, x: Any) -> tuple[str, Any]:
        return self.name, x


def whoami(_: Any = None) -> tuple[Optional[int], str, int]:
    """(worker index, worker object's name, its serial) of the calling worker."""
    obj = mt.current_worker()
    return mt.worker_index(), obj.name, obj.serial


def pool_threads(prefix: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(prefix) and t.is_alive()]


def join_all(threads: list[threading.Thread], timeout: float = BLOCK_LIMIT) -> None:
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))


def run_on_every_worker(ex: mt.StatefulThreadPoolExecutor, n: int, fn: Any) -> list[Any]:
    """Run ``fn()`` once on each of ``n`` distinct workers (a barrier keeps them apart)."""
    barrier = threading.Barrier(n, timeout=BLOCK_LIMIT)

    def task() -> Any:
        barrier.wait()
        return fn()

    return [f.result(BLOCK_LIMIT) for f in [ex.submit(task) for _ in range(n)]]


# --- construction and argument checking ------------------------------------------------------


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
        STPE(1, "mt-x", None, (), Model("m"))  # type: ignore[misc]


def test_worker_list_sets_max_workers(prefix: str) -> None:
    with STPE(thread_name_prefix=prefix, worker=[Model("a"), Model("b"), Model("c")]) as ex:
        ex.wait_ready(BLOCK_LIMIT)
        assert len(pool_threads(prefix)) == 3
        assert sorted(i[3] for i in LOG.of("build")) == ["a", "b", "c"]


def test_worker_tuple_is_accepted(prefix: str) -> None:
    with STPE(2, prefix, worker=(Model("a"), Model("b"))) as ex:
        seen = run_on_every_worker(ex, 2, whoami)
    assert sorted(s[:2] for s in seen) == [(0, "a"), (1, "b")]


def test_worker_list_with_mismatched_max_workers_names_both_numbers() -> None:
    with pytest.raises(ValueError, match=r"max_workers=2\b.*\b3 workers"):
        STPE(2, worker=[Model("a"), Model("b"), Model("c")])


def test_worker_list_with_non_callable_item_names_its_index() -> None:
    with pytest.raises(TypeError, match=r"worker\[1\]"):
        STPE(worker=[Model("a"), "not callable", Model("c")])


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
        STPE(0, worker=Model("m"))


@pytest.mark.parametrize("bad", [0, -1, "1", True])
def test_bad_task_timeout_is_value_error(bad: Any) -> None:
    with pytest.raises(ValueError):
        STPE(1, task_timeout=bad)


# --- stdlib behaviour without worker= --------------------------------------------------------


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
        run_on_every_worker(ex, 2, lambda: None)
        run_on_every_worker(ex, 2, lambda: None)
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


# --- stateful workers ------------------------------------------------------------------------


def test_each_worker_runs_initializer_then_builds_once_before_its_first_task(prefix: str) -> None:
    def init() -> None:
        LOG.add("init", threading.current_thread().name, mt.worker_index())

    def task(x: int) -> int:
        LOG.add("task", threading.current_thread().name, mt.worker_index(), x)
        return x

    with STPE(3, prefix, init, worker=Model("m")) as ex:
        run_on_every_worker(ex, 3, lambda: task(-1))
        assert list(ex.map(task, range(30))) == list(range(30))
        assert [f.result(BLOCK_LIMIT) for f in [ex.submit(task, i) for i in range(10)]] == list(
            range(10)
        )
        assert list(ex.imap(task, range(10))) == list(range(10))
    per_thread: dict[str, list[str]] = {}
    for kind, name, *_ in LOG.items:
        per_thread.setdefault(name, []).append(kind)
    assert sorted(per_thread) == [f"{prefix}_{i}" for i in range(3)]
    for name, kinds in per_thread.items():
        assert kinds[:2] == ["init", "build"], name
        assert kinds.count("init") == 1, name
        assert kinds.count("build") == 1, name
        assert set(kinds[2:]) == {"task"}, name


def test_per_worker_arguments_land_on_distinct_workers(prefix: str) -> None:
    names = ["a", "b", "c"]
    with STPE(thread_name_prefix=prefix, worker=[Model(n) for n in names]) as ex:
        seen = run_on_every_worker(
            ex,
            3,
            lambda: (mt.worker_index(), mt.current_worker().name, threading.current_thread().name),
        )
    assert sorted(seen) == [(i, n, f"{prefix}_{i}") for i, n in enumerate(names)]
    assert sorted(b[1:] for b in LOG.of("build")) == [
        (f"{prefix}_{i}", i, n) for i, n in enumerate(names)
    ]


def test_replicated_spec_gives_each_worker_its_own_instance(prefix: str) -> None:
    with STPE(3, prefix, worker=Model("m")) as ex:
        seen = run_on_every_worker(ex, 3, lambda: (mt.worker_index(), id(mt.current_worker())))
    assert sorted(i for i, _ in seen) == [0, 1, 2]
    assert len({obj for _, obj in seen}) == 3
    assert len(LOG.of("build")) == 3


def test_mixed_list_of_spec_and_plain_callable(prefix: str) -> None:
    def plain(x: Any) -> tuple[str, Any]:
        return "plain", x

    with STPE(thread_name_prefix=prefix, worker=[Model("spec"), plain]) as ex:
        seen = run_on_every_worker(ex, 2, lambda: (mt.worker_index(), ex.worker(7)))
    assert sorted(seen) == [(0, ("spec", 7)), (1, ("plain", 7))]


def test_instances_persist_across_submit_map_and_imap(prefix: str) -> None:
    with STPE(2, prefix, worker=Model("m")) as ex:
        ex.wait_ready(BLOCK_LIMIT)
        seen = set(run_on_every_worker(ex, 2, whoami))
        seen.update(f.result(BLOCK_LIMIT) for f in [ex.submit(whoami) for _ in range(20)])
        seen.update(ex.map(whoami, range(20)))
        seen.update(ex.map(whoami, range(20), chunksize=4))
        seen.update(ex.map(whoami, range(20), buffersize=2))
        seen.update(ex.imap(whoami, range(20)))
        seen.update(ex.imap_unordered(whoami, range(20), chunksize=None))
        seen.update(run_on_every_worker(ex, 2, whoami))
    assert len(LOG.of("build")) == 2
    assert {index for index, _, _ in seen} == {0, 1}
    assert len(seen) == 2, f"each worker index must keep one instance: {seen}"


def test_wait_ready_builds_every_worker_before_any_task(prefix: str) -> None:
    with STPE(3, prefix, worker=Model("m")) as ex:
        ex.wait_ready(BLOCK_LIMIT)
        assert sorted(b[2] for b in LOG.of("build")) == [0, 1, 2]
        assert len(pool_threads(prefix)) == 3
        ex.wait_ready(BLOCK_LIMIT)  # idempotent
        assert len(LOG.of("build")) == 3


def test_wait_ready_times_out_while_a_worker_is_still_building(
    prefix: str, release: threading.Event
) -> None:
    with STPE(1, prefix, worker=Model("slow", gate=release)) as ex:
        with pytest.raises(concurrent.futures.TimeoutError):  # 3.9/3.10: not the builtin
            ex.wait_ready(0.05)
        release.set()
        ex.wait_ready(BLOCK_LIMIT)
        assert ex.submit(whoami).result(BLOCK_LIMIT)[:2] == (0, "slow")


def test_wait_ready_after_shutdown_is_runtime_error(prefix: str) -> None:
    ex = STPE(1, prefix, worker=Model("m"))
    ex.shutdown()
    with pytest.raises(RuntimeError):
        ex.wait_ready(BLOCK_LIMIT)


# --- initialisation failures -----------------------------------------------------------------


def test_failing_build_breaks_the_pool(prefix: str) -> None:
    spec = Model("boom", fail=True)
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
    bad = Model("bad", fail=True)
    with STPE(thread_name_prefix=prefix, worker=[Model("ok"), bad]) as ex:
        with pytest.raises(mt.WorkerInitError) as info:
            ex.wait_ready(BLOCK_LIMIT)
        assert "worker 1" in str(info.value)
        assert "Model('bad', fail=True)" in str(info.value)
        assert isinstance(info.value.__cause__, ValueError)
        with pytest.raises(mt.WorkerInitError):
            ex.submit(abs, 1)
        with pytest.raises(mt.WorkerInitError):
            ex.map(abs, range(3))
        with pytest.raises(mt.WorkerInitError):
            next(ex.imap(abs, range(3)))


@pytest.mark.parametrize("worker", [None, Model("m")], ids=["plain", "stateful"])
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
    assert LOG.of("build") == [], "the worker object is built only after the initializer"


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

    ex = STPE(thread_name_prefix=prefix, worker=[Model("ok"), Model("bad", fail_now, True)])
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


# --- garbage collection ----------------------------------------------------------------------


def test_threads_exit_when_executor_is_garbage_collected(prefix: str) -> None:
    ex = STPE(2, prefix, worker=Model("m"))
    ex.wait_ready(BLOCK_LIMIT)
    assert ex.submit(whoami).result(BLOCK_LIMIT)[1] == "m"
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


# --- task timeouts ---------------------------------------------------------------------------


def hang(x: Any, gate: threading.Event) -> Any:
    gate.wait(BLOCK_LIMIT * 3)
    return x


def test_timed_out_task_fails_with_task_timeout_error(
    prefix: str, release: threading.Event
) -> None:
    with STPE(1, prefix) as ex:
        fut = ex.submit_with_timeout(LIMIT, hang, 42, release)
        with pytest.raises(mt.TaskTimeoutError) as info:
            fut.result(BLOCK_LIMIT)
        err = info.value
        assert isinstance(err, TimeoutError)
        assert isinstance(err, concurrent.futures.TimeoutError)
        msg = str(err)
        assert f"{LIMIT:g}" in msg, msg
        assert "worker 0" in msg, msg
        assert "hang" in msg, msg
        # the pool keeps working
        assert ex.submit(abs, -5).result(BLOCK_LIMIT) == 5


def test_timed_out_worker_is_replaced_with_fresh_instance_of_same_index(
    prefix: str, release: threading.Event
) -> None:
    with STPE(1, prefix, worker=Model("m")) as ex:
        index0, name0, serial0 = ex.submit(whoami).result(BLOCK_LIMIT)
        fut = ex.submit_with_timeout(LIMIT, hang, 1, release)
        with pytest.raises(mt.TaskTimeoutError):
            fut.result(BLOCK_LIMIT)
        index1, name1, serial1 = ex.submit(whoami).result(BLOCK_LIMIT)
    assert (index0, index1) == (0, 0)
    assert (name0, name1) == ("m", "m")
    assert serial1 != serial0, "the replacement must build a fresh instance from the spec"
    builds = LOG.of("build")
    assert [b[2] for b in builds] == [0, 0]
    assert [b[1] for b in builds] == [f"{prefix}_0", f"{prefix}_0"]


def test_other_tasks_keep_running_and_pool_stays_full_size(
    prefix: str, release: threading.Event
) -> None:
    started = threading.Event()

    def hang_here() -> Optional[int]:
        started.set()
        release.wait(BLOCK_LIMIT * 3)
        return mt.worker_index()

    with STPE(2, prefix, worker=Model("m")) as ex:
        ex.wait_ready(BLOCK_LIMIT)
        stuck = ex.submit_with_timeout(LIMIT, hang_here)
        assert started.wait(BLOCK_LIMIT)
        # while one worker is stuck, the other serves new work
        others = [ex.submit(whoami) for _ in range(5)]
        assert all(f.result(BLOCK_LIMIT)[1] == "m" for f in others)
        assert not stuck.done()
        with pytest.raises(mt.TaskTimeoutError):
            stuck.result(BLOCK_LIMIT)
        # two tasks that can only finish together: both worker indices are live again
        seen = run_on_every_worker(ex, 2, whoami)
    assert sorted(i for i, _, _ in seen) == [0, 1]
    assert len(LOG.of("build")) == 3


def test_stuck_thread_is_stopped_by_an_async_exception(
    prefix: str, release: threading.Event
) -> None:
    record: dict[str, Any] = {}

    def spin() -> None:
        record["thread"] = threading.current_thread()
        try:
            while not release.wait(0.005):  # Python-level loop: interruptible
                pass
            record["finished"] = True
        except BaseException as exc:
            record["exception"] = exc
            raise

    with STPE(1, prefix) as ex:
        fut = ex.submit_with_timeout(LIMIT, spin)
        with pytest.raises(mt.TaskTimeoutError):
            fut.result(BLOCK_LIMIT)
        stuck = record["thread"]
        stuck.join(BLOCK_LIMIT)
        assert not stuck.is_alive(), "the abandoned thread must stop without the event"
        assert not release.is_set()
        assert "finished" not in record
        assert "exception" in record
        assert ex.submit(abs, -1).result(BLOCK_LIMIT) == 1


def test_shutdown_wait_does_not_wait_for_abandoned_thread(
    prefix: str, release: threading.Event
) -> None:
    started = threading.Event()
    stuck: list[threading.Thread] = []

    def block() -> None:
        stuck.append(threading.current_thread())
        started.set()
        release.wait(BLOCK_LIMIT * 3)  # blocked in C: the async exception cannot land yet

    ex = STPE(1, prefix)
    fut = ex.submit_with_timeout(LIMIT, block)
    assert started.wait(BLOCK_LIMIT)
    with pytest.raises(mt.TaskTimeoutError):
        fut.result(BLOCK_LIMIT)
    closer = threading.Thread(target=ex.shutdown, kwargs={"wait": True}, name="mt-closer")
    closer.start()
    closer.join(BLOCK_LIMIT)
    assert not closer.is_alive(), "shutdown(wait=True) waited for the abandoned thread"
    assert stuck[0].is_alive()
    release.set()
    stuck[0].join(BLOCK_LIMIT)
    assert not stuck[0].is_alive()


def test_executor_task_timeout_applies_to_submit(prefix: str, release: threading.Event) -> None:
    with STPE(1, prefix, task_timeout=LIMIT) as ex:
        assert ex.submit(abs, -2).result(BLOCK_LIMIT) == 2
        with pytest.raises(mt.TaskTimeoutError):
            ex.submit(hang, 1, release).result(BLOCK_LIMIT)
        assert ex.submit(abs, -3).result(BLOCK_LIMIT) == 3


def test_submit_with_timeout_none_overrides_executor_default(
    prefix: str, release: threading.Event
) -> None:
    started = threading.Event()
    gate = threading.Event()

    def long_but_allowed() -> str:
        started.set()
        gate.wait(BLOCK_LIMIT)
        return "ok"

    try:
        with STPE(2, prefix, task_timeout=LIMIT) as ex:
            free = ex.submit_with_timeout(None, long_but_allowed)
            assert started.wait(BLOCK_LIMIT)
            # started after ``free`` with the default limit: once it times out, ``free`` has
            # run past the default limit too
            with pytest.raises(mt.TaskTimeoutError):
                ex.submit(hang, 1, release).result(BLOCK_LIMIT)
            assert not free.done()
            gate.set()
            assert free.result(BLOCK_LIMIT) == "ok"
    finally:
        gate.set()


@pytest.mark.parametrize("bad", [0, -1.0, "1"])
def test_submit_with_timeout_rejects_bad_limits(prefix: str, bad: Any) -> None:
    with STPE(1, prefix) as ex:
        with pytest.raises(ValueError):
            ex.submit_with_timeout(bad, abs, 1)
        with pytest.raises(ValueError):
            ex.imap(abs, [1], task_timeout=bad)


def test_imap_task_timeout_fails_the_item_at_its_position(
    prefix: str, release: threading.Event
) -> None:
    def maybe_hang(x: int) -> int:
        if x == 2:
            release.wait(BLOCK_LIMIT * 3)
        return x

    with STPE(2, prefix) as ex:
        out = []
        with (
            pytest.raises(mt.TaskTimeoutError),
            ex.imap(maybe_hang, range(6), task_timeout=LIMIT, chunksize=3) as it,
        ):
            out.extend(it)
        assert out == [0, 1]
        assert list(ex.imap(abs, range(-3, 0))) == [3, 2, 1]


def test_executor_task_timeout_applies_to_imap_items(prefix: str, release: threading.Event) -> None:
    def maybe_hang(x: int) -> int:
        if x == 1:
            release.wait(BLOCK_LIMIT * 3)
        return x

    with STPE(2, prefix, task_timeout=LIMIT) as ex:
        out = []
        with pytest.raises(mt.TaskTimeoutError):
            for x in ex.imap_unordered(maybe_hang, range(4)):
                out.append(x)
        assert 1 not in out


@pytest.mark.timeout(30)
def test_executor_task_timeout_applies_to_chunked_map(
    prefix: str, release: threading.Event
) -> None:
    with STPE(1, prefix, task_timeout=LIMIT) as ex:
        try:
            with pytest.raises(mt.TaskTimeoutError):
                # the overall timeout only turns the bug into a failure instead of a hang
                list(ex.map(hang, [1, 2], [release, release], chunksize=2, timeout=1.0))
        finally:
            release.set()
