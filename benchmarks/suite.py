"""What the suite measures: scenarios, their cases (implementation + parameters) and targets.

Everything here is data; :mod:`benchmarks.run` executes it and :mod:`benchmarks.report`
renders it.  Sizes differ between ``--quick`` and the full run only where a case would
otherwise take too long; the parameters actually used go into every JSONL record and the
report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

WORKERS = 2


@dataclass(frozen=True)
class Column:
    """One metric shown in a scenario's table (the first column is the headline)."""

    key: str
    header: str
    fmt: str = "{:,.0f}"


@dataclass(frozen=True)
class Case:
    """One row: an implementation run with its parameters."""

    key: str
    impl: str
    label: str
    params: dict[str, Any]
    #: key of the case this row's ratio is computed against (default: the scenario baseline)
    baseline: Optional[str] = None


@dataclass(frozen=True)
class Scenario:
    """A workload (``benchmarks.scenarios.WORKLOADS[number]``) and the cases it runs."""

    number: int
    title: str
    description: str
    cases: list[Case]
    columns: list[Column]
    higher_is_better: bool
    baseline: Optional[str]
    timeout_s: float
    mem_cap_mib: float = 4096
    #: a run that times out or hits the memory cap "cannot" do this (vs. being an error)
    limit_means_cannot: bool = False
    #: compute ``speedup`` = this case's ``wall_s`` median / each case's
    speedup_over: Optional[str] = None
    notes: list[str] = field(default_factory=list)
    #: header of the ratio column (what each row is divided by)
    ratio_header: str = "vs stdlib"

    def case(self, key: str) -> Case:
        """The case called ``key``."""
        return next(c for c in self.cases if c.key == key)

    def baseline_of(self, case: Case) -> Optional[str]:
        """Key of the case ``case`` is compared with (``None``: it is the baseline)."""
        ref = case.baseline or self.baseline
        return None if ref == case.key else ref


@dataclass(frozen=True)
class Target:
    """``metric(case) / metric(against)`` (or the bare metric) must satisfy ``op threshold``.

    ``against`` is a case key, ``"best-peer"`` (the best other row that ran) or ``None``.
    """

    scenario: int
    label: str
    case: str
    metric: str
    op: str
    threshold: float
    against: Optional[str] = None


def tuned_chunksize(n: int, workers: int = WORKERS) -> int:
    """The ``multiprocessing.Pool.map`` heuristic: four chunks per worker."""
    return max(1, math.ceil(n / (4 * workers)))


def _case(key: str, impl: str, label: str, baseline: Optional[str] = None, **params: Any) -> Case:
    return Case(key, impl, label, {"workers": WORKERS, **params}, baseline)


#: timed maps per run in scenarios 1 and 2 (median reported), and for one-task-per-item rows
INNER, INNER_SLOW = 5, 3


def _with_inner(cases: list[Case], slow: tuple[str, ...], quick: bool) -> list[Case]:
    """Give every throughput case its number of timed maps (fewer for the ``slow`` rows, only
    one of them in the full run, where those rows map the whole 100k items)."""
    out = []
    for case in cases:
        inner = INNER if case.key not in slow else (INNER_SLOW if quick else 1)
        out.append(Case(case.key, case.impl, case.label, {**case.params, "inner": inner}))
    return out


