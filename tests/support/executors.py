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
from typing import Any, Callable, Optional

import mtasklite as mt
from support import BLOCK_LIMIT, leaks, tasks
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


def outcomes(
    ex: Any,
    fn: Callable[..., Any],
    *iterables: Any,
    chunksize: Optional[int] = 1,
    task_timeout: Optional[float] = None,
    ordered: bool = True,
) -> list[Any]:
    """The imap results of ``fn`` over ``iterables`` with each failed item's exception in its
    place (``return_exceptions``)."""
    it = ex._imap(fn, iterables, ordered, None, chunksize, None, task_timeout, True)
    return list(it)


def run_on_every_worker(ex: Any, n: int, fn: Callable[[], Any]) -> list[Any]:
    """Thread pools: run ``fn()`` once on each of ``n`` distinct workers (a barrier keeps them
    apart); the results in completion order."""
    barrier = threading.Barrier(n, timeout=BLOCK_LIMIT)

    def task() -> Any:
        barrier.wait()
        return fn()

    return [f.result(BLOCK_LIMIT) for f in [ex.submit(task) for _ in range(n)]]


def with_barrier(context: Any, n: int, **extra: Any) -> tuple[Any, tuple[Any, ...]]:
    """Process pools: ``(initializer, initargs)`` that install a barrier for ``n`` workers (and
    ``extra`` objects) in :data:`support.tasks.SHARED`; see :func:`on_every_worker`."""
    return tasks.install, ({"barrier": context.Barrier(n), **extra},)


def on_every_worker(ex: Any, n: int, fn: Any = tasks.rendezvous) -> Any:
    """Process pools built :func:`with_barrier` of ``n``: run ``fn`` once on each of ``n``
    distinct workers; results sorted by worker index."""
    futures = [ex.submit(fn, i) for i in range(n)]
    return sorted((f.result(BLOCK_LIMIT) for f in futures), key=lambda r: r[0] if r else -1)


def returns_within(call: Callable[[], Any], seconds: float) -> tuple[bool, Any]:
    """Run ``call`` in a thread; whether it returned within ``seconds``, and what it returned
    (or raised).  A deadlocked call is left behind as a daemon thread instead of hanging."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    return (not thread.is_alive(), outcome[0] if outcome else None)


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
