"""What CPython 3.14's and 3.15's new ``test_concurrent_futures`` tests check, in our words, on
every Python: ``map(buffersize=)``, falsey exceptions, ``terminate_workers()`` /
``kill_workers()``, one exception instance per failed future, the cause naming a dead
worker, ``max_tasks_per_child`` with queued work, and what pools must not keep alive.

Where our pool deliberately differs from the stdlib's (a dead worker fails only its own task),
the test says what we guarantee instead.
"""

from __future__ import annotations

import gc
import itertools
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import traceback
import weakref
from concurrent.futures import Future, as_completed
from concurrent.futures.process import BrokenProcessPool, _RemoteTraceback
from operator import add
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

import mtasklite as mt
import support
from mtasklite._futures import TaskFuture
from mtasklite._procpool import groups
from mtasklite.errors import abrupt_exit_cause
from support import files, processes, tasks
from support.executors import new_executor

pytestmark = pytest.mark.timeout(60)

LIMIT = 20.0  # bound for any single wait here (never reached when the code works)
PPE = mt.StatefulProcessPoolExecutor
TPE = mt.StatefulThreadPoolExecutor
FORCE_OPERATIONS = [("terminate_workers", signal.SIGTERM), ("kill_workers", signal.SIGKILL)]
#: the operation each method asks ``_force_shutdown`` for (the stdlib's names, 3.14)
OPERATION = {"terminate_workers": "terminate", "kill_workers": "kill"}


def new_pool_pids(before: set[int]) -> set[int]:
    return {
        pid
        for pid, state in processes.child_processes().items()
        if pid not in before and state != "Z"
    }


# --- map(buffersize=) (test_map_buffersize_*) ------------------------------------------------


@pytest.mark.parametrize("kind", ["threads", "fork"])
def test_buffersize_checks_are_314s_for_map_and_imap(kind: str) -> None:
    with new_executor(kind) as ex:
        for method in (ex.map, ex.imap, ex.imap_unordered):
            for bad in ("foo", 2.0):
                with pytest.raises(TypeError, match="buffersize must be an integer or None"):
                    method(str, range(4), buffersize=bad)
            for bad in (0, -1):
                with pytest.raises(ValueError, match=r"buffersize must be None or > 0"):
                    method(str, range(4), buffersize=bad)
        assert list(ex.map(str, range(3))) == ["0", "1", "2"]  # nothing was left behind


@pytest.mark.parametrize("kind", ["threads", "fork", "forkserver"])
def test_buffersize_results_on_finite_infinite_empty_and_no_input(kind: str) -> None:
    with new_executor(kind) as ex:
        for size in (1, 2, 4, 8):
            assert list(ex.map(str, range(4), buffersize=size)) == ["0", "1", "2", "3"]
            assert list(ex.map(add, range(4), range(4), buffersize=size)) == [0, 2, 4, 6]
        one = ex.map(str, itertools.count(), buffersize=2)
        assert [next(one) for _ in range(3)] == ["0", "1", "2"]
        two = ex.map(add, itertools.count(), itertools.count(), buffersize=2)
        assert [next(two) for _ in range(3)] == [0, 2, 4]
        one.close()
        two.close()
        assert next(ex.map(str, [], buffersize=2), None) is None
        assert next(ex.map(str, buffersize=2), None) is None
        assert list(ex.map(str)) == []  # map(fn) alone: no calls, no error, as the stdlib


@pytest.mark.parametrize("kind", ["threads", "fork"])
def test_buffersize_reads_only_that_many_items_ahead(kind: str) -> None:
    ex = new_executor(kind)
    ints = iter(range(4))
    ex.map(str, ints, buffersize=2)
    ex.shutdown(wait=True)
    assert next(ints) == 2, "map read more than buffersize items before any was consumed"


# --- falsey exceptions (test_swallows_falsey_exceptions) -------------------------------------


