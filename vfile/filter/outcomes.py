"""Carrying out the gate's decisions: audit events, log lines, counters, journal records.

`vfile.filter.policy.decide` says what to do with an open or a write; this
module does it: allow (saying so when the file goes unscanned), defer
(journal the file for the drain, tier 2: committed without fsync, waited for
at most the profile's deadline, then held in memory), or deny (`Denied`).
Log lines that could repeat per open are rate-limited per profile.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

import trio

from vfile.config.model import Profile
from vfile.filter.intents import IntentTable
from vfile.filter.policy import Action, Decision, Reason
from vfile.filter.verdicts import Key
from vfile.hooks import Denied, RequestCtx
from vfile.journal.records import (
    Exposure,
    Identity,
    JournalError,
    JournalFull,
    exposure_to_json,
)
from vfile.journal.records import Reason as JournalReason
from vfile.journal.store import Journal
from vfile.observe.observers import Observer
from vfile.observe.ratelog import RateLimited
from vfile.scanner.verdict import Verdict

#: the gate's logger: operators filter and alert on it (the gate split kept its name)
log = logging.getLogger("vfile.filter.gate")

#: at most one exposure line per profile per this many seconds
EXPOSURE_LOG_INTERVAL = 10.0
#: at most one "denied, no verdict" line per profile per this many seconds
DENY_LOG_INTERVAL = 1.0
#: at most one "journal full" line per this many seconds
FULL_LOG_INTERVAL = 60.0


def exposures_json(exposures: tuple[Exposure, ...]) -> list[dict[str, object]]:
    return [exposure_to_json(x) for x in exposures]


def command_of(pid: int) -> str:
    """The caller's command name (from /proc), or "?" once it is gone."""
    # os.open/read, not open(): the text-file stack cost 3x the syscalls, once per
    # write intent on the trio thread (README "Creates under scanning", cr22).
    try:
        fd = os.open(f"/proc/{pid}/comm", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return "?"
    try:
        raw = os.read(fd, 64)  # TASK_COMM_LEN is 16
    except OSError:
        return "?"
    finally:
        os.close(fd)
    return raw.decode("utf-8", "replace").strip() or "?"


@dataclass
class Stats:
    """The gate's counters (`vfile status`)."""


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
    journal_full: int = 0


class Outcomes:
    """Carries out decisions for the gate; shares its counters, intents and observer."""

    def __init__(self, journal: Journal, intents: IntentTable, observer: Observer,
                 stats: Stats, clock: Callable[[], float]) -> None:
        self._journal = journal
        self._intents = intents
        self.observer = observer
        self.stats = stats
        self._clock = clock
        self._exposure_log = RateLimited(EXPOSURE_LOG_INTERVAL, log)
        self._deny_log = RateLimited(DENY_LOG_INTERVAL, log)
        self._held_log = RateLimited(EXPOSURE_LOG_INTERVAL, log)
        self._full_log = RateLimited(FULL_LOG_INTERVAL, log)

    def exposure(self, ctx: RequestCtx, *, wrote: bool = False) -> Exposure:
        return Exposure(uid=ctx.uid, pid=ctx.pid, command=command_of(ctx.pid),
                        time=self._clock(), wrote=wrote)

    async def carry_out(self, d: Decision, path: str, identity: Identity, profile: Profile, *,
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
            # Tier 2 (README "Durability of journal records"): an unscanned read changes
            # no content, so its record is committed without fsync, and waited for at
            # most the deadline; then it stays queued in memory until the disk takes it.
            seq: int | None = None
            try:
                with trio.move_on_after(profile.deadline):
                    seq = await self._journal.defer(path, identity,
                                                    JournalReason(d.reason.value), profile.name,
                                                    exposure=self.exposure(ctx), error=error,
                                                    durable=False, hold=True)
            except JournalFull as err:
                raise self.full(path, err) from None
            if seq is None:
                self._held_log(f"held:{profile.name}", logging.WARNING,
                               "journal: %r recorded in memory only (the state disk took no "
                               "write within %gs); written when it does", path,
                               profile.deadline)
            elif (intent := self._intents.get(path)) is not None:
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

    def refuse_write(self, d: Decision, path: str, profile: Profile,
                     ctx: RequestCtx) -> NoReturn:
        """A write (open for write, create, rename onto, ...) refused: counted, audited,
        logged (rate-limited), and `Denied`."""
        self.stats.denials += 1
        self.observer.audit("deny", path, verdict="none", profile=profile.name,
                            action="deny-write", reason=d.reason.value, uid=ctx.uid,
                            pid=ctx.pid)
        self._deny_log(f"write:{profile.name}", logging.WARNING,
                       "denied write: %r (profile %s): %s", path, profile.name, d.reason.value)
        raise Denied(d.errno, f"write refused: {d.reason.value}")

    def full(self, path: str, err: JournalFull) -> OSError:
        """The journal cannot record `path`: the operation fails with EIO (nothing unscanned
        goes unrecorded), counted, with one log line a minute rather than one per open."""
        self.stats.journal_full += 1
        self._full_log("full", logging.ERROR, "journal full: %r and others fail with EIO "
                       "until it has room: %s", path, err)
        return OSError(errno.EIO, "journal full")

    async def forget_unlinked(self, path: str, gone: Key | None = None) -> None:
        """Forget the entry of a file whose last name is gone, and the verdicts of
        `gone` (its key) with it; its exposures are kept.

        The unlink is made on the source when this runs: a state disk refusing the
        record (full, failing) must not answer EIO, or the caller would think the file
        still there and retry. Nothing is lost: the entry stays, and the drain drops an
        entry whose file is gone (filter.resolution), as after a power cut (tier 2)."""
        try:
            entry = await self._journal.forget_path(path, gone=gone)
        except JournalError as err:
            log.error("journal: cannot forget the entry of %r after its unlink (%s); the "
                      "drain drops it", path, err)
            return
        if entry is not None:
            self.audit_exposures(path, "unlinked", entry.exposures)

    def drop_verdicts(self, path: str, gone: Key | None) -> None:
        """The file a rename replaced at `path` lost its last name: its verdicts can never
        match again (a29: they stayed until the hourly collection, one per `mv` over a
        file). Queued, not waited for (a rename waiting for it took 1.5x as long); tier
        2: one lost or refused is the hourly collection's."""
        if gone is not None and not self._journal.drop_verdicts_soon([gone]):
            log.info("journal: the verdicts of the file renamed over at %r are left to "
                     "the hourly collection (the journal's queue is full)", path)

    def audit_exposures(self, path: str, outcome: str, exposures: tuple[Exposure, ...]) -> None:
        readers = tuple(x for x in exposures if not x.wrote)
        if readers:
            self.observer.audit("exposures", path, outcome=outcome,
                                exposures=exposures_json(exposures))
