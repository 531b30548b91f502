"""The pyfuse3 floor: the thinnest passthrough pyfuse3 can serve, for comparison.

    python bench/floorfs.py SOURCE MOUNTPOINT [--noxattr] [--no-writeback]

What vfile's data path would cost with nothing of vfile in it: the same mount
options (`default_permissions`, the writeback cache, POSIX ACLs with xattrs),
the same entry/attribute timeouts and the same trio main loop
(`pyfuse3.main()`), every syscall inline on the trio thread, no hooks, no
inode table beyond inode -> path, no descriptor cache, no logging. Whatever
vfile costs above this, vfile adds; where this floor is below libfuse's C
passthrough_ll, pyfuse3 itself is the limit (bench/datapath.py).

Not a filesystem to use: inode numbers are the source's (one source
filesystem only), paths are resolved from the root on every request (no
protection against symlink swaps), new files belong to the daemon, forget is
ignored. Only the operations bench/datapath.py's workloads reach.
"""

from __future__ import annotations

import argparse
import errno
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pyfuse3
import trio

#: vfile's own (vfile.passthrough.opsbase): the same kernel caching on both, unless
#: --timeout (C passthrough_ll's cache=always is 86400 s)
TIMEOUT = 1.0
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def oserrors(fn: F) -> F:
    """OSError -> FUSEError (the only mapping a passthrough needs)."""

    async def wrapper(*args: Any) -> Any:
        try:
            return await fn(*args)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None

    return wrapper  # type: ignore[return-value]


