"""Mistakes both type checkers must flag: every line marked ``# type-error`` has an error,
and no other line does (tests/api/test_typing_user_code.py)."""

from __future__ import annotations

from typing import Iterator

import mtasklite as mt
from mtasklite.threads import pqdm


def shout(text: str, times: int = 1) -> str:
    return text.upper() * times


def words() -> Iterator[str]:
    yield "a"


def mistakes() -> None:
    with mt.StatefulThreadPoolExecutor(1) as ex:
        ex.submit(shout, 3)  # type-error
        ex.submit(shout, "x", times="2")  # type-error
        ex.submit_with_timeout(1.0, shout, 3)  # type-error
        ex.submit(shout, "fine", times=2)
        len(ex.imap(shout, words()))  # type-error
        len(ex.imap(shout, ["a"]))
    len(pqdm(words(), shout))  # type-error
    len(pqdm(["a"], shout))
