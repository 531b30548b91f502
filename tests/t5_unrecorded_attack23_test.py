"""Attacks on the new files that get no journal record (cw23, filter.newfiles) and on
verdicts carried by a rename or a metadata change (rs23, filter.keeping), through a
real mount on the embedded default appliance (r23). Both held on int8.

- Every file settled, then a SIGKILL (nothing in flight: the witness vouches, the
  next start walks nothing): new files changed while their intent was unrecorded
  by an operation that displaces it (a hard link then an unlink of the first name,
  a rename of the directory above, an exchange, a truncate by path, a mknod, an
  infected content), the rsync pattern (write, close, chmod, utime, rename onto an
  existing file), and a carried file rewritten through a second name with its size
  and mtime restored: each has an entry or a clean verdict for its current identity,
  and no infected content has a clean verdict.
- The same displacements with the writers still holding their files (no close scan
  will cover them), killed once nothing is in flight: the displacement must have made
  the record. A rename of the directory above is the one whose only record is
  `record_now` (with it made a no-op that resolves the token, `e/a2` is unaccounted).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
from lifecycle import Tree, wait_until
from mounting import force_unmount, mounted, wait_for
from outage import signature_version, status, unaccounted
from queuedrace import exchange
from unread import safe_config

from vfile.journal import Journal
from vfile.journal.records import Identity
from vfile.scanner.signatures import EICAR

pytestmark = pytest.mark.mount


def _gate(mnt: Path) -> dict[str, int]:
    out: dict[str, int] = status(mnt)["gate"]
    return out


def _settled(mnt: Path) -> bool:
    s = status(mnt)
    return (int(s["journal"]["durability"]["in_flight"]) == 0
            and s["gate"]["pending_intents"] == 0 and s["gate"]["new_files_unrecorded"] == 0)


def _new(mnt: Path, rel: str, data: bytes = b"new content\n") -> int:
    fd = os.open(mnt / rel, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd, data)
    return fd


def test_displaced_unrecorded_intents_leave_every_file_accounted(tree: Tree) -> None:
    conf = safe_config(tree.root, tree.state)
    args = ("--config", str(conf), "-v")
    src, mnt = tree.source, tree.mountpoint
    (src / "warm").write_bytes(b"warm-up")
    (src / "d").mkdir()
    (src / "old").write_bytes(b"an older file\n")
    (src / "target").write_bytes(b"a file rsync replaces\n")
    fds: list[int] = []
    with mounted(src, mnt, *args) as server:
        wait_for("the signature version", lambda: (
            (mnt / "warm").read_bytes(), (mnt / "old").read_bytes(),
            (mnt / "target").read_bytes(), signature_version(tree.state))[-1], 30)
        wait_until(lambda: _settled(mnt), "the warm-up settled")
        # 1: a hard link, then the first name unlinked, the writer still holding it.
        fds.append(fd := _new(mnt, "a1"))
        assert _gate(mnt)["new_files_unrecorded"] == 1, "not the unrecorded route"
        os.link(mnt / "a1", mnt / "b1")
        os.unlink(mnt / "a1")
        os.write(fd, b"after the unlink\n")
        # 2: the directory above renamed while the writer holds it.
        fds.append(fd := _new(mnt, "d/a2"))
        os.rename(mnt / "d", mnt / "e")
        os.write(fd, b"after the directory moved\n")
        # 3: exchanged with an existing file.
        fds.append(fd := _new(mnt, "a3"))
        exchange(mnt, "a3", "old")
        os.write(fd, b"after the exchange\n")
        # 4: truncated by path while held open, then written again.
        fds.append(fd := _new(mnt, "a4", b"x" * 5000))
        os.truncate(mnt / "a4", 10)
        os.write(fd, b"after the truncate\n")
        # 5: a regular file made by mknod (no handle ever closes it).
        os.mknod(mnt / "a5", 0o100644)
        # 6: infected content in a new file.
        (mnt / "a6").write_bytes(EICAR)
        # 7: the rsync pattern: write, close, chmod, utime, rename onto an existing file.
        (mnt / ".a7.tmp").write_bytes(b"rsync wrote this\n")
        os.chmod(mnt / ".a7.tmp", 0o600)
        os.utime(mnt / ".a7.tmp", ns=(1_000_000_000, 1_000_000_000))
        os.rename(mnt / ".a7.tmp", mnt / "target")
        for fd in fds:
            os.close(fd)
        fds.clear()
        # 8: a carried file rewritten through a second name, its size and mtime restored.
        (mnt / "a8").write_bytes(b"clean eight bytes!\n")
        wait_until(lambda: _settled(mnt), "a8's verdict committed")
        os.rename(mnt / "a8", mnt / "b8")
        before = os.stat(mnt / "b8")
        os.link(mnt / "b8", mnt / "c8")
        with open(mnt / "c8", "r+b") as f:
            f.write(EICAR[:before.st_size].ljust(before.st_size, b"X"))
        os.utime(mnt / "c8", ns=(before.st_atime_ns, before.st_mtime_ns))
        wait_until(lambda: _settled(mnt), "every close scan committed")
        sig = signature_version(tree.state)
        server.proc.kill()
        server.proc.wait(30)
        force_unmount(mnt)
    assert unaccounted(src, tree.state, sig) == []
    with Journal.open(tree.state, readonly=True) as j:
        for rel in ("b8", "c8"):
            p = src / rel
            if p.exists() and b"EICAR" in p.read_bytes():
                v = j.get_verdict(Identity.from_stat(os.stat(p)), sig)
                assert v is None or v.outcome != "clean", f"{rel}: infected, clean verdict"


def test_displaced_intents_of_files_held_open_are_recorded(tree: Tree) -> None:
    """The displacement itself must make the record: the writers still hold their files
    (no close scan will cover them), nothing is in flight any more (the witness vouches:
    the next start walks nothing), and a SIGKILL then must leave an entry for each."""
    conf = safe_config(tree.root, tree.state)
    args = ("--config", str(conf), "-v")
    src, mnt = tree.source, tree.mountpoint
    (src / "warm").write_bytes(b"warm-up")
    (src / "d").mkdir()
    (src / "old").write_bytes(b"an older file\n")
    fds: list[int] = []
    try:
        with mounted(src, mnt, *args) as server:
            wait_for("the signature version", lambda: (
                (mnt / "warm").read_bytes(), (mnt / "old").read_bytes(),
                signature_version(tree.state))[-1], 30)
            wait_until(lambda: _settled(mnt), "the warm-up settled")
            fds.append(_new(mnt, "a1"))
            fds.append(_new(mnt, "d/a2"))
            fds.append(_new(mnt, "a3"))
            fds.append(_new(mnt, "a4", b"x" * 5000))
            assert _gate(mnt)["new_files_unrecorded"] == 4, "not the unrecorded route"
            os.link(mnt / "a1", mnt / "b1")
            os.unlink(mnt / "a1")
            os.rename(mnt / "d", mnt / "e")
            exchange(mnt, "a3", "old")
            os.truncate(mnt / "a4", 10)
            for fd in fds:
                os.write(fd, b"after the displacement\n")
            wait_until(lambda: int(status(mnt)["journal"]["durability"]["in_flight"]) == 0,
                       "the displaced intents' records committed")
            sig = signature_version(tree.state)
            server.proc.kill()
            server.proc.wait(30)
            force_unmount(mnt)
    finally:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
    assert unaccounted(src, tree.state, sig) == []
    with mounted(src, mnt, *args) as again:
        text = again.log()
    assert "recovery walk" not in text
    assert unaccounted(src, tree.state, sig) == []
