"""Journal operations that move deferred entries between names, inside one
transaction: a name of a multiply-linked file going away (`op_relink`) and
RENAME_EXCHANGE of two files or two directories (`op_exchange`).

Like `journal.tables`, these are plain functions of an open write transaction
run by the group committer's writer thread. Invariants:
- An entry is never dropped while the file it belongs to is still reachable:
  `op_relink` moves (or merges) it onto a live name of the same file.
- `op_exchange` swaps every entry with its file: after it, each entry's path
  names the file it was written for.
"""

from __future__ import annotations

import dataclasses

from vfile.journal.records import MAX_EXPOSURES, DeferredEntry
from vfile.journal.tables import (
    Tables,
    Txn,
    delete_entry,
    find,
    iter_entries,
    locate,
    next_seq,
    put_entry,
)


def _merge(into: DeferredEntry, other: DeferredEntry) -> DeferredEntry:
    """`into`, also carrying `other`'s exposure trail and age (same file, two names)."""
    trail = sorted({*into.exposures, *other.exposures}, key=lambda e: e.time)[-MAX_EXPOSURES:]
    return dataclasses.replace(into, exposures=tuple(trail),
                               first_deferred=min(into.first_deferred, other.first_deferred),
                               order=min(into.order, other.order),
                               poisoned=into.poisoned and other.poisoned,
                               lease_until=0.0)


def op_relink(txn: Txn, t: Tables, old: str, new: str) -> int | None:
    """Name `old` of a file was unlinked while `new` still names it: `old`'s entry
    moves to `new`, merged into `new`'s own entry if it has one. Returns the seq
    of `new`'s entry afterwards (None if `old` had no entry)."""
    found = find(txn, t, old)
    if found is None or old == new:
        return None
    okey, oentry = found
    delete_entry(txn, t, okey, oentry)
    nkey, nentry = locate(txn, t, new)
    if nentry is not None:
        merged = _merge(nentry, oentry)
        put_entry(txn, t, nkey, nentry, merged)
        return merged.seq
    moved = dataclasses.replace(oentry, path=new, seq=next_seq(txn, t), lease_until=0.0)
    put_entry(txn, t, nkey, None, moved)
    return moved.seq


def swapped_path(path: str, a: str, b: str) -> str | None:
    """`path` after exchanging `a` and `b` (files or directories); None if untouched."""
    for x, y in ((a, b), (b, a)):
        if path == x:
            return y
        if path.startswith(x + "/"):
            return y + path[len(x):]
    return None


def op_exchange(txn: Txn, t: Tables, a: str, b: str) -> int:
    """`a` and `b` were exchanged (RENAME_EXCHANGE): every entry at or below either
    follows its file (keeping its seq). Returns how many entries moved."""
    a, b = a.rstrip("/"), b.rstrip("/")
    if a == b:
        return 0
    moving: list[tuple[str, DeferredEntry]] = []
    for key, entry in list(iter_entries(txn, t)):
        new = swapped_path(entry.path, a, b)
        if new is not None:
            delete_entry(txn, t, key, entry)
            moving.append((new, entry))
    for new, entry in moving:
        key, old = locate(txn, t, new)
        assert old is None, "every entry at a swapped name was removed first"
        # Seqs are journal-wide: a drain holding (old name, seq) finds the other
        # file's entry there, with another seq, and completes nothing.
        put_entry(txn, t, key, None, dataclasses.replace(entry, path=new, lease_until=0.0))
    return len(moving)
