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
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import replace

from vfile.filter.intents import Intent, IntentTable
from vfile.filter.outcomes import Outcomes
from vfile.filter.policy import Action, DecisionInputs, Event, decide
from vfile.filter.source import Source
from vfile.hooks import RequestCtx
from vfile.journal.records import Identity, JournalError, VerdictRecord
from vfile.journal.records import Reason as JournalReason
from vfile.journal.store import Journal
from vfile.passthrough.links import ProfileChooser

#: the gate's logger: operators filter and alert on it
log = logging.getLogger("vfile.filter.gate")


class Keeping:
    """The gate's `on_metadata_change` and `on_name_dropped` (module doc)."""

    def __init__(self, *, journal: Journal, intents: IntentTable, source: Source,
                 profiles: ProfileChooser, outcomes: Outcomes,
                 inputs: Callable[..., DecisionInputs], signature: Callable[[], str],
                 lookup: Callable[[Identity, str], VerdictRecord | None],
                 remember: Callable[[VerdictRecord], None],
                 clock: Callable[[], float]) -> None:
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
        before = Identity.from_stat(st)
        writer = writing or _unclaimed(self._intents.get(rel))
        # (`_follow` does nothing for a writer: the read txn of a lookup spared, cr22)
        old = None if writer else self._lookup(before, self._signature())
        seq = None
        if not writer and (profile := self._defers(rel, st.st_nlink)) is not None \
                and self._journal.get_deferred(rel) is None:
            seq = await self._journal.defer(rel, before, JournalReason.MODIFIED, profile,
                                            exposure=self._outcomes.exposure(ctx))
        now = Identity.from_stat(change())
        await self._follow(rel, st.st_nlink, old=old, now=now, writer=writer,
                           same=now.size == before.size, seq=seq)

    async def name_dropped(self, survivor: bytes, before: os.stat_result) -> None:
        """One name of a multiply-linked file went (an unlink, a rename onto it) and the
        file lives on as `survivor`, with the ctime the kernel gave it then; `before`:
        its stat before (tests/t5_race22_linkctime_test.py)."""
        rel = os.fsdecode(survivor)
        try:
            fd = self._source.open(rel)
        except OSError:
            return  # gone already: nothing to keep
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        if (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino):
            return  # the name was taken meanwhile: its own operation journaled it
        was, now = Identity.from_stat(before), Identity.from_stat(st)
        intent = self._intents.get(rel) or (None if st.st_nlink <= 1 else self._intents.find(
            lambda p: self._source.same_file(p, st)))
        if now != was:
            await self._follow(rel, st.st_nlink, old=self._lookup(was, self._signature()),
                               now=now, writer=_unclaimed(intent),
                               same=(now.size, now.mtime_ns) == (was.size, was.mtime_ns),
                               seq=None)

    async def _follow(self, rel: str, nlink: int, *, old: VerdictRecord | None,
                      now: Identity, writer: bool, same: bool, seq: int | None) -> None:
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
            await self._keep(rel, old, now, seq)
        elif seq is None and (profile := self._defers(rel, nlink)) is not None:
            await self._journal.defer(rel, now, JournalReason.MODIFIED, profile,
                                      durable=False)

    async def _keep(self, rel: str, old: VerdictRecord, now: Identity, seq: int | None
                    ) -> None:
        """`old`'s verdict for the file's new identity `now` (and entry `seq` resolved)."""
        kept = replace(old, identity=now, time=self._clock())
        self._remember(kept)
        try:
            if seq is not None:
                await self._journal.complete(rel, seq, kept)
            else:
                await self._journal.put_verdict(kept)
        except JournalError as err:
            log.error("journal: cannot keep the verdict of %r: %s", rel, err)


def _unclaimed(intent: Intent | None) -> bool:
    """A write intent no close scan has claimed yet: its close scan is still to come."""
    return intent is not None and not intent.closing
