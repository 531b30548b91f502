"""The drain: token bucket (pure), scheduling with a fake queue, and the whole
catch-up path with the real built-in appliance, Pool, Journal and Gate."""

from __future__ import annotations

import os
from pathlib import Path

import trio
import trio.testing
from gates import CTX, gate_env, until
from gates import profile_toml as _profile

from vfile.filter.drain import Drain, Outcome, Resolution, TokenBucket
from vfile.journal.records import DeferredEntry, Identity, Reason
from vfile.scanner.faults import Fault
from vfile.scanner.signatures import EICAR


def test_token_bucket_delays_once_empty() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=10, burst=10, clock=lambda: now[0])
    assert bucket.delay_for(10) == 0
    bucket._tokens -= 10
    assert abs(bucket.delay_for(1) - 0.1) < 1e-9
    now[0] += 1.0
    assert bucket.delay_for(10) == 0
    # A request larger than the burst waits only for a full bucket, then goes into debt.
    assert bucket.delay_for(1000) == 0


def _entry(i: int, size: int = 10) -> DeferredEntry:
    return DeferredEntry(path=f"f{i}", seq=i, identity=Identity(1, i, size, 0, 0),
                         reason=Reason.UNAVAILABLE, profile="default", first_deferred=0.0,
                         last_deferred=0.0, attempts=0, last_error="", exposures=(),
                         not_before=0.0, lease_until=0.0, poisoned=False)


class FakeQueue:
    def __init__(self, n: int) -> None:
        self.pending = [_entry(i) for i in range(n)]
        self.released: list[tuple[str, str]] = []

    async def claim(self, n: int, *, lease: float) -> list[DeferredEntry]:
        batch, self.pending = self.pending[:n], self.pending[n:]
        return batch

    async def release(self, path: str, seq: int, error: str) -> None:
        self.released.append((path, error))


async def test_rate_limit_and_concurrency(autojump_clock: trio.testing.MockClock) -> None:
    queue = FakeQueue(40)
    running = 0
    peak = 0

    async def resolve(entry: DeferredEntry) -> Resolution:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await trio.sleep(0.5)
        running -= 1
        if entry.seq == 7:
            raise RuntimeError("resolver bug")
        if entry.seq == 8:
            return Resolution(Outcome.ERROR, detail="appliance said no")
        return Resolution(Outcome.CLEAN, nbytes=10)

    drain = Drain(queue, resolve, ready=lambda: True, concurrency=3, files_per_s=10)
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        await nursery.start(drain.serve)
        await until_done(drain, 40)
        nursery.cancel_scope.cancel()
    elapsed = trio.current_time() - start
    assert peak <= 3
    assert elapsed >= 3.0  # 40 files at 10/s with a burst of 10: at least 3 s
    assert drain.done[Outcome.CLEAN] == 38 and drain.done[Outcome.ERROR] == 2
    assert sorted(p for p, _ in queue.released) == ["f7", "f8"]
    assert any("resolver bug" in e for _, e in queue.released)


async def until_done(drain: Drain, n: int) -> None:
    with trio.fail_after(600):
        while sum(drain.done.values()) < n:  # noqa: ASYNC110
            await trio.sleep(0.1)


async def test_not_ready_means_no_claims(autojump_clock: trio.testing.MockClock) -> None:
    queue = FakeQueue(5)
    ready = False

    async def resolve(entry: DeferredEntry) -> Resolution:
        return Resolution(Outcome.CLEAN)

    drain = Drain(queue, resolve, ready=lambda: ready)
    async with trio.open_nursery() as nursery:
        await nursery.start(drain.serve)
        await trio.sleep(10)
        assert len(queue.pending) == 5
        ready = True
        drain.kick()
        await until_done(drain, 5)
        drain.pause()
        nursery.cancel_scope.cancel()


async def test_a_slow_rate_claims_what_two_batches_can_finish_within_a_lease(
        autojump_clock: trio.testing.MockClock) -> None:
    """The drain claims one batch ahead: at 1 file/s two batches of 64 would outlive
    their 120 s lease, and their entries become claimable again while still queued."""
    queue = FakeQueue(100)
    sizes: list[int] = []
    claim = queue.claim

    async def counted(n: int, *, lease: float) -> list[DeferredEntry]:
        sizes.append(n)
        return await claim(n, lease=lease)

    queue.claim = counted  # type: ignore[method-assign]

    async def resolve(entry: DeferredEntry) -> Resolution:
        return Resolution(Outcome.CLEAN)

    drain = Drain(queue, resolve, ready=lambda: True, files_per_s=1.0, lease=120.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(drain.serve)
        await until_done(drain, 40)
        nursery.cancel_scope.cancel()
    assert sizes and max(sizes) * 2 <= 120 * 1.0, sizes


async def test_drain_catches_up_after_an_outage(tmp_path: Path) -> None:
    """Files opened during an outage are journaled; once the appliance returns the
    drain scans them, quarantines the infected one and forgets the deleted one."""
    async with gate_env(tmp_path, _profile("safe", "0.5s"), probe_interval=0.1) as env:
        env.write("ok.txt", b"fine\n")
        env.write("bad.com", EICAR)
        env.write("gone.txt", b"soon deleted\n")
        env.appliance.set_fault(Fault("refuse"))
        await until(lambda: not env.pool.available())
        for name in ("ok.txt", "bad.com", "gone.txt"):
            await env.open(name)  # allowed at once, journaled
        assert {e.path for e in env.journal.list_deferred()} == {"ok.txt", "bad.com", "gone.txt"}
        os.unlink(env.source / "gone.txt")

        drain = Drain(env.journal, env.gate.resolve,
                      ready=lambda: env.pool.available() and not env.gate.window)
        async with trio.open_nursery() as nursery:
            await nursery.start(drain.serve)
            await trio.sleep(0.3)
            assert drain.done[Outcome.CLEAN] == 0, "no drain while the appliance is down"
            env.appliance.set_fault(None)
            # Until the drain has counted all three: an entry leaves the journal
            # before its infected action (the quarantine) is done and counted.
            with trio.fail_after(10):
                # The entry goes (a tier-2 commit, no fsync) before the infected action
                # and the count: wait for both.
                while env.journal.list_deferred() or sum(drain.done.values()) < 3:  # noqa: ASYNC110
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
        assert drain.done[Outcome.CLEAN] == 1
        assert drain.done[Outcome.INFECTED] == 1
        assert drain.done[Outcome.GONE] == 1
        assert not (env.source / "bad.com").exists()
        records = env.journal.list_quarantine()
        assert [r.original_path for r in records] == ["bad.com"]
        assert (env.source / "ok.txt").exists()
        assert CTX.uid == os.getuid()


async def test_one_lucky_scan_does_not_collapse_the_rate(
        autojump_clock: trio.testing.MockClock) -> None:
    """The rate backs off on a sustained latency rise, not because one scan was fast
    (issue 20: a drain at 160 files/s against a rate of 500)."""
    drain = Drain(FakeQueue(0), lambda e: None, ready=lambda: True,  # type: ignore[arg-type,return-value]
                  files_per_s=500)
    drain._adapt(0.001, 0)  # one lucky scan
    for i in range(300):
        drain._adapt(0.02 + (i % 5) * 0.004, 0)  # ordinary jitter around 20 ms
        await trio.sleep(0.02)
    assert drain.statistics()["files_per_s"] == 500
    lowest = 500.0
    for _ in range(20):  # the appliance slows down tenfold
        drain._adapt(0.4, 0)
        lowest = min(lowest, drain.statistics()["files_per_s"])
        await trio.sleep(0.4)
    assert lowest < 500
