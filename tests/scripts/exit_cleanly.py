"""Exercise every way a process pool ends, then exit (run by tests/faults/test_fault_matrix.py).

Usage: ``exit_cleanly.py START_METHOD``

The test asserts that stderr holds no ``leaked semaphore`` / resource_tracker warning.  The
script prints ``OK`` when all scenarios behaved; the last pool is left for the interpreter-exit
hook to shut down.
"""

from __future__ import annotations

import gc
import multiprocessing
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import mtasklite as mt
from support import specs, tasks


def main() -> int:
    ctx = multiprocessing.get_context(sys.argv[1])
    ppe = mt.StatefulProcessPoolExecutor

    # a normal run, with the context manager
    with ppe(2, ctx) as ex:
        assert list(ex.imap(tasks.square, range(50))) == [x * x for x in range(50)]

    # a crash, an overrun and an unpicklable result, then shutdown(cancel_futures=True)
    ex = ppe(2, ctx)
    assert isinstance(
        ex.submit(tasks.crash_on, 1, 1, "sigkill").exception(30), mt.WorkerCrashedError
    )
    assert isinstance(
        ex.submit_with_timeout(0.5, tasks.log_then_hang, 0, "/dev/null").exception(30),
        mt.TaskTimeoutError,
    )
    assert ex.submit(tasks.unpicklable_result).exception(30) is not None
    ex.shutdown(wait=True, cancel_futures=True)

    # terminate() with work running
    ex = ppe(2, ctx)
    running = ex.submit(tasks.log_then_hang, 0, "/dev/null")
    assert ex.submit(tasks.square, 2).result(30) == 4
    ex.terminate()
    assert running.exception(30) is not None

    # a broken pool (a worker's constructor raises)
    ex = ppe(2, ctx, worker=specs.NamedModel("m", fail=True))
    try:
        ex.wait_ready(30)
    except mt.WorkerInitError:
        pass
    else:
        raise AssertionError("wait_ready did not raise")
    ex.shutdown()

    # dropped without shutdown (garbage collected)
    ex = ppe(2, ctx)
    assert ex.submit(tasks.square, 3).result(30) == 9
    del ex
    gc.collect()

    # left running at interpreter exit
    global LEFT_OPEN
    LEFT_OPEN = ppe(2, ctx)
    assert LEFT_OPEN.submit(tasks.square, 4).result(30) == 16
    print("OK", flush=True)
    return 0


LEFT_OPEN = None

if __name__ == "__main__":
    sys.exit(main())
