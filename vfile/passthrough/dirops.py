"""Directory handles: opendir / readdir / releasedir / fsyncdir.

Invariant: readdir offsets index a snapshot of the names taken when the
listing starts (refreshed by a read from offset 0, i.e. rewinddir), so a
directory changing under a listing never makes an entry repeat or an
unchanged entry vanish. Offsets 1 and 2 are "." and "..". Every entry
reported (except those two) counts as one kernel lookup: pyfuse3 always
uses readdirplus.
"""

from __future__ import annotations

import os

import pyfuse3

from vfile.hooks import CallerLike
from vfile.passthrough.errnos import StaleHandle
from vfile.passthrough.inodes import ROOT_INODE, Inode
from vfile.passthrough.opsbase import DirHandle, OpsCore, handler


class DirOps(OpsCore):
    """Directory handlers (see the module docstring)."""

    @handler
    async def opendir(self, inode: int, ctx: CallerLike) -> int:
        node = self.table.get(inode)
        self._check_room()
        fd = os.open(b".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=node.fd)
        dh = self._next_dh
        self._next_dh += 1
        self.dirs[dh] = DirHandle(node, fd)
        return dh

    @handler
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        try:
            dh = self.dirs[fh]
        except KeyError:
            raise StaleHandle(fh) from None
        if start_id == 0 and (dh.served or not dh.names):
            # First listing, or a rewinddir(): take a fresh snapshot.
            dh.names = [os.fsencode(n) for n in os.listdir(dh.fd)]
            dh.served = True
        dnode = dh.node
        # Offsets: 1 is ".", 2 is "..", 3 + i is names[i]. They index the
        # snapshot, so they stay valid however the directory changes.
        if start_id < 1 and not pyfuse3.readdir_reply(
                token, b".", self._entry(dnode, os.fstat(dnode.fd)), 1):
            return
        if start_id < 2 and not pyfuse3.readdir_reply(token, b"..", self._dotdot(dnode), 2):
            return
        names = dh.names
        for i in range(max(start_id - 2, 0), len(names)):
            name = names[i]
            try:
                node, st = self._known(dnode, name, dh.fd)
            except FileNotFoundError:
                continue  # removed since the snapshot: skip, never repeat
            if not pyfuse3.readdir_reply(token, name, self._entry(node, st), i + 3):
                self.table.maybe_drop(node)
                return
            node.lookups += 1

    def _dotdot(self, dnode: Inode) -> pyfuse3.EntryAttributes:
        """The ".." entry: only its inode number matters (the kernel ignores the rest)."""
        if dnode.ino == ROOT_INODE:
            return self._entry(dnode, os.fstat(dnode.fd))
        st = os.stat(b"..", dir_fd=dnode.fd, follow_symlinks=False)
        parent = self.table.find(st)
        return self._entry(parent if parent is not None else dnode, st)

    @handler
    async def releasedir(self, fh: int) -> None:
        dh = self.dirs.pop(fh, None)
        if dh is None:
            raise StaleHandle(fh)
        os.close(dh.fd)

    @handler
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        try:
            fd = self.dirs[fh].fd
        except KeyError:
            raise StaleHandle(fh) from None
        os.fsync(fd)
