"""rsync, tar and cpio round trips of a real tree through a scanning mount.

The tree has what archivers must keep: hard links, relative and dangling
symlinks, user xattrs, odd modes (setuid, sticky, 0000), nanosecond times,
an empty file, a sparse file, a fifo and names with spaces and newlines.
Each copy goes INTO the mount and back OUT of it, and every stage must hold
the same tree (`clients.tree`: type, mode, size, mtime, content, xattrs,
hard-link groups) as the original; `diff -r` agrees. Before issue 18 rsync
exited 23: "failed to set permissions ... Too many levels of symbolic links".
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clients import Scanning, run, scanning_mount, tree

pytestmark = pytest.mark.mount


@pytest.fixture(scope="module")
def scanning() -> Iterator[Scanning]:
    with scanning_mount() as s:
        yield s


def make_tree(root: Path) -> Path:
    data = root / "data"
    (data / "sub" / "deeper").mkdir(parents=True)
    (data / "empty-dir").mkdir()
    for i in range(30):
        (data / "sub" / f"f{i}.txt").write_bytes(os.urandom(37 * i))
    (data / "big.bin").write_bytes(os.urandom(300_000))
    (data / "empty").write_bytes(b"")
    (data / "name with spaces\nand a newline").write_text("odd name\n")
    with open(data / "sparse", "wb") as f:
        f.seek(1 << 20)
        f.write(b"end")
    os.link(data / "big.bin", data / "sub" / "deeper" / "hard-big")
    os.link(data / "empty", data / "hard-empty")
    os.symlink("../big.bin", data / "sub" / "rel-link")
    os.symlink("does/not/exist", data / "dangling")
    os.mkfifo(data / "fifo", 0o640)
    modes = {"sub/f1.txt": 0o4755, "sub/f2.txt": 0o600, "sub/f3.txt": 0o000,
             "sub/f4.txt": 0o2750, "empty": 0o444}
    for rel, mode in modes.items():
        os.chmod(data / rel, mode)
    (data / "sub" / "deeper").chmod(0o1777)
    os.chown(data / "sub" / "f8.txt", 1234, 5678)
    os.chown(data / "dangling", 4321, 8765, follow_symlinks=False)
    for rel, value in (("big.bin", b"v1"), ("sub/f5.txt", b"\0binary\xff"), ("sub", b"dir")):
        os.setxattr(data / rel, "user.test", value)
        os.setxattr(data / rel, "user.other", value * 3)
    for i, (dirpath, dirnames, filenames) in enumerate(sorted(os.walk(data))):
        for name in dirnames + filenames:
            t = 1_700_000_000_000_000_000 + i * 1_000_000_007
            os.utime(os.path.join(dirpath, name), ns=(t, t), follow_symlinks=False)
    return data


@pytest.fixture(scope="module")
def original(scanning: Scanning) -> Path:
    return make_tree(scanning.native)


def diff_r(a: Path, b: Path) -> None:
    # (diff cannot compare fifos; `tree` does)
    res = run(["diff", "-r", "--no-dereference", "--exclude=fifo", a, b], check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def test_rsync_round_trip(scanning: Scanning, original: Path) -> None:
    pair = scanning.pair()
    flags = ["-aHX", "--specials", "--numeric-ids"]
    run(["rsync", *flags, f"{original}/", f"{pair.mnt}/in/"])
    run(["rsync", *flags, f"{pair.mnt}/in/", f"{pair.native}/out/"])
    want = tree(original)
    assert tree(pair.mnt / "in") == want
    assert tree(pair.native / "out") == want
    diff_r(original, pair.mnt / "in")
    diff_r(original, pair.native / "out")
    # hard links share an inode through the mount and in the source behind it
    for root in (pair.mnt / "in", pair.src / "in"):
        assert os.stat(root / "big.bin").st_ino == os.stat(root / "sub/deeper/hard-big").st_ino
        assert os.stat(root / "big.bin").st_nlink == 2
    assert os.getxattr(pair.mnt / "in" / "sub/f5.txt", "user.test") == b"\0binary\xff"
    # a second run finds nothing to do: modes, times and xattrs are exact
    again = run(["rsync", *flags, "--itemize-changes", f"{original}/", f"{pair.mnt}/in/"])
    assert again.stdout == ""
    # and changes flow back in, also as an update in place of a scanned file
    (pair.native / "out" / "sub" / "f7.txt").write_bytes(b"changed")
    run(["rsync", *flags, "--inplace", f"{pair.native}/out/", f"{pair.mnt}/in/"])
    assert (pair.mnt / "in" / "sub" / "f7.txt").read_bytes() == b"changed"
    assert tree(pair.mnt / "in") == tree(pair.native / "out")


def test_tar_round_trip(scanning: Scanning, original: Path) -> None:
    pair = scanning.pair()
    xattrs = ["--xattrs", "--xattrs-include=user.*", "--sparse", "--numeric-owner"]
    run(["tar", "-C", original, *xattrs, "-cf", pair.mnt / "a.tar", "."])
    (pair.mnt / "in").mkdir()
    run(["tar", "-C", pair.mnt / "in", *xattrs, "-xpf", pair.mnt / "a.tar"])
    run(["tar", "-C", pair.mnt / "in", *xattrs, "-cf", pair.native / "b.tar", "."])
    (pair.native / "out").mkdir()
    run(["tar", "-C", pair.native / "out", *xattrs, "-xpf", pair.native / "b.tar"])
    want = tree(original)
    # the root directory's own mode and times are the extraction directory's
    assert _children(tree(pair.mnt / "in")) == _children(want)
    assert _children(tree(pair.native / "out")) == _children(want)
    diff_r(original, pair.mnt / "in")
    # tar's own check of an archive against the tree it was extracted into
    run(["tar", "-C", pair.mnt / "in", *xattrs, "--compare", "-f", pair.mnt / "a.tar"])


def test_cpio_round_trip(scanning: Scanning, original: Path) -> None:
    pair = scanning.pair()
    names = run(["find", ".", "-depth", "-print0"], cwd=original).stdout
    with open(pair.mnt / "a.cpio", "wb") as out:
        res = subprocess.run(["cpio", "-o", "-0", "-H", "newc", "--quiet"], cwd=original,
                             input=names.encode(), stdout=out, stderr=subprocess.PIPE,
                             timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    for dest, archive in ((pair.mnt / "in", pair.mnt / "a.cpio"),
                          (pair.native / "out", pair.mnt / "a.cpio")):
        dest.mkdir()
        with open(archive, "rb") as inp:
            res = subprocess.run(["cpio", "-i", "-d", "-m", "--quiet", "--no-absolute-filenames"],
                                 cwd=dest, stdin=inp, capture_output=True, timeout=120,
                                 check=False)
        assert res.returncode == 0, res.stderr
    want = _cpio_view(tree(original))
    assert _cpio_view(tree(pair.mnt / "in")) == want
    assert _cpio_view(tree(pair.native / "out")) == want


def _children(t: dict[str, tuple[Any, ...]]) -> dict[str, tuple[Any, ...]]:
    return {k: v for k, v in t.items() if k != "."}


def _cpio_view(t: dict[str, tuple[Any, ...]]) -> dict[str, tuple[Any, ...]]:
    """What cpio keeps: newc has no xattrs and whole seconds, and `cpio -m` sets
    no symlink times."""
    return {k: (mode, size, None if mtime is None or stat.S_ISLNK(mode) else mtime // 10**9,
                body, *group_owner)
            for k, (mode, size, mtime, body, _xattrs, *group_owner) in t.items()}
