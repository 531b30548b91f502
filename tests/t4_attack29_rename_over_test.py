"""A rename onto a file's last name drops that file's verdicts (a29).

m27 made an unlink of a file's last name drop its verdicts at once (they can never
match again: an inode number reused later comes with a new ctime), not at the
hourly collection. A rename onto an existing name takes the replaced file's last
name just the same, and kept its verdicts: `mv new old` repeated (an editor's
save, rsync's rename into place, a log rotation) grew the verdict table by one
per pass. Through a real mount: N passes of create + rename-over, the verdict
count bounded; the replaced file's verdicts are gone, the survivor's kept. And
the neighbours: a rename onto a name of a file with another name keeps that
file's verdicts (it lives on), RENAME_EXCHANGE keeps both, a directory moved
over an empty one keeps its files' verdicts.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
from pathlib import Path

import pytest
from filtering import Filter, filtering
from mounting import wait_for

from vfile.journal.store import Journal

pytestmark = pytest.mark.mount

#: create + rename-over passes
PASSES = 40
#: verdicts a pass may leave behind at most, after all passes (the live file's own)
KEPT = 3

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
AT_FDCWD = -100
RENAME_EXCHANGE = 2


def exchange(a: Path, b: Path) -> None:
    if _libc.renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b),
                       RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def verdict_count(f: Filter) -> int:
    n: int = f.status()["journal"]["verdicts"]
    return n


def stored(state: Path) -> set[tuple[int, int]]:
    """(dev, ino) of every stored verdict, read in-process (read-only, next to the mount)."""
    with Journal.open(state, readonly=True) as j:
        return {(v.identity.dev, v.identity.ino) for v in j.verdicts()}


def key(p: Path) -> tuple[int, int]:
    st = os.stat(p)
    return st.st_dev, st.st_ino


def test_rename_over_drops_the_replaced_files_verdicts(tmp_path: Path) -> None:
    with filtering(tmp_path) as f:
        target = f.mnt / "log.txt"
        target.write_bytes(b"first\n")
        f.wait_idle(60)
        # Every new version written before the renames: no inode number freed by a
        # rename is reused by a later file (a reused one replaces the stale verdict of
        # its number when its own is stored, which hid most of the growth).
        tmps = [f.mnt / f".log.txt.{i}" for i in range(PASSES)]
        for i, tmp in enumerate(tmps):
            tmp.write_bytes(b"pass %d\n" % i)  # distinct content: a scan and a verdict each
        f.wait_idle(60)
        for tmp in tmps:
            os.rename(tmp, target)
        f.wait_idle(60)
        assert target.read_bytes() == b"pass %d\n" % (PASSES - 1)
        # Before a29 every replaced file kept its verdict: PASSES + 1 or more.
        with contextlib.suppress(AssertionError):
            wait_for("the replaced files' verdicts to go",
                     lambda: verdict_count(f) <= KEPT, 30)
        assert verdict_count(f) <= KEPT, f.status()["journal"]["verdicts"]
        assert f.gate()["close_scans"] >= PASSES, f.gate()


def test_rename_over_a_linked_name_and_exchanges_keep_live_verdicts(tmp_path: Path) -> None:
    with filtering(tmp_path) as f:
        m = f.mnt
        (m / "a").write_bytes(b"linked\n")
        f.wait_idle(60)
        os.link(m / "a", m / "a2")  # `a` lives on as a2 after a rename onto `a`
        (m / "b").write_bytes(b"mover\n")
        (m / "x").write_bytes(b"x side\n")
        (m / "y").write_bytes(b"y side\n")
        (m / "d").mkdir()
        (m / "d" / "inner").write_bytes(b"inner\n")
        (m / "e").mkdir()
        f.wait_idle(60)
        for p in ("a2", "b", "x", "y", "d/inner"):
            assert (m / p).read_bytes()  # opened: judged and stored
        f.wait_idle(60)
        os.rename(m / "b", m / "a")      # a2 keeps its file (and its verdict)
        exchange(m / "x", m / "y")       # both live on
        os.rename(m / "d", m / "e")      # a directory over an empty one
        f.wait_idle(60)
        for p in ("a", "a2", "x", "y", "e/inner"):
            assert (m / p).read_bytes()
        f.wait_idle(60)
        assert (m / "a2").read_bytes() == b"linked\n"
        assert (m / "x").read_bytes() == b"y side\n"
        assert (m / "e" / "inner").read_bytes() == b"inner\n"
        # Each living file has a verdict in the journal (what the next mount reuses).
        live = {p: key(f.src / p) for p in ("a", "a2", "x", "y", "e/inner")}
        wait_for("every living file's verdict stored",
                 lambda: set(live.values()) <= stored(f.state), 30)
