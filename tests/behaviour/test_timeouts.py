"""Per-task timeouts on both executors: ``task_timeout=``, ``submit_with_timeout`` and
``imap(..., task_timeout=)``.

The limit counts from when a task starts running.  A late task's future fails with
``TaskTimeoutError`` (a builtin ``TimeoutError``); the process pool kills the worker and
starts a new process in its slot (same index, fresh object), the thread pool abandons the
thread and starts a replacement with the same index.
"""

from __future__ import annotations

import concurrent.futures
import functools
import itertools
import logging
import multiprocessing
import queue
import subprocess
import sys
import threading
import time
from collections import Counter as Tally
from pathlib import Path
from typing import Any, Optional

import pytest

import mtasklite as mt
import support
from support import executors, files, processes, specs, tasks
from support.executors import (
    FAULT_LIMIT,
    PROCESS_KINDS,
    Guard,
    outcomes,
    returns_within,
    run_on_every_worker,
)

BLOCK_LIMIT = 10.0

#: the per-task limit used throughout: short, yet far above what a trivial task needs
LIMIT = 0.3

#: the spec: a late task's future fails at most this long after its limit
BOUND = 0.5

PPE = mt.StatefulProcessPoolExecutor

STPE = mt.StatefulThreadPoolExecutor

FORK = multiprocessing.get_context("fork")

SPAWN = multiprocessing.get_context("spawn")

FORKSERVER = multiprocessing.get_context("forkserver")


def test_task_timeout_error_is_a_builtin_timeout_error() -> None:
    assert issubclass(mt.TaskTimeoutError, TimeoutError)
    assert issubclass(mt.TaskTimeoutError, concurrent.futures.TimeoutError)
    with pytest.raises(TimeoutError):
        raise mt.TaskTimeoutError("x")


# --- process executor ------------------------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("context", "kind"),
    [
        (FORK, "sleep"),
        (FORK, "spin"),
        (FORK, "select"),
        (FORK, "sigterm-ignored"),
        (FORK, "sigterm-swallowed"),
        (SPAWN, "sleep"),
        (SPAWN, "sigterm-ignored"),
        (FORKSERVER, "sleep"),
        (FORKSERVER, "sigterm-ignored"),
    ],
    ids=lambda v: v if isinstance(v, str) else v.get_start_method(),
)
def test_hung_task_times_out_promptly_and_its_slot_is_renewed(
    context: Any, kind: str, tmp_path: Path
) -> None:
    log = str(tmp_path / "builds.log")
    hang = tasks.HANGS[kind]
    with PPE(1, context, worker=specs.Counter("m", log)) as ex:
        first = ex.submit(tasks.call_worker, "first").result(BLOCK_LIMIT)
        late = ex.submit_with_timeout(LIMIT, hang, str(tmp_path), "late")
        queued = [ex.submit(tasks.call_worker, i) for i in range(3)]  # waiting behind it
        with pytest.raises(mt.TaskTimeoutError) as info:
            late.result(BLOCK_LIMIT)
        failed_at = time.monotonic()
        after = [f.result(BLOCK_LIMIT) for f in queued]
    hung_pid, started = files.read_stamp(tmp_path, "late")
    assert hung_pid == first.pid
    took = failed_at - started
    assert LIMIT - 0.05 <= took <= LIMIT + BOUND, f"failed {took:.3f} s after it started"
    message = str(info.value)
    assert f"{LIMIT:g} s" in message, message
    assert "worker 0" in message, message
    assert hang.__name__ in message, message
    # queued work is not charged: it runs on the replacement process, in the same slot
    assert [s.x for s in after] == [0, 1, 2]
    assert {(s.name, s.index) for s in after} == {("m", 0)}
    assert len({s.pid for s in after}) == 1
    assert after[0].pid != first.pid, "the replacement is a new process"
    assert {s.build_id for s in after} == {after[0].build_id} != {first.build_id}
    assert [s.calls for s in after] == [1, 2, 3], "a freshly built object"
    builds = [line.split() for line in files.read_lines(log)]
    assert [(int(pid), index) for pid, index, _, _ in builds] == [
        (first.pid, "0"),
        (after[0].pid, "0"),
    ]


