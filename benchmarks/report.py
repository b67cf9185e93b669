"""Turn the run records into ``latest.md`` (tables, targets, machine) and ``latest.png``.

Each case is summarised by the median of its successful runs; ratios compare medians with
the case's stdlib baseline from the same run.  The same markdown is spliced into
``benchmarks/README.md`` between the ``results`` markers when writing to the default
results directory.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from benchmarks.suite import SCENARIO_NUMBERS, Case, Scenario, Target

PEERS = ["mtasklite", "mpire", "pebble", "loky", "joblib", "pqdm", "psutil", "matplotlib"]
README = Path(__file__).resolve().parent / "README.md"
README_START = "<!-- results:start -->"
README_END = "<!-- results:end -->"
COLORS = {"mtasklite": "#1f77b4", "stdlib baseline": "#7f7f7f", "other": "#ff7f0e"}


@dataclass
class Summary:
    """One case over all its runs."""

    case: Case
    status: str = "missing"
    runs: int = 0
    ok_runs: int = 0
    medians: dict[str, float] = field(default_factory=dict)
    spread: tuple[float, float] = (0.0, 0.0)  # min, max of the headline over ok runs
    details: list[str] = field(default_factory=list)
    ratio: Optional[float] = None
    #: every ok run's value per metric, in run order (repeat r of every case is adjacent)
    samples: dict[str, list[float]] = field(default_factory=dict)


# --- machine ----------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """CPU model, cores, RAM, Python, OS, library versions and the current load."""
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": None,
        "ram_gib": None,
        "python": f"{platform.python_version()} ({platform.python_implementation()})",
        "os": platform.platform(),
        "loadavg_start": list(os.getloadavg()),
        "versions": {},
    }
    try:
        import psutil

        info["physical_cores"] = psutil.cpu_count(logical=False)
        info["ram_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        info["ram_gib"] = _meminfo_gib()
    for name in PEERS:
        try:
            info["versions"][name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            info["versions"][name] = "not installed"
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _meminfo_gib() -> Optional[float]:
    try:
        with open("/proc/meminfo") as f:
            kib = int(f.readline().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return round(kib / 2**20, 1)


# --- summaries --------------------------------------------------------------------------------


def summarize(scenario: Scenario, records: list[dict[str, Any]]) -> dict[str, Summary]:
    """Medians per case, derived speedups and ratios to each case's baseline."""
    out = {case.key: Summary(case) for case in scenario.cases}
    values: dict[str, dict[str, list[float]]] = {key: {} for key in out}
    for rec in records:
        if rec.get("scenario") != scenario.number or rec["case"] not in out:
            continue
        summary = out[rec["case"]]
        summary.runs += 1
        if rec["status"] == "ok":
            summary.ok_runs += 1
            for name, value in rec["metrics"].items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    values[rec["case"]].setdefault(name, []).append(float(value))
        else:
            detail = f"{rec['status']}: {rec.get('detail', '')}"
            if detail not in summary.details:
                summary.details.append(detail)
            if summary.status == "missing":
                summary.status = rec["status"]
    if scenario.speedup_over is not None:
        _add_speedups(values, scenario.speedup_over)
    head = scenario.columns[0].key
    for key, summary in out.items():
        if summary.ok_runs:
            summary.status = "ok"
            summary.medians = {k: statistics.median(v) for k, v in values[key].items()}
            summary.samples = values[key]
            if values[key].get(head):
                summary.spread = (min(values[key][head]), max(values[key][head]))
    for summary in out.values():
        ref = scenario.baseline_of(summary.case)
        if ref is not None:
            summary.ratio = _ratio(summary, out.get(ref), head)
    return out


def _add_speedups(values: dict[str, dict[str, list[float]]], reference: str) -> None:
    ref = values.get(reference, {}).get("wall_s")
    if not ref:
        return
    ref_median = statistics.median(ref)
    for metrics in values.values():
        if metrics.get("wall_s"):
            metrics["speedup"] = [ref_median / w for w in metrics["wall_s"]]