@pytest.mark.parametrize("kind", ["threads", "fork"])
def test_falsey_exceptions_are_raised_by_result_and_map(kind: str) -> None:
    with new_executor(kind) as ex:
        for exc_type, message in (
            (tasks.FalseyBoolError, "boolbool"),
            (tasks.FalseyLenError, "lenlen"),
        ):
            with pytest.raises(exc_type, match=message):
                ex.submit(tasks.raiser, exc_type, message).result(LIMIT)
            with pytest.raises(exc_type, match=message):
                list(ex.map(tasks.raiser, [exc_type], [message]))
            with pytest.raises(exc_type, match=message):
                list(ex.imap(tasks.raiser, [exc_type] * 3, [message] * 3, chunksize=2))


def test_task_future_raises_a_falsey_exception_and_returns_a_falsey_result() -> None:
    failed: TaskFuture[Any] = TaskFuture()
    failed.set_exception(tasks.FalseyBoolError("quiet"))
    with pytest.raises(tasks.FalseyBoolError, match="quiet"):
        failed.result(0)
    for value in (None, 0, "", []):
        done: TaskFuture[Any] = TaskFuture()
        done.set_result(value)
        assert done.result(0) == value


@pytest.mark.skipif(sys.version_info >= (3, 14), reason="3.14 fixed the stdlib Future")
def test_stdlib_future_before_314_swallows_falsey_exceptions() -> None:
    # Why TaskFuture exists: the stdlib Future our futures build on returns None here.
    plain: Future[Any] = Future()
    plain.set_exception(tasks.FalseyBoolError("quiet"))
    assert plain.result(0) is None


# --- terminate_workers() / kill_workers() (test_terminate_workers, test_kill_workers,
#     test_force_shutdown_workers*) ------------------------------------------------------------


@pytest.mark.parametrize(("name", "signum"), FORCE_OPERATIONS)
def test_force_methods_go_through_force_shutdown(name: str, signum: int) -> None:
    ex = PPE(1, multiprocessing.get_context("fork"))
    with mock.patch.object(ex, "_force_shutdown") as force:
        getattr(ex, name)()
    ex.shutdown()
    force.assert_called_once_with(operation=OPERATION[name])


def test_force_shutdown_refuses_an_unknown_operation() -> None:
    with PPE(1, multiprocessing.get_context("fork")) as ex:
        with pytest.raises(ValueError, match="Unsupported operation: 'invalid operation'"):
            ex._force_shutdown(operation="invalid operation")
        assert ex.submit(abs, -2).result(LIMIT) == 2  # a refused call changed nothing


@pytest.mark.parametrize(("name", "signum"), FORCE_OPERATIONS)
@pytest.mark.parametrize("kind", ["fork", "forkserver"])
def test_force_methods_stop_running_work_cancel_queued_work_and_respawn_nothing(
    kind: str, name: str, signum: int, tmp_path: Path
) -> None:
    log, release = str(tmp_path / "log"), str(tmp_path / "release")
    before = set(processes.child_processes())
    ex = PPE(1, multiprocessing.get_context(kind))
    running = ex.submit(tasks.report_then_wait, "started", log, release)
    queued = [ex.submit(files.append_line, log, f"queued {i}") for i in range(3)]
    assert files.wait_for(lambda: len(files.read_lines(log)) == 1, LIMIT)
    (worker,) = ex._processes.values()
    # the worker's whole process group gets the operation's signal (see _procpool.groups)
    calls = mock.Mock(wraps=groups.signal_worker)
    with mock.patch.object(groups, "signal_worker", calls):
        getattr(ex, name)()
    # Read the exit status only once the dispatcher has reaped the worker and exited: two
    # threads polling one process race in the stdlib (with forkserver the loser of the
    # status read records 255, and may overwrite the winner's code).
    dispatcher = ex._executor_manager_thread
    assert dispatcher is not None
    dispatcher.join(LIMIT)
    assert not dispatcher.is_alive()
    calls.assert_any_call(worker, signum)
    assert worker.exitcode == -signum
    with pytest.raises(BrokenProcessPool) as info:
        running.result(LIMIT)
    assert not isinstance(info.value, mt.WorkerCrashedError), "a requested stop is no crash"
    assert all(f.cancelled() for f in queued)
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(abs, 1)
    Path(release).touch()
    ex.shutdown()
    assert files.read_lines(log) == [f"started {worker.pid}"]  # nothing else ever ran
    assert new_pool_pids(before) == set(), "a worker was respawned"


