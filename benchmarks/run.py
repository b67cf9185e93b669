"""Benchmark runner: ``python -m benchmarks [--quick] [--scenario N ...] [--repeats R]``.

For every scenario it runs each case in a fresh subprocess (``python -m benchmarks.worker``),
alternating cases (A B C A B C ...) for ``--repeats`` rounds, so slow drifts in machine load
hit every implementation alike.  Each run is bounded by the scenario's time limit and memory
cap (the subprocess's whole process group is killed past either).  Every run is appended to
a JSON-lines file under ``<out>/raw/``; at the end :mod:`benchmarks.report` writes
``<out>/latest.md`` and ``<out>/latest.png``.
"""

from __future__ import annotations

import argparse
import compileall
import datetime
import importlib.util
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any, Optional, Sequence

if __package__ in (None, ""):  # ``python benchmarks/run.py``: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import report, tasks
from benchmarks.impls import ADAPTERS
from benchmarks.suite import SCENARIO_NUMBERS, Case, Scenario, build_suite, targets
from benchmarks.worker import MARKER

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
POLL_S = 0.02
MEMORY_POLL_S = 0.2


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Run the mtasklite benchmark suite and write the report.",
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes, 3 repeats (< 3 min)")
    parser.add_argument(
        "--scenario",
        type=int,
        action="append",
        choices=SCENARIO_NUMBERS,
        metavar="N",
        help=f"run only scenario N (1-{SCENARIO_NUMBERS[-1]}); repeatable",
    )
    parser.add_argument("--repeats", type=int, help="rounds per scenario (default 3 quick, 5 full)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results directory")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG chart")
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 3 if args.quick else 5
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    return args


def command_line() -> str:
    """The command as typed (best effort), for the report."""
    argv = getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv]
    words = [os.path.basename(argv[0]) if "python" in os.path.basename(argv[0]) else argv[0]]
    words += argv[1:]
    return shlex.join(words)


