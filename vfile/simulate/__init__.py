"""`vfile simulate`: a migration with an appliance outage, under every fail mode.

    scenario  parameters, the timeline, each mode's configuration (pure)
    guest     the generated guest data (clean, infected, planted files)
    workload  readers, writers, an indexer: real syscalls through the mount, timed
    harness   the appliance / fault proxy and the per-mode `vfile mount` processes
    run       one mode's timeline, sampling, drain wait and audit; all modes in turn
    report    numbers, report.json, report.md, the summary table
    plot      the PNG timelines (matplotlib, optional extra `simulate`)

`simulate(params, report_dir)` is the whole thing; the CLI, bench/failmodes.py
and examples/demo.py call it.
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import Any

from vfile.simulate.report import (
    TABLE_HEAD,
    default_report_dir,
    table_rows,
    text_table,
    write_report,
)
from vfile.simulate.run import Progress, run_migration
from vfile.simulate.scenario import MODES, Params, make_params


def simulate(params: Params, report_dir: Path | None = None, *,
             progress: Progress = print, command: str | None = None) -> dict[str, Any]:
    """Run the migration in every mode of `params`, write the report, return report.json."""
    report_dir = report_dir or default_report_dir()
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    t0 = time.monotonic()
    results = run_migration(params, logs_to=report_dir, progress=progress)
    meta = {"started": started, "took_s": round(time.monotonic() - t0, 1),
            "appliance": "the built-in appliance" if params.appliance == "builtin"
            else params.appliance,
            "command": command or shlex.join(["vfile", *sys.argv[1:]]),
            "report_dir": str(report_dir)}
    return write_report(results, params, report_dir, meta)


def summary_table(doc: dict[str, Any]) -> str:
    return text_table(TABLE_HEAD, table_rows(list(doc["modes"].values())))


__all__ = ["MODES", "Params", "make_params", "simulate", "summary_table"]
