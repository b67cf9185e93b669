"""Shared support code for the mtasklite test suite (``import support`` works everywhere).

Modules, by job:

* :mod:`support.tasks` -- picklable task functions (and the objects they need) that workers
  run; :mod:`support.specs` -- the ``@delayed_init`` stateful workers tests build pools with;
  :mod:`support.fakegpu` -- a stand-in GPU framework only workers import.
* :mod:`support.files` -- reporting through files, the one way a task that may be killed
  tells the test what it did; polling for what other processes write.
* :mod:`support.processes` -- the process table (our children, zombies, process groups) and
  the pool threads; waiting for either to be gone.
* :mod:`support.leaks` -- the leak guard (what the autouse fixture in ``conftest.py`` checks).
* :mod:`support.executors` -- the backends (threads, ``fork``, ``spawn``, ``forkserver``,
  Dask) and the fault suite's :class:`~support.executors.Guard`.
* :mod:`support.inputs` -- iterables that count what was pulled from them, inputs that fail.
* :mod:`support.shm` -- buffers and processes for the shared-memory transport tests.

Importability: ``tests/conftest.py`` makes pytest put ``tests/`` on ``sys.path`` (rootdir
conftest, ``prepend`` import mode), so ``support`` imports by name in the test process.
Worker processes started with ``spawn`` or ``forkserver`` unpickle task functions and specs
*by name*; they inherit that ``sys.path`` through multiprocessing's preparation data.  The
standalone scripts under ``tests/scripts/`` and the child interpreters some tests start put
:data:`TESTS` on the path themselves (see :func:`child_env`).

Conventions: nothing sleeps to synchronise (tasks that must block wait on an event or poll a
file under a deadline; every ``time.sleep`` is marked ``sleep-ok`` with its reason), and no
worker process or pool thread a test starts may outlive it (the leak guard).
"""

from __future__ import annotations

import os
from pathlib import Path

#: upper bound for any blocking wait (never reached when the code under test works)
BLOCK_LIMIT = 10.0
#: how long a task that is meant to hang would hang if nothing stopped it
HANG = 3600.0

#: the ``tests/`` directory (on ``sys.path``: ``import support`` works from it)
TESTS = Path(__file__).resolve().parent.parent
#: the repository root, its ``src/`` and the standalone scripts tests run in child interpreters
ROOT = TESTS.parent
SRC = ROOT / "src"
SCRIPTS = TESTS / "scripts"


def child_env(tests: bool = True, **extra: str) -> dict[str, str]:
    """The environment for a child interpreter that imports this checkout's ``mtasklite``
    (``src/``) and, with ``tests``, ``support`` (``tests/``) the way the test process does;
    ``extra`` variables are added."""
    env = {**os.environ, **extra}
    path = [str(SRC), str(TESTS) if tests else "", env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in path if p)
    return env
