#!/usr/bin/env python3
"""Run CPython's own ``test.test_concurrent_futures`` against mtasklite's executors.

``concurrent.futures.ThreadPoolExecutor`` (and ``ProcessPoolExecutor``, once mtasklite has a
``StatefulProcessPoolExecutor``) are replaced by mtasklite's classes in a throwaway venv
(default ``build/conformance-venv-3.X``), in every interpreter started there while
``MTASKLITE_CONFORMANCE=1`` is set, including the isolated (``-I``) interpreters the stdlib
tests spawn.  The run passes iff every failing or erroring test is listed in
``expected_failures.txt``.

Usage, from the repository root (stdlib only, any Python >= 3.9 runs it):

    python3 tests/conformance/run_stdlib_suite.py [--python PATH] [--only PATTERN] ...

See tests/conformance/README.md.
"""

from __future__ import annotations

import argparse
import fnmatch
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
DEFAULT_VERSION = "3.13"
SUITE = "test.test_concurrent_futures"
ENV_FLAG = "MTASKLITE_CONFORMANCE"
PATCH_MODULE = "mtasklite_conformance_patch"
# Sorts after every other .pth file (site.py processes them in sorted order), so the editable
# install's path entry is in place before the patch imports mtasklite.
PTH_NAME = "zz_mtasklite_conformance.pth"
PTH_LINE = f"import os; os.environ.get({ENV_FLAG!r}) == '1' and __import__({PATCH_MODULE!r})\n"
STAMP_NAME = "mtasklite-conformance.json"
FAILED_OUTCOMES = ("fail", "error", "unexpected_success")


def log(message: str) -> None:
    print(f"[conformance] {message}", flush=True)


# -- finding an interpreter ------------------------------------------------------------------


