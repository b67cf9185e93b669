"""Resident memory of a worker process, for ``max_memory_per_child`` and ``worker_stats()``.

Guarantee: a number of bytes, or 0 when it cannot be known here; never an exception.  On
Linux the current resident set (``/proc/.../statm``); elsewhere the peak resident set of the
calling process (``getrusage``), which can only over-estimate, so a limit still holds.
"""

from __future__ import annotations

import os
import sys

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes(pid: str = "self") -> int:
    """Resident memory of process ``pid`` (``"self"``: the caller) in bytes; 0 if unknown.
    The fallback without ``/proc`` only knows the caller's own peak."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        pass
    if pid != "self":
        return 0
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB else
