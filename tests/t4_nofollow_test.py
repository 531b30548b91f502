"""The O_NOFOLLOW class (issue 18): a caller's path-walk flags through a scanning mount.

O_NOFOLLOW (and O_DIRECTORY) act in the kernel's path walk, on the caller's
path; by the time the daemon runs, they did their job. The daemon reaches its
inodes through /proc/self/fd/N, a magic link: passing those flags on made
every open(O_NOFOLLOW) of a regular file fail with ELOOP (git, rsync and
SQLite all open so). Each test does one operation the way real programs do,
natively and through the mount, and compares: same result, and success where
native succeeds.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from clients import Pair, Scanning, outcome, scanning_mount

pytestmark = pytest.mark.mount

NF = os.O_NOFOLLOW | os.O_CLOEXEC


@pytest.fixture(scope="module")
def scanning() -> Iterator[Scanning]:
    with scanning_mount() as s:
        yield s


@pytest.fixture
def pair(scanning: Scanning) -> Pair:
    p = scanning.pair()
    for root in p.both():
        (root / "f").write_bytes(b"content\n")
        os.symlink("f", root / "link")
        (root / "d").mkdir()
    return p


def same(pair: Pair, op: Callable[[Path], Any]) -> Any:
    """op on both places: the results must be equal; returns the mount's."""
    native, mnt = (outcome(lambda r=r: op(r)) for r in pair.both())
    assert mnt == native, f"through the mount {mnt!r}, natively {native!r}"
    return mnt


def read_nofollow(root: Path, extra: int = 0) -> bytes:
    fd = os.open(root / "f", os.O_RDONLY | NF | extra)
    try:
        return os.read(fd, 100)
    finally:
        os.close(fd)


def test_open_read_only_nofollow_reads_the_file(pair: Pair) -> None:
    assert same(pair, read_nofollow) == b"content\n"


def test_open_nofollow_with_nonblock_noatime_and_sync(pair: Pair) -> None:
    # rsync's open for a chmod; O_NOATIME the way find/backup tools use it.
    flags = os.O_NONBLOCK | os.O_NOATIME | os.O_SYNC
    assert same(pair, lambda r: read_nofollow(r, flags)) == b"content\n"


@pytest.mark.parametrize("mode", ["w", "a", "rw-trunc"])
def test_open_for_writing_nofollow(pair: Pair, mode: str) -> None:
    flags = {"w": os.O_WRONLY, "a": os.O_WRONLY | os.O_APPEND,
             "rw-trunc": os.O_RDWR | os.O_TRUNC}[mode]

    def op(root: Path) -> bytes:
        fd = os.open(root / "f", flags | NF)
        try:
            os.write(fd, b"new")
        finally:
            os.close(fd)
        return (root / "f").read_bytes()

    assert same(pair, op) == {"w": b"newtent\n", "a": b"content\nnew",
                              "rw-trunc": b"new"}[mode]


@pytest.mark.parametrize("exists", [True, False])
def test_create_nofollow(pair: Pair, exists: bool) -> None:
    # open(O_CREAT|O_NOFOLLOW): the kernel's create (new name) or open (existing).
    def op(root: Path) -> bytes:
        name = root / ("f" if exists else "new")
        fd = os.open(name, os.O_RDWR | os.O_CREAT | NF, 0o640)
        try:
            os.write(fd, b"X")
        finally:
            os.close(fd)
        return name.read_bytes()

    assert same(pair, op) == (b"Xontent\n" if exists else b"X")


def test_setattr_through_a_nofollow_descriptor(pair: Pair) -> None:
    # rsync's set_file_attrs: open(O_RDONLY|O_NOFOLLOW|O_NONBLOCK), then fchmod,
    # fchown, futimens; ftruncate on a writable one.
    def op(root: Path) -> tuple[int, int, int, int]:
        fd = os.open(root / "f", os.O_WRONLY | NF)
        try:
            os.ftruncate(fd, 3)
        finally:
            os.close(fd)
        fd = os.open(root / "f", os.O_RDONLY | os.O_NONBLOCK | NF)
        try:
            os.fchmod(fd, 0o604)
            os.fchown(fd, 1234, 1234)
            os.utime(fd, ns=(1_000_000_000, 2_000_000_000))
        finally:
            os.close(fd)
        st = os.lstat(root / "f")
        return stat.S_IMODE(st.st_mode), st.st_uid, st.st_mtime_ns, st.st_size

    assert same(pair, op) == (0o604, 1234, 2_000_000_000, 3)


def test_xattrs_through_a_nofollow_descriptor(pair: Pair) -> None:
    def op(root: Path) -> tuple[bytes, list[str], list[str]]:
        fd = os.open(root / "f", os.O_RDONLY | NF)
        try:
            os.setxattr(fd, "user.k", b"v")
            got = os.getxattr(fd, "user.k")
            names = os.listxattr(fd)
            os.removexattr(fd, "user.k")
            return got, names, os.listxattr(fd)
        finally:
            os.close(fd)

    assert same(pair, op) == (b"v", ["user.k"], [])


def test_o_path_nofollow_then_proc_magic_link(pair: Pair) -> None:
    # glibc's lchmod / fchmodat(AT_SYMLINK_NOFOLLOW) and many "safe open"
    # helpers: an O_PATH|O_NOFOLLOW descriptor, then /proc/self/fd/N for chmod,
    # xattrs, a reopen, and linkat(AT_SYMLINK_FOLLOW) for a second name.
    def op(root: Path) -> tuple[int, bytes, bytes, int]:
        pfd = os.open(root / "f", os.O_PATH | NF)
        try:
            proc = f"/proc/self/fd/{pfd}"
            os.chmod(proc, 0o600)
            os.setxattr(proc, "user.p", b"q")
            fd = os.open(proc, os.O_RDONLY | os.O_CLOEXEC)
            try:
                data = os.read(fd, 100)
            finally:
                os.close(fd)
            dfd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:  # a dir_fd makes os.link use linkat(), which can follow
                os.link(proc, "hard", dst_dir_fd=dfd, follow_symlinks=True)
            finally:
                os.close(dfd)
        finally:
            os.close(pfd)
        st = os.lstat(root / "hard")
        return stat.S_IMODE(st.st_mode), os.getxattr(root / "f", "user.p"), data, st.st_nlink

    assert same(pair, op) == (0o600, b"q", b"content\n", 2)


def test_the_kernel_still_refuses_what_nofollow_forbids(pair: Pair) -> None:
    # Stripping the flag from the daemon's reopen must not weaken it for callers.
    assert same(pair, lambda r: os.open(r / "link", os.O_RDONLY | NF)) == "ELOOP"
    assert same(pair, lambda r: os.open(r / "link", os.O_WRONLY | os.O_CREAT | NF)) == "ELOOP"

    def magic(root: Path) -> Any:
        # a magic link is a symlink to the caller too
        pfd = os.open(root / "f", os.O_PATH | NF)
        try:
            return outcome(lambda: os.open(f"/proc/self/fd/{pfd}", os.O_RDONLY | NF))
        finally:
            os.close(pfd)

    assert same(pair, magic) == "ELOOP"


def test_directory_flags(pair: Pair) -> None:
    def op(root: Path) -> list[str]:
        fd = os.open(root / "d", os.O_RDONLY | os.O_DIRECTORY | NF)
        try:
            return os.listdir(fd)
        finally:
            os.close(fd)

    assert same(pair, op) == []
    assert same(pair, lambda r: os.open(r / "f", os.O_RDONLY | os.O_DIRECTORY)) == "ENOTDIR"
