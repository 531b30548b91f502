"""Run a simulated migration in every mode and write its report (see the package docstring)."""


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