def _ratio(summary: Summary, ref: Optional[Summary], metric: str) -> Optional[float]:
    if ref is None or summary.status != "ok" or ref.status != "ok":
        return None
    num, den = summary.medians.get(metric), ref.medians.get(metric)
    if num is None or not den:
        return None
    return num / den


def evaluate(target: Target, scenario: Scenario, summaries: dict[str, Summary]) -> dict[str, Any]:
    """Measured value/ratio of one target and whether it passes."""
    mine = summaries.get(target.case)
    value = mine.medians.get(target.metric) if mine and mine.status == "ok" else None
    against = target.against
    if against == "best-peer":
        peers = [
            s
            for s in summaries.values()
            if not s.case.impl.startswith("ours") and s.medians.get(target.metric) is not None
        ]
        pick = max if scenario.higher_is_better else min
        best = pick(peers, key=lambda s: s.medians[target.metric], default=None)
        against = best.case.key if best is not None else None
        if best is None:
            value = None
    measured = value
    paired: list[float] = []
    if against is not None and value is not None:
        ref = summaries.get(against)
        den = ref.medians.get(target.metric) if ref and ref.status == "ok" else None
        measured = value / den if den else None
        if mine is not None and ref is not None:
            # Repeat r of both cases ran back to back: their ratio is one paired sample.
            mine_runs, ref_runs = mine.samples.get(target.metric), ref.samples.get(target.metric)
            if mine_runs and ref_runs and len(mine_runs) == len(ref_runs):
                paired = [a / b for a, b in zip(mine_runs, ref_runs) if b]
    elif against is None and mine is not None:
        paired = list(mine.samples.get(target.metric, []))  # a bare metric: its own repeats
    if measured is None:
        verdict = "n/a"
    else:
        passes = measured >= target.threshold if target.op == ">=" else measured <= target.threshold
        verdict = "PASS" if passes else "MISS"
        if not passes and paired and min(paired) <= target.threshold <= max(paired):
            verdict = "MISS (within noise)"  # some paired repeats pass, some do not
    return {
        "target": target,
        "measured": measured,
        "against": against,
        "verdict": verdict,
        "paired": paired,
    }


# --- markdown ---------------------------------------------------------------------------------


def render(
    suite: list[Scenario],
    goals: list[Target],
    records: list[dict[str, Any]],
    machine: dict[str, Any],
    run: dict[str, Any],
    image: Optional[str],
) -> str:
    """The results as markdown (without a top-level title)."""
    summaries = {s.number: summarize(s, records) for s in suite}
    lines = _header(machine, run)
    lines += [
        "### Targets",
        "",
        "*Measured* divides the two medians; *per repeat* is the range of the ratios of runs "
        "made back to back (repeat r of one case against repeat r of the other), or of the "
        "metric itself where there is no other case.  A miss "
        "whose per-repeat range spans the target is marked *within noise*.",
        "",
        "| Scenario | Target | Measured | Per repeat | Result |",
        "|---|---|---|---|---|",
    ]
    by_number = {s.number: s for s in suite}
    for goal in goals:
        if goal.scenario not in by_number:
            continue
        res = evaluate(goal, by_number[goal.scenario], summaries[goal.scenario])
        paired = res["paired"]
        spread = f"{min(paired):.2f}-{max(paired):.2f}x" if paired else "-"
        lines.append(
            f"| {goal.scenario} | {goal.label} | {_target_text(res)} | {spread} "
            f"| **{res['verdict']}** |"
        )
    lines.append("")
    if image:
        lines += [f"![benchmark chart]({image})", ""]
    for scenario in suite:
        lines += _scenario_table(scenario, summaries[scenario.number])
    return "\n".join(lines).rstrip() + "\n"


