"""One-shot large-array run in a fresh interpreter (scenario 12):
``python -m benchmarks.array_child <ours|stdlib> <submit|six> <mib>``.

What a script pays that moves big arrays once: the clock starts after numpy made the array
(the script has its data already) and covers importing the executor's module, starting a
2-worker pool, the round trip (one ``submit``, or six arrays through ``imap`` / the stdlib's
``map``) and the shutdown.  Nothing of mtasklite or ``concurrent.futures`` is imported before
the clock: this module imports only the stdlib modules it needs and numpy, and the task is
``operator.itemgetter(0)`` over a one-element tuple (an identity that needs no import of ours
in the workers).  Prints one JSON line: ``{"wall_s": ..., "ok": <all results equal>}``.
"""

from __future__ import annotations

import json
import operator
import sys
import time
from typing import Any

#: how many arrays the ``six`` operation maps (the issue's "six 64 MiB arrays")
ARRAYS = 6


def make_array(mib: int, seed: int = 0) -> Any:
    """``mib`` MiB of random bytes as a numpy array (random, so no page is shared or zero)."""
    import numpy as np

    return np.random.default_rng(seed).integers(0, 255, mib << 20, dtype=np.uint8)


def run(who: str, op: str, mib: int) -> dict[str, Any]:
    """Time import + pool start + ``op`` + shutdown for ``who``; check the results after."""
    import numpy as np

    array = make_array(mib)
    first = operator.itemgetter(0)
    start = time.perf_counter()
    if who == "ours":
        import mtasklite

        pool: Any = mtasklite.StatefulProcessPoolExecutor(2)
        many = pool.imap
    else:
        import concurrent.futures

        pool = concurrent.futures.ProcessPoolExecutor(2)
        many = pool.map
    try:
        if op == "submit":
            results = [pool.submit(first, (array,)).result()]
        else:
            results = list(many(first, [(array,)] * ARRAYS))
    finally:
        pool.shutdown()
    wall = time.perf_counter() - start
    return {"wall_s": wall, "ok": all(np.array_equal(r, array) for r in results)}


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1], sys.argv[2], int(sys.argv[3]))), flush=True)
