"""The gate: scan on open and after write, verdict cache, fail modes.

The gate implements `vfile.hooks.FileHooks` for the passthrough. It gathers
facts, asks the pure `vfile.policy.decide`, and carries the answer out.

Invariants:
- No open waits longer than its profile's deadline: every wait on a scan is
  under `trio.move_on_after(profile.deadline)`; with a window active or no
  appliance available, no open waits at all.
- Concurrent opens of one identity (at one signature version) share one scan
  (a "flight"). The scan runs in the gate's own nursery (`serve`), on its own
  file descriptor, so a waiter cancelled by a FUSE interrupt neither kills it
  for the others nor pulls the descriptor from under it.
- `safe`: the journal entry (with who opened the file) is durable before the
  open returns. Write intents are durable before `on_write_intent` returns.
- A verdict is stored for the identity the scanned descriptor had before and
  after the scan; content that changed during the scan gets no verdict.
- While a path has an unresolved write intent, a cached clean verdict does
  not count for it. A close scan resolves the intent (`journal.complete`,
  verdict and removal in one transaction) only if no newer intent replaced
  it; on failure the entry stays for the drain, with the file's new identity.
- Setting a window cancels every scan and every wait in flight at once: the
  waiters take their fail mode with reason `window`.
- Background tasks never raise into the nursery for journal or file trouble:
  they log it and leave the journal entry in place.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

import trio

from journal.records import DeferredEntry, Exposure, Identity, JournalError, VerdictRecord
from journal.records import Reason as JournalReason
from journal.store import Journal
from scanner.pool import Pool
from scanner.verdict import Verdict
from vfile.actions import Actions, open_parent
from vfile.config import Config, Profile, Trigger
from vfile.drain import Outcome as DrainOutcome
from vfile.drain import Resolution
from vfile.hooks import Denied, RequestCtx
from vfile.observe import Observer
from vfile.policy import (
    Action,
    Cached,
    Decision,
    DecisionInputs,
    Event,
    QuotaState,
    Reason,
    ScanResult,
    decide,
)
from vfile.ratelog import RateLimited
from vfile.verdicts import VerdictCache

log = logging.getLogger(__name__)

#: verdicts kept in memory (LRU, one per file and signature version: vfile.verdicts,
#: about 0.5 KiB each); the journal holds the rest
DEFAULT_CACHE_SIZE = 65536
#: background scans after a last close running at once (on-open scans do not wait for them)
CLOSE_SCANS = 4
#: at most one exposure line per profile per this many seconds
EXPOSURE_LOG_INTERVAL = 10.0
#: at most one "denied, no verdict" line per profile per this many seconds
DENY_LOG_INTERVAL = 1.0

VerdictKey = tuple[Identity, str]
#: how long the gate reuses the pool's signature version before asking again
SIG_CACHE_S = 0.05


def command_of(pid: int) -> str:
    """The caller's command name (from /proc), or "?" once it is gone."""
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as f:
            return f.read().strip() or "?"
    except OSError:
        return "?"


def _reopen(fd: int) -> int:
    """A descriptor of our own on the same file, readable, with its own offset.

    Reopening through /proc gives a new open file description of the same
    inode even if the path was renamed meanwhile; `dup` is the fallback.
    """
    try:
        return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError:
        return os.dup(fd)


@dataclass(eq=False)
class _Flight:
    """One scan in flight, shared by every open of the same identity."""

    scope: trio.CancelScope
    done: trio.Event = field(default_factory=trio.Event)
    result: ScanResult = ScanResult.NOT_ATTEMPTED
    verdict: Verdict | None = None


@dataclass(eq=False)
class _Intent:
    """A write intent: replaced by each new write, while `seq` follows re-defers."""

    seq: int


@dataclass
class _Stats:
    scans: int = 0
    close_scans: int = 0
    shared: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    infections: int = 0
    exposures: int = 0
    deferrals: int = 0
    denials: int = 0
    intents: int = 0


