"""Write intents as the gate makes them: decided, registered, journaled, made durable.

Before anything can change a file's content its intent is in the journal
(DESIGN "Write intents"). When it must be durable (fsynced, tier 1) depends on
when the content can change:

- at once (O_TRUNC, truncate(2), rename onto, link, an exchange, a create that
  found an existing file): durable before the operation goes on, as always;
- later, through the handle being opened (a write-open of an existing file
  without O_TRUNC, `lazy`): the record is COMMITTED before the open returns (a
  full journal still fails the open), and its fsync is awaited by the first
  request that can change the content (`durable`, called by the passthrough
  before a WRITE). An open's latency is then a commit (~1 ms), not an fsync,
  which a busy host took 70-290 ms to do (issue 16); SQLite-style readers that
  open O_RDWR and never write never wait for it, and with the writeback cache a
  writer's wait moves to its close (or later), where the kernel sends the WRITEs.
- a new name (create, mknod): tier 1w (vfile.filter.newfiles).

The crash promise is the same: a kill leaves the committed record (LMDB's
page cache survives the process), a power cut can only lose a record whose
file's content never reached the source, since no WRITE went through before
the fsync returned. An fsync that fails fails the WRITE with EIO.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable

from vfile.config.model import Profile
from vfile.filter.intents import Intent, IntentTable
from vfile.filter.newfiles import IntentRecords
from vfile.filter.outcomes import Outcomes, Stats
from vfile.filter.policy import Action, DecisionInputs, Event, decide
from vfile.hooks import RequestCtx
from vfile.journal.records import Identity, JournalError, JournalFull
from vfile.journal.store import Journal

#: the gate's logger: operators filter and alert on it
log = logging.getLogger("vfile.filter.gate")


class WriteIntents:
    """`on_write_intent` and `intent_durable` of the gate."""

    def __init__(self, *, journal: Journal, intents: IntentTable, records: IntentRecords,
                 outcomes: Outcomes, stats: Stats,
                 profile_for: Callable[[str, int], Profile],
                 inputs: Callable[..., DecisionInputs]) -> None:
        self._journal = journal
        self._intents = intents
        self._records = records
        self._outcomes = outcomes
        self._stats = stats
        self._profile_for = profile_for
        self._inputs = inputs
        #: write requests that waited for an intent's fsync, and those whose fsync failed
        self.waited = 0
        self.failed = 0

    async def begin(self, path: bytes, st: os.stat_result | None, ctx: RequestCtx, *,
                    lazy: bool = False) -> Intent | None:
        """The intent of a write to `path` (None: the profile does not scan after
        writes); `lazy` (an existing file only): committed now, fsynced later (`durable`)."""
        rel = os.fsdecode(path)
        profile = self._profile_for(rel, st.st_nlink if st is not None else 1)
        d = decide(self._inputs(Event.WRITE, profile, rel, 0, None))
        if d.action is Action.DENY:
            self._outcomes.refuse_write(d, rel, profile, ctx)
        if d.action is not Action.DEFER:
            return None
        # Registered before the journal write returns: the drain may claim the new
        # entry at once, and must see "still being written" rather than take a path
        # whose file is not there yet (a rename onto it) as gone (tests/t5_crash_test.py).
        intent = self._intents.begin(rel)
        exposure = self._outcomes.exposure(ctx, wrote=True)
        try:
            if lazy and st is not None:
                intent.seq, intent.unsynced = await self._journal.defer_unsynced(
                    rel, Identity.from_stat(st), profile.name, exposure=exposure)
            else:  # a new name's (no stat yet) is queued, not waited for (filter.newfiles)
                await self._records.record(intent, None if st is None
                                           else Identity.from_stat(st), profile, exposure)
        except BaseException as err:
            self._intents.roll_back(intent)
            if isinstance(err, JournalFull):
                raise self._outcomes.full(rel, err) from None
            raise
        self._stats.intents += 1
        return intent

    async def durable(self, token: object) -> None:
        """Return once the intent `token` (from `begin`) is durable; OSError(EIO) if
        the journal could not make it so (the write must not reach the source)."""
        if not isinstance(token, Intent) or token.unsynced is None:
            return
        unsynced = token.unsynced
        if not unsynced.durable:
            self.waited += 1
        try:
            await unsynced.wait()
        except JournalError as err:
            self.failed += 1
            log.error("journal: the write intent of %r is not durable (%s): its write "
                      "fails with EIO", token.path, err)
            raise OSError(errno.EIO, "journal: the write intent is not durable") from None
        token.unsynced = None
