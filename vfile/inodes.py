"""vfile's own inode numbers, and the O_PATH file descriptor behind each.

FUSE inode numbers are handed out here, never taken from the source: a source
spanning several filesystems would otherwise collide, and the kernel must not
see an inode number reused while it still caches the old one. Invariants:

- One `Inode` per source identity (st_dev, st_ino): hard links share it.
- Each `Inode` holds an O_PATH|O_NOFOLLOW descriptor of the source object,
  opened when the kernel first learns of it. Every operation goes through these
  descriptors (``*at`` calls, /proc/self/fd/N), so renames in the source do not
  confuse us and no path is ever resolved from the root again: a symlink or
  ``..`` inside the source can never lead the daemon outside it.
- `lookups` counts what the kernel was told (lookup, create, mkdir, readdirplus
  entries); `forget` lowers it and the entry (and its descriptor) goes at zero.
  The root is never forgotten.
- Numbers are never reused within a mount (a 64-bit counter), so the
  generation is always 0.

The table does no syscalls except closing descriptors it owns (injected, so
t0 tests can count closes without real files).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from vfile.errnos import StaleInode

log = logging.getLogger(__name__)

ROOT_INODE = 1

Key = tuple[int, int]


@dataclass(slots=True, eq=False)
class Inode:
    ino: int
    key: Key
    fd: int
    #: S_IFMT bits of the source object (its type never changes).
    kind: int
    lookups: int = 0
    #: open handles of this inode that may write.
    writers: int = 0
    #: (size, mtime_ns, ctime_ns) when the kernel last saw its content; equal at
    #: the next open means the kernel's page cache is still valid (keep_cache).
    stamp: tuple[int, int, int] | None = field(default=None)


def stamp_of(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class InodeTable:
    """Maps FUSE inode numbers <-> source identities, with lookup counts."""

    def __init__(self, root_fd: int, root_st: os.stat_result,
                 close: Callable[[int], None] = os.close) -> None:
        self._close = close
        self._next = ROOT_INODE + 1
        root = Inode(ROOT_INODE, (root_st.st_dev, root_st.st_ino), root_fd,
                     root_st.st_mode & 0o170000, lookups=1)
        self._by_ino: dict[int, Inode] = {ROOT_INODE: root}
        self._by_key: dict[Key, Inode] = {root.key: root}
        #: told the (st_dev, st_ino) of each entry dropped: the kernel forgot the file,
        #: so per-file state elsewhere (the gate's cached verdicts) can go too
        self.on_drop: Callable[[Key], None] | None = None

    def __len__(self) -> int:
        return len(self._by_ino)

    def __iter__(self) -> Iterator[Inode]:
        return iter(list(self._by_ino.values()))

    def get(self, ino: int) -> Inode:
        try:
            return self._by_ino[ino]
        except KeyError:
            raise StaleInode(ino) from None

    def find(self, st: os.stat_result) -> Inode | None:
        return self._by_key.get((st.st_dev, st.st_ino))

    def add(self, st: os.stat_result, fd: int) -> Inode:
        """Register a new source object; the table now owns `fd`. Lookups start at 0."""
        node = Inode(self._next, (st.st_dev, st.st_ino), fd, st.st_mode & 0o170000)
        self._next += 1
        self._by_ino[node.ino] = node
        self._by_key[node.key] = node
        return node

    def forget(self, ino: int, n: int) -> None:
        node = self._by_ino.get(ino)
        if node is None:
            log.warning("forget of unknown inode %d", ino)
            return
        node.lookups -= n
        if node.lookups > 0 or ino == ROOT_INODE:
            return
        if node.lookups < 0:
            log.warning("inode %d forgotten more often than looked up", ino)
        if node.writers:
            # Still open: the kernel forgets only after release, but be safe
            # and keep the descriptor until the last handle closes.
            node.lookups = 0
            return
        self._drop(node)

    def maybe_drop(self, node: Inode) -> None:
        """Drop an inode the kernel already forgot, once its last handle closed."""
        if node.lookups <= 0 and node.writers == 0 and node.ino != ROOT_INODE:
            self._drop(node)

    def _drop(self, node: Inode) -> None:
        del self._by_ino[node.ino]
        known = self._by_key.get(node.key) is node
        if known:
            del self._by_key[node.key]
        self._close(node.fd)
        if known and self.on_drop is not None:
            self.on_drop(node.key)

    def close_all(self) -> None:
        """At unmount: the kernel will send no more forgets."""
        for node in list(self._by_ino.values()):
            self._close(node.fd)
        self._by_ino.clear()
        self._by_key.clear()
