"""The journal's named tables and the operations on them inside one transaction.

Everything here is a plain function of an open LMDB transaction: the group
committer runs the write operations in its writer thread, the store runs the
reads on the trio thread. No function here begins, commits or aborts.

Tables (named LMDB databases):
  meta        b"magic", b"format", b"seq" (journal-wide counter, u64: at least
              every seq stored in the journal)
  deferred    path key (keys.py) -> DeferredEntry
  order       order key (order, path key) -> b""; every NON-poisoned entry,
              oldest first, so a claim never scans the whole table.
              Poisoned entries leave the index (a claim skips them for free)
              and come back on `retry`.
  verdicts    verdict key -> VerdictRecord
  quarantine  record id (utf-8) -> QuarantineRecord
  exposed     sha256(path) -> ExposureRecord: who opened a file unscanned, kept
              after its entry ended without a clean verdict for what they read
              (created on first open by a newer vfile; absent in a read-only
              open of an older journal, then read as empty)

Invariants (kept by every write operation below):
- `order` holds exactly one key per non-poisoned deferred entry, built from
  the entry's `order` and its path key.
- Exposures are never dropped except by an administrator (`op_clear_exposed`)
  or by a clean verdict for the very content they read (the entry's identity):
  an entry that is unlinked, renamed over, found infected, gone, or whose
  content changes before a scan, first merges its exposures into `exposed`.
- Write operations do not raise for expected conditions (missing entry, stale
  seq); they return a result. Undecodable stored values are skipped with a
  warning rather than failing every write that happens to scan past them.
- Seqs come from one in-memory counter per open journal (`SeqCounter`), which
  never hands out a seq twice and adopts the stored `meta.seq` whenever a
  transaction reads it (another process may have written). A first defer is
  prepared (seq, keys, encoded value) on the trio thread; the writer thread
  stores it as prepared only when its path has no entry and its seq is above
  the stored counter -- otherwise it runs the full `op_defer` with a fresh seq.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import lmdb

from journal import keys
from journal.records import (
    DeferredEntry,
    Exposure,
    ExposureRecord,
    Identity,
    JournalCorrupt,
    QuarantineRecord,
    Reason,
    VerdictRecord,
    decode_deferred,
    decode_exposed,
    decode_verdict,
    encode_deferred,
    encode_exposed,
    encode_new_deferred,
    encode_quarantine,
    encode_verdict,
    merge_exposures,
)

log = logging.getLogger(__name__)

MAGIC = b"vfile-journal"
#: Version of the table layout; a journal with a higher one is refused.
JOURNAL_FORMAT = 1
TABLE_NAMES = (b"meta", b"deferred", b"order", b"verdicts", b"quarantine")
MAX_DBS = 8

if TYPE_CHECKING:
    Txn = lmdb.Transaction[bytes]
else:
    Txn = lmdb.Transaction


class SeqCounter:
    """The journal-wide seq counter of one open journal, shared by both threads."""

    __slots__ = ("_last", "_lock")

    def __init__(self, last: int = 0) -> None:
        self._last = last
        self._lock = threading.Lock()

    def take(self) -> int:
        with self._lock:
            self._last += 1
            return self._last

    def adopt(self, stored: int) -> None:
        """Never hand out a seq at or below `stored` (a counter read from a transaction)."""
        with self._lock:
            self._last = max(self._last, stored)


@dataclass(frozen=True, slots=True)
class Tables:
    meta: Any
    deferred: Any
    order: Any
    verdicts: Any
    quarantine: Any
    #: None only in a read-only open of a journal made before the table existed
    exposed: Any = None
    seq: SeqCounter = dataclasses.field(default_factory=SeqCounter)


def open_tables(env: lmdb.Environment, txn: Txn | None = None) -> Tables:
    meta, deferred, order, verdicts, quarantine = (
        env.open_db(name, txn=txn, create=txn is not None) for name in TABLE_NAMES)
    exposed: Any
    try:
        exposed = env.open_db(b"exposed", txn=txn, create=txn is not None)
    except lmdb.NotFoundError:
        # A journal from before the table: add it (its own write txn), unless read-only.
        exposed = None if env.flags()["readonly"] else env.open_db(b"exposed", create=True)
    return Tables(meta, deferred, order, verdicts, quarantine, exposed)


def init_meta(txn: Txn, t: Tables) -> None:
    txn.put(b"magic", MAGIC, db=t.meta)
    txn.put(b"format", str(JOURNAL_FORMAT).encode(), db=t.meta)
    txn.put(b"seq", keys.u64(0), db=t.meta)


def stored_seq(txn: Txn, t: Tables) -> int:
    raw = txn.get(b"seq", db=t.meta)
    return keys.from_u64(raw) if raw else 0


def next_seq(txn: Txn, t: Tables) -> int:
    t.seq.adopt(stored_seq(txn, t))
    seq = t.seq.take()
    txn.put(b"seq", keys.u64(seq), db=t.meta)
    return seq


# --- deferred entries by path -------------------------------------------------------------

def _decode_or_none(key: bytes, raw: bytes) -> DeferredEntry | None:
    try:
        return decode_deferred(raw)
    except JournalCorrupt as err:
        log.warning("journal: skipping undecodable deferred entry %s: %s", key.hex(), err)
        return None


def locate(txn: Txn, t: Tables, path: str) -> tuple[bytes, DeferredEntry | None]:
    """`(key, entry)` of `path`, or `(a free key for it, None)`: one scan of its hash range."""
    h = keys.path_hash(path)
    used: set[int] = set()
    cur = txn.cursor(db=t.deferred)
    if cur.set_range(h):
        for key, raw in cur:
            if key[: keys.HASH_LEN] != h:
                break
            entry = _decode_or_none(key, raw)
            if entry is not None and entry.path == path:
                return bytes(key), entry
            used.add(keys.disambiguator(key))
    # A corrupt value keeps its key reserved (it is in `used`): never overwrite it.
    d = next(i for i in range(keys.MAX_DISAMBIGUATOR + 1) if i not in used)
    return keys.path_key(h, d), None


def find(txn: Txn, t: Tables, path: str) -> tuple[bytes, DeferredEntry] | None:
    """The key and entry of `path`, scanning the keys that share its hash."""
    key, entry = locate(txn, t, path)
    return None if entry is None else (key, entry)


def _free_key(txn: Txn, t: Tables, path: str) -> bytes:
    key, entry = locate(txn, t, path)
    assert entry is None, "caller removed the entry first"
    return key


def put_entry(txn: Txn, t: Tables, key: bytes, old: DeferredEntry | None,
              new: DeferredEntry) -> None:
    """Store `new` at `key`, keeping the order index in step with `old` -> `new`."""
    was_indexed = old is not None and not old.poisoned
    if was_indexed and (new.poisoned or old is None or old.order != new.order):
        assert old is not None
        txn.delete(keys.order_key(old.order, key), db=t.order)
    if not new.poisoned and not (was_indexed and old is not None and old.order == new.order):
        txn.put(keys.order_key(new.order, key), b"", db=t.order)
    txn.put(key, encode_deferred(new), db=t.deferred)


def delete_entry(txn: Txn, t: Tables, key: bytes, entry: DeferredEntry) -> None:
    if not entry.poisoned:
        txn.delete(keys.order_key(entry.order, key), db=t.order)
    txn.delete(key, db=t.deferred)


def iter_entries(txn: Txn, t: Tables) -> Iterator[tuple[bytes, DeferredEntry]]:
    for key, raw in txn.cursor(db=t.deferred):
        entry = _decode_or_none(key, raw)
        if entry is not None:
            yield bytes(key), entry


# --- write operations ---------------------------------------------------------------------

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

    __slots__ = ("error", "exposure", "hash", "identity", "key", "now", "okey", "path",
                 "profile", "reason", "result", "seq", "value")

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
                self._max = max(self._max, p.seq)
                return p.seq
        return p.run_slow(self._txn, self._t)

    def finish(self) -> None:
        """Keep `meta.seq` at or above every seq stored (call before the commit)."""
        if self._max > self._start and self._max > stored_seq(self._txn, self._t):
            self._txn.put(b"seq", keys.u64(self._max), db=self._t.meta)


def _exposed_key(path: str) -> bytes:
    return hashlib.sha256(path.encode("utf-8", "surrogateescape")).digest()


def archive(txn: Txn, t: Tables, entry: DeferredEntry, outcome: str, detail: str = "", *,
            now: float) -> None:
    """Merge the exposures of `entry` into the path's exposure record."""
    if not entry.exposures or t.exposed is None:
        return
    if outcome != "infected" and all(x.wrote for x in entry.exposures):
        # Only its writers opened it (every file written has one): nobody read
        # unscanned content. Kept for an infected file: who wrote it matters.
        return
    key = _exposed_key(entry.path)
    raw = txn.get(key, db=t.exposed)
    old: ExposureRecord | None = None
    if raw is not None:
        try:
            old = decode_exposed(raw)
        except JournalCorrupt as err:
            log.warning("journal: replacing an undecodable exposure record: %s", err)
    exposures = () if old is None else old.exposures
    for x in entry.exposures:
        # The same aggregate archived again (a later copy of it) is not counted twice.
        exposures = merge_exposures(exposures, x, same_batch=True)
    if old is not None and old.outcome in ("infected",) and outcome != "infected":
        outcome, detail = old.outcome, old.detail  # the worst news stays visible
    txn.put(key, encode_exposed(ExposureRecord(
        path=entry.path, outcome=outcome, detail=detail,
        first=now if old is None else old.first, time=now, exposures=exposures)),
        db=t.exposed)


