"""A parent that gets SIGKILLed while its worker's task runs a subprocess (run by
tests/behaviour/test_worker_lifecycle.py).

Usage: ``parent_killed_with_child.py START_METHOD PID_FILE``.  Prints ``READY <worker pid>``
once the task has written the subprocess's pid to PID_FILE, then waits to be killed.
"""

from __future__ import annotations

import multiprocessing
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import mtasklite as mt
from support import files, tasks


def main() -> int:
    method, pid_file = sys.argv[1:3]
    ex = mt.StatefulProcessPoolExecutor(1, multiprocessing.get_context(method))
    future = ex.submit(tasks.sleeper_then, pid_file, "hang")
    files.read_pid(pid_file)
    print("READY", *ex._processes, flush=True)
    threading.Event().wait()  # until killed
    return 1 if future else 2  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
