"""Asking the appliances: one scan of a descriptor, classified and timed; the signature version.

A scan's answer becomes a `policy.ScanResult`: TIMEOUT (no verdict in time,
or cancelled), UNAVAILABLE (an error while no appliance is up), ERROR (an
appliance error, or the file changed while it was read: that verdict says
nothing about either version), CLEAN or INFECTED. A clean verdict on a file
modified within the timestamp granularity of the scan is "racy"
(`vfile.filter.racy`): it answers its waiters but is not kept.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import trio

from vfile.config.model import Profile
from vfile.filter import coverage, racy
from vfile.filter.flights import Scopes
from vfile.filter.policy import ScanResult
from vfile.journal.records import Identity, VerdictOutcome, VerdictRecord
from vfile.observe.observers import Observer
from vfile.scanner import inline
from vfile.scanner.pool import Pool
from vfile.scanner.verdict import Verdict

#: how long the gate reuses the pool's signature version before asking again
SIG_CACHE_S = 0.05
#: why a clean scan was not kept (vfile.filter.racy)
RACY = "modified within the timestamp granularity of the scan (racy clean): scanned again later"


class Scanning:
    """The gate's scans and signature version; every scan's scope is in `scopes`."""

    def __init__(self, pool: Pool, scopes: Scopes, observer: Observer,
                 clock: Callable[[], float]) -> None:
        self._pool = pool
        self._scopes = scopes
        self._observer = observer
        self._clock = clock
        self._last_sig = ""
        self._sig_cached = ""
        self._sig_until = 0.0

    @property
    def last_signature(self) -> str:
        """The newest signature version any appliance reported (persisted by the mount)."""
        return self._last_sig

    def assume_signature(self, sig: str) -> None:
        """Trust `sig` (remembered from an earlier run) until an appliance reports one."""
        if not self._last_sig:
            self._last_sig = sig

    def signature(self) -> str:
        """The signature version verdicts are stored and looked up at."""
        # Asking the pool walks every appliance's breaker: reuse its answer briefly.
        now = time.monotonic()
        if now < self._sig_until:
            return self._sig_cached
        # While every appliance is down the pool knows no version: keep trusting the
        # last one seen, so files with verdicts stay readable during an outage.
        sig = self._pool.signature_version()
        if sig:
            self._last_sig = sig
        self._sig_cached = sig or self._last_sig
        self._sig_until = now + SIG_CACHE_S
        return self._sig_cached

    async def scan(self, fd: int, identity: Identity, profile: Profile,
                    scope: trio.CancelScope, *,
                    drain: bool = False) -> tuple[ScanResult, Verdict | None, bool]:
        """`_scan_once`, timed for the observer; the flag says the verdict may be kept
        (False: a clean verdict on a "racy" file, see vfile.filter.racy)."""
        started = time.perf_counter()
        started_ns = time.time_ns()
        result, verdict = await self._scan_once(fd, identity, profile, scope, drain=drain)
        self._observer.scanned(result.value, verdict.appliance if verdict is not None else "",
                              time.perf_counter() - started)
        keep = result is not ScanResult.CLEAN or not racy.is_racy(identity, started_ns)
        return result, verdict, keep

    def scan_now(self, data: bytes, identity: Identity, read_ns: int,
                 sha256: bytes | None = None) -> tuple[ScanResult, Verdict, bool] | None:
        """The whole content `data` of the file `identity` (read from `read_ns` on; its
        digest `sha256`, if known), judged at once by the embedded engine
        (scanner/inline.py), classified like `scan`'s; None: `scan` it the pool's whole
        way."""
        started = time.perf_counter()
        verdict = inline.judge_now(self._pool, data, sha256)
        if verdict is None:
            return None
        result = ScanResult.CLEAN if verdict.is_clean else ScanResult.INFECTED
        self._observer.scanned(result.value, verdict.appliance, time.perf_counter() - started)
        keep = result is not ScanResult.CLEAN or not racy.is_racy(identity, read_ns)
        return result, verdict, keep

    async def _scan_once(self, fd: int, identity: Identity, profile: Profile,
                         scope: trio.CancelScope, *,
                         drain: bool = False) -> tuple[ScanResult, Verdict | None]:
        """Scan our own descriptor `fd` under `scope`; classify what came back.

        `drain`: one attempt may take the profile's whole drain deadline, and a
        timeout is not counted against the appliance's breaker (a slow scan of a
        large file says nothing about the appliance being down).
        """
        limit = profile.scan_first if profile.is_oversize(identity.size) else None
        verdict: Verdict | None = None
        with self._scopes.watching(scope), scope:
            verdict = await self._pool.scan_fd(
                fd, size=identity.size, limit=limit,
                attempt_timeout=profile.drain_deadline if drain else profile.attempt_timeout,
                retries=profile.retries, count_timeouts=not drain)
        if verdict is None:
            return ScanResult.TIMEOUT, None
        if verdict.is_error:
            down = not self._pool.available()
            return (ScanResult.UNAVAILABLE if down else ScanResult.ERROR), verdict
        if Identity.from_stat(os.fstat(fd)) != identity:
            # Written to while we read it: the verdict says nothing about either version.
            return ScanResult.ERROR, Verdict.error("file changed during the scan")
        return (ScanResult.CLEAN if verdict.is_clean else ScanResult.INFECTED), verdict

    async def scan_batch(self, items: list[tuple[int, Identity]], timeout: float,
                         scope: trio.CancelScope) -> list[tuple[ScanResult, Verdict, bool]] | None:
        """The drain's whole-file scans of many descriptors at once under `scope` (pipelined
        by the pool), classified like `scan`'s; None if the pool cannot pipeline them."""
        started = time.perf_counter()
        started_ns = time.time_ns()
        verdicts: list[Verdict] | None = None
        with self._scopes.watching(scope), scope:
            verdicts = await self._pool.scan_fds([(fd, i.size) for fd, i in items], timeout)
        if verdicts is None and not scope.cancelled_caught:
            return None
        took = time.perf_counter() - started
        out = []
        for (fd, identity), answer in zip(items, verdicts or [Verdict.error("cancelled")]
                                          * len(items), strict=True):
            verdict = answer
            if verdicts is None:
                result = ScanResult.TIMEOUT
            elif verdict.is_error:
                result = ScanResult.ERROR if self._pool.available() else ScanResult.UNAVAILABLE
            elif Identity.from_stat(os.fstat(fd)) != identity:
                result, verdict = ScanResult.ERROR, Verdict.error("file changed during the scan")
            else:
                result = ScanResult.CLEAN if verdict.is_clean else ScanResult.INFECTED
            self._observer.scanned(result.value, verdict.appliance, took)
            keep = result is not ScanResult.CLEAN or not racy.is_racy(identity, started_ns)
            out.append((result, verdict, keep))
        return out

    def record(self, identity: Identity, verdict: Verdict, sig: str,
                profile: Profile) -> VerdictRecord:
        """The verdict to store for `identity`, saying how much of the file it covers."""
        limit = profile.scan_first if profile.is_oversize(identity.size) else None
        return VerdictRecord(identity=identity, sig_version=verdict.sig_version or sig,
                             outcome=VerdictOutcome(verdict.outcome.value),
                             signature=verdict.detail, appliance=verdict.appliance,
                             time=self._clock(),
                             covered=coverage.covered_by(limit, identity.size))
