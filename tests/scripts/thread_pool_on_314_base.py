"""Run StatefulThreadPoolExecutor over a stdlib ThreadPoolExecutor shaped like Python 3.14's.

Run by tests/contract/test_stdlib_surface.py (in a subprocess: the patch must not leak into other
tests).  Python 3.14 changed what ``ThreadPoolExecutor.__init__`` leaves on the instance: no
``_initializer`` / ``_initargs`` any more; instead ``type(self).prepare_context(initializer,
initargs)`` returns the two callables it stores, and ``BROKEN`` is a class attribute.  This
script gives the running Python's base class that ``__init__`` (written from the 3.14 source's
behaviour), first shows that code reading the old state now fails, then drives every feature
of our thread pool that touches the base class.  It prints ``OK`` when all behaved.
"""

from __future__ import annotations

import os
import queue
import threading
from concurrent.futures import thread as stdlib_thread
from typing import Any, Callable, Optional

#: what 3.14's __init__ sets on the instance, and nothing else
SET_BY_314_INIT = {
    "_create_worker_context",
    "_resolve_work_item_task",
    "_max_workers",
    "_work_queue",
    "_idle_semaphore",
    "_threads",
    "_broken",
    "_shutdown",
    "_shutdown_lock",
    "_thread_name_prefix",
}
prepared: list[tuple[Any, ...]] = []  # every prepare_context call, to prove the patch ran


def prepare_context(
    cls: type, initializer: Optional[Callable[..., object]], initargs: tuple[Any, ...]
) -> tuple[Callable[[], Any], Callable[..., Any]]:
    """3.14's hook: validate the initializer, return (create context, resolve task)."""
    if initializer is not None and not callable(initializer):
        raise TypeError("initializer must be a callable")
    prepared.append((cls, initializer, initargs))

    def create_context() -> Any:
        raise AssertionError("the 3.14 worker context was used: only the stdlib worker uses it")

    def resolve_task(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return (fn, args, kwargs)

    return create_context, resolve_task


def init_like_314(
    self: Any,
    max_workers: Optional[int] = None,
    thread_name_prefix: str = "",
    initializer: Optional[Callable[..., object]] = None,
    initargs: tuple[Any, ...] = (),
    **ctxkwargs: Any,
) -> None:
    if max_workers is None:
        max_workers = min(32, (os.cpu_count() or 1) + 4)
    if max_workers <= 0:
        raise ValueError("max_workers must be greater than 0")
    self._create_worker_context, self._resolve_work_item_task = type(self).prepare_context(
        initializer, initargs, **ctxkwargs
    )
    self._max_workers = max_workers
    self._work_queue = queue.SimpleQueue()
    self._idle_semaphore = threading.Semaphore(0)
    self._threads = set()
    self._broken = False
    self._shutdown = False
    self._shutdown_lock = threading.Lock()
    self._thread_name_prefix = thread_name_prefix or "ThreadPoolExecutor-314"


def patch_base() -> None:
    base = stdlib_thread.ThreadPoolExecutor
    base.__init__ = init_like_314  # type: ignore[method-assign]
    base.prepare_context = classmethod(prepare_context)  # type: ignore[attr-defined]
    base.BROKEN = stdlib_thread.BrokenThreadPool  # type: ignore[attr-defined]


def old_state_is_gone() -> None:
    """The control: the running Python's own worker start reads ``_initializer``, which a
    3.14-shaped instance lacks (what broke ``StatefulThreadPoolExecutor`` on 3.14)."""
    plain = stdlib_thread.ThreadPoolExecutor(1)
    assert not hasattr(plain, "_initializer") and not hasattr(plain, "_initargs")
    try:
        plain._adjust_thread_count()
    except AttributeError as exc:
        assert "_initializer" in str(exc) or "_initargs" in str(exc), exc
    else:
        raise AssertionError("the emulated 3.14 base still has _initializer")


def exercise_our_pool() -> None:
    import mtasklite as mt
    from mtasklite.stateful import delayed_init

    @delayed_init
    class Tagger:
        def __init__(self, tag: str) -> None:
            self.tag = tag

        def __call__(self, x: int) -> str:
            return f"{self.tag}{x}"

    seen: list[str] = []
    tpe = mt.StatefulThreadPoolExecutor
    with tpe(2, "mt-314", seen.append, ("init",), worker=Tagger("w")) as ex:
        assert prepared and prepared[-1][0] is tpe, "our __init__ did not go through the 3.14 base"
        assert not hasattr(ex, "_initializer"), "the base must not set the old state"
        assert ex.submit(pow, 2, 5).result(10) == 32
        assert list(ex.map(ex.worker, range(3))) == ["w0", "w1", "w2"]
        assert list(ex.map(abs, [-1, -2, -3], buffersize=1)) == [1, 2, 3]
        assert list(ex.imap(abs, range(-40, 0), chunksize=4)) == list(range(40, 0, -1))
        assert sorted(ex.imap_unordered(abs, range(-5, 0))) == [1, 2, 3, 4, 5]
        ex.wait_ready(10)
        assert seen == ["init", "init"], seen  # the pool initializer ran once per thread
        release = threading.Event()

        def stuck() -> None:
            while not release.wait(0.01):
                pass

        late = ex.submit_with_timeout(0.2, stuck)
        try:
            late.result(10)
        except mt.TaskTimeoutError:
            pass
        else:
            raise AssertionError("the timed task did not time out")
        release.set()
        assert ex.submit(abs, -7).result(10) == 7  # the replaced thread serves
    try:
        ex.submit(abs, 1)
    except RuntimeError:
        pass
    else:
        raise AssertionError("submit after shutdown was accepted")

    def bad_init() -> None:
        raise OSError("no device")

    broken = tpe(1, "mt-314-broken", bad_init)
    failed = broken.submit(abs, 1)
    try:
        failed.result(10)
    except mt.WorkerInitError as exc:
        assert isinstance(exc.__cause__, OSError), exc.__cause__
    try:
        broken.submit(abs, 1)
    except stdlib_thread.BrokenThreadPool:
        pass
    else:
        raise AssertionError("a broken pool accepted work")
    broken.shutdown()
    try:
        tpe(1, initializer=42)  # type: ignore[arg-type]
    except TypeError:
        pass
    else:
        raise AssertionError("a non-callable initializer was accepted")


def main() -> int:
    patch_base()
    old_state_is_gone()
    exercise_our_pool()
    for thread in threading.enumerate():
        if thread.name.startswith("mt-314"):
            thread.join(10)  # the timed-out thread leaves once its task sees the release
            assert not thread.is_alive(), f"{thread.name} survived its pool"
    print("OK")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
