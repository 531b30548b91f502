"""The drain's side of the gate: scan a deferred file as it is now and settle its entry.

Clean or infected: the verdict is stored and the entry removed in one
transaction (infected: the profile's action, after the fact, and the exposure
trail logged). Gone (no such file, or no longer a regular file): the entry is
removed. A whole-file rule over the size limit: unscannable, not retried.
Anything else (a window, a write in progress, a scan error or a racy clean
verdict) is an error for the drain to release with back-off.

`resolve_batch` (the drain's batches): the files that need a whole-file scan
and have no verdict yet are scanned together (pipelined on one appliance
connection: bench/drain.py measured the per-file trio tasks, scopes and
checkpoints of `resolve` as most of the server's CPU per drained file); every
other entry, and every entry if the pool cannot pipeline, goes through
`resolve`. A batch's scans end (and the drain's scan slot is freed) before any
of its completions; a file is settled only on its own verdict. The batch's clean
verdicts are stored and their entries removed in one journal operation
(`Settler.resolve_clean`); an infected file is settled on its own, as before.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Callable

import trio

from vfile.config.model import Profile
from vfile.filter import coverage
from vfile.filter.drain import WRITING, Resolution
from vfile.filter.drain import Outcome as DrainOutcome
from vfile.filter.drain import scan_done as drain_scan_done
from vfile.filter.intents import IntentTable
from vfile.filter.outcomes import Stats
from vfile.filter.policy import ScanResult
from vfile.filter.scanning import RACY, Scanning
from vfile.filter.settling import Settler
from vfile.filter.source import Source
from vfile.journal.records import DeferredEntry, Identity, VerdictOutcome, VerdictRecord
from vfile.journal.store import Journal
from vfile.observe.ratelog import RateLimited
from vfile.passthrough.links import ProfileChooser

#: the gate's logger: operators filter and alert on it (the gate split kept its name)
log = logging.getLogger("vfile.filter.gate")


class Resolver:
    """Resolves deferred entries for the drain, with the gate's parts."""

    def __init__(self, *, journal: Journal, intents: IntentTable, source: Source,
                 profiles: ProfileChooser, scanning: Scanning, settler: Settler, stats: Stats,
                 lookup: Callable[[Identity, str], VerdictRecord | None],
                 remember: Callable[[VerdictRecord], None],
                 window: Callable[[], bool], settled: Callable[[str], None]) -> None:
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
        self._settled = settled

    async def resolve(self, entry: DeferredEntry) -> Resolution:
        """Scan a deferred file as it is now and settle its journal entry (module doc)."""
        resolution = await self._resolve(entry)
        if resolution.outcome is not DrainOutcome.ERROR:
            self._settled(entry.path)  # the gate's grace: the file is resolved
        return resolution

    async def resolve_batch(self, entries: list[DeferredEntry]) -> list[Resolution]:
        """`resolve` for many entries at once (module doc); in the order of `entries`."""
        out: list[Resolution | None] = [None] * len(entries)
        ready: list[tuple[int, int, Identity, Profile]] = []  # index, fd, identity, profile
        async with trio.open_nursery() as nursery:
            try:
                with self._source.opening() as open_source:  # no checkpoint inside
                    for i, entry in enumerate(entries):
                        prepared = self._prepare(entry, open_source)
                        if prepared is None:
                            nursery.start_soon(self._one_of_batch, entries, i, out)
                        else:
                            ready.append((i, *prepared))
                scanned = None
                if ready:
                    deadline = min(profile.drain_deadline for *_, profile in ready)
                    scope = trio.CancelScope(deadline=trio.current_time() + deadline)
                    scanned = await self._scanning.scan_batch(
                        [(fd, identity) for _, fd, identity, _ in ready], deadline, scope)
            finally:
                for _, fd, *_ in ready:
                    os.close(fd)
            if (done := drain_scan_done.get()) is not None:
                done()  # the appliance's part is over: the drain may start its next batch
            if scanned is None:  # the pool cannot pipeline: one by one
                for i, *_ in ready:
                    nursery.start_soon(self._one_of_batch, entries, i, out)
            else:
                clean: list[tuple[str, VerdictRecord, Profile, int]] = []
                sig = self._scanning.signature()
                for (i, _, identity, profile), (result, verdict, keep) in zip(
                        ready, scanned, strict=True):
                    if result not in (ScanResult.CLEAN, ScanResult.INFECTED):
                        out[i] = Resolution(DrainOutcome.ERROR, detail=verdict.detail)
                    elif not keep:
                        out[i] = Resolution(DrainOutcome.ERROR, detail=RACY)
                    else:
                        self.stats.scans += 1
                        record = self._scanning.record(identity, verdict, sig, profile)
                        self._remember(record)
                        if record.outcome == VerdictOutcome.INFECTED:
                            nursery.start_soon(self._settle_scanned, entries[i], record,
                                               profile)
                            out[i] = Resolution(DrainOutcome.INFECTED, nbytes=identity.size)
                        else:
                            clean.append((entries[i].path, record, profile, entries[i].seq))
                            out[i] = Resolution(DrainOutcome.CLEAN, nbytes=identity.size)
                if clean:  # settled together: one journal operation for all of them
                    await self._settler.resolve_clean(clean)
                    for path, *_ in clean:
                        self._settled(path)
        return [r if r is not None else Resolution(DrainOutcome.ERROR, detail="not resolved")
                for r in out]

    def _prepare(self, entry: DeferredEntry, open_source: Callable[[str], int]
                 ) -> tuple[int, Identity, Profile] | None:
        """Our descriptor (by `open_source`), identity and profile of an entry's file if
        it needs a whole-file scan and has no verdict yet; None for any other case (left
        to `resolve`)."""
        if self._window() or entry.path in self._intents:
            return None
        try:
            fd = open_source(entry.path)
        except OSError:
            return None
        keep = False
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return None
            identity = Identity.from_stat(st)
            profile = self._profiles.profile_for(entry.path, st.st_nlink)
            keep = not profile.is_oversize(identity.size) \
                and self._lookup(identity, self._scanning.signature()) is None
            return (fd, identity, profile) if keep else None
        finally:
            if not keep:
                os.close(fd)

    async def _one_of_batch(self, entries: list[DeferredEntry], i: int,
                            out: list[Resolution | None]) -> None:
        drain_scan_done.set(None)  # this task's own context: the batch frees the slot
        try:
            out[i] = await self.resolve(entries[i])
        except Exception as err:  # a resolver bug fails this entry, not its batch
            log.exception("drain: resolving %r failed", entries[i].path)
            out[i] = Resolution(DrainOutcome.ERROR, detail=f"{type(err).__name__}: {err}")

    async def _settle_scanned(self, entry: DeferredEntry, record: VerdictRecord,
                              profile: Profile) -> None:
        await self._settle(entry, record, profile)
        self._settled(entry.path)

    async def _settle(self, entry: DeferredEntry, record: VerdictRecord,
                      profile: Profile) -> None:
        """Store a scanned file's verdict and remove its entry (infected: act, log who
        opened it unscanned)."""
        if record.outcome == VerdictOutcome.INFECTED:
            trail = ", ".join(f"uid {e.uid} pid {e.pid} ({e.command})" for e in entry.exposures)
            log.warning("drain: %r found infected with %s after the fact; opened unscanned by: %s",
                        entry.path, record.signature, trail or "nobody")
        # Lingering: the drain's completions share transactions (vfile.journal.commit).
        await self._settler.resolve(entry.path, record, profile, entry.seq, linger=True)

    async def _resolve(self, entry: DeferredEntry) -> Resolution:
        path = entry.path
        if self._window():
            return Resolution(DrainOutcome.ERROR, detail="window active")
        if path in self._intents:
            return Resolution(DrainOutcome.ERROR, detail=WRITING)
        try:
            fd = self._source.open(path)
        except OSError as err:
            if err.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EINVAL):
                return Resolution(DrainOutcome.ERROR, detail=f"cannot open: {err.strerror}")
            if not self._source.root_intact():
                return _root_lost(path)
            await self._journal.complete(path, entry.seq, None, linger=True)
            log.info("drain: %r is gone (%s); entry removed", path, err.strerror)
            return Resolution(DrainOutcome.GONE)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                if not self._source.root_intact():
                    return _root_lost(path)
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
        await self._settle(entry, record, profile)
        infected = record.outcome == VerdictOutcome.INFECTED
        outcome = DrainOutcome.INFECTED if infected else DrainOutcome.CLEAN
        return Resolution(outcome, nbytes=identity.size)

#: at most one line a minute about a lost root descriptor (a drain batch hits it at once)
_root_log = RateLimited(60.0, log)


def _root_lost(path: str) -> Resolution:
    """A failed open is no news of the file when the source root's descriptor is not the
    source's any more (closed, its number reused): the entry stays (Source.root_intact)."""
    _root_log("root", logging.ERROR, "drain: the source root's descriptor is not the "
              "source's any more; %r keeps its entry", path)
    return Resolution(DrainOutcome.ERROR, detail="source root descriptor lost")
