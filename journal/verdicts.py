"""The `verdicts` table: store, look up, list and delete verdicts (see
`journal.tables` for the layout). Plain functions of an open LMDB transaction.
"""

from __future__ import annotations

import logging

from vfile.journal import keys
from vfile.journal.records import (
    Identity,
    JournalCorrupt,
    VerdictRecord,
    decode_verdict,
    encode_verdict,
)
from vfile.journal.tables import Tables, Txn

log = logging.getLogger(__name__)

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


def all_verdicts(txn: Txn, t: Tables) -> list[VerdictRecord]:
    """Every verdict in key order; an undecodable one raises JournalCorrupt."""
    return [decode_verdict(raw) for _, raw in txn.cursor(db=t.verdicts)]


def op_delete_verdicts(txn: Txn, t: Tables, victims: list[bytes]) -> int:
    return sum(bool(txn.delete(k, db=t.verdicts)) for k in victims)


def op_drop_files(txn: Txn, t: Tables, files: list[tuple[int, int]]) -> int:
    """Delete every verdict of each file (dev, ino), whatever its version: one
    range of keys per file (`keys.verdict_prefix`)."""
    n = 0
    with txn.cursor(db=t.verdicts) as cur:
        for dev, ino in files:
            prefix = keys.verdict_prefix(dev, ino)
            found = cur.set_range(prefix)
            while found and cur.key()[:len(prefix)] == prefix:
                found = cur.delete()
                n += 1
    return n


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
