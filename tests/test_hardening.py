"""Regressions from the adversarial hunt (issue 21): hangs, a pool-breaking race, work that ran
twice, chunking that never adapted, a misleading message.

Process tests run under ``fork``, ``spawn`` and ``forkserver`` where the start method matters;
each checks what a user sees (a result, the right exception, a pool that keeps working, a call
that returns in time) and leaves no worker behind (the ``guard`` fixture of the fault suite).
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

import fault_helpers as fh
import hardening_helpers as hh
import mtasklite as mt
from mtasklite.processes import pqdm as process_pqdm
from test_faults import FAULT_LIMIT, PPE, TPE, Guard, guard  # noqa: F401  (guard: a fixture)

pytestmark = pytest.mark.timeout(60)

PROCESS_KINDS = ["fork", "spawn", "forkserver"]


def _returns_within(call: Callable[[], Any], seconds: float) -> tuple[bool, Any]:
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


# --- 1. a task that raises StopIteration -----------------------------------------------------


LINES = ["alpha beta", "gamma", "", "delta epsilon", "", "zeta"] * 3


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", PROCESS_KINDS)
def test_stop_iteration_from_a_task_fails_exactly_that_item(guard: Guard, kind: str) -> None:
    ex = guard.make(kind)
    # pqdm's way: every item's outcome in place, the failing ones as their exception
    outcomes = list(
        process_pqdm(LINES, hh.first_word, n_jobs=2, mp_context=_ctx(kind), chunk_size=6)
    )
    assert len(outcomes) == len(LINES)
    for line, outcome in zip(LINES, outcomes):
        if line:
            assert outcome == line.split()[0]
        else:
            assert isinstance(outcome, StopIteration), outcome
    # imap stops at the first failing item, after the ones before it; as in the stdlib's
    # map, the StopIteration surfaces as the RuntimeError a generator turns it into
    got = []
    with pytest.raises(RuntimeError) as caught:
        for word in ex.imap(hh.first_word, LINES, chunksize=len(LINES)):
            got.append(word)
    assert isinstance(caught.value.__cause__, StopIteration)
    assert got == ["alpha", "gamma"]
    futures = [ex.submit(hh.first_word, line) for line in LINES[:3]]
    assert isinstance(futures[2].exception(FAULT_LIMIT), StopIteration)
    assert ex.submit(fh.square, 4).result(FAULT_LIMIT) == 16
    ex.shutdown()


def _ctx(kind: str) -> Any:
    import multiprocessing

    return multiprocessing.get_context(kind)