def tiny_processes(quick: bool) -> Scenario:
    n = 100_000
    n_slow = 3_000 if quick else n  # one task per item is ~50x slower
    cs = tuned_chunksize(n)
    return Scenario(
        1,
        "Tiny tasks (x*x) on processes",
        f"`square` over `range({n:,})` with 2 worker processes; items/s of the whole map, "
        "pool created and warmed up before timing; each run times the map "
        f"{INNER} times and counts the median. One-task-per-item rows use {n_slow:,} items "
        f"and {INNER_SLOW if quick else 1} timed maps per run.",
        _with_inner(
            [
                _case(
                    "ours", "ours-process", "mtasklite `imap` (auto chunks)", n=n, chunksize=None
                ),
                _case(
                    "stdlib-cs1",
                    "stdlib-process",
                    "`ProcessPoolExecutor.map(chunksize=1)`",
                    n=n_slow,
                    chunksize=1,
                ),
                _case(
                    "stdlib",
                    "stdlib-process",
                    f"`ProcessPoolExecutor.map(chunksize={cs})`",
                    n=n,
                    chunksize=cs,
                ),
                _case(
                    "mp-pool",
                    "mp-pool",
                    f"`multiprocessing.Pool.imap(chunksize={cs})`",
                    n=n,
                    chunksize=cs,
                ),
                _case(
                    "mpire",
                    "mpire-process",
                    "mpire `WorkerPool.imap` (auto chunks)",
                    n=n,
                    chunksize=None,
                ),
                _case(
                    "pebble",
                    "pebble-process",
                    f"pebble `ProcessPool.map(chunksize={cs})`",
                    n=n,
                    chunksize=cs,
                ),
                _case("loky", "loky", f"loky executor `.map(chunksize={cs})`", n=n, chunksize=cs),
                _case(
                    "joblib",
                    "joblib",
                    "joblib `Parallel(return_as='generator')` (auto batch)",
                    n=n,
                    chunksize=None,
                ),
                _case("pqdm", "pqdm-process", "pqdm processes (one task per item)", n=n_slow),
            ],
            ("stdlib-cs1", "pqdm"),
            quick,
        ),
        [Column("items_per_s", "items/s"), Column("items", "items")],
        higher_is_better=True,
        baseline="stdlib",
        timeout_s=15 if quick else 120,
    )


def tiny_threads(quick: bool) -> Scenario:
    n = 20_000 if quick else 100_000
    cs = tuned_chunksize(n)
    return Scenario(
        2,
        "Tiny tasks (x*x) on threads",
        f"`square` over `range({n:,})` with 2 threads; items/s of the whole map, the median "
        f"of {INNER} timed maps per run (pqdm: {INNER_SLOW if quick else 1}).",
        _with_inner(
            [
                _case("ours", "ours-thread", "mtasklite `imap` (auto chunks)", n=n),
                _case(
                    "ours-cs1",
                    "ours-thread",
                    "mtasklite `imap(chunksize=1)` (drainers)",
                    n=n,
                    chunksize=1,
                ),
                _case("stdlib", "stdlib-thread", "`ThreadPoolExecutor.map`", n=n),
                _case(
                    "mp-threadpool",
                    "mp-threadpool",
                    f"`multiprocessing.pool.ThreadPool.imap(chunksize={cs})`",
                    n=n,
                    chunksize=cs,
                ),
                _case(
                    "mpire",
                    "mpire-thread",
                    "mpire `WorkerPool(start_method='threading').imap`",
                    n=n,
                    chunksize=None,
                ),
                _case("pqdm", "pqdm-thread", "pqdm threads", n=n),
            ],
            ("pqdm",),
            quick,
        ),
        [Column("items_per_s", "items/s")],
        higher_is_better=True,
        baseline="stdlib",
        timeout_s=15 if quick else 60,
    )


