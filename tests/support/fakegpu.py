"""A stand-in for a GPU framework (torch, jax, ...): it reads ``CUDA_VISIBLE_DEVICES`` once,
when it is first imported, and never again, as CUDA runtimes do.  Only worker processes
import it (see :class:`support.specs.GpuWorker`)."""

from __future__ import annotations

import os

#: the device list this process's "framework" was initialised with
DEVICES_AT_IMPORT: str = os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")
