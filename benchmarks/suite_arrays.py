"""Issue 19's scenarios (large arrays through the process pool) and their targets.

Scenario 11 is the warm view (a pool already started, arenas already made), 12 the one-shot
view (a fresh interpreter: import, pool start, one operation, shutdown), 13 the check that
small payloads pay nothing for the transport.  Workloads: :mod:`benchmarks.arrays` and
:func:`benchmarks.scenarios.latency`.
"""

from __future__ import annotations

from typing import Any, Optional

from benchmarks.array_child import ARRAYS
from benchmarks.arrays import huge_page_mode
from benchmarks.suite import WORKERS, Case, Column, Scenario, Target

#: the issue's array size, in MiB
ARRAY_MIB = 64


def _row(key: str, impl: str, label: str, baseline: Optional[str], **params: Any) -> Case:
    return Case(key, impl, label, {"workers": WORKERS, **params}, baseline)


def _speed_columns(second: Column) -> list[Column]:
    return [Column("mib_per_s", "MiB/s"), second]


def warm_arrays(quick: bool) -> Scenario:
    """Scenario 11: 64 MiB round trips on a warm pool, beside the memory-speed limits."""
    mib = ARRAY_MIB
    submit = {"op": "submit", "mib": mib, "inner": 5 if quick else 9}
    six = {"op": "six", "mib": mib, "inner": 1 if quick else 3}
    copies = {"mib": mib, "inner": 5 if quick else 9}
    cases = [
        _row(
            "ours-submit",
            "ours-process",
            "mtasklite `submit` (shared memory)",
            "stdlib-submit",
            **submit,
        ),
        _row(
            "noshm-submit",
            "ours-process-noshm",
            "mtasklite `submit`, `shm_threshold=None` (pipe)",
            "stdlib-submit",
            **submit,
        ),
        _row("stdlib-submit", "stdlib-process", "`ProcessPoolExecutor.submit`", None, **submit),
        _row(
            "ours-six",
            "ours-process",
            f"mtasklite `imap`, {ARRAYS} arrays (shared memory)",
            "stdlib-six",
            **six,
        ),
    ]
    if not quick:  # as slow as the stdlib's map: shown in the full run only
        cases.append(
            _row(
                "noshm-six",
                "ours-process-noshm",
                f"mtasklite `imap`, {ARRAYS} arrays, `shm_threshold=None` (pipe)",
                "stdlib-six",
                **six,
            )
        )
    cases += [
        _row(
            "stdlib-six",
            "stdlib-process",
            f"`ProcessPoolExecutor.map`, {ARRAYS} arrays",
            None,
            **six,
        ),
        _row(
            "copy-warm",
            "memory",
            "limit: one warm copy (`np.copyto`, memory faulted in)",
            None,
            op="copy-warm",
            **copies,
        ),
        _row(
            "copy-fresh",
            "memory",
            "limit: one copy into fresh memory (`array.copy()`)",
            None,
            op="copy-fresh",
            **copies,
        ),
        _row(
            "copy-bytearray",
            "memory",
            "limit: one copy into a fresh `bytearray`",
            None,
            op="copy-bytearray",
            **copies,
        ),
    ]
    notes = [
        f"Transparent huge pages on this machine: `{huge_page_mode()}`.  numpy advises huge "
        "pages for its own big allocations; a `bytearray` (an in-band pickle's buffer, and "
        "what the receiving side copies into) gets 4 KiB pages unless the setting is "
        "`always`, so its fresh copy pays a page fault per 4 KiB."
    ]
    if quick:
        notes.append(
            f"Quick mode times {submit['inner']} round trips and {six['inner']} map per run "
            "and leaves out the `shm_threshold=None` map of six arrays."
        )
    return Scenario(
        11,
        f"Large arrays, warm pool: {mib} MiB numpy arrays (shared memory)",
        f"A {mib} MiB `uint8` array through `submit(identity, array).result()`, and "
        f"{ARRAYS} of them through `imap` (the stdlib: `map`), on 2 workers started and "
        "warmed up by one untimed run of the same operation; the median of the timed runs.  "
        f"*MiB/s* is the array size ({ARRAYS}x for the map) over the wall time.  A round "
        "trip carries the array there and back; mtasklite copies it four times (into the "
        "sender's reused shared memory and out into the receiver's own memory, each way), "
        "the stdlib pickles and unpickles it through the pipe.  The *limit* rows time one "
        "plain copy of the array in one process: what memory speed allows.",
        cases,
        _speed_columns(Column("ms", "ms per call", "{:,.1f}")),
        higher_is_better=True,
        baseline=None,
        timeout_s=60 if quick else 120,
        notes=notes,
    )


