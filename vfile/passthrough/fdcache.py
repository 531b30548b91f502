"""A bounded cache of the O_PATH descriptors behind known inodes.

Why: the kernel keeps its dentries, and with them its references to our
inodes, until memory pressure. One descriptor per known inode therefore grows
with the number of files ever touched and runs into RLIMIT_NOFILE (issue 20:
EMFILE at ~20,000 files, and then every open and the control socket failed).
Production passthroughs (virtiofsd's ``--inode-file-handles``, fuse-backend-rs)
keep a *file handle* per inode instead and open descriptors on demand; so do we.

Invariants:
- At most `capacity` descriptors are held for evictable inodes, least recently
  used first out. Pinned inodes are outside the count: the root, inodes with
  open files (their number is bounded by the open files, which cost a
  descriptor each anyway; and an unlinked open file could not be reopened by
  handle), and "sticky" inodes whose handle cannot be made (a filesystem
  without export support, a non-directory on a mount we hold no descriptor
  for, or a daemon without CAP_DAC_READ_SEARCH: then every inode is sticky and
  the table behaves as before, one descriptor per known inode).
- A descriptor returned by `Inode.fd` stays open until at least `MIN_CAPACITY`
  other inodes have been used: callers use it before their next ``await`` and
  touch fewer inodes than that in between (a handler touches at most three).
- A handle is made only by name_to_handle_at(AT_EMPTY_PATH) on a descriptor
  this cache holds, i.e. of an inode reached from the source root, and is
  never taken from or shown to a user: open_by_handle_at can open any inode of
  the filesystem, so a handle from elsewhere could escape the source. It is
  made lazily, at eviction: while the cache holds an inode's descriptor, no
  handle syscall is on its path.
- A reopened descriptor is checked to be the inode we knew ((st_dev, st_ino));
  anything else is a stale inode (ESTALE), never another file.
- One O_RDONLY directory descriptor per mount a handle was made on, reached
  through the source (open_by_handle_at needs it; an O_PATH one is refused).
  Holding it also keeps that mount, and so its mount id, from going away.
- A dropped inode's handle is forgotten: a stale reference can never reopen it.
"""

from __future__ import annotations

import logging
import os
import stat
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

from vfile.passthrough.errnos import StaleInode
from vfile.passthrough.syscalls import name_to_handle, open_by_handle, proc_path

if TYPE_CHECKING:
    from vfile.passthrough.inodes import Inode

log = logging.getLogger(__name__)

#: Below this the "valid until the next await" promise of `Inode.fd` gets thin.
MIN_CAPACITY = 16
#: The default size: this, or a quarter of the descriptor limit if that is less
#: (open files, directory listings, the journal and sockets need the rest).
DEFAULT_CAPACITY = 4096

_REOPEN = os.O_PATH | os.O_CLOEXEC


