"""How ``chunksize=None`` sizes chunks on the thread pool.

Guarantee: an item measured at more than half a millisecond runs in a chunk of its own, so
I/O-bound work (the usual reason for threads) is spread over the threads exactly as with
one task per item; only items far cheaper than a thread hand-off are batched.
"""

from __future__ import annotations

import math
from typing import Optional

from ._chunk_sizing import AdaptiveChunkSize

__all__ = ["ThreadChunkSize"]


class ThreadChunkSize(AdaptiveChunkSize):
    """Adaptive chunks that aim at a millisecond of work each.

    Handing a chunk to a thread costs tens of microseconds (a future and a queue hand-off,
    no pickling), so a millisecond already pays for it twenty times over, while a process
    chunk must also cover a pipe round trip.  With this target, ``TARGET_SECONDS / estimate``
    is below two for any item over half a millisecond, and the chunk holds that one item.
    The estimate follows the slowest recent chunk at once, so a workload that turns slow is
    unbatched from its next chunk on; an item much slower than those measured before it can
    still delay the rest of its own chunk, at most about a millisecond of work.

    There is no probing phase: every slot of the window is used from the first fill (with
    one-item chunks until something is measured), as with ``chunksize=1``, so tasks that wait
    for one another within the window still all get started.
    """

    TARGET_SECONDS = 0.001

    def __init__(self, workers: int, total: Optional[int] = None, unbounded: bool = False):
        super().__init__(workers, total, unbounded)
        self.inflight_limit = math.inf
