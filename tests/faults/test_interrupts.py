"""Ctrl-C and a killed parent, with standalone scripts under ``tests/scripts/`` run as
subprocesses (a signal to the test process itself would hit pytest).

- Ctrl-C (SIGINT) during a busy ``imap`` (or pqdm): the script gets ``KeyboardInterrupt``
  within 2 s, no item starts after that, and every worker process is gone within 2 s.
- The parent is SIGKILLed with busy workers: every worker exits by itself within 2 s
  (each worker's watcher thread waits on the parent's sentinel and a pidfd of the parent;
  ``PR_SET_PDEATHSIG`` stands in where there is no pidfd).

Workers log each item start (pid, worker index, ``time.monotonic()``, a system-wide clock) to
a file, which is how the test knows what ran when.
"""

from __future__ import annotations

import functools
import gc
import io
import multiprocessing
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest

import mtasklite as mt
import support
from support import files, processes, tasks
from support.executors import FAULT_LIMIT, Guard

pytestmark = pytest.mark.timeout(40)

SCRIPTS = support.SCRIPTS

#: how long the parent may take to see Ctrl-C, and its workers to be gone
INTERRUPT_LIMIT = 2.0

#: how long a script may take to start its pool and report (spawn is slow on a busy machine)
STARTUP_LIMIT = 30.0