def list_exposed(txn: Txn, t: Tables) -> list[ExposureRecord]:
    if t.exposed is None:
        return []
    out = []
    for key, raw in txn.cursor(db=t.exposed):
        try:
            out.append(decode_exposed(raw))
        except JournalCorrupt as err:
            log.warning("journal: skipping undecodable exposure record %s: %s",
                        bytes(key).hex(), err)
    return out


def op_clear_exposed(txn: Txn, t: Tables, path: str | None) -> int:
    """An administrator clears the exposure record of `path` (None: all of them)."""
    if t.exposed is None:
        return 0
    if path is not None:
        return int(bool(txn.delete(_exposed_key(path), db=t.exposed)))
    keys_ = [bytes(k) for k in txn.cursor(db=t.exposed).iternext(values=False)]
    for k in keys_:
        txn.delete(k, db=t.exposed)
    return len(keys_)


def op_complete(txn: Txn, t: Tables, path: str, seq: int,  # noqa: PLR0917
                verdict: VerdictRecord | None, now: float = 0.0) -> bool:
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
            delete_entry(txn, t, key, entry)
            removed = True
        elif entry.lease_until:
            # Re-deferred while being scanned: keep it, claimable again at once.
            put_entry(txn, t, key, entry, dataclasses.replace(entry, lease_until=0.0))
    if verdict is not None:
        op_put_verdict(txn, t, verdict)
    return removed


