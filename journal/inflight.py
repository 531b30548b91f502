"""Creates' intents in flight: queued for the journal, the create already going on.

A create (a NEW file) used to wait for its intent's commit: a hand-off to the
writer thread and back, 60-180 µs and more under load, for every file. Now the
intent is queued (in order: every write submitted later lands in the same or a
later transaction) and the create goes on at once. What keeps the crash promise
(README "Durability of journal records", tier 1w) while it is in flight:

- the witness (journal.watermark) says `pending` from the moment the first
  intent is queued until the last one is committed, written under this lock
  (one pwrite on a tmpfs, never the state disk). A process killed meanwhile
  leaves a witness that does not vouch, so the next start walks the source;
- the watermark never passes the oldest intent in flight (`oldest_ns`): the
  walk journals every file whose ctime is above W, and a file created after
  its intent was queued has a ctime above the time it was queued (less the
  margin, the kernel's coarse clock);
- an intent whose transaction failed stays in flight (the witness keeps saying
  `pending`, W stays below it) until a retry commits it (`land`); the caller is
  told (`on_done(error)`) and retries; a clean stop with one still in flight is
  not recorded as clean, so the next start walks.

A create's intent may also be noted before its record is even made (`note` of a
token, vfile.filter.newfiles: the record is made lazily, often never): it is in
flight the same way until its record replaces it (`swap`, keeping its time) or
a durable-as-tier-1w verdict covers the file (`resolve`, after that commit).

Invariants:
- `note` runs before the create it covers; `committed` runs in the writer
  thread right after each commit, before anybody is told.
- While anything is in flight, the witness on disk says `pending`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from vfile.journal.ops import PreparedDefer
from vfile.journal.watermark import Witness

#: intents in flight beyond which a create waits for its own commit again (tier 1w as
#: before): a state disk that takes no writes must not grow memory without bound
MAX_IN_FLIGHT = 4096


class InFlight:
    """Intents queued and not yet committed, with their queue times (module doc)."""

    def __init__(self, txnid: int) -> None:
        self._lock = threading.Lock()
        #: in flight -> when noted: a queued PreparedDefer, or a token of a create whose
        #: record is not made yet (not in time order once swapped: `oldest_ns` takes the min)
        self._since: dict[object, int] = {}
        self._txnid = txnid
        #: the witness, once it follows this run's commits (Journal.vouch)
        self._witness: Witness | None = None
        #: intents whose transaction failed, not yet committed by a retry
        self.failed = 0

    def __len__(self) -> int:
        return len(self._since)

    def follow(self, witness: Witness, txnid: int) -> None:
        with self._lock:
            self._witness = witness
            self._txnid = txnid
            witness.record(txnid, pending=bool(self._since))

    def note(self, p: object) -> None:
        """`p` (a record about to be queued, or a token) is in flight; its create goes on
        once this returns."""
        with self._lock:
            self._since[p] = time.time_ns()  # CLOCK_REALTIME, the clock of ctime
            if len(self._since) == 1 and self._witness is not None:
                self._witness.record(self._txnid, pending=True)

    def committed(self, txnid: int, ops: Sequence[object]) -> None:
        """A transaction with `ops` committed (the writer thread, before anyone is told)."""
        with self._lock:
            self._txnid = txnid
            if self._since:
                for op in ops:
                    if type(op) is PreparedDefer:
                        self._since.pop(op, None)
            if self._witness is not None:
                self._witness.record(txnid, pending=bool(self._since))

    def failed_once(self, p: PreparedDefer) -> bool:
        """`p`'s transaction reported an error: True if `p` is still in flight (count it
        failed: the caller retries it); False if its commit went in and only what came
        after failed (the fsync of a batch with a tier-1 record): it is in the journal,
        and the watermark's own fsync makes it durable, as any tier-1w record."""
        with self._lock:
            if p not in self._since:
                return False
            self.failed += 1
            return True

    def land(self, p: PreparedDefer) -> None:
        """`p`'s transaction failed, and a retry committed its record since."""
        with self._lock:
            if self._since.pop(p, None) is not None:
                self.failed -= 1
            if not self._since and self._witness is not None:
                self._witness.record(self._txnid, pending=False)

    def swap(self, token: object, p: PreparedDefer) -> None:
        """The record `p` of the create `token` stood for is about to be queued: in flight
        in its place, since the create's time (not a later one: the watermark rule)."""
        with self._lock:
            since = self._since.pop(token, None)
            self._since[p] = time.time_ns() if since is None else since
            if len(self._since) == 1 and self._witness is not None:
                self._witness.record(self._txnid, pending=True)

    def resolve(self, token: object) -> None:
        """The create `token` stood for is covered without a record (its clean verdict was
        committed): no longer in flight."""
        with self._lock:
            if self._since.pop(token, None) is not None and not self._since \
                    and self._witness is not None:
                self._witness.record(self._txnid, pending=False)

    def oldest_ns(self) -> int | None:
        """When the oldest intent in flight was queued (the watermark stays below it)."""
        with self._lock:
            return min(self._since.values(), default=None)