class Script:
    """A script under tests/scripts/ in its own session, with deadline-bounded line reads."""

    def __init__(self, name: str, *args: str, stderr_path: Path):
        self._stderr = open(stderr_path, "wb")  # noqa: SIM115 - closed in stop()
        self.stderr_path = stderr_path
        self.proc = subprocess.Popen(
            [sys.executable, str(SCRIPTS / name), *args],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            start_new_session=True,  # its own process group, as a terminal job would be
        )
        assert self.proc.stdout is not None
        self._fd = self.proc.stdout.fileno()
        self._buffer = b""
        self.lines: list[str] = []
        self.pids: set[int] = set()  # processes to clean up

    def read_line(self, prefix: str, deadline: float) -> Optional[str]:
        """The next line starting with ``prefix`` before ``deadline``, else ``None``."""
        while True:
            while b"\n" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\n", 1)
                line = raw.decode()
                self.lines.append(line)
                if line.startswith(prefix):
                    return line
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready, _, _ = select.select([self._fd], [], [], remaining)
            if not ready:
                return None
            chunk = os.read(self._fd, 4096)
            if not chunk:  # EOF: the script exited
                return None
            self._buffer += chunk

    def stderr(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                pass
            self.proc.wait()
        processes.kill_quietly(self.pids)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self._stderr.close()


@pytest.fixture
def script(tmp_path: Path) -> Iterator[list[Script]]:
    started: list[Script] = []
    yield started
    for s in started:
        s.stop()


def start(scripts: list[Script], tmp_path: Path, name: str, *args: str) -> Script:
    s = Script(name, *args, stderr_path=tmp_path / "stderr")
    scripts.append(s)
    return s


def read_starts(log: Path) -> list[tuple[str, int, int, float]]:
    """(item, pid, worker index, monotonic start time) per started item."""
    rows = []
    for line in files.read_lines(log):
        item, pid, index, when = line.split()
        rows.append((item, int(pid), int(index), float(when)))
    return rows


# --- Ctrl-C ----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
@pytest.mark.parametrize("mode", ["imap", "pqdm"])
@pytest.mark.parametrize("target", ["parent", "group"])
def test_ctrl_c_during_busy_imap(
    script: list[Script], tmp_path: Path, method: str, mode: str, target: str
) -> None:
    """``target="parent"``: SIGINT to the parent only; ``"group"``: to its whole process
    group, as a terminal's Ctrl-C does (workers ignore it; the parent decides)."""
    log = tmp_path / "log"
    s = start(script, tmp_path, "sigint_imap.py", method, mode, str(log))
    line = s.read_line("PIDS", time.monotonic() + STARTUP_LIMIT)
    assert line is not None, s.stderr()
    pids = {int(p) for p in line.split()[1:]}
    s.pids |= pids
    assert len(pids) == 2 and all(processes.alive(p) for p in pids)
    # both workers busy with long items, the consumer blocked waiting for one
    assert len(files.wait_for_lines(log, 4)) >= 4
    assert s.read_line("WAITING", time.monotonic() + STARTUP_LIMIT) is not None, s.stderr()
    sent = time.monotonic()
    if target == "parent":
        os.kill(s.proc.pid, signal.SIGINT)
    else:
        os.killpg(s.proc.pid, signal.SIGINT)
    marker = s.read_line("INTERRUPTED", sent + INTERRUPT_LIMIT)
    assert marker is not None, f"no KeyboardInterrupt within {INTERRUPT_LIMIT} s: {s.stderr()}"
    interrupted = float(marker.split()[1])
    left = processes.wait_gone(pids, max(0.0, sent + INTERRUPT_LIMIT - time.monotonic()))
    assert not left, f"workers alive {INTERRUPT_LIMIT} s after Ctrl-C: {left}"
    assert s.read_line("EXITED", sent + INTERRUPT_LIMIT * 2) is not None, s.stderr()
    assert s.proc.wait(INTERRUPT_LIMIT * 2) == 0, s.stderr()
    starts = read_starts(log)
    assert {pid for _, pid, _, _ in starts} <= pids
    late = [row for row in starts if row[3] > interrupted]
    assert not late, f"items started after the KeyboardInterrupt: {late}"
    assert "Traceback" not in s.stderr(), s.stderr()


def test_ctrl_c_during_busy_imap_on_threads(script: list[Script], tmp_path: Path) -> None:
    """Threads cannot be stopped, but queued items are dropped and the running ones end."""
    log = tmp_path / "log"
    s = start(script, tmp_path, "sigint_imap.py", "fork", "threads", str(log))
    assert s.read_line("PIDS", time.monotonic() + STARTUP_LIMIT) is not None, s.stderr()
    assert len(files.wait_for_lines(log, 4)) >= 4
    assert s.read_line("WAITING", time.monotonic() + STARTUP_LIMIT) is not None, s.stderr()
    sent = time.monotonic()
    os.kill(s.proc.pid, signal.SIGINT)
    marker = s.read_line("INTERRUPTED", sent + INTERRUPT_LIMIT)
    assert marker is not None, f"no KeyboardInterrupt within {INTERRUPT_LIMIT} s: {s.stderr()}"
    interrupted = float(marker.split()[1])
    assert s.read_line("EXITED", sent + INTERRUPT_LIMIT) is not None, s.stderr()
    # the interpreter exits once the running items (0.5 s) are done
    assert s.proc.wait(INTERRUPT_LIMIT) == 0, s.stderr()
    late = [row for row in read_starts(log) if row[3] > interrupted]
    assert not late, f"items started after the KeyboardInterrupt: {late}"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("where", ["progress-bar", "with-body"])
def test_ctrl_c_outside_the_wait_still_stops_pqdm_workers(tmp_path: Path, where: str) -> None:
    """In-process: a KeyboardInterrupt is raised where a Ctrl-C can land (in the bar's
    update, or in the loop body inside ``with pqdm(...)``) while both workers are busy."""
    from tqdm import tqdm

    from mtasklite.processes import pqdm

    log, release = tmp_path / "log", tmp_path / "release"
    before = set(processes.child_processes())
    workers: set[int] = set()
    raised_at: list[float] = []

    def ctrl_c() -> None:
        """Both workers are blocked (in items 2 and 4): press Ctrl-C."""
        assert len(files.wait_for_lines(log, 2)) == 2
        workers.update(set(processes.child_processes()) - before)
        raised_at.append(time.monotonic())
        raise KeyboardInterrupt

    class CtrlCInBar(tqdm):  # type: ignore[type-arg]
        def update(self, n: Optional[float] = 1) -> Optional[bool]:
            shown = super().update(n)
            if where == "progress-bar" and self.n >= 2 and not raised_at:
                ctrl_c()  # what SIGINT arriving in the bar's code raises
            return shown

    task = functools.partial(
        tasks.block_from, first_blocked=2, log=str(log), release_file=str(release)
    )
    # If the workers are never stopped, leaving waits for the blocked tasks: release them
    # after a while so that the test ends (and fails) instead of hanging.
    releaser = threading.Timer(INTERRUPT_LIMIT + 0.5, release.touch)
    releaser.start()
    results = None
    try:
        results = pqdm(
            range(100), task, 2, tqdm_class=CtrlCInBar, file=io.StringIO(), miniters=1,
            mininterval=0, mp_context=multiprocessing.get_context("fork"),
            chunk_size=2,  # chunks [0, 1] [2, 3] [4, 5] ...: both workers block, more queued
        )  # fmt: skip
        with pytest.raises(KeyboardInterrupt):
            if where == "with-body":
                with results:
                    for i, _ in enumerate(results):
                        if i == 1:
                            ctrl_c()
            else:
                for _ in results:
                    pass
        left_after = time.monotonic() - raised_at[0]
        left = processes.wait_gone(
            workers, max(0.0, raised_at[0] + INTERRUPT_LIMIT - time.monotonic())
        )
        starts = read_starts(log)
    finally:
        release.touch()
        releaser.cancel()
        del results
        gc.collect()
    assert len(workers) == 2
    assert left_after < INTERRUPT_LIMIT, f"leaving took {left_after:.1f} s: it waited for tasks"
    assert not left, f"workers still running {INTERRUPT_LIMIT} s after Ctrl-C: {left}"
    late = [row for row in starts if row[3] > raised_at[0]]
    assert not late, f"items started after the KeyboardInterrupt: {late}"


# --- the parent is killed --------------------------------------------------------------------


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
@pytest.mark.parametrize("variant", ["main", "thread", "respawned", "held"])
def test_workers_exit_when_the_parent_is_killed(
    script: list[Script], tmp_path: Path, method: str, variant: str
) -> None:
    """``held``: a process the parent forked holds the other ends of the workers' sentinels
    and pipes, so only a pidfd of the parent can tell them."""
    check_workers_exit_with_parent(script, tmp_path, method, variant)


@pytest.mark.parametrize("method", ["fork", "spawn"])
@pytest.mark.parametrize("variant", ["main", "held"])
def test_without_pidfd_the_kernel_signal_stands_in(
    script: list[Script], tmp_path: Path, method: str, variant: str, monkeypatch: Any
) -> None:
    """Kernels older than 5.3 have no pidfd: ``PR_SET_PDEATHSIG`` tells the workers.  (Not
    with ``forkserver``: a process holding the parent's descriptors keeps the fork server,
    the workers' real parent, alive.)"""
    monkeypatch.setenv("MTASKLITE_TEST_NO_PIDFD", "1")
    check_workers_exit_with_parent(script, tmp_path, method, variant)


def check_workers_exit_with_parent(
    script: list[Script], tmp_path: Path, method: str, variant: str
) -> None:
    log = tmp_path / "log"
    s = start(script, tmp_path, "parent_killed.py", method, variant, str(log))
    if variant == "held":
        helper = s.read_line("HELPER", time.monotonic() + STARTUP_LIMIT)
        assert helper is not None, s.stderr()
        s.pids.add(int(helper.split()[1]))
    line = s.read_line("PIDS", time.monotonic() + STARTUP_LIMIT)
    assert line is not None, s.stderr()
    pids = {int(p) for p in line.split()[1:]}
    s.pids |= pids
    assert len(pids) == 2 and all(processes.alive(p) for p in pids)
    s.proc.kill()  # SIGKILL: no cleanup code runs in the parent
    s.proc.wait()
    left = processes.wait_gone(pids, INTERRUPT_LIMIT)
    assert not left, f"workers outlived their parent by {INTERRUPT_LIMIT} s: {left}"


# --- a KeyboardInterrupt a task raised is not a Ctrl-C --------------------------------------------


def _consume(ex: Any, how: str) -> list[Any]:
    fn, items, targets = tasks.raise_keyboard_interrupt_on, range(10), [3] * 10
    if how == "map":
        return list(ex.map(fn, items, targets))
    if how == "imap":
        return list(ex.imap(fn, items, targets, chunksize=1))
    return list(ex.imap(fn, items, targets, chunksize=None))


@pytest.mark.parametrize("kind", ["fork", "spawn", "threads"])
@pytest.mark.parametrize("how", ["map", "imap", "adaptive imap"])
def test_keyboard_interrupt_raised_by_a_task_is_reraised_and_the_pool_stays_usable(
    guard: Guard, kind: str, how: str
) -> None:
    ex = guard.make(kind, 2)
    with pytest.raises(KeyboardInterrupt, match="raised by task 3"):
        _consume(ex, how)
    assert ex.submit(tasks.square, 3).result(FAULT_LIMIT) == 9
    assert list(ex.imap(tasks.square, range(6), chunksize=2)) == [0, 1, 4, 9, 16, 25]
    ex.shutdown()


@pytest.mark.parametrize("kind", ["fork", "spawn"])
def test_task_keyboard_interrupt_leaving_with_waits_for_running_work(
    guard: Guard, kind: str
) -> None:
    # Only a real Ctrl-C stops the workers on leaving ``with``; a task's own interrupt
    # leaves it like any other exception: shutdown(wait=True), running work completes.
    ex = guard.make(kind, 2)
    with pytest.raises(KeyboardInterrupt, match="raised by a task"), ex:
        running = ex.submit(tasks.hang_unless, "running", guard.log, guard.release_file)
        assert files.wait_for_lines(guard.log, 1)
        ex.submit(tasks.release_then_raise_keyboard_interrupt, guard.release_file).result()
    assert running.result(0) == "running"


def test_task_keyboard_interrupt_in_pool_immediate_mode_keeps_the_pool() -> None:
    with mt.Pool(
        tasks.raise_keyboard_interrupt_on, 2, argument_type="args", exception_behavior="immediate"
    ) as pool:
        with pytest.raises(KeyboardInterrupt, match="raised by task 3"):
            list(pool([(x, 3) for x in range(8)]))
        assert list(pool([(x, -1) for x in range(4)])) == [0, 10, 20, 30]
