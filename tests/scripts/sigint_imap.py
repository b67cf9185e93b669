"""Ctrl-C during a busy imap (run by tests/test_interrupts.py in a subprocess).

Usage: ``sigint_imap.py START_METHOD {imap,pqdm,threads} LOG``

Two workers (processes; threads for ``threads``) run items that take a while; each logs
``"<item> <pid> <index> <t>"`` to LOG when it starts one.  Once the first result is in, the
script prints ``PIDS <pid> <pid>`` (its worker processes; none for threads).  The test then
sends SIGINT; the script prints ``INTERRUPTED <monotonic time>`` as soon as the
KeyboardInterrupt reaches its loop, lets it propagate through the executor (or pqdm) and
prints ``EXITED`` once the pool is gone.
"""

from __future__ import annotations

import functools
import io
import multiprocessing
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import fault_helpers as fh
import mtasklite as mt
from mtasklite.processes import pqdm

# A shell starts background jobs with SIGINT ignored, and Python then installs no handler:
# restore Ctrl-C's usual meaning so the test does not depend on how it was launched.
signal.signal(signal.SIGINT, signal.default_int_handler)

#: how long each item runs: long enough that a worker is mid-item when SIGINT arrives
ITEM_SECONDS = 0.25
#: far more than run before the test interrupts (pqdm submits a sized input all at once)
ITEMS = 2000


def consume(results: object) -> None:
    try:
        for i, _ in enumerate(results):  # type: ignore[call-overload]
            if i == 0:
                print("PIDS", *sorted(fh.child_processes()), flush=True)
    except KeyboardInterrupt:
        print("INTERRUPTED", repr(time.monotonic()), flush=True)
        raise
    print("FINISHED", flush=True)  # pragma: no cover - the test always interrupts


def main() -> int:
    method, mode, log = sys.argv[1:4]
    ctx = multiprocessing.get_context(method)
    task = functools.partial(fh.log_then_work, log=log, seconds=ITEM_SECONDS)
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
