"""Our thread pool on a stdlib base shaped like Python 3.14's (which this machine lacks).

3.14's ``ThreadPoolExecutor.__init__`` no longer sets ``_initializer`` / ``_initargs``; a
subclass that read them failed on its first ``submit``.  The script patches the running
Python's base class to behave as 3.14's and drives our pool over it, in a subprocess so the
patch cannot leak into other tests.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

import support

SCRIPT = support.SCRIPTS / "thread_pool_on_314_base.py"


@pytest.mark.timeout(60)
def test_thread_pool_runs_on_a_base_class_that_sets_only_what_314_sets() -> None:
    env = support.child_env(tests=False)
    proc = subprocess.run(
        [sys.executable, str(SCRIPT)],
        check=False,
        capture_output=True,
        text=True,
        timeout=50,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "OK"
