"""Task functions the pools run.

They live in a module of their own, imported by every worker process, so it stays free of
heavy imports.  All are module-level, hence picklable by every library benchmarked.
"""

from __future__ import annotations

import time
from typing import Optional

import mtasklite as mt

#: per-worker state installed by :func:`init_model` (the peers' initializer mechanism)
_MODEL: Optional[SlowModel] = None


def square(x: int) -> int:
    """The tiny task of scenarios 1, 2 and 4."""
    return x * x


def identity(x: object) -> object:
    """Round-trip task for latency measurements and pool warm-up."""
    return x


def payload_size(payload: bytes) -> int:
    """Scenario 3's task: cheap, with a small result, so memory reflects the input side."""
    return len(payload)


def burn(loops: int) -> int:
    """Pure-Python CPU work; ``loops`` is calibrated by the runner to last about 5 ms."""
    acc = 0
    for i in range(loops):
        acc = (acc + i * i) % 1_000_003
    return acc


def spin(seconds: float) -> None:
    """Busy-wait ``seconds`` of wall time (exact, unlike ``time.sleep`` for 1 ms)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


@mt.delayed_init
class SlowModel:
    """A worker object that is expensive to build (``init_s``) and answers in ``task_s``."""

    def __init__(self, init_s: float, task_s: float) -> None:
        time.sleep(init_s)
        self.task_s = task_s

    def __call__(self, x: int) -> int:
        spin(self.task_s)
        return x


def init_model(init_s: float, task_s: float) -> None:
    """Peers' per-worker initializer: build the same model into a module global."""
    global _MODEL
    _MODEL = SlowModel(init_s, task_s).build()


def use_model(x: int) -> int:
    """Peers' task for scenario 6: call the model their initializer built."""
    assert _MODEL is not None, "initializer did not run in this worker"
    return _MODEL(x)  # type: ignore[no-any-return]
