"""journal/pages.py, without a mount: an intact LMDB file adds up; one whose newest
meta page names a free-table root holding another table's page does not (the tear
tests/t5_torn_journal_test.py makes through a mount)."""

from __future__ import annotations

import os
from pathlib import Path

import lmdb

from vfile.journal import pages


def _env(where: Path) -> None:
    env = lmdb.open(str(where), max_dbs=4, map_size=1 << 26)
    try:
        db = env.open_db(b"deferred")
        for i in range(300):  # pages freed and reused; some values on overflow pages
            with env.begin(write=True) as txn:
                txn.put(b"k%03d" % (i % 97), os.urandom(9000 if i % 7 == 0 else 100), db=db)
                if i % 3 == 0:
                    txn.delete(b"k%03d" % ((i * 5) % 97), db=db)
        env.sync(True)
    finally:
        env.close()


def test_an_intact_file_adds_up(tmp_path: Path) -> None:
    _env(tmp_path)
    assert pages.audit(tmp_path / "data.mdb") == []


def test_a_free_table_root_on_another_tables_page_is_found(tmp_path: Path) -> None:
    _env(tmp_path)
    data = tmp_path / "data.mdb"
    fd = os.open(data, os.O_RDWR)
    try:
        meta = pages.read_meta(fd)
        assert meta is not None and meta.free.root != pages.P_INVALID
        # The free root's bytes become the main root's (another kind of page), as a torn
        # fsync that reverted that page would leave it.
        main = os.pread(fd, meta.psize, meta.main.root * meta.psize)
        os.pwrite(fd, meta.free.root.to_bytes(8, "little") + main[8:],
                  meta.free.root * meta.psize)
    finally:
        os.close(fd)
    found = pages.audit(data)
    assert found and found[0].startswith("free table"), found