class FloorFS(pyfuse3.Operations):
    def __init__(self, source: str, *, xattr: bool, writeback: bool,
                 timeout: float = TIMEOUT, ignore_trunc: bool = False) -> None:
        super().__init__()
        self.timeout = timeout
        self.paths: dict[int, str] = {pyfuse3.ROOT_INODE: source}
        self.root_ino = os.lstat(source).st_ino
        self.xattr = xattr
        self.enable_acl = xattr  # as vfile: ACLs enforced when xattrs are on
        self.enable_writeback_cache = writeback
        self.writeback = writeback
        self.ignore_trunc = ignore_trunc

    def _ino(self, st: os.stat_result) -> int:
        return pyfuse3.ROOT_INODE if st.st_ino == self.root_ino else st.st_ino

    def _entry(self, path: str, st: os.stat_result) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = ino = self._ino(st)
        self.paths[ino] = path
        e.entry_timeout = e.attr_timeout = self.timeout
        e.st_mode, e.st_nlink, e.st_uid, e.st_gid = st.st_mode, st.st_nlink, st.st_uid, st.st_gid
        e.st_rdev, e.st_size, e.st_blksize, e.st_blocks = (st.st_rdev, st.st_size,
                                                            st.st_blksize, st.st_blocks)
        e.st_atime_ns, e.st_mtime_ns, e.st_ctime_ns = st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns
        return e

    def _child(self, parent: int, name: bytes) -> str:
        return os.path.join(self.paths[parent], os.fsdecode(name))

    def _flags(self, flags: int) -> int:
        # The writeback cache reads pages of files opened write-only, and does the
        # appending itself (vfile.passthrough.perms.backing_open_flags, the same rule).
        if self.writeback:
            if flags & os.O_ACCMODE == os.O_WRONLY:
                flags = (flags & ~os.O_ACCMODE) | os.O_RDWR
            flags &= ~os.O_APPEND
        # O_TRUNC is kept: with FUSE_ATOMIC_O_TRUNC (libfuse's default) the kernel
        # leaves the truncation of an open(O_TRUNC) to the server. Before sw22 the
        # floor dropped it, so a rewrite overwrote the old blocks in place, no
        # truncate, no fresh allocation: cheaper than any real passthrough
        # (README, data path, sw22). --ignore-trunc brings that back, to compare.
        drop = os.O_CREAT | os.O_EXCL | os.O_NOCTTY | (os.O_TRUNC if self.ignore_trunc else 0)
        return flags & ~drop

    @oserrors
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any) -> pyfuse3.EntryAttributes:
        path = self._child(parent_inode, name)
        return self._entry(path, os.lstat(path))

    @oserrors
    async def getattr(self, inode: int, ctx: Any) -> pyfuse3.EntryAttributes:
        path = self.paths[inode]
        return self._entry(path, os.lstat(path))

    @oserrors
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: int | None,
                      ctx: Any) -> pyfuse3.EntryAttributes:
        path = self.paths[inode]
        if fields.update_size:
            if fh is None:
                os.truncate(path, attr.st_size)
            else:
                os.ftruncate(fh, attr.st_size)
        if fields.update_mode:
            os.chmod(path, attr.st_mode & 0o7777)
        if fields.update_atime or fields.update_mtime:
            os.utime(path, ns=(attr.st_atime_ns, attr.st_mtime_ns))
        return self._entry(path, os.lstat(path))

    @oserrors
    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        return pyfuse3.FileInfo(fh=os.open(self.paths[inode], self._flags(flags)),
                                keep_cache=True)

    @oserrors
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: Any) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        path = self._child(parent_inode, name)
        fd = os.open(path, self._flags(flags) | os.O_CREAT | os.O_EXCL, mode & ~ctx.umask)
        return pyfuse3.FileInfo(fh=fd), self._entry(path, os.fstat(fd))

    @oserrors
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return os.pread(fh, size, off)

    @oserrors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return os.pwrite(fh, buf, off)

    async def flush(self, fh: int) -> None:
        pass

    @oserrors
    async def fsync(self, fh: int, datasync: bool) -> None:
        os.fdatasync(fh) if datasync else os.fsync(fh)

    @oserrors
    async def release(self, fh: int) -> None:
        os.close(fh)

    @oserrors
    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: Any) -> pyfuse3.EntryAttributes:
        path = self._child(parent_inode, name)
        os.mkdir(path, mode & ~ctx.umask)
        return self._entry(path, os.lstat(path))

    @oserrors
    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        os.unlink(self._child(parent_inode, name))

    async def opendir(self, inode: int, ctx: Any) -> int:
        return inode

    @oserrors
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        base = self.paths[fh]
        names = sorted(os.listdir(base))
        for i in range(start_id, len(names)):
            path = os.path.join(base, names[i])
            if not pyfuse3.readdir_reply(token, os.fsencode(names[i]),
                                         self._entry(path, os.lstat(path)), i + 1):
                return

    async def releasedir(self, fh: int) -> None:
        pass

    @oserrors
    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        if not self.xattr:
            raise pyfuse3.FUSEError(errno.ENOSYS)  # the kernel stops asking (as -o noxattr)
        return os.getxattr(self.paths[inode], name, follow_symlinks=False)

    @oserrors
    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        if not self.xattr:
            raise pyfuse3.FUSEError(errno.ENOSYS)
        return [os.fsencode(n) for n in os.listxattr(self.paths[inode], follow_symlinks=False)]

    @oserrors
    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        sv = os.statvfs(self.paths[pyfuse3.ROOT_INODE])
        out = pyfuse3.StatvfsData()
        for attr in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files",
                     "f_ffree", "f_favail", "f_namemax"):
            setattr(out, attr, getattr(sv, attr))
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("source")
    ap.add_argument("mountpoint")
    ap.add_argument("--noxattr", action="store_true", help="answer xattr requests ENOSYS")
    ap.add_argument("--no-writeback", action="store_true", help="no writeback cache")
    ap.add_argument("--timeout", type=float, default=TIMEOUT,
                    help=f"entry and attribute timeout, seconds (default {TIMEOUT:g}, as vfile)")
    ap.add_argument("--ignore-trunc", action="store_true",
                    help="drop O_TRUNC from opens (wrong: the floor before sw22, to compare)")
    args = ap.parse_args()
    os.umask(0)  # as vfile: the caller's umask is applied per request
    ops = FloorFS(os.path.realpath(args.source), xattr=not args.noxattr,
                  writeback=not args.no_writeback, timeout=args.timeout,
                  ignore_trunc=args.ignore_trunc)
    # vfile.mount.fuse_options, less the fsname
    pyfuse3.init(ops, args.mountpoint, {"default_permissions", "fsname=floorfs", "subtype=floorfs"})
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    main()
