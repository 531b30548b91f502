"""Pure units of the passthrough: inode table, flags and modes, errno mapping,
mount-option and path helpers. No I/O beyond fake file descriptors."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from vfile.cli.cmd_mount import parse_o
from vfile.errors import UserError
from vfile.hooks import Denied
from vfile.mount import default_log_file, fuse_options, overlaps, parse_mounts
from vfile.options import MountOptions
from vfile.passthrough import perms
from vfile.passthrough.errnos import InvalidName, StaleHandle, StaleInode, check_name, errno_for
from vfile.passthrough.inodes import ROOT_INODE, InodeTable


def _st(dev: int, ino: int, mode: int = stat.S_IFREG | 0o644) -> os.stat_result:
    return os.stat_result((mode, ino, dev, 1, 0, 0, 0, 0, 0, 0))


class Closer:
    def __init__(self) -> None:
        self.closed: list[int] = []

    def __call__(self, fd: int) -> None:
        self.closed.append(fd)


def test_inode_numbers_are_vfiles_own_and_hard_links_share() -> None:
    closer = Closer()
    table = InodeTable(100, _st(1, 2, stat.S_IFDIR | 0o755), close=closer)
    a = table.add(_st(1, 2000), 101)
    b = table.add(_st(2, 2000), 102)  # same source inode number, other filesystem
    assert a.ino != b.ino
    assert {a.ino, b.ino}.isdisjoint({ROOT_INODE, 2000})
    assert table.find(_st(1, 2000)) is a  # a hard link: same identity, same inode
    assert table.get(ROOT_INODE).fd == 100


def test_forget_drops_at_zero_and_closes_once() -> None:
    closer = Closer()
    table = InodeTable(100, _st(1, 2, stat.S_IFDIR), close=closer)
    node = table.add(_st(1, 5), 105)
    node.lookups += 3
    table.forget(node.ino, 2)
    assert table.get(node.ino) is node and closer.closed == []
    table.forget(node.ino, 1)
    with pytest.raises(StaleInode):
        table.get(node.ino)
    assert closer.closed == [105]
    assert table.find(_st(1, 5)) is None
    table.forget(node.ino, 1)  # unknown now: ignored, not a crash
    assert closer.closed == [105]


def test_forget_keeps_open_inodes_until_release_and_never_drops_root() -> None:
    closer = Closer()
    table = InodeTable(100, _st(1, 2, stat.S_IFDIR), close=closer)
    node = table.add(_st(1, 5), 105)
    node.lookups, node.opens = 1, 1
    table.forget(node.ino, 1)
    assert table.get(node.ino) is node
    node.opens = 0
    table.maybe_drop(node)
    assert closer.closed == [105]
    table.forget(ROOT_INODE, 10)
    assert table.get(ROOT_INODE).fd == 100
    table.close_all()
    assert closer.closed == [105]  # the root's descriptor is its opener's to close
    assert len(table) == 0


def test_new_inode_numbers_are_never_reused() -> None:
    table = InodeTable(100, _st(1, 2, stat.S_IFDIR), close=Closer())
    seen = set()
    for i in range(50):
        node = table.add(_st(1, 10), 200 + i)  # the same identity again and again
        node.lookups = 1
        assert node.ino not in seen
        seen.add(node.ino)
        table.forget(node.ino, 1)


@pytest.mark.parametrize(("flags", "writeback", "expected"), [
    (os.O_RDONLY, True, os.O_RDONLY),
    (os.O_WRONLY, True, os.O_RDWR),
    (os.O_WRONLY, False, os.O_WRONLY),
    (os.O_WRONLY | os.O_APPEND, True, os.O_RDWR),
    (os.O_WRONLY | os.O_APPEND, False, os.O_WRONLY | os.O_APPEND),
    (os.O_RDWR | os.O_CREAT | os.O_EXCL, False, os.O_RDWR),
    (os.O_RDONLY | os.O_DIRECT, False, os.O_RDONLY),
    (os.O_WRONLY | os.O_TRUNC, True, os.O_RDWR | os.O_TRUNC),
    # Path-walk flags did their job on the caller's path; on the daemon's
    # /proc/self/fd/N magic link O_NOFOLLOW would be ELOOP (issue 18).
    (os.O_RDONLY | os.O_NOFOLLOW, True, os.O_RDONLY),
    (os.O_WRONLY | os.O_NOFOLLOW | os.O_APPEND, False, os.O_WRONLY | os.O_APPEND),
    (os.O_RDWR | os.O_NOFOLLOW | os.O_CREAT | os.O_EXCL, True, os.O_RDWR),
    (os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, False, os.O_RDONLY),
    (os.O_RDONLY | os.O_PATH, False, os.O_RDONLY),
    (os.O_RDWR | os.O_TMPFILE, False, os.O_RDWR | (os.O_TMPFILE & ~os.O_DIRECTORY)),
    # What the caller asked of the file itself is kept.
    (os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOATIME, True,
     os.O_RDONLY | os.O_NONBLOCK | os.O_NOATIME),
    (os.O_WRONLY | os.O_SYNC | os.O_DSYNC, False, os.O_WRONLY | os.O_SYNC | os.O_DSYNC),
])
def test_backing_open_flags(flags: int, writeback: bool, expected: int) -> None:
    assert perms.backing_open_flags(flags, writeback) == expected | os.O_CLOEXEC


@pytest.mark.parametrize(("flags", "writeback", "expected"), [
    (os.O_RDONLY, True, [os.O_RDONLY]),
    (os.O_RDONLY | os.O_NOFOLLOW, False, [os.O_RDONLY]),
    (os.O_WRONLY, True, [os.O_RDWR, os.O_WRONLY]),
    (os.O_WRONLY | os.O_APPEND, True, [os.O_RDWR, os.O_WRONLY | os.O_APPEND]),
    (os.O_RDONLY | os.O_NOATIME, False, [os.O_RDONLY | os.O_NOATIME, os.O_RDONLY]),
    (os.O_WRONLY | os.O_NOATIME, True,
     [os.O_RDWR | os.O_NOATIME, os.O_RDWR, os.O_WRONLY | os.O_NOATIME, os.O_WRONLY]),
])
def test_backing_open_attempts(flags: int, writeback: bool, expected: list[int]) -> None:
    """Each retry drops only what an unprivileged daemon may be refused; the
    first is what a root daemon opens with."""
    got = perms.backing_open_attempts(flags, writeback)
    assert list(got) == [e | os.O_CLOEXEC for e in expected]
    assert got[0] == perms.backing_open_flags(flags, writeback)


@pytest.mark.parametrize(("flags", "writes"), [
    (os.O_RDONLY, False), (os.O_WRONLY, True), (os.O_RDWR, True),
    (os.O_RDONLY | os.O_TRUNC, True), (os.O_RDONLY | os.O_NONBLOCK, False),
])
def test_is_write_open(flags: int, writes: bool) -> None:
    assert perms.is_write_open(flags) is writes


def test_creation_mode_and_owner() -> None:
    assert perms.creation_mode(stat.S_IFREG | 0o666, 0o022) == 0o644
    assert perms.creation_mode(0o4777, 0o077) == 0o4700
    assert perms.owner_for(stat.S_IFDIR | 0o2775, 50, 1000, 1000) == (1000, 50)
    assert perms.owner_for(stat.S_IFDIR | 0o775, 50, 1000, 1000) == (1000, 1000)


@pytest.mark.parametrize(("mode", "uid", "gids", "want", "ok"), [
    (0o640, 1000, {1000}, os.R_OK | os.W_OK, True),   # owner
    (0o640, 2000, {50}, os.R_OK, True),               # group
    (0o640, 2000, {50}, os.W_OK, False),
    (0o640, 3000, {3000}, os.R_OK, False),            # other
    (0o604, 3000, {3000}, os.R_OK, True),
    (0o000, 0, {0}, os.R_OK | os.W_OK, True),         # root reads and writes anything
    (0o644, 0, {0}, os.X_OK, False),                  # but executes only if someone may
    (0o744, 0, {0}, os.X_OK, True),
    (0o000, 3000, set(), os.F_OK, True),
])
def test_may_access(mode: int, uid: int, gids: set[int], want: int, ok: bool) -> None:
    assert perms.may_access(stat.S_IFREG | mode, 1000, 50, uid=uid, gids=gids, want=want) is ok


@pytest.mark.parametrize(("exc", "expected"), [
    (FileNotFoundError(errno.ENOENT, "x"), (errno.ENOENT, True)),
    (OSError(errno.EXDEV, "x"), (errno.EXDEV, True)),
    (OSError("no errno"), (errno.EIO, False)),
    (Denied(errno.EACCES, "infected"), (errno.EACCES, True)),
    (Denied(errno.EPERM, "policy"), (errno.EPERM, True)),
    (InvalidName(b"a/b"), (errno.EINVAL, True)),
    (StaleInode(7), (errno.ESTALE, False)),
    (StaleHandle(7), (errno.EBADF, False)),
    (KeyError("bug"), (errno.EIO, False)),
    (RuntimeError("bug"), (errno.EIO, False)),
])
def test_errno_for(exc: BaseException, expected: tuple[int, bool]) -> None:
    assert errno_for(exc) == expected


@pytest.mark.parametrize("name", [b"", b".", b"..", b"a/b", b"/", b"a\0b"])
def test_check_name_rejects(name: bytes) -> None:
    with pytest.raises(InvalidName):
        check_name(name)


@pytest.mark.parametrize("name", [b"a", b"...", b".hidden", b"\xff\xfe", b"a b"])
def test_check_name_accepts(name: bytes) -> None:
    assert check_name(name) == name


def test_overlaps() -> None:
    assert overlaps("/a", "/a")
    assert overlaps("/a", "/a/b")
    assert overlaps("/a/b", "/a")
    assert not overlaps("/a", "/ab")
    assert not overlaps("/a/b", "/a/c")


def test_parse_mounts_unescapes() -> None:
    text = ("/src /mnt\\040dir fuse.vfile rw 0 0\n"
            "proc /proc proc rw 0 0\n")
    assert parse_mounts(text) == [("/mnt dir", "fuse.vfile"), ("/proc", "proc")]


def test_fuse_options() -> None:
    opts = fuse_options(MountOptions("/s,x", "/m", allow_other=True), "/s,x")
    assert {"default_permissions", "allow_other", "subtype=vfile", "fsname=/s\\,x"} == opts
    assert "allow_other" not in fuse_options(MountOptions("/s", "/m"), "/s")


def test_default_log_file() -> None:
    assert default_log_file("/srv/mnt", 0, "/root") == "/var/log/vfile/srv_mnt.log"
    assert default_log_file("/m", 1000, "/home/u") == "/home/u/.local/state/vfile/m.log"


def test_parse_o() -> None:
    assert parse_o(["allow_other", "no_writeback,allow_other"]) == {"allow_other",
                                                                    "no_writeback"}
    with pytest.raises(UserError):
        parse_o(["suid"])