@pytest.mark.parametrize(("name", "signum"), FORCE_OPERATIONS)
def test_force_methods_after_a_crash_do_not_raise(name: str, signum: int) -> None:
    ex = PPE(1, multiprocessing.get_context("fork"))
    with pytest.raises(BrokenProcessPool):
        ex.submit(os._exit, 1).result(LIMIT)
    getattr(ex, name)()
    ex.shutdown()


@pytest.mark.parametrize(("name", "signum"), FORCE_OPERATIONS)
def test_force_methods_before_any_worker_started_signal_nothing(name: str, signum: int) -> None:
    ctx = multiprocessing.get_context("forkserver")
    with mock.patch.object(ctx, "Process") as process_class, PPE(1, ctx) as ex:
        getattr(ex, name)()
        with pytest.raises(RuntimeError):
            ex.submit(abs, 1)
    process_class.assert_not_called()


@pytest.mark.parametrize(("name", "signum"), FORCE_OPERATIONS)
def test_force_methods_leave_the_pool_unusable(name: str, signum: int) -> None:
    with PPE(1, multiprocessing.get_context("fork")) as ex:
        assert ex.submit(abs, -3).result(LIMIT) == 3
        (worker,) = ex._processes.values()
        getattr(ex, name)()
        with pytest.raises(RuntimeError):
            ex.submit(abs, 0)
        with pytest.raises(RuntimeError):
            ex.map(abs, [1])
        worker.join(LIMIT)
        assert files.wait_for(lambda: not worker.is_alive(), LIMIT)  # see the note above


# --- one exception per failed future (test_broken_process_pool_traceback) --------------------


def _frames_here(error: BaseException) -> int:
    return sum(1 for f in traceback.extract_tb(error.__traceback__) if f.filename == __file__)


@pytest.mark.parametrize("kind", ["fork", "forkserver"])
def test_break_mode_gives_every_failed_future_its_own_exception(kind: str, tmp_path: Path) -> None:
    log, release = str(tmp_path / "log"), str(tmp_path / "release")
    with PPE(3, multiprocessing.get_context(kind), on_worker_crash="break") as ex:
        futures = [ex.submit(tasks.report_then_wait, i, log, release) for i in range(3)]
        assert files.wait_for(lambda: len(files.read_lines(log)) == 3, LIMIT)
        next(iter(ex._processes.values())).terminate()
        errors = []
        for future in futures:
            try:
                future.result(LIMIT)
            except BrokenProcessPool as exc:
                errors.append(exc)
        assert len(errors) == 3 and len({id(e) for e in errors}) == 3
        assert [_frames_here(e) for e in errors] == [1, 1, 1]  # a shared one would pile up
        Path(release).touch()


@pytest.mark.parametrize("kind", ["fork", "forkserver"])
def test_isolate_mode_fails_only_the_dead_workers_task(kind: str, tmp_path: Path) -> None:
    # Why CPython's test_broken_process_pool_traceback would wait for ever on our default pool:
    # the two tasks whose workers live on keep running until their event is set.
    log, release = str(tmp_path / "log"), str(tmp_path / "release")
    with PPE(3, multiprocessing.get_context(kind)) as ex:
        futures = [ex.submit(tasks.report_then_wait, i, log, release) for i in range(3)]
        assert files.wait_for(lambda: len(files.read_lines(log)) == 3, LIMIT)
        victim = int(files.read_lines(log)[0].split()[1])
        os.kill(victim, signal.SIGTERM)
        done = next(as_completed(futures, timeout=LIMIT))
        assert isinstance(done.exception(), mt.WorkerCrashedError)
        assert sum(f.done() for f in futures) == 1
        Path(release).touch()
        assert sorted(f.result(LIMIT) for f in futures if f is not done) == sorted(
            {0, 1, 2} - {int(files.read_lines(log)[0].split()[0])}
        )