def lazy_memory(quick: bool) -> Scenario:
    sizes = (100_000, 200_000) if quick else (100_000, 1_000_000)
    cs = 64
    cases = []
    for n in sizes:
        tag = f"{n // 1000}k" if n < 1_000_000 else f"{n // 1_000_000}M"
        common = {"n": n, "item_bytes": 2048}
        cases += [
            _case(
                f"ours@{tag}",
                "ours-process",
                f"mtasklite `imap` (auto chunks), N={tag}",
                f"mp-pool@{tag}",
                chunksize=None,
                **common,
            ),
            _case(
                f"mp-pool@{tag}",
                "mp-pool",
                f"`multiprocessing.Pool.imap(chunksize={cs})`, N={tag}",
                f"mp-pool@{tag}",
                chunksize=cs,
                **common,
            ),
        ]
        if not quick or n == sizes[0]:  # it reads all input up front: slow and big
            cases.append(
                _case(
                    f"stdlib@{tag}",
                    "stdlib-process",
                    f"`ProcessPoolExecutor.map(chunksize={cs})`, N={tag}",
                    f"mp-pool@{tag}",
                    chunksize=cs,
                    **common,
                )
            )
    notes = [
        "Quick mode compares N = 100k with 200k (the full run: 100k with 1M) and runs "
        "`ProcessPoolExecutor.map` at 100k only."
    ]
    return Scenario(
        3,
        "Lazy memory: unsized generator of 2 KiB items",
        "An unsized generator of 2 KiB `bytes` items through a 2-process pool; peak RSS of the "
        "whole process tree (psutil, sampled every 10 ms from a thread) and how many items "
        "were pulled from the generator when the first result arrived.",
        cases,
        [
            Column("peak_rss_mib", "peak RSS (MiB)", "{:,.1f}"),
            Column("pulled_at_first", "pulled at 1st result"),
            Column("wall_s", "wall (s)", "{:.2f}"),
        ],
        higher_is_better=False,
        baseline=None,
        timeout_s=20 if quick else 120,
        mem_cap_mib=6144,
        notes=notes if quick else [],
    )


def infinite_input(quick: bool) -> Scenario:
    k = 100
    limit = 1.5 if quick else 5.0
    common = {"first": k, "limit_s": limit}
    return Scenario(
        4,
        "Infinite input (itertools.count())",
        f"`square` over a counting wrapper of `itertools.count()`: time to the {k}th result, "
        "then a clean stop (close the result iterator, shut the pool down); total includes "
        f"the stop.  Pools are warmed up first.  A run without the {k}th result {limit:g} s after "
        "the call (or over the memory cap) is reported as *cannot*.",
        [
            _case("ours", "ours-process", "mtasklite process `imap` (auto chunks)", **common),
            _case(
                "ours-thread", "ours-thread", "mtasklite thread `imap`", "stdlib-thread", **common
            ),
            _case("stdlib", "stdlib-process", "`ProcessPoolExecutor.map`", **common),
            _case("stdlib-thread", "stdlib-thread", "`ThreadPoolExecutor.map`", **common),
            _case("mp-pool", "mp-pool", "`multiprocessing.Pool.imap` (stop: terminate)", **common),
            _case(
                "mpire",
                "mpire-process",
                "mpire `WorkerPool.imap(chunk_size=1)`",
                chunksize=1,
                **common,
            ),
            _case("pebble", "pebble-process", "pebble `ProcessPool.map`", **common),
            _case("loky", "loky", "loky executor `.map`", **common),
            _case("joblib", "joblib", "joblib `Parallel(return_as='generator')`", **common),
            _case("pqdm", "pqdm-process", "pqdm processes", **common),
        ],
        [
            Column("total_s", "total incl. stop (s)", "{:.3f}"),
            Column("first_k_s", f"to {k}th result (s)", "{:.3f}"),
            Column("pulled_total", "items pulled"),
        ],
        higher_is_better=False,
        baseline="mp-pool",
        timeout_s=15 if quick else 30,
        mem_cap_mib=1024,
        limit_means_cannot=True,
    )


