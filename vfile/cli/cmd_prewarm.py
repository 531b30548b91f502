"""`vfile prewarm MOUNT`: warm a mount's verdicts before the first real opens (vfile.prewarm)."""

from __future__ import annotations

import json
import signal
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from vfile.cli._app import Verbose, app, run_async, setup_logging
from vfile.control import ControlError
from vfile.errors import Exit, UserError
from vfile.prewarm_defaults import DEFAULT_CONCURRENCY, DEFAULT_RATE, check_pacing

if TYPE_CHECKING:
    import trio

    from vfile.prewarm import Progress

# trio and vfile.prewarm (which brings the filter) are imported by the command, not
# here: every `vfile` invocation imports this module (issue 12).

BAR = 30


def render(p: Progress) -> str:
    """One progress line (pure)."""
    frac = p.done / p.total if p.total else 1.0
    filled = int(frac * BAR)
    return (f"[{'#' * filled}{'.' * (BAR - filled)}] {p.done}/{p.total} {frac:4.0%}  "
            f"opened {p.opened} denied {p.denied} failed {p.failed} skipped {p.skipped}  "
            f"rate {p.rate:.3g}/s")


async def _stop_on_sigterm(scope: trio.CancelScope) -> None:
    import trio

    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async for _ in signals:
            scope.cancel()
            return


@app.command("prewarm")
@run_async
async def prewarm_cmd(  # noqa: PLR0917 - typer maps parameters to options
    mountpoint: Annotated[str, typer.Argument(help="A live vfile mountpoint.")],
    rate: Annotated[float, typer.Option(
        "--rate", help="Files opened per second at most; halves when the appliance slows.")
    ] = DEFAULT_RATE,
    concurrency: Annotated[int, typer.Option(
        "--concurrency", help="Opens in flight at once.")] = DEFAULT_CONCURRENCY,
    checkpoint: Annotated[str | None, typer.Option(
        "--checkpoint", help="Where progress is kept for a resumed run (default: "
        "~/.local/state/vfile/prewarm-<mountpoint>.json).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    verbose: Verbose = 0,
) -> None:
    """Open every file of MOUNTPOINT once, paced, so its verdicts are current.

    Files with a current verdict cost a cache hit; the others are scanned and
    their verdicts stored. Interrupted, it resumes where it stopped.

    Example: vfile prewarm /mnt/guest --rate 200
    """
    import trio

    from vfile.prewarm import default_checkpoint, prewarm

    setup_logging(verbose)
    ckpt = Path(checkpoint) if checkpoint else default_checkpoint(mountpoint)
    tty = sys.stderr.isatty()

    def report(p: Progress) -> None:
        print(("\r" if tty else "") + render(p), end="" if tty else "\n", file=sys.stderr,
              flush=True)

    if (why := check_pacing(rate, concurrency)) is not None:
        raise UserError(why, Exit.USAGE)
    result: Progress | None = None
    error: ControlError | None = None

    async def run(scope: trio.CancelScope) -> None:
        nonlocal result, error
        try:
            result = await prewarm(mountpoint, rate=rate, concurrency=concurrency,
                                   checkpoint=ckpt, report=report)
        except ControlError as err:  # not a live vfile mount, or not ours to steer
            error = err
        scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_sigterm, nursery.cancel_scope)
        nursery.start_soon(run, nursery.cancel_scope)
    if error is not None:
        raise UserError(str(error), Exit.CONTROL)
    if tty:
        print(file=sys.stderr)
    if result is None:  # SIGTERM: like a lost control connection, the run did not finish
        raise UserError(f"prewarm interrupted; a new run resumes from {ckpt}", Exit.CONTROL)
    print(json.dumps(asdict(result)) if as_json else render(result))
