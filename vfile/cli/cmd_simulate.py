"""`vfile simulate migration`: the fail modes side by side through a simulated migration.

Thin over vfile.simulate: parse options, run, print the table and the report path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vfile.cli._app import Verbose, app, setup_logging, user_errors
from vfile.control import ControlError
from vfile.errors import Exit, UserError
from vfile.simulate.scenario import (
    DEFAULT_FILES,
    DEFAULT_OUTAGE,
    DEFAULT_WINDOW,
    DEFAULT_WRITERS,
    MODES,
    QUICK_FILES,
    QUICK_OUTAGE,
    QUICK_WINDOW,
)

simulate_app = typer.Typer(help="Simulate workloads through real vfile mounts and report.",
                           no_args_is_help=True)
app.add_typer(simulate_app, name="simulate")


@simulate_app.command("migration")
@user_errors
def migration(  # noqa: PLR0917 - typer maps parameters to options
    files: Annotated[int | None, typer.Option(
        help=f"Files in the generated guest (default {DEFAULT_FILES}; "
        f"--quick {QUICK_FILES}).")] = None,
    writers: Annotated[int | None, typer.Option(
        help=f"Writer threads (default {DEFAULT_WRITERS}).")] = None,
    outage: Annotated[str | None, typer.Option(
        help=f"Appliance outage START:DURATION in seconds (default {DEFAULT_OUTAGE}; "
        f"--quick {QUICK_OUTAGE}).")] = None,
    window: Annotated[str | None, typer.Option(
        help=f"Migration window START:DURATION in seconds (default {DEFAULT_WINDOW}; "
        f"--quick {QUICK_WINDOW}).")] = None,
    after: Annotated[float | None, typer.Option(
        help="Seconds the workload runs on after the outage (default 10; --quick 3).")]
    = None,
    fault: Annotated[str, typer.Option(
        help="How the appliance goes down: blackhole (never answers) or refuse.")]
    = "blackhole",
    modes: Annotated[str, typer.Option(
        help="Comma-separated modes to run, in order.")] = ",".join(MODES),
    appliance: Annotated[str, typer.Option(
        help="builtin (run `vfile appliance serve`), or an appliance URL to put the fault "
        "proxy in front of (clamd://..., icap://...).")] = "builtin",
    report: Annotated[Path | None, typer.Option(
        help="Report directory (default: ./reports/migration-TIMESTAMP/).")] = None,
    quick: Annotated[bool, typer.Option(
        "--quick", help="A small guest, a short timeline, every timeout x0.25.")] = False,
    drain_timeout: Annotated[float | None, typer.Option(
        help="How long to wait for the drain after the workload (default 120; --quick 30).")]
    = None,
    verbose: Verbose = 0,
) -> None:
    """Mount a generated guest once per fail mode, take the appliance down during a
    migration window, and report latency, availability, exposure and coverage.

    Example: vfile simulate migration --quick --report /tmp/sim
    """
    from vfile.simulate.main import make_params, simulate, summary_table

    setup_logging(verbose)
    try:
        params = make_params(files=files, writers=writers, outage=outage, window=window,
                             after=after, fault=fault, modes=modes, appliance=appliance,
                             quick=quick, drain_timeout=drain_timeout)
    except ValueError as err:
        raise UserError(str(err), Exit.USAGE) from None
    try:
        doc = simulate(params, report)
    except (RuntimeError, OSError, ControlError) as err:
        raise UserError(f"simulation failed: {err}", Exit.RUNTIME) from None
    typer.echo("")
    typer.echo(summary_table(doc))
    typer.echo(f"\nreport: {Path(doc['meta']['report_dir']) / 'report.md'}")
