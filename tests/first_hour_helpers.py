"""Importable classes and functions for the first-hour tests (spawned workers import them)."""

from __future__ import annotations

import abc
import os
import threading
import time

import mtasklite as mt

#: constructor calls made in *this* process (each worker process has its own)
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


def nap_on_three(x: int) -> int:
    """Hangs on item 3 until its worker process is stopped (a timed task that overruns)."""
    if x == 3:
        time.sleep(3600)  # sleep-ok: stopped by the task timeout, never waited for
    return x