def test_executor_task_timeout_applies_to_submit_and_map() -> None:
    with PPE(1, FORK, task_timeout=LIMIT) as ex:
        assert ex.submit(tasks.square, 3).result(BLOCK_LIMIT) == 9
        with pytest.raises(mt.TaskTimeoutError):
            ex.submit(tasks.hang_if, 1, 1).result(BLOCK_LIMIT)
        it = ex.map(tasks.hang_if, range(4), [2] * 4)
        assert [next(it), next(it)] == [0, 2]
        with pytest.raises(mt.TaskTimeoutError):
            next(it)
        with pytest.raises(mt.TaskTimeoutError):
            list(ex.map(tasks.hang_if, range(4), [1] * 4, chunksize=2))
        assert ex.submit(tasks.square, 4).result(BLOCK_LIMIT) == 16


def test_submit_with_timeout_none_overrides_the_executor_default() -> None:
    started, release = FORK.Event(), FORK.Event()
    try:
        with PPE(
            1, FORK, tasks.install, ({"started": started, "release": release},), task_timeout=LIMIT
        ) as ex:
            free = ex.submit_with_timeout(None, tasks.block_until_released, "free")
            assert started.wait(BLOCK_LIMIT)
            done, _ = concurrent.futures.wait([free], timeout=3 * LIMIT)
            assert not done, "a task with no limit must outlive the executor's default"
            release.set()
            assert free.result(BLOCK_LIMIT) == "free"
            assert list(ex.imap(tasks.sleep_for, [7], [2 * LIMIT], task_timeout=None)) == [7]
    finally:
        release.set()


@pytest.mark.parametrize("bad", [0, -1.0, "1", True])
def test_bad_limits_are_value_errors(bad: Any) -> None:
    with PPE(1, FORK) as ex:
        with pytest.raises(ValueError):
            ex.submit_with_timeout(bad, tasks.square, 1)
        with pytest.raises(ValueError):
            ex.imap(tasks.square, [1], task_timeout=bad)
        with pytest.raises(ValueError):
            ex.imap_unordered(tasks.square, [1], task_timeout=bad)


@pytest.mark.parametrize("chunksize", [1, 4, None])
def test_imap_task_timeout_fails_the_item_at_its_position(chunksize: Optional[int]) -> None:
    with PPE(2, FORK) as ex:
        out: list[int] = []
        with pytest.raises(mt.TaskTimeoutError) as info:
            for value in ex.imap(
                tasks.hang_if, range(8), [3] * 8, chunksize=chunksize, task_timeout=LIMIT
            ):
                out.append(value)
        assert out == [0, 2, 4]
        assert "hang_if(3, 3" in str(info.value)
        assert list(ex.imap(tasks.square, range(4))) == [0, 1, 4, 9]


def test_imap_unordered_task_timeout() -> None:
    with PPE(2, FORK) as ex:
        out: list[int] = []
        with pytest.raises(mt.TaskTimeoutError):
            for value in ex.imap_unordered(
                tasks.hang_if, range(8), [3] * 8, chunksize=1, task_timeout=LIMIT
            ):
                out.append(value)
        assert set(out) <= {0, 2, 4, 8, 10, 12, 14}
        got = outcomes(ex, tasks.hang_if, range(8), [3] * 8, task_timeout=LIMIT, ordered=False)
        assert sum(isinstance(g, mt.TaskTimeoutError) for g in got) == 1
        assert sorted(g for g in got if isinstance(g, int)) == [0, 2, 4, 8, 10, 12, 14]


def test_executor_task_timeout_applies_to_imap() -> None:
    with PPE(2, FORK, task_timeout=LIMIT) as ex:
        got = outcomes(ex, tasks.hang_if, range(6), [2] * 6, chunksize=None, task_timeout=LIMIT)
        assert isinstance(got[2], mt.TaskTimeoutError)
        out: list[int] = []
        with pytest.raises(mt.TaskTimeoutError):
            out.extend(ex.imap(tasks.hang_if, range(6), [2] * 6))
        assert out == [0, 2]


