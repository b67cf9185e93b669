"""Worker lifecycle (issue 16): what happens to a worker, and what it started, when it stops.

- A worker retires after ``max_tasks_per_child`` tasks (or ``max_memory_per_child``) and its
  slot is respawned with the same spec; retired objects are closed.
- Nothing a task starts outlives its worker: a subprocess started by a task is gone within
  :data:`GONE_LIMIT` seconds of the worker being stopped (overrun, ``cancel_running``,
  ``terminate()``, ``kill_workers()``, a crash, shutdown, or the parent being SIGKILLed).

Each case runs under fork, spawn and forkserver.  Tasks report through files (see
:mod:`support.tasks`); every wait is bounded by a deadline.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections import Counter as Tally
from pathlib import Path
from typing import Any, Iterator

import pytest

import mtasklite as mt
import support
from support import files, processes, specs, tasks

BLOCK_LIMIT = 10.0

pytestmark = pytest.mark.timeout(60)

METHODS = ["fork", "spawn", "forkserver"]

SCRIPTS = support.SCRIPTS

#: how long after a worker is stopped what its task started may still be alive
GONE_LIMIT = 2.0

#: how long a worker may take to start and run a task far enough (spawn on a busy machine)
START_LIMIT = 30.0


class Sleepers:
    """Pids of the subprocesses tasks started, killed at teardown whatever happened."""

    def __init__(self, tmp_path: Path):
        self.pid_file = str(tmp_path / "sleeper.pid")
        self.pids: set[int] = set()

    def started(self, alive: bool = True) -> int:
        """The pid the task wrote; ``alive``: check it still runs."""
        pid = files.read_pid(self.pid_file, START_LIMIT)
        self.pids.add(pid)
        assert not alive or processes.alive(pid)
        return pid

    def assert_gone(self, pid: int, what: str) -> None:
        left = processes.wait_gone([pid], GONE_LIMIT)
        assert not left, f"the task's subprocess outlived its worker by {GONE_LIMIT} s ({what})"


@pytest.fixture
def sleepers(tmp_path: Path) -> Iterator[Sleepers]:
    s = Sleepers(tmp_path)
    yield s
    processes.kill_quietly(s.pids)


def pool(method: str, **kwargs: Any) -> mt.StatefulProcessPoolExecutor:
    return mt.StatefulProcessPoolExecutor(1, multiprocessing.get_context(method), **kwargs)


PPE = mt.StatefulProcessPoolExecutor
FORK = multiprocessing.get_context("fork")
SPAWN = multiprocessing.get_context("spawn")


# --- nothing a task starts outlives its worker -------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_an_overrun_takes_the_tasks_subprocess_down(method: str, sleepers: Sleepers) -> None:
    with pool(method, task_timeout=1.0) as ex:
        future = ex.submit(tasks.sleeper_then, sleepers.pid_file, "hang")
        pid = sleepers.started()
        with pytest.raises(mt.TaskTimeoutError):
            future.result(START_LIMIT)
        sleepers.assert_gone(pid, "overrun")
        assert ex.submit(tasks.square, 3).result(START_LIMIT) == 9, "the slot was replaced"


@pytest.mark.parametrize("method", METHODS)
def test_cancel_running_takes_the_tasks_subprocess_down(method: str, sleepers: Sleepers) -> None:
    with pool(method, cancel_running=True) as ex:
        future = ex.submit(tasks.sleeper_then, sleepers.pid_file, "hang")
        pid = sleepers.started()
        assert future.cancel()
        sleepers.assert_gone(pid, "cancelled")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("how", ["terminate", "terminate_workers", "kill_workers"])
def test_stopping_the_pool_takes_the_tasks_subprocess_down(
    method: str, how: str, sleepers: Sleepers
) -> None:
    ex = pool(method)
    future = ex.submit(tasks.sleeper_then, sleepers.pid_file, "hang")
    pid = sleepers.started()
    getattr(ex, how)()
    sleepers.assert_gone(pid, how)
    with pytest.raises(cf.process.BrokenProcessPool):
        future.result(START_LIMIT)
    ex.shutdown()


@pytest.mark.parametrize("method", METHODS)
def test_a_crash_takes_the_tasks_subprocess_down(method: str, sleepers: Sleepers) -> None:
    with pool(method) as ex:
        future = ex.submit(tasks.sleeper_then, sleepers.pid_file, "crash")
        with pytest.raises(mt.WorkerCrashedError):
            future.result(START_LIMIT)
        pid = sleepers.started(alive=False)  # the crash came right after it started
        sleepers.assert_gone(pid, "crash")


@pytest.mark.parametrize("method", METHODS)
def test_shutdown_takes_a_left_running_subprocess_down(method: str, sleepers: Sleepers) -> None:
    ex = pool(method)
    pid = ex.submit(tasks.sleeper_then, sleepers.pid_file, "return").result(START_LIMIT)
    sleepers.pids.add(pid)
    assert processes.alive(pid), "the subprocess runs on while its worker lives"
    ex.shutdown(wait=True)
    sleepers.assert_gone(pid, "shutdown")


@pytest.mark.parametrize("method", METHODS)
def test_a_killed_parent_takes_the_tasks_subprocess_down(
    method: str, sleepers: Sleepers, tmp_path: Path
) -> None:
    with open(tmp_path / "stderr", "wb") as stderr:
        parent = subprocess.Popen(
            [
                sys.executable,
                str(SCRIPTS / "parent_killed_with_child.py"),
                method,
                sleepers.pid_file,
            ],
            stdout=subprocess.PIPE,
            stderr=stderr,
            start_new_session=True,
        )
        try:
            assert parent.stdout is not None
            line = parent.stdout.readline().decode()  # bounded by the test's timeout
            assert line.startswith("READY"), (tmp_path / "stderr").read_text()
            workers = {int(p) for p in line.split()[1:]}
            pid = sleepers.started()
            parent.kill()
            parent.wait()
            sleepers.assert_gone(pid, "parent SIGKILLed")
            assert not processes.wait_gone(workers, GONE_LIMIT)
        finally:
            if parent.poll() is None:
                parent.kill()
                parent.wait()
            assert parent.stdout is not None
            parent.stdout.close()


# --- graceful stop -------------------------------------------------------------------------------


def wait_for_file(path: Path, timeout: float) -> bool:
    return files.wait_for(path.exists, timeout)


@pytest.mark.parametrize("method", METHODS)
def test_an_overrun_task_unwinds_its_finally_block(method: str, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    with pool(method, task_timeout=1.0) as ex:
        future = ex.submit(tasks.hang_with_finally, str(tmp_path / "pid"), str(marker))
        with pytest.raises(mt.TaskTimeoutError):
            future.result(START_LIMIT)
        assert wait_for_file(marker, GONE_LIMIT), "the finally block did not run"
        assert ex.submit(tasks.square, 4).result(START_LIMIT) == 16


@pytest.mark.parametrize("method", METHODS)
def test_terminate_lets_running_tasks_unwind(method: str, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    ex = pool(method)
    future = ex.submit(tasks.hang_with_finally, str(tmp_path / "pid"), str(marker))
    files.read_pid(str(tmp_path / "pid"), START_LIMIT)
    ex.terminate()
    assert marker.exists(), "terminate() returned before the task's finally block ran"
    with pytest.raises(cf.process.BrokenProcessPool):
        future.result(0)


@pytest.mark.parametrize("method", METHODS)
def test_a_task_that_ignores_the_stop_is_killed_after_the_grace(
    method: str, tmp_path: Path
) -> None:
    grace = 2.0
    log = tmp_path / "log"
    with pool(method, task_timeout=0.5, stop_grace=grace) as ex:
        future = ex.submit(tasks.hang_ignoring_stops, str(tmp_path / "pid"), str(log))
        worker = files.read_pid(str(tmp_path / "pid"), START_LIMIT)
        with pytest.raises(mt.TaskTimeoutError):
            future.result(START_LIMIT)  # at the limit: the grace delays only the replacement
        failed = time.monotonic()
        assert files.wait_for(lambda: files.read_lines(log) == ["WorkerStopping"], GONE_LIMIT)
        left = processes.wait_gone([worker], grace + GONE_LIMIT)
        assert not left, "the worker outlived its grace period"
        assert time.monotonic() - failed > grace / 4, "SIGKILL came before the grace"
        assert ex.submit(tasks.square, 5).result(START_LIMIT) == 25, "the slot was replaced"


@pytest.mark.parametrize(
    ("grace", "error"),
    [(-1, ValueError), (float("nan"), ValueError), (float("inf"), ValueError), ("1", TypeError)],
)
def test_stop_grace_must_be_a_finite_number_of_seconds(grace: Any, error: type) -> None:
    with pytest.raises(error, match="stop_grace"):
        mt.StatefulProcessPoolExecutor(1, stop_grace=grace)


# --- teardown ----------------------------------------------------------------------------------


def closes(log: Path) -> list[int]:
    return sorted(int(line.split()[1]) for line in files.read_lines(str(log)))


@pytest.mark.parametrize("method", METHODS)
def test_shutdown_closes_each_workers_object_once(method: str, tmp_path: Path) -> None:
    log = tmp_path / "closes"
    ctx = multiprocessing.get_context(method)
    with mt.StatefulProcessPoolExecutor(2, ctx, worker=specs.Closable(str(log))) as ex:
        ex.wait_ready(START_LIMIT)
        pids = set(ex._processes)
        assert set(ex.map(tasks.worker_pid, range(20))) <= pids
        assert closes(log) == [], "nothing is closed while the pool runs"
    assert closes(log) == sorted(pids)


@pytest.mark.parametrize("method", ["spawn", "forkserver"])  # max_tasks_per_child: no fork
def test_recycling_by_task_count_closes_each_retired_object(method: str, tmp_path: Path) -> None:
    log = tmp_path / "closes"
    ctx = multiprocessing.get_context(method)
    with mt.StatefulProcessPoolExecutor(
        1, ctx, worker=specs.Closable(str(log)), max_tasks_per_child=1
    ) as ex:
        pids = [ex.submit(tasks.worker_pid, i).result(START_LIMIT) for i in range(3)]
    assert len(set(pids)) == 3
    assert closes(log) == sorted(pids), "each retired process closed its object, once"


@pytest.mark.parametrize("method", METHODS)
def test_a_graceful_stop_closes_the_object_and_a_crash_cannot(method: str, tmp_path: Path) -> None:
    log = tmp_path / "closes"
    ctx = multiprocessing.get_context(method)
    with mt.StatefulProcessPoolExecutor(
        1, ctx, worker=specs.Closable(str(log)), task_timeout=1.0
    ) as ex:
        stopped = ex.submit(tasks.worker_pid_then, 0, "hang")
        with pytest.raises(mt.TaskTimeoutError):
            stopped.result(START_LIMIT)
        crashed = ex.submit_with_timeout(None, tasks.worker_pid_then, 1, "crash")
        with pytest.raises(mt.WorkerCrashedError):
            crashed.result(START_LIMIT)
        assert files.wait_for(lambda: len(files.read_lines(str(log))) == 1, GONE_LIMIT)
        last = ex.submit(tasks.worker_pid, 2).result(START_LIMIT)
    assert len(closes(log)) == 2, "the stopped worker and the last one closed; the crash not"
    assert last in closes(log)


@pytest.mark.parametrize("method", METHODS)
def test_an_exception_in_close_is_logged_not_raised(method: str, tmp_path: Path) -> None:
    log, records = tmp_path / "closes", tmp_path / "records"
    ctx = multiprocessing.get_context(method)
    with mt.StatefulProcessPoolExecutor(
        1, ctx, tasks.log_to, (str(records),), worker=specs.Closable(str(log), fail=True)
    ) as ex:
        assert ex.submit(tasks.worker_pid, 0).result(START_LIMIT) > 0
    assert len(closes(log)) == 1
    assert "RuntimeError: close failed" in records.read_text()


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_terminate_while_workers_close_lets_close_finish_quietly(
    method: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """``terminate()`` after ``shutdown(wait=False)``, as a cleanup path might call it: a
    worker already closing its object has no task to unwind; close() finishes within the
    grace and nothing is printed (no WorkerStopping traceback, no failed-close log)."""
    log, gate = tmp_path / "closes", tmp_path / "gate"
    ex = pool(method, worker=specs.GatedClose(str(log), str(gate)), stop_grace=START_LIMIT)
    pid = ex.submit(tasks.worker_pid, 0).result(START_LIMIT)
    ex.shutdown(wait=False)
    assert files.wait_for(lambda: files.read_lines(log) == [f"closing {pid}"], START_LIMIT)
    ex.terminate(wait=False)
    assert files.wait_for(lambda: not processes.signal_pending(pid, signal.SIGTERM), BLOCK_LIMIT)
    gate.touch()  # after the SIGTERM reached the worker, which is still inside close()
    ex.shutdown(wait=True)
    assert files.read_lines(log) == [f"closing {pid}", f"closed {pid}"]
    err = capfd.readouterr().err
    assert "Traceback" not in err and "failed" not in err, err


def test_thread_pool_shutdown_closes_each_threads_object_once(tmp_path: Path) -> None:
    log = tmp_path / "closes"
    with mt.StatefulThreadPoolExecutor(3, worker=specs.Closable(str(log))) as ex:
        ex.wait_ready(START_LIMIT)
        assert list(ex.map(ex.worker, range(9))) == [os.getpid()] * 9
        assert files.read_lines(str(log)) == []
    assert files.read_lines(str(log)) == [f"closed {os.getpid()}"] * 3


# --- max_memory_per_child ----------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_a_worker_above_its_memory_limit_is_replaced_after_its_task(
    method: str, tmp_path: Path
) -> None:
    log = tmp_path / "closes"
    ctx = multiprocessing.get_context(method)
    with mt.StatefulProcessPoolExecutor(1, ctx, worker=specs.Closable(str(log))) as probe:
        start = probe.submit(tasks.resident).result(START_LIMIT)
    limit = start + (48 << 20)
    with mt.StatefulProcessPoolExecutor(
        1, ctx, worker=specs.Closable(str(log)), max_memory_per_child=limit
    ) as ex:
        first = ex.submit(tasks.worker_pid, 0).result(START_LIMIT)
        assert ex.submit(tasks.worker_pid, 1).result(START_LIMIT) == first, "under the limit"
        leaker = ex.submit(tasks.hold_memory, 96).result(START_LIMIT)  # returns normally
        assert leaker == first
        after = ex.submit(tasks.worker_pid, 2).result(START_LIMIT)
        assert after != first, "the worker above the limit was replaced"
        assert processes.wait_gone([first], GONE_LIMIT) == set()
    assert first in closes(log), "the retired worker closed its object (a graceful retire)"


@pytest.mark.parametrize("method", METHODS)
def test_imap_chunks_all_return_while_workers_recycle_by_memory(method: str) -> None:
    ctx = multiprocessing.get_context(method)
    with mt.StatefulProcessPoolExecutor(2, ctx, max_memory_per_child=1) as ex:  # always above
        assert list(ex.imap(tasks.square, range(200))) == [x * x for x in range(200)]
        pids = {ex.submit(tasks.pid_of).result(START_LIMIT) for _ in range(3)}
    assert len(pids) == 3, "every task ran in a fresh worker"


@pytest.mark.parametrize(("limit", "error"), [(0, ValueError), (-5, ValueError), (1.5, TypeError)])
def test_max_memory_per_child_must_be_a_positive_number_of_bytes(limit: Any, error: type) -> None:
    with pytest.raises(error, match="max_memory_per_child"):
        mt.StatefulProcessPoolExecutor(1, max_memory_per_child=limit)


# --- worker_stats() ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_worker_stats_count_what_each_slot_went_through(method: str, tmp_path: Path) -> None:
    with pool(method) as ex:
        assert [s.index for s in ex.worker_stats()] == [0]
        assert ex.worker_stats()[0].pid is None, "no process before the first task"
        assert [ex.submit(tasks.square, x).result(START_LIMIT) for x in range(5)] == [
            x * x for x in range(5)
        ]
        failing = [ex.submit(tasks.fail_on, x, x) for x in range(2)]
        assert all(isinstance(f.exception(START_LIMIT), ValueError) for f in failing)
        late = ex.submit_with_timeout(
            0.5, tasks.hang_with_finally, str(tmp_path / "pid"), str(tmp_path / "m")
        )
        assert isinstance(late.exception(START_LIMIT), mt.TaskTimeoutError)
        crashed = ex.submit(tasks.crash_on, 0, 0, "sigkill")
        assert isinstance(crashed.exception(START_LIMIT), mt.WorkerCrashedError)
        pid = ex.submit(tasks.pid_of).result(START_LIMIT)
        (stats,) = ex.worker_stats()
    assert stats.index == 0 and stats.pid == pid
    assert stats.tasks_completed == 8  # 5 squares, 2 failures, the last pid_of
    assert stats.failures == 2
    assert stats.timeouts == 1
    assert stats.crashes == 1
    assert stats.restarts == 2  # after the timeout and after the crash
    assert stats.busy_seconds > 0
    assert stats.resident_bytes is not None and stats.resident_bytes > 1 << 20


# --- pqdm and Pool -------------------------------------------------------------------------------


def test_pqdm_passes_the_lifecycle_options_to_the_process_pool() -> None:
    from mtasklite.processes import pqdm

    pids = list(pqdm(range(6), tasks.pid_of, n_jobs=2, chunk_size=1, max_memory_per_child=1,
                     disable=True))  # fmt: skip
    assert len(set(pids)) == 6, "every item ran in a fresh worker: the limit reached the pool"
    with mt.Pool(tasks.square, 2, stop_grace=0.25, max_memory_per_child=1 << 40) as pool_:
        assert list(pool_(range(4))) == [0, 1, 4, 9]
        config = pool_._executor._dispatcher.config  # type: ignore[union-attr]
        assert (config.stop_grace, config.max_memory) == (0.25, 1 << 40)


@pytest.mark.parametrize("where", ["threads", "dask"])
def test_pool_refuses_process_options_where_they_do_not_apply(where: str) -> None:
    kwargs: dict[str, Any] = {"use_threads": True} if where == "threads" else {"client": object()}
    with pytest.raises(ValueError, match="stop_grace applies to worker processes"):
        mt.Pool(tasks.square, 2, stop_grace=1.0, **kwargs)


@pytest.mark.parametrize("method", ["fork", "spawn"])
@pytest.mark.parametrize("how", ["shutdown", "recycling"])
def test_a_close_that_hangs_is_killed_after_the_grace(
    method: str, how: str, tmp_path: Path
) -> None:
    log, grace = str(tmp_path / "closes"), 0.5
    recycle = {"max_memory_per_child": 1} if how == "recycling" else {}
    never = str(tmp_path / "never-opened")
    ex = pool(method, worker=specs.GatedClose(log, never), stop_grace=grace, **recycle)
    pid = ex.submit(tasks.worker_pid, 0).result(START_LIMIT)
    if how == "recycling":
        assert ex.submit(tasks.worker_pid, 1).result(START_LIMIT) != pid
    started = time.monotonic()
    ex.shutdown(wait=True)
    assert time.monotonic() - started < grace + GONE_LIMIT + (1.0 if how == "recycling" else 0)
    assert f"closing {pid}" in files.read_lines(log), "close() ran"
    assert not processes.wait_gone([pid], GONE_LIMIT)


# --- max_tasks_per_child --------------------------------------------------------------------------


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