def _header(machine: dict[str, Any], run: dict[str, Any]) -> list[str]:
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
    load = " / ".join(
        ", ".join(f"{x:.2f}" for x in loads)
        for loads in (machine["loadavg_start"], run["loadavg_end"])
    )
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    return [
        f"Measured {when} with `{run['command']}` ({run['mode']} mode, {run['repeats']} "
        f"repeats per case, total wall time {run['wall_s']:.0f} s; raw runs: "
        f"`{run['raw']}`).",
        "",
        "| Machine | |",
        "|---|---|",
        f"| CPU | {machine['cpu']} |",
        f"| Cores | {machine['logical_cores']} logical, {machine['physical_cores']} physical |",
        f"| RAM | {machine['ram_gib']} GiB |",
        f"| Python | {machine['python']} |",
        f"| OS | {machine['os']} |",
        f"| Load average (1/5/15 min) at start / end | {load} |",
        f"| Libraries | {versions} |",
        "",
        "Each case runs in a fresh subprocess; cases alternate (A B C A B C ...) and the "
        "tables show the median over the repeats.  *vs stdlib* is the median divided by the "
        "stdlib baseline's median from the same run.  The machine was shared with other "
        "jobs, so expect noise.",
        "",
    ]


def _target_text(res: dict[str, Any]) -> str:
    goal: Target = res["target"]
    if res["measured"] is None:
        return "not measured"
    text = f"{res['measured']:.2f}"
    text += "x" if res["against"] is not None or goal.metric in ("speedup", "vs_ideal") else ""
    if res["against"] is not None:
        text += f" vs `{res['against']}`"
    return f"{text} (need {goal.op} {goal.threshold:g})"


def _scenario_table(scenario: Scenario, summaries: dict[str, Summary]) -> list[str]:
    better = "higher" if scenario.higher_is_better else "lower"
    head = [c.header for c in scenario.columns]
    lines = [
        f"### {scenario.number}. {scenario.title}",
        "",
        scenario.description,
        "",
        f"| Implementation | {' | '.join(head)} | {scenario.ratio_header} ({better} is better) "
        "| ok runs |",
        "|---" * (len(head) + 3) + "|",
    ]
    problems: list[str] = []
    for key, s in summaries.items():
        cells = [_cell(s, c.key, c.fmt) for c in scenario.columns]
        if s.status != "ok":
            cells = [f"*{s.status}*"] + ["—"] * (len(cells) - 1)
        ref = scenario.baseline_of(s.case)
        if ref is None:
            ratio = "baseline" if key in _baselines(scenario) else "—"
        elif s.ratio is not None:
            ratio = f"{s.ratio:.2f}x" if s.ratio >= 0.1 else f"{s.ratio:.2g}x"
        elif s.status == "ok" and summaries[ref].status != "ok":
            ratio = f"— (baseline: {summaries[ref].status})"
        else:
            ratio = "—"
        lines.append(f"| {s.case.label} | {' | '.join(cells)} | {ratio} | {s.ok_runs}/{s.runs} |")
        problems += [f"- `{key}`: {d}" for d in s.details]
    lines.append("")
    if scenario.notes or problems:
        lines += [f"_{note}_" for note in scenario.notes]
        lines += [*problems, ""] if problems else [""]
    return lines


def _baselines(scenario: Scenario) -> set[str]:
    refs = {scenario.baseline_of(c) for c in scenario.cases}
    refs.add(scenario.baseline)
    return {r for r in refs if r is not None}


def _cell(summary: Summary, key: str, fmt: str) -> str:
    if summary.status != "ok":
        return f"*{summary.status}*"
    value = summary.medians.get(key)
    return fmt.format(value) if value is not None else "—"


# --- chart ------------------------------------------------------------------------------------


