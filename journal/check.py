"""The journal checked against its own invariants (tables.py), like an fsck that
repairs nothing: every deferred entry decodes, no path has two entries, the
`order` index holds exactly the non-poisoned entries, the `profiles` index
exactly every entry, and the per-profile counters their count and bytes.

Plain functions of an open read transaction, run by `Journal.check` on the
trio thread. O(entries): for tests, crash checks and diagnosis, never on the
data path.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from vfile.journal import keys, tables
from vfile.journal.records import DeferredEntry, JournalCorrupt, decode_deferred
from vfile.journal.tables import Tables, Txn


def problems(txn: Txn, t: Tables) -> list[str]:
    """Each broken invariant, named; empty when the journal is consistent."""
    out: list[str] = []
    entries: dict[bytes, DeferredEntry] = {}
    for raw_key, raw in txn.cursor(db=t.deferred):
        try:
            entries[bytes(raw_key)] = decode_deferred(raw)
        except JournalCorrupt as err:
            out.append(f"deferred {bytes(raw_key)!r}: undecodable: {err}")
    paths: dict[str, bytes] = {}
    for key, e in entries.items():
        if e.path in paths:
            out.append(f"path {e.path!r} has two entries: {paths[e.path]!r} and {key!r}")
        paths[e.path] = key
    _compare(out, "order", _keys(txn, t.order),
             {keys.order_key(e.order, k) for k, e in entries.items() if not e.poisoned})
    if t.profiles is not None:  # a format-1 journal opened read-only has neither
        _compare(out, "profiles", _keys(txn, t.profiles),
                 {keys.profile_key(e.profile, e.order, k) for k, e in entries.items()})
        want: dict[str, tuple[int, int]] = {}
        for e in entries.values():
            n, b = want.get(e.profile, (0, 0))
            want[e.profile] = (n + 1, b + (e.identity.size if e.identity else 0))
        have = tables.profile_counts(txn, t)
        for name in sorted(set(want) | set(have)):
            if want.get(name, (0, 0)) != have.get(name, (0, 0)):
                out.append(f"profile {name!r}: counters say (entries, bytes) = "
                           f"{have.get(name, (0, 0))}, the entries {want.get(name, (0, 0))}")
    return out


def _keys(txn: Txn, db: Any) -> set[bytes]:
    return {bytes(k) for k in txn.cursor(db=db).iternext(keys=True, values=False)}


def _compare(out: list[str], index: str, have: set[bytes], want: Iterable[bytes]) -> None:
    want = set(want)
    for key in sorted(have - want):
        out.append(f"{index} index: {key!r} names no such entry")
    for key in sorted(want - have):
        out.append(f"{index} index: entry key {key!r} is missing")
