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

No record at all, most of the time (cw23). A new file's intent is first only
noted in flight (journal.inflight: the witness says `pending`, the watermark
stays below its create time, so a SIGKILL or a power loss meanwhile walks the
source) and marked `unrecorded`; its record is never made when its close scan
judges it clean at once: that verdict's commit covers the file (`covered`),
durable as any tier-1w record (the watermark passes its create time only after
an fsync that followed that commit). Every other way out makes the record
(`record_now`, the one place; the same queued record as before, in flight in
the token's place since the create's time):
- the intent is displaced (vfile.filter.intents: replaced, moved, popped,
  rolled back, finished unresolved: a rename, link, unlink, exchange, a
  failed operation, a close scan that left it to the drain);
- its close scan is not judged at once (filter.closing: a larger file, another
  appliance, an outage, a window, infected) or its verdict's commit failed;
- it stays unrecorded longer than `UNRECORDED_S` (a writer holding the file
  open: a long-lived database must neither pin the watermark nor keep the
  witness `pending`; the sweeper);
- a window starts, the journal is listed, the mount stops (`record_all`).
Creates record at once (queued, as before) while `MAX_UNRECORDED` are
unrecorded, in a window, or whenever a record would have to wait.

Invariants:
- An `unrecorded` intent is in `self._unrecorded` and in flight under its own
  identity (the Intent object is the token), and is its path's current intent.
- The intent's `landed` is set once its record is committed (by the queue or
  a retry); `intent.queued` is its record until then (cleared when committed
  or failed). A close scan either queues its completion behind `queued` (the
  writer takes the stored seq from it) or resolves the entry only after
  `landed` (`intent.seq` is then the stored seq).
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable

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

#: a new file's intent stays without a record at most this long (a writer holding it open)
UNRECORDED_S = 2.0
#: new files' intents without a record at once; beyond, a create's record is queued at once
MAX_UNRECORDED = MAX_IN_FLIGHT // 2


class IntentRecords:
    """Journal write intents: an existing file's durably, a new file's in the background."""

    def __init__(self, journal: Journal, tasks: Tasks,
                 window: Callable[[], bool] = lambda: False) -> None:
        self._journal = journal
        self._tasks = tasks
        self._window = window
        #: unrecorded intents -> (profile, exposure, monotonic time of the create), in order
        self._unrecorded: dict[Intent, tuple[Profile, Exposure, float]] = {}
        self._serving = False  # the sweeper runs: unrecorded intents are bounded in time
        self._swept = trio.Event()
        #: new files covered by their clean verdict, never recorded; records made late
        self.covered_count = 0
        self.late = 0

    def __len__(self) -> int:
        return len(self._unrecorded)

    def _background(self) -> bool:
        j = self._journal
        return (j.new_files_covered() and not j.inflight.failed
                and len(j.inflight) < MAX_IN_FLIGHT)

    async def record(self, intent: Intent, identity: Identity | None, profile: Profile,
                     exposure: Exposure) -> None:
        """Journal `intent` (already registered) for the file at `intent.path`, which
        exists (`identity`) or is about to be created (None)."""
        j = self._journal
        if identity is None and self._background() and len(self._unrecorded) < MAX_UNRECORDED \
                and not self._window() and self._serving:
            intent.seq = 0  # no entry: a completion stores only the verdict (journal.ops)
            intent.unrecorded = True
            self._unrecorded[intent] = (profile, exposure, time.monotonic())
            j.inflight.note(intent)
            if len(self._unrecorded) == 1:
                self._swept.set()  # the sweeper waits for the first one
            return
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

    def record_now(self, intent: Intent) -> None:
        """Make the record of `intent` if it has none (module doc): queued, in flight in
        its place since the create's time. Synchronous: called from anywhere."""
        if not intent.unrecorded:
            return
        intent.unrecorded = False
        profile, exposure, _ = self._unrecorded.pop(intent)
        self.late += 1
        intent.landed = trio.Event()
        p = self._journal.defer_soon(intent.path, profile.name, exposure=exposure,
                                     on_done=lambda err: self._done(intent, p, profile, err),
                                     token=intent)
        intent.seq = p.seq
        intent.queued = p

    def covered(self, intent: Intent) -> None:
        """The clean verdict of `intent`'s file (its content since the create) is
        committed: it needs no record (module doc)."""
        if not intent.unrecorded:
            return  # recorded meanwhile: the drain finds its entry and the verdict
        intent.unrecorded = False
        del self._unrecorded[intent]
        self._journal.inflight.resolve(intent)
        self.covered_count += 1

    def record_all(self) -> None:
        """A window starts, the journal is read, the mount stops: every record made."""
        for intent in list(self._unrecorded):
            self.record_now(intent)

    async def recorded(self) -> None:
        """`record_all`, and return once those records are committed (a reader of the
        journal sees them)."""
        waiting = list(self._unrecorded)
        self.record_all()
        for intent in waiting:
            if intent.landed is not None:
                await intent.landed.wait()

    async def sweep(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Record each intent unrecorded for `UNRECORDED_S`; runs while the gate serves
        (not one of its tasks: `wait_idle` does not wait for it). No create is left
        unrecorded once it stops (cancelled: the mount stops)."""
        self._serving = True
        task_status.started()
        try:
            while True:
                if not self._unrecorded:
                    self._swept = trio.Event()
                    await self._swept.wait()  # set by the next unrecorded create
                    continue
                wait = next(iter(self._unrecorded.values()))[2] + UNRECORDED_S \
                    - time.monotonic()
                if wait > 0:
                    await trio.sleep(wait)
                    continue
                limit = time.monotonic() - UNRECORDED_S
                for intent, (_, _, since) in list(self._unrecorded.items()):
                    if since > limit:
                        break
                    log.info("journal: new file %r unjudged after %.0f s: its intent "
                             "recorded", intent.path, UNRECORDED_S)
                    self.record_now(intent)
                await trio.lowlevel.checkpoint()  # (many at once: the requests go on)
        finally:
            self._serving = False
            self.record_all()

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
