"""The pyfuse3 Operations: a passthrough of the source directory, with hooks.

Handlers are thin: find the inode or handle, do the syscall inline (on two
cores a thread hop costs more than an open or a 128 KiB pread; reads, writes
and syncs that could block go to threads, see `vfile.passthrough.datapath`), call the
gate's hooks where DESIGN.md says, and let `handler` map any exception to one
errno (see `vfile.passthrough.errnos`). Invariants:

- Only `pyfuse3.FUSEError` leaves a handler.
- No path is resolved from the source root: every syscall is relative to an
  O_PATH descriptor of a known directory (``*at`` with AT_SYMLINK_NOFOLLOW /
  O_NOFOLLOW) or acts on an inode's own descriptor (/proc/self/fd/N, which
  names the inode, not a path). Names from the kernel are checked to be one
  component. A symlink in the source is never followed by the daemon.
- A caller's open flags reach a syscall only through
  `perms.backing_open_attempts` / `backing_open_flags`, which drop the
  path-walk flags (O_NOFOLLOW, O_DIRECTORY) the kernel already applied to the
  caller's path: on /proc/self/fd/N they would act on the magic link itself.
  No other handler passes a caller's flags on (setattr, link and xattrs act
  on the inode through the magic link, which they follow by design).
- One backing file descriptor per open (fh is that descriptor); data moves
  with pread/pwrite at the kernel's offsets.
- New objects belong to the caller (uid, gid or the set-gid parent's group),
  with the caller's mode less its umask; the daemon itself runs with umask 0.
- Permission checks are the kernel's (`default_permissions` mount option);
  the daemon, usually root, then does what the kernel allowed.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence

import pyfuse3

from vfile.hooks import CallerLike, request_ctx
from vfile.passthrough import perms
from vfile.passthrough.dirops import DirOps
from vfile.passthrough.errnos import StaleHandle, check_name
from vfile.passthrough.inodes import Inode, stamp_of
from vfile.passthrough.metaops import MetaOps
from vfile.passthrough.opsbase import (
    ATTR_TIMEOUT,
    ENTRY_TIMEOUT,
    OPATH,
    FileHandle,
    handler,
)
from vfile.passthrough.syscalls import (
    RENAME_EXCHANGE,
    fchown_empty,
    proc_path,
    renameat2,
    utimens_empty,
)

__all__ = ["ATTR_TIMEOUT", "ENTRY_TIMEOUT", "VFileOperations"]


class VFileOperations(DirOps, MetaOps):
    """Passthrough of `root_fd` (an O_PATH descriptor of the source) with hooks."""

    # -- names --------------------------------------------------------------

    @handler
    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: CallerLike) -> pyfuse3.EntryAttributes:
        parent = self.table.get(parent_inode)
        if name == b".":
            node, st = parent, os.fstat(parent.fd)
        else:
            try:
                node, st = self._known(parent, check_name(name))
            except FileNotFoundError:
                # A negative entry the kernel may cache for ENTRY_TIMEOUT.
                neg = pyfuse3.EntryAttributes()
                neg.st_ino = 0
                neg.entry_timeout = ENTRY_TIMEOUT
                return neg
        node.lookups += 1
        return self._entry(node, st)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, n in inode_list:
            self.table.forget(ino, n)

    @handler
    async def getattr(self, inode: int, ctx: CallerLike) -> pyfuse3.EntryAttributes:
        node = self.table.get(inode)
        return self._entry(node, os.fstat(node.fd))

    @handler
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: int | None,
                      ctx: CallerLike) -> pyfuse3.EntryAttributes:
        node = self.table.get(inode)
        handle = self.files.get(fh) if fh is not None else None
        if fields.update_size:
            await self._truncate(node, handle, attr.st_size, ctx)
        if fields.update_uid or fields.update_gid:
            fchown_empty(node.fd, attr.st_uid if fields.update_uid else -1,
                         attr.st_gid if fields.update_gid else -1)
        if fields.update_mode:
            if node.kind == stat.S_IFLNK:
                raise OSError(errno.EOPNOTSUPP, "chmod of a symlink")
            os.chmod(proc_path(node.fd), stat.S_IMODE(attr.st_mode))
        if fields.update_atime or fields.update_mtime:
            utimens_empty(node.fd, attr.st_atime_ns if fields.update_atime else None,
                          attr.st_mtime_ns if fields.update_mtime else None)
        return self._entry(node, os.fstat(node.fd))

    async def _truncate(self, node: Inode, handle: FileHandle | None, size: int,
                        ctx: CallerLike) -> None:
        hooks = self.hooks
        if not hooks.trivial:
            await hooks.on_write_intent(self.path_of(node), os.fstat(node.fd), request_ctx(ctx))
        if handle is not None:
            os.ftruncate(handle.fd, size)
        else:
            os.truncate(proc_path(node.fd), size)
        if not hooks.trivial and node.writers == 0:
            await hooks.on_last_close(self.path_of(node), None, os.fstat(node.fd))

    @handler
    async def readlink(self, inode: int, ctx: CallerLike) -> bytes:
        node = self.table.get(inode)
        return os.readlink(b"", dir_fd=node.fd)

    # -- creating and removing names ---------------------------------------

    @handler
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: CallerLike) -> pyfuse3.EntryAttributes:
        parent = self.table.get(parent_inode)
        check_name(name)
        perm = perms.creation_mode(mode, ctx.umask)
        if stat.S_ISREG(mode) and not self.hooks.trivial:
            await self.hooks.on_write_intent(self._child_path(parent, name), None,
                                             request_ctx(ctx))
        os.mknod(name, stat.S_IFMT(mode) | perm, rdev, dir_fd=parent.fd)
        return self._finish_new(parent, name, ctx, perm)

    @handler
    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: CallerLike) -> pyfuse3.EntryAttributes:
        parent = self.table.get(parent_inode)
        check_name(name)
        perm = perms.creation_mode(mode, ctx.umask)
        os.mkdir(name, perm, dir_fd=parent.fd)
        return self._finish_new(parent, name, ctx, perm)

    @handler
    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: CallerLike) -> pyfuse3.EntryAttributes:
        parent = self.table.get(parent_inode)
        check_name(name)
        os.symlink(target, name, dir_fd=parent.fd)
        return self._finish_new(parent, name, ctx, None)

    def _finish_new(self, parent: Inode, name: bytes, ctx: CallerLike,
                    perm: int | None) -> pyfuse3.EntryAttributes:
        fd = os.open(name, OPATH, dir_fd=parent.fd)
        try:
            self._give_to_caller(fd, parent, ctx, perm)
        except BaseException:
            os.close(fd)
            raise
        node, st = self._adopt(fd)
        return self._entry(node, st)

    @handler
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: CallerLike) -> pyfuse3.EntryAttributes:
        node = self.table.get(inode)
        parent = self.table.get(new_parent_inode)
        check_name(new_name)
        if not self.hooks.trivial and node.kind == stat.S_IFREG:
            await self.hooks.on_write_intent(self._child_path(parent, new_name),
                                             os.fstat(node.fd), request_ctx(ctx))
        # Linking the inode itself (via its /proc magic link), not a name.
        os.link(proc_path(node.fd).encode(), new_name, dst_dir_fd=parent.fd, follow_symlinks=True)
        node.lookups += 1
        return self._entry(node, os.fstat(node.fd))

    @handler
    async def unlink(self, parent_inode: int, name: bytes, ctx: CallerLike) -> None:
        parent = self.table.get(parent_inode)
        check_name(name)
        path = None if self.hooks.trivial else self._child_path(parent, name)
        os.unlink(name, dir_fd=parent.fd)
        if path is not None:
            await self.hooks.on_unlink(path)

    @handler
    async def rmdir(self, parent_inode: int, name: bytes, ctx: CallerLike) -> None:
        parent = self.table.get(parent_inode)
        os.rmdir(check_name(name), dir_fd=parent.fd)

    @handler
    async def rename(self, parent_inode_old: int, name_old: bytes,  # noqa: PLR0917 (pyfuse3's)
                     parent_inode_new: int, name_new: bytes, flags: int,
                     ctx: CallerLike) -> None:
        old_p = self.table.get(parent_inode_old)
        new_p = self.table.get(parent_inode_new)
        check_name(name_old)
        check_name(name_new)
        hooks = self.hooks
        paths = None
        if not hooks.trivial:
            paths = (self._child_path(old_p, name_old), self._child_path(new_p, name_new))
            await self._rename_intents((old_p, name_old), (new_p, name_new), flags, paths, ctx)
        if flags:
            renameat2(old_p.fd, name_old, new_p.fd, name_new, flags)
        else:
            os.rename(name_old, name_new, src_dir_fd=old_p.fd, dst_dir_fd=new_p.fd)
        if paths is not None and not flags & RENAME_EXCHANGE:
            await hooks.on_rename(*paths)

    async def _rename_intents(self, old: tuple[Inode, bytes], new: tuple[Inode, bytes],
                              flags: int, paths: tuple[bytes, bytes], ctx: CallerLike) -> None:
        """Renaming a file (onto another or not, or exchanging) changes what a path
        holds: intent first.

        Also when nothing is overwritten: the move changes the file's ctime, so its
        clean verdict no longer matches its identity, and without an entry for the
        new path the file would have neither (found by tests/t5_crash_test.py).
        """
        (old_p, name_old), (new_p, name_new) = old, new
        try:
            target: os.stat_result | None = os.stat(name_new, dir_fd=new_p.fd,
                                                    follow_symlinks=False)
        except FileNotFoundError:
            target = None
        moving = os.stat(name_old, dir_fd=old_p.fd, follow_symlinks=False)
        rctx = request_ctx(ctx)
        if stat.S_ISREG(moving.st_mode):
            await self.hooks.on_write_intent(paths[1], moving, rctx)
        if flags & RENAME_EXCHANGE and target is not None and stat.S_ISREG(target.st_mode):
            await self.hooks.on_write_intent(paths[0], target, rctx)

    # -- files --------------------------------------------------------------

    @handler
    async def open(self, inode: int, flags: int, ctx: CallerLike) -> pyfuse3.FileInfo:
        node = self.table.get(inode)
        writing = perms.is_write_open(flags)
        hooks = self.hooks
        if writing and not hooks.trivial:
            await hooks.on_write_intent(self.path_of(node), os.fstat(node.fd), request_ctx(ctx))
        fd = self._open_backing(node, flags)
        try:
            st = os.fstat(fd)
            # The warm path (a current clean verdict) skips `on_open` and the path it
            # needs (a readlink): one dict lookup in the gate.
            if not hooks.trivial and stat.S_ISREG(st.st_mode) and not \
                    hooks.allows_cached_nowait(st, flags):
                await hooks.on_open(self.path_of(node), fd, st, flags, request_ctx(ctx))
        except BaseException:
            os.close(fd)
            raise
        stamp = stamp_of(st)
        keep = node.stamp == stamp
        node.stamp = stamp
        if writing:
            node.writers += 1
        self.files[fd] = FileHandle(fd, node, writing)
        return pyfuse3.FileInfo(fh=fd, keep_cache=keep)

    def _open_backing(self, node: Inode, flags: int) -> int:
        if node.kind != stat.S_IFREG:
            # FIFOs and devices are opened by the kernel itself, never here.
            raise OSError(errno.EINVAL if node.kind != stat.S_IFDIR else errno.EISDIR, "open")
        path = proc_path(node.fd)
        *first, last = perms.backing_open_attempts(flags, self.writeback)
        for oflags in first:
            try:
                return os.open(path, oflags)
            except PermissionError:
                continue  # an unprivileged daemon refused what the caller may do
        return os.open(path, last)

    @handler
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: CallerLike) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        parent = self.table.get(parent_inode)
        check_name(name)
        hooks = self.hooks
        if not hooks.trivial:
            await hooks.on_write_intent(self._child_path(parent, name), None, request_ctx(ctx))
        perm = perms.creation_mode(mode, ctx.umask)
        oflags = perms.backing_open_flags(flags, self.writeback) | os.O_NOFOLLOW
        try:
            fd = os.open(name, oflags | os.O_CREAT | os.O_EXCL, perm, dir_fd=parent.fd)
            created = True
        except FileExistsError:
            if flags & os.O_EXCL:
                raise
            fd = self._open_existing(parent, name, oflags)  # lost a race: plain open
            created = False
        try:
            if created:
                self._give_to_caller(fd, parent, ctx, perm)
            # Not O_NOFOLLOW: that would open the /proc magic link itself.
            path_fd = os.open(proc_path(fd), os.O_PATH | os.O_CLOEXEC)
        except BaseException:
            os.close(fd)
            raise
        node, st = self._adopt(path_fd)
        node.stamp = stamp_of(st)
        node.writers += 1  # a new file is new content: its close is a last close
        self.files[fd] = FileHandle(fd, node, True)
        return pyfuse3.FileInfo(fh=fd, keep_cache=False), self._entry(node, st)

    @staticmethod
    def _open_existing(parent: Inode, name: bytes, oflags: int) -> int:
        """Open what a racing create found under `name`: a regular file only.

        O_NONBLOCK, so a FIFO made in the source behind the kernel's cached negative
        entry cannot block the trio thread (an O_WRONLY open of a FIFO waits for a
        reader); the kernel opens special files itself, never through a handle here.
        """
        fd = os.open(name, oflags | os.O_NONBLOCK, dir_fd=parent.fd)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.ENXIO, "not a regular file", name)
            if not oflags & os.O_NONBLOCK:
                os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return fd

    # Data moves inline when it cannot block, else in a thread (vfile.passthrough.datapath).

    @handler
    async def read(self, fh: int, off: int, size: int) -> bytes:
        h = self._file(fh)
        return await self.data.read(h.fd, h.node.key[0], off, size)

    @handler
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        h = self._file(fh)
        return await self.data.write(h.fd, h.node.key[0], off, buf)

    async def flush(self, fh: int) -> None:
        # ENOSYS once, and the kernel stops sending FLUSH on every close(2):
        # one round trip less per open+close (measured). We implement no lock
        # operations (the kernel keeps POSIX locks locally), so a flush has
        # nothing to do; the kernel still writes back dirty pages before the
        # release, and errors from that writeback still reach close(2).
        raise pyfuse3.FUSEError(errno.ENOSYS)

    @handler
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self.data.fsync(self._file(fh).fd, datasync)

    @handler
    async def release(self, fh: int) -> None:
        h = self.files.pop(fh, None)
        if h is None:
            raise StaleHandle(fh)
        node = h.node
        try:
            if h.writable:
                node.writers -= 1
                if node.writers == 0:
                    st = os.fstat(h.fd)
                    node.stamp = stamp_of(st)  # the kernel's cache holds what we wrote
                    if not self.hooks.trivial:
                        await self.hooks.on_last_close(self.path_of(node), h.fd, st)
        finally:
            os.close(h.fd)
            self.table.maybe_drop(node)
