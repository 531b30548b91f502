"""Memory through a real mount (issue 19): what the server keeps per file, not per write.

Every write gives a file a new identity and its close scan a new verdict. The
gate's verdict cache and the journal's verdict table used to keep one record
per write (the cache until its 65,536 slots were full, the journal forever):
a few busy files grew the server by ~280 bytes per operation. Now both hold
the verdicts of a file's current version only, and the cache lets a file go
when the kernel forgets its inode (a deleted file).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from filtering import filtering
from mounting import wait_for

from vfile import control
from vfile.journal import Journal

pytestmark = pytest.mark.mount

REWRITES = 150


def journal_verdicts(state: Path) -> int:
    j = Journal.open(state, readonly=True)
    try:
        return int(j.contents()["verdicts"])
    finally:
        j.close()


def test_rewriting_a_file_keeps_one_verdict(tmp_path: Path) -> None:
    with filtering(tmp_path) as f:
        target = f.mnt / "busy.txt"
        other = f.mnt / "quiet.txt"
        other.write_bytes(b"quiet\n")
        for n in range(REWRITES):
            target.write_bytes(f"version {n}\n".encode())
            assert target.read_bytes() == f"version {n}\n".encode()
        f.wait_idle()
        assert other.read_bytes() == b"quiet\n"
        gate = f.gate()
        assert gate["scans"] + gate["close_scans"] >= REWRITES, gate
        # One file per entry (two files here), not one per version.
        assert gate["cached_verdicts"] <= 2, gate
        assert journal_verdicts(f.state) <= 2
        assert gate["cache_hits"] > 0, gate


def test_deleted_files_leave_the_verdict_cache(tmp_path: Path) -> None:
    with filtering(tmp_path) as f:
        keep = f.mnt / "keep.txt"
        keep.write_bytes(b"kept\n")
        for n in range(REWRITES):
            p = f.mnt / f"tmp-{n}.txt"
            p.write_bytes(f"temporary {n}\n".encode())
            assert p.read_bytes() == f"temporary {n}\n".encode()
            p.unlink()
        f.wait_idle()
        # The kernel forgets an unlinked inode once its last user is gone; the
        # cache follows (FORGET is asynchronous: wait for it, boundedly).
        wait_for("the verdict cache to drop deleted files",
                 lambda: f.gate()["cached_verdicts"] <= 3)
        assert keep.read_bytes() == b"kept\n"
        assert f.gate()["cached_verdicts"] >= 1
        mem = control.call(f.mnt, "memory", {"top": 5}, timeout=10)
        assert mem["rss_kib"]["VmRSS"] > 0 and mem["rss_kib"]["RssAnon"] > 0, mem
        assert mem["tracing"] is False and "top" not in mem, mem  # VFILE_TRACEMALLOC unset
