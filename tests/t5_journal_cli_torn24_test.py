"""`vfile journal` run offline on a journal a power loss damaged (x24).

A mount checks its journal's integrity in a child before it opens it (journal.torn);
`vfile journal` opened it in its own process without that check. Run after a power
loss and before the next mount, `vfile journal list` printed the damaged journal as if
it were sound (here: an entry its `order` index had lost, which the drain would never
reach) and exited 0; on a torn LMDB tree it could abort in LMDB's C code. Now the
offline commands run the same check first: a damaged journal is refused (exit 7, one
line saying the next mount rebuilds it), and nothing is written to it."""

from __future__ import annotations

import hashlib
import subprocess
import time
from pathlib import Path

import lmdb
import pytest
from mounting import mounted, vfile_cmd
from outage import running_appliance, write_config
from statedisks import durability

from vfile.errors import Exit
from vfile.journal import tables, watermark

pytestmark = pytest.mark.mount

FILES = 20


def _digest(state: Path) -> str:
    return hashlib.sha256((state / "data.mdb").read_bytes()).hexdigest()


def _lose_one_order_key(state: Path) -> None:
    """What a torn tree can leave: a consistent LMDB file whose journal is not (an
    entry the `order` index lost). No lock: nothing else has the journal open."""
    env = lmdb.open(str(state), lock=False, max_dbs=tables.MAX_DBS, subdir=True)
    try:
        with env.begin(write=True) as txn:
            order = env.open_db(b"order", txn=txn, create=False)
            key = next(iter(txn.cursor(db=order).iternext(keys=True, values=False)))
            assert txn.delete(bytes(key), db=order)
        env.sync(True)
    finally:
        env.close()


def test_offline_journal_commands_refuse_a_damaged_journal(tmp_path: Path) -> None:
    src, mnt, state = tmp_path / "src", tmp_path / "mnt", tmp_path / "state"
    src.mkdir()
    mnt.mkdir()
    cfg = write_config(tmp_path / "vfile.toml", fail_mode="safe", deadline=2.0)
    with running_appliance(fault="refuse") as app, \
            mounted(src, mnt, "--appliance", app.url, "--config", str(cfg),
                    "--state-dir", str(state)) as server:
        for i in range(FILES):
            (mnt / f"f{i:02d}").write_bytes(b"written during the outage %d" % i)
        deadline = time.monotonic() + 60
        while durability(mnt)["queued"] or durability(mnt)["in_flight"]:
            assert time.monotonic() < deadline, "the creates' intents never committed"
            time.sleep(0.05)
        server.kill()  # the run marker stays `running`
    witness = watermark.witness_for(state, None)
    assert witness is not None
    witness.unlink()  # the reboot: the page cache is gone, the tmpfs emptied
    _lose_one_order_key(state)
    before = _digest(state)
    for args in (["list"], ["stats"], ["export"], ["purge", "--yes"], ["retry"]):
        res = subprocess.run(vfile_cmd("journal", *args, "--state-dir", str(state)),
                             capture_output=True, text=True, timeout=120, check=False)
        assert res.returncode == int(Exit.JOURNAL), (args, res.returncode, res.stdout,
                                                     res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and "damaged" in lines[0] and "next mount" in lines[0], \
            (args, res.stderr)
        assert _digest(state) == before, args  # never modified


def test_the_check_reads_no_witness_in_another_users_directory(tmp_path: Path) -> None:
    """Its neighbour: the check reads the witness beside LMDB's lock file, which `vfile
    journal` finds through `lock.mdb`. Run before the open (whose lock-directory check
    refuses a directory not private to us, x23), it followed the link into another
    user's directory, where a FIFO at the witness's name held root's `vfile journal
    list` until the check's 15-minute timeout. The lock directory is now checked first
    (exit 7, not followed)."""
    import os

    import trio

    from vfile.journal import Journal

    state = tmp_path / "state"
    j = Journal.open(state)
    trio.run(j.begin_run)
    j._running = False  # a crash: the marker stays `running`, so the check reads the witness
    j.close()
    theirs = tmp_path / "theirs"
    locks = theirs / "journal-locks"
    locks.mkdir(parents=True)
    for d in (theirs, locks):
        os.chown(d, 1001, 1001)
    os.mkfifo(locks / "journal-planted.commits")
    os.chown(locks / "journal-planted.commits", 1001, 1001)
    (state / "lock.mdb").unlink(missing_ok=True)
    (state / "lock.mdb").symlink_to(locks / "journal-planted.lock")
    try:
        res = subprocess.run(vfile_cmd("journal", "list", "--state-dir", str(state)),
                             capture_output=True, text=True, timeout=60, check=False)
    except subprocess.TimeoutExpired:
        raise AssertionError("vfile journal list hung on the planted witness") from None
    assert res.returncode == int(Exit.JOURNAL), (res.returncode, res.stderr)
    assert "not private to this user" in res.stderr, res.stderr
