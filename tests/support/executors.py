"""The back ends the tests run on, and the fault suite's per-test bookkeeping.

A *kind* names a back end: ``"threads"`` (:class:`mtasklite.StatefulThreadPoolExecutor`) or a
multiprocessing start method (``"fork"``, ``"spawn"``, ``"forkserver"``:
:class:`mtasklite.StatefulProcessPoolExecutor`).  ``conftest.py`` turns these lists into the
``kind`` and ``ctx`` fixtures; Dask runs on the module-scoped ``dask_client`` fixture.
"""

from __future__ import annotations

import itertools
import multiprocessing
import threading
from pathlib import Path
from typing import Any, Optional

import mtasklite as mt
from support import leaks
from support.files import read_lines

#: the multiprocessing start methods a process pool is tested under
PROCESS_KINDS = ["fork", "spawn", "forkserver"]
#: every local back end: processes under each start method, and threads
KINDS = [*PROCESS_KINDS, "threads"]

PPE = mt.StatefulProcessPoolExecutor
TPE = mt.StatefulThreadPoolExecutor

#: how soon after a fault a call must return and the workers it stopped must be gone
FAULT_LIMIT = 5.0

_names = itertools.count()


def new_executor(kind: str, workers: Optional[int] = 2, **kwargs: Any) -> Any:
    """A fresh executor: processes under start method ``kind``, or threads (named ``mt-...``,
    so the leak guard sees them; ``cancel_running`` applies to processes only)."""
    if kind == "threads":
        kwargs.pop("cancel_running", None)
        return TPE(workers, thread_name_prefix=f"mt-{next(_names)}", **kwargs)
    return PPE(workers, multiprocessing.get_context(kind), **kwargs)


class Guard:
    """Per-test bookkeeping for executors a test may leave in any state: the executors made
    (stopped at teardown), and the release switches for blocked tasks (an event for threads, a
    file for processes), plus a start log (see :func:`support.tasks.log_start`)."""

    def __init__(self, tmp_path: Path):
        self.before = leaks.snapshot()
        self.executors: list[Any] = []
        self.release = threading.Event()
        self.release_file = str(tmp_path / "release")
        self.log = str(tmp_path / "log")

    def make(self, kind: str, workers: Optional[int] = 2, **kwargs: Any) -> Any:
        ex = new_executor(kind, workers, **kwargs)
        self.executors.append(ex)
        return ex

    def let_go(self) -> None:
        """Release every blocked task."""
        self.release.set()
        Path(self.release_file).touch()

    def starts(self) -> list[list[str]]:
        """The start log: one ``[item, pid, worker index, time]`` per started item."""
        return [line.split() for line in read_lines(self.log)]

    def check(self, timeout: float = FAULT_LIMIT) -> None:
        """Every process and pool thread started since the test began is gone (processes
        exited *and* reaped) within ``timeout`` seconds."""
        leaks.check(self.before, timeout)

    def teardown(self) -> None:
        self.let_go()
        for ex in self.executors:
            if isinstance(ex, PPE):
                ex.terminate(wait=False)
            else:
                ex.shutdown(wait=False, cancel_futures=True)
        self.executors.clear()
