"""The ``@delayed_init`` stateful workers (and their base classes) the tests build pools with.

Like :mod:`support.tasks`, they live in an importable module: ``spawn`` and ``forkserver``
workers rebuild a spec by importing its class by name.
"""

from __future__ import annotations

import abc
import importlib
import itertools
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any, NamedTuple, Optional

import mtasklite as mt
from support import BLOCK_LIMIT
from support.files import append_line, read_lines

# --- a worker that counts its calls and builds -----------------------------------------------


class Seen(NamedTuple):
    """What a call of a :class:`Counter` worker saw."""

    name: str
    index: Optional[int]
    pid: int
    build_id: str
    calls: int
    x: Any


@mt.delayed_init
class Counter:
    """A stateful worker that counts its own calls; every build gets a fresh ``build_id``.

    ``log``: a file to which each build appends ``"<pid> <worker index> <name> <build id>"``.
    """

    def __init__(self, name: str, log: Optional[str] = None) -> None:
        self.name = name
        self.build_id = uuid.uuid4().hex
        self.calls = 0
        if log is not None:
            append_line(log, f"{os.getpid()} {mt.worker_index()} {name} {self.build_id}")

    def __call__(self, x: Any = None) -> Seen:
        self.calls += 1
        return Seen(self.name, mt.worker_index(), os.getpid(), self.build_id, self.calls, x)


@mt.delayed_init
class Tagged:
    """A stateful worker built from its own arguments; results carry them.

    Its first call waits at ``barrier`` (if any) until every worker has an item, so the work
    is provably spread over all of them.  Each call returns ``(tag, scale * x, worker index,
    pid, calls so far)``.
    """

    def __init__(self, tag: str, scale: int = 1, barrier: Any = None) -> None:
        self.tag = tag
        self.scale = scale
        self.barrier = barrier
        self.calls = 0
        self.pid = os.getpid()

    def __call__(self, x: int) -> tuple[str, int, Optional[int], int, int]:
        if self.calls == 0 and self.barrier is not None:
            self.barrier.wait(BLOCK_LIMIT)
        self.calls += 1
        return self.tag, self.scale * x, mt.worker_index(), os.getpid(), self.calls


@mt.delayed_init
class Worker:
    """The upstream README's worker: built once per worker with its id."""

    def __init__(self, worker_id: int) -> None:
        self.worker_id = worker_id

    def __call__(self, x: int) -> int:
        if x < 0:
            raise ValueError(f"negative input {x}")
        return x * x


# --- builds that fail, die or take long ------------------------------------------------------


@mt.delayed_init
class FailingBuild:
    def __init__(self, name: str) -> None:
        raise ValueError(f"cannot load {name}")

    def __call__(self, x: Any) -> Any:  # pragma: no cover - never built
        return x


@mt.delayed_init
class ExitingBuild:
    """Its constructor kills the worker process (exit code 5)."""

    def __init__(self) -> None:
        os._exit(5)

    def __call__(self, x: Any) -> Any:  # pragma: no cover - never built
        return x


@mt.delayed_init
class GatedBuild:
    """Its constructor waits until the parent sets ``gate`` (a slow model load)."""

    def __init__(self, gate: Any) -> None:
        gate.wait(BLOCK_LIMIT)
        self.build_id = uuid.uuid4().hex

    def __call__(self, x: Any) -> Any:
        return x


@mt.delayed_init
class NamedModel:
    """A stateful worker that answers ``(name, x)``; ``fail=True`` makes its constructor
    raise."""

    def __init__(self, name: str, fail: bool = False) -> None:
        if fail:
            raise RuntimeError(f"cannot load model {name}")
        self.name = name

    def __call__(self, x: Any) -> tuple[str, Any]:
        return self.name, x


@mt.delayed_init
class SlowRebuild:
    """Builds at once the first time; every later build (a replacement) logs its pid and waits
    until ``release_file`` exists (a slow model load the OOM killer may cut short)."""

    def __init__(self, log: str, release_file: str) -> None:
        earlier = read_lines(log)
        append_line(log, str(os.getpid()))
        if earlier:
            deadline = time.monotonic() + BLOCK_LIMIT
            while not Path(release_file).exists() and time.monotonic() < deadline:
                time.sleep(0.01)  # sleep-ok: polling a file under a deadline

    def __call__(self, x: Any) -> Any:
        return x


@mt.delayed_init
class GpuWorker:
    """The GPU-per-worker recipe: pick the device *before* importing the framework.

    ``__init__`` sets ``CUDA_VISIBLE_DEVICES`` and only then imports the (fake) framework,
    which reads the variable once, at import time, as CUDA runtimes do.
    """

    def __init__(self, device: str) -> None:
        os.environ["CUDA_VISIBLE_DEVICES"] = device
        self.framework = importlib.import_module("support.fakegpu")

    def __call__(self, x: Any) -> tuple[Optional[int], int, str, Any]:
        return mt.worker_index(), os.getpid(), self.framework.DEVICES_AT_IMPORT, x