# --- the cause of a worker death (test_traceback_when_child_process_terminates_abruptly) -----


def test_abrupt_exit_cause_reads_as_315s() -> None:
    cause = abrupt_exit_cause(4242, 99)
    assert isinstance(cause, _RemoteTraceback)
    assert "Process 4242 terminated abruptly with exit code 99" in cause.tb
    assert "exit code -9" in str(abrupt_exit_cause(1, -9))


@pytest.mark.parametrize("mode", ["isolate", "break"])
@pytest.mark.parametrize("kind", ["fork", "forkserver"])
def test_dead_worker_error_names_the_process_and_exit_code(kind: str, mode: str) -> None:
    with (
        PPE(1, multiprocessing.get_context(kind), on_worker_crash=mode) as ex,
        pytest.raises(BrokenProcessPool) as info,
    ):
        ex.submit(os._exit, 99).result(LIMIT)
    cause = info.value.__cause__
    assert isinstance(cause, _RemoteTraceback)
    assert "terminated abruptly with exit code 99" in cause.tb
    if mode == "isolate":
        assert f"Process {info.value.pid} terminated" in cause.tb
        again = pickle.loads(pickle.dumps(info.value))
        assert again.__cause__ is not None and str(again.__cause__) == str(cause)


# --- max_tasks_per_child with queued work (gh-115634, gh-119592, gh-152967 and the
#     forced-stop / failed-respawn tests) -----------------------------------------------------


@pytest.mark.timeout(90)
@pytest.mark.parametrize(("workers", "max_tasks", "count"), [(1, 2, 6), (2, 2, 8)])
def test_queued_work_outlives_retiring_workers(workers: int, max_tasks: int, count: int) -> None:
    ctx = multiprocessing.get_context("forkserver")
    with PPE(workers, ctx, max_tasks_per_child=max_tasks) as ex:
        futures = [ex.submit(tasks.square, i) for i in range(count)]
        assert [f.result(LIMIT) for f in futures] == [i * i for i in range(count)]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("drop_executor", [False, True])
def test_shutdown_without_wait_or_a_dropped_executor_still_resolves_every_future(
    drop_executor: bool, tmp_path: Path
) -> None:
    # gh-119592 / gh-152967: a worker retiring after shutdown(wait=False), or after the executor
    # was collected, must not strand the queued futures.  Our dispatcher respawns without the
    # executor object, so they run (CPython 3.15 fails them once the executor is collected).
    log, release = str(tmp_path / "log"), str(tmp_path / "release")
    ex = PPE(1, multiprocessing.get_context("forkserver"), max_tasks_per_child=1)
    futures = [ex.submit(tasks.report_then_wait, i, log, release) for i in range(3)]
    assert files.wait_for(lambda: len(files.read_lines(log)) == 1, LIMIT)
    ex.shutdown(wait=False)
    if drop_executor:
        collected = weakref.ref(ex)
        del ex
        gc.collect()
        assert collected() is None
    Path(release).touch()
    assert [f.result(LIMIT) for f in futures] == [0, 1, 2]
    assert len({line.split()[1] for line in files.read_lines(log)}) == 3  # one worker per task


@pytest.mark.timeout(90)
def test_forced_stop_while_a_worker_retires_runs_nothing_more(tmp_path: Path) -> None:
    log, release = str(tmp_path / "log"), str(tmp_path / "release")
    before = set(processes.child_processes())
    ex = PPE(1, multiprocessing.get_context("forkserver"), max_tasks_per_child=1)
    futures = [ex.submit(tasks.report_then_wait, i, log, release) for i in range(3)]
    assert files.wait_for(lambda: len(files.read_lines(log)) == 1, LIMIT)
    ex.kill_workers()
    with pytest.raises(BrokenProcessPool):
        futures[0].result(LIMIT)
    assert all(f.cancelled() for f in futures[1:])
    ex.shutdown()
    assert len(files.read_lines(log)) == 1 and new_pool_pids(before) == set()
    Path(release).touch()


