"""The write operations on deferred entries and quarantine records, each inside
one write transaction run by the group committer's writer thread (commit.py).

Plain functions of an open LMDB transaction; they keep the invariants listed
in `journal.tables` (every change of an entry goes through `put_entry` /
`delete_entry`, or BatchWriter's fast path, which does the same). An entry
that ends without a clean verdict for what its openers read first merges its
exposures into the `exposed` table (`journal.exposed.archive`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence

from vfile.journal import keys
from vfile.journal.exposed import archive
from vfile.journal.records import (
    DeferredEntry,
    Exposure,
    Identity,
    JournalError,
    QuarantineRecord,
    Reason,
    VerdictRecord,
    encode_new_deferred,
    encode_quarantine,
    merge_exposures,
)
from vfile.journal.tables import (
    Tables,
    Tally,
    Txn,
    _count,
    _free_key,
    apply_tally,
    delete_entry,
    find,
    iter_entries,
    locate,
    next_seq,
    put_entry,
    stored_seq,
)
from vfile.journal.verdicts import op_drop_files, op_put_verdict

log = logging.getLogger(__name__)

def op_defer(txn: Txn, t: Tables, *, path: str, identity: Identity | None, reason: Reason,
             profile: str, exposure: Exposure | None, error: str, now: float) -> int:
    seq = next_seq(txn, t)
    key, old = locate(txn, t, path)
    if old is None:
        put_entry(txn, t, key, None, DeferredEntry(
            path=path, seq=seq, identity=identity, reason=reason, profile=profile,
            first_deferred=now, last_deferred=now, attempts=0, last_error=error,
            exposures=() if exposure is None else (exposure,), not_before=0.0,
            lease_until=0.0, poisoned=False, order=seq))
        return seq
    exposures = old.exposures if exposure is None else merge_exposures(old.exposures, exposure)
    new = dataclasses.replace(
        old, seq=seq, identity=identity, reason=reason, profile=profile, last_deferred=now,
        last_error=error or old.last_error, exposures=exposures)
    if identity != old.identity and old.identity is not None:
        # What the openers so far read is replaced before anyone scanned it: keep who
        # they were (they also stay on the entry, which now stands for the new content).
        archive(txn, t, old, "changed", now=now)
    if identity != old.identity:
        # New content: earlier failures said nothing about it; scan it afresh.
        new = dataclasses.replace(new, attempts=0, poisoned=False, not_before=0.0)
    put_entry(txn, t, key, old, new)
    return seq


class PreparedDefer:
    """A defer made ready on the trio thread: what the writer thread needs, precomputed."""

    __slots__ = ("error", "exposure", "hash", "held", "identity", "key", "now", "okey",
                 "on_done", "path", "profile", "reason", "result", "seq", "value")

    def __init__(self, t: Tables, path: str, *, identity: Identity | None, reason: Reason,
                 profile: str, exposure: Exposure | None, error: str, now: float) -> None:
        self.path = path
        self.identity = identity
        self.reason = reason
        self.profile = profile
        self.exposure = exposure
        self.error = error
        self.now = now
        self.hash = h = keys.path_hash(path)
        self.key = keys.path_key(h, 0)
        self.seq = seq = t.seq.take()
        self.okey = keys.order_key(seq, self.key)
        self.value = encode_new_deferred(path, seq, identity, reason=reason, profile=profile,
                                         now=now, error=error, exposure=exposure)
        self.result: int = 0
        self.held = False  # its caller stopped waiting; still queued (commit.py, tier 3)
        #: nobody waits for it: told its outcome on the trio thread (commit.submit_soon)
        self.on_done: Callable[[JournalError | None], None] | None = None

    def run_slow(self, txn: Txn, t: Tables) -> int:
        return op_defer(txn, t, path=self.path, identity=self.identity, reason=self.reason,
                        profile=self.profile, exposure=self.exposure, error=self.error,
                        now=self.now)


class BatchWriter:
    """Stores prepared defers in one write transaction (in the writer thread).

    Fast path, per record: one range lookup (is any key of the path's hash
    there?), one put of the prepared value, one append to the order index.
    """

    __slots__ = ("_dcur", "_max", "_ocur", "_start", "_t", "_txn")

    def __init__(self, txn: Txn, t: Tables) -> None:
        self._txn = txn
        self._t = t
        self._start = stored_seq(txn, t)
        t.seq.adopt(self._start)
        self._max = self._start
        self._dcur = txn.cursor(db=t.deferred)
        self._ocur = txn.cursor(db=t.order)

    def defer(self, p: PreparedDefer) -> int:
        # A seq at or below the stored counter may have been used by another process.
        if p.seq > self._start:
            dcur, h = self._dcur, p.hash
            if not (dcur.set_range(h) and dcur.key()[: keys.HASH_LEN] == h):
                dcur.put(p.key, p.value)
                # Seqs above every stored one: usually an append at the end of the index.
                if not self._ocur.put(p.okey, b"", append=True):
                    self._txn.put(p.okey, b"", db=self._t.order)
                t = self._t
                if t.profiles is not None:
                    self._txn.put(keys.profile_key(p.profile, p.seq, p.key), b"",
                                  db=t.profiles)
                    _count(self._txn, t, p.profile,
                           1, p.identity.size if p.identity is not None else 0)
                self._max = max(self._max, p.seq)
                return p.seq
        return p.run_slow(self._txn, self._t)

    def finish(self) -> None:
        """Keep `meta.seq` at or above every seq stored (call before the commit)."""
        if self._max > self._start and self._max > stored_seq(self._txn, self._t):
            self._txn.put(b"seq", keys.u64(self._max), db=self._t.meta)


def op_complete(txn: Txn, t: Tables, path: str, seq: int,  # noqa: PLR0917
                verdict: VerdictRecord | None, now: float = 0.0,
                tally: Tally | None = None) -> bool:
    """Remove entry `seq` of `path` (its exposures archived unless `verdict` is a clean one
    for what they read) and store `verdict`. `tally`: see `delete_entry`."""
    removed = False
    found = find(txn, t, path)
    if found is not None:
        key, entry = found
        if entry.seq == seq:
            if verdict is None:
                archive(txn, t, entry, "gone", now=now)
            elif verdict.outcome == "infected":
                archive(txn, t, entry, "infected", verdict.signature, now=now)
            elif verdict.identity != entry.identity:
                archive(txn, t, entry, "changed", now=now)  # clean, but not what they read
            delete_entry(txn, t, key, entry, tally)
            removed = True
        elif entry.lease_until:
            # Re-deferred while being scanned: keep it, claimable again at once.
            put_entry(txn, t, key, entry, dataclasses.replace(entry, lease_until=0.0))
    if verdict is not None:
        op_put_verdict(txn, t, verdict)
    return removed


def op_complete_many(txn: Txn, t: Tables,
                     items: Sequence[tuple[str, int, VerdictRecord | None]],
                     now: float = 0.0) -> list[bool]:
    """`op_complete` of each (path, seq, verdict), in one transaction: a drain batch's
    completions are one operation of the group commit, not one each), with one update of
    each profile's counters for all of them."""
    tally: Tally = {}
    done = [op_complete(txn, t, path, seq, verdict, now, tally) for path, seq, verdict in items]
    apply_tally(txn, t, tally)
    return done


