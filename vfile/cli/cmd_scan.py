"""`vfile scan PATH… --appliance URL`: scan files like clamdscan, through the pool.

Output: one line per file on stdout (`path: OK`, `path: SIG FOUND`,
`path: ERROR reason`, or JSON lines with --json); a progress counter on
stderr only when stderr is a terminal. Exit status: 0 all clean, 1 something
infected, 2 some file could not be scanned (infected wins over errors, as
clamdscan). Directories are walked and scanned with bounded concurrency.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated

import typer

from vfile.cli._app import Verbose, app, run_async, setup_logging
from vfile.cli._bounds import within
from vfile.config.model import RANGES, PoolConfig
from vfile.errors import Exit, UserError

if TYPE_CHECKING:
    from vfile.scanner.verdict import Verdict

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 30.0
DEFAULT_JOBS = 8
MAX_JOBS = 256  # scans at once; each holds a descriptor and a connection


def _walk(paths: list[str]) -> Iterator[str]:
    for path in paths:
        if os.path.isdir(path):
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    yield os.path.join(root, name)
        else:
            yield path


def exit_code(verdicts: list[Verdict]) -> Exit:
    if any(v.is_infected for v in verdicts):
        return Exit.INFECTED
    if any(v.is_error for v in verdicts):
        return Exit.USAGE  # clamdscan's 2: some file could not be scanned
    return Exit.OK


@app.command("scan")
@run_async
async def scan(  # noqa: PLR0917  (typer options)
    paths: Annotated[list[str], typer.Argument(help="Files or directories to scan.")],
    appliance: Annotated[list[str], typer.Option(
        "--appliance", "-a", help="Appliance URL (clamd://HOST:PORT, clamd:///path.sock, "
        "icap://HOST:PORT/SERVICE); repeat for failover, in priority order.")],
    timeout: Annotated[float, typer.Option(
        help="Seconds to wait for one appliance's verdict on one file before failing over.")]
        = DEFAULT_TIMEOUT,
    jobs: Annotated[int, typer.Option(help="Files scanned at once.")] = DEFAULT_JOBS,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per file.")] = False,
    verbose: Verbose = 0,
) -> None:
    """Scan files with a scan appliance, like clamdscan.

    Exit status: 0 all clean, 1 something infected, 2 something could not be scanned.

    Example: vfile scan -a clamd:///run/clamav/clamd.ctl -a icap://127.0.0.1:1344/avscan /srv/in
    """
    import trio

    from vfile.scanner.pool import Pool

    setup_logging(verbose)
    # the pool's attempt timeout, so a mount's [pool] range
    within("--timeout", timeout, *RANGES[(PoolConfig, "attempt_timeout")], " seconds")
    within("--jobs", jobs, 1, MAX_JOBS)
    try:
        pool = Pool(appliance, attempt_timeout=timeout, retries=0, max_concurrency=jobs,
                    probe_interval=max(timeout, 1.0))
    except ValueError as err:
        raise UserError(str(err), Exit.USAGE) from None
    verdicts: list[Verdict] = []
    progress = sys.stderr.isatty()
    send, receive = trio.open_memory_channel[str](jobs)

    def report(path: str, verdict: Verdict) -> None:
        verdicts.append(verdict)
        if as_json:
            line = json.dumps({"path": path, "outcome": str(verdict.outcome),
                               "detail": verdict.detail, "appliance": verdict.appliance,
                               "sig_version": verdict.sig_version})
        else:
            line = f"{path}: {verdict.line()}"
        if progress:
            sys.stderr.write("\r\033[K")
        print(line, flush=True)
        if progress:
            sys.stderr.write(f"scanned {len(verdicts)} files")
            sys.stderr.flush()

    async def worker(receive: trio.MemoryReceiveChannel[str]) -> None:
        async with receive:
            async for path in receive:
                verdict = await pool.scan_path(path)
                report(path, verdict)

    async def feed(send: trio.MemorySendChannel[str]) -> None:
        async with send:
            for path in _walk(paths):
                await send.send(path)

    async with trio.open_nursery() as probes:
        await probes.start(pool.serve)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(feed, send)
            for _ in range(jobs):
                nursery.start_soon(worker, receive.clone())
            await receive.aclose()
        probes.cancel_scope.cancel()
    if progress:
        sys.stderr.write("\r\033[K")
    code = exit_code(verdicts)
    if code != Exit.OK:
        raise typer.Exit(int(code))