def one_shot_arrays(quick: bool) -> Scenario:
    """Scenario 12: the same round trips in a fresh interpreter, import and pool start timed."""
    mib = ARRAY_MIB
    cases = [
        _row(
            "ours-submit",
            "ours-process",
            "mtasklite `submit` (shared memory)",
            "stdlib-submit",
            op="submit",
            mib=mib,
        ),
        _row(
            "stdlib-submit",
            "stdlib-process",
            "`ProcessPoolExecutor.submit`",
            None,
            op="submit",
            mib=mib,
        ),
        _row(
            "ours-six",
            "ours-process",
            f"mtasklite `imap`, {ARRAYS} arrays",
            "stdlib-six",
            op="six",
            mib=mib,
        ),
        _row(
            "stdlib-six",
            "stdlib-process",
            f"`ProcessPoolExecutor.map`, {ARRAYS} arrays",
            None,
            op="six",
            mib=mib,
        ),
    ]
    return Scenario(
        12,
        f"Large arrays, one-shot: import, start, move {mib} MiB arrays, shut down",
        "A fresh interpreter that already holds the array (numpy imported, array made) "
        "imports the executor (`import mtasklite`, or `import concurrent.futures`), starts "
        f"a 2-worker pool, makes one `submit` round trip of a {mib} MiB array (or maps "
        f"{ARRAYS} of them) and shuts the pool down, all on the clock; one operation per "
        "interpreter.  *MiB/s* as in scenario 11.",
        cases,
        _speed_columns(Column("wall_s", "wall (s)", "{:.3f}")),
        higher_is_better=True,
        baseline=None,
        timeout_s=60 if quick else 120,
    )


def small_array_latency(quick: bool) -> Scenario:
    """Scenario 13: a 1 KiB array's ``submit`` latency, transport on vs off."""
    common = {"calls": 1000 if quick else 5000, "warmup": 200, "array_bytes": 1024}
    return Scenario(
        13,
        "Small arrays: 1 KiB `submit` latency, shared memory on vs off",
        f"Median of {common['calls']:,} sequential `submit(identity, array).result()` calls "
        f"with a 1 KiB numpy array after {common['warmup']} warm-up calls, 2 workers: the "
        "default (`shm_threshold` 1 MiB: the array's buffer is offered out of band, then "
        "kept in the pickle) against `shm_threshold=None` (the pipe only, as before the "
        "transport).",
        [
            _row(
                "ours",
                "ours-process",
                "mtasklite, shared memory on (default)",
                "ours-noshm",
                **common,
            ),
            _row(
                "ours-noshm",
                "ours-process-noshm",
                "mtasklite, `shm_threshold=None`",
                None,
                **common,
            ),
        ],
        [
            Column("median_us", "median (µs)", "{:,.1f}"),
            Column("p10_us", "p10 (µs)", "{:,.1f}"),
            Column("p90_us", "p90 (µs)", "{:,.1f}"),
        ],
        higher_is_better=False,
        baseline="ours-noshm",
        timeout_s=15 if quick else 60,
        ratio_header="vs `shm_threshold=None`",
    )


def array_scenarios(quick: bool) -> list[Scenario]:
    """Scenarios 11, 12 and 13."""
    return [warm_arrays(quick), one_shot_arrays(quick), small_array_latency(quick)]


def array_targets() -> list[Target]:
    """Issue 19's targets, each a ratio of medians from the same run."""
    return [
        Target(
            11,
            f"{ARRAY_MIB} MiB `submit` round trip >= 5x `ProcessPoolExecutor` (warm)",
            "ours-submit",
            "mib_per_s",
            ">=",
            5.0,
            "stdlib-submit",
        ),
        Target(
            11,
            f"{ARRAYS} x {ARRAY_MIB} MiB through `imap` >= 3x the stdlib's `map` (warm)",
            "ours-six",
            "mib_per_s",
            ">=",
            3.0,
            "stdlib-six",
        ),
        Target(
            13,
            "1 KiB array `submit` latency with shared memory on no slower than off",
            "ours",
            "median_us",
            "<=",
            1.0,
            "ours-noshm",
        ),
    ]
