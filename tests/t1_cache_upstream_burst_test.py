"""The caching appliance's upstream pool through a burst: no breaker opens on a healthy,
queueing upstream.

Why: when the fleet's Redis stalls, every request in flight at the caching
appliance waits out the Redis socket timeout and then goes upstream at the same
moment (tests/t4_fleet_cache_test.py, `[stop]`). An upstream that serves scans
one by one (clamd with a few threads on a loaded host) answers the last of that
burst only after the whole queue. With the pool's default adaptive knobs the
attempt timeout is a few times one scan's latency, learnt while requests came
one at a time: the burst times out, collective detection counts every other
late scan as a failure, the upstream breaker opens, and the caching appliance
answers "no appliance available ... ERROR" to the whole fleet, so every
fail-closed guest denies clean files. The caching appliance builds its pool
with `UPSTREAM_ADAPTIVE_FLOOR` for that reason (vfile/cli/cmd_cache.py).

Timing is not asserted: the upstream's service time and the burst are chosen so
that the burst takes several times the default adaptive timeout and a fraction
of the floor; the assertions are on verdicts and breaker counters.
"""

from __future__ import annotations

import contextlib
import os
import tempfile

import trio
from servers import Samples

from vfile.scanner.builtin import BuiltinAppliance, _Conn
from vfile.scanner.cache_defaults import UPSTREAM_ADAPTIVE_FLOOR
from vfile.scanner.latency import Adaptive
from vfile.scanner.pool import Pool
from vfile.scanner.verdict import Outcome

#: one scan's service time at the queueing upstream
SERVICE = 0.01
#: requests released together (a guest's concurrency at the storm)
BURST = 12
WARM = 30
DEADLINE = 30.0  # generous "does not hang" bound
LONG = 30.0  # the caching appliance's default attempt timeout (--attempt-timeout)


class _Queueing(BuiltinAppliance):
    """The built-in appliance serving one scan at a time, each taking SERVICE seconds."""

    def __init__(self, signatures_dir: str) -> None:
        super().__init__(signatures_dir)
        self._one = trio.Lock()

    async def _execute(self, name: str, conn: _Conn) -> tuple[bytes, bool]:
        if name not in ("INSTREAM", "FILDES"):
            return await super()._execute(name, conn)
        async with self._one:
            await trio.sleep(SERVICE)
            return await super()._execute(name, conn)


async def _burst_after_a_quiet_warmup(pool: Pool, path: str) -> list[Outcome]:
    for _ in range(WARM):  # requests one at a time: the model learns one scan's latency
        assert (await pool.scan_path(path)).outcome is Outcome.CLEAN
    out: list[Outcome] = []

    async def one() -> None:
        out.append((await pool.scan_path(path)).outcome)

    async with trio.open_nursery() as nursery:  # the requests a Redis stall held back
        for _ in range(BURST):
            nursery.start_soon(one)
    return out


async def test_a_burst_on_a_queueing_upstream_opens_no_breaker(
        samples: Samples) -> None:
    appliance = _Queueing(str(samples.sigdir))
    sockdir = tempfile.mkdtemp(prefix="vfq-")
    sock = os.path.join(sockdir, "q.sock")
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(appliance.serve, f"unix://{sock}")
            # built as `vfile appliance cache` builds its upstream pool
            pool = Pool([f"clamd://{sock}"], attempt_timeout=LONG, retries=1,
                        adaptive=Adaptive(floor=UPSTREAM_ADAPTIVE_FLOOR))
            with trio.fail_after(DEADLINE):
                outcomes = await _burst_after_a_quiet_warmup(pool, str(samples.clean))
            stats = pool.statistics()[0]
            assert outcomes == [Outcome.CLEAN] * BURST, stats
            assert stats["state"] == "closed" and stats["breaker_opens"] == 0, stats
            nursery.cancel_scope.cancel()
    finally:
        with contextlib.suppress(OSError):
            os.unlink(sock)
        os.rmdir(sockdir)