def _runs(python: str, version: str) -> bool:
    check = f"import sys; assert sys.version_info[:2] == ({version.replace('.', ', ')})"
    try:
        proc = subprocess.run([python, "-c", check], capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return proc.returncode == 0


def _version_key(path: str) -> tuple[int, ...]:
    match = re.search(r"/versions/(\d+(?:\.\d+)*)", path)
    return tuple(int(p) for p in match.group(1).split(".")) if match else ()


def find_python(version: str) -> Optional[str]:
    """``pythonX.Y`` on PATH if it really runs, else the newest pyenv-installed X.Y."""
    on_path = shutil.which(f"python{version}")
    if on_path and _runs(on_path, version):
        return on_path
    root = None
    if shutil.which("pyenv"):
        try:
            proc = subprocess.run(
                ["pyenv", "root"], capture_output=True, text=True, timeout=60, check=False
            )
            root = proc.stdout.strip() if proc.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            root = None
    if not root or not os.path.isdir(os.path.join(root, "versions")):
        fallback = os.path.expanduser("~/.pyenv")
        root = fallback if os.path.isdir(os.path.join(fallback, "versions")) else None
    if root is None:
        return None
    pattern = os.path.join(root, "versions", f"{version}*", "bin", f"python{version}")
    for candidate in sorted(glob.glob(pattern), key=_version_key, reverse=True):
        if _runs(candidate, version):
            return candidate
    return None


# -- the throwaway venv ----------------------------------------------------------------------


def _query(python: str, code: str) -> Any:
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def _fingerprint(python: str) -> dict[str, Any]:
    info: dict[str, Any] = _query(
        python,
        "import json, sys, os; print(json.dumps({'version': sys.version, "
        "'base': os.path.realpath(sys.base_prefix)}))",
    )
    pyproject = (REPO / "pyproject.toml").read_bytes()
    info["pyproject_sha256"] = hashlib.sha256(pyproject).hexdigest()
    info["repo"] = str(REPO)
    return info


def _site_packages(venv_python: str) -> Path:
    return Path(
        _query(
            venv_python,
            "import json, sysconfig; print(json.dumps(sysconfig.get_paths()['purelib']))",
        )
    )


def prepare_venv(python: str, venv: Path, recreate: bool) -> str:
    """Create or reuse ``venv``; install mtasklite (editable) and the start-up patch."""
    venv_python = venv / "bin" / "python"
    stamp = venv / STAMP_NAME
    wanted = _fingerprint(python)
    current = None
    if not recreate and stamp.is_file() and venv_python.exists():
        try:
            current = json.loads(stamp.read_text(encoding="utf-8"))
        except ValueError:
            current = None
    if current != wanted:
        if venv.exists():
            log(f"recreating {venv}")
            shutil.rmtree(venv)
        else:
            log(f"creating {venv}")
        venv.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
        # Editable: later runs see source changes without reinstalling.
        subprocess.run(
            [
                str(venv_python),
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "-q",
                "-e",
                str(REPO),
            ],
            check=True,
        )
        stamp.write_text(json.dumps(wanted, indent=1) + "\n", encoding="utf-8")
    else:
        log(f"reusing {venv}")
    site = _site_packages(str(venv_python))
    # Rewritten every run, so template edits take effect at once.
    shutil.copyfile(HERE / "sitepatch_template.py", site / f"{PATCH_MODULE}.py")
    (site / PTH_NAME).write_text(PTH_LINE, encoding="utf-8")
    return str(venv_python)


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env[ENV_FLAG] = "1"
    return env


def probe_substitutions(venv_python: str) -> list[list[str]]:
    """What the patch substitutes, as seen by an isolated (-I) interpreter."""
    proc = subprocess.run(
        [
            venv_python,
            "-I",
            "-c",
            "import json, concurrent.futures as f; "
            "print(json.dumps(getattr(f, '_mtasklite_substitutions', None)))",
        ],
        capture_output=True,
        text=True,
        env=child_env(),
        check=False,
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit("[conformance] the patched interpreter fails to start (see above)")
    subs = json.loads(proc.stdout)
    if not subs:
        raise SystemExit("[conformance] the start-up patch is not active in -I mode")
    return list(subs)


# -- expected failures -----------------------------------------------------------------------


#: prefix of an expected-failures line naming a test that is skipped instead of run
SKIP_PREFIX = "skip:"


def read_expected(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(expected failures, tests never run): pattern -> reason.  One test id (fnmatch
    wildcards allowed) per line, '# reason'; a 'skip:' line names a test that would wait
    for ever on our pools (it assumes a pool that breaks), so it is skipped, not run."""
    expected: dict[str, str] = {}
    skips: dict[str, str] = {}
    if not path.is_file():
        return expected, skips
    for raw in path.read_text(encoding="utf-8").splitlines():
        line, _, reason = raw.partition("#")
        line = line.strip()
        if line.startswith(SKIP_PREFIX):
            skips[line[len(SKIP_PREFIX) :].strip()] = reason.strip()
        elif line:
            expected[line] = reason.strip()
    return expected, skips


def matching(test_id: str, patterns: dict[str, str]) -> Optional[str]:
    for pattern in patterns:
        if test_id == pattern or fnmatch.fnmatchcase(test_id, pattern):
            return pattern
    return None


# -- running and reporting -------------------------------------------------------------------


def read_results(path: Path) -> tuple[list[dict[str, Any]], Optional[dict[str, Any]], set[str]]:
    records: list[dict[str, Any]] = []
    done = None
    started: set[str] = set()
    if not path.is_file():
        return records, done, started
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by a crash
        if record["event"] == "result":
            records.append(record)
        elif record["event"] == "start":
            started.add(record["id"])
        elif record["event"] == "done":
            done = record
    return records, done, started


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run CPython's test.test_concurrent_futures with mtasklite's executors."
    )
    parser.add_argument("--python", help=f"target interpreter (default: find {DEFAULT_VERSION})")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="PATTERN",
        help="only tests matching PATTERN (unittest -k; repeatable)",
    )
    parser.add_argument(
        "--venv", type=Path, help="throwaway venv to use (default: build/conformance-venv-X.Y)"
    )
    parser.add_argument("--recreate", action="store_true", help="rebuild the venv from scratch")
    parser.add_argument(
        "--expected",
        type=Path,
        default=HERE / "expected_failures.txt",
        help="expected-failures file (default: %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=1800,
        help="give up (dumping all stacks) after this many seconds (default: %(default)s)",
    )
    parser.add_argument(
        "--test-timeout",
        type=float,
        default=300,
        help="give up the same way once one test ran this long (default: %(default)s)",
    )
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="hide the unittest -v stream; print only the report",
    )
    args = parser.parse_args(argv)

    python = args.python or find_python(DEFAULT_VERSION)
    if python is None:
        log(f"no Python {DEFAULT_VERSION} found; pass --python PATH")
        return 2
    python = shutil.which(python) or python
    version = _query(python, "import json, sys; print(json.dumps('%d.%d' % sys.version_info[:2]))")
    has_suite = _query(
        python,
        f"import json, importlib.util as u; print(json.dumps(bool(u.find_spec({SUITE!r}))))",
    )
    if not has_suite:
        log(f"{python} (Python {version}) does not ship {SUITE}")
        return 2
    log(f"target interpreter: {python} (Python {version})")

    venv = args.venv or REPO / "build" / f"conformance-venv-{version}"
    venv_python = prepare_venv(python, venv.resolve(), args.recreate)
    substitutions = probe_substitutions(venv_python)
    for std_name, ours in substitutions:
        log(f"substituted concurrent.futures.{std_name} -> {ours}")
    substituted = {std for std, _ in substitutions}
    for std_name in ("ThreadPoolExecutor", "ProcessPoolExecutor"):
        if std_name not in substituted:
            log(
                f"NOT substituted: concurrent.futures.{std_name} (mtasklite has no replacement "
                "yet); its tests run against the stdlib class"
            )

    expected, skips = read_expected(args.expected)
    log(f"{len(expected)} expected-failure pattern(s) from {args.expected}")
    for pattern, reason in skips.items():
        log(f"never run (would wait for ever on our pools): {pattern}  # {reason}")

    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mtasklite-conformance-") as work:
        results_file = Path(work) / "results.jsonl"
        cwd = Path(work) / "cwd"  # the stdlib tests create scratch files in the cwd
        cwd.mkdir()
        cmd = [
            venv_python,
            str(HERE / "suite_driver.py"),
            SUITE,
            "--results",
            str(results_file),
            "--timeout",
            str(args.timeout),
            "--test-timeout",
            str(args.test_timeout),
            "--skips",
            json.dumps(skips),
        ]
        for pattern in args.only:
            cmd += ["-k", pattern]
        log("running: " + " ".join([f"{ENV_FLAG}=1", *cmd]))
        output = subprocess.DEVNULL if args.quiet else None
        try:
            proc = subprocess.run(
                cmd,
                cwd=cwd,
                env=child_env(),
                stdout=output,
                stderr=output,
                timeout=args.timeout + 120,
                check=False,
            )
            returncode: Optional[int] = proc.returncode
        except subprocess.TimeoutExpired:
            returncode = None
        records, done, started = read_results(results_file)
    elapsed = time.monotonic() - start
    return report(
        records=records,
        done=done,
        started=started,
        returncode=returncode,
        expected=expected,
        elapsed=elapsed,
    )


def report(
    *,
    records: list[dict[str, Any]],
    done: Optional[dict[str, Any]],
    started: set[str],
    returncode: Optional[int],
    expected: dict[str, str],
    elapsed: float,
) -> int:
    outcomes: dict[str, str] = {}
    tracebacks: dict[str, list[str]] = {}
    for record in records:
        test_id = record["id"]
        if record["outcome"] in FAILED_OUTCOMES:
            outcomes[test_id] = record["outcome"]
            text = record.get("traceback") or f"({record['outcome']})\n"
            if record.get("subtest"):
                text = f"subtest {record['subtest']}:\n{text}"
            tracebacks.setdefault(test_id, []).append(text)
        else:
            outcomes.setdefault(test_id, record["outcome"])
    counts: dict[str, int] = {}
    for outcome in outcomes.values():
        counts[outcome] = counts.get(outcome, 0) + 1
    failed = sorted(t for t, o in outcomes.items() if o in FAILED_OUTCOMES)
    unexpected = [t for t in failed if matching(t, expected) is None]
    known = [t for t in failed if matching(t, expected) is not None]
    passed_but_expected = sorted(
        t for t, o in outcomes.items() if o == "pass" and matching(t, expected) is not None
    )
    unfinished = sorted(started - set(outcomes))

    bar = "=" * 78
    print(f"\n{bar}\nmtasklite stdlib conformance report ({SUITE})\n{bar}")
    for test_id in unexpected:
        print(f"\nUNEXPECTED {outcomes[test_id].upper()}: {test_id}\n{'-' * 78}")
        print("".join(tracebacks[test_id]).rstrip())
    if unexpected:
        print(bar)
    summary = ", ".join(f"{n} {o}" for o, n in sorted(counts.items())) or "no results"
    print(f"tests: {len(outcomes)} ({summary}) in {elapsed:.1f} s")
    if known:
        print(f"expected failures ({len(known)}):")
        for test_id in known:
            reason = expected[matching(test_id, expected) or ""]
            print(f"  {test_id}  # {reason}")
    if passed_but_expected:
        print(
            f"WARNING: {len(passed_but_expected)} expected failure(s) passed; "
            "remove them from expected_failures.txt:"
        )
        for test_id in passed_but_expected:
            print(f"  {test_id}")
    if unexpected:
        print(f"unexpected failures ({len(unexpected)}):")
        for test_id in unexpected:
            print(f"  {test_id}")

    ok = not unexpected
    if done is None:
        ok = False
        how = "timed out" if returncode is None else f"exited with status {returncode}"
        print(f"ERROR: the suite did not complete (the test process {how}).")
        for test_id in unfinished:
            print(f"  still running: {test_id}")
    elif done["tests_run"] == 0:
        ok = False
        print("ERROR: no test ran (check --only).")
    print(f"conformance: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
