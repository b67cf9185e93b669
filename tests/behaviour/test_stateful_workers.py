"""Stateful workers: ``@delayed_init`` specs, the worker context (``current_worker`` /
``worker_index``), the picklable ``ex.worker`` handle, and specs that work anywhere (a spec
passed where a function is expected gets one object per worker, the decorated name stays a
real class, one object shared by several worker threads is flagged, lambda/closure specs reach
spawned workers).  Per-executor details of building workers are in ``test_thread_pool.py`` and
``test_process_pool.py``.
"""

from __future__ import annotations

import concurrent.futures
import copy
import inspect
import multiprocessing
import pickle
import sys
import threading
import warnings
from collections import Counter
from typing import Any

import cloudpickle
import pytest

import mtasklite as mt
from mtasklite.processes import pqdm as process_pqdm
from mtasklite.stateful import SPECS_KEPT_PER_WORKER, WORKER_HANDLE, WorkerContext
from support.specs import BUILT, Abstract, Base, Concrete, Model

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


# --- specs that work anywhere ---------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _clear_builds() -> None:
    BUILT.clear()


def spawn() -> Any:
    return multiprocessing.get_context("spawn")


def test_spec_as_thread_imap_function_builds_one_object_per_worker_and_never_overlaps() -> None:
    spec = Model("m")
    barrier = threading.Barrier(2, timeout=BLOCK_LIMIT)

    def both_workers_busy(x: int) -> int:  # make sure both threads serve items
        if x < 2:
            barrier.wait()
        return x

    with mt.StatefulThreadPoolExecutor(2, "mt-fh") as ex:
        assert list(ex.map(both_workers_busy, range(2))) == [0, 1]
        results = list(ex.imap(spec, range(40)))
        results += [ex.submit(spec, 5).result(BLOCK_LIMIT)]
        results += list(ex.map(spec, range(3)))
    assert [r[3] for r in results] == [*range(40), 5, 0, 1, 2]
    instances = {r[1] for r in results}
    assert 1 <= len(instances) <= 2, "one object per worker thread, not one per task"
    assert len(BUILT) == len(instances)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_spec_as_process_imap_function_builds_once_per_worker_process(method: str) -> None:
    spec = Model("m")
    ctx = multiprocessing.get_context(method)
    with mt.StatefulProcessPoolExecutor(2, mp_context=ctx) as ex:
        results = list(ex.imap(spec, range(24), chunksize=1))
        results += list(ex.imap_unordered(spec, range(8), chunksize=3))
        results += [ex.submit(spec, 100).result(BLOCK_LIMIT)]
    assert sorted(r[3] for r in results) == sorted([*range(24), *range(8), 100])
    per_pid = Counter(r[0] for r in results)
    objects = {(r[0], r[1]) for r in results}
    assert len(objects) == len(per_pid) <= 2, "one object per worker process"
    assert {r[4] for r in results} == {1}, "a worker built the spec more than once"


def test_distinct_specs_get_distinct_objects_and_pickled_copies_share_one() -> None:
    small, large = Model("small"), Model("large")
    copy = pickle.loads(pickle.dumps(small))
    with mt.StatefulThreadPoolExecutor(1, "mt-fh") as ex:
        a = ex.submit(small, 1).result(BLOCK_LIMIT)
        b = ex.submit(large, 1).result(BLOCK_LIMIT)
        c = ex.submit(copy, 1).result(BLOCK_LIMIT)
    assert a[2] == "small" and b[2] == "large"
    assert a[1] != b[1]
    assert c[1] == a[1], "a pickled copy of a spec is the same spec"
    assert sorted(BUILT) == ["large", "small"]


def test_worker_keeps_a_bounded_number_of_spec_objects() -> None:
    ctx = WorkerContext(0, None)
    specs = [Model(f"m{i}") for i in range(SPECS_KEPT_PER_WORKER + 1)]
    first = ctx.instance_for(specs[0])
    for spec in specs[1:]:
        ctx.instance_for(spec)
    assert len(BUILT) == SPECS_KEPT_PER_WORKER + 1
    assert ctx.instance_for(specs[-1]) is ctx.instance_for(specs[-1])
    assert ctx.instance_for(specs[0]) is not first, "the least recently used one was dropped"


def test_spec_called_outside_any_pool_still_builds_once() -> None:
    spec = Model("serial")
    assert spec(1)[1] == spec(2)[1]
    assert BUILT == ["serial"]


def test_decorated_class_keeps_class_behaviour() -> None:
    assert isinstance(Model, type)
    assert Model.DEFAULT == "small"
    assert issubclass(Model, Base)
    assert Model.known_names() == ["small", "large"], "a helper classmethod runs at once"
    instance = Model("x").build()
    assert isinstance(instance, Model) and isinstance(instance, Base)
    assert instance.based, "super(Model, self).__init__() ran"
    assert instance.describe() == "model+base", "zero-argument super() works"
    assert not isinstance(Model("x"), Model), "a spec is not an instance"
    assert str(inspect.signature(Model)) == "(name: 'str', scale: 'int' = 1)"
    assert str(inspect.signature(instance)) == "(x: 'int') -> 'tuple[int, int, str, int, int]'"
    assert BUILT == ["x"]


