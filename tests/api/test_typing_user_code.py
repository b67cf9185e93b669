"""Types that check (issue 20): ``mypy --strict`` and pyright accept typical user code and
every README example, infer what ``# revealed:`` comments state, and flag the mistakes in
``typing_cases/user_errors.py``.  Pyright runs when it is installed (``pip install pyright``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import support

ROOT = support.ROOT
CASES = support.TESTS / "typing_cases"
USER_CODE = CASES / "user_code.py"
USER_ERRORS = CASES / "user_errors.py"
README_BLOCKS = re.findall(
    r"```python\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), flags=re.DOTALL
)
#: distributed has no type annotations: calling it is not the user's typing mistake
MYPY_ARGS = ["--strict", "--untyped-calls-exclude=distributed", "--show-error-codes"]

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def mypy_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One mypy cache for the module: the stdlib and dependencies are analysed once."""
    return tmp_path_factory.mktemp("mypy-cache")


def normalize(type_text: str) -> str:
    """A revealed type without module prefixes or spaces: both checkers' spellings agree."""
    return re.sub(r"\b(?:[A-Za-z_]\w*\.)+(?=[A-Za-z_])", "", type_text).replace(" ", "")


def expected_reveals(path: Path) -> dict[int, str]:
    found = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        match = re.match(r"\s*reveal_type\(.*#\s*revealed:\s*(.+)$", line)
        if match:
            found[number] = normalize(match.group(1))
    return found


def marked_errors(path: Path) -> set[int]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return {n for n, line in enumerate(lines, start=1) if line.endswith("# type-error")}


def write_readme_blocks(directory: Path) -> list[Path]:
    paths = []
    for index, block in enumerate(README_BLOCKS):
        path = directory / f"readme_block_{index}.py"
        path.write_text(block, encoding="utf-8")
        paths.append(path)
    return paths


def _missing(why: str) -> None:
    """Skip when a checker is not installed, except where CI says both must run."""
    if os.environ.get("MTASKLITE_REQUIRE_CHECKERS"):
        pytest.fail(why)
    pytest.skip(why)


# --- mypy ------------------------------------------------------------------------------------


def run_mypy(paths: list[Path], cache: Path) -> list[tuple[str, int, str, str]]:
    """(file name, line, "error"/"note", message) for every diagnostic."""
    version = [sys.executable, "-m", "mypy", "--version"]
    if subprocess.run(version, capture_output=True, check=False).returncode:
        _missing("mypy is not installed (pip install -e '.[dev]')")
    env = {**os.environ, "MYPYPATH": str(ROOT / "src")}
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", *MYPY_ARGS, "--cache-dir", str(cache), *map(str, paths)],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        check=False,
    )
    found = []
    for line in proc.stdout.splitlines():
        match = re.match(r"(.+?):(\d+): (error|note): (.*)", line)
        if match:
            found.append((Path(match[1]).name, int(match[2]), match[3], match[4]))
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    return found


def test_mypy_strict_accepts_user_code_and_infers_the_stated_types(mypy_cache: Path) -> None:
    diagnostics = run_mypy([USER_CODE], mypy_cache)
    errors = [d for d in diagnostics if d[2] == "error"]
    assert errors == []
    revealed = {
        line: normalize(re.sub(r'^Revealed type is "(.*)"$', r"\1", message))
        for _, line, kind, message in diagnostics
        if kind == "note" and message.startswith("Revealed type")
    }
    assert revealed == expected_reveals(USER_CODE)


def test_mypy_strict_accepts_every_readme_example(tmp_path: Path, mypy_cache: Path) -> None:
    diagnostics = run_mypy(write_readme_blocks(tmp_path), mypy_cache)
    assert [d for d in diagnostics if d[2] == "error"] == []


def test_mypy_flags_exactly_the_marked_mistakes(mypy_cache: Path) -> None:
    diagnostics = run_mypy([USER_ERRORS], mypy_cache)
    assert {line for _, line, kind, _ in diagnostics if kind == "error"} == marked_errors(
        USER_ERRORS
    )


# --- pyright ---------------------------------------------------------------------------------


def run_pyright(paths: list[Path], workdir: Path) -> list[tuple[str, int, str, str]]:
    """(file name, line, severity, message) for every diagnostic."""
    pyright = shutil.which("pyright")
    if pyright is None:
        _missing("pyright is not installed (pip install pyright)")
    config = workdir / "pyrightconfig.json"
    config.write_text(
        json.dumps({"extraPaths": [str(ROOT / "src")], "pythonVersion": "3.9"}), encoding="utf-8"
    )
    proc = subprocess.run(
        [pyright, "--outputjson", "-p", str(config), *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        _missing(f"pyright did not run: {proc.stdout[-300:]} {proc.stderr[-300:]}")
    return [
        (
            Path(d["file"]).name,
            d["range"]["start"]["line"] + 1,
            d["severity"],
            d["message"],
        )
        for d in report["generalDiagnostics"]
    ]


def test_pyright_accepts_user_code_and_infers_the_stated_types(tmp_path: Path) -> None:
    diagnostics = run_pyright([USER_CODE], tmp_path)
    assert [d for d in diagnostics if d[2] == "error"] == []
    revealed = {
        line: normalize(re.sub(r'^Type of ".*" is "(.*)"$', r"\1", message, flags=re.DOTALL))
        for _, line, severity, message in diagnostics
        if severity == "information" and message.startswith("Type of")
    }
    assert revealed == expected_reveals(USER_CODE)


def test_pyright_accepts_every_readme_example(tmp_path: Path) -> None:
    diagnostics = run_pyright(write_readme_blocks(tmp_path), tmp_path)
    assert [d for d in diagnostics if d[2] == "error"] == []


def test_pyright_flags_exactly_the_marked_mistakes(tmp_path: Path) -> None:
    diagnostics = run_pyright([USER_ERRORS], tmp_path)
    assert {line for _, line, severity, _ in diagnostics if severity == "error"} == marked_errors(
        USER_ERRORS
    )


# --- the typed user code is also correct code -------------------------------------------------


def test_user_code_runs_without_warnings() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(
        [sys.executable, "-W", "error", str(USER_CODE)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
