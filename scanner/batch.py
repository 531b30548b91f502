"""The drain's scans: how long a background scan may take, and pipelined batches.

A background scan is patient (`patient`): a large file gets its time, but a hung
appliance cannot hold a drain slot for the whole deadline.

A batch is a batch of files on one clamd IDSESSION connection.
One batch is one flight on the first usable appliance (clamd on a unix socket:
`ClamdClient.pipelines`), registered like a single scan, so the breaker opening or a
hung verdict cuts it short; any failure is an error verdict for every file in it (the
drain retries them). Its bound is as patient as scanning the files one after the other
with `Pool.scan_fd(count_timeouts=False)`: an appliance may take them in turn.
Split out of scanner/pool.py (module size); it goes through the pool's public
bookkeeping: `first_usable`, `record_success`, `record_failure`, `timeout_for`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import trio

from vfile.scanner.icap import IcapClient
from vfile.scanner.liveness import Flight
from vfile.scanner.verdict import ApplianceError, Outcome, Verdict

if TYPE_CHECKING:
    from vfile.scanner.appliance import Appliance
    from vfile.scanner.pool import Pool

#: a background (drain) scan waits this many times what an on-open scan of its size
#: may take, and at least as long as reading it at `PATIENT_BYTES_PER_S`, within the
#: caller's deadline
PATIENCE = 10
PATIENT_BYTES_PER_S = 4 << 20


def patient(pool: Pool, app: Appliance, nbytes: int) -> float:
    """A background scan's bound on `app` (see PATIENCE): never under its own slow reading."""
    return max(PATIENCE * pool.timeout_for(app, nbytes),
               PATIENCE * pool.attempt_timeout, nbytes / PATIENT_BYTES_PER_S)


def pipelines(pool: Pool) -> bool:
    """Whether `scan_fds` would pipeline now (the first usable appliance can)."""
    app = pool.first_usable()
    return app is not None and not isinstance(app.client, IcapClient) and app.client.pipelines


async def scan_fds(pool: Pool, items: Sequence[tuple[int, int]],
                   attempt_timeout: float) -> list[Verdict] | None:
    """Background (drain) whole-file scans of (fd, size) `items`, pipelined on the first
    usable appliance if it can (clamd on a unix socket); None if it cannot (then scan
    one by one). Bounded as patiently as `scan_fd(count_timeouts=False)` would scan
    them one after the other (an appliance may take them in turn), within
    `attempt_timeout`; cut like any scan there when the appliance becomes unusable.
    Any failure is an error verdict for all of them (a timeout not counted)."""
    app = pool.first_usable()
    client = None if app is None else app.client
    if app is None or client is None or isinstance(client, IcapClient) or not client.pipelines \
            or not app.sig_version or not app.breaker.allow(trio.current_time()):
        return None
    version = app.sig_version  # the label: no newer than the signatures that judge them
    bound = sum(patient(pool, app, size) for _, size in items)
    timeout, started = min(attempt_timeout, bound), trio.current_time()
    flight = Flight(started, None, trio.CancelScope(deadline=started + timeout))
    settled, reason = False, ""
    app.flights.add(flight)
    try:
        with flight.scope:
            try:
                replies = await client.scan_fds([fd for fd, _ in items])
            except ApplianceError as err:
                reason = str(err)
        app.scans += 1 if reason else len(items)
        if flight.scope.cancelled_caught:
            settled = flight.evicted and flight.counted
            reason = app.last_error if flight.evicted else f"no reply within {timeout:g}s"
            return [Verdict.error(reason, app.name)] * len(items)
        settled = True
        if reason:
            pool.record_failure(app, reason)
            return [Verdict.error(reason, app.name)] * len(items)
        pool.record_success(app)
        return [Verdict.clean(app.name, version) if outcome is Outcome.CLEAN
                else Verdict.infected(detail, app.name, version)
                if outcome is Outcome.INFECTED else Verdict.error(detail, app.name)
                for outcome, detail in replies]
    finally:
        app.flights.discard(flight)
        if not settled:
            app.breaker.release()  # cancelled or timed out: neither success nor failure