def test_classmethod_constructor_records_a_spec_run_by_the_worker() -> None:
    spec = Model.from_name("abc")
    assert isinstance(spec, mt.DelayedInit)
    assert repr(spec) == "Model.from_name('abc')"
    assert BUILT == [], "the alternative constructor must not run in the caller"
    with mt.StatefulThreadPoolExecutor(worker=spec, thread_name_prefix="mt-fh") as ex:
        _, _, name, value, _ = ex.submit(ex.worker, 2).result(BLOCK_LIMIT)
    assert (name, value) == ("ABC", 20)
    built = pickle.loads(pickle.dumps(spec)).build()
    assert type(built) is Model and built.name == "ABC"


@pytest.mark.timeout(60)
def test_classmethod_spec_runs_in_spawned_worker() -> None:
    with mt.StatefulProcessPoolExecutor(worker=Model.from_name("gpt"), mp_context=spawn()) as ex:
        assert ex.submit(ex.worker, 3).result(BLOCK_LIMIT)[2:4] == ("GPT", 30)


def test_abstract_base_with_slots_and_a_delayed_subclass() -> None:
    spec = Concrete(3)
    assert isinstance(spec, mt.DelayedInit)
    assert spec(2) == 6
    instance = spec.build()
    assert isinstance(instance, Concrete) and not hasattr(instance, "__dict__")
    with pytest.raises(TypeError, match="abstract"):
        Abstract(1).build()  # the ABC still refuses to build an abstract class


def test_instances_and_classes_pickle_by_reference() -> None:
    instance = Concrete(4).build()
    assert pickle.loads(pickle.dumps(Model)) is Model
    clone = pickle.loads(pickle.dumps(instance))
    assert type(clone) is Concrete and clone(2) == 8
    assert Model.__wrapped__("now").name == "now", "__wrapped__ builds a real instance"


def test_attribute_access_on_a_spec_explains_what_a_spec_is() -> None:
    with pytest.raises(AttributeError, match=r"Model\('m'\) is a @delayed_init spec.*'name'"):
        Model("m").name  # noqa: B018


def test_local_class_spec_round_trips_through_cloudpickle() -> None:
    @mt.delayed_init
    class Local:
        def __init__(self, k: int) -> None:
            self.k = k

        @classmethod
        def doubled(cls, k: int) -> Local:
            return cls(2 * k)

        def __call__(self, x: int) -> int:
            return x * self.k

    assert cloudpickle.loads(cloudpickle.dumps(Local.doubled(3)))(5) == 30


class Stateful:
    def __init__(self) -> None:
        self.seen: list[int] = []

    def __call__(self, x: int) -> int:
        self.seen.append(x)
        return x


def test_thread_pool_warns_when_one_instance_serves_several_workers() -> None:
    with pytest.warns(UserWarning, match="delayed_init"):
        mt.StatefulThreadPoolExecutor(2, "mt-fh", worker=Stateful()).shutdown()
    shared = Stateful()
    with pytest.warns(UserWarning, match="several worker threads"):
        mt.StatefulThreadPoolExecutor(worker=[shared, shared], thread_name_prefix="mt-f").shutdown()


def test_no_warning_for_functions_specs_or_distinct_instances() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for worker in (abs, Model("m"), [Stateful(), Stateful()], Stateful()):
            workers = 1 if isinstance(worker, Stateful) else 2
            mt.StatefulThreadPoolExecutor(workers, "mt-fh", worker=worker).shutdown()


@pytest.mark.timeout(60)
def test_lambda_and_closure_worker_specs_reach_spawned_workers() -> None:
    offset = 7

    def closure(x: int) -> int:
        return x + offset

    workers = [lambda x: x * 2, closure]
    with mt.StatefulProcessPoolExecutor(worker=workers, mp_context=spawn()) as ex:
        ex.wait_ready(BLOCK_LIMIT)
        results = set(ex.map(ex.worker, [1] * 20))
    assert results <= {2, 8} and results, results


@pytest.mark.timeout(60)
def test_pqdm_takes_a_lambda_under_spawn() -> None:
    results = process_pqdm(range(5), lambda x: x + 1, n_jobs=2, mp_context=spawn(), disable=True)
    assert list(results) == [1, 2, 3, 4, 5]


class _LazyAnnotations:
    """A classmethod's function as 3.14 presents it while its class is not bound yet: reading
    ``__annotations__`` evaluates them and fails on the class's own name."""

    def __init__(self, returns: str) -> None:
        self.returns = returns

    @property
    def __annotations__(self) -> dict[str, Any]:  # type: ignore[override]
        raise NameError(f"name {self.returns!r} is not defined")


class _FakeAnnotationlib:
    class Format:
        STRING = "string"

    @staticmethod
    def get_annotations(func: _LazyAnnotations, format: str) -> dict[str, str]:
        assert format == "string"
        return {"return": func.returns}


def test_constructor_annotation_naming_the_unbound_class_is_read_as_text(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mtasklite._spec_class import _returns_instance

    monkeypatch.setitem(sys.modules, "annotationlib", _FakeAnnotationlib())

    class Pending:
        pass

    assert _returns_instance(_LazyAnnotations("Pending"), Pending)  # type: ignore[arg-type]
    assert not _returns_instance(_LazyAnnotations("list[str]"), Pending)  # type: ignore[arg-type]
