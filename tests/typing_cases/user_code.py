"""Typical user code: it must run, and pass ``mypy --strict`` and pyright with no error.

Each ``reveal_type(...)  # revealed: T`` line states what both checkers must infer
(module prefixes dropped); tests/api/test_typing_user_code.py checks them.
"""

from __future__ import annotations

import concurrent.futures
from typing import Iterator, Optional

from typing_extensions import reveal_type

import mtasklite as mt
from mtasklite.processes import pqdm as process_pqdm
from mtasklite.threads import pqdm


def square(x: int) -> int:
    return x * x


def shout(text: str, times: int = 1) -> str:
    return text.upper() * times


class Base:
    greeting = "hello"


@mt.delayed_init
class Model(Base):
    DEFAULT = "small"

    def __init__(self, name: str) -> None:
        super(Model, self).__init__()  # noqa: UP008  # the explicit form must type-check
        self.name = name

    @classmethod
    def from_name(cls, name: str) -> Model:
        return cls(name.upper())

    def __call__(self, x: int) -> str:
        return f"{self.name}:{x}"


def numbers() -> Iterator[int]:
    yield from range(3)


def main() -> None:
    with mt.StatefulThreadPoolExecutor(2) as ex:
        sized = ex.imap(square, range(3))
        reveal_type(sized)  # revealed: SizedResultIterator[int]
        assert len(sized) == 3
        assert sum(sized) == 5
        unsized = ex.imap(square, iter([1, 2]))
        reveal_type(unsized)  # revealed: ResultIterator[int]
        reveal_type(ex.imap_unordered(shout, ["a", "b"]))  # revealed: SizedResultIterator[str]
        outcomes = ex.imap(square, [1, 2], return_exceptions=True)
        reveal_type(outcomes)  # revealed: SizedResultIterator[int | BaseException]
        future = ex.submit(shout, "hi", times=2)
        reveal_type(future)  # revealed: Future[str]
        assert future.result() == "HIHI"
        timed = ex.submit_with_timeout(5.0, square, 3)
        reveal_type(timed)  # revealed: Future[int]
        assert list(ex.map(square, [1, 2], buffersize=1)) == [1, 4]
        assert concurrent.futures.wait([future]).not_done == set()
        assert timed.result() == 9

    spec = Model("m")
    reveal_type(spec)  # revealed: Model
    assert Model.DEFAULT == "small" and issubclass(Model, Base)
    alternative = Model.from_name("abc")
    with mt.StatefulThreadPoolExecutor(worker=[spec, alternative]) as ex:
        labels = ex.imap(spec, [1, 2])  # a spec where a function is expected
        reveal_type(labels)  # revealed: SizedResultIterator[str]
        assert list(labels) == ["m:1", "m:2"]
        handled = list(ex.imap(ex.worker, [1, 2]))
        assert sorted(handled) in (["ABC:1", "ABC:2"], ["ABC:1", "m:2"], ["m:1", "ABC:2"],
                                   ["m:1", "m:2"], ["ABC:2", "m:1"], ["ABC:1", "m:2"])  # fmt: skip

    results = pqdm([1, 2, 3], square, n_jobs=2, disable=True)
    reveal_type(results)  # revealed: SizedPoolResults[int | BaseException]
    assert len(results) == 3
    values = [r for r in results if not mt.is_exception(r)]
    assert values == [1, 4, 9]
    failures = [r for r in pqdm([1], square, disable=True) if mt.is_exception(r)]
    reveal_type(failures)  # revealed: list[BaseException]
    strict = pqdm(numbers(), square, 2, exception_behaviour="immediate", disable=True)
    reveal_type(strict)  # revealed: PoolResults[int]
    assert list(strict) == [0, 1, 4]
    with mt.Pool(square, 2, use_threads=True) as pool:
        pooled = pool(range(4))
        reveal_type(pooled)  # revealed: SizedPoolResults[int]
        assert len(pooled) == 4 and sum(pooled) == 14
    with mt.Pool(square, 2, exception_behavior="ignore", use_threads=True) as pool:
        ignoring = pool(range(2))
        reveal_type(ignoring)  # revealed: SizedPoolResults[int | BaseException]
        assert list(ignoring) == [0, 1]
    index: Optional[int] = mt.worker_index()
    assert index is None
    assert callable(process_pqdm)


if __name__ == "__main__":
    main()
