"""The conformance runner's own rules: ``skip:`` entries are skipped (never run) with their
reason, and the rest of expected_failures.txt still lists expected failures."""

from __future__ import annotations

import importlib.util
import sys
import unittest
from pathlib import Path
from types import ModuleType

import support

CONFORMANCE = support.TESTS / "conformance"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        f"_conformance_{name}", CONFORMANCE / f"{name}.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_skip_entries_are_parsed_apart_from_expected_failures(tmp_path: Path) -> None:
    runner = load("run_stdlib_suite")
    listing = tmp_path / "expected.txt"
    listing.write_text(
        "# comment\n"
        "pkg.mod.Case.test_a  # differs on purpose\n"
        "skip: pkg.mod.*.test_b  # would hang\n"
    )
    expected, skips = runner.read_expected(listing)
    assert expected == {"pkg.mod.Case.test_a": "differs on purpose"}
    assert skips == {"pkg.mod.*.test_b": "would hang"}
    real_expected, real_skips = runner.read_expected(CONFORMANCE / "expected_failures.txt")
    assert any(p.endswith("test_broken_process_pool_traceback") for p in real_skips)
    assert all(reason for reason in [*real_expected.values(), *real_skips.values()])


def test_skipped_tests_never_run_and_carry_their_reason() -> None:
    driver = load("suite_driver")
    ran: list[str] = []

    class Sample(unittest.TestCase):  # defined here so pytest does not collect it
        def test_waits_for_ever(self) -> None:
            ran.append("waits")

        def test_fine(self) -> None:
            ran.append("fine")

    suite = unittest.TestLoader().loadTestsFromTestCase(Sample)
    driver.skip_by_design(unittest.TestSuite([suite]), {"*.Sample.test_waits_*": "would hang"})
    result = unittest.TestResult()
    suite.run(result)
    assert ran == ["fine"]
    assert [(t.id().rsplit(".", 1)[1], why) for t, why in result.skipped] == [
        ("test_waits_for_ever", "mtasklite: would hang")
    ]
