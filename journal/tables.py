"""The journal's named tables: their layout, opening and upgrade, the seq and
per-profile counters, and deferred entries by path (with their indexes).

The operations on them live beside this module: ops.py (deferred entries,
quarantine), verdicts.py, exposed.py, queue.py (the drain's claims) and
names.py (relink, exchange). Everything there and here is a plain function of
an open LMDB transaction: the group committer runs the write operations in its
writer thread, the store runs the reads on the trio thread. No function
begins, commits or aborts.

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
import heapq
import logging
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import lmdb

from vfile.journal import keys
from vfile.journal.records import DeferredEntry, JournalCorrupt, decode_deferred, encode_deferred

log = logging.getLogger(__name__)
R = TypeVar("R")

MAGIC = b"vfile-journal"
#: meta key: how far the rebuild of a damaged journal into this one got (journal.torn):
#: b"restored " or b"walked " + the aside directory's name
REBUILD_KEY = b"rebuild"
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


#: the run marker's key (journal.watermark owns its meaning)
RUN_KEY = b"run"


def clean_marker(txnid: int) -> bytes:
    """The run marker of a clean stop written by transaction `txnid`: trusted only while
    that is the journal's last transaction (journal.watermark)."""
    return b"clean:%d" % txnid


def init_meta(txn: Txn, t: Tables) -> None:
    txn.put(b"magic", MAGIC, db=t.meta)
    # A new journal is a clean stop of nothing (journal.watermark: a marker that is
    # absent is not one; x24).
    txn.put(RUN_KEY, clean_marker(txn.id()), db=t.meta)
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

def decode_or_skip(decode: Callable[[bytes], R], key: bytes, raw: bytes, what: str) -> R | None:
    """`decode(raw)`, or None with one warning naming the record: a damaged record is
    skipped by listings, never fatal to them (it stays in the table for `journal check`)."""
    try:
        return decode(raw)
    except JournalCorrupt as err:
        log.warning("journal: skipping undecodable %s %s: %s", what, bytes(key).hex(), err)
        return None


def _decode_or_none(key: bytes, raw: bytes) -> DeferredEntry | None:
    return decode_or_skip(decode_deferred, key, raw, "deferred entry")


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


def put_entry(txn: Txn, t: Tables, key: bytes, old: DeferredEntry | None,  # noqa: PLR0917
              new: DeferredEntry, value: bytes | None = None) -> bytes:
    """Store `new` at `key`, keeping the indexes and counters in step with `old` -> `new`;
    the value stored: `value` if given (`new` encoded already), else `new` encoded."""
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
    if value is None:
        value = encode_deferred(new)
    txn.put(key, value, db=t.deferred)
    return value


#: per-profile [entries, bytes] changes not yet applied to meta's counters (`delete_entry`)
Tally = dict[str, list[int]]


def delete_entry(txn: Txn, t: Tables, key: bytes, entry: DeferredEntry,
                 tally: Tally | None = None) -> None:
    """Remove `entry` at `key` with its index keys. `tally`: its counter change is added
    there, for the caller to apply once with `apply_tally` (a batch of completions: one
    counter update, not one per entry); otherwise applied now."""
    if not entry.poisoned:
        txn.delete(keys.order_key(entry.order, key), db=t.order)
    if t.profiles is not None:
        txn.delete(keys.profile_key(entry.profile, entry.order, key), db=t.profiles)
        if tally is None:
            _count(txn, t, entry.profile, -1, -_size(entry))
        else:
            change = tally.setdefault(entry.profile, [0, 0])
            change[0] -= 1
            change[1] -= _size(entry)
    txn.delete(key, db=t.deferred)


def apply_tally(txn: Txn, t: Tables, tally: Tally) -> None:
    """Apply the counter changes `delete_entry` gathered in `tally` (and empty it)."""
    for profile, (entries, nbytes) in tally.items():
        _count(txn, t, profile, entries, nbytes)
    tally.clear()


def iter_entries(txn: Txn, t: Tables) -> Iterator[tuple[bytes, DeferredEntry]]:
    for key, raw in txn.cursor(db=t.deferred):
        entry = _decode_or_none(key, raw)
        if entry is not None:
            yield bytes(key), entry
