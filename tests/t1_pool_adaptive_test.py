"""The pool's adaptive mode against real (in-process) appliances and the fault proxy:
collective hang detection, hedged scans, and no false outages on a slow appliance.

Timing is never asserted beyond generous "does not hang" bounds: every scenario
uses a configured attempt timeout far beyond those bounds (`LONG`), so the old
fixed-timeout pool fails them by hanging, and the assertions are on counters
(breaker state, hedges, attempts cut short).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import trio
from servers import Builtin, Samples, running_builtin

from vfile.scanner.faults import Fault
from vfile.scanner.latency import Adaptive
from vfile.scanner.pool import Pool
from vfile.scanner.proxy import FaultProxy
from vfile.scanner.verdict import Outcome

DEADLINE = 10.0  # generous "does not hang" bound
LONG = 60.0  # the configured attempt timeout: the old pool would wait this long
WARM = 40  # scans that teach the model


async def warm(pool: Pool, path: str, n: int = WARM) -> None:
    for _ in range(n):
        assert (await pool.scan_path(path)).outcome is Outcome.CLEAN


def app_stats(pool: Pool, i: int = 0) -> dict[str, object]:
    return pool.statistics()[i]


def adaptive(stats: dict[str, object]) -> dict[str, object]:
    ad = stats["adaptive"]
    assert isinstance(ad, dict)
    return ad


class _Proxied:
    def __init__(self, proxy: FaultProxy, url: str) -> None:
        self.proxy, self.url = proxy, url


async def _serve_proxy(upstream: str, nursery: trio.Nursery) -> _Proxied:
    proxy = FaultProxy(upstream)
    bound = await nursery.start(proxy.serve, "tcp://127.0.0.1:0")
    return _Proxied(proxy, "clamd://" + bound[len("tcp://"):])


async def scan_all(pool: Pool, path: str, n: int) -> list[Outcome]:
    out: list[Outcome] = []

    async def one() -> None:
        out.append((await pool.scan_path(path)).outcome)

    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(one)
    return out


async def test_blackhole_is_detected_collectively(builtin: Builtin,
                                                  samples: Samples) -> None:
    pool = Pool([builtin.tcp_url], attempt_timeout=LONG, retries=0, breaker_failures=3,
                breaker_cooldown=LONG, adaptive=Adaptive(floor=0.05))
    with trio.fail_after(DEADLINE):
        await warm(pool, str(samples.clean))
    ad = adaptive(app_stats(pool))
    assert ad["samples"] == WARM - 1 and ad["estimate_4KiB_ms"] is not None
    assert isinstance(ad["timeout_4KiB_ms"], float) and ad["timeout_4KiB_ms"] < LONG * 1000
    builtin.appliance.set_fault(Fault("blackhole"))
    with trio.fail_after(DEADLINE):  # the old pool waits LONG
        outcomes = await scan_all(pool, str(samples.clean), 6)
    assert outcomes == [Outcome.ERROR] * 6
    stats = app_stats(pool)
    assert stats["state"] == "open", (stats["last_error"], stats["errors"], adaptive(stats))
    # one attempt timed out or met a silent probe; the others, late too, were cut short
    # and counted with it
    assert adaptive(stats)["evicted"] >= 3, stats
    assert isinstance(stats["breaker_opened_at"], float)
    # with the breaker open, the next scan does not touch the appliance (a breaker
    # opened on a probe's evidence is half-open again soon: at most one trial scan,
    # whose failure opens it for the whole cooldown)
    with trio.fail_after(DEADLINE):
        if "circuit open" not in (await pool.scan_path(str(samples.clean))).detail:
            assert app_stats(pool)["state"] == "open"
        scans = app_stats(pool)["scans"]
        v = await pool.scan_path(str(samples.clean))
    assert v.outcome is Outcome.ERROR and "circuit open" in v.detail
    assert app_stats(pool)["scans"] == scans


async def test_blackhole_one_scan_at_a_time(builtin: Builtin,
                                            samples: Samples) -> None:
    """No concurrency to lean on: the first overdue attempt probes the appliance, and
    the silent probe opens the breaker (before the probe, `breaker_failures` timeouts
    did, each a few multiples of the model's estimate)."""
    pool = Pool([builtin.tcp_url], attempt_timeout=LONG, retries=1, breaker_failures=3,
                breaker_cooldown=LONG, adaptive=Adaptive(floor=0.05))
    with trio.fail_after(DEADLINE):
        await warm(pool, str(samples.clean))
        builtin.appliance.set_fault(Fault("blackhole"))
        assert (await pool.scan_path(str(samples.clean))).outcome is Outcome.ERROR
    stats = app_stats(pool)
    assert stats["state"] == "open" and stats["errors"] >= 1, stats
    assert adaptive(stats)["probes_unanswered"] >= 1, stats


async def test_a_silent_probe_opens_the_breaker_on_one_overdue_scan(
        builtin: Builtin, samples: Samples) -> None:
    """One scan in flight, `breaker_failures = 3`, no retry: before, its timeout was one
    failure of three and the breaker stayed closed. Now the scan, overdue, probes the
    appliance; the silent probe is the evidence, the breaker opens on it; and,
    cooldown `LONG` notwithstanding, it is half-open again after a few probe
    deadlines, so once the appliance answers again scans go through (a false opening
    costs one trial, not a cooldown)."""
    pool = Pool([builtin.tcp_url], attempt_timeout=LONG, retries=0, breaker_failures=3,
                breaker_cooldown=LONG)
    with trio.fail_after(DEADLINE):
        await warm(pool, str(samples.clean))
        builtin.appliance.set_fault(Fault("blackhole"))
        v = await pool.scan_path(str(samples.clean))
        assert v.outcome is Outcome.ERROR and "liveness probe" in v.detail, v
        stats = app_stats(pool)
        assert stats["state"] == "open" and stats["errors"] == 1, stats
        assert adaptive(stats)["probes_unanswered"] == 1, stats
        builtin.appliance.set_fault(None)
        while not (v := await pool.scan_path(str(samples.clean))).is_clean:
            assert "circuit open" in v.detail, v
            await trio.sleep(0.01)
    assert app_stats(pool)["state"] == "closed"


async def test_slow_appliance_opens_no_breaker(builtin: Builtin,
                                               samples: Samples) -> None:
    """A healthy-but-slow appliance: replies 3x the model's estimate late, on a few
    scans at once and in a row, never time out (nor cut each other short)."""
    async with trio.open_nursery() as nursery:
        front = await _serve_proxy(builtin.unix_url, nursery)
        # A steady 20 ms per reply, so the estimate is well above the floor and jitter.
        front.proxy.set_fault(Fault("delay", 0.02))
        pool = Pool([front.url], attempt_timeout=LONG, retries=0, breaker_failures=1,
                    breaker_cooldown=LONG)
        with trio.fail_after(DEADLINE * 2):
            await warm(pool, str(samples.clean), 30)
            est = adaptive(app_stats(pool))["estimate_4KiB_ms"]
            assert isinstance(est, float) and est >= 15
            front.proxy.set_fault(Fault("delay", 3 * est / 1000))
            for _ in range(3):
                outcomes = await scan_all(pool, str(samples.clean), 4)
                assert outcomes == [Outcome.CLEAN] * 4
        stats = app_stats(pool)
        # breaker_failures=1: a single timeout would have opened it
        assert stats["state"] == "closed" and stats["errors"] == 0, stats
        assert adaptive(stats)["evicted"] == 0
        # ... and a black hole after it still opens it (within a few estimates)
        front.proxy.set_fault(Fault("blackhole"))
        with trio.fail_after(DEADLINE):
            v = await pool.scan_path(str(samples.clean))
        assert v.outcome is Outcome.ERROR
        assert app_stats(pool)["state"] == "open"
        nursery.cancel_scope.cancel()


async def test_hedge_takes_the_first_verdict_and_spares_the_slow_one(
        tmp_path: Path, builtin: Builtin, samples: Samples) -> None:
    async with trio.open_nursery() as nursery:
        front = await _serve_proxy(builtin.unix_url, nursery)
        async with running_builtin(tmp_path, samples.sigdir) as second:
            pool = Pool([front.url, second.tcp_url], attempt_timeout=LONG, retries=0,
                        breaker_failures=1,
                        # the floor keeps the slow one's own timeout (1 s) far beyond the
                        # hedge point (its quantile, milliseconds) even on a loaded host
                        adaptive=Adaptive(hedge_budget=1.0, floor=1.0))
            with trio.fail_after(DEADLINE):
                await warm(pool, str(samples.clean))
                before = adaptive(app_stats(pool, 1))  # a warm scan may have been hedged
                errors = app_stats(pool, 0)["errors"]
                front.proxy.set_fault(Fault("delay", 2.0))  # slow, but alive
                v = await pool.scan_path(str(samples.eicar))
            assert v.outcome is Outcome.INFECTED and v.appliance == second.tcp_url
            first, hedge = adaptive(app_stats(pool, 0)), adaptive(app_stats(pool, 1))
            assert hedge["hedges"] == before["hedges"] + 1  # type: ignore[operator]
            assert hedge["hedge_wins"] == before["hedge_wins"] + 1  # type: ignore[operator]
            # the cancelled loser is neither a success nor a failure
            assert app_stats(pool, 0)["state"] == "closed"
            assert app_stats(pool, 0)["errors"] == errors and first["evicted"] == 0
        nursery.cancel_scope.cancel()


async def test_hedges_stay_within_budget(tmp_path: Path, builtin: Builtin,
                                         samples: Samples) -> None:
    async with trio.open_nursery() as nursery:
        front = await _serve_proxy(builtin.unix_url, nursery)
        async with running_builtin(tmp_path, samples.sigdir) as second:
            pool = Pool([front.url, second.tcp_url], attempt_timeout=LONG, retries=0,
                        adaptive=Adaptive(hedge_budget=0.1))
            with trio.fail_after(DEADLINE * 3):
                await warm(pool, str(samples.clean))
                # every scan is now late on the first appliance: each would like a hedge
                front.proxy.set_fault(Fault("delay", 0.1))
                for _ in range(40):
                    assert (await pool.scan_path(str(samples.clean))).is_clean
            hedges = adaptive(app_stats(pool, 1))["hedges"]
            assert isinstance(hedges, int) and 1 <= hedges <= 0.1 * (WARM + 40) + 4
        nursery.cancel_scope.cancel()


async def test_failover_after_collective_detection(tmp_path: Path,
                                                   samples: Samples) -> None:
    async with running_builtin(tmp_path / "a", samples.sigdir) as first, \
            running_builtin(tmp_path / "b", samples.sigdir) as second:
        pool = Pool([first.tcp_url, second.tcp_url], attempt_timeout=LONG, retries=0,
                    breaker_failures=3, breaker_cooldown=LONG,
                    adaptive=Adaptive(floor=0.05, hedge_budget=0.0))
        with trio.fail_after(DEADLINE):
            await warm(pool, str(samples.clean))
            first.appliance.set_fault(Fault("blackhole"))
            outcomes = await scan_all(pool, str(samples.eicar), 8)
        # every scan got its verdict from the second appliance, none waited LONG
        assert outcomes == [Outcome.INFECTED] * 8
        stats = app_stats(pool, 0)
        assert stats["state"] == "open" and adaptive(stats)["evicted"] >= 3, stats
        assert adaptive(app_stats(pool, 1))["hedges"] == 0


async def test_disabled_is_the_fixed_timeout_pool(builtin: Builtin,
                                                  samples: Samples) -> None:
    pool = Pool([builtin.tcp_url], attempt_timeout=0.3, retries=0, breaker_failures=3,
                adaptive=Adaptive(enabled=False))
    with trio.fail_after(DEADLINE):
        await warm(pool, str(samples.clean), 10)
    ad = adaptive(app_stats(pool))
    assert ad["enabled"] is False and ad["timeout_4KiB_ms"] == 300.0
    builtin.appliance.set_fault(Fault("blackhole"))
    with trio.fail_after(DEADLINE):
        outcomes = await scan_all(pool, str(samples.clean), 4)
    assert outcomes == [Outcome.ERROR] * 4
    stats = app_stats(pool)
    # each waited out its own fixed timeout: four failures, nothing cut short
    assert stats["errors"] == 4 and adaptive(stats)["evicted"] == 0


async def test_a_background_scan_on_a_hung_appliance_gives_up_long_before_its_deadline(
        builtin: Builtin, samples: Samples) -> None:
    """The drain's scans have a deadline of minutes, so that a large file gets its time;
    a small file on a black-holed appliance must not hold a drain slot for all of it
    (found by the migration demo: the drain stalled with one scan in a black hole)."""
    pool = Pool([builtin.tcp_url], attempt_timeout=0.2, retries=0, breaker_failures=3)
    with trio.fail_after(DEADLINE):
        await warm(pool, str(samples.clean), 10)
    builtin.appliance.set_fault(Fault("blackhole"))
    fd = os.open(samples.clean, os.O_RDONLY)
    try:
        with trio.fail_after(DEADLINE):  # the deadline given below is 600 s
            verdict = await pool.scan_fd(fd, size=os.fstat(fd).st_size, attempt_timeout=600.0,
                                         count_timeouts=False)
    finally:
        os.close(fd)
    assert verdict.is_error
    stats = app_stats(pool)
    assert stats["errors"] == 0 and stats["state"] == "closed"  # no evidence against it


async def test_a_pause_of_this_process_hides_no_black_hole(builtin: Builtin,
                                                           samples: Samples) -> None:
    """This process stalls (a loaded host) just after the scans went out to an appliance
    that went silent: their timeouts, handled late, are no evidence (a pause of ours,
    not the appliance's), but the liveness probe after the pause still finds the black
    hole and opens the breaker. (Before, a stall longer than the model's timeout let the
    scans' own timers fire before their liveness watch had begun: every scan went to
    its fail mode as a late timeout, uncounted, and the breaker stayed closed: the
    1-in-30 flake of `test_blackhole_is_detected_collectively` at load 9.)"""
    pool = Pool([builtin.tcp_url], attempt_timeout=LONG, retries=0, breaker_failures=3,
                breaker_cooldown=LONG, adaptive=Adaptive(floor=0.05))
    with trio.fail_after(DEADLINE):
        await warm(pool, str(samples.clean))
    builtin.appliance.set_fault(Fault("blackhole"))
    timeout = adaptive(app_stats(pool))["timeout_4KiB_ms"]
    assert isinstance(timeout, float)

    async def stall() -> None:
        await trio.sleep(0.002)  # the scans are in flight
        time.sleep(4 * timeout / 1000)  # noqa: ASYNC251 - the stall is the point

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stall)
            outcomes = await scan_all(pool, str(samples.clean), 6)
    assert outcomes == [Outcome.ERROR] * 6
    stats = app_stats(pool)
    assert stats["state"] == "open", (stats["last_error"], stats["errors"], adaptive(stats))
