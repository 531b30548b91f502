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
  verdicts    verdict key -> VerdictRecord; storing a verdict drops the file's
              verdicts for older ctimes, so the table holds about one per
              file and signature version, not one per write
  quarantine  record id (utf-8) -> QuarantineRecord
  profiles    profile index key (profile, order, path key) -> b""; EVERY
              deferred entry (poisoned too), oldest first within its profile
              (format 2). With meta's per-profile counters it answers the
              figures status, metrics and the quota need without a walk.
  meta        b"p:" + profile -> (entries u64, bytes u64) of that profile's
              deferred entries (format 2)
  exposed     sha256(path) -> ExposureRecord: who opened a file unscanned, kept
              after its entry ended without a clean verdict for what they read
              (created on first open by a newer vfile; absent in a read-only
              open of an older journal, then read as empty)

Invariants (kept by every write operation below):
- `order` holds exactly one key per non-poisoned deferred entry, built from
  the entry's `order` and its path key.
- `profiles` holds exactly one key per deferred entry, and meta's `p:` counters
  equal the count and byte total (identity sizes) of each profile's entries:
  every change goes through `put_entry` / `delete_entry` (or BatchWriter's fast
  path, which does the same). A format-1 journal (no such table) is upgraded on
  its first writable open by one walk (`upgrade`); read-only, it is walked.
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
import heapq
import logging
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import lmdb

