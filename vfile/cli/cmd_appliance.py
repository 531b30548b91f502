"""`vfile appliance serve` and `vfile appliance proxy`.

Both run until interrupted. Faults can be switched while running: write the
mode (`none`, `refuse`, `blackhole`, `delay=2s`, `reset`, `garbage`, and for
the proxy `truncate`, `trickle`) into the `--fault-file` and send SIGUSR1.
`serve` reloads its signatures on SIGHUP (the VERSION it reports changes
when they differ).
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from typing import Annotated

import typer

from vfile.cli._app import Verbose, appliance_app, run_async, setup_logging
from vfile.errors import Exit, UserError
from vfile.scanner.faults import KINDS, SERVER_KINDS, Fault, FaultKind, parse_fault

log = logging.getLogger(__name__)

FaultOpt = Annotated[str, typer.Option(
    "--fault", help="Fault mode: none, refuse, blackhole, delay=DURATION, reset, garbage "
    "(proxy also: truncate, trickle, oversize).")]
FaultFile = Annotated[str | None, typer.Option(
    "--fault-file", help="On SIGUSR1, read the fault mode from this file.")]


def _fault(text: str, allowed: tuple[FaultKind, ...]) -> Fault | None:
    try:
        return parse_fault(text, allowed=allowed)
    except ValueError as err:
        raise UserError(str(err), Exit.USAGE) from None


async def _signals(fault_file: str | None, set_fault: Callable[[Fault | None], None],
                   allowed: tuple[FaultKind, ...], reload: Callable[[], None] | None) -> None:
    import trio

    from vfile.scanner.signatures import SignatureError

    with trio.open_signal_receiver(signal.SIGUSR1, signal.SIGHUP) as signals:
        async for signum in signals:
            if signum == signal.SIGHUP and reload is not None:
                try:
                    reload()
                except (SignatureError, OSError) as err:
                    log.error("signature reload failed, keeping the old ones: %s", err)
            elif signum == signal.SIGUSR1 and fault_file is not None:
                try:
                    text = await trio.Path(fault_file).read_text()
                    set_fault(parse_fault(text, allowed=allowed))
                except (OSError, ValueError) as err:
                    log.error("cannot switch fault from %r: %s", fault_file, err)


@appliance_app.command("serve")
@run_async
async def serve(
    listen: Annotated[list[str], typer.Option(
        help="tcp://HOST:PORT or unix:///path (repeatable).")],
    signatures: Annotated[str | None, typer.Option(
        help="Directory of ClamAV .hdb/.hsb hash signature files.")] = None,
    fault: FaultOpt = "none",
    fault_file: FaultFile = None,
    verbose: Verbose = 0,
) -> None:
    """Run the built-in clamd-protocol appliance.

    Example: vfile appliance serve --listen tcp://127.0.0.1:3310 --signatures /srv/sigs
    """
    import trio

    from vfile.scanner.builtin import BuiltinAppliance
    from vfile.scanner.signatures import SignatureError

    setup_logging(verbose)
    try:
        appliance = BuiltinAppliance(signatures, _fault(fault, SERVER_KINDS))
    except (SignatureError, OSError) as err:
        raise UserError(f"cannot load signatures: {err}", Exit.CONFIG) from None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_signals, fault_file, appliance.set_fault, SERVER_KINDS,
                           appliance.reload)
        for url in listen:
            try:
                bound = await nursery.start(appliance.serve, url)
            except (ValueError, OSError) as err:
                raise UserError(f"cannot listen on {url}: {err}", Exit.USAGE) from None
            print(f"listening on {bound} (signatures {appliance.signatures.version})",
                  flush=True)


@appliance_app.command("proxy")
@run_async
async def proxy(
    listen: Annotated[str, typer.Option(help="tcp://HOST:PORT or unix:///path.")],
    upstream: Annotated[str, typer.Option(
        help="The appliance to forward to (clamd://…, icap://…, tcp://…, unix://…).")],
    fault: FaultOpt = "none",
    fault_file: FaultFile = None,
    verbose: Verbose = 0,
) -> None:
    """Run a fault-injection proxy in front of an appliance.

    Example: vfile appliance proxy --listen tcp://127.0.0.1:3311 --upstream
    clamd://127.0.0.1:3310 --fault delay=5s
    """
    import trio

    from vfile.scanner.proxy import FaultProxy

    setup_logging(verbose)
    try:
        fp = FaultProxy(upstream, _fault(fault, KINDS))  # every kind, `oversize` too
    except ValueError as err:
        raise UserError(str(err), Exit.USAGE) from None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_signals, fault_file, fp.set_fault, KINDS, None)
        try:
            bound = await nursery.start(fp.serve, listen)
        except (ValueError, OSError) as err:
            raise UserError(f"cannot listen on {listen}: {err}", Exit.USAGE) from None
        print(f"proxy listening on {bound} -> {upstream}", flush=True)
