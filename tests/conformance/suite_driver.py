"""Runs a stdlib test package under unittest and records every outcome as JSON lines.

Started by ``run_stdlib_suite.py`` with the conformance venv's interpreter and
``MTASKLITE_CONFORMANCE=1``; equivalent to ``python -m unittest -v [-k PATTERN] MODULE``, plus
a machine-readable record (``--results``) that survives a crash or a hang: each test's start
is written before it runs, each outcome as soon as it is known.  Stdlib only.
"""

from __future__ import annotations

import argparse
import faulthandler
import fnmatch
import json
import sys
import time
import unittest
from typing import IO, Any, Optional

_sink: Optional[IO[str]] = None
#: monotonic deadline of the whole run, and the per-test limit (0: none)
_run_deadline: Optional[float] = None
_test_timeout = 0.0


def _arm_watchdog(per_test: bool) -> None:
    """Dump every stack and exit when the current test (or the run) overstays: a test that
    would wait for ever ends the run instead, and the runner names it as still running."""
    limits = [] if _run_deadline is None else [_run_deadline - time.monotonic()]
    if per_test and _test_timeout > 0:
        limits.append(_test_timeout)
    faulthandler.cancel_dump_traceback_later()
    if limits:
        faulthandler.dump_traceback_later(max(1.0, min(limits)), exit=True)


def skip_by_design(suite: unittest.TestSuite, skips: dict[str, str]) -> None:
    """Turn each test whose id matches a pattern of ``skips`` into a skip with its reason
    (tests that assume a pool that breaks, and would wait for ever on ours)."""
    for test in suite:
        if isinstance(test, unittest.TestSuite):
            skip_by_design(test, skips)
            continue
        for pattern, reason in skips.items():
            if fnmatch.fnmatchcase(test.id(), pattern):
                skipped = unittest.skip(f"mtasklite: {reason}")(lambda: None)
                setattr(test, test._testMethodName, skipped)  # type: ignore[attr-defined]
                break


def _emit(record: dict[str, Any]) -> None:
    assert _sink is not None
    _sink.write(json.dumps(record) + "\n")
    _sink.flush()


class RecordingResult(unittest.TextTestResult):
    """``TextTestResult`` that also writes one JSON line per event to ``_sink``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._started: dict[str, float] = {}

    def _elapsed(self, test: Any) -> Optional[float]:
        start = self._started.get(test.id())
        return None if start is None else round(time.monotonic() - start, 3)

    def _record(self, test: Any, outcome: str, err: Any = None, **extra: Any) -> None:
        record: dict[str, Any] = {"event": "result", "id": test.id(), "outcome": outcome}
        record["duration"] = self._elapsed(test)
        if err is not None:
            record["traceback"] = self._exc_info_to_string(err, test)  # type: ignore[attr-defined]
        record.update(extra)
        _emit(record)

    def startTest(self, test: Any) -> None:
        self._started[test.id()] = time.monotonic()
        _emit({"event": "start", "id": test.id()})
        _arm_watchdog(per_test=True)
        super().startTest(test)

    def stopTest(self, test: Any) -> None:
        super().stopTest(test)
        _arm_watchdog(per_test=False)

    def addSuccess(self, test: Any) -> None:
        super().addSuccess(test)
        self._record(test, "pass")

    def addFailure(self, test: Any, err: Any) -> None:
        super().addFailure(test, err)
        self._record(test, "fail", err)

    def addError(self, test: Any, err: Any) -> None:
        # Also called with a placeholder "test" for errors in setUpClass/setUpModule and
        # their cleanups; its id() is then a description such as "setUpModule (pkg.mod)".
        super().addError(test, err)
        self._record(test, "error", err)

    def addSkip(self, test: Any, reason: str) -> None:
        super().addSkip(test, reason)
        self._record(test, "skip", reason=reason)

    def addExpectedFailure(self, test: Any, err: Any) -> None:
        super().addExpectedFailure(test, err)
        self._record(test, "expected_failure")

    def addUnexpectedSuccess(self, test: Any) -> None:
        super().addUnexpectedSuccess(test)
        self._record(test, "unexpected_success")

    def addSubTest(self, test: Any, subtest: Any, err: Any) -> None:
        super().addSubTest(test, subtest, err)
        if err is not None:
            outcome = "fail" if issubclass(err[0], test.failureException) else "error"
            # Attributed to the parent test, so expected_failures.txt lists test ids only.
            self._record(test, outcome, err, subtest=subtest._subDescription())


def main(argv: Optional[list[str]] = None) -> int:
    global _sink
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("module", help="test module or package, e.g. test.test_concurrent_futures")
    parser.add_argument("--results", required=True, help="JSON-lines file to write")
    parser.add_argument(
        "-k",
        dest="patterns",
        action="append",
        default=[],
        help="only tests matching this pattern (as unittest -k)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=0,
        help="dump all thread stacks and exit after this many seconds",
    )
    parser.add_argument(
        "--test-timeout",
        type=float,
        default=0,
        help="the same, once a single test has run this many seconds",
    )
    parser.add_argument(
        "--skips",
        default="{}",
        help="JSON object: test id pattern -> reason; matching tests are skipped, not run",
    )
    args = parser.parse_args(argv)

    import concurrent.futures  # after the .pth file had its say

    substitutions = getattr(concurrent.futures, "_mtasklite_substitutions", None)
    if not substitutions:
        print(
            "suite_driver: the mtasklite patch is not active (MTASKLITE_CONFORMANCE=1 unset, "
            "or the .pth file is missing); refusing to run the stock stdlib suite",
            file=sys.stderr,
        )
        return 3

    global _run_deadline, _test_timeout
    _run_deadline = time.monotonic() + args.timeout if args.timeout > 0 else None
    _test_timeout = args.test_timeout
    _arm_watchdog(per_test=False)
    skips: dict[str, str] = json.loads(args.skips)

    loader = unittest.TestLoader()
    if args.patterns:
        loader.testNamePatterns = [p if "*" in p else f"*{p}*" for p in args.patterns]
    with open(args.results, "w", encoding="utf-8") as sink:
        _sink = sink
        _emit({"event": "begin", "python": sys.version, "substitutions": substitutions})
        suite = loader.loadTestsFromName(args.module)
        skip_by_design(suite, skips)
        runner = unittest.TextTestRunner(
            stream=sys.stderr, verbosity=2, resultclass=RecordingResult
        )
        result = runner.run(suite)
        _emit({"event": "done", "tests_run": result.testsRun, "successful": result.wasSuccessful()})
    faulthandler.cancel_dump_traceback_later()
    return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