# --- teardown: close() -----------------------------------------------------------------------


@mt.delayed_init
class Closable:
    """A stateful worker that logs ``closed <pid>`` to ``log`` when closed (and raises then
    if ``fail``)."""

    def __init__(self, log: str, fail: bool = False) -> None:
        self.log = log
        self.fail = fail

    def __call__(self, x: Any) -> int:
        return os.getpid()

    def close(self) -> None:
        append_line(self.log, f"closed {os.getpid()}")
        if self.fail:
            raise RuntimeError("close failed")


@mt.delayed_init
class GatedClose:
    """A stateful worker whose ``close()`` logs ``closing <pid>``, waits until the file
    ``gate`` exists (a gate never opened: a teardown that hangs until SIGKILLed), then logs
    ``closed <pid>``."""

    def __init__(self, log: str, gate: str) -> None:
        self.log = log
        self.gate = gate

    def __call__(self, x: Any) -> int:
        return os.getpid()

    def close(self) -> None:
        append_line(self.log, f"closing {os.getpid()}")
        while not os.path.exists(self.gate):
            time.sleep(0.01)  # sleep-ok: polls the test's gate file
        append_line(self.log, f"closed {os.getpid()}")


# --- a decorated class is still a class ------------------------------------------------------

#: constructor calls of :class:`Model` made in *this* process (each worker process has its own)
BUILT: list[str] = []
_built_lock = threading.Lock()


class Base:
    def __init__(self) -> None:
        self.based = True

    def describe(self) -> str:
        return "base"


@mt.delayed_init
class Model(Base):
    """A stateful worker that notices overlapping calls and counts its builds."""

    DEFAULT = "small"

    def __init__(self, name: str, scale: int = 1) -> None:
        super(Model, self).__init__()  # noqa: UP008  # the explicit form: Model is the class
        with _built_lock:
            BUILT.append(name)
        self.name = name
        self.scale = scale
        self.calls = 0
        self._busy = threading.Lock()

    def describe(self) -> str:
        return f"model+{super().describe()}"

    @classmethod
    def from_name(cls, name: str) -> Model:
        """An alternative constructor, as ``from_pretrained`` is."""
        return cls(name.upper(), scale=10)

    @classmethod
    def known_names(cls) -> list[str]:
        return [cls.DEFAULT, "large"]

    def __call__(self, x: int) -> tuple[int, int, str, int, int]:
        """(pid, object id, name, result, builds of this name so far in this process)"""
        if not self._busy.acquire(blocking=False):
            raise RuntimeError("two calls overlapped on one Model instance")
        try:
            self.calls += 1
            with _built_lock:
                builds = BUILT.count(self.name)
            return os.getpid(), id(self), self.name, x * self.scale, builds
        finally:
            self._busy.release()


@mt.delayed_init
class Abstract(abc.ABC):
    __slots__ = ("k",)

    def __init__(self, k: int) -> None:
        self.k = k

    @abc.abstractmethod
    def __call__(self, x: int) -> int: ...


@mt.delayed_init
class Concrete(Abstract):
    __slots__ = ()

    def __call__(self, x: int) -> int:
        return self.k * x


# --- a thread-pool worker that records where it was built -------------------------------------


class EventLog:
    """Thread-safe ordered record of what happened where."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.items: list[tuple[Any, ...]] = []

    def add(self, *item: Any) -> None:
        with self._lock:
            self.items.append(item)

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        with self._lock:
            return [i for i in self.items if i[0] == kind]

    def clear(self) -> None:
        with self._lock:
            self.items.clear()


#: the builds of :class:`LoggedModel` in this process (cleared before every test)
BUILD_EVENTS = EventLog()
_serials = itertools.count(1)


@mt.delayed_init
class LoggedModel:
    """Records its construction (``"build"``, thread, worker index, name) in
    :data:`BUILD_EVENTS` and gets a unique serial; waits for ``gate`` first, then raises if
    ``fail`` (thread pools: the log is this process's)."""

    def __init__(
        self, name: str, gate: Optional[threading.Event] = None, fail: bool = False
    ) -> None:
        if gate is not None:
            gate.wait(BLOCK_LIMIT)
        BUILD_EVENTS.add("build", threading.current_thread().name, mt.worker_index(), name)
        if fail:
            raise ValueError(f"cannot load {name}")
        self.name = name
        self.serial = next(_serials)

    def __call__(self, x: Any) -> tuple[str, Any]:
        return self.name, x


def logged_whoami(_: Any = None) -> tuple[Optional[int], str, int]:
    """(worker index, worker object's name, its serial) of the calling worker."""
    obj = mt.current_worker()
    return mt.worker_index(), obj.name, obj.serial