from vfile.journal import keys
from vfile.journal.records import (
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
#: 2: the `profiles` index and the per-profile counters.
JOURNAL_FORMAT = 2
TABLE_NAMES = (b"meta", b"deferred", b"order", b"verdicts", b"quarantine", b"profiles")
MAX_DBS = 8
_COUNTS = struct.Struct(">QQ")
_COUNTER_PREFIX = b"p:"

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
    #: None: a format-1 journal opened read-only (figures are then walked)
    profiles: Any = None
    #: None only in a read-only open of a journal made before the table existed
    exposed: Any = None
    seq: SeqCounter = dataclasses.field(default_factory=SeqCounter)


def open_tables(env: lmdb.Environment, txn: Txn | None = None) -> Tables:
    meta, deferred, order, verdicts, quarantine = (
        env.open_db(name, txn=txn, create=txn is not None) for name in TABLE_NAMES[:5])
    try:
        profiles = env.open_db(b"profiles", txn=txn, create=txn is not None)
    except lmdb.NotFoundError:
        profiles = None
    exposed: Any
    try:
        exposed = env.open_db(b"exposed", txn=txn, create=txn is not None)
    except lmdb.NotFoundError:
        # A journal from before the table: add it (its own write txn), unless read-only.
        exposed = None if env.flags()["readonly"] else env.open_db(b"exposed", create=True)
    return Tables(meta, deferred, order, verdicts, quarantine, profiles, exposed)


def stored_format(txn: Txn, t: Tables) -> int:
    raw = txn.get(b"format", db=t.meta) or b"1"
    return int(raw.decode("ascii"))


def upgrade(env: lmdb.Environment, txn: Txn, t: Tables) -> Tables:
    """Bring a format-1 journal to format 2 in `txn`: build the profile index and
    counters by one walk. Returns the tables with `profiles` open."""
    profiles = env.open_db(b"profiles", txn=txn, create=True)
    t = dataclasses.replace(t, profiles=profiles)
    n = 0
    for key, entry in list(iter_entries(txn, t)):
        txn.put(keys.profile_key(entry.profile, entry.order, key), b"", db=profiles)
        _count(txn, t, entry.profile, 1, _size(entry))
        n += 1
    txn.put(b"format", str(JOURNAL_FORMAT).encode(), db=t.meta)
    log.info("journal: upgraded to format %d (%d entries indexed)", JOURNAL_FORMAT, n)
    return t


def _size(entry: DeferredEntry) -> int:
    return entry.identity.size if entry.identity is not None else 0


def _count(txn: Txn, t: Tables, profile: str, entries: int, nbytes: int) -> None:
    ck = _COUNTER_PREFIX + keys.profile_bytes(profile)
    raw = txn.get(ck, db=t.meta)
    n, b = _COUNTS.unpack(raw) if raw is not None else (0, 0)
    n, b = max(0, n + entries), max(0, b + nbytes)
    if n:
        txn.put(ck, _COUNTS.pack(n, b), db=t.meta)
    elif raw is not None:
        txn.delete(ck, db=t.meta)


def profile_counts(txn: Txn, t: Tables) -> dict[str, tuple[int, int]]:
    """(entries, bytes) per profile with deferred entries, from the counters."""
    out: dict[str, tuple[int, int]] = {}
    cur = txn.cursor(db=t.meta)
    if cur.set_range(_COUNTER_PREFIX):
        for key, raw in cur:
            if not key.startswith(_COUNTER_PREFIX):
                break
            name = bytes(key[len(_COUNTER_PREFIX):]).decode("utf-8", "surrogateescape")
            n, b = _COUNTS.unpack(raw)
            out[name] = (int(n), int(b))
    return out


def oldest_of_profile(txn: Txn, t: Tables, profile: str) -> DeferredEntry | None:
    """The profile's entry deferred first (one range lookup)."""
    prefix = keys.profile_prefix(profile)
    cur = txn.cursor(db=t.profiles)
    if not cur.set_range(prefix):
        return None
    for pk in cur.iternext(keys=True, values=False):
        if not pk.startswith(prefix):
            return None
        raw = txn.get(keys.profile_key_path(pk), db=t.deferred)
        if raw is not None:
            entry = _decode_or_none(pk, raw)
            if entry is not None:
                return entry
    return None


def iter_oldest_first(txn: Txn, t: Tables) -> Iterator[DeferredEntry]:
    """Every deferred entry (poisoned too), oldest first: a merge of the profiles'
    ranges of the index, so taking N costs O(N log P)."""
    names = list(profile_counts(txn, t))

    def one(profile: str) -> Iterator[tuple[int, bytes]]:
        prefix = keys.profile_prefix(profile)
        cur = txn.cursor(db=t.profiles)
        if not cur.set_range(prefix):
            return
        for pk in cur.iternext(keys=True, values=False):
            if not pk.startswith(prefix):
                return
            yield keys.profile_key_order(pk, len(prefix)), keys.profile_key_path(pk)

    for _, pkey in heapq.merge(*(one(n) for n in names)):
        raw = txn.get(pkey, db=t.deferred)
        if raw is not None and (entry := _decode_or_none(pkey, raw)) is not None:
            yield entry


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
    """Store `new` at `key`, keeping the indexes and counters in step with `old` -> `new`."""
    was_indexed = old is not None and not old.poisoned
    if was_indexed and (new.poisoned or old is None or old.order != new.order):
        assert old is not None
        txn.delete(keys.order_key(old.order, key), db=t.order)
    if not new.poisoned and not (was_indexed and old is not None and old.order == new.order):
        txn.put(keys.order_key(new.order, key), b"", db=t.order)
    if t.profiles is not None:
        if old is None or old.profile != new.profile or old.order != new.order:
            if old is not None:
                txn.delete(keys.profile_key(old.profile, old.order, key), db=t.profiles)
            txn.put(keys.profile_key(new.profile, new.order, key), b"", db=t.profiles)
        if old is None:
            _count(txn, t, new.profile, 1, _size(new))
        elif old.profile != new.profile:
            _count(txn, t, old.profile, -1, -_size(old))
            _count(txn, t, new.profile, 1, _size(new))
        elif _size(old) != _size(new):
            _count(txn, t, new.profile, 0, _size(new) - _size(old))
    txn.put(key, encode_deferred(new), db=t.deferred)


def delete_entry(txn: Txn, t: Tables, key: bytes, entry: DeferredEntry) -> None:
    if not entry.poisoned:
        txn.delete(keys.order_key(entry.order, key), db=t.order)
    if t.profiles is not None:
        txn.delete(keys.profile_key(entry.profile, entry.order, key), db=t.profiles)
        _count(txn, t, entry.profile, -1, -_size(entry))
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

    __slots__ = ("error", "exposure", "hash", "held", "identity", "key", "now", "okey", "path",
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
        self.held = False  # its caller stopped waiting; still queued (commit.py, tier 3)

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
    """Store a verdict, and drop the file's verdicts for older versions (issue 19).

    A ctime never goes back, so a verdict for an identity with an older ctime
    than this one (same dev and ino) can never match again: keeping it made the
    table grow by one record per write. Verdicts for the same or a newer ctime
    (other signature versions, a same-tick rewrite) stay."""
    identity = verdict.identity
    prefix = keys.verdict_prefix(identity.dev, identity.ino)
    with txn.cursor(db=t.verdicts) as cur:
        found = cur.set_range(prefix)
        while found and cur.key()[:len(prefix)] == prefix:
            if keys.verdict_key_ctime(cur.key()) < identity.ctime_ns:
                found = cur.delete()  # moves to the next record
            else:
                found = cur.next()
    txn.put(keys.verdict_key(identity, verdict.sig_version), encode_verdict(verdict),
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
