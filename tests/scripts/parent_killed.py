"""A parent that gets SIGKILLed with busy workers (run by tests/faults/test_interrupts.py).

Usage: ``parent_killed.py START_METHOD {main,thread,respawned} LOG``

- ``main``: the pool is created and used from the main thread (workers get
  ``PR_SET_PDEATHSIG``);
- ``thread``: from another thread, which starts the workers, so only the parent-sentinel
  watcher inside each worker can notice the parent's death;
- ``respawned``: a worker is crashed first, so one worker is a replacement started by the
  pool's dispatcher thread;
- ``held``: once the workers run, the script forks a helper that inherits every
  descriptor, the parent ends of the workers' sentinels and pipes included, so neither
  closes when the parent dies: only a pidfd of the parent, or the kernel's
  ``PR_SET_PDEATHSIG`` where there is none, can tell the workers.  The helper's pid is
  printed first (``HELPER <pid>``); it sleeps until killed.

With ``MTASKLITE_TEST_NO_PIDFD=1`` in the environment the workers do without a pidfd (the
fallback of kernels older than 5.3).

Every worker ends up running a task that hangs.  Once each has logged its start to LOG the
script prints ``PIDS <pid> ...`` and waits to be killed.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import mtasklite as mt
import support
from support import files, processes, tasks

WORKERS = 2

if os.environ.get("MTASKLITE_TEST_NO_PIDFD"):  # module level: spawned workers import us too
    from mtasklite._procpool import parent_death

    parent_death.WATCH_PID = False


def run(method: str, variant: str, log: str, futures: list[object]) -> None:
    ex = mt.StatefulProcessPoolExecutor(WORKERS, multiprocessing.get_context(method))
    if variant == "respawned":
        crashed = ex.submit(tasks.crash_on, 0, 0, "sigkill")
        assert isinstance(crashed.exception(support.BLOCK_LIMIT), mt.WorkerCrashedError)
    hang = functools.partial(tasks.log_then_hang, log=log)
    futures.extend(ex.submit(hang, i) for i in range(WORKERS))
    futures.append(ex)  # keep the executor alive


def fork_descriptor_holder() -> int:
    """A child that holds copies of all our descriptors until it is killed."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the helper
        time.sleep(support.HANG)  # sleep-ok: meant to be killed by the test
        os._exit(0)
    return pid


def main() -> int:
    method, variant, log = sys.argv[1:4]
    keep: list[object] = []
    if variant == "thread":
        thread = threading.Thread(target=run, args=(method, variant, log, keep))
        thread.start()
        thread.join()
    else:
        run(method, variant, log, keep)
    lines = files.wait_for_lines(log, WORKERS)
    pids = sorted({int(line.split()[1]) for line in lines})
    assert set(pids) == set(processes.child_processes()), (pids, processes.child_processes())
    if variant == "held":
        print("HELPER", fork_descriptor_holder(), flush=True)
    print("PIDS", *pids, flush=True)
    threading.Event().wait()  # until killed
    return 1  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
