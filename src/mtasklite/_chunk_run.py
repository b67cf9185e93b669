"""What one chunk task does in a worker, and what it reports back.

Guarantee: every item of a chunk runs, in order, whatever the others did: an item's
exception is kept as that item's outcome (the chunk itself never fails for it), and the
report carries the time spent in the task function, which sizes the next chunks.
"""

from __future__ import annotations

import time
from typing import Any, Callable, NamedTuple, Optional, Sequence

from ._passing import Passing

__all__ = ["ChunkResult", "run_chunk"]


class ChunkResult(NamedTuple):
    """What running one chunk produced: per-item values, per-item errors, time spent."""

    values: list[Any]
    #: index within the chunk -> exception; ``None`` when every item succeeded
    errors: Optional[dict[int, BaseException]]
    #: seconds spent inside the task function for the whole chunk (drives adaptive sizing)
    elapsed: float
    #: pickled size of the chunk's input when the executor knows it, else 0
    nbytes: int = 0


def run_chunk(fn: Callable[..., Any], items: Sequence[Any], passing: int) -> ChunkResult:
    """Run ``fn`` over ``items`` (passed as :class:`~mtasklite._passing.Passing` says: one
    argument, or a tuple of them), catching per item."""
    star = passing == Passing.STAR  # decided once: the loop below is the hot path
    values: list[Any] = []
    errors: Optional[dict[int, BaseException]] = None
    start = time.perf_counter()
    for i, item in enumerate(items):
        try:
            values.append(fn(*item) if star else fn(item))
        except BaseException as exc:
            if errors is None:
                errors = {}
            errors[i] = exc
            values.append(None)
    return ChunkResult(values, errors, time.perf_counter() - start)