def cpu_bound(quick: bool, loops: int) -> Scenario:
    n = 160 if quick else 400
    return Scenario(
        5,
        "CPU-bound (~5 ms pure-Python per item)",
        f"{n} items of a pure-Python loop calibrated to ~5 ms ({loops:,} iterations); speedup "
        "over the serial `map` measured in the same run.",
        [
            _case("serial", "serial", "serial builtin `map`", n=n, loops=loops),
            _case("ours", "ours-process", "mtasklite `imap` (auto chunks)", n=n, loops=loops),
            _case("stdlib", "stdlib-process", "`ProcessPoolExecutor.map`", n=n, loops=loops),
            _case("mp-pool", "mp-pool", "`multiprocessing.Pool.imap`", n=n, loops=loops),
            _case("mpire", "mpire-process", "mpire `WorkerPool.imap`", n=n, loops=loops),
            _case("pebble", "pebble-process", "pebble `ProcessPool.map`", n=n, loops=loops),
            _case("loky", "loky", "loky executor `.map`", n=n, loops=loops),
            _case("joblib", "joblib", "joblib `Parallel(return_as='generator')`", n=n, loops=loops),
        ],
        [Column("speedup", "speedup vs serial", "{:.2f}x"), Column("wall_s", "wall (s)", "{:.3f}")],
        higher_is_better=True,
        baseline="stdlib",
        timeout_s=15 if quick else 60,
        speedup_over="serial",
        notes=[f"Quick mode uses {n} items instead of 400."] if quick else [],
    )


def stateful_init(quick: bool) -> Scenario:
    n, init_s, task_s = 600 if quick else 1000, 0.3, 0.001
    cs = tuned_chunksize(n)
    common = {"n": n, "init_s": init_s, "task_s": task_s}
    ideal = init_s + n * task_s / WORKERS
    return Scenario(
        6,
        "Stateful init (0.3 s per worker) + 1 ms tasks",
        f"Cold start: create the pool, build a per-worker model that takes {init_s} s, then "
        f"{n} tasks of 1 ms (busy wait) on 2 processes; wall time vs the ideal "
        f"`init + work / workers` = {ideal:.2f} s.  mtasklite uses `worker=` with a "
        "`@delayed_init` class; peers use their per-worker initializer (mpire: `worker_init`).",
        [
            _case(
                "ours",
                "ours-process",
                "mtasklite `worker=SlowModel(...)`, `imap(ex.worker)`",
                **common,
            ),
            _case(
                "stdlib",
                "stdlib-process",
                f"`ProcessPoolExecutor(initializer=).map({cs})`",
                chunksize=cs,
                **common,
            ),
            _case(
                "mp-pool",
                "mp-pool",
                f"`multiprocessing.Pool(initializer=).imap({cs})`",
                chunksize=cs,
                **common,
            ),
            _case("mpire", "mpire-process", "mpire `imap(worker_init=)` (auto chunks)", **common),
            _case(
                "pebble",
                "pebble-process",
                f"pebble `ProcessPool(initializer=).map({cs})`",
                chunksize=cs,
                **common,
            ),
            _case(
                "loky", "loky", f"loky executor `(initializer=).map({cs})`", chunksize=cs, **common
            ),
            _case("joblib", "joblib", "joblib `Parallel(initializer=)` generator", **common),
            _case("pqdm", "pqdm-process", "pqdm processes (`initializer=`)", **common),
        ],
        [
            Column("vs_ideal", "wall / ideal", "{:.3f}x"),
            Column("wall_s", "wall (s)", "{:.3f}"),
            Column("ideal_s", "ideal (s)", "{:.3f}"),
        ],
        higher_is_better=False,
        baseline="stdlib",
        timeout_s=15 if quick else 30,
        notes=[f"Quick mode uses {n} tasks instead of 1000."] if quick else [],
    )


def latency(quick: bool) -> Scenario:
    common = {"calls": 1000 if quick else 5000, "warmup": 200}
    return Scenario(
        7,
        "Submit round-trip latency",
        f"Median of {common['calls']:,} sequential `submit(identity, i).result()` calls after "
        f"{common['warmup']} warm-up calls, 2 workers.",
        [
            _case(
                "ours-thread",
                "ours-thread",
                "mtasklite `StatefulThreadPoolExecutor`",
                "stdlib-thread",
                **common,
            ),
            _case(
                "stdlib-thread", "stdlib-thread", "`ThreadPoolExecutor`", "stdlib-thread", **common
            ),
            _case(
                "ours-process",
                "ours-process",
                "mtasklite `StatefulProcessPoolExecutor`",
                "stdlib-process",
                **common,
            ),
            _case(
                "stdlib-process",
                "stdlib-process",
                "`ProcessPoolExecutor`",
                "stdlib-process",
                **common,
            ),
        ],
        [
            Column("median_us", "median (µs)", "{:,.1f}"),
            Column("p10_us", "p10 (µs)", "{:,.1f}"),
            Column("p90_us", "p90 (µs)", "{:,.1f}"),
        ],
        higher_is_better=False,
        baseline=None,
        timeout_s=15 if quick else 60,
    )


