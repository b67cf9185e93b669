"""How many workers a pool gets when the caller does not say."""

from __future__ import annotations

import os
from typing import Callable, Optional


def usable_cpu_count() -> int:
    """The CPUs this process may use, at least 1.

    ``os.process_cpu_count()`` where it exists (Python 3.13+: it honours the CPU affinity mask
    and ``PYTHON_CPU_COUNT``), as the stdlib executors count them there; ``os.cpu_count()``
    before.
    """
    counter: Callable[[], Optional[int]] = getattr(os, "process_cpu_count", os.cpu_count)
    return counter() or 1


def default_thread_workers() -> int:
    """The stdlib thread pool's default size: CPUs + 4 (for I/O-bound work), at most 32."""
    return min(32, usable_cpu_count() + 4)
