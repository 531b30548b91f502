"""A write intent's journal record, as the gate makes it; a new file's without waiting.

An existing file's intent (open for write, truncate, rename onto it...) is
tier 1: fsynced before the operation goes on. A NEW file's (a create, a mknod)
is tier 1w, and a create no longer waits even for its commit: the record is
queued (journal.inflight: in order with every later write, the witness on the
tmpfs says `pending`, the watermark stays below it) and the create goes on at
once. One writer creating small files paid a hand-off to the journal's writer
thread and back for every file (README "Creates under scanning").

When such a record's transaction fails (a full or broken state disk), it is
never dropped: it stays in flight (so a crash walks the source, and the
watermark stays below it) and a background task retries it, tier 1, with
back-off, until it is committed. Meanwhile, and while too many are in flight
(a frozen state disk), creates wait for their own record again, and so see
the journal's errors as before.

Invariants:
- The intent's `landed` is set once its record is committed (by the queue or
  a retry); `intent.queued` is its record until then (cleared when committed
  or failed). A close scan either queues its completion behind `queued` (the
  writer takes the stored seq from it) or resolves the entry only after
  `landed` (`intent.seq` is then the stored seq).
"""

from __future__ import annotations

import errno
import logging

import trio

from vfile.config.model import Profile
from vfile.filter.flights import Tasks
from vfile.filter.intents import Intent
from vfile.journal.inflight import MAX_IN_FLIGHT
from vfile.journal.ops import PreparedDefer
from vfile.journal.records import Exposure, Identity, JournalError, JournalFull
from vfile.journal.records import Reason as JournalReason
from vfile.journal.store import Journal

#: the gate's logger: operators filter and alert on it
log = logging.getLogger("vfile.filter.gate")

#: a failed record is retried after this long, doubling up to RETRY_MAX_S
RETRY_S = 0.1
RETRY_MAX_S = 5.0


class IntentRecords:
    """Journal write intents: an existing file's durably, a new file's in the background."""

    def __init__(self, journal: Journal, tasks: Tasks) -> None:
        self._journal = journal
        self._tasks = tasks

    def _background(self) -> bool:
        j = self._journal
        return (j.new_files_covered() and not j.inflight.failed
                and len(j.inflight) < MAX_IN_FLIGHT)

    async def record(self, intent: Intent, identity: Identity | None, profile: Profile,
                     exposure: Exposure) -> None:
        """Journal `intent` (already registered) for the file at `intent.path`, which
        exists (`identity`) or is about to be created (None)."""
        j = self._journal
        if identity is None and self._background():
            intent.landed = trio.Event()
            p = j.defer_soon(intent.path, profile.name, exposure=exposure,
                             on_done=lambda err: self._done(intent, p, profile, err))
            intent.seq = p.seq
            intent.queued = p
            return
        # An existing file's is tier 1, and so is a new one's while the clock is behind
        # the watermark (journal.watermark); a new one's waits for its commit (tier 1w)
        # while the queue does not keep up.
        try:
            intent.seq = await j.defer(intent.path, identity, JournalReason.MODIFIED,
                                       profile.name, exposure=exposure,
                                       durable=identity is not None
                                       or not j.new_files_covered())
        except JournalFull:
            raise  # the gate answers it (ENOSPC or EIO, by profile)
        except JournalError as err:
            # A failing state disk, not a bug: one line, and the operation gets EIO
            # (the handler logs no traceback for an OSError).
            log.error("journal: cannot record the write intent of %r (%s); answering EIO",
                      intent.path, err)
            raise OSError(errno.EIO, f"journal: {err}") from None

    def _done(self, intent: Intent, p: PreparedDefer, profile: Profile,
              err: JournalError | None) -> None:
        # On the trio thread, from the group committer: must not raise.
        if err is None or not self._journal.inflight.failed_once(p):
            self._landed(intent, p, p.result)  # committed (maybe its batch's fsync failed)
            return
        if intent.queued is p:  # a close scan waits for the retry's seq (filter.closing)
            intent.queued = None
        log.error("journal: the intent of new file %r was not committed (%s); retrying "
                  "until it is (creates wait for their intents meanwhile)", intent.path, err)
        try:
            self._tasks.start(self._retry, intent, p, profile)
        except RuntimeError:  # the mount is stopping: the stop is not recorded as clean
            log.error("journal: %r: no retry while stopping; the next start walks the source",
                      intent.path)

    async def _retry(self, intent: Intent, p: PreparedDefer, profile: Profile) -> None:
        delay = RETRY_S
        while True:
            await trio.sleep(delay)
            try:
                seq = await self._journal.defer(intent.path, None, JournalReason.MODIFIED,
                                                profile.name, exposure=p.exposure)
            except JournalError as err:
                delay = min(delay * 2, RETRY_MAX_S)
                log.warning("journal: %r: intent still not committed: %s", intent.path, err)
                continue
            self._journal.inflight.land(p)
            self._landed(intent, p, seq)
            log.info("journal: the intent of new file %r is committed now", intent.path)
            return

    @staticmethod
    def _landed(intent: Intent, p: PreparedDefer, seq: int) -> None:
        if intent.seq == p.seq:  # not replaced meanwhile (a relink gives its own)
            intent.seq = seq
        if intent.queued is p:
            intent.queued = None
        if intent.landed is not None:
            intent.landed.set()