def op_forget(txn: Txn, t: Tables, path: str, outcome: str = "unlinked",  # noqa: PLR0917
              now: float = 0.0, gone: tuple[int, int] | None = None) -> DeferredEntry | None:
    """Drop `path`'s entry (its exposures are kept as `outcome`); the entry, or None.
    `gone`: the (dev, ino) of a file that lost its last name: its verdicts go too (m27)."""
    if gone is not None:
        op_drop_files(txn, t, [gone])
    found = find(txn, t, path)
    if found is None:
        return None
    archive(txn, t, found[1], outcome, now=now)
    delete_entry(txn, t, *found)
    return found[1]


def op_keep_exposures(txn: Txn, t: Tables, path: str, outcome: str, now: float) -> None:
    """Keep the exposures of `path`'s entry as `outcome` (journal.exposed); it stays."""
    found = find(txn, t, path)
    if found is not None:
        archive(txn, t, found[1], outcome, now=now)


def op_rename(txn: Txn, t: Tables, old: str, new: str, now: float = 0.0,  # noqa: PLR0917
              gone: tuple[int, int] | None = None) -> bool:
    """The entry of `old` follows its file to `new`, replacing `new`'s own entry; `gone`:
    the (dev, ino) of the file the rename replaced, which had no other name: its verdicts
    go too (a29).

    With no entry for `old`, `new`'s entry stays: it may be the intent written
    for this very rename (intent before effect), and `old`'s entry may have
    been removed as "gone" by a drain that looked between the rename and this
    transaction. Dropping it would leave the moved file with neither a verdict
    nor an entry."""
    if gone is not None:
        op_drop_files(txn, t, [gone])
    if old == new:
        return False
    found = find(txn, t, old)
    if found is None:
        return False
    target = find(txn, t, new)
    if target is not None:
        log.info("journal: %r overwritten by rename; its entry is replaced", new)
        archive(txn, t, target[1], "overwritten", now=now)
        delete_entry(txn, t, *target)
    key, entry = found
    delete_entry(txn, t, key, entry)
    # A new seq: a drain holding (old, seq) must not complete the moved entry.
    moved = dataclasses.replace(entry, path=new, seq=next_seq(txn, t), lease_until=0.0)
    put_entry(txn, t, _free_key(txn, t, new), None, moved)
    return True


def op_rename_tree(txn: Txn, t: Tables, old_dir: str, new_dir: str, now: float = 0.0) -> int:
    """Every entry under directory `old_dir` follows it to `new_dir` (full scan)."""
    prefix = old_dir.rstrip("/") + "/"
    moving = [e.path for _, e in iter_entries(txn, t) if e.path.startswith(prefix)]
    for path in moving:
        op_rename(txn, t, path, new_dir.rstrip("/") + "/" + path[len(prefix):], now)
    return len(moving)


def op_add_quarantine(txn: Txn, t: Tables, rec: QuarantineRecord) -> None:
    txn.put(rec.id.encode("utf-8", "surrogateescape"), encode_quarantine(rec), db=t.quarantine)


def op_remove_quarantine(txn: Txn, t: Tables, rec_id: str) -> bool:
    return bool(txn.delete(rec_id.encode("utf-8", "surrogateescape"), db=t.quarantine))
