"""The drain's side of the gate: scan a deferred file as it is now and settle its entry.

Clean or infected: the verdict is stored and the entry removed in one
transaction (infected: the profile's action, after the fact, and the exposure
trail logged). Gone (no such file, or no longer a regular file): the entry is
removed. A whole-file rule over the size limit: unscannable, not retried.
Anything else (a window, a write in progress, a scan error or a racy clean
verdict) is an error for the drain to release with back-off.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Callable

import trio

from vfile.filter import coverage
from vfile.filter.drain import Outcome as DrainOutcome
from vfile.filter.drain import Resolution
from vfile.filter.drain import scan_done as drain_scan_done
from vfile.filter.intents import IntentTable
from vfile.filter.outcomes import Stats
from vfile.filter.policy import ScanResult
from vfile.filter.scanning import RACY, Scanning
from vfile.filter.settling import Settler
from vfile.filter.source import Source
from vfile.journal.records import DeferredEntry, Identity, VerdictOutcome, VerdictRecord
from vfile.journal.store import Journal
from vfile.passthrough.links import ProfileChooser

#: the gate's logger: operators filter and alert on it (the gate split kept its name)
log = logging.getLogger("vfile.filter.gate")


class Resolver:
    """Resolves deferred entries for the drain, with the gate's parts."""

    def __init__(self, *, journal: Journal, intents: IntentTable, source: Source,
                 profiles: ProfileChooser, scanning: Scanning, settler: Settler, stats: Stats,
                 lookup: Callable[[Identity, str], VerdictRecord | None],
                 remember: Callable[[VerdictRecord], None],
                 window: Callable[[], bool]) -> None:
        self._journal = journal
        self._intents = intents
        self._source = source
        self._profiles = profiles
        self._scanning = scanning
        self._settler = settler
        self.stats = stats
        self._lookup = lookup
        self._remember = remember
        self._window = window

    async def resolve(self, entry: DeferredEntry) -> Resolution:
        """Scan a deferred file as it is now and settle its journal entry (module doc)."""
        path = entry.path
        if self._window():
            return Resolution(DrainOutcome.ERROR, detail="window active")
        if path in self._intents:
            return Resolution(DrainOutcome.ERROR, detail="still being written")
        try:
            fd = self._source.open(path)
        except OSError as err:
            if err.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EINVAL):
                return Resolution(DrainOutcome.ERROR, detail=f"cannot open: {err.strerror}")
            await self._journal.complete(path, entry.seq, None, linger=True)
            log.info("drain: %r is gone (%s); entry removed", path, err.strerror)
            return Resolution(DrainOutcome.GONE)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                await self._journal.complete(path, entry.seq, None)
                return Resolution(DrainOutcome.GONE, detail="no longer a regular file")
            identity = Identity.from_stat(st)
            profile = self._profiles.profile_for(path, st.st_nlink)
            sig = self._scanning.signature()
            record = self._lookup(identity, sig)
            if record is not None and not coverage.admits(record, profile):
                record = None
            if record is None and (why := coverage.unscannable(profile, identity.size)):
                # The rule asks for the whole file and it is over the limit: a prefix
                # scan would be no verdict. Listed as unscannable, not retried.
                return Resolution(DrainOutcome.UNSCANNABLE, detail=why)
            if record is None:
                scope = trio.CancelScope(deadline=trio.current_time() + profile.drain_deadline)
                result, verdict, keep = await self._scanning.scan(fd, identity, profile, scope,
                                                                  drain=True)
                if verdict is None or result not in (ScanResult.CLEAN, ScanResult.INFECTED):
                    detail = verdict.detail if verdict is not None else result.value
                    return Resolution(DrainOutcome.ERROR, detail=detail)
                if not keep:
                    return Resolution(DrainOutcome.ERROR, detail=RACY)
                self.stats.scans += 1
                record = self._scanning.record(identity, verdict, sig, profile)
                self._remember(record)
        finally:
            os.close(fd)
            if (done := drain_scan_done.get()) is not None:
                done()  # the appliance's part is over: the drain may start its next scan
        if record.outcome == VerdictOutcome.INFECTED:
            trail = ", ".join(f"uid {e.uid} pid {e.pid} ({e.command})" for e in entry.exposures)
            log.warning("drain: %r found infected with %s after the fact; opened unscanned by: %s",
                        path, record.signature, trail or "nobody")
        # Lingering: the drain's completions share transactions (vfile.journal.commit).
        await self._settler.resolve(path, record, profile, entry.seq, linger=True)
        infected = record.outcome == VerdictOutcome.INFECTED
        outcome = DrainOutcome.INFECTED if infected else DrainOutcome.CLEAN
        return Resolution(outcome, nbytes=identity.size)
