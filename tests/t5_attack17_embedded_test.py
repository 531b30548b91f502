"""Attacks on the embedded default (scanner/embedded.py) through a real mount, as a
hostile local user: files the in-process engine cannot read within a deadline.

A scan of a file on a worker thread is abandoned when its deadline passes; the
thread must not go on reading. While it reads it holds one of the `FILE_READS`
tokens, so a user with a few huge sparse files (1 TiB of holes costs nothing)
could otherwise hold every token for an hour, and every other user's scan would
time out: in a `closed` profile a denial of every file that has no verdict yet.
"""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest
from filtering import MARGIN, Filter, config_file, timed_read
from mounting import mounted

from vfile.scanner.net import FILE_READS

pytestmark = pytest.mark.mount

#: a sparse file's apparent size: reading it whole takes the engine an hour
HUGE = 1 << 40
#: the profile's deadline: what an open of a huge file waits before its denial
DEADLINE_S = 1.0

PROFILE = f"""
[[profile]]
name = "all"
paths = ["**"]
fail_mode = "closed"
deadline = "{DEADLINE_S:g}s"
oversize = "scan-first"
scan_first = "64KiB"
"""


def _open_all(paths: list[Path], limit: float) -> dict[Path, int | None]:
    """Open and read every path at once (threads); each one's errno (None: it read)."""
    out: dict[Path, int | None] = {}

    def one(p: Path) -> None:
        got = timed_read(p, limit)
        out[p] = got.errno

    threads = [threading.Thread(target=one, args=(p,), daemon=True) for p in paths]
    for th in threads:
        th.start()
    for th in threads:
        th.join(limit + MARGIN)
    return out


def test_abandoned_reads_of_huge_files_do_not_starve_other_scans(tmp_path: Path) -> None:
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    src.mkdir()
    mnt.mkdir()
    victim = os.urandom(1 << 20)  # read on a worker thread (over the inline 64 KiB)
    (src / "victim.bin").write_bytes(victim)
    cfg = config_file(tmp_path, extra=PROFILE)
    with mounted(src, mnt, "--state-dir", str(tmp_path / "state"), "--config", str(cfg)
                 ) as server:
        f = Filter(server, tmp_path / "state")
        # The attacker: as many huge sparse files as there are read tokens, and more.
        huge = [mnt / f"huge{i}" for i in range(FILE_READS.total_tokens + 2)]
        for p in huge:
            with open(p, "wb") as out:
                out.truncate(HUGE)
        got = _open_all(huge, DEADLINE_S + MARGIN)
        # Not scannable in time: denied (closed), never read.
        assert set(got.values()) == {errno.EACCES}, got
        # Another user's file with no verdict yet: its scan must get a read token.
        read = timed_read(mnt / "victim.bin", DEADLINE_S + MARGIN)
        assert read.data == victim, (read, f.status()["appliances"])
