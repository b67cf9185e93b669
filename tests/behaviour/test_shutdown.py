"""Shutting down: executors that are dropped without ``shutdown()`` stop their threads and
worker processes once garbage-collected, a shut-down pool frees what it held without the
garbage collector, and interpreter exit and ``fork`` (``mtasklite._exit_hooks``) behave, in
fresh interpreters.  ``shutdown(cancel_futures=True)`` itself is in the contract tests; what
a stop does to a worker and what it started is in ``test_worker_lifecycle.py``.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import subprocess
import sys
import textwrap
import weakref
from typing import Any, Callable

import pytest

import mtasklite as mt
from support import processes, specs, tasks

BLOCK_LIMIT = 10.0
pytestmark = pytest.mark.timeout(60)
STPE = mt.StatefulThreadPoolExecutor
PPE = mt.StatefulProcessPoolExecutor
FORK = multiprocessing.get_context("fork")


# --- thread pools ---------------------------------------------------------------------------------


def test_threads_exit_when_executor_is_garbage_collected(prefix: str) -> None:
    ex = STPE(2, prefix, worker=specs.LoggedModel("m"))
    ex.wait_ready(BLOCK_LIMIT)
    assert ex.submit(specs.logged_whoami).result(BLOCK_LIMIT)[1] == "m"
    threads = processes.threads_named(prefix)
    del ex
    gc.collect()
    processes.wait_threads_gone(threads)
    assert not [t.name for t in threads if t.is_alive()]


def test_threads_exit_when_executor_with_timed_tasks_is_garbage_collected(prefix: str) -> None:
    ex = STPE(1, prefix)
    assert ex.submit_with_timeout(BLOCK_LIMIT, abs, -3).result(BLOCK_LIMIT) == 3
    threads = processes.threads_named(prefix)
    del ex
    gc.collect()
    processes.wait_threads_gone(threads, 1.0)
    assert not [t.name for t in threads if t.is_alive()]


# --- process pools --------------------------------------------------------------------------------


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


# --- interpreter exit and fork --------------------------------------------------------------------


def _run(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        check=False,
        capture_output=True,
        text=True,
        timeout=40,
    )


def test_exit_callbacks_run_after_the_flag_and_refuse_new_work() -> None:
    done = _run(
        """
        import mtasklite as mt
        from mtasklite import _exit_hooks

        ex = mt.StatefulThreadPoolExecutor(1, "mt-exit-hooks")
        assert ex.submit(abs, -1).result() == 1

        def at_exit():
            print("FLAG", _exit_hooks.interpreter_exiting(), flush=True)
            try:
                ex.submit(abs, -2)
            except RuntimeError as exc:
                print("REFUSED", exc, flush=True)

        _exit_hooks.on_exit_and_fork(at_exit, lambda: None)
        print("FLAG", _exit_hooks.interpreter_exiting(), flush=True)
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "FLAG False",
        "FLAG True",
        "REFUSED cannot schedule new futures after interpreter shutdown",
    ]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_exits_although_the_parent_held_the_exit_lock_and_ran_pools() -> None:
    # The child inherits the lock as held (by a thread it does not have) and the parent's
    # live pool threads: without the fork hook its exit would wait for them forever.
    done = _run(
        """
        import os, signal, threading, time, warnings
        import mtasklite as mt
        from mtasklite import _exit_hooks
        from mtasklite._thread_worker import live_threads

        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads, on 3.12+
        forgotten = []
        _exit_hooks.on_exit_and_fork(lambda: None, lambda: forgotten.append(True))
        ex = mt.StatefulThreadPoolExecutor(1, "mt-fork-hooks")
        gate = threading.Event()
        ex.submit(gate.wait)
        held, release = threading.Event(), threading.Event()

        def hold():
            with _exit_hooks.EXIT_LOCK:
                held.set()
                release.wait()

        holder = threading.Thread(target=hold)
        holder.start()
        held.wait()
        pid = os.fork()
        if pid == 0:
            print("CHILD", len(live_threads), forgotten, flush=True)  # then exits normally
        else:
            deadline = time.monotonic() + 20
            while True:  # never leave a hung child behind
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    print("CHILD HUNG", flush=True)
                    _, status = os.waitpid(pid, 0)
                    break
                time.sleep(0.05)  # sleep-ok: polls a child process, no event to wait on
            release.set()
            holder.join()
            gate.set()
            ex.shutdown()
            print("PARENT", os.waitstatus_to_exitcode(status), flush=True)
        """
    )
    assert done.returncode == 0, done.stderr
    assert "CHILD 0 [True]" in done.stdout
    assert "PARENT 0" in done.stdout
