"""Every page of the journal's LMDB file accounted for, read from the file itself: an
`mdb_audit`-style check of the trees a read never visits (README "A power loss during
the journal's fsync").

The torn-journal check (journal.torn) reads every table through cursors, which visits
every page a read can reach. LMDB's write path also reads the free-page table (FREE_DBI,
"freeDB"), which no cursor of py-lmdb can open, and trusts the page numbers its records
list. A tear that leaves the newest meta page over an older, self-consistent main tree
(the main root reused on the same page, every other page reverted to the last durable
fsync: tests/cutfs.py's torn fsync, fraction 0.0) reads as intact, while the meta
page's free-table root holds an older page of another table: the first write then
fails with MDB_CORRUPTED ("Located page was wrong type"), or worse, takes the "free"
page numbers it decodes there and overwrites pages still in use
(tests/t5_torn_journal_test.py).

`audit(path)` reads the newest valid meta page (as LMDB picks it: the higher txnid) and
walks the free table, the main table and every named table from their roots:
- every page number lies in [2, last_pg] and the page says so in its header;
- a page's kind (branch, leaf, overflow) is what its depth calls for;
- node offsets and sizes lie inside their page, overflow runs are as long as their data;
- each table's page and entry counts equal those its `MDB_db` record states;
- the free table's keys are 8-byte txnids below the meta's, its values well-formed page
  lists;
- no page is used twice (by two trees, or by a tree and the free list), and the used and
  free pages together are exactly pages 2..last_pg (LMDB's own `mdb_audit` invariant,
  true after every commit).
It returns the problems found (empty: consistent). Pure reading through `os.pread`, no
LMDB code: a torn page cannot crash it.

Layout (LMDB 0.9, 64-bit, `mdb.c`): a page starts with pgno u64, pad u16, flags u16,
lower u16, upper u16 (an overflow page: pages u32 in place of lower/upper); a meta page's
MDB_meta follows its header; a node is lo u16, hi u16, flags u16, ksize u16, key, data.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

HEADER = 16
NUM_METAS = 2
META_MAGIC = 0xBEEFC0DE
DATA_VERSION = 1
P_BRANCH, P_LEAF, P_OVERFLOW, P_META, P_LEAF2 = 0x01, 0x02, 0x04, 0x08, 0x20
F_BIGDATA, F_SUBDATA, F_DUPDATA = 0x01, 0x02, 0x04
MDB_DUPSORT = 0x04
P_INVALID = (1 << 64) - 1
#: one problem is enough to call the journal damaged; a torn tree can name thousands
MAX_PROBLEMS = 20

_PAGE = struct.Struct("<QHHHH")
_DB = struct.Struct("<IHHQQQQQ")
_META_HEAD = struct.Struct("<IIQQ")
_META_TAIL = struct.Struct("<QQ")
_NODE = struct.Struct("<HHHH")
_U64 = struct.Struct("<Q")


class _Stop(Exception):
    """Enough problems found: the rest is noise."""


@dataclass(frozen=True, slots=True)
class Db:
    """An `MDB_db` record: a table's root and what it says it holds."""

    pad: int
    flags: int
    depth: int
    branch: int
    leaf: int
    overflow: int
    entries: int
    root: int

    @classmethod
    def parse(cls, raw: bytes) -> Db:
        return cls(*_DB.unpack_from(raw))


@dataclass(frozen=True, slots=True)
class Meta:
    psize: int
    free: Db
    main: Db
    last_pg: int
    txnid: int