def plot(
    suite: list[Scenario],
    goals: list[Target],
    records: list[dict[str, Any]],
    machine: dict[str, Any],
    path: Path,
) -> bool:
    """One horizontal bar chart per scenario (medians, min-max whiskers) plus the targets."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError:
        return False
    cols = 2
    rows = len(suite) // cols + 1  # one spare cell for the legend and the targets
    fig, axes = plt.subplots(rows, cols, figsize=(7.5 * cols, 4.5 * rows), squeeze=False)
    summaries = {s.number: summarize(s, records) for s in suite}
    for ax, scenario in zip(axes.flat, suite):
        _plot_one(ax, scenario, summaries[scenario.number])
    for ax in list(axes.flat)[len(suite) :]:
        ax.axis("off")
    spare = list(axes.flat)[len(suite)]
    handles = [Patch(color=c, label=n) for n, c in COLORS.items()]
    spare.legend(handles=handles, loc="upper left", fontsize=9, title="bars")
    by_number = {s.number: s for s in suite}
    verdicts = [
        f"[{res['verdict']}] {g.scenario}: {g.label}: {_target_text(res)}".replace("`", "")
        for g in goals
        if g.scenario in by_number
        for res in [evaluate(g, by_number[g.scenario], summaries[g.scenario])]
    ]
    spare.text(
        0.0,
        0.62,
        "Targets\n" + "\n".join(verdicts),
        va="top",
        fontsize=8,
        family="monospace",
        wrap=True,
    )
    fig.suptitle(
        f"mtasklite benchmarks — {machine['cpu']}, {machine['logical_cores']} cores, "
        f"{machine['ram_gib']} GiB, Python {machine['python']}",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def _plot_one(ax: Any, scenario: Scenario, summaries: dict[str, Summary]) -> None:
    head = scenario.columns[0]
    items = list(summaries.values())
    labels = [s.case.key for s in items]
    medians = [s.medians.get(head.key, 0.0) if s.status == "ok" else 0.0 for s in items]
    baselines = _baselines(scenario)
    colors = [
        COLORS["mtasklite"]
        if s.case.impl.startswith("ours")
        else COLORS["stdlib baseline"]
        if s.case.key in baselines
        else COLORS["other"]
        for s in items
    ]
    ys = range(len(items))
    ax.barh(ys, medians, color=colors)
    for y, s, m in zip(ys, items, medians):
        if s.status != "ok":
            ax.text(
                0.01,
                y,
                s.status,
                va="center",
                fontsize=8,
                color="#b00",
                transform=ax.get_yaxis_transform(),
            )
        elif head.key in s.medians:
            ax.plot(s.spread, (y, y), color="black", linewidth=1)
            ax.text(m, y, " " + head.fmt.format(m), va="center", fontsize=7)
    positive = [m for m in medians if m > 0]
    if positive and max(positive) / min(positive) > 30:
        ax.set_xscale("log")
    ax.set_yticks(list(ys), labels, fontsize=8)
    ax.invert_yaxis()
    better = "higher" if scenario.higher_is_better else "lower"
    ax.set_title(f"{scenario.number}. {scenario.title}", fontsize=9)
    ax.set_xlabel(f"{head.header} ({better} is better)", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)


# --- files ------------------------------------------------------------------------------------


def write(
    suite: list[Scenario],
    goals: list[Target],
    records: list[dict[str, Any]],
    machine: dict[str, Any],
    run: dict[str, Any],
    out: Path,
    plot_chart: bool = True,
) -> list[Path]:
    """Write ``latest.md`` (+ ``latest.png``) into ``out``.

    A complete run into the default directory also refreshes the README's results block.
    """
    out.mkdir(parents=True, exist_ok=True)
    written = []
    png = out / "latest.png"
    has_png = plot_chart and plot(suite, goals, records, machine, png)
    if has_png:
        written.append(png)
    body = render(suite, goals, records, machine, run, "latest.png" if has_png else None)
    md = out / "latest.md"
    md.write_text("# mtasklite benchmark results\n\n" + body)
    written.append(md)
    complete = [s.number for s in suite] == list(SCENARIO_NUMBERS)
    if complete and out.resolve() == README.parent / "results" and README.exists():
        image = "results/latest.png" if has_png else None
        _splice_readme(render(suite, goals, records, machine, run, image))
        written.append(README)
    return written


def _splice_readme(body: str) -> None:
    text = README.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        return
    text = text[: start + len(README_START)] + "\n" + body + text[end:]
    README.write_text(text)