def default_capacity(nofile: int) -> int:
    """The default cache size for a descriptor limit `nofile` (pure)."""
    return max(MIN_CAPACITY, min(DEFAULT_CAPACITY, nofile // 4))


def probe_handles(root_fd: int, mount_fd: int) -> str | None:
    """None if handles work on the source root, else why not (for the log)."""
    try:
        handle, _ = name_to_handle(root_fd)
        os.close(open_by_handle(mount_fd, handle, _REOPEN))
    except OSError as err:
        return err.strerror or str(err)
    return None


class FdCache:
    """LRU of O_PATH descriptors of evictable inodes, reopened from handles."""

    def __init__(self, capacity: int, *, handles: bool,
                 close: Callable[[int], None] = os.close) -> None:
        self.capacity = max(capacity, MIN_CAPACITY)
        self.handles = handles
        self._close = close
        #: ino -> Inode, least recently used first; only evictable inodes with an fd.
        self.lru: OrderedDict[int, Inode] = OrderedDict()
        #: mount id -> O_RDONLY directory descriptor on that mount.
        self._mounts: dict[int, int] = {}
        self.reopens = 0
        self.evictions = 0
        self.sticky = 0

    def statistics(self) -> dict[str, int]:
        return {"capacity": self.capacity, "cached": len(self.lru), "sticky": self.sticky,
                "mounts": len(self._mounts), "reopens": self.reopens,
                "evictions": self.evictions}

    def room_for_new(self) -> bool:
        """Whether one more inode may take a descriptor. Without handles (a non-root
        mount) nothing can be evicted: the capacity is then a hard limit on known
        inodes, and lookups of new ones get EMFILE instead of starving the server."""
        if self.handles:
            return self.sticky < self.capacity
        return self.sticky + len(self.lru) < self.capacity

    def add_mount(self, dir_fd: int) -> None:
        """Register a directory descriptor (O_RDONLY) for its mount; we own it."""
        _, mount_id = name_to_handle(dir_fd)
        if mount_id in self._mounts:
            self._close(dir_fd)
        else:
            self._mounts[mount_id] = dir_fd

    # -- the descriptor of one inode ------------------------------------------------

    def reopen(self, node: Inode) -> int:
        """Open `node` again from its handle (it has no descriptor now)."""
        if node.handle is None:
            raise StaleInode(node.ino)  # dropped, or never evicted: nothing to reopen
        mount_fd = self._mounts[node.mount_id]
        fd = open_by_handle(mount_fd, node.handle, _REOPEN)
        try:
            st = os.fstat(fd)
        except BaseException:
            self._close(fd)
            raise
        if (st.st_dev, st.st_ino) != node.key:
            self._close(fd)
            raise StaleInode(node.ino)
        self.reopens += 1
        self.insert(node, fd)
        return fd

    def insert(self, node: Inode, fd: int) -> None:
        """`node` now holds `fd` (which we own); evict others if over capacity."""
        node._fd = fd
        if node.opens == 0 and not node.sticky and not node.root:
            self.lru[node.ino] = node
            if len(self.lru) > self.capacity:
                self._shrink()

    def pin(self, node: Inode) -> None:
        """An open file: keep the inode's descriptor until `unpin`."""
        node.opens += 1
        if node.opens == 1:
            _ = node.fd  # open it now if evicted
            self.lru.pop(node.ino, None)

    def unpin(self, node: Inode) -> None:
        node.opens -= 1
        if node.opens == 0 and node._fd >= 0 and not node.sticky and not node.root:
            self.lru[node.ino] = node
            if len(self.lru) > self.capacity:
                self._shrink()

    def drop(self, node: Inode) -> None:
        """The inode is gone from the table: close its descriptor, forget its handle."""
        self.lru.pop(node.ino, None)
        if node.sticky:
            node.sticky = False
            self.sticky -= 1
        node.handle = None
        if node._fd >= 0:
            fd, node._fd = node._fd, -1
            self._close(fd)

    def close_mounts(self) -> None:
        for fd in self._mounts.values():
            self._close(fd)
        self._mounts.clear()

    # -- eviction -------------------------------------------------------------------

    def _shrink(self) -> None:
        lru = self.lru
        while len(lru) > self.capacity:
            _, victim = lru.popitem(last=False)
            if victim.handle is None and not self._encode(victim):
                victim.sticky = True
                self.sticky += 1
                if self.sticky == 1:
                    log.warning("an inode's descriptor cannot be closed and reopened (no file "
                                "handle%s): such inodes keep theirs while the kernel knows them",
                                "" if self.handles else ": needs CAP_DAC_READ_SEARCH")
                continue
            fd, victim._fd = victim._fd, -1
            self._close(fd)
            self.evictions += 1

    def _encode(self, node: Inode) -> bool:
        """Make `node`'s handle from the descriptor it holds; False if impossible."""
        if not self.handles:
            return False
        try:
            handle, mount_id = name_to_handle(node._fd)
        except OSError:
            return False  # EOPNOTSUPP: this filesystem cannot export handles
        if mount_id not in self._mounts:
            if node.kind != stat.S_IFDIR:
                return False  # a file bind-mounted into the source: keep its fd
            try:
                self._mounts[mount_id] = os.open(proc_path(node._fd),
                                                 os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError:
                return False
        node.handle = handle
        node.mount_id = mount_id
        return True
