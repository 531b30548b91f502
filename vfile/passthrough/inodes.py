"""vfile's own inode numbers, and the O_PATH file descriptor behind each.

FUSE inode numbers are handed out here, never taken from the source: a source
spanning several filesystems would otherwise collide, and the kernel must not
see an inode number reused while it still caches the old one. Invariants:

- One `Inode` per source identity (st_dev, st_ino): hard links share it.
- Each `Inode` reaches its source object through an O_PATH|O_NOFOLLOW
  descriptor, opened when the kernel first learns of it. Every operation goes
  through these descriptors (``*at`` calls, /proc/self/fd/N), so renames in
  the source do not confuse us and no path is ever resolved from the root
  again: a symlink or ``..`` inside the source can never lead the daemon
  outside it.
- Descriptors are bounded: `vfile.passthrough.fdcache.FdCache` keeps at most its capacity
  of them open (plus pinned ones) and reopens an evicted inode from the file
  handle it made of it. `Inode.fd` is therefore valid until the caller's next
  ``await`` (see vfile.passthrough.fdcache); never keep it longer.
- `lookups` counts what the kernel was told (lookup, create, mkdir, readdirplus
  entries); `forget` lowers it and the entry (and its descriptor) goes at zero,
  unless files are still open on it. The root is never forgotten.
- Numbers are never reused within a mount (a 64-bit counter), so the
  generation is always 0.
- A non-directory remembers the parent inode number and name it was last seen
  under: once its descriptor was reopened from a handle the kernel may not
  know its path any more (a "disconnected" dentry), and hooks still need one.

The table does no syscalls except closing descriptors it owns (injected, so
t0 tests can count closes without real files) and, through its cache,
reopening evicted ones.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator

from vfile.passthrough.errnos import StaleInode
from vfile.passthrough.fdcache import DEFAULT_CAPACITY, FdCache

log = logging.getLogger(__name__)

ROOT_INODE = 1

Key = tuple[int, int]
#: names remembered per inode (`Inode.names`)
MAX_NAMES = 8


class Inode:
    """One source object the kernel knows: ~0.55 KB of server RSS with its table
    entries and handle (bench/scale.py measures it)."""

    __slots__ = ("_cache", "_fd", "handle", "ino", "key", "kind", "lookups", "mount_id",
                 "name", "names", "opens", "parent", "root", "stale", "stamp", "sticky",
                 "unsynced", "writers")

    def __init__(self, ino: int, key: Key, fd: int, kind: int, cache: FdCache, *,
                 lookups: int = 0) -> None:
        self.ino = ino
        self.key = key
        #: S_IFMT bits of the source object (its type never changes).
        self.kind = kind
        self.lookups = lookups
        #: open handles of this inode that may write.
        self.writers = 0
        #: tokens of write intents committed but maybe not yet durable (lazy write-opens):
        #: a WRITE of this inode waits for them first (vfile.hooks `intent_durable`)
        self.unsynced: list[object] | None = None
        #: open file handles of this inode (they pin its descriptor).
        self.opens = 0
        #: (size, mtime_ns, ctime_ns) when the kernel last saw its content; equal at
        #: the next open means the kernel's page cache is still valid (keep_cache).
        self.stamp: tuple[int, int, int] | None = None
        #: a WRITE failed: the kernel keeps those pages (clean, as after any failed
        #: writeback), bytes the source never got and no scan saw; the next open with
        #: no writer left drops the cache instead of keeping it (passthrough.fs open)
        self.stale = False
        #: where a non-directory was last seen: (parent inode number, name).
        self.parent = 0
        self.name: bytes | None = None
        #: (parent inode, name) pairs the kernel reached a hard-linked file by, newest
        #: last (at most `MAX_NAMES`; None until it has a second name): its other names,
        #: checked before use.
        self.names: list[tuple[int, bytes]] | None = None
        #: the kernel's struct file_handle, made when the descriptor is first evicted.
        self.handle: bytes | None = None
        self.mount_id = 0
        self.sticky = False
        self.root = ino == ROOT_INODE
        self._cache = cache
        self._fd = fd

    @property
    def fd(self) -> int:
        """An O_PATH descriptor of the object, valid until the caller's next await."""
        fd = self._fd
        if fd >= 0:
            lru = self._cache.lru
            if self.ino in lru:
                lru.move_to_end(self.ino)
            return fd
        return self._cache.reopen(self)

    def seen_as(self, parent: int, name: bytes) -> None:
        self.parent = parent
        self.name = name

    def saw_name(self, parent: int, name: bytes) -> None:
        """Remember one more name of a hard-linked file (`names`)."""
        pair = (parent, name)
        names = self.names
        if names is None:
            self.names = [pair]
            return
        if names[-1] == pair:
            return
        if pair in names:
            names.remove(pair)
        names.append(pair)
        del names[:-MAX_NAMES]


def stamp_of(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class InodeTable:
    """Maps FUSE inode numbers <-> source identities, with lookup counts."""

    def __init__(self, root_fd: int, root_st: os.stat_result,
                 close: Callable[[int], None] = os.close, *,
                 cache: FdCache | None = None) -> None:
        self._close = close
        self.cache = cache if cache is not None else FdCache(DEFAULT_CAPACITY, handles=False,
                                                            close=close)
        self._next = ROOT_INODE + 1
        root = Inode(ROOT_INODE, (root_st.st_dev, root_st.st_ino), root_fd,
                     root_st.st_mode & 0o170000, self.cache, lookups=1)
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

    def find_ino(self, ino: int) -> Inode | None:
        return self._by_ino.get(ino)

    def add(self, st: os.stat_result, fd: int) -> Inode:
        """Register a new source object; the table now owns `fd`. Lookups start at 0."""
        node = Inode(self._next, (st.st_dev, st.st_ino), -1, st.st_mode & 0o170000, self.cache)
        self._next += 1
        self._by_ino[node.ino] = node
        self._by_key[node.key] = node
        self.cache.insert(node, fd)
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
        if node.opens:
            # Still open: the kernel forgets only after release, but be safe
            # and keep the descriptor until the last handle closes.
            node.lookups = 0
            return
        self._drop(node)

    def maybe_drop(self, node: Inode) -> None:
        """Drop an inode the kernel already forgot, once its last handle closed."""
        if node.lookups <= 0 and node.opens == 0 and node.ino != ROOT_INODE:
            self._drop(node)

    def _drop(self, node: Inode) -> None:
        if self._by_ino.get(node.ino) is not node:
            return  # already dropped
        del self._by_ino[node.ino]
        known = self._by_key.get(node.key) is node
        if known:
            del self._by_key[node.key]
        self.cache.drop(node)
        if known and self.on_drop is not None:
            self.on_drop(node.key)  # only when the file's entry goes, not a stale twin

    def close_all(self) -> None:
        """At unmount: the kernel will send no more forgets. The root's descriptor is
        not the table's: whoever opened it (vfile.mount.serve) closes it, after the
        hooks that still resolve paths from it (the scanning service's stop: its
        drain and stores) are closed. Closed here, its number went to the next file
        opened, and the drain read "Not a directory" as "the file is gone" and
        removed live entries (t5_attack22_closes, after r26's stop settle)."""
        for node in list(self._by_ino.values()):
            if node.root:
                node._fd = -1
                continue
            self.cache.drop(node)
        self._by_ino.clear()
        self._by_key.clear()
        self.cache.close_mounts()
