"""Interpreter exit and ``fork`` (``mtasklite._exit_hooks``), in fresh interpreters."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.timeout(60)


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
