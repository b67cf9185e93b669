"""Ctrl-C during a busy imap (run by tests/faults/test_interrupts.py in a subprocess).

Usage: ``sigint_imap.py START_METHOD {imap,pqdm,threads} LOG``

Two workers (processes; threads for ``threads``) run the items; each logs
``"<item> <pid> <index> <t>"`` to LOG when it starts one.  Items 0 and 1 are quick, the
others long, so after the first two results the consumer waits for a busy worker.  The
script prints ``PIDS <pid> <pid>`` (its worker processes; none for threads) after the first
result, and ``WAITING`` once its main thread is blocked waiting for the next result.  The
test then sends SIGINT; the script prints ``INTERRUPTED <monotonic time>`` as soon as the
KeyboardInterrupt reaches its loop, lets it propagate through the executor (or pqdm) and
prints ``EXITED`` once the pool is gone.

(Where the signal lands matters: see faults/test_interrupts.py for Ctrl-C landing in pqdm's
progress-bar code instead of in the wait.)
"""

from __future__ import annotations

import functools
import io
import multiprocessing
import os
import signal
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import mtasklite as mt
from mtasklite.processes import pqdm
from support import files, processes, tasks

# A shell starts background jobs with SIGINT ignored, and Python then installs no handler:
# restore Ctrl-C's usual meaning so the test does not depend on how it was launched.
signal.signal(signal.SIGINT, signal.default_int_handler)

#: how long the long items run: processes are stopped mid-item; threads cannot be, so the
#: interpreter waits for their running items before it exits
ITEM_SECONDS = {"imap": 60.0, "pqdm": 60.0, "threads": 0.5}
#: far more than run before the test interrupts (pqdm submits a sized input all at once)
ITEMS = 2000


def announce_waiting(main: threading.Thread, armed: threading.Event) -> None:
    """Once ``armed``, print ``WAITING`` when ``main`` is asleep in the kernel inside a
    ``Condition.wait`` called from one of mtasklite's imap engines (waiting for a result).

    Seeing the ``wait`` frame is not enough: between releasing the GIL and entering the futex
    call a thread is not yet asleep, and a signal arriving in that gap is only noticed at the
    next wakeup (a CPython limitation, also for the stdlib's ``Future.result()``).  So the
    thread must be seen sleeping (``S`` in /proc) in the same place three polls in a row.
    """
    engines = tuple(os.path.join("mtasklite", name) for name in ("windowing.py", "_thread_imap.py"))
    stat = f"/proc/self/task/{main.native_id}/stat"
    streak = 0

    def in_wait() -> bool:
        frame = sys._current_frames().get(main.ident or 0)
        if frame is None or frame.f_code.co_name != "wait":
            return False
        while frame is not None:
            if frame.f_code.co_filename.endswith(engines):
                return True
            frame = frame.f_back
        return False

    def asleep() -> bool:
        with open(stat, "rb") as f:
            data = f.read()
        return data[data.rindex(b")") + 2 :].split()[0] == b"S"

    def settled() -> bool:
        nonlocal streak
        streak = streak + 1 if in_wait() and asleep() else 0
        return streak >= 3

    # Never take the test's SIGINT ourselves: only the main thread runs Python signal
    # handlers, and a signal delivered here would not wake it.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    armed.wait()
    if files.wait_for(settled, timeout=60):
        print("WAITING", flush=True)


def consume(results: object) -> None:
    armed = threading.Event()
    watcher = threading.Thread(
        target=announce_waiting, args=(threading.main_thread(), armed), daemon=True
    )
    watcher.start()
    try:
        for i, _ in enumerate(results):  # type: ignore[call-overload]
            if i == 0:
                print("PIDS", *sorted(processes.child_processes()), flush=True)
            elif i == 1:  # the next items are long: the consumer is about to wait
                armed.set()
    except KeyboardInterrupt:
        print("INTERRUPTED", repr(time.monotonic()), flush=True)
        raise
    print("FINISHED", flush=True)  # pragma: no cover - the test always interrupts


def main() -> int:
    method, mode, log = sys.argv[1:4]
    ctx = multiprocessing.get_context(method)
    task = functools.partial(tasks.quick_then_slow, log=log, quick=2, seconds=ITEM_SECONDS[mode])
    try:
        if mode == "imap":
            with mt.StatefulProcessPoolExecutor(2, ctx) as ex:
                consume(ex.imap(task, range(ITEMS), chunksize=1))
        elif mode == "threads":
            with mt.StatefulThreadPoolExecutor(2, thread_name_prefix="mt-sigint") as tex:
                consume(tex.imap(task, range(ITEMS)))
        else:
            consume(pqdm(range(ITEMS), task, n_jobs=2, mp_context=ctx, file=io.StringIO()))
    except KeyboardInterrupt:
        print("EXITED", repr(time.monotonic()), flush=True)
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
