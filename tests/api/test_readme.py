"""README examples run as written, and the README starts with the two promised commands."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import support

README = support.ROOT / "README.md"
TEXT = README.read_text(encoding="utf-8")
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", TEXT, flags=re.DOTALL)


def test_readme_starts_with_install_demo_and_test_commands() -> None:
    bash_blocks = re.findall(r"```bash\n(.*?)```", TEXT, flags=re.DOTALL)
    assert bash_blocks[:2] == [
        "python3 -m pip install -e . && python3 -m mtasklite\n",
        "python3 -m pip install -e '.[test]' && python3 -m pytest\n",
    ]
    # Nothing but the title and the one-line summary before the first command.
    assert TEXT.index("```bash") < TEXT.index("\n## ")


def test_ci_runs_exactly_the_readme_test_command() -> None:
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert "python3 -m pip install -e '.[test]' && python3 -m pytest\n" in ci


@pytest.mark.timeout(120)
@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)))
def test_readme_python_example_runs(index: int, tmp_path: Path) -> None:
    script = tmp_path / f"readme_example_{index}.py"
    script.write_text(PYTHON_BLOCKS[index], encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=support.child_env(tests=False),  # this checkout's mtasklite, whatever the cwd
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert proc.returncode == 0, f"example {index} failed:\n{proc.stdout}\n{proc.stderr}"


def test_demo_runs_and_reports_each_worker() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mtasklite", "--items", "20000"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("worker ")]
    # Normally both workers report; a loaded machine may let one worker take everything.
    assert 1 <= len(lines) <= 2
    served = [int(re.search(r"served (\d+) sentences", line).group(1)) for line in lines]  # type: ignore[union-attr]
    assert sum(served) == 20000
    assert "tokenising" in proc.stderr  # the tqdm bar
