"""The `exposed` table: who opened a file unscanned, kept after its deferred
entry ended without a clean verdict for what they read (see `journal.tables`).

Plain functions of an open LMDB transaction, like `journal.tables`. A record is
never dropped except by an administrator (`op_clear_exposed`); `archive` merges
an ending entry's exposures into it.
"""

from __future__ import annotations

import hashlib
import logging

from vfile.journal.records import (
    DeferredEntry,
    ExposureRecord,
    JournalCorrupt,
    decode_exposed,
    encode_exposed,
    merge_exposures,
)
from vfile.journal.tables import Tables, Txn, decode_or_skip

log = logging.getLogger(__name__)

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
    return [rec for key, raw in txn.cursor(db=t.exposed)
            if (rec := decode_or_skip(decode_exposed, key, raw, "exposure record")) is not None]


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
