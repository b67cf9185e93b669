"""What a gracefully stopped worker prints on its way out.

What users rely on: Ctrl-C, ``terminate()`` or a timeout leave no traceback on the terminal.
The pool may send a worker a second SIGTERM while the worker is already exiting by the
first; Python reports such a signal, when it lands as the handler is being switched, as an
``OSError`` "ignored due to race condition" through ``sys.unraisablehook``.  A stopping
worker drops exactly that report and still reports any other unraisable error.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from mtasklite._procpool import child


class _RaisesWhenCollected:
    def __init__(self, error: BaseException) -> None:
        self.error = error

    def __del__(self) -> None:
        raise self.error


@pytest.fixture
def stopping_worker_hook() -> Iterator[None]:
    saved = sys.unraisablehook
    sys.unraisablehook = child._quiet_about_signal_races
    try:
        yield
    finally:
        sys.unraisablehook = saved


@pytest.mark.usefixtures("stopping_worker_hook")
def test_the_signal_race_report_is_dropped(capsys: pytest.CaptureFixture[str]) -> None:
    doomed = _RaisesWhenCollected(OSError("Signal 15 ignored due to race condition"))
    del doomed
    assert capsys.readouterr().err == ""


@pytest.mark.usefixtures("stopping_worker_hook")
def test_other_unraisable_errors_are_still_reported(capsys: pytest.CaptureFixture[str]) -> None:
    doomed = _RaisesWhenCollected(OSError("disk full while closing a task's file"))
    del doomed
    other = _RaisesWhenCollected(ValueError("a task's __del__ failed"))
    del other
    err = capsys.readouterr().err
    assert "disk full while closing" in err
    assert "a task's __del__ failed" in err
