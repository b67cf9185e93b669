"""Crash isolation: a worker process that dies fails only the item it was running (a
``WorkerCrashedError`` naming the process and its exit code); every other item of the work it
held runs again, exactly once; its slot is respawned with the same spec; the pool breaks only
where the stdlib's would (``on_worker_crash="break"``) or where a respawn cannot help (a worker
that dies while starting, or keeps dying outside any task).  The verdicts themselves are unit
tests (``unit/test_blame.py``); the full matrix over start methods is in
``faults/test_fault_matrix.py``.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import pytest

import mtasklite as mt
from support import files, specs, tasks
from support.executors import (
    FAULT_LIMIT,
    PROCESS_KINDS,
    Guard,
    on_every_worker,
    outcomes,
    with_barrier,
)

BLOCK_LIMIT = 10.0

PPE = mt.StatefulProcessPoolExecutor

FORK = multiprocessing.get_context("fork")

SPAWN = multiprocessing.get_context("spawn")


def test_worker_dying_during_initialisation_breaks_pool() -> None:
    with PPE(1, FORK, worker=specs.ExitingBuild()) as ex:
        fut = ex.submit(tasks.square, 2)
        with pytest.raises(mt.WorkerInitError) as info:
            fut.result(BLOCK_LIMIT)
        assert "exit code 5" in str(info.value)
        assert "worker 0" in str(info.value)


def test_crash_while_unpickling_a_chunk_charges_only_the_culprit() -> None:
    with PPE(1, FORK) as ex:
        got = outcomes(ex, tasks.identity, [0, 1, tasks.ExitOnUnpickleInWorker(2), 3], chunksize=4)
        assert [got[0], got[1], got[3]] == [0, 1, 3]
        assert isinstance(got[2], mt.WorkerCrashedError)
        assert got[2].exitcode == 9
        assert ex.submit(tasks.square, 5).result(BLOCK_LIMIT) == 25


def test_crash_while_pickling_a_result_charges_only_the_culprit() -> None:
    with PPE(1, FORK) as ex:
        got = outcomes(ex, tasks.exit_when_result_is_pickled, range(5), [2] * 5, chunksize=5)
        assert [g for i, g in enumerate(got) if i != 2] == [0, 10, 30, 40]
        assert isinstance(got[2], mt.WorkerCrashedError)
        assert got[2].exitcode == 7


# --- crash isolation -------------------------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("context", "how", "exitcode", "text"),
    [
        (FORK, "sigkill", -9, "killed by SIGKILL"),
        (FORK, "exit", 3, "exit code 3"),
        (SPAWN, "sigkill", -9, "killed by SIGKILL"),
    ],
    ids=["fork-sigkill", "fork-exit", "spawn-sigkill"],
)
def test_crash_fails_only_that_task_and_respawns_the_slot(
    context: Any, how: str, exitcode: int, text: str, tmp_path: Path
) -> None:
    init, initargs = with_barrier(context, 2)
    with PPE(2, context, init, initargs, worker=specs.Counter("m")) as ex:
        before = on_every_worker(ex, 2)
        futures = [ex.submit(tasks.crash_on, i, 3, how, str(tmp_path / "crash")) for i in range(8)]
        with pytest.raises(mt.WorkerCrashedError) as info:
            futures[3].result(BLOCK_LIMIT)
        assert [f.result(BLOCK_LIMIT) for i, f in enumerate(futures) if i != 3] == [
            i * 10 for i in range(8) if i != 3
        ]
        after = on_every_worker(ex, 2)
    err = info.value
    assert isinstance(err, BrokenProcessPool)
    dead_pid = int(files.read_lines(tmp_path / "crash")[-1].split()[1])
    assert err.pid == dead_pid
    assert err.exitcode == exitcode
    slot = err.slot
    assert (slot, dead_pid) in [(i, pid) for i, pid, _ in before]
    assert f"worker {slot}" in str(err) and str(dead_pid) in str(err) and text in str(err)
    assert [i for i, _, _ in after] == [0, 1]
    assert after[slot][1] != dead_pid, "the slot runs a new process"
    assert after[slot][2] != before[slot][2], "built freshly from the same spec"
    assert after[1 - slot] == before[1 - slot], "the other worker is untouched"


def test_crash_in_a_chunk_charges_only_the_running_item() -> None:
    with PPE(2, FORK) as ex:
        got = outcomes(ex, tasks.crash_on, range(20), [7] * 20, ["exit"] * 20, chunksize=5)
    assert isinstance(got[7], mt.WorkerCrashedError)
    assert [g for i, g in enumerate(got) if i != 7] == [i * 10 for i in range(20) if i != 7]


@pytest.mark.timeout(30)
def test_repeated_crashes_each_fail_one_item() -> None:
    with PPE(2, FORK) as ex:
        got = outcomes(ex, tasks.crash_every, range(30), [5] * 30, chunksize=None)
        assert ex.submit(tasks.square, 3).result(BLOCK_LIMIT) == 9
    crashed = [i for i, g in enumerate(got) if isinstance(g, mt.WorkerCrashedError)]
    assert crashed == [4, 9, 14, 19, 24, 29]
    assert [g for i, g in enumerate(got) if i not in crashed] == [
        i * 10 for i in range(30) if i not in crashed
    ]


def test_break_mode_breaks_the_whole_pool_like_the_stdlib() -> None:
    started, release = FORK.Event(), FORK.Event()
    shared = {"started": started, "release": release}
    ex = PPE(2, FORK, tasks.install, (shared,), on_worker_crash="break")
    try:
        hung = ex.submit(tasks.hang_after_started)
        assert started.wait(BLOCK_LIMIT)
        ex.submit(tasks.crash_when_released)  # the other worker takes it
        queued = [ex.submit(tasks.square, i) for i in range(3)]  # both workers are busy
        release.set()
        for fut in [hung, *queued]:
            with pytest.raises(BrokenProcessPool) as info:
                fut.result(BLOCK_LIMIT)
            assert not isinstance(info.value, mt.WorkerCrashedError)
            assert "terminated abruptly" in str(info.value)
        with pytest.raises(BrokenProcessPool):
            ex.submit(tasks.square, 1)
    finally:
        release.set()
        ex.shutdown()


def test_break_mode_fails_the_crashing_task_too() -> None:
    release = FORK.Event()
    with PPE(1, FORK, tasks.install, ({"release": release},), on_worker_crash="break") as ex:
        crashing = ex.submit(tasks.crash_when_released)
        queued = ex.submit(tasks.square, 2)
        release.set()
        with pytest.raises(BrokenProcessPool):
            queued.result(BLOCK_LIMIT)
        # the pool broke while running it: it fails in the same step (never hangs)
        err = crashing.exception(timeout=1.0)
        assert isinstance(err, BrokenProcessPool)
        assert "terminated abruptly" in str(err)


@pytest.mark.timeout(30)
def test_a_worker_that_keeps_dying_outside_tasks_breaks_the_pool_instead_of_respawning() -> None:
    ex = PPE(1, FORK, tasks.exit_shortly_after_start, (0.5,))  # long after it reports ready
    try:
        ex.wait_ready(BLOCK_LIMIT)  # nothing runs on it: every death is outside a task
        deadline = time.monotonic() + BLOCK_LIMIT
        while not ex._broken and time.monotonic() < deadline:
            time.sleep(0.02)  # sleep-ok: polling an observable condition under a deadline
        assert ex._broken, "the slot kept respawning a worker that dies by itself"
        assert "times in a row outside any task" in str(ex._broken)
        with pytest.raises(concurrent.futures.process.BrokenProcessPool):
            ex.submit(abs, -1)
    finally:
        ex.shutdown()


# --- deaths while a worker (re)starts -------------------------------------------------------------


@pytest.mark.timeout(40)
@pytest.mark.parametrize("kind", PROCESS_KINDS)
def test_replacement_killed_while_rebuilding_is_a_crash_the_pool_survives(
    guard: Guard, kind: str, tmp_path: Path
) -> None:
    logs = [str(tmp_path / "builds0"), str(tmp_path / "builds1")]
    ex = guard.make(kind, None, worker=[specs.SlowRebuild(log, guard.release_file) for log in logs])
    ex.wait_ready(FAULT_LIMIT)
    crashed = ex.submit(tasks.crash_on, 1, 1, "exit")
    assert isinstance(crashed.exception(FAULT_LIMIT), mt.WorkerCrashedError)
    # its replacement is rebuilding (slowly): kill it there, as the OOM killer might
    assert files.wait_for(lambda: any(len(files.read_lines(log)) == 2 for log in logs))
    rebuilding = next(log for log in logs if len(files.read_lines(log)) == 2)
    os.kill(int(files.read_lines(rebuilding)[1]), signal.SIGKILL)
    # the pool is not broken: the healthy worker serves, a new replacement builds
    assert ex.submit(tasks.square, 3).result(FAULT_LIMIT) == 9
    assert files.wait_for_lines(rebuilding, 3)
    guard.let_go()
    ex.wait_ready(FAULT_LIMIT)
    assert list(ex.imap(tasks.square, range(10), chunksize=2)) == [x * x for x in range(10)]
    ex.shutdown()


MAIN_THAT_FAILS_IN_THE_CHILD = """
import multiprocessing
import sys

if __name__ == "__mp_main__":  # how a spawned child imports this script
    import a_module_only_the_parent_has  # noqa: F401

if __name__ == "__main__":
    import mtasklite as mt

    ex = mt.StatefulProcessPoolExecutor(1, multiprocessing.get_context("spawn"))
    try:
        ex.submit(abs, -1).result(30)
    except Exception as exc:
        print(type(exc).__name__, exc)
    ex.shutdown()
"""


@pytest.mark.timeout(60)
def test_spawned_worker_whose_main_module_fails_to_import_is_reported_as_such(
    tmp_path: Path,
) -> None:
    script = tmp_path / "main_fails_in_child.py"
    script.write_text(MAIN_THAT_FAILS_IN_THE_CHILD)
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=50, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("WorkerInitError worker 0 died while starting"), proc.stdout
    assert "did its main module fail to import under spawn?" in proc.stdout
    assert "initializer" not in proc.stdout
