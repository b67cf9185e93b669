"""How big the next chunk of an ``imap`` is: fixed, or sized from measured task times.

Guarantee: adaptive chunks start at one item and grow only on measurements, towards about
``TARGET_SECONDS`` of work each, guarded against an unrepresentative fast sample; they shrink
as soon as tasks turn slower, and the tail of a sized input still spreads over every worker.
The thread pool aims shorter (:mod:`~mtasklite._thread_chunks`).
"""

from __future__ import annotations

import math
from typing import Optional, Union

from ._chunk_run import ChunkResult

__all__ = ["AdaptiveChunkSize", "ChunkSizer", "FixedChunkSize"]


class FixedChunkSize:
    """Every chunk has the same size."""

    inflight_limit = math.inf

    def __init__(self, size: int):
        self.size = size

    def observe(self, result: ChunkResult, count: int) -> None:
        """Fixed sizes ignore measurements."""


class AdaptiveChunkSize:
    """Sizes chunks so each one runs for about ``TARGET_SECONDS`` in a worker.

    It starts at one item.  The per-item estimate weighs chunks by their item count and
    fades old ones (``DECAY``); a chunk slower than the estimate takes over at once, so
    sizes shrink as soon as tasks get slower.  Growth is guarded twice against a fast
    sample that is not representative: a chunk holds at most ``GROWTH`` times the items
    measured so far, or (when that is more) the items the estimate says take
    ``TRUSTED_SECONDS``, an amount of work that stays harmless even if the estimate is off
    tenfold.  Chunks are capped at ``MAX_BYTES`` of pickled input when the executor reports
    sizes, and for a sized input at ``total / (4 * workers)``, so the tail of the work still
    spreads over every worker.

    Probing ends early once the chunks reach a sized input's cap: bigger ones cannot come.
    ``unbounded`` (everything is to be submitted at once): the chunks in flight stay at
    ``UNSETTLED_CHUNKS_PER_WORKER`` per worker, as when bounded, until ``SETTLE_SECONDS`` of
    work per worker are measured; only then does the rest go out, all at the size known then,
    so one slow early sample cannot make it thousands of tiny chunks.
    """

    TARGET_SECONDS = 0.02
    TRUSTED_SECONDS = 0.001
    GROWTH = 4
    DECAY = 0.5
    MAX_BYTES = 1 << 20
    MAX_ITEMS = 1 << 14  # also bounds memory: a window holds 4 x workers chunks
    MAX_ITEMS_UNKNOWN_BYTES = 1 << 12
    SETTLE_SECONDS = 0.05
    UNSETTLED_CHUNKS_PER_WORKER = 4

    def __init__(self, workers: int, total: Optional[int] = None, unbounded: bool = False):
        self.size = 1
        if unbounded:
            self._trusted_limit = float(self.UNSETTLED_CHUNKS_PER_WORKER * max(1, workers))
            self._settle_seconds = self.SETTLE_SECONDS * max(1, workers)
        else:  # the window's own limit bounds the chunks in flight
            self._trusted_limit = self._settle_seconds = 0.0
        # Until TRUSTED_SECONDS of work are measured, one chunk per worker is in flight:
        # more would be chunks sized on too little knowledge, each paying a round trip.
        self.inflight_limit: float = max(1, workers)
        self._cap = self.MAX_ITEMS
        if total is not None:
            self._cap = max(1, min(self._cap, math.ceil(total / (4 * max(1, workers)))))
        self._items = 0.0  # decayed item count behind the estimate
        self._seconds = 0.0  # decayed seconds those items took
        self._measured = 0  # every item measured so far
        self._measured_seconds = 0.0  # and the time they took
        self._bytes_per_item: Optional[float] = None

    def observe(self, result: ChunkResult, count: int) -> None:
        """Fold one finished chunk of ``count`` items into the estimate."""
        self._measured += count
        self._measured_seconds += result.elapsed
        if self._measured_seconds >= self.TRUSTED_SECONDS:
            settled = self._measured_seconds >= self._settle_seconds
            self.inflight_limit = math.inf if settled else self._trusted_limit
        self._items = self.DECAY * self._items + count
        self._seconds = self.DECAY * self._seconds + result.elapsed
        per_item = max(self._seconds / self._items, result.elapsed / count)
        limit = self._cap
        if result.nbytes:
            self._bytes_per_item = result.nbytes / count
        if self._bytes_per_item:
            limit = min(limit, int(self.MAX_BYTES / self._bytes_per_item))
        else:
            limit = min(limit, self.MAX_ITEMS_UNKNOWN_BYTES)
        if per_item <= 0:
            self.size = max(1, min(limit, self.GROWTH * self._measured))
            return
        trusted = max(self.GROWTH * self._measured, self.TRUSTED_SECONDS / per_item)
        self.size = max(1, int(min(self.TARGET_SECONDS / per_item, trusted, limit)))
        if self.size >= self._cap and self._cap < self.MAX_ITEMS:
            # A sized input's cap is reached: no measurement can make chunks bigger, and at
            # most 4 x workers of them remain, so probing one at a time would only leave the
            # workers idle between round trips (10k tiny items: a dozen of them).
            self.inflight_limit = math.inf


ChunkSizer = Union[FixedChunkSize, AdaptiveChunkSize]
