"""A tiny read-only FUSE filesystem whose reads can be made slow: a slow source.

    python bench/slowfs.py MOUNTPOINT CONTROL_DIR

It holds two files, `fast` and `slow`, of SIZE bytes each. While the file
CONTROL_DIR/delay exists, every read of `slow` sleeps for the number of
seconds it holds (a cold disk, a network filesystem, a dm-delay device,
without root tricks), `fast` stays fast. Files are opened with direct_io, so
every read reaches this process (no page cache in between). The sleep is
trio's, so this filesystem itself stays responsive. Used as the SOURCE of a
vfile mount by tests/t4_datapath_test.py and bench/datapath.py.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from pathlib import Path

import pyfuse3
import trio

SIZE = 256 * 1024
FILES = {b"fast": 2, b"slow": 3}  # name -> inode
_NAMES = {ino: name for name, ino in FILES.items()}


class SlowFS(pyfuse3.Operations):
    def __init__(self, control: Path) -> None:
        super().__init__()
        self.control = control
        self.data = bytes(i % 251 for i in range(SIZE))

    def _attr(self, ino: int) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = ino
        if ino == pyfuse3.ROOT_INODE:
            e.st_mode, e.st_nlink, e.st_size = stat.S_IFDIR | 0o755, 2, 0
        else:
            e.st_mode, e.st_nlink, e.st_size = stat.S_IFREG | 0o644, 1, SIZE
        e.st_mtime_ns = e.st_ctime_ns = e.st_atime_ns = 1_700_000_000 * 10**9
        e.attr_timeout = e.entry_timeout = 300
        return e

    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if parent_inode != pyfuse3.ROOT_INODE or name not in FILES:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(FILES[name])

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attr(inode)

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        for i, (name, ino) in enumerate(FILES.items()):
            if i >= start_id and not pyfuse3.readdir_reply(token, name, self._attr(ino), i + 1):
                return

    async def open(self, inode: int, flags: int,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if flags & os.O_ACCMODE != os.O_RDONLY:
            raise pyfuse3.FUSEError(errno.EROFS)
        return pyfuse3.FileInfo(fh=inode, direct_io=True)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        if _NAMES[fh] == b"slow":
            try:
                delay = float((self.control / "delay").read_text() or 0)
            except FileNotFoundError:
                delay = 0.0
            await trio.sleep(delay)
        return self.data[off:off + size]

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        raise pyfuse3.FUSEError(pyfuse3.ENOATTR)

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return []


def main() -> None:
    mountpoint, control = sys.argv[1], Path(sys.argv[2])
    pyfuse3.init(SlowFS(control), mountpoint, {"fsname=slowfs", "ro"})
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    main()
