"""Run one measurement: ``python -m benchmarks.worker <scenario> <impl> <params-json>``.

Prints exactly one line starting with :data:`MARKER` followed by a JSON object:
``{"status": "ok", "metrics": {...}}``, ``{"status": "skipped", "detail": ...}`` when the
implementation's library is not installed, or ``{"status": "error", "detail": ...}``.
"""

from __future__ import annotations

import json
import sys
import traceback
from typing import Any

MARKER = "BENCH-RESULT "


def run(scenario: int, impl: str, params: dict[str, Any]) -> dict[str, Any]:
    """Run the workload of ``scenario`` for ``impl``; the outcome as a JSON-able dict."""
    from benchmarks.impls import ADAPTERS
    from benchmarks.scenarios import WORKLOADS

    adapter = ADAPTERS.get(impl)  # None: the workload needs no pool (import timing)
    requires = None if adapter is None else adapter.requires
    try:
        metrics = WORKLOADS[scenario](impl, params)
    except ImportError as exc:
        if requires is not None and exc.name is not None and exc.name.startswith(requires):
            return {"status": "skipped", "detail": f"{requires} is not installed"}
        return {"status": "error", "detail": _describe(exc)}
    except Exception as exc:
        traceback.print_exc()
        return {"status": "error", "detail": _describe(exc)}
    return {"status": "ok", "metrics": metrics}


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 300 else text[:297] + "..."


def main(argv: list[str]) -> int:
    """Entry point; the outcome goes to stdout even when the workload failed."""
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    scenario, impl, params = int(argv[0]), argv[1], json.loads(argv[2])
    outcome = run(scenario, impl, params)
    sys.stdout.flush()
    print(MARKER + json.dumps(outcome), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