#: one-shot sizes (scenarios 8 and 9), and what an unsized input's peer gets as chunksize
ONE_SHOT_SIZES = (10_000, 100_000, 1_000_000)
UNSIZED_PEER_CHUNKSIZE = 64


def _size_tag(n: int) -> str:
    return f"{n // 1000}k" if n < 1_000_000 else f"{n // 1_000_000}M"


def one_shot(number: int, kind: str, quick: bool) -> Scenario:
    """A fresh process maps once (scenario 8: processes, 9: threads), sized and unsized, each
    against the stdlib pool's ``imap`` of the same kind at the same size."""
    ours, peer = (
        ("ours-process", "mp-pool") if kind == "process" else ("ours-thread", "mp-threadpool")
    )
    peer_name = "multiprocessing.Pool" if kind == "process" else "multiprocessing.pool.ThreadPool"
    cases = []
    for n in ONE_SHOT_SIZES:
        tag = _size_tag(n)
        for sized in (True, False):
            key = tag if sized else f"{tag}-gen"
            what = f"`range({n:,})`" if sized else "generator"
            cs = tuned_chunksize(n) if sized else UNSIZED_PEER_CHUNKSIZE
            common = {"n": n, "sized": sized}
            cases += [
                _case(
                    f"ours@{key}",
                    ours,
                    f"mtasklite `imap` (auto chunks), {what}",
                    f"peer@{key}",
                    **common,
                ),
                _case(
                    f"peer@{key}",
                    peer,
                    f"`{peer_name}.imap(chunksize={cs})`, {what}",
                    f"peer@{key}",
                    chunksize=cs,
                    **common,
                ),
            ]
    workers = "processes" if kind == "process" else "threads"
    return Scenario(
        number,
        f"One-shot: create, one `imap`, shut down ({workers})",
        f"A fresh process creates a pool of 2 {workers}, maps `square` once over "
        f"{', '.join(f'{n:,}' for n in ONE_SHOT_SIZES)} items (a `range`, or an unsized "
        "generator) and shuts the pool down; items/s over all three, one map per process.  "
        "The imports a script starts with are done before the clock (scenario 10 times "
        "them): `import multiprocessing.pool` for the peer, `from mtasklite import` the "
        "pool class for us.  The peer's chunksize is tuned "
        f"from the length (four chunks per worker), or {UNSIZED_PEER_CHUNKSIZE} for a "
        "generator, which has no length to tune from.",
        cases,
        [Column("items_per_s", "items/s"), Column("wall_s", "wall (s)", "{:.3f}")],
        higher_is_better=True,
        baseline=None,
        timeout_s=30 if quick else 60,
    )


def import_time(quick: bool) -> Scenario:
    runs = 10 if quick else 20
    statements = [
        ("ours", "ours-import", "import mtasklite"),
        ("stdlib", "stdlib-import", "import concurrent.futures, multiprocessing.pool"),
        # What the lazy names defer is paid on first use: shown, not a target.
        (
            "ours+thread",
            "ours-import",
            "import mtasklite; mtasklite.StatefulThreadPoolExecutor",
        ),
        (
            "ours+process",
            "ours-import",
            "import mtasklite; mtasklite.StatefulProcessPoolExecutor",
        ),
    ]
    return Scenario(
        10,
        "Import time",
        "Wall time of the import statement alone in a fresh interpreter (its start-up "
        f"excluded), the median of {runs} interpreters per run.  `import mtasklite` loads "
        "each public name on first use; the last two rows add the first use of a pool "
        "class (what `from mtasklite import StatefulProcessPoolExecutor` costs a script).",
        [
            _case(key, impl, f"`{statement}`", "stdlib", statement=statement, runs=runs)
            for key, impl, statement in statements
        ],
        [
            Column("import_ms", "import (ms)", "{:,.1f}"),
            Column("min_ms", "fastest (ms)", "{:,.1f}"),
        ],
        higher_is_better=False,
        baseline="stdlib",
        timeout_s=30 if quick else 60,
    )