def read_meta(fd: int) -> Meta | None:
    """The meta page LMDB opens with (the valid one with the higher txnid), or None."""
    best: Meta | None = None
    psize = 0
    for i in range(NUM_METAS):
        # Page 0 tells the page size (kept in the free table's md_pad); page 1 follows it.
        raw = os.pread(fd, HEADER + 136, i * psize)
        if len(raw) < HEADER + 136:
            return best
        _pgno, _pad, flags, _lo, _up = _PAGE.unpack_from(raw)
        magic, version, _addr, _mapsize = _META_HEAD.unpack_from(raw, HEADER)
        if not flags & P_META or magic != META_MAGIC or version != DATA_VERSION:
            return best
        free, main = Db.parse(raw[HEADER + 24:]), Db.parse(raw[HEADER + 72:])
        last_pg, txnid = _META_TAIL.unpack_from(raw, HEADER + 120)
        psize = psize or free.pad
        if psize < 512:
            return None
        m = Meta(psize, free, main, last_pg, txnid)
        if best is None or m.txnid > best.txnid:
            best = m
    return best


class _Walk:
    def __init__(self, fd: int, meta: Meta) -> None:
        self.fd, self.meta, self.psize = fd, meta, meta.psize
        self.owner: dict[int, str] = {}
        self.problems: list[str] = []

    def problem(self, text: str) -> None:
        self.problems.append(text)
        if len(self.problems) >= MAX_PROBLEMS:
            raise _Stop

    def claim(self, pgno: int, count: int, table: str) -> bool:
        """Pages pgno..pgno+count-1 belong to `table`; False (said) if any cannot."""
        if pgno < NUM_METAS or pgno + count - 1 > self.meta.last_pg:
            self.problem(f"{table}: page {pgno} (+{count}) outside 2..{self.meta.last_pg}")
            return False
        for p in range(pgno, pgno + count):
            if p in self.owner:
                self.problem(f"{table}: page {p} is also {self.owner[p]}'s")
                return False
            self.owner[p] = table
        return True

    def page(self, pgno: int) -> bytes:
        return os.pread(self.fd, self.psize, pgno * self.psize)

    def overflow(self, pgno: int, size: int, table: str) -> tuple[bytes, int] | None:
        """The data of a big value stored from page pgno and its run's length in pages;
        None (said) if torn. A run can be longer than its data needs: LMDB overwrites a
        big value in place when the new one fits."""
        head = self.page(pgno)
        if len(head) < HEADER:
            self.problem(f"{table}: overflow page {pgno} past the end of the file")
            return None
        got, _pad, flags = _PAGE.unpack_from(head)[:3]
        pages = struct.unpack_from("<I", head, 12)[0]
        want = (HEADER - 1 + size) // self.psize + 1
        if got != pgno or not flags & P_OVERFLOW or pages < want:
            self.problem(f"{table}: overflow page {pgno} reads as page {got}, flags "
                         f"{flags:#x}, {pages} pages (want {want} for {size} bytes)")
            return None
        if not self.claim(pgno, pages, table):
            return None
        return os.pread(self.fd, size, pgno * self.psize + HEADER), pages

    def tree(self, db: Db, table: str, *, values: bool = False) -> list[tuple[bytes, bytes]]:
        """Walk one table from its root: its sub-table records (the main table), and with
        `values` every (key, value) pair (the free table; elsewhere values are checked
        for bounds and overflow runs only)."""
        seen = {"branch": 0, "leaf": 0, "overflow": 0, "entries": 0}
        out: list[tuple[bytes, bytes]] = []
        if db.root == P_INVALID:
            if db.depth or db.entries:
                self.problem(f"{table}: no root, yet depth {db.depth}, {db.entries} entries")
            return out
        stack = [(db.root, 1)]
        while stack:
            pgno, level = stack.pop()
            if not self.claim(pgno, 1, table):
                continue
            raw = self.page(pgno)
            if len(raw) < self.psize:
                self.problem(f"{table}: page {pgno} past the end of the file")
                continue
            got, _pad, flags, lower, upper = _PAGE.unpack_from(raw)
            leaf = level == db.depth
            want = P_LEAF if leaf else P_BRANCH
            if got != pgno or flags & (P_BRANCH | P_LEAF | P_OVERFLOW | P_META | P_LEAF2) != want:
                self.problem(f"{table}: page {pgno} (level {level} of {db.depth}) reads as "
                             f"page {got} with flags {flags:#x}")
                continue
            if not HEADER <= lower <= upper <= self.psize or (lower == HEADER and not leaf):
                self.problem(f"{table}: page {pgno}: bounds {lower}..{upper}")
                continue
            seen["leaf" if leaf else "branch"] += 1
            for i in range((lower - HEADER) // 2):
                off = struct.unpack_from("<H", raw, HEADER + 2 * i)[0]
                if off < upper or off + _NODE.size > self.psize:
                    self.problem(f"{table}: page {pgno} node {i} at {off}, outside {upper}..")
                    break
                lo, hi, nflags, ksize = _NODE.unpack_from(raw, off)
                kstart = off + _NODE.size
                if not leaf:
                    if kstart + ksize > self.psize:
                        self.problem(f"{table}: page {pgno} node {i}: key past the page")
                        break
                    stack.append((lo | hi << 16 | nflags << 32, level + 1))
                    continue
                size = lo | hi << 16
                dstart = kstart + ksize
                inline = 8 if nflags & F_BIGDATA else size
                if dstart + inline > self.psize:
                    self.problem(f"{table}: page {pgno} node {i}: data past the page")
                    break
                seen["entries"] += 1
                key = raw[kstart:dstart]
                if nflags & F_BIGDATA:
                    start = _U64.unpack_from(raw, dstart)[0]
                    big = self.overflow(start, size, table)
                    if big is None:
                        continue
                    value = big[0]
                    seen["overflow"] += big[1]
                else:
                    value = raw[dstart:dstart + size]
                if nflags & F_SUBDATA:
                    if len(value) != _DB.size or nflags & F_DUPDATA:
                        self.problem(f"{table}: {key!r}: a sub-table record of {len(value)} "
                                     f"bytes (flags {nflags:#x})")
                        continue
                    out.append((key, value))
                elif values:
                    out.append((key, value))
        said = {"branch": db.branch, "leaf": db.leaf, "overflow": db.overflow}
        if not db.flags & MDB_DUPSORT:
            said["entries"] = db.entries
        for what, n in said.items():
            if seen[what] != n:
                self.problem(f"{table}: {seen[what]} {what} found, its record says {n}")
        return out

    def free_list(self) -> int:
        """Walk the free table and claim the pages it lists; their number."""
        total = 0
        for key, value in self.tree(self.meta.free, "free table", values=True):
            if len(key) != 8 or len(value) < 8 or len(value) % 8:
                self.problem(f"free table: a record of key {key.hex()} ({len(value)} bytes) "
                             "is no page list")
                continue
            txnid = _U64.unpack_from(key)[0]
            count = _U64.unpack_from(value)[0]
            if txnid > self.meta.txnid or count != len(value) // 8 - 1:
                self.problem(f"free table: txn {txnid} (meta {self.meta.txnid}) lists "
                             f"{count} pages in {len(value)} bytes")
                continue
            for (pgno,) in _U64.iter_unpack(value[8:]):
                if self.claim(pgno, 1, f"free list of txn {txnid}"):
                    total += 1
        return total


def audit(path: Path) -> list[str]:
    """The problems of LMDB data file `path` (module doc); empty when every page adds up."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        meta = read_meta(fd)
        if meta is None:
            return ["no valid meta page"]
        walk = _Walk(fd, meta)
        try:
            walk.free_list()
            for name, raw in walk.tree(meta.main, "main table"):
                walk.tree(Db.parse(raw), f"table {name.decode(errors='replace')!r}")
            used = len(walk.owner)
            if used != meta.last_pg + 1 - NUM_METAS:
                walk.problem(f"pages: {used} used or free, the meta page says "
                             f"{meta.last_pg + 1 - NUM_METAS} (last page {meta.last_pg})")
        except _Stop:
            pass
        return walk.problems
    finally:
        os.close(fd)
