"""``delayed_init`` specs, the worker context (``current_worker`` / ``worker_index``) and the
picklable ``ex.worker`` handle."""

from __future__ import annotations

import concurrent.futures
import copy
import pickle
import threading

import cloudpickle
import pytest

import mtasklite as mt
from mtasklite.stateful import WORKER_HANDLE

BLOCK_LIMIT = 10.0


class BuildLog:
    """Thread-safe record of constructor calls."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: list[tuple[str, tuple[object, ...]]] = []

    def add(self, name: str, *args: object) -> None:
        with self._lock:
            self.calls.append((name, args))

    def count(self, name: str) -> int:
        with self._lock:
            return sum(1 for n, _ in self.calls if n == name)

    def clear(self) -> None:
        with self._lock:
            self.calls.clear()


BUILDS = BuildLog()


@pytest.fixture(autouse=True)
def _reset_builds() -> None:
    BUILDS.clear()


@mt.delayed_init
class Greeter:
    """A stateful worker: counts its own calls."""

    def __init__(self, lang: str, punct: str = "!") -> None:
        BUILDS.add("Greeter", lang)
        self.lang = lang
        self.punct = punct
        self.calls = 0
        self.lock = threading.Lock()  # makes an *instance* unpicklable

    def __call__(self, name: str) -> str:
        self.calls += 1
        return f"{self.lang}:{name}{self.punct}#{self.calls}"


@mt.delayed_init
class Failing:
    def __init__(self) -> None:
        raise ValueError("no")


@mt.delayed_init
class WithReduce:
    """A class that customises its own pickling (legitimate and not rare)."""

    def __init__(self, x: int) -> None:
        self.x = x

    def __reduce__(self) -> tuple[object, ...]:
        return (WithReduce.__wrapped__, (self.x,))

    def __call__(self) -> int:
        return self.x


def plain_double(x: int) -> int:
    return 2 * x


# --- delayed_init specs ----------------------------------------------------------------------


def test_calling_decorated_class_returns_spec_not_instance() -> None:
    spec = Greeter("en")
    assert isinstance(spec, mt.DelayedInit)
    assert not isinstance(spec, Greeter)
    assert BUILDS.count("Greeter") == 0, "recording a spec must not run the constructor"
    assert spec.args == ("en",)
    assert spec.kwargs == {}
    assert spec.cls is Greeter


def test_decorated_class_is_a_delayed_init_class() -> None:
    assert isinstance(Greeter, mt.DelayedInitClass)
    assert Greeter.__name__ == "Greeter"
    assert Greeter.__doc__ == "A stateful worker: counts its own calls."


def test_spec_repr_looks_like_the_constructor_call() -> None:
    assert repr(Greeter("en")) == "Greeter('en')"
    assert repr(Greeter("en", punct="?")) == "Greeter('en', punct='?')"
    assert repr(Greeter(lang="fr")) == "Greeter(lang='fr')"


def test_build_returns_a_new_real_instance_each_time() -> None:
    spec = Greeter("en")
    a, b = spec.build(), spec.build()
    assert isinstance(a, Greeter)
    assert type(a) is Greeter
    assert a is not b
    assert (a.lang, a.punct) == ("en", "!")
    assert BUILDS.count("Greeter") == 2


def test_calling_spec_directly_builds_once_and_keeps_state() -> None:
    spec = Greeter("en")
    assert spec("ann") == "en:ann!#1"
    assert spec("bob") == "en:bob!#2"
    assert spec("cid") == "en:cid!#3"
    assert BUILDS.count("Greeter") == 1


def test_calling_spec_from_many_threads_builds_once() -> None:
    spec = Greeter("en")
    n = 8
    barrier = threading.Barrier(n, timeout=BLOCK_LIMIT)

    def call() -> str:
        barrier.wait()
        return spec("x")

    with concurrent.futures.ThreadPoolExecutor(n, thread_name_prefix="mt-serial") as ex:
        results = [f.result(BLOCK_LIMIT) for f in [ex.submit(call) for _ in range(n)]]
    assert BUILDS.count("Greeter") == 1
    assert len(results) == n


def test_constructor_error_surfaces_on_serial_call_not_on_spec_creation() -> None:
    spec = Failing()  # recording must not raise
    with pytest.raises(ValueError, match="no"):
        spec()


@pytest.mark.parametrize("protocol", range(2, pickle.HIGHEST_PROTOCOL + 1))
def test_spec_pickle_round_trip(protocol: int) -> None:
    spec = Greeter("en", punct="?")
    clone = pickle.loads(pickle.dumps(spec, protocol=protocol))
    assert isinstance(clone, mt.DelayedInit)
    assert repr(clone) == "Greeter('en', punct='?')"
    assert clone.cls is Greeter
    assert BUILDS.count("Greeter") == 0, "unpickling must not build an instance"
    assert clone("ann") == "en:ann?#1"


def test_pickled_spec_carries_no_instance_even_after_serial_use() -> None:
    spec = Greeter("en")
    spec("ann")
    spec("bob")  # the serially built instance holds a lock and two calls of state
    clone = pickle.loads(pickle.dumps(spec))
    assert clone("cid") == "en:cid!#1", "the clone must build its own fresh instance"
    assert BUILDS.count("Greeter") == 2


def test_decorated_class_pickles_by_reference() -> None:
    assert pickle.loads(pickle.dumps(Greeter)) is Greeter


def test_spec_cloudpickle_round_trip() -> None:
    clone = cloudpickle.loads(cloudpickle.dumps(Greeter("de")))
    assert repr(clone) == "Greeter('de')"
    assert isinstance(clone.build(), Greeter)


def test_spec_of_local_class_round_trips_with_cloudpickle() -> None:
    @mt.delayed_init
    class Local:
        def __init__(self, k: int) -> None:
            self.k = k

        def __call__(self, x: int) -> int:
            return x * self.k

    clone = cloudpickle.loads(cloudpickle.dumps(Local(3)))
    assert clone(5) == 15


def test_spec_of_class_with_custom_reduce_pickles() -> None:
    clone = pickle.loads(pickle.dumps(WithReduce(7)))
    assert clone() == 7


def test_delayed_init_rejects_non_callable() -> None:
    with pytest.raises(TypeError):
        mt.delayed_init(42)  # type: ignore[arg-type]


# --- worker context --------------------------------------------------------------------------


def context() -> tuple[object, object]:
    return mt.worker_index(), mt.current_worker()


def test_context_is_none_outside_any_pool() -> None:
    assert mt.current_worker() is None
    assert mt.worker_index() is None


def test_context_is_none_in_plain_threads_and_stdlib_pools() -> None:
    out: list[tuple[object, object]] = []
    t = threading.Thread(target=lambda: out.append(context()), name="mt-plain")
    t.start()
    t.join(BLOCK_LIMIT)
    assert out == [(None, None)]
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="mt-stdlib") as ex:
        assert ex.submit(context).result(BLOCK_LIMIT) == (None, None)


def test_context_inside_stateful_worker(prefix: str) -> None:
    with mt.StatefulThreadPoolExecutor(1, prefix, worker=Greeter("en")) as ex:
        index, obj = ex.submit(context).result(BLOCK_LIMIT)
        assert index == 0
        assert isinstance(obj, Greeter)
        assert obj.lang == "en"
        # the same object on the next task
        assert ex.submit(context).result(BLOCK_LIMIT)[1] is obj
    assert mt.current_worker() is None, "the caller's context is untouched"


def test_context_with_plain_callable_worker(prefix: str) -> None:
    with mt.StatefulThreadPoolExecutor(1, prefix, worker=plain_double) as ex:
        assert ex.submit(context).result(BLOCK_LIMIT) == (0, plain_double)


def test_worker_index_in_pool_without_worker_objects(prefix: str) -> None:
    with mt.StatefulThreadPoolExecutor(1, prefix) as ex:
        assert ex.submit(context).result(BLOCK_LIMIT) == (0, None)


def test_pool_workers_do_not_share_the_serial_instance(prefix: str) -> None:
    spec = Greeter("en")
    assert spec("serial") == "en:serial!#1"
    with mt.StatefulThreadPoolExecutor(1, prefix, worker=spec) as ex:
        assert ex.submit(ex.worker, "pool").result(BLOCK_LIMIT) == "en:pool!#1"
    assert spec("serial") == "en:serial!#2"
    assert BUILDS.count("Greeter") == 2


# --- ex.worker handle ------------------------------------------------------------------------


def test_worker_handle_is_picklable_singleton(prefix: str) -> None:
    with mt.StatefulThreadPoolExecutor(1, prefix, worker=Greeter("en")) as ex:
        handle = ex.worker
        assert isinstance(handle, mt.WorkerHandle)
        assert pickle.loads(pickle.dumps(handle)) is handle
        assert cloudpickle.loads(cloudpickle.dumps(handle)) is handle
        assert copy.deepcopy(handle) is handle
        assert handle is WORKER_HANDLE


def test_worker_handle_calls_the_running_workers_object(prefix: str) -> None:
    with mt.StatefulThreadPoolExecutor(1, prefix, worker=Greeter("en")) as ex:
        assert ex.submit(ex.worker, "ann").result(BLOCK_LIMIT) == "en:ann!#1"
        assert list(ex.map(ex.worker, ["bob", "cid"])) == ["en:bob!#2", "en:cid!#3"]
        assert list(ex.imap(ex.worker, ["dan"])) == ["en:dan!#4"]
    assert BUILDS.count("Greeter") == 1


def test_worker_handle_routes_to_each_workers_own_object(prefix: str) -> None:
    langs = ["en", "fr", "de"]
    barrier = threading.Barrier(len(langs), timeout=BLOCK_LIMIT)

    def task(name: str) -> tuple[object, str]:
        barrier.wait()  # forces the three tasks onto three distinct workers
        return mt.worker_index(), pickle.loads(pickle.dumps(handle))(name)

    with mt.StatefulThreadPoolExecutor(
        thread_name_prefix=prefix, worker=[Greeter(lang) for lang in langs]
    ) as ex:
        handle = ex.worker
        results = [f.result(BLOCK_LIMIT) for f in [ex.submit(task, "x") for _ in langs]]
    assert sorted(results) == [(0, "en:x!#1"), (1, "fr:x!#1"), (2, "de:x!#1")]


def test_worker_handle_with_plain_callable(prefix: str) -> None:
    with mt.StatefulThreadPoolExecutor(2, prefix, worker=plain_double) as ex:
        assert list(ex.map(ex.worker, range(5))) == [0, 2, 4, 6, 8]


def test_worker_handle_outside_a_pool_raises_runtime_error(prefix: str) -> None:
    with mt.StatefulThreadPoolExecutor(1, prefix, worker=Greeter("en")) as ex:
        handle = ex.worker
        with pytest.raises(RuntimeError, match="outside a pool worker"):
            handle("ann")
    assert BUILDS.count("Greeter") == 0


def test_worker_handle_inside_a_pool_without_worker_objects_raises(prefix: str) -> None:
    with mt.StatefulThreadPoolExecutor(1, prefix) as ex:
        fut = ex.submit(WORKER_HANDLE, "ann")
        with pytest.raises(RuntimeError):
            fut.result(BLOCK_LIMIT)


def test_worker_attribute_missing_without_worker_argument(prefix: str) -> None:
    with mt.StatefulThreadPoolExecutor(1, prefix) as ex:
        with pytest.raises(AttributeError, match="worker="):
            _ = ex.worker
        assert not hasattr(ex, "worker")
