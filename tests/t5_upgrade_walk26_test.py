"""The walk an upgrade owes is done once, and never lost (s26).

A state directory of a vfile before round 10 holds a bare `clean` run marker, which
names no transaction: the first start after the upgrade counts it as an unclean stop
and walks the source once (journal.watermark.stopped_cleanly). Seen here: that start
walks, journals a file changed behind vfile's back, and the start after its clean
stop walks no more (not forever).

The hole: a start whose walk failed half-way (here the state disk filled up, as the
walk journaled 8000 files) still closed the journal as a clean stop (`clean:<txnid>`),
so the next start, with room again, walked nothing: 5657 files with neither an entry
nor a verdict. Now the stop is clean only once the due walk is done
(journal.base `_walk_due`, cleared by `vouch`). And that failed start said "the mount
server failed; see its log" (exit 10; the log: a group of a batch's JournalFull
tracebacks): now one line, "recovery walk: ... disk full", exit 7."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import lmdb
import pytest
from mounting import force_unmount, is_mounted, mounted, vfile_cmd
from outage import running_appliance, unaccounted, write_config

from vfile.errors import Exit
from vfile.journal import tables, watermark

pytestmark = pytest.mark.mount

FILES = 8000


def _marker(state: Path, new: bytes | None = None) -> bytes | None:
    """The run marker as stored (after setting it to `new`, an older vfile's)."""
    env = lmdb.open(str(state), lock=False, max_dbs=tables.MAX_DBS, subdir=True)
    try:
        with env.begin(write=new is not None) as txn:
            meta = env.open_db(b"meta", txn=txn, create=False)
            if new is not None:
                txn.put(watermark.RUN_KEY, new, db=meta)
            got = txn.get(watermark.RUN_KEY, db=meta)
        env.sync(True)
        return None if got is None else bytes(got)
    finally:
        env.close()


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    where = tmp_path / "disk"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)],
                   check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def test_an_old_bare_clean_marker_walks_once(tmp_path: Path) -> None:
    src, mnt, state = tmp_path / "src", tmp_path / "mnt", tmp_path / "state"
    src.mkdir()
    mnt.mkdir()
    cfg = write_config(tmp_path / "vfile.toml", fail_mode="safe", deadline=2.0)
    with running_appliance(fault="refuse") as app:
        args = ("--appliance", app.url, "--config", str(cfg), "--state-dir", str(state))
        with mounted(src, mnt, *args):
            pass
        _marker(state, b"clean")  # as a vfile before round 10 left it
        (src / "behind").write_bytes(b"changed while the old vfile was stopped\n")
        with mounted(src, mnt, *args) as first:
            assert "recovery walk" in first.log()
        assert unaccounted(src, state, "") == []
        marker = _marker(state)
        assert marker is not None and marker.startswith(b"clean:"), marker
        with mounted(src, mnt, *args) as second:
            assert "recovery walk" not in second.log()


def test_a_walk_that_failed_is_walked_again(tmp_path: Path, disk: Path) -> None:
    src, mnt, state = tmp_path / "src", tmp_path / "mnt", disk / "state"
    src.mkdir()
    mnt.mkdir()
    cfg = write_config(tmp_path / "vfile.toml", fail_mode="safe", deadline=2.0)
    with running_appliance(fault="refuse") as app:
        args = ("--appliance", app.url, "--config", str(cfg), "--state-dir", str(state))
        with mounted(src, mnt, *args):
            pass
        _marker(state, b"clean")
        for i in range(FILES):  # long names: the walk's entries fill the 2 MiB disk
            (src / (f"{i:06d}" + "x" * 200)).write_bytes(b"a")
        try:
            res = subprocess.run(vfile_cmd("mount", *args, str(src), str(mnt)),
                                 capture_output=True, text=True, timeout=600, check=False)
            # one clear line and exit 7 (was a group of JournalFull tracebacks, exit 10)
            assert res.returncode == int(Exit.JOURNAL) and not is_mounted(mnt), res.stderr
            assert "recovery walk" in res.stderr and "disk full" in res.stderr, res.stderr
        finally:
            force_unmount(mnt)
        assert _marker(state) != b"clean", "the failed start touched nothing?"
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        with mounted(src, mnt, *args) as again:
            assert "recovery walk" in again.log()
        assert unaccounted(src, state, "") == []