def _shown_path(path: Path) -> str:
    """``path`` relative to the repository root when it is inside it."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def precompile() -> None:
    """Compile mtasklite and the benchmark package to bytecode once, before the first run
    (see :func:`run_case`), so no run pays for it."""
    for name in ("mtasklite", "benchmarks"):
        spec = importlib.util.find_spec(name)
        for path in (spec.submodule_search_locations or []) if spec else []:
            compileall.compile_dir(path, quiet=1)


def calibrate_loops(target_s: float = 0.005) -> int:
    """Iterations of :func:`benchmarks.tasks.burn` that take ``target_s`` on this machine."""
    probe = 50_000
    best = min(_time_burn(probe) for _ in range(7))
    return max(1000, round(probe * target_s / best))


def _time_burn(loops: int) -> float:
    start = time.perf_counter()
    tasks.burn(loops)
    return time.perf_counter() - start


# --- one run ----------------------------------------------------------------------------------


def run_case(scenario: Scenario, case: Case) -> dict[str, Any]:
    """Run ``case`` once in a fresh subprocess; returns status, metrics/detail and elapsed."""
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.worker",
        str(scenario.number),
        case.impl,
        json.dumps(case.params),
    ]
    env = dict(os.environ)
    # Let the run use bytecode, as an installed package does (pip compiles it): otherwise
    # every fresh process would compile mtasklite from source while the stdlib's modules
    # come precompiled, and the one-shot and import scenarios would time the compiler.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=out, stderr=err, start_new_session=True
        )
        try:
            limit = _watch(proc, scenario.timeout_s, scenario.mem_cap_mib)
        finally:
            _kill_group(proc)
        elapsed = time.perf_counter() - start
        outcome = _outcome(proc, limit, scenario, out, err)
    outcome["elapsed_s"] = round(elapsed, 3)
    return outcome


def _watch(proc: subprocess.Popen[bytes], timeout_s: float, cap_mib: float) -> Optional[str]:
    """Wait for ``proc``; the limit it broke (a description), or ``None`` if it exited."""
    deadline = time.monotonic() + timeout_s
    next_memory_check = 0.0
    while proc.poll() is None:
        now = time.monotonic()
        if now > deadline:
            return f"no result within the {timeout_s:g} s limit"
        if now >= next_memory_check:
            next_memory_check = now + MEMORY_POLL_S
            rss = _tree_rss_mib(proc.pid)
            if rss is not None and rss > cap_mib:
                return f"process tree RSS passed the {cap_mib:,.0f} MiB cap"
        time.sleep(POLL_S)
    return None


def _tree_rss_mib(pid: int) -> Optional[float]:
    try:
        import psutil
    except ImportError:
        return None
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return None
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total / (1024 * 1024)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill what is left of the run: the subprocess and any pool worker it leaked."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _outcome(
    proc: subprocess.Popen[bytes],
    limit: Optional[str],
    scenario: Scenario,
    out: IO[bytes],
    err: IO[bytes],
) -> dict[str, Any]:
    if limit is not None:
        status = "cannot" if scenario.limit_means_cannot else "error"
        return {"status": status, "detail": f"killed: {limit}"}
    out.seek(0)
    for line in reversed(out.read().decode(errors="replace").splitlines()):
        if line.startswith(MARKER):
            return dict(json.loads(line[len(MARKER) :]))
    err.seek(0)
    tail = err.read().decode(errors="replace").strip().splitlines()[-3:]
    return {"status": "error", "detail": f"exit code {proc.returncode}: {' | '.join(tail)}"}


# --- the whole run ----------------------------------------------------------------------------


def missing_library(case: Case) -> Optional[str]:
    """The optional library ``case`` needs and that is not installed, if any."""
    adapter = ADAPTERS.get(case.impl)
    requires = None if adapter is None else adapter.requires
    if requires is not None and importlib.util.find_spec(requires) is None:
        return requires
    return None


def run_scenario(
    scenario: Scenario, repeats: int, base: dict[str, Any], sink: IO[str]
) -> list[dict[str, Any]]:
    """All rounds of one scenario; every record is also written to ``sink`` at once."""
    records: list[dict[str, Any]] = []
    finished: set[str] = set()  # skipped or "cannot": no point in repeating
    for case in scenario.cases:
        missing = missing_library(case)
        if missing is not None:
            outcome = {"status": "skipped", "detail": f"{missing} is not installed"}
            records.append(_record(base, scenario, case, 0, repeats, outcome, sink))
            finished.add(case.key)
    for repeat in range(repeats):
        for case in scenario.cases:
            if case.key in finished:
                continue
            outcome = run_case(scenario, case)
            records.append(_record(base, scenario, case, repeat, repeats, outcome, sink))
            if outcome["status"] in ("skipped", "cannot"):
                finished.add(case.key)
    return records


def _record(
    base: dict[str, Any],
    scenario: Scenario,
    case: Case,
    repeat: int,
    repeats: int,
    outcome: dict[str, Any],
    sink: IO[str],
) -> dict[str, Any]:
    record = {
        **base,
        "type": "run",
        "scenario": scenario.number,
        "case": case.key,
        "impl": case.impl,
        "label": case.label,
        "params": case.params,
        "repeat": repeat,
        "repeats": repeats,
        **outcome,
    }
    sink.write(json.dumps(record) + "\n")
    sink.flush()
    _progress(scenario, case, repeat, repeats, outcome)
    return record


def _progress(
    scenario: Scenario, case: Case, repeat: int, repeats: int, outcome: dict[str, Any]
) -> None:
    head = scenario.columns[0]
    value = outcome.get("metrics", {}).get(head.key)
    shown = head.fmt.format(value) + f" {head.header}" if value is not None else ""
    detail = outcome.get("detail", "")
    print(
        f"[{scenario.number}] {repeat + 1}/{repeats} {case.key:<16} {outcome['status']:<7} "
        f"{shown} {detail} ({outcome.get('elapsed_s', 0):.1f} s)",
        file=sys.stderr,
        flush=True,
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the selected scenarios and write the report; returns the exit status."""
    args = parse_args(argv)
    started = time.perf_counter()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    mode = "quick" if args.quick else "full"
    precompile()
    loops = calibrate_loops()
    wanted = set(args.scenario or SCENARIO_NUMBERS)
    suite = [s for s in build_suite(args.quick, loops) if s.number in wanted]
    machine = report.machine_info()
    base = {"run_id": f"{stamp}-{mode}", "mode": mode, "python": platform.python_version()}
    raw_dir = args.out / "raw"
    raw_dir.mkdir(parents=True, exist_ok=True)
    raw_path = raw_dir / f"{base['run_id']}.jsonl"
    records: list[dict[str, Any]] = []
    with raw_path.open("w") as sink:
        meta = {**base, "type": "meta", "command": command_line(), "machine": machine}
        sink.write(json.dumps(meta) + "\n")
        for scenario in suite:
            records += run_scenario(scenario, args.repeats, base, sink)
    wall = time.perf_counter() - started
    run_info = {
        **base,
        "command": command_line(),
        "repeats": args.repeats,
        "wall_s": wall,
        "raw": _shown_path(raw_path),
        "loadavg_end": list(os.getloadavg()),
    }
    written = report.write(
        suite,
        targets(args.quick),
        records,
        machine,
        run_info,
        args.out,
        plot_chart=not args.no_plot,
    )
    for path in [raw_path, *written]:
        print(f"wrote {path}", file=sys.stderr)
    print(f"total wall time: {wall:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
