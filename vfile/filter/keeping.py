"""Verdicts kept across a new ctime that changed no content.

A file's identity includes its ctime, and some operations give a file a new
ctime without touching its bytes: a chmod, chown or utimens through the mount
(`metadata_change`), and taking one name from a file that has others (an unlink
of it, a rename onto it: the kernel updates the inode's ctime as its link count
drops; `name_dropped`). A verdict for the identity before then no longer
matches; the file must never be left with neither verdict nor journal entry
(DESIGN "Crash safety"), so the verdict follows the file to its new identity
when the content provably did not change, and otherwise the file is journaled
for the drain.

Without an fsync when it can (rs23: rsync chmods and utimes every file it
writes, then renames it; each paid an fsync before, and the rename's entry a
rescan by the drain): a file with a clean whole-file verdict, no entry, no
intent and one name, whose metadata changes or which is renamed, is noted in
flight as a create is (journal.inflight through `Journal.defer_soon`: a crash
before its record commits makes the next start walk the source, and the
watermark stays below the change's ctime), and the verdict for its new identity
resolves that record in the same or a later transaction (`complete_soon`,
tier 2: lost to a power cut, the record stays and the drain scans it again).

Without a wait when it can (rs24: rsync's utimensat and rename come within a
tick of its close, and each waited for the close scan's verdict, then its
commit): a close scan that has not read the file yet (queued for its tick,
`CloseScans.unread`) stats and reads it after the change, so it judges the new
identity itself, as it does after a writer's change. The metadata change just
goes on; a rename of a new file with no record yet (`Intent.unrecorded`) moves
its intent and the close scan along, unrecorded (`moved`): the file stays in
flight (journal.inflight) under the same token until that scan's clean verdict
covers it, exactly as if it had been created at its new name.

A name taken from a file with others (g24: `name_dropped`) gives the survivor a new
ctime, and its verdict follows only after awaits (the survivor's search, the durable
move of the name's entry). The file is noted in flight (`name_dropping`) before the
operation changes its ctime, until that verdict or its record is committed: the
watermark stays below the new ctime meanwhile, so a power cut before the verdict is
durable walks the file. A kept verdict whose transaction fails falls back to a record
(`_record`, queued in flight and retried as `_note`'s): a completion that removed the
file's entry must not leave it with neither.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, replace

import trio

from vfile.filter import coverage
from vfile.filter.intents import Intent, IntentTable
from vfile.filter.outcomes import Outcomes
from vfile.filter.policy import Action, DecisionInputs, Event, decide
from vfile.filter.source import Source
from vfile.hooks import RequestCtx
from vfile.journal.inflight import MAX_IN_FLIGHT
from vfile.journal.ops import PreparedDefer
from vfile.journal.records import Identity, JournalError, VerdictOutcome, VerdictRecord
from vfile.journal.records import Reason as JournalReason
from vfile.journal.store import Journal
from vfile.passthrough.links import ProfileChooser

#: the gate's logger: operators filter and alert on it
log = logging.getLogger("vfile.filter.gate")

#: a noted record whose transaction failed is retried after this long, doubling up to
#: RETRY_MAX_S (as a create's: filter.newfiles)
RETRY_S = 0.1
RETRY_MAX_S = 5.0

#: how long a metadata change or rename waits for a close scan reading the file before
#: it (a small file's takes milliseconds); past it (a slow appliance), the file is
#: journaled for the drain as before, rather than hold the request up to the deadline
SCANNED_WAIT_S = 0.25


class Learnt:
    """Every verdict the gate learns passes here (it is the gate's `remember`): stored
    in the cache, and who waits for one (`Keeping._scanned`) woken."""

    def __init__(self, put: Callable[[VerdictRecord], None]) -> None:
        self._put = put
        self._event: trio.Event | None = None  # made by the first waiter

    def __call__(self, rec: VerdictRecord) -> None:
        self._put(rec)
        if self._event is not None:
            self._event.set()
            self._event = None

    async def wait(self) -> None:
        """Return once the next verdict is learnt."""
        if self._event is None:
            self._event = trio.Event()
        await self._event.wait()


@dataclass
class Follow:
    """A rename's token (`Keeping.carry_rename`): the file's close scan, not read yet,
    follows it from `src` to `path` (`Keeping.moved`)."""

    src: str
    path: str


@dataclass
class Carry:
    """A rename's token (`Keeping.carry_rename`): the verdict of the file moving to
    `path` follows it once the rename is done (`Keeping.carried`)."""

    src: str
    path: str
    before: os.stat_result
    old: VerdictRecord
    noted: PreparedDefer
    #: `Keeping._epoch()` once `before` was read: moved, and the file may have changed
    epoch: int


@dataclass(eq=False)
class Dropping:
    """A name operation's token (`Keeping.name_dropping`): the file it may take a name
    from is in flight from before its ctime changes until its kept verdict or record is
    committed (`Keeping.name_dropped`) or the operation ends (`Keeping.dropped`)."""


class Keeping:
    """The gate's `on_metadata_change` and `on_name_dropped` (module doc)."""

    def __init__(self, *, journal: Journal, intents: IntentTable, source: Source,
                 profiles: ProfileChooser, outcomes: Outcomes,
                 inputs: Callable[..., DecisionInputs], signature: Callable[[], str],
                 lookup: Callable[[Identity, str], VerdictRecord | None],
                 remember: Learnt,
                 clock: Callable[[], float],
                 start: Callable[..., None],
                 unread: Callable[..., bool] = lambda intent, path="": False) -> None:
        self._journal = journal
        self._intents = intents
        self._source = source
        self._profiles = profiles
        self._outcomes = outcomes
        self._inputs = inputs
        self._signature = signature
        self._lookup = lookup
        self._remember = remember
        self._clock = clock
        #: metadata changes so far (with `intents.begun`: `_epoch`)
        self._changes = 0
        self._start = start
        #: `CloseScans.unread`: True if an intent's close scan has not read its file yet
        self._unread = unread
        #: metadata changes and renames that waited for a close scan (`vfile status`)
        self.waits = {"metadata": 0, "rename": 0}
        #: renames in progress whose file's unrecorded intent moves along (`moved`), and
        #: whether its close scan must not have read the file (`Follow`; else `Carry`)
        self._moving: dict[str, tuple[Intent, bool]] = {}

    def _defers(self, rel: str, nlink: int) -> str | None:
        """The profile's name if it journals writes to `rel` (else None)."""
        profile = self._profiles.profile_for(rel, nlink)
        d = decide(self._inputs(Event.WRITE, profile, rel, 0, None))
        return profile.name if d.action is Action.DEFER else None

    async def metadata_change(self, path: bytes, st: os.stat_result, ctx: RequestCtx,
                              change: Callable[[], os.stat_result], *,
                              writing: bool) -> None:
        """chown/chmod/utimens: a new ctime, so a new identity. Intent first (durable);
        then the change; then, if the content provably did not change (no writer, no
        pending intent, a whole-file verdict for the old identity), that verdict is
        stored for the new identity and the intent resolved in one transaction.
        Otherwise the entry stays for the drain. At no point has the file neither."""
        rel = os.fsdecode(path)
        self._changes += 1  # (a rename's carry in progress keeps no verdict: `carried`)
        before = Identity.from_stat(st)
        stale = False
        intent = None if writing else self._intents.get(rel)
        # A close scan that has not read the file judges it after this change, as after a
        # writer's: nothing to wait for, nothing to keep (module doc).
        unread = intent is not None and intent.closing and self._unread(intent)
        if intent is not None and intent.closing and not unread:
            stale = not await self._scanned(rel, intent, st, before)
        writer = writing or unread or _unclaimed(self._intents.get(rel))
        # (`_follow` does nothing for a writer: the read txn of a lookup spared, cr22)
        old = None if writer or stale else self._lookup(before, self._signature())
        if not writer and (p := self._note(rel, st, old)) is not None and old is not None:
            # No await from the check to the queued completion: nothing else can act on
            # the file's journal state in between. If `change` fails, the noted record
            # stays for the drain.
            now = Identity.from_stat(change())
            self._carry(rel, p, old, now, same=now.size == before.size)
            return
        seq = None
        if not writer and (profile := self._defers(rel, st.st_nlink)) is not None \
                and self._journal.get_deferred(rel) is None:
            # Who changed it is kept, but as one who changed it: no read of its content
            # (`wrote`), so its end is no exposure record (journal.exposed).
            try:
                seq = await self._journal.defer(rel, before, JournalReason.MODIFIED, profile,
                                                exposure=self._outcomes.exposure(ctx, wrote=True))
            except JournalError as err:  # a failing state disk, not a bug: nothing changed
                log.error("journal: cannot journal the change of %r (%s); answering EIO",
                          rel, err)
                raise OSError(errno.EIO, f"journal: {err}") from None
        now = Identity.from_stat(change())
        if unread and intent is not None:
            self._unread(intent)  # its tick counts from the new ctime (coarse: maybe later)
        await self._follow(rel, st.st_nlink, old=old, now=now, writer=writer,
                           same=now.size == before.size, seq=seq)

    async def _scanned(self, rel: str, intent: Intent, st: os.stat_result,
                       before: Identity) -> bool:
        """A close scan is reading the file as it was before this change (rsync: utimensat
        right after the close): wait for its verdict (at most SCANNED_WAIT_S), so
        that verdict can follow the file rather than the file be journaled again for the
        drain (`_follow`). Not for its completion's commit: the record `_note` makes
        has a seq of its own, which that completion does not match. False if the file
        changed meanwhile: the caller keeps no verdict then (its `before` is stale)."""
        sig = self._signature()
        with trio.move_on_after(min(SCANNED_WAIT_S,
                                    self._profiles.profile_for(rel, st.st_nlink).deadline)):
            if not intent.done and self._lookup(before, sig) is None:
                self.waits["metadata"] += 1
            while not intent.done and self._lookup(before, sig) is None:
                await self._remember.wait()
        now = self._source.stat(rel)
        if now is None:
            return False
        return Identity.from_stat(now) == Identity.from_stat(st)

    async def carry_rename(self, src: str, dst: str, moving: os.stat_result
                           ) -> Carry | Follow | None:
        """The intent of renaming the file `moving` from `src` onto `dst`, if its verdict
        can follow it there without an fsync (module doc); None: an ordinary intent.
        A new file with no record yet (rsync renames right after the close): its intent
        moves along unrecorded (`moved`), and its close scan, if it has not read the file
        yet, judges it there (`Follow`); if it has judged it, its completion queued, the
        verdict is carried as for a file with no intent. Otherwise a close scan that judged
        the file is waited for (at most SCANNED_WAIT_S), its intent not moved to `dst`
        with its entry (a durable commit, and the entry left for the drain)."""
        intent = self._intents.get(src)
        movable = intent is not None and self._movable(intent, src, dst)
        if intent is not None and movable and self._unread(intent):
            self._moving[src] = (intent, True)
            return Follow(src, dst)
        if intent is not None and not movable and intent.closing and self._lookup(
                Identity.from_stat(moving), self._signature()) is not None:
            self.waits["rename"] += not intent.done
            with trio.move_on_after(SCANNED_WAIT_S):
                await self._intents.ended(intent)
        if (not movable and self._intents.get(src) is not None) \
                or self._journal.get_deferred(src) is not None:
            return None  # its entry and intent follow it to `dst` (gate.on_rename)
        # `moving` was read before the awaits above and the caller's: a writer may have
        # come and gone meanwhile (size and mtime put back). Read again; from here on,
        # any intent begun or metadata changed until `carried` keeps no verdict (r23).
        now = self._source.stat(src)
        if now is None:
            return None
        if Identity.from_stat(now) != Identity.from_stat(moving):
            return None
        old = self._lookup(Identity.from_stat(moving), self._signature())
        p = self._note(dst, moving, old)
        if p is None or old is None:
            return None
        if intent is not None:  # (movable, no await since: its completion is still queued)
            self._moving[src] = (intent, False)
        return Carry(src, dst, moving, old, p, self._epoch())

    def _movable(self, intent: Intent, src: str, dst: str) -> bool:
        """The file at `src`, new, its intent unrecorded and claimed by its close scan, can
        be renamed onto `dst` with that intent unrecorded (`moved`): nothing is journaled
        or being written at either name, and both have the same profile (the one its
        close scan and its record, if it is made, use)."""
        j = self._journal
        return intent.unrecorded and intent.closing and dst not in self._intents \
            and j.get_deferred(src) is None and j.get_deferred(dst) is None \
            and (profile := self._defers(src, 1)) is not None \
            and profile == self._defers(dst, 1)

    def moved(self, src: str, dst: str) -> bool:
        """The rename of `src` onto `dst` is done (the gate's `on_rename`, in the trio step
        of `carry_rename`): True if the file's unrecorded intent moved with it (and its
        close scan, if it has not read the file yet); False: the caller moves the intent
        as for any rename (its record made)."""
        intent, unread = self._moving.pop(src, (None, False))
        if intent is None or self._intents.get(src) is not intent or dst in self._intents:
            return False
        # A `Follow`'s close scan must still read the file after the rename, or its
        # verdict would be for the identity before (no await since `carry_rename`: it is).
        if not self._unread(intent, dst) and unread:
            return False
        self._intents.move(src, dst, displace=False)
        return True

    def _epoch(self) -> int:
        """Moves with every content or metadata change made through the mount."""
        return self._intents.begun + self._changes

    def carried(self, c: Carry | Follow) -> None:
        """The rename of `c` is over (done or failed): the verdict follows the file now at
        `c.path` if it is the one that moved, its content unchanged; else the noted
        record stays for the drain."""
        self._moving.pop(c.src, None)  # (the rename failed: the intent stays at `src`)
        if isinstance(c, Follow):
            return
        st = self._source.stat(c.path)
        if st is None:
            return  # gone: the drain finds it so
        b = c.before
        same = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) == (
            b.st_dev, b.st_ino, b.st_size, b.st_mtime_ns) and self._epoch() == c.epoch
        if (st.st_dev, st.st_ino) == (b.st_dev, b.st_ino):
            self._carry(c.path, c.noted, c.old, Identity.from_stat(st), same=same)

    def _note(self, rel: str, st: os.stat_result, old: VerdictRecord | None
              ) -> PreparedDefer | None:
        """A record for `rel`, noted in flight and queued, if the verdict `old` can follow
        the file without an fsync: a clean whole-file one, the file with one name, no
        writer, and no entry but the one of an intent whose close scan judged the file
        (`old`; its completion, queued before this record, matches its own seq only);
        while the queue keeps up, as for creates (filter.newfiles). None: the caller
        takes the durable path."""
        j = self._journal
        intent = self._intents.get(rel)
        if old is None or old.outcome != VerdictOutcome.CLEAN or not coverage.is_whole(old) \
                or st.st_nlink != 1 or (intent is not None and not intent.closing) \
                or (intent is None and j.get_deferred(rel) is not None) \
                or not j.new_files_covered() \
                or j.inflight.failed or len(j.inflight) >= MAX_IN_FLIGHT:
            return None
        profile = self._defers(rel, 1)
        if profile is None:
            return None
        p = j.defer_soon(rel, profile, exposure=None,
                         on_done=lambda err: self._noted(rel, p, profile, err))
        return p

    def _carry(self, rel: str, p: PreparedDefer, old: VerdictRecord, now: Identity, *,
               same: bool) -> None:
        """`old`'s verdict for `now`, resolving the noted record `p` (tier 2)."""
        if not same:
            return  # the content may have changed: the record stays for the drain
        kept = replace(old, identity=now, time=self._clock())
        self._remember(kept)

        def done(err: JournalError | None) -> None:
            if err is not None:  # the record stays: the drain scans it again
                log.warning("journal: cannot keep the verdict of %r: %s", rel, err)

        if not self._journal.complete_soon(rel, p, kept, done):
            log.info("journal: queue full: %r left to the drain", rel)

    def _noted(self, rel: str, p: PreparedDefer, profile: str, err: JournalError | None
               ) -> None:
        # On the trio thread, from the group committer: must not raise.
        if err is None or not self._journal.inflight.failed_once(p):
            return
        log.error("journal: the record of %r was not committed (%s); retrying", rel, err)
        try:
            self._start(self._retry, rel, p, profile)
        except RuntimeError:  # stopping: the stop is not recorded as clean (inflight)
            log.error("journal: %r: no retry while stopping; the next start walks", rel)

    async def _retry(self, rel: str, p: PreparedDefer, profile: str) -> None:
        delay = RETRY_S
        while True:
            await trio.sleep(delay)
            try:
                await self._journal.defer(rel, None, JournalReason.MODIFIED, profile)
            except JournalError as err:
                delay = min(delay * 2, RETRY_MAX_S)
                log.warning("journal: %r: record still not committed: %s", rel, err)
                continue
            self._journal.inflight.land(p)
            return

    async def relinked(self, rel: str, survivor: str) -> int | None:
        """An unlink took `rel` from a file living on as `survivor`: `rel`'s entry moved
        there (gate.on_unlink); its seq. Refused by the state disk, the unlink is made
        all the same: the survivor is recorded in flight and retried instead."""
        try:
            return await self._journal.relink_path(rel, survivor)
        except JournalError as err:  # (tests/t5_follow_journal26_test.py)
            log.error("journal: cannot move the entry of %r to %r (%s); its record is "
                      "queued in flight and retried", rel, survivor, err)
            st = self._source.stat(survivor)
            self._record(survivor, 1 if st is None else st.st_nlink, None)
            return None

    def name_dropping(self, st: os.stat_result) -> Dropping | None:
        """An unlink or rename is about to take a name from the file `st` (module doc):
        if it has others, it is in flight until `dropped` (None: it has one name)."""
        if st.st_nlink <= 1 or not stat.S_ISREG(st.st_mode):
            return None
        token = Dropping()
        self._journal.inflight.note(token)  # before the new ctime: the watermark rule
        return token

    def dropped(self, token: Dropping) -> None:
        """The operation of `token` is over: its kept verdict (or record) committed, or
        nothing to keep. (Once `_record` took its place in flight: nothing to do.)"""
        self._journal.inflight.resolve(token)

    async def name_dropped(self, survivor: bytes, before: os.stat_result,
                           noted: object = None) -> None:
        """One name of a multiply-linked file went (an unlink, a rename onto it) and the
        file lives on as `survivor`, with the ctime the kernel gave it then; `before`:
        its stat before (tests/t5_race22_linkctime_test.py). `noted`: in flight since
        before (`name_dropping`), a record's place if the verdict cannot be kept; the
        caller ends it (`dropped`) once this returns (tests/t5_name_dropped24_test.py)."""
        rel = os.fsdecode(survivor)
        st = self._source.stat(rel)
        if st is None:
            return  # gone already: nothing to keep
        if (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino):
            return  # the name was taken meanwhile: its own operation journaled it
        was, now = Identity.from_stat(before), Identity.from_stat(st)
        intent = self._intents.get(rel) or (None if st.st_nlink <= 1 else self._intents.find(
            lambda p: self._source.same_file(p, st)))
        token = noted if isinstance(noted, Dropping) else None
        if now != was:
            await self._follow(rel, st.st_nlink, old=self._lookup(was, self._signature()),
                               now=now, writer=_unclaimed(intent),
                               same=(now.size, now.mtime_ns) == (was.size, was.mtime_ns),
                               seq=None, noted=token)

    async def _follow(self, rel: str, nlink: int, *, old: VerdictRecord | None,
                      now: Identity, writer: bool, same: bool, seq: int | None,
                      noted: Dropping | None = None) -> None:
        """The file at `rel` has the new identity `now`, its content unchanged by that
        (`same`: as far as its size and times show): `old`, the verdict for its identity
        before, follows it. `writer`: it is being written (a writer has it open, or an
        intent no close scan claimed yet): that close scan reads it after this. `seq`:
        the entry journaled for this change, if one was.

        Otherwise a scan may be under way that read the file before (a close scan whose
        intent it claimed, the drain's): its completion would resolve the entry with a
        verdict for the identity before, and the file would have neither (the entry
        gone, the verdict not matching: tests/t5_race22_setattr_test.py). So the file
        is journaled again: a new seq, which that completion does not match."""
        if writer:
            return
        if old is not None and same:
            await self._keep(rel, nlink, old, now, seq, noted)
        elif seq is None and (profile := self._defers(rel, nlink)) is not None:
            try:
                await self._journal.defer(rel, now, JournalReason.MODIFIED, profile,
                                          durable=False)
            except JournalError as err:
                # The change is made: an EIO now would say it was not, and a scan's
                # completion may still remove the entry (tests/t5_follow_journal26_test).
                log.error("journal: cannot journal %r again after its change (%s); its "
                          "record is queued in flight and retried", rel, err)
                self._record(rel, nlink, noted)

    async def _keep(self, rel: str, nlink: int, old: VerdictRecord, now: Identity,  # noqa: PLR0917
                    seq: int | None, noted: Dropping | None) -> None:
        """`old`'s verdict for the file's new identity `now` (and entry `seq` resolved).
        Tier 2 even while a scan's completion (tier 2 too) may remove the file's entry in
        an earlier transaction: a power cut can lose this one and keep that one only while
        the durable watermark is below the change's ctime (the watermark's own durable
        transaction is queued after this one once it could pass it), so the walk then
        journals the file (README "A kept verdict racing a completion")."""
        kept = replace(old, identity=now, time=self._clock())
        self._remember(kept)
        try:
            if seq is not None:
                await self._journal.complete(rel, seq, kept)
            else:
                await self._journal.put_verdict(kept)
        except JournalError as err:
            log.error("journal: cannot keep the verdict of %r: %s", rel, err)
            if seq is None:  # (else its entry stays for the drain)
                self._record(rel, nlink, noted)

    def _record(self, rel: str, nlink: int, noted: Dropping | None) -> None:
        """The file's record, the fallback when its kept verdict cannot be stored: a
        completion may have removed its entry meanwhile (tests/t5_name_dropped24_test.py).
        Queued in flight (in `noted`'s place, since its time), retried until committed,
        as `_note`'s."""
        profile = self._defers(rel, nlink)
        if profile is None:
            return
        try:
            p = self._journal.defer_soon(rel, profile, exposure=None, token=noted,
                                         on_done=lambda err: self._noted(rel, p, profile, err))
        except JournalError as err:  # a read-only journal: nothing can be recorded
            log.error("journal: %r: no record either: %s", rel, err)


def _unclaimed(intent: Intent | None) -> bool:
    """A write intent no close scan has claimed yet: its close scan is still to come."""
    return intent is not None and not intent.closing