@pytest.mark.parametrize("executor", ["process", "thread"])
def test_the_limit_is_per_item_not_per_chunk(executor: str, prefix: str) -> None:
    # three items of 0.15 s in one chunk: the chunk runs 0.45 s, each item stays well inside
    pool = PPE(1, FORK) if executor == "process" else STPE(1, prefix)
    with pool as ex:
        got = outcomes(ex, tasks.sleep_for, range(3), [0.15] * 3, chunksize=3, task_timeout=LIMIT)
    assert got == [0, 1, 2]


@pytest.mark.timeout(30)
def test_clock_starts_when_the_task_runs_not_when_it_is_queued() -> None:
    started, release = FORK.Event(), FORK.Event()
    try:
        with PPE(1, FORK, tasks.install, ({"started": started, "release": release},)) as ex:
            busy = ex.submit(tasks.block_until_released, "busy")  # no limit
            assert started.wait(BLOCK_LIMIT)
            timed = ex.submit_with_timeout(LIMIT, tasks.square, 3)
            chunk = ex.imap(tasks.square, range(4), chunksize=4, task_timeout=LIMIT)
            done, _ = concurrent.futures.wait([timed], timeout=3 * LIMIT)
            assert not done, "a queued task must not time out"
            release.set()
            assert busy.result(BLOCK_LIMIT) == "busy"
            assert timed.result(BLOCK_LIMIT) == 9
            assert list(chunk) == [0, 1, 4, 9]
    finally:
        release.set()


@pytest.mark.timeout(30)
def test_clock_does_not_count_worker_startup() -> None:
    gate = SPAWN.Event()
    try:
        with PPE(1, SPAWN, worker=specs.GatedBuild(gate)) as ex:
            timed = ex.submit_with_timeout(LIMIT, tasks.square, 5)
            done, _ = concurrent.futures.wait([timed], timeout=2 * LIMIT)
            assert not done, "the worker is still building its object: nothing runs yet"
            gate.set()
            assert timed.result(BLOCK_LIMIT) == 25
    finally:
        gate.set()


@pytest.mark.timeout(30)
def test_items_chunked_or_queued_with_the_late_one_are_redispatched(tmp_path: Path) -> None:
    log = str(tmp_path / "runs.log")
    fn = functools.partial(tasks.record_and_hang_if, hang_on=2, log=log)
    with PPE(1, FORK) as ex:
        first_pid = ex.submit(tasks.pid_of).result(BLOCK_LIMIT)
        # two chunks of five: 3 and 4 share the late item's chunk, 5..9 wait behind it
        got = outcomes(ex, fn, range(10), chunksize=5, task_timeout=LIMIT)
    assert isinstance(got[2], mt.TaskTimeoutError)
    assert [g for i, g in enumerate(got) if i != 2] == [x * 2 for x in range(10) if x != 2]
    runs = [tuple(map(int, line.split())) for line in files.read_lines(log)]
    assert Tally(x for x, _ in runs) == Tally(range(10)), "each item ran exactly once"
    pids = dict(runs)
    assert [pids[x] for x in (0, 1, 2)] == [first_pid] * 3
    assert first_pid not in {pids[x] for x in range(3, 10)}


@pytest.mark.timeout(30)
def test_items_after_the_late_one_survive_a_worker_that_outlives_sigterm(
    tmp_path: Path,
) -> None:
    # The late task's SIGTERM handler raises SystemExit: the worker goes on with the chunk's
    # next items until SIGKILL; their results are dropped and they run again elsewhere.
    log = str(tmp_path / "runs.log")
    fn = functools.partial(tasks.exit_on_sigterm_then_hang_if, hang_on=2, log=log)
    with PPE(1, FORK) as ex:
        got = outcomes(ex, fn, range(6), chunksize=6, task_timeout=LIMIT)
        assert ex.submit(tasks.square, 3).result(BLOCK_LIMIT) == 9
    assert isinstance(got[2], mt.TaskTimeoutError)
    assert [g for i, g in enumerate(got) if i != 2] == [0, 2, 6, 8, 10]
    ran = Tally(int(line.split()[0]) for line in files.read_lines(log))
    assert set(ran) == set(range(6)) and ran[2] == 1


