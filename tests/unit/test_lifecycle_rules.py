"""The executor life-cycle decision (``mtasklite._lifecycle``), without starting a pool."""

from __future__ import annotations

import itertools

import pytest

from mtasklite import _lifecycle
from mtasklite._lifecycle import (
    EXIT_MESSAGE,
    SHUTDOWN_MESSAGE,
    WAIT_AFTER_SHUTDOWN_MESSAGE,
    ExecutorLifecycle,
    Refusal,
    refusal,
)


@pytest.mark.parametrize(
    ("broken", "shut_down", "exiting"), itertools.product([False, True], repeat=3)
)
def test_breakage_beats_shutdown_beats_interpreter_exit(
    broken: bool, shut_down: bool, exiting: bool
) -> None:
    expected = (
        Refusal.BROKEN
        if broken
        else Refusal.SHUT_DOWN
        if shut_down
        else Refusal.EXITING
        if exiting
        else None
    )
    assert refusal(broken, shut_down, exiting) is expected


class _Pool(ExecutorLifecycle):
    def __init__(self, broken: bool = False, shut_down: bool = False) -> None:
        self.broken = broken
        self.shut_down = shut_down

    def _is_broken(self) -> bool:
        return self.broken

    def _is_shut_down(self) -> bool:
        return self.shut_down

    def _broken_error(self) -> BaseException:
        return LookupError("broken by the test")


def test_an_open_pool_accepts() -> None:
    pool = _Pool()
    assert pool._accepting()
    pool._check_accepting()  # no exception


def test_a_broken_pool_raises_its_own_error_even_after_shutdown() -> None:
    pool = _Pool(broken=True, shut_down=True)
    assert not pool._accepting()
    with pytest.raises(LookupError, match="broken by the test"):
        pool._check_accepting()


def test_a_shut_down_pool_raises_the_stdlib_words_or_the_callers_message() -> None:
    pool = _Pool(shut_down=True)
    with pytest.raises(RuntimeError) as info:
        pool._check_accepting()
    assert str(info.value) == SHUTDOWN_MESSAGE
    assert str(info.value).startswith("cannot schedule new futures after shutdown")
    with pytest.raises(RuntimeError, match=f"^{WAIT_AFTER_SHUTDOWN_MESSAGE}$"):
        pool._check_accepting(WAIT_AFTER_SHUTDOWN_MESSAGE)


def test_an_exiting_interpreter_refuses_new_work(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_lifecycle, "interpreter_exiting", lambda: True)
    pool = _Pool()
    assert not pool._accepting()
    with pytest.raises(RuntimeError, match=f"^{EXIT_MESSAGE}$"):
        pool._check_accepting()