class Gate:
    """The scanning hooks; built by the mount, run with `nursery.start(gate.serve)`."""

    trivial = False

    def __init__(self, config: Config, pool: Pool, journal: Journal, actions: Actions, *,
                 source_fd: int, clock: Callable[[], float] = time.time,
                 cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        self._config = config
        self._pool = pool
        self._journal = journal
        self._actions = actions
        self._root = source_fd
        self._clock = clock
        self._cache = VerdictCache(cache_size)
        self._flights: dict[VerdictKey, _Flight] = {}
        #: cancel scopes of every wait and scan in flight (a window cancels them all)
        self._scopes: set[trio.CancelScope] = set()
        #: path → its unresolved write intent
        self._intents: dict[str, _Intent] = {}
        self._window = False
        self._last_sig = ""
        self._sig_cached = ""
        self._sig_until = 0.0
        self._nursery: trio.Nursery | None = None
        self._close_slots = trio.Semaphore(CLOSE_SCANS)
        self._busy = 0
        self._idle = trio.Event()
        self._idle.set()
        self._exposure_log = RateLimited(EXPOSURE_LOG_INTERVAL, log)
        self._deny_log = RateLimited(DENY_LOG_INTERVAL, log)
        self.stats = _Stats()
        #: profile name -> scan-debt state; the mount wires in its QuotaMonitor
        self.quota: Callable[[str], QuotaState] = lambda name: QuotaState.NONE
        #: timings and audit events (vfile.observe); the mount wires in metrics / audit log
        self.observer = Observer()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the nursery of shared and background scans; runs until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None

    # --- state --------------------------------------------------------------------------

    @property
    def window(self) -> bool:
        return self._window

    def set_window(self, active: bool) -> None:
        """Start or end a window; starting one cancels every wait and scan at once."""
        self._window = active
        if active:
            for scope in list(self._scopes):
                scope.cancel()

    def quota_state(self, profile: Profile) -> QuotaState:
        """The profile's scan-debt state, as the mount's quota monitor last measured it."""
        return self.quota(profile.name)

    @property
    def last_signature(self) -> str:
        """The newest signature version any appliance reported (persisted by the mount)."""
        return self._last_sig

    def assume_signature(self, sig: str) -> None:
        """Trust `sig` (remembered from an earlier run) until an appliance reports one:
        a mount that boots with every appliance down still finds its stored verdicts."""
        if not self._last_sig:
            self._last_sig = sig

    def _sig(self) -> str:
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

    def _remember(self, rec: VerdictRecord) -> None:
        self._cache.put(rec)

    def forget_file(self, key: tuple[int, int]) -> None:
        """The kernel forgot the file (st_dev, st_ino): drop its cached verdicts. A
        deleted file's can never match again; a live file's are still in the journal."""
        self._cache.drop_file(key)

    def _inputs(self, event: Event, profile: Profile, path: str, size: int,
                cached: VerdictRecord | None, *, writing: bool = False,
                reading: bool = True) -> DecisionInputs:
        trigger = Trigger.OPEN if event is Event.OPEN else Trigger.CLOSE
        return DecisionInputs(
            event=event, trigger_enabled=trigger in profile.triggers,
            cached=Cached.NONE if cached is None else Cached(cached.outcome),
            write_pending=path in self._intents, writing=writing, reading=reading,
            window=self._window,
            appliance_down=not self._pool.available(), oversize=profile.is_oversize(size),
            oversize_rule=profile.oversize, fail_mode=profile.fail_mode,
            quota=self.quota_state(profile))

    def statistics(self) -> dict[str, object]:
        s = self.stats
        lookups = s.cache_hits + s.cache_misses
        return {
            "scans": s.scans, "close_scans": s.close_scans, "shared_scans": s.shared,
            "cache_hits": s.cache_hits, "cache_misses": s.cache_misses,
            "cache_hit_rate": round(s.cache_hits / lookups, 4) if lookups else None,
            "cached_verdicts": len(self._cache), "infections": s.infections,
            "exposures": s.exposures, "deferrals": s.deferrals, "denials": s.denials,
            "write_intents": s.intents, "pending_intents": len(self._intents),
            "in_flight": len(self._flights), "window": self._window,
        }

    # --- scanning -----------------------------------------------------------------------

    def _start(self, fn: Callable[..., Awaitable[None]], *args: object) -> None:
        if self._nursery is None:
            raise RuntimeError("Gate.serve() is not running")

        async def tracked() -> None:
            try:
                await fn(*args)
            except Exception:
                # A bug in one background scan must not take the mount down; its
                # journal entry (if any) stays for the drain.
                log.exception("background scan task failed")
            finally:
                self._busy -= 1
                if not self._busy:
                    self._idle.set()

        self._nursery.start_soon(tracked)
        if not self._busy:
            self._idle = trio.Event()
        self._busy += 1

    async def wait_idle(self) -> None:
        """Wait until no scan, verdict store or infected action is under way."""
        while self._busy:
            await self._idle.wait()

    async def _scan(self, fd: int, identity: Identity, profile: Profile,
                    scope: trio.CancelScope) -> tuple[ScanResult, Verdict | None]:
        """`_scan_once`, timed for the observer."""
        started = time.perf_counter()
        result, verdict = await self._scan_once(fd, identity, profile, scope)
        self.observer.scanned(result.value, verdict.appliance if verdict is not None else "",
                              time.perf_counter() - started)
        return result, verdict

    async def _scan_once(self, fd: int, identity: Identity, profile: Profile,
                         scope: trio.CancelScope) -> tuple[ScanResult, Verdict | None]:
        """Scan our own descriptor `fd` under `scope`; classify what came back."""
        limit = profile.scan_first if profile.is_oversize(identity.size) else None
        verdict: Verdict | None = None
        self._scopes.add(scope)
        try:
            with scope:
                verdict = await self._pool.scan_fd(
                    fd, size=identity.size, limit=limit,
                    attempt_timeout=profile.attempt_timeout, retries=profile.retries)
        finally:
            self._scopes.discard(scope)
        if verdict is None:
            return ScanResult.TIMEOUT, None
        if verdict.is_error:
            down = not self._pool.available()
            return (ScanResult.UNAVAILABLE if down else ScanResult.ERROR), verdict
        if Identity.from_stat(os.fstat(fd)) != identity:
            # Written to while we read it: the verdict says nothing about either version.
            return ScanResult.ERROR, Verdict.error("file changed during the scan")
        return (ScanResult.CLEAN if verdict.is_clean else ScanResult.INFECTED), verdict

    def _record(self, identity: Identity, verdict: Verdict, sig: str) -> VerdictRecord:
        return VerdictRecord(identity=identity, sig_version=verdict.sig_version or sig,
                             outcome=verdict.outcome.value, signature=verdict.detail,
                             appliance=verdict.appliance, time=self._clock())

    async def _run_flight(self, key: VerdictKey, flight: _Flight, fd: int, path: str,
                          profile: Profile) -> None:
        identity, sig = key
        try:
            self.stats.scans += 1
            flight.result, flight.verdict = await self._scan(fd, identity, profile,
                                                             flight.scope)
        except OSError as err:
            flight.result, flight.verdict = ScanResult.ERROR, Verdict.error(str(err))
        finally:
            os.close(fd)
            self._flights.pop(key, None)
            record = None
            if flight.verdict is not None and flight.result in (ScanResult.CLEAN,
                                                                 ScanResult.INFECTED):
                record = self._record(identity, flight.verdict, sig)
                self._remember(record)  # before waking the waiters: the next open hits it
            flight.done.set()
        if record is not None:
            partial = profile.is_oversize(identity.size)
            await self._settle(path, record, profile, persist=not partial)

    async def _settle(self, path: str, record: VerdictRecord, profile: Profile, *,
                      persist: bool, seq: int | None = None) -> None:
        """Store a verdict (resolving a journal entry it answers), act if infected."""
        try:
            if seq is None and persist:
                entry = self._journal.get_deferred(path)
                if entry is not None and entry.identity == record.identity \
                        and path not in self._intents:
                    seq = entry.seq
            if seq is not None:
                await self._journal.complete(path, seq, record)
            elif persist or record.outcome == "infected":
                await self._journal.put_verdict(record)
        except JournalError as err:
            log.error("journal: cannot store the verdict for %r: %s", path, err)
        if record.outcome != "infected":
            self.observer.audit("verdict", path, verdict=record.outcome,
                                appliance=record.appliance, profile=profile.name, action="none")
            return
        self.stats.infections += 1
        done = await self._actions.apply(profile.infected_action, path, record,
                                         profile=profile.name, hook=profile.hook)
        self.observer.audit("verdict", path, verdict="infected", signature=record.signature,
                            appliance=record.appliance, profile=profile.name,
                            action=profile.infected_action.value, result=done)
        log.warning("infected: %r signature %s (profile %s, action %s: %s)", path,
                    record.signature, profile.name, profile.infected_action.value, done)

    async def _scan_for_open(self, path: str, fd: int, identity: Identity, sig: str,
                             profile: Profile) -> tuple[ScanResult, Verdict | None]:
        key = (identity, sig)
        flight = self._flights.get(key)
        if flight is None:
            own_fd = _reopen(fd)
            flight = _Flight(trio.CancelScope(deadline=trio.current_time() + profile.deadline))
            self._flights[key] = flight
            try:
                self._start(self._run_flight, key, flight, own_fd, path, profile)
            except BaseException:
                os.close(own_fd)
                self._flights.pop(key, None)
                raise
        else:
            self.stats.shared += 1
        with trio.move_on_after(profile.deadline) as wait:
            self._scopes.add(wait)
            try:
                await flight.done.wait()
            finally:
                self._scopes.discard(wait)
        if not flight.done.is_set():
            return ScanResult.TIMEOUT, None
        return flight.result, flight.verdict

    # --- carrying out a decision ---------------------------------------------------------

    def _exposure(self, ctx: RequestCtx) -> Exposure:
        return Exposure(uid=ctx.uid, pid=ctx.pid, command=command_of(ctx.pid),
                        time=self._clock())

    async def _carry_out(self, d: Decision, path: str, identity: Identity, profile: Profile, *,
                         ctx: RequestCtx, verdict: Verdict | None,
                         from_cache: bool = False) -> None:
        if d.action is not Action.ALLOW or d.exposure:
            self.observer.audit(
                "deny" if d.action is Action.DENY else "unscanned", path,
                verdict=d.reason.value if d.reason is Reason.INFECTED else "none",
                signature=verdict.detail if verdict is not None and verdict.is_infected else None,
                profile=profile.name, action=d.action.value, reason=d.reason.value,
                uid=ctx.uid, pid=ctx.pid)
        if d.action is Action.ALLOW:
            if d.exposure:
                self.stats.exposures += 1
                self._exposure_log(f"open:{profile.name}", logging.WARNING,
                                   "exposure: %r opened unscanned by uid %d pid %d "
                                   "(profile %s, fail-open, %s)", path, ctx.uid, ctx.pid,
                                   profile.name, d.reason.value)
            return
        if d.action is Action.DEFER:
            self.stats.deferrals += 1
            self.stats.exposures += d.exposure
            error = verdict.detail if verdict is not None and verdict.is_error else ""
            seq = await self._journal.defer(path, identity, JournalReason(d.reason.value),
                                            profile.name, exposure=self._exposure(ctx),
                                            error=error)
            if (intent := self._intents.get(path)) is not None:
                intent.seq = seq  # the same entry, re-deferred: the close scan resolves it
            self._exposure_log(f"safe:{profile.name}", logging.INFO,
                               "deferred: %r opened unscanned (profile %s, %s), journaled",
                               path, profile.name, d.reason.value)
            return
        self.stats.denials += 1
        if d.reason is Reason.INFECTED:
            what = f"infected with {verdict.detail}" if verdict is not None else "infected"
            if from_cache:  # a fresh detection is logged once, with its action, by the scan
                log.info("denied: %r %s (cached verdict, profile %s)", path, what, profile.name)
        elif d.reason is Reason.OVERSIZE:
            what = f"larger than max_size {profile.max_size}"
            log.warning("denied: %r (profile %s): %s", path, profile.name, what)
        elif d.reason is Reason.QUOTA:
            what = "scan-debt quota exceeded"
            self._deny_log(f"quota:{profile.name}", logging.WARNING, "denied: %r (profile %s): %s",
                           path, profile.name, what)
        else:
            what = f"no verdict within {profile.deadline:g}s ({d.reason.value})"
            self._deny_log(f"closed:{profile.name}", logging.WARNING,
                           "denied: %r (profile %s): %s", path, profile.name, what)
        raise Denied(d.errno, what)

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
        rec = self._cache.get_stat(st, self._sig())
        if rec is None or rec.outcome != "clean":
            return False
        self.stats.cache_hits += 1
        self.observer.opened(Action.ALLOW.value, time.perf_counter() - started)
        return True

    async def on_open(self, path: bytes, fd: int, st: os.stat_result, flags: int,
                      ctx: RequestCtx) -> None:
        started = time.perf_counter()
        rel = os.fsdecode(path)
        profile = self._config.profile_for(rel)
        identity = Identity.from_stat(st)
        sig = self._sig()
        cached = self._lookup(identity, sig)
        access = flags & os.O_ACCMODE
        inputs = self._inputs(Event.OPEN, profile, rel, st.st_size, cached,
                              writing=access != os.O_RDONLY or bool(flags & os.O_TRUNC),
                              reading=access != os.O_WRONLY)
        d = decide(inputs)
        verdict: Verdict | None = None
        if cached is not None and cached.outcome == "infected":
            verdict = Verdict.infected(cached.signature, cached.appliance, cached.sig_version)
        if d.action is Action.SCAN:
            result, verdict = await self._scan_for_open(rel, fd, identity, sig, profile)
            if self._window and result not in (ScanResult.CLEAN, ScanResult.INFECTED):
                result = ScanResult.NOT_ATTEMPTED  # cancelled by the window: reason "window"
            d = decide(replace(inputs, scan=result, window=self._window))
        try:
            await self._carry_out(d, rel, identity, profile, ctx=ctx, verdict=verdict,
                                  from_cache=cached is not None and cached.outcome == "infected")
        finally:
            self.observer.opened(d.action.value, time.perf_counter() - started)

    async def on_write_intent(self, path: bytes, st: os.stat_result | None,
                              ctx: RequestCtx) -> None:
        rel = os.fsdecode(path)
        profile = self._config.profile_for(rel)
        d = decide(self._inputs(Event.WRITE, profile, rel, 0, None))
        if d.action is Action.DENY:
            self.stats.denials += 1
            self.observer.audit("deny", rel, verdict="none", profile=profile.name,
                                action="deny-write", reason=d.reason.value, uid=ctx.uid,
                                pid=ctx.pid)
            self._deny_log(f"write:{profile.name}", logging.WARNING,
                           "denied write: %r (profile %s): %s", rel, profile.name, d.reason.value)
            raise Denied(d.errno, f"write refused: {d.reason.value}")
        if d.action is not Action.DEFER:
            return
        identity = None if st is None else Identity.from_stat(st)
        # Registered before the journal write returns: the drain may claim the new
        # entry at once, and must see "still being written" rather than take a path
        # whose file is not there yet (a rename onto it) as gone (tests/t5_crash_test.py).
        intent = _Intent(seq=-1)
        self._intents[rel] = intent
        try:
            intent.seq = await self._journal.defer(rel, identity, JournalReason.MODIFIED,
                                                   profile.name, exposure=self._exposure(ctx))
        except BaseException:
            if self._intents.get(rel) is intent:
                del self._intents[rel]
            raise
        self.stats.intents += 1

    async def on_last_close(self, path: bytes, fd: int | None, st: os.stat_result) -> None:
        rel = os.fsdecode(path)
        intent = self._intents.get(rel)
        if intent is None:
            return  # no intent: the profile does not scan after writes
        profile = self._config.profile_for(rel)
        try:
            own_fd = _reopen(fd) if fd is not None else self._open_source(rel)
        except OSError as err:
            log.info("close scan of %r: cannot open it (%s); left to the drain", rel, err)
            self._intents.pop(rel, None)
            return
        try:
            self._start(self._run_close, rel, intent, own_fd, profile)
        except BaseException:
            os.close(own_fd)
            raise

    def _open_source(self, path: str) -> int:
        dir_fd, name = open_parent(self._root, path)
        try:
            return os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                           dir_fd=dir_fd)
        finally:
            os.close(dir_fd)

    async def _run_close(self, path: str, intent: _Intent, fd: int, profile: Profile) -> None:
        try:
            async with self._close_slots:
                await self._close_scan(path, intent, fd, profile)
        except (OSError, JournalError) as err:
            log.error("close scan of %r failed: %s; left to the drain", path, err)
        finally:
            os.close(fd)
            if self._intents.get(path) is intent:
                del self._intents[path]

    async def _close_scan(self, path: str, intent: _Intent, fd: int, profile: Profile) -> None:
        identity = Identity.from_stat(os.fstat(fd))
        sig = self._sig()
        inputs = self._inputs(Event.CLOSE, profile, path, identity.size, None)
        d = decide(inputs)
        verdict: Verdict | None = None
        if d.action is Action.SCAN:
            self.stats.close_scans += 1
            scope = trio.CancelScope(deadline=trio.current_time() + profile.deadline)
            result, verdict = await self._scan(fd, identity, profile, scope)
            if self._window and result not in (ScanResult.CLEAN, ScanResult.INFECTED):
                result = ScanResult.NOT_ATTEMPTED
            d = decide(replace(inputs, scan=result, window=self._window))
        current = self._intents.get(path) is intent
        if verdict is not None and d.reason in (Reason.CLEAN, Reason.INFECTED):
            record = self._record(identity, verdict, sig)
            self._remember(record)
            partial = profile.is_oversize(identity.size)
            # A newer intent (another writer came) keeps its entry: only store the verdict.
            await self._settle(path, record, profile, persist=not partial,
                               seq=intent.seq if current and not partial else None)
            return
        if current and d.action is Action.DEFER:
            # Keep the entry for the drain, now with the identity of the written file.
            error = verdict.detail if verdict is not None else d.reason.value
            intent.seq = await self._journal.defer(path, identity, JournalReason.MODIFIED,
                                                   profile.name, error=error)

    # --- the drain's side ------------------------------------------------------------------

    async def resolve(self, entry: DeferredEntry) -> Resolution:
        """Scan a deferred file as it is now and settle its journal entry.

        Clean or infected: the verdict is stored and the entry removed in one
        transaction (infected: the profile's action, after the fact, and the
        exposure trail logged). Gone: the entry is removed. Anything else is
        an error for the drain to release with back-off.
        """
        path = entry.path
        if self._window:
            return Resolution(DrainOutcome.ERROR, detail="window active")
        if path in self._intents:
            return Resolution(DrainOutcome.ERROR, detail="still being written")
        try:
            fd = self._open_source(path)
        except OSError as err:
            if err.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EINVAL):
                return Resolution(DrainOutcome.ERROR, detail=f"cannot open: {err.strerror}")
            await self._journal.complete(path, entry.seq, None)
            log.info("drain: %r is gone (%s); entry removed", path, err.strerror)
            return Resolution(DrainOutcome.GONE)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                await self._journal.complete(path, entry.seq, None)
                return Resolution(DrainOutcome.GONE, detail="no longer a regular file")
            identity = Identity.from_stat(st)
            profile = self._config.profile_for(path)
            sig = self._sig()
            record = self._lookup(identity, sig)
            if record is None:
                scope = trio.CancelScope(deadline=trio.current_time() + profile.deadline)
                result, verdict = await self._scan(fd, identity, profile, scope)
                if verdict is None or result not in (ScanResult.CLEAN, ScanResult.INFECTED):
                    detail = verdict.detail if verdict is not None else result.value
                    return Resolution(DrainOutcome.ERROR, detail=detail)
                self.stats.scans += 1
                record = self._record(identity, verdict, sig)
                self._remember(record)
        finally:
            os.close(fd)
        if record.outcome == "infected":
            trail = ", ".join(f"uid {e.uid} pid {e.pid} ({e.command})" for e in entry.exposures)
            log.warning("drain: %r found infected with %s after the fact; opened unscanned by: %s",
                        path, record.signature, trail or "nobody")
        await self._settle(path, record, profile, persist=True, seq=entry.seq)
        outcome = DrainOutcome.INFECTED if record.outcome == "infected" else DrainOutcome.CLEAN
        return Resolution(outcome, nbytes=identity.size)

    async def on_unlink(self, path: bytes) -> None:
        rel = os.fsdecode(path)
        self._intents.pop(rel, None)
        await self._journal.forget_path(rel)

    async def on_rename(self, old: bytes, new: bytes) -> None:
        src, dst = os.fsdecode(old), os.fsdecode(new)
        if self._is_dir(dst):
            prefix = src + "/"
            for path in [p for p in self._intents if p.startswith(prefix)]:
                self._intents[dst + "/" + path[len(prefix):]] = self._intents.pop(path)
            await self._journal.rename_tree(src, dst)
            return
        self._intents.pop(dst, None)
        intent = self._intents.pop(src, None)
        if intent is not None:
            self._intents[dst] = intent
        if self._journal.get_deferred(src) is None:
            # The moved file has no entry of its own (it had a clean verdict). Keep
            # the entry `on_write_intent(dst)` made durable before the rename: the
            # rename changed the file's ctime, so that verdict no longer matches, and
            # `rename_path` would drop dst's entry as "overwritten" and leave the file
            # with neither (found by tests/t5_crash_test.py).
            return
        await self._journal.rename_path(src, dst)

    def _is_dir(self, path: str) -> bool:
        try:
            dir_fd, name = open_parent(self._root, path)
        except OSError:
            return False
        try:
            return stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
        except OSError:
            return False
        finally:
            os.close(dir_fd)
