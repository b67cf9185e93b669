"""Large-array workloads (issue 19's shared-memory transport): scenarios 11 and 12.

Scenario 11 (warm): a pool already started moves a ``mib`` MiB numpy array through one
``submit`` round trip, or six of them through ``imap`` (the stdlib: ``map``), timed ``inner``
times after an untimed warm-up: one round trip on every worker at once, then the operation
itself (this starts the workers and, for mtasklite, creates the shared-memory arenas of
every worker that steady traffic reuses).  Beside it, the memory-speed limits the transport
is measured against: one copy of the array into memory already faulted in, and into fresh
memory (numpy's own allocation, and a ``bytearray``).

Scenario 12 (one-shot): :mod:`benchmarks.array_child` in a fresh interpreter, the import
and the pool start timed too.

Speeds are MiB of array per second: the array's size (six times it for ``six``) over the
operation's wall time, so a round trip, which carries the data there and back, is held
against the same size as one copy.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

from benchmarks.array_child import ARRAYS, make_array

Params = dict[str, Any]
Metrics = dict[str, Any]


def _timed(action: Callable[[], Any]) -> float:
    start = time.perf_counter()
    result = action()
    wall = time.perf_counter() - start
    del result  # freed outside the clock
    return wall


def _speed(mib: int, count: int, walls: list[float]) -> Metrics:
    wall = statistics.median(walls)
    return {
        "mib_per_s": mib * count / wall,
        "ms": wall * 1e3,
        "fastest_ms": min(walls) * 1e3,
        "inner_walls_s": walls,
    }


def _check_equal(results: list[Any], array: Any) -> None:
    import numpy as np

    if not results or not all(np.array_equal(r, array) for r in results):
        raise ValueError("an array came back changed")


def warm_arrays(impl: str, p: Params) -> Metrics:
    """Scenario 11: see the module docstring; ``p["op"]`` is ``submit``, ``six`` or one of
    the copy limits (``copy-warm``, ``copy-fresh``, ``copy-bytearray``, no pool)."""
    mib, op = p["mib"], p["op"]
    array = make_array(mib, seed=1)
    if op.startswith("copy"):
        return _speed(mib, 1, [_timed(_copier(op, array)) for _ in range(p["inner"])])
    from benchmarks import tasks
    from benchmarks.impls import open_adapter

    pool = open_adapter(impl, p["workers"], None)
    try:
        if op == "submit":
            executor = pool.pool

            def action() -> list[Any]:
                return [executor.submit(tasks.identity, array).result()]

            count = 1
        else:

            def action() -> list[Any]:
                return list(pool.imap(tasks.identity, [array] * ARRAYS))

            count = ARRAYS
        # Untimed: a round trip on every worker at once (each has its own arenas), then
        # the operation itself.
        warm = [pool.pool.submit(tasks.identity, array) for _ in range(p["workers"])]
        _check_equal([future.result() for future in warm], array)
        _check_equal(action(), array)
        walls = [_timed(action) for _ in range(p["inner"])]
    finally:
        pool.stop()
    return _speed(mib, count, walls)


def _copier(op: str, array: Any) -> Callable[[], Any]:
    """One copy of ``array``: into memory already faulted in (``copy-warm``), or into fresh
    memory from numpy's allocator (``copy-fresh``, which advises huge pages for big arrays)
    or from a ``bytearray`` (``copy-bytearray``, what an in-band pickle's buffer gets)."""
    import numpy as np

    if op == "copy-warm":
        target = np.empty_like(array)
        np.copyto(target, array)  # fault it in before the clock
        return lambda: np.copyto(target, array)
    if op == "copy-fresh":
        return array.copy  # type: ignore[no-any-return]
    return lambda: bytearray(array)


def one_shot_arrays(impl: str, p: Params) -> Metrics:
    """Scenario 12: one :mod:`benchmarks.array_child` run (a fresh interpreter)."""
    who = "ours" if impl.startswith("ours") else "stdlib"
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.array_child", who, p["op"], str(p["mib"])],
        capture_output=True,
        text=True,
        check=True,
        timeout=p.get("child_timeout_s", 120),
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if not result["ok"]:
        raise ValueError("an array came back changed")
    count = 1 if p["op"] == "submit" else ARRAYS
    wall = result["wall_s"]
    return {"mib_per_s": p["mib"] * count / wall, "wall_s": wall}


def huge_page_mode() -> str:
    """This machine's transparent-huge-page setting (``always``, ``madvise``, ``never``), or
    ``unknown``: it decides what faulting in fresh memory costs."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            text = f.read()
    except OSError:
        return "unknown"
    start, end = text.find("["), text.find("]")
    return text[start + 1 : end] if 0 <= start < end else "unknown"


#: scenario number -> its workload (merged into ``benchmarks.scenarios.WORKLOADS``)
ARRAY_WORKLOADS: dict[int, Callable[[str, Params], Metrics]] = {
    11: warm_arrays,
    12: one_shot_arrays,
}