@pytest.mark.timeout(90)
def test_a_worker_that_cannot_be_replaced_breaks_the_pool(tmp_path: Path) -> None:
    log, release = str(tmp_path / "log"), str(tmp_path / "release")
    ctx = multiprocessing.get_context("forkserver")
    ex = PPE(1, ctx, max_tasks_per_child=1)
    futures = [ex.submit(tasks.report_then_wait, i, log, release) for i in range(3)]
    assert files.wait_for(lambda: len(files.read_lines(log)) == 1, LIMIT)
    with mock.patch.object(ctx, "Process", side_effect=OSError("spawn failed")):
        Path(release).touch()
        assert futures[0].result(LIMIT) == 0
        for future in futures[1:]:
            with pytest.raises(BrokenProcessPool):
                future.result(LIMIT)
    ex.shutdown()


@pytest.mark.timeout(90)
def test_shutdown_right_after_submitting_to_single_task_workers() -> None:
    ex = PPE(3, multiprocessing.get_context("forkserver"), max_tasks_per_child=1)
    futures = [ex.submit(tasks.square, i) for i in range(6)]
    ex.shutdown()
    assert [f.result(0) for f in futures] == [i * i for i in range(6)]


# --- what a pool must not keep alive (test_ressources_gced_in_workers, test_no_stale_references,
#     test_free_reference) ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["fork", "forkserver"])
def test_task_arguments_are_freed_in_the_worker_after_the_task(kind: str, tmp_path: Path) -> None:
    notes = str(tmp_path / "notes")
    with PPE(1, multiprocessing.get_context(kind)) as ex:
        ex.submit(id, tasks.NotesWhenCollected(notes)).result(LIMIT)

        def freed_in_worker() -> bool:
            return any(int(line.split()[1]) != os.getpid() for line in files.read_lines(notes))

        assert files.wait_for(freed_in_worker, LIMIT), "the worker kept the task's argument alive"


@pytest.mark.parametrize("kind", ["threads", "fork"])
def test_a_discarded_future_does_not_keep_its_callable(kind: str) -> None:
    with new_executor(kind) as ex:
        obj = tasks.Plain()
        ref = weakref.ref(obj)
        ex.submit(obj.method).result(LIMIT)  # the future is dropped at once
        del obj
        gc.collect()
        assert ref() is None


@pytest.mark.parametrize("kind", ["threads", "fork"])
def test_map_does_not_keep_results_it_yielded(kind: str) -> None:
    with new_executor(kind) as ex:
        for obj in ex.map(tasks.make_plain, range(10)):
            ref = weakref.ref(obj)
            del obj
            gc.collect()
            assert ref() is None


# --- the default pool size (3.13+: os.process_cpu_count) -------------------------------------


def test_default_sizes_count_the_cpus_this_process_may_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "process_cpu_count", lambda: 3, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert PPE()._max_workers == 3
    threads = TPE()
    assert threads._max_workers == 7  # the stdlib's rule: CPUs + 4, at most 32
    threads.shutdown()
    monkeypatch.delattr(os, "process_cpu_count")  # before 3.13: os.cpu_count()
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert PPE()._max_workers == 1


@pytest.mark.skipif(not hasattr(os, "process_cpu_count"), reason="PYTHON_CPU_COUNT is 3.13+")
def test_python_cpu_count_sets_the_default_pool_size() -> None:
    code = "import mtasklite as mt; print(mt.StatefulProcessPoolExecutor()._max_workers)"
    env = support.child_env(tests=False, PYTHON_CPU_COUNT="3")
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env
    )
    assert out.stdout.strip() == "3"