@pytest.mark.timeout(40)
@pytest.mark.parametrize(
    ("context", "total", "chunksize"),
    [(FORK, 200, None), (FORK, 60, 7), (SPAWN, 40, None), (FORKSERVER, 40, None)],
    ids=["fork-200-adaptive", "fork-60-chunks-of-7", "spawn-40-adaptive", "forkserver-40-adaptive"],
)
def test_imap_where_every_tenth_item_hangs(
    context: Any, total: int, chunksize: Optional[int]
) -> None:
    with PPE(2, context) as ex:
        got = outcomes(
            ex,
            tasks.hang_if,
            range(total),
            [5] * total,
            [10] * total,
            chunksize=chunksize,
            task_timeout=LIMIT,
        )
    assert len(got) == total
    late = [i for i, g in enumerate(got) if isinstance(g, mt.TaskTimeoutError)]
    assert late == list(range(5, total, 10))
    assert [g for i, g in enumerate(got) if i % 10 != 5] == [
        x * 2 for x in range(total) if x % 10 != 5
    ]


def test_timeout_does_not_break_a_pool_in_break_mode() -> None:
    with PPE(1, FORK, on_worker_crash="break") as ex:
        with pytest.raises(mt.TaskTimeoutError):
            ex.submit_with_timeout(LIMIT, tasks.hang_if, 1, 1).result(BLOCK_LIMIT)
        assert ex.submit(tasks.square, 3).result(BLOCK_LIMIT) == 9


_serials = itertools.count(1)


