"""SQLite in WAL mode through a scanning mount, against a native directory.

WAL needs what a FUSE filesystem finds hard: every connection opens the
database with O_NOFOLLOW (before issue 18 every connection after the first
failed with "unable to open database file"), the -shm index is a shared
writable mmap that connections in different processes must see coherently,
and POSIX locks arbitrate readers and the writer. A writer commits transfers
between two accounts while reader threads and a second process check that
every snapshot they see is consistent; then integrity_check, and the database
is opened again (by the sqlite3 CLI, then Python) after the mount is taken
down and mounted again on the same source and state.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from clients import CLIENT_DEADLINE, run, scanning_mount

pytestmark = pytest.mark.mount

TOTAL = 1_000_000
TRANSFERS = 100

# The second process: reads snapshots until told to stop; exit 1 on an inconsistent one.
READER = """
import os, sqlite3, sys, time
db, stop, total = sys.argv[1], sys.argv[2], int(sys.argv[3])
con = sqlite3.connect(db, timeout=30, isolation_level=None)
reads, last = 0, -1
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    done = os.path.exists(stop)
    con.execute("BEGIN")
    a = con.execute("SELECT bal FROM acct WHERE id=1").fetchone()[0]
    b = con.execute("SELECT bal FROM acct WHERE id=2").fetchone()[0]
    n = con.execute("SELECT count(*) FROM log").fetchone()[0]
    con.execute("COMMIT")
    if a + b != total or n < last:
        print(f"inconsistent snapshot: {a}+{b}, log {n} after {last}"); sys.exit(1)
    last, reads = n, reads + 1
    if done:
        break
print(reads, last)
"""


def connect(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(db, timeout=30, isolation_level=None, check_same_thread=False)


def workload(place: Path) -> dict[str, object]:
    """Writer + reader threads + a reader process on `place`/t.db; what they saw."""
    db = place / "t.db"
    con = connect(db)
    assert con.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
    con.executescript(f"""
        CREATE TABLE acct(id INTEGER PRIMARY KEY, bal INTEGER NOT NULL);
        CREATE TABLE log(id INTEGER PRIMARY KEY, amount INTEGER, pad BLOB);
        INSERT INTO acct VALUES (1, {TOTAL}), (2, 0);
    """)
    stop = place / "stop"
    errors: list[str] = []
    reads = [0, 0]
    writer_done = threading.Event()

    def reader(k: int) -> None:
        rcon = connect(db)
        last = -1
        try:
            while True:
                done = writer_done.is_set()
                rcon.execute("BEGIN")
                a = rcon.execute("SELECT bal FROM acct WHERE id=1").fetchone()[0]
                b = rcon.execute("SELECT bal FROM acct WHERE id=2").fetchone()[0]
                n = rcon.execute("SELECT count(*) FROM log").fetchone()[0]
                rcon.execute("COMMIT")
                if a + b != TOTAL or n < last:
                    errors.append(f"reader {k}: {a}+{b}, log {n} after {last}")
                    return
                last = n
                reads[k] += 1
                if done:
                    return
        except sqlite3.Error as err:
            errors.append(f"reader {k}: {err}")
        finally:
            rcon.close()

    proc = subprocess.Popen([sys.executable, "-c", READER, str(db), str(stop), str(TOTAL)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    threads = [threading.Thread(target=reader, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    try:
        for i in range(TRANSFERS):
            amount = 1 + i * 7 % 1000
            con.execute("BEGIN IMMEDIATE")
            con.execute("UPDATE acct SET bal = bal - ? WHERE id = 1", (amount,))
            con.execute("UPDATE acct SET bal = bal + ? WHERE id = 2", (amount,))
            con.execute("INSERT INTO log(amount, pad) VALUES (?, zeroblob(?))",
                        (amount, 100 + i * 13 % 3000))
            con.execute("COMMIT")
            if i == TRANSFERS // 2:
                con.execute("PRAGMA wal_checkpoint(PASSIVE)")
    finally:
        writer_done.set()
        stop.write_text("")
        for t in threads:
            t.join(CLIENT_DEADLINE)
        out, _ = proc.communicate(timeout=CLIENT_DEADLINE)
    assert proc.returncode == 0, out
    assert not errors, errors
    assert min(reads) > 0 and int(out.split()[0]) > 0, (reads, out)
    result = state(con)
    # a second writer connection sees the last commit and can write too
    con2 = connect(db)
    con2.execute("UPDATE acct SET bal = bal WHERE id = 1")
    con2.close()
    con.close()
    return result


def state(con: sqlite3.Connection) -> dict[str, object]:
    return {
        "integrity": con.execute("PRAGMA integrity_check").fetchall(),
        "acct": con.execute("SELECT * FROM acct ORDER BY id").fetchall(),
        "log": con.execute("SELECT count(*), sum(amount), sum(length(pad)) FROM log").fetchone(),
        "mode": con.execute("PRAGMA journal_mode").fetchone(),
    }


@pytest.fixture
def base() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="vfile-sqlite-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_sqlite_wal_concurrent_readers_then_remount(base: Path) -> None:
    with scanning_mount(base=base) as scanning:
        pair = scanning.pair()
        native = workload(pair.native)
        mounted = workload(pair.mnt)
        assert mounted == native
        assert mounted["integrity"] == [("ok",)]
        assert mounted["acct"] == native["acct"] and mounted["log"][0] == TRANSFERS  # type: ignore[index]
        rel = pair.mnt.relative_to(scanning.mnt)
    # Mounted again on the same source and state: the database opens, is intact,
    # holds every commit, and takes more (the CLI's own SQLite, then Python's).
    with scanning_mount(base=base) as again:
        db = again.mnt / rel / "t.db"
        res = run(["sqlite3", db, "PRAGMA integrity_check; PRAGMA journal_mode;"
                   "INSERT INTO log(amount) VALUES (0); SELECT count(*) FROM log;"])
        assert res.stdout.split() == ["ok", "wal", str(TRANSFERS + 1)]
        con = connect(db)
        try:
            after = state(con)
        finally:
            con.close()
        assert after["integrity"] == [("ok",)] and after["acct"] == native["acct"]
        assert os.path.getsize(db) > 0
