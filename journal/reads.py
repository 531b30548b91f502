"""The journal's reports that read more than one record: deferred entries oldest
first, the per-profile debts, the quarantine list and the contents summary.

Plain functions of an open read transaction, run by `Journal` (store.py) on
the trio thread. A format-1 journal opened read-only has no profile index
(`t.profiles` is None): these then walk the deferred table instead.
"""

from __future__ import annotations

from vfile.journal import tables
from vfile.journal.records import (
    DeferredEntry,
    QuarantineRecord,
    decode_quarantine,
)
from vfile.journal.tables import Tables, Txn, decode_or_skip


def list_deferred(txn: Txn, t: Tables, limit: int | None,
                  include_poisoned: bool) -> list[DeferredEntry]:
    """Deferred entries, oldest first; `limit` N costs O(N log profiles)."""
    if t.profiles is None:  # a format-1 journal opened read-only: walk it
        entries = [e for _, e in tables.iter_entries(txn, t)]
        entries.sort(key=lambda e: e.order)
        if not include_poisoned:
            entries = [e for e in entries if not e.poisoned]
        return entries if limit is None else entries[:limit]
    out: list[DeferredEntry] = []
    for e in tables.iter_oldest_first(txn, t):
        if include_poisoned or not e.poisoned:
            out.append(e)
            if limit is not None and len(out) >= limit:
                break
    return out


def profile_debts(txn: Txn, t: Tables, now: float) -> dict[str, tuple[int, int, float]]:
    """Per profile with entries: (entries, bytes, age of the oldest in s), from the
    counters and one index lookup per profile: no walk (the quota's measure)."""
    if t.profiles is None:
        acc: dict[str, tuple[int, int, float]] = {}
        for _, e in tables.iter_entries(txn, t):
            n, b, age = acc.get(e.profile, (0, 0, 0.0))
            acc[e.profile] = (n + 1, b + (e.identity.size if e.identity else 0),
                              max(age, now - e.first_deferred))
        return acc
    out = {}
    for name, (n, b) in tables.profile_counts(txn, t).items():
        oldest = tables.oldest_of_profile(txn, t, name)
        out[name] = (n, b, 0.0 if oldest is None
                     else max(0.0, now - oldest.first_deferred))
    return out


def list_quarantine(txn: Txn, t: Tables) -> list[QuarantineRecord]:
    return [rec for key, raw in txn.cursor(db=t.quarantine)
            if (rec := decode_or_skip(decode_quarantine, key, raw, "quarantine record"))
            is not None]


def contents(txn: Txn, t: Tables, now: float) -> dict[str, object]:
    """What the journal holds: counts per table, the oldest entry's age, the bytes
    of the deferred files. O(profiles), except in a read-only format-1 journal."""
    deferred = int(txn.stat(t.deferred)["entries"])
    indexed = int(txn.stat(t.order)["entries"])
    oldest: float | None = None
    size = 0
    if t.profiles is None:  # format 1, read-only: walk
        for _, e in tables.iter_entries(txn, t):
            oldest = e.first_deferred if oldest is None else min(oldest,
                                                                 e.first_deferred)
            size += e.identity.size if e.identity is not None else 0
    else:  # O(profiles): counters and the first index key of each profile
        for name, (_, b) in tables.profile_counts(txn, t).items():
            size += b
            first = tables.oldest_of_profile(txn, t, name)
            if first is not None:
                oldest = first.first_deferred if oldest is None else min(
                    oldest, first.first_deferred)
    return {
        "deferred": deferred, "poisoned": deferred - indexed,
        "oldest_age_s": None if oldest is None else max(0.0, now - oldest),
        "bytes": size, "verdicts": int(txn.stat(t.verdicts)["entries"]),
        "quarantined": int(txn.stat(t.quarantine)["entries"]),
        "exposure_records": 0 if t.exposed is None else
        int(txn.stat(t.exposed)["entries"]),
    }