def build_suite(quick: bool, loops: int) -> list[Scenario]:
    """Every scenario, sized for ``--quick`` or the full run."""
    from benchmarks.suite_arrays import array_scenarios  # it builds on this module

    return [
        tiny_processes(quick),
        tiny_threads(quick),
        lazy_memory(quick),
        infinite_input(quick),
        cpu_bound(quick, loops),
        stateful_init(quick),
        latency(quick),
        one_shot(8, "process", quick),
        one_shot(9, "thread", quick),
        import_time(quick),
        *array_scenarios(quick),
    ]


#: every scenario's number, in suite order
SCENARIO_NUMBERS = tuple(range(1, 14))


def targets(quick: bool) -> list[Target]:
    """The issues' targets, each evaluated from the medians of this run."""
    from benchmarks.suite_arrays import array_targets  # it builds on this module

    small, large = ("100k", "200k") if quick else ("100k", "1M")
    return [
        Target(
            1,
            "process `imap` >= 1.5x the best peer (items/s)",
            "ours",
            "items_per_s",
            ">=",
            1.5,
            "best-peer",
        ),
        Target(
            2,
            "thread `imap` >= 1.0x `ThreadPoolExecutor.map` (items/s)",
            "ours",
            "items_per_s",
            ">=",
            1.0,
            "stdlib",
        ),
        Target(
            3,
            f"peak RSS at {large} <= 1.1x at {small}",
            f"ours@{large}",
            "peak_rss_mib",
            "<=",
            1.1,
            f"ours@{small}",
        ),
        Target(5, "speedup over serial >= 1.9x", "ours", "speedup", ">=", 1.9),
        Target(6, "wall within 5% of ideal", "ours", "vs_ideal", "<=", 1.05),
        Target(
            7,
            "thread submit latency no slower than stdlib",
            "ours-thread",
            "median_us",
            "<=",
            1.0,
            "stdlib-thread",
        ),
        Target(
            7,
            "process submit latency no slower than stdlib",
            "ours-process",
            "median_us",
            "<=",
            1.0,
            "stdlib-process",
        ),
        Target(
            7,
            "process submit latency <= 0.8x stdlib (median)",
            "ours-process",
            "median_us",
            "<=",
            0.8,
            "stdlib-process",
        ),
        *_one_shot_targets(),
        Target(
            10,
            "`import mtasklite` <= 1.3x `import concurrent.futures, multiprocessing.pool`",
            "ours",
            "import_ms",
            "<=",
            1.3,
            "stdlib",
        ),
        *array_targets(),
    ]


def _one_shot_targets() -> list[Target]:
    """Scenarios 8 and 9: ours over the stdlib pool's tuned ``imap`` at the same size."""
    goals = [
        (8, "10k", "process one-shot >= 1.0x tuned `Pool.imap`, 10k sized", 1.0),
        (8, "100k", "process one-shot >= 1.3x tuned `Pool.imap`, 100k sized", 1.3),
        (8, "100k-gen", "process one-shot >= 2x `Pool.imap`, 100k unsized", 2.0),
        (9, "100k", "thread one-shot >= 1.0x tuned `ThreadPool.imap`, 100k sized", 1.0),
        (9, "100k-gen", "thread one-shot >= 1.5x `ThreadPool.imap`, 100k unsized", 1.5),
    ]
    return [
        Target(number, label, f"ours@{key}", "items_per_s", ">=", threshold, f"peer@{key}")
        for number, key, label, threshold in goals
    ]