def op_put_verdict(txn: Txn, t: Tables, verdict: VerdictRecord) -> None:
    txn.put(keys.verdict_key(verdict.identity, verdict.sig_version), encode_verdict(verdict),
            db=t.verdicts)


def verdict_batch(txn: Txn, t: Tables, after: bytes | None,
                  n: int) -> list[tuple[bytes, VerdictRecord | None]]:
    """Up to `n` verdicts in key order after key `after` (None: from the start);
    an undecodable one comes back as None (garbage too)."""
    out: list[tuple[bytes, VerdictRecord | None]] = []
    cur = txn.cursor(db=t.verdicts)
    if not (cur.set_range(after) if after is not None else cur.first()):
        return out
    for raw_key, raw in cur:
        key = bytes(raw_key)
        if key == after:
            continue
        try:
            out.append((key, decode_verdict(raw)))
        except JournalCorrupt:
            out.append((key, None))
        if len(out) >= n:
            break
    return out


def op_delete_verdicts(txn: Txn, t: Tables, victims: list[bytes]) -> int:
    return sum(bool(txn.delete(k, db=t.verdicts)) for k in victims)


def get_verdict(txn: Txn, t: Tables, identity: Identity, sig_version: str) -> VerdictRecord | None:
    raw = txn.get(keys.verdict_key(identity, sig_version), db=t.verdicts)
    if raw is None:
        return None
    try:
        rec = decode_verdict(raw)
    except JournalCorrupt as err:
        log.warning("journal: ignoring undecodable verdict: %s", err)
        return None
    # The key holds a hash of sig_version: check the real fields.
    if rec.identity != identity or rec.sig_version != sig_version:
        return None
    return rec


def op_forget(txn: Txn, t: Tables, path: str, outcome: str = "unlinked",
              now: float = 0.0) -> DeferredEntry | None:
    """Drop `path`'s entry (its exposures are kept as `outcome`); the entry, or None."""
    found = find(txn, t, path)
    if found is None:
        return None
    archive(txn, t, found[1], outcome, now=now)
    delete_entry(txn, t, *found)
    return found[1]


def op_rename(txn: Txn, t: Tables, old: str, new: str, now: float = 0.0) -> bool:
    """The entry of `old` follows its file to `new`, replacing `new`'s own entry.

    With no entry for `old`, `new`'s entry stays: it may be the intent written
    for this very rename (intent before effect), and `old`'s entry may have
    been removed as "gone" by a drain that looked between the rename and this
    transaction. Dropping it would leave the moved file with neither a verdict
    nor an entry."""
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
