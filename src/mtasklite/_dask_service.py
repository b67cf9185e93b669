"""The Dask executor's service thread: batched cancellations, pinned workers, final cleanup.

Guarantee: Dask futures handed to :meth:`Service.cancel` are cancelled in batches (one
scheduler round trip each); while calls are in flight the executor's pinned specs are
checked about every ``HEALTH_INTERVAL`` seconds; once the executor is shut down (or
collected) and idle, every Dask worker drops the objects it built for it, and the thread
exits.  A wake-up is never lost.
"""

from __future__ import annotations

import threading
import time
import weakref
from typing import Any, Optional, Protocol

from ._dask_worker import forget

__all__ = ["HEALTH_INTERVAL", "Service", "ServiceHost"]

#: Seconds between checks that the workers hosting pinned specs are alive.
HEALTH_INTERVAL = 1.0


class ServiceHost(Protocol):
    """What the service thread needs of its executor."""

    def _has_calls(self) -> bool: ...

    def _check_slots(self) -> None: ...


class Service:
    """The executor's daemon thread: batches Dask cancellations, follows pinned workers, and
    clears the workers' state once the executor is shut down and idle."""

    def __init__(self, executor: ServiceHost, client: Any, token: str, pinned: bool):
        self._executor_ref = weakref.ref(executor, lambda _: self.wake())
        self._client = client
        self._token = token
        self._pinned = pinned
        self._cond = threading.Condition()
        self._cancels: list[Any] = []
        self._thread: Optional[threading.Thread] = None
        self._stopping = False
        self._kicked = False  # a wake-up arrived since the thread last looked: never lose one

    def ensure_started(self) -> None:
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="mtasklite-dask-service", daemon=True
                )
                self._thread.start()

    def cancel(self, dask_future: Any) -> None:
        with self._cond:
            self._cancels.append(dask_future)
            self._kick()

    def wake(self) -> None:
        with self._cond:
            self._kick()

    def stop(self, wait: bool) -> None:
        with self._cond:
            self._stopping = True
            thread = self._thread
            self._kick()
        if wait and thread is not None and thread is not threading.current_thread():
            thread.join()

    def _kick(self) -> None:
        self._kicked = True
        self._cond.notify()

    def _run(self) -> None:
        next_check = time.monotonic() + HEALTH_INTERVAL
        while True:
            with self._cond:
                if not self._kicked:
                    timeout = max(0.0, next_check - time.monotonic()) if self._pinned else None
                    self._cond.wait(timeout)
                self._kicked = False
                batch, self._cancels = self._cancels, []
                stopping = self._stopping
            if batch:
                try:
                    self._client.cancel(batch)
                except Exception:
                    pass  # client closed: its futures are gone anyway
                del batch
            executor = self._executor_ref()
            busy = executor is not None and executor._has_calls()
            now = time.monotonic()
            if self._pinned and now >= next_check:
                next_check = now + HEALTH_INTERVAL
                if executor is not None and busy:
                    try:
                        executor._check_slots()
                    except Exception:
                        pass  # scheduler unreachable right now: try again next round
            del executor
            if not busy and (stopping or self._executor_ref() is None):
                with self._cond:
                    if self._cancels:
                        continue
                break
        try:
            self._client.run(forget, self._token)
        except Exception:
            pass  # client or cluster already closed: nothing left to clear