@mt.delayed_init
class Model:
    """A thread-pool worker object; every build gets a new serial."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.serial = next(_serials)
        self.thread = threading.current_thread().name

    def __call__(self, x: Any) -> Any:
        return x


def whoami(_: Any = None) -> tuple[Optional[int], str, int]:
    obj = mt.current_worker()
    return mt.worker_index(), threading.current_thread().name, obj.serial


def test_thread_task_fails_at_its_limit(prefix: str, release: threading.Event) -> None:
    record: dict[str, Any] = {}

    def stuck_task(x: int) -> int:
        record["started"] = time.monotonic()
        release.wait(BLOCK_LIMIT * 3)
        return x

    with STPE(1, prefix) as ex:
        fut = ex.submit_with_timeout(LIMIT, stuck_task, 42)
        with pytest.raises(mt.TaskTimeoutError) as info:
            fut.result(BLOCK_LIMIT)
        took = time.monotonic() - record["started"]
        assert LIMIT - 0.05 <= took <= LIMIT + BOUND, f"failed {took:.3f} s after it started"
        message = str(info.value)
        assert f"{LIMIT:g} s" in message and "worker 0" in message, message
        assert "stuck_task(42)" in message, message
        assert ex.submit(abs, -5).result(BLOCK_LIMIT) == 5


def test_thread_pool_keeps_its_size_with_a_fresh_object_in_the_same_index(
    prefix: str, release: threading.Event
) -> None:
    started = threading.Event()
    stuck: dict[str, Any] = {}

    def hang_here() -> None:
        stuck["who"] = whoami()
        stuck["thread"] = threading.current_thread()
        started.set()
        release.wait(BLOCK_LIMIT * 3)

    with STPE(2, prefix, worker=Model("m")) as ex:
        ex.wait_ready(BLOCK_LIMIT)
        before = sorted(run_on_every_worker(ex, 2, whoami))
        fut = ex.submit_with_timeout(LIMIT, hang_here)
        assert started.wait(BLOCK_LIMIT)
        with pytest.raises(mt.TaskTimeoutError):
            fut.result(BLOCK_LIMIT)
        after = sorted(run_on_every_worker(ex, 2, whoami))
        assert stuck["thread"].is_alive(), "the stuck thread is abandoned, not joined"
    index, name, serial = stuck["who"]
    assert [i for i, _, _ in after] == [0, 1]
    assert after[index][1] == name == f"{prefix}_{index}", "the replacement keeps the index"
    assert after[index][2] not in (serial, before[0][2], before[1][2]), "a freshly built object"
    assert after[1 - index] == before[1 - index]
    release.set()
    stuck["thread"].join(BLOCK_LIMIT)
    assert not stuck["thread"].is_alive()


def test_thread_stuck_tasks_late_result_is_discarded(
    prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The task is a C function blocked in C (the asynchronous stop cannot land inside it): it
    # returns its value after the timeout, and that value must not reach the future.
    inbox: queue.SimpleQueue[str] = queue.SimpleQueue()
    callbacks: list[Any] = []
    with caplog.at_level(logging.DEBUG, logger="concurrent.futures"), STPE(1, prefix) as ex:
        fut = ex.submit_with_timeout(LIMIT, inbox.get, True, BLOCK_LIMIT)
        fut.add_done_callback(callbacks.append)
        with pytest.raises(mt.TaskTimeoutError):
            fut.result(BLOCK_LIMIT)
        stuck = [t for t in threading.enumerate() if t.name == f"{prefix}_0"]
        inbox.put("late")  # the stuck call returns now
        replacement = ex.submit(threading.current_thread).result(BLOCK_LIMIT)
        for thread in stuck:
            if thread is not replacement:
                thread.join(BLOCK_LIMIT)
                assert not thread.is_alive()
        assert inbox.empty(), "the stuck call did return its value"
        assert isinstance(fut.exception(0), mt.TaskTimeoutError), "the late value was dropped"
        assert len(callbacks) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_thread_clock_starts_when_the_task_runs(prefix: str, release: threading.Event) -> None:
    started = threading.Event()

    def busy() -> str:
        started.set()
        release.wait(BLOCK_LIMIT)
        return "busy"

    with STPE(1, prefix) as ex:
        first = ex.submit(busy)
        assert started.wait(BLOCK_LIMIT)
        timed = ex.submit_with_timeout(LIMIT, abs, -3)
        done, _ = concurrent.futures.wait([timed], timeout=3 * LIMIT)
        assert not done, "a queued task must not time out"
        release.set()
        assert first.result(BLOCK_LIMIT) == "busy"
        assert timed.result(BLOCK_LIMIT) == 3


def test_thread_task_timeout_in_ctor_submit_imap_and_imap_unordered(
    prefix: str, release: threading.Event
) -> None:
    def maybe_hang(x: int) -> int:
        if x == 2:
            release.wait(BLOCK_LIMIT * 3)
        return x * 2

    def slow(x: int) -> int:
        time.sleep(2 * LIMIT)  # sleep-ok: deliberately longer than the default limit
        return x

    with STPE(2, prefix, task_timeout=LIMIT) as ex:
        with pytest.raises(mt.TaskTimeoutError):
            ex.submit(maybe_hang, 2).result(BLOCK_LIMIT)
        out: list[int] = []
        with pytest.raises(mt.TaskTimeoutError):
            out.extend(ex.imap(maybe_hang, range(5)))
        assert out == [0, 2]
        got = outcomes(ex, maybe_hang, range(5), task_timeout=LIMIT, ordered=False)
        assert sorted(g for g in got if isinstance(g, int)) == [0, 2, 6, 8]
        assert sum(isinstance(g, mt.TaskTimeoutError) for g in got) == 1
        assert list(ex.imap(slow, [1], task_timeout=None)) == [1]
        assert ex.submit_with_timeout(None, slow, 4).result(BLOCK_LIMIT) == 4
    with STPE(2, prefix) as ex:
        with pytest.raises(mt.TaskTimeoutError):
            list(ex.imap_unordered(maybe_hang, range(5), task_timeout=LIMIT))
        with pytest.raises(mt.TaskTimeoutError):
            list(ex.imap(maybe_hang, range(5), chunksize=5, task_timeout=LIMIT))


@pytest.mark.timeout(90)
def test_thread_watchdog_survives_a_task_ending_at_its_deadline() -> None:
    # A timed task whose end races the watchdog's expiry once leaked the watchdog's lock (the
    # async stop landed in Condition.__enter__); the pool then could be neither shut down nor
    # garbage-collected, so the race runs in a child interpreter that cannot hang this one.
    env = support.child_env()
    code = "from support import tasks; tasks.watchdog_race_main()"
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, timeout=80, capture_output=True, check=False
    )
    if done.returncode == tasks.RACE_NOT_EXERCISED:
        pytest.skip("the watchdog never won the race in 250 attempts")
    assert done.returncode == tasks.RACE_OK, (done.returncode, done.stderr.decode()[-2000:])


@pytest.mark.timeout(30)
def test_thread_imap_where_every_tenth_item_hangs(prefix: str, release: threading.Event) -> None:
    def hang_some(x: int) -> int:
        if x % 10 == 5:
            release.wait(BLOCK_LIMIT * 3)
        return x * 2

    with STPE(4, prefix) as ex:
        got = outcomes(ex, hang_some, range(200), chunksize=None, task_timeout=LIMIT)
        assert ex.submit(abs, -1).result(BLOCK_LIMIT) == 1
    late = [i for i, g in enumerate(got) if isinstance(g, mt.TaskTimeoutError)]
    assert late == list(range(5, 200, 10))
    assert [g for i, g in enumerate(got) if i % 10 != 5] == [
        x * 2 for x in range(200) if x % 10 != 5
    ]


# --- thread executor: the abandoned thread and its replacement ------------------------------------


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
    with STPE(1, prefix, worker=specs.LoggedModel("m")) as ex:
        index0, name0, serial0 = ex.submit(specs.logged_whoami).result(BLOCK_LIMIT)
        fut = ex.submit_with_timeout(LIMIT, hang, 1, release)
        with pytest.raises(mt.TaskTimeoutError):
            fut.result(BLOCK_LIMIT)
        index1, name1, serial1 = ex.submit(specs.logged_whoami).result(BLOCK_LIMIT)
    assert (index0, index1) == (0, 0)
    assert (name0, name1) == ("m", "m")
    assert serial1 != serial0, "the replacement must build a fresh instance from the spec"
    builds = specs.BUILD_EVENTS.of("build")
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

    with STPE(2, prefix, worker=specs.LoggedModel("m")) as ex:
        ex.wait_ready(BLOCK_LIMIT)
        stuck = ex.submit_with_timeout(LIMIT, hang_here)
        assert started.wait(BLOCK_LIMIT)
        # while one worker is stuck, the other serves new work
        others = [ex.submit(specs.logged_whoami) for _ in range(5)]
        assert all(f.result(BLOCK_LIMIT)[1] == "m" for f in others)
        assert not stuck.done()
        with pytest.raises(mt.TaskTimeoutError):
            stuck.result(BLOCK_LIMIT)
        # two tasks that can only finish together: both worker indices are live again
        seen = executors.run_on_every_worker(ex, 2, specs.logged_whoami)
    assert sorted(i for i, _, _ in seen) == [0, 1]
    assert len(specs.BUILD_EVENTS.of("build")) == 3


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


def test_thread_imap_task_timeout_fails_the_item_at_its_position(
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


# --- a timed-out task that forked a child holding the worker's pipes ------------------------------


@pytest.mark.timeout(40)
@pytest.mark.parametrize("kind", PROCESS_KINDS)
def test_worker_killed_after_a_timeout_is_replaced_though_its_child_holds_the_pipes(
    guard: Guard, kind: str, tmp_path: Path
) -> None:
    pid_file = str(tmp_path / "grandchild")
    ex = guard.make(kind, 1)
    try:
        forker = ex.submit_with_timeout(
            0.5, tasks.fork_child_then_hang, pid_file, guard.release_file
        )
        assert isinstance(forker.exception(FAULT_LIMIT), mt.TaskTimeoutError)
        assert files.wait_for_lines(pid_file, 1)
        started = time.monotonic()
        # the child lives on (up to 30 s, until released), yet the replacement starts now
        assert ex.submit(tasks.square, 3).result(FAULT_LIMIT) == 9
        assert time.monotonic() - started < FAULT_LIMIT
        assert processes.alive(int(files.read_lines(pid_file)[0])), "the test needs the child alive"
        returned, _ = returns_within(ex.shutdown, FAULT_LIMIT)
        assert returned, "shutdown() waited for the killed worker's child"
    finally:
        guard.let_go()
        processes.wait_gone([int(pid) for pid in files.read_lines(pid_file)], FAULT_LIMIT)
