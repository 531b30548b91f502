"""Infected files, by inode: a verdict that outlives a metadata change.

A verdict is keyed by the file's full identity (dev, ino, size, mtime, ctime),
so a `touch`, chmod, chown or rename (all change ctime) would leave a file
found infected with no verdict at all, and a window or an outage would then
serve it (issue 13). A taint record, keyed by (dev, ino) alone, says "this
inode held infected content": the gate denies every reading open of it until
a scan of its current content says clean, which clears the record. The
content digest (SHA-256 from hashlib, never a fast non-cryptographic hash an
attacker can collide) lets the gate deny unchanged content at once, without
an appliance; an empty digest means "unknown": only a clean scan clears it.

Table `tainted` (named LMDB database): u64 dev + u64 ino -> record; opened
(created if missing, so older journals gain it) by `open_taint_table`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import lmdb

from vfile.journal import keys
from vfile.journal.records import JournalCorrupt, _float, _int, _pack, _str, _unpack

if TYPE_CHECKING:
    Txn = lmdb.Transaction[bytes]
else:
    Txn = lmdb.Transaction

log = logging.getLogger(__name__)

TABLE = b"tainted"


@dataclass(frozen=True, slots=True)
class TaintRecord:
    dev: int
    ino: int
    #: size of the infected content, and its SHA-256 (hex; "" if unknown)
    size: int
    digest: str
    signature: str
    time: float


def taint_key(dev: int, ino: int) -> bytes:
    return keys.u64(dev) + keys.u64(ino)


def encode_taint(r: TaintRecord) -> bytes:
    return _pack([r.dev, r.ino, r.size, r.digest, r.signature, r.time])


def decode_taint(data: bytes) -> TaintRecord:
    v = _unpack(data, "taint", 6)
    return TaintRecord(_int(v[0]), _int(v[1]), _int(v[2]), _str(v[3]), _str(v[4]),
                       _float(v[5]))


def open_taint_table(env: lmdb.Environment, *, readonly: bool) -> Any:
    """The `tainted` table; None for a read-only journal that has none yet."""
    try:
        return env.open_db(TABLE, create=not readonly)
    except lmdb.NotFoundError:
        return None


def op_put(txn: Txn, db: Any, rec: TaintRecord) -> None:
    txn.put(taint_key(rec.dev, rec.ino), encode_taint(rec), db=db)


def op_clear(txn: Txn, db: Any, dev: int, ino: int) -> bool:
    return bool(txn.delete(taint_key(dev, ino), db=db))


def get(txn: Txn, db: Any, dev: int, ino: int) -> TaintRecord | None:
    if db is None:
        return None
    raw = txn.get(taint_key(dev, ino), db=db)
    if raw is None:
        return None
    try:
        return decode_taint(raw)
    except JournalCorrupt as err:
        # Unreadable: still tainted, content unknown (only a clean scan clears it).
        log.warning("journal: undecodable taint record: %s", err)
        return TaintRecord(dev, ino, -1, "", "unknown", 0.0)
