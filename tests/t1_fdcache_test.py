"""The inode table's descriptor cache on real files: bounded, reopened by file
handle (as root), never another inode, pinned while open; without handles
(a non-root mount) one descriptor per inode up to a hard limit."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from vfile.passthrough.errnos import StaleInode
from vfile.passthrough.fdcache import MIN_CAPACITY, FdCache, probe_handles
from vfile.passthrough.inodes import ROOT_INODE, Inode, InodeTable

OPATH = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
CAP = MIN_CAPACITY
N = 100


def _table(src: Path, *, handles: bool) -> tuple[InodeTable, FdCache]:
    root_fd = os.open(src, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    mount_fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    assert probe_handles(root_fd, mount_fd) is None, "root should reopen by handle"
    cache = FdCache(CAP, handles=handles)
    if handles:
        cache.add_mount(mount_fd)
    else:
        os.close(mount_fd)
    return InodeTable(root_fd, os.fstat(root_fd), cache=cache), cache


def _close_table(table: InodeTable) -> None:
    """The unmount's close, then the root's descriptor, which is its opener's."""
    root_fd = table.get(ROOT_INODE).fd
    table.close_all()
    os.close(root_fd)


def _add(table: InodeTable, src: Path, rel: str) -> Inode:
    fd = os.open(src / rel, OPATH)
    return table.add(os.fstat(fd), fd)


def _tree(src: Path) -> list[str]:
    (src / "d").mkdir()
    rels = []
    for i in range(N):
        (src / "d" / f"f{i}").write_text(f"content {i}")
        rels.append(f"d/f{i}")
    (src / "d" / "link").symlink_to("f0")
    return rels


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_descriptors_are_bounded_and_evicted_inodes_reopen_as_themselves(tmp_path: Path) -> None:
    rels = _tree(tmp_path)
    before = _open_fds()
    table, cache = _table(tmp_path, handles=True)
    try:
        nodes = [_add(table, tmp_path, r) for r in rels]
        link = _add(table, tmp_path, "d/link")
        assert len(cache.lru) == CAP and cache.evictions > 0
        assert _open_fds() - before <= CAP + 3  # root, mount, listdir's own
        for node, rel in zip(nodes, rels, strict=True):
            st = os.fstat(node.fd)  # reopened from its handle when evicted
            assert (st.st_dev, st.st_ino) == node.key
            assert os.readlink(f"/proc/self/fd/{node.fd}") == str(tmp_path / rel)
        assert cache.reopens >= N - CAP
        assert len(cache.lru) == CAP
        # A symlink reopens as the link itself, never followed.
        for node in nodes[:CAP]:
            _ = node.fd  # evict the link
        assert stat.S_ISLNK(os.fstat(link.fd).st_mode)
        assert os.readlink(b"", dir_fd=link.fd) == b"f0"
    finally:
        _close_table(table)
    assert _open_fds() == before


def test_a_replaced_file_is_a_stale_inode_never_the_new_one(tmp_path: Path) -> None:
    rels = _tree(tmp_path)
    table, _ = _table(tmp_path, handles=True)
    try:
        victim = _add(table, tmp_path, rels[0])
        for r in rels[1:CAP + 2]:
            _add(table, tmp_path, r)  # victim's descriptor is evicted
        assert victim._fd == -1 and victim.handle is not None
        (tmp_path / rels[0]).unlink()
        (tmp_path / rels[0]).write_text("another inode under the same name")
        with pytest.raises((StaleInode, OSError)) as err:
            _ = victim.fd
        if not isinstance(err.value, StaleInode):
            assert err.value.errno == errno.ESTALE
    finally:
        _close_table(table)


def test_open_files_pin_their_inode_and_dropped_inodes_never_reopen(tmp_path: Path) -> None:
    rels = _tree(tmp_path)
    table, cache = _table(tmp_path, handles=True)
    try:
        pinned = _add(table, tmp_path, rels[0])
        fd = pinned.fd
        cache.pin(pinned)
        for r in rels[1:]:
            _add(table, tmp_path, r)
        assert pinned._fd == fd  # never evicted while open
        cache.unpin(pinned)
        for r in rels[1:CAP + 2]:
            _ = table.find(os.stat(tmp_path / r, follow_symlinks=False))
            assert _ is not None
            _ = _.fd
        assert pinned._fd == -1  # evictable again once closed
        pinned.lookups = 1
        table.forget(pinned.ino, 1)
        with pytest.raises(StaleInode):
            _ = pinned.fd  # a stale reference cannot reopen a dropped inode
    finally:
        _close_table(table)


def test_without_handles_every_inode_keeps_its_descriptor_up_to_the_limit(
        tmp_path: Path) -> None:
    rels = _tree(tmp_path)
    table, cache = _table(tmp_path, handles=False)
    try:
        nodes = []
        for r in rels:
            if not cache.room_for_new():
                break
            nodes.append(_add(table, tmp_path, r))
        assert len(nodes) == CAP  # a hard limit: the caller answers EMFILE beyond it
        for node in nodes:
            assert node._fd >= 0  # nothing was closed: it could not be reopened
        assert all(os.fstat(n.fd).st_ino == n.key[1] for n in nodes)
    finally:
        _close_table(table)
