"""The gate: scan on open and after write, verdict cache, fail modes.

The gate implements `vfile.hooks.FileHooks` for the passthrough: it gathers
facts, asks the pure `vfile.filter.policy.decide`, and has its parts (flights,
scanning, settling, outcomes, closing, keeping, resolution, source, verdicts,
intents) carry the answer out.

Invariants:
- No open waits longer than its profile's deadline: every wait on a scan is
  under `trio.move_on_after(profile.deadline)`; with a window active or no
  appliance available, no open waits at all.
- Concurrent opens of one identity (at one signature version) share one scan
  (a "flight"). The scan runs in the gate's own nursery (`serve`), on its own
  file descriptor, so a waiter cancelled by a FUSE interrupt neither kills it
  for the others nor pulls the descriptor from under it.
- `safe`: the journal entry (with who opened the file) is committed before the
  open returns (tier 2, or held in memory on a frozen state disk). Write intents
  follow README "Durability of journal records": fsynced before
  `on_write_intent` returns, except a `lazy` one (fsynced before its first
  write), a new file's and a kept verdict's (tier 1w: the watermark rule).
- A verdict is stored for the identity the scanned descriptor had before and
  after the scan; content that changed during the scan gets no verdict.
- A cached clean verdict counts by identity, intent or not; an open while a writer may
  hold unflushed pages is never allowed as scanned (policy's `unflushed`). A close scan
  resolves the intent (`journal.complete`, verdict and removal in one transaction) only
  if no newer intent replaced it; else the entry stays for the drain (new identity).
- Setting a window cancels every scan and every wait in flight at once: the
  waiters take their fail mode with reason `window`.
- Background tasks never raise into the nursery for journal or file trouble:
  they log it and leave the journal entry in place.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

import trio

from vfile.config.model import Config, Profile, Trigger
from vfile.filter import coverage, sticky
from vfile.filter.actions import Actions
from vfile.filter.closing import CloseScans
from vfile.filter.drain import Resolution
from vfile.filter.flights import Flight, Flights, Scopes, Tasks, VerdictKey
from vfile.filter.grace import Grace
from vfile.filter.intents import Intent, IntentTable
from vfile.filter.keeping import Carry, Dropping, Follow, Keeping, Learnt
from vfile.filter.newfiles import IntentRecords
from vfile.filter.outcomes import Outcomes, Stats
from vfile.filter.policy import (
    Action,
    Cached,
    DecisionInputs,
    Event,
    QuotaState,
    Reason,
    ScanResult,
    decide,
)
from vfile.filter.resolution import Resolver
from vfile.filter.scanning import Scanning
from vfile.filter.settling import Settler
from vfile.filter.source import Source, reopen
from vfile.filter.verdicts import Key, VerdictCache
from vfile.filter.writeintents import WriteIntents
from vfile.hooks import RequestCtx
from vfile.journal.names import swapped_path
from vfile.journal.records import DeferredEntry, Identity, VerdictOutcome, VerdictRecord
from vfile.journal.store import Journal
from vfile.observe.observers import Observer
from vfile.passthrough.links import ProfileChooser
from vfile.scanner.pool import Pool
from vfile.scanner.verdict import Verdict

log = logging.getLogger(__name__)

#: verdicts kept in memory (LRU, one per file and signature version: vfile.filter.verdicts,
#: about 0.6 KiB each); the journal holds the rest
DEFAULT_CACHE_SIZE = 65536
#: the warm path's metrics label: an enum's `.value` costs 0.3-1 µs of its ~3 µs per open
_ALLOWED = Action.ALLOW.value


class Gate:
    """The scanning hooks; built by the mount, run with `nursery.start(gate.serve)`."""

    trivial = False

    def __init__(self, config: Config, pool: Pool, journal: Journal, actions: Actions, *,
                 source_fd: int, observer: Observer | None = None,
                 quota: Callable[[str], QuotaState] | None = None,
                 clock: Callable[[], float] = time.time,
                 cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        self._config = config
        self._profiles = ProfileChooser(config)  # aware of hard links (passthrough.links)
        self._pool = pool
        self._journal = journal
        self._actions = actions
        self._source = Source(source_fd)  # the source directory, read by descriptor
        self._clock = clock
        self._cache = VerdictCache(cache_size)
        self._remember = Learnt(self._cache.put)  # (a metadata change may wait: keeping)
        #: signature updates and the per-profile grace after them
        self.grace = Grace(config.all_profiles(), find=lambda i, sig: self._cache.get(i, sig)
                           or journal.get_verdict(i, sig))
        #: cancel scopes of every wait and scan in flight (a window cancels them all)
        self._scopes = Scopes()
        self._flights = Flights(self._scopes)
        #: the nursery of shared and background scans
        self._tasks = Tasks()
        #: path → its unresolved write intent
        self._intents = IntentTable()
        self._window = False
        #: write intents' journal records (a new file's in the background, or never)
        self._records = IntentRecords(journal, self._tasks, window=lambda: self._window)
        self._intents.displaced = self._records.record_now
        self.stats = Stats()
        #: profile name -> scan-debt state (the mount's QuotaMonitor; none: never escalated)
        self.quota: Callable[[str], QuotaState] = quota or (lambda name: QuotaState.NONE)
        #: timings and audit events (vfile.observe.observers: metrics, audit log)
        self._observer = observer or Observer()
        #: scans classified and timed; the signature version
        self._scanning = Scanning(pool, self._scopes, self._observer, clock)
        #: storing verdicts, acting on infected ones
        self._settler = Settler(journal, self._intents, actions, open_source=self._source.open,
                                observer=self._observer, stats=self.stats, clock=clock)
        #: the scans after a last close
        self._closing = CloseScans(journal=journal, intents=self._intents,
                                   scanning=self._scanning, settler=self._settler,
                                   stats=self.stats, inputs=self._inputs,
                                   remember=self._remember, window=lambda: self._window,
                                   start=self._tasks.start, records=self._records)
        #: the drain's resolve
        self._resolver = Resolver(journal=journal, intents=self._intents, source=self._source,
                                  profiles=self._profiles, scanning=self._scanning,
                                  settler=self._settler, stats=self.stats, lookup=self._lookup,
                                  remember=self._remember, window=lambda: self._window,
                                  settled=self.grace.settled)
        #: carrying out decisions: audit, logs, counters, deferrals
        self._outcomes = Outcomes(journal, self._intents, self._observer, self.stats, clock)
        #: write intents: decided, journaled, made durable (before the open or the write)
        self._writes = WriteIntents(journal=journal, intents=self._intents,
                                    records=self._records, outcomes=self._outcomes,
                                    stats=self.stats, inputs=self._inputs,
                                    profile_for=self._profiles.profile_for)

        #: verdicts kept across a ctime change that changed no content
        self._keeping = Keeping(journal=journal, intents=self._intents, source=self._source,
                                profiles=self._profiles, outcomes=self._outcomes,
                                inputs=self._inputs, signature=self._scanning.signature,
                                lookup=self._lookup, remember=self._remember, clock=clock,
                                start=self._tasks.start, unread=self._closing.unread)

    @property
    def observer(self) -> Observer:
        """Timings and audit events (shared with the gate's parts: set at construction)."""
        return self._observer

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the nursery of shared and background scans; runs until cancelled."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self._records.sweep)
            await nursery.start(self._tasks.serve)
            task_status.started()

    # --- state --------------------------------------------------------------------------

    @property
    def window(self) -> bool:
        return self._window

    def set_window(self, active: bool) -> None:
        """Start or end a window; starting one cancels every wait and scan at once, and
        gives every new file its record (filter.newfiles: no verdict is coming soon)."""
        self._window = active
        if active:
            self._records.record_all()
            self._scopes.cancel_all()

    async def record_new_files(self) -> None:
        """Every new file's record made and committed (a reader of the journal is coming)."""
        await self._records.recorded()

    @property
    def last_signature(self) -> str:
        """The newest signature version any appliance reported (persisted by the mount)."""
        return self._scanning.last_signature

    def assume_signature(self, sig: str) -> None:
        """Trust `sig` (remembered from an earlier run) until an appliance reports one:
        a mount that boots with every appliance down still finds its stored verdicts."""
        self._scanning.assume_signature(sig)
        self.grace.assume(sig)

    def _lookup(self, identity: Identity, sig: str) -> VerdictRecord | None:
        rec = self._cache.get(identity, sig)
        if rec is not None:
            self.stats.cache_hits += 1
            return rec
        self.stats.cache_misses += 1
        rec = self._journal.get_verdict(identity, sig)
        if rec is not None:
            self._remember(rec)
        return rec

    def bind_kernel(self, forget_name: Callable[[bytes], Awaitable[None]]) -> None:
        self._actions.forget_name = forget_name

    def forget_file(self, key: tuple[int, int]) -> None:
        """The kernel forgot the file (st_dev, st_ino): drop its cached verdicts. A
        deleted file's can never match again; a live file's are still in the journal."""
        self._cache.drop_file(key)

    def _inputs(self, event: Event, profile: Profile, path: str, size: int,
                cached: VerdictRecord | None, *, writing: bool = False,
                reading: bool = True) -> DecisionInputs:
        trigger = Trigger.OPEN if event is Event.OPEN else Trigger.CLOSE
        return DecisionInputs(
            event=event, trigger_enabled=trigger in profile.triggers, window=self._window,
            cached=Cached.NONE if cached is None else Cached(cached.outcome),
            write_pending=path in self._intents, writing=writing, reading=reading,
            # (A write's decision never reads it: a walk of the pool per create spared.)
            appliance_down=event is not Event.WRITE and not self._pool.available(),
            oversize=profile.is_oversize(size), oversize_rule=profile.oversize,
            fail_mode=profile.fail_mode, quota=self.quota(profile.name))  # as last measured

    def statistics(self) -> dict[str, object]:
        s = self.stats
        lookups = s.cache_hits + s.cache_misses
        return {
            "scans": s.scans, "close_scans": s.close_scans, "shared_scans": s.shared,
            "close_scans_by_hash": self._closing.hashes.reused,
            "close_scans_inline": self._closing.inline, "keeping_waits": self._keeping.waits,
            "cache_hits": s.cache_hits, "cache_misses": s.cache_misses,
            "cache_hit_rate": round(s.cache_hits / lookups, 4) if lookups else None,
            "cached_verdicts": len(self._cache), "infections": s.infections,
            "exposures": s.exposures, "deferrals": s.deferrals, "denials": s.denials,
            "write_intents": s.intents, "pending_intents": len(self._intents),
            "new_files_unrecorded": len(self._records), "in_flight": len(self._flights),
            "new_files_covered_by_verdict": self._records.covered_count,
            "new_files_recorded_late": self._records.late,
            "writes_awaiting_intent_fsync": self._writes.waited,
            "intent_fsync_failures": self._writes.failed, "journal_full": s.journal_full,
            "kernel_entries_not_dropped": self._actions.entries_not_dropped,
            "window": self._window, "grace": self.grace.statistics(),
            "close_scans_by_a_close": self._closing.by_a_close,
        }

    # --- scanning -----------------------------------------------------------------------

    async def wait_idle(self) -> None:
        """Wait until no scan, verdict store or infected action is under way."""
        await self._tasks.wait_idle()

    async def _run_flight(self, key: VerdictKey, flight: Flight, fd: int, path: str,
                          profile: Profile) -> None:
        identity, sig = key
        try:
            self.stats.scans += 1
            flight.result, flight.verdict, keep = await self._scanning.scan(
                fd, identity, profile, flight.scope)
        except OSError as err:
            flight.result, flight.verdict = ScanResult.ERROR, Verdict.error(str(err))
        finally:
            os.close(fd)
            self._flights.land(key)
            record = None
            # A racy clean verdict answers these waiters only: neither cached nor stored.
            if flight.verdict is not None and keep and flight.result in (ScanResult.CLEAN,
                                                                         ScanResult.INFECTED):
                record = self._scanning.record(identity, flight.verdict, sig, profile)
                self._remember(record)  # before waking the waiters: the next open hits it
            flight.done.set()
        if record is not None:
            if profile.is_oversize(identity.size):
                await self._settler.keep_partial(path, record, profile)
            else:
                await self._settler.keep(path, record, profile)

    async def _scan_for_open(self, path: str, fd: int, identity: Identity, sig: str,
                             profile: Profile) -> tuple[ScanResult, Verdict | None]:
        key = (identity, sig)

        def launch(flight: Flight) -> None:
            own_fd = reopen(fd)
            try:
                self._tasks.start(self._run_flight, key, flight, own_fd, path, profile)
            except BaseException:
                os.close(own_fd)
                raise

        flight, shared = self._flights.take_off(key, profile.deadline, launch)
        if shared:
            self.stats.shared += 1
        return await self._flights.wait(flight, profile.deadline)

    # --- the hooks ----------------------------------------------------------------------

    def allows_cached_nowait(self, st: os.stat_result, flags: int) -> bool:
        """The warm path: True if a read-only open of a file with this stat is allowed
        by a current clean verdict alone, so `on_open` (and the path) is not needed.

        No I/O: one dict lookup. Sound because `decide` answers ALLOW for a read-only
        open with a current clean verdict whatever the profile, window, appliance or
        quota say, unless a write intent is pending; intents are keyed by path, which
        this path does not compute, so any pending intent sends every open the slow way.
        Anything else (a miss, infected, writing) returns False: ask `on_open`.
        """
        if flags & (os.O_ACCMODE | os.O_TRUNC) or self._intents:
            return False
        started = time.perf_counter()
        rec = self._cache.get_stat(st, self._scanning.signature())
        if rec is None or rec.outcome != VerdictOutcome.CLEAN or not coverage.is_whole(rec):
            return False
        self.stats.cache_hits += 1
        self.observer.opened(_ALLOWED, time.perf_counter() - started)
        return True

    async def on_open(self, path: bytes, fd: int, st: os.stat_result, flags: int,
                      ctx: RequestCtx, *, unflushed: bool = False) -> None:
        started = time.perf_counter()
        rel = os.fsdecode(path)
        profile = self._profiles.profile_for(rel, st.st_nlink)
        identity = Identity.from_stat(st)
        sig = self._scanning.signature()
        self.grace.observe(sig)
        cached = self._lookup(identity, sig)
        if cached is not None and not coverage.admits(cached, profile):
            cached = None  # a verdict on a prefix, and this rule asks for more
        tainted = False
        if cached is None and (taint := self._journal.get_taint(identity.dev,
                                                                identity.ino)) is not None:
            tainted = True  # until a scan of the current content says clean
            # A quarter of the deadline: a scan may follow if the content changed.
            with trio.move_on_after(profile.deadline / 4):
                cached = await sticky.unchanged_infected(taint, fd, identity, sig=sig,
                                                         now=self._clock())
            if cached is not None:
                self._remember(cached)
        access = flags & os.O_ACCMODE
        inputs = replace(self._inputs(Event.OPEN, profile, rel, st.st_size, cached,
                                      writing=access != os.O_RDONLY or bool(flags & os.O_TRUNC),
                                      reading=access != os.O_WRONLY),
                         tainted=tainted, unflushed=unflushed)
        if cached is None and not tainted and self.grace.carries(identity, profile):
            inputs = replace(inputs, cached=Cached.GRACE)
        d = decide(inputs)
        verdict: Verdict | None = None
        if cached is not None and cached.outcome == VerdictOutcome.INFECTED:
            verdict = Verdict.infected(cached.signature, cached.appliance, cached.sig_version)
        if d.action is Action.SCAN:
            result, verdict = await self._scan_for_open(rel, fd, identity, sig, profile)
            if self._window and result not in (ScanResult.CLEAN, ScanResult.INFECTED):
                result = ScanResult.NOT_ATTEMPTED  # cancelled by the window: reason "window"
            d = decide(replace(inputs, scan=result, window=self._window))
        try:
            from_cache = tainted or (cached is not None
                                     and cached.outcome == VerdictOutcome.INFECTED)
            await self._outcomes.carry_out(d, rel, identity, profile, ctx=ctx, verdict=verdict,
                                           from_cache=from_cache)
            if d.reason is Reason.GRACE:
                self.grace.carried_over(rel)  # journaled: the drain rescans it
        finally:
            self.observer.opened(d.action.value, time.perf_counter() - started)

    async def on_write_intent(self, path: bytes, st: os.stat_result | None,
                              ctx: RequestCtx, *, lazy: bool = False,
                              moved_from: bytes | None = None) -> Intent | Carry | Follow | None:
        if moved_from is not None and st is not None and (carry := await self._keeping.carry_rename(
                os.fsdecode(moved_from), os.fsdecode(path), st)) is not None:
            return carry  # the verdict follows the renamed file, no fsync (filter.keeping)
        return await self._writes.begin(path, st, ctx, lazy=lazy)

    async def intent_durable(self, token: object) -> None:
        """Before a write through a handle opened with a `lazy` intent (filter.writeintents)."""
        await self._writes.durable(token)

    def intent_pending(self, token: object) -> bool:
        return isinstance(token, Intent) and token.unsynced is not None \
            and not token.unsynced.durable

    def release_intent(self, token: object) -> None:
        """`token`'s operation failed or left no writer: end it (an intent's entry stays)."""
        if isinstance(token, Carry | Follow):
            self._keeping.carried(token)
        elif isinstance(token, Dropping):
            self._keeping.dropped(token)
        elif isinstance(token, Intent):
            current = self._intents.get(token.path) is token and not token.done
            self._intents.roll_back(token)
            prev = self._intents.get(token.path)  # current again: the close it skipped
            if token.close_due and current and prev not in (None, token) and not prev.closing:
                self._start_close_scan(token.path, prev, None, None)

    async def on_metadata_change(self, path: bytes, st: os.stat_result, ctx: RequestCtx,
                                 change: Callable[[], os.stat_result], *,
                                 writing: bool) -> None:
        """chown/chmod/utimens: the verdict follows the new ctime (filter.keeping)."""
        await self._keeping.metadata_change(path, st, ctx, change, writing=writing)

    def name_dropping(self, st: os.stat_result) -> object:
        return self._keeping.name_dropping(st)  # in flight: the survivor's ctime changes

    async def on_name_dropped(self, survivor: bytes, before: os.stat_result,
                              noted: object = None) -> None:
        """A name of a multiply-linked file went: the survivor's new ctime (filter.keeping)."""
        await self._keeping.name_dropped(survivor, before, noted)

    async def on_last_close(self, path: bytes, fd: int | None, st: os.stat_result) -> None:
        rel = os.fsdecode(path)
        intent = self._intents.get(rel)
        ending = [] if intent is None else [intent]
        if st.st_nlink > 1:
            # A file with several names can have an intent under more than one: an
            # open's or a truncate's under the name the server knows it by now, one an
            # unlink moved to a surviving name (t5_queued_race_links, _names). No writer
            # is left: every one of them ends now (each resolves its own entry).
            ending += [i for i in self._intents.find_all(
                lambda p: p != rel and self._source.same_file(p, st)) if not i.closing]
        for intent in ending:
            # An operation in progress (acting after this close): not ended here (`close_due`)
            intent.close_due = intent.recording
            if not intent.close_due:
                self._start_close_scan(intent.path, intent, fd, st)

    def _start_close_scan(self, rel: str, intent: Intent, fd: int | None,
                          st: os.stat_result | None) -> None:
        try:
            own_fd = reopen(fd) if fd is not None else self._source.open(rel)
        except OSError as err:
            log.info("close scan of %r: cannot open it (%s); left to the drain", rel, err)
            self._intents.finish(intent)
            return
        profile = self._profiles.profile_for(rel, (st or os.fstat(own_fd)).st_nlink)
        self._closing.start(rel, intent, own_fd, profile, st)

    # --- the drain's side ------------------------------------------------------------------

    async def resolve(self, entry: DeferredEntry) -> Resolution:
        """Scan a deferred file as it is now and settle its entry (filter.resolution)."""
        return await self._resolver.resolve(entry)

    async def resolve_batch(self, entries: list[DeferredEntry]) -> list[Resolution]:
        """`resolve` for many entries, their scans pipelined (filter.resolution)."""
        return await self._resolver.resolve_batch(entries)

    async def on_unlink(self, path: bytes, survivor: bytes | None = None, gone: Key | None = None
                        ) -> None:
        rel = os.fsdecode(path)
        if survivor is None:
            self.grace.settled(rel)
            self._intents.pop(rel)
            await self._outcomes.forget_unlinked(rel, gone)  # (refused: left to the drain)
            return
        # Still linked as `survivor`: the entry, intent and exposures go there.
        new = os.fsdecode(survivor)
        if new in self._intents:
            self._intents.pop(rel)
        else:
            self._intents.move(rel, new)
        seq = await self._keeping.relinked(rel, new)  # (refused: the survivor recorded)
        if seq is not None and (intent := self._intents.get(new)) is not None:
            intent.seq = seq

    async def on_rename(self, old: bytes, new: bytes) -> None:
        src, dst = os.fsdecode(old), os.fsdecode(new)
        self.grace.moved(src, dst)
        # An intent's record may still be queued (filter.newfiles), unseen by a read.
        queued = src in self._intents
        if self._source.is_dir(dst):
            self._intents.move_tree(src, dst)
            await self._journal.rename_tree(src, dst)
            return
        if self._keeping.moved(src, dst):
            return  # its close scan follows it, unread: nothing journaled (filter.keeping)
        self._intents.move(src, dst)
        target = self._journal.get_deferred(dst)
        if target is not None and any(not x.wrote for x in target.exposures):
            # Who read the file this rename replaced: kept, and said so.
            await self._journal.keep_exposures(dst, "overwritten")
            self._outcomes.audit_exposures(dst, "overwritten", target.exposures)
        if not queued and self._journal.get_deferred(src) is None:
            return  # nothing to move (journal.tables.op_rename): spare a durable commit
        await self._journal.rename_path(src, dst)

    async def on_exchange(self, a: bytes, b: bytes) -> None:
        """`a` and `b` (two files or two directories) were exchanged: every journal
        entry and in-memory intent at or below either follows its file."""
        x, y = os.fsdecode(a), os.fsdecode(b)
        # Its own intents ended before (passthrough.nameops); a writer's at `a` or `b` and
        # those below exchanged directories follow their files (op_exchange keeps seqs).
        self._intents.relocate({path: new for path in self._intents
                                if (new := swapped_path(path, x, y)) is not None})
        await self._journal.exchange(x, y)
