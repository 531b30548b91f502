"""Reading the source by descriptor, for the gate's scans.

Every file the gate scans is opened relative to the source's root descriptor,
one component at a time without following symlinks (`actions.open_parent`),
or reopened from a descriptor the passthrough already holds: never by a path
from the root, so a rename or a symlink swapped in cannot send a scan
elsewhere.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable, Iterator

from vfile.filter.actions import open_parent
from vfile.passthrough.syscalls import open_for_scan

#: how the gate opens a file to scan it: never through a symlink, never blocking
_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def reopen(fd: int) -> int:
    """A descriptor of our own on the same file, readable, with its own offset.

    Reopening through /proc gives a new open file description of the same
    inode even if the path was renamed meanwhile; `dup` is the fallback.
    """
    try:
        return open_for_scan(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError:
        return os.dup(fd)


class Source:
    """The source directory, by its root descriptor (owned by the mount)."""

    def __init__(self, root_fd: int) -> None:
        self._root = root_fd
        st = os.fstat(root_fd)
        self._root_key = (st.st_dev, st.st_ino)

    def root_intact(self) -> bool:
        """The root descriptor still is the source's directory. Before a failed open
        is read as "the file is gone": from a closed root every open fails, and from
        its number reused by another file or directory, with ENOTDIR or ENOENT (r27:
        the drain removed 491 live entries so in round 26, tests/t5_attack27_stop_test.py)."""
        try:
            st = os.fstat(self._root)
        except OSError:
            return False
        return stat.S_ISDIR(st.st_mode) and (st.st_dev, st.st_ino) == self._root_key

    def open(self, path: str) -> int:
        dir_fd, name = open_parent(self._root, path)
        try:
            return open_for_scan(name, _FLAGS, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)

    def stat(self, path: str) -> os.stat_result | None:
        """The file at `path` as `open` finds it, stat'ed by its descriptor; None if it
        cannot be opened so (gone, not a regular file...)."""
        try:
            fd = self.open(path)
        except OSError:
            return None
        try:
            return os.fstat(fd)
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def opening(self) -> Iterator[Callable[[str], int]]:
        """`open` for many files at once (a drain batch): each parent directory is
        walked once, its descriptor kept until the block ends. Use it in one go, with
        no checkpoint inside: then a directory renamed meanwhile is one renamed
        between a walk and an open, as for `open`. (A batch of 16 files in one
        directory: 18 syscalls instead of 48; the walk was about a tenth of the
        drain's trio thread, bench/drain.py --profile.)"""
        parents: dict[str, int] = {}

        def open_one(path: str) -> int:
            parts = [p for p in path.split("/") if p not in ("", ".")]
            if not parts or ".." in parts:
                return self.open(path)  # refused there, as always
            key = "/".join(parts[:-1])
            dir_fd = parents.get(key)
            if dir_fd is None:
                dir_fd, _ = open_parent(self._root, path)
                parents[key] = dir_fd
            return open_for_scan(parts[-1], _FLAGS, dir_fd=dir_fd)

        try:
            yield open_one
        finally:
            for fd in parents.values():
                os.close(fd)

    def is_dir(self, path: str) -> bool:
        try:
            dir_fd, name = open_parent(self._root, path)
        except OSError:
            return False
        try:
            return stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
        except OSError:
            return False
        finally:
            os.close(dir_fd)

    def same_file(self, path: str, st: os.stat_result) -> bool:
        """`path` names the file `st` is of (another hard link of it), now."""
        try:
            dir_fd, name = open_parent(self._root, path)
        except OSError:
            return False
        try:
            other = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            return False
        finally:
            os.close(dir_fd)
        return (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino)
