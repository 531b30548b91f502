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
import fcntl
import os
import stat
from collections.abc import Sequence

import pyfuse3

from vfile.hooks import CallerLike, request_ctx
from vfile.passthrough import perms
from vfile.passthrough.dirops import DirOps
from vfile.passthrough.errnos import StaleHandle, StaleInode, check_name
from vfile.passthrough.inodes import Inode, stamp_of
from vfile.passthrough.metaops import MetaOps
from vfile.passthrough.nameops import NameOps
from vfile.passthrough.opsbase import (
    ATTR_TIMEOUT,
    ENTRY_TIMEOUT,
    OPATH,
    FileHandle,
    handler,
)
from vfile.passthrough.syscalls import (
    fchown_empty,
    proc_path,
    utimens_empty,
)

__all__ = ["ATTR_TIMEOUT", "ENTRY_TIMEOUT", "VFileOperations"]


class VFileOperations(NameOps, DirOps, MetaOps):
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
        truncated = False
        if fields.update_size:
            truncated = await self._truncate(node, handle, attr.st_size, ctx)
        try:
            return await self._setattr_rest(node, attr, fields, ctx)
        finally:
            if truncated and not self.hooks.trivial and node.writers == 0:
                # After the times the same request sets (with the writeback cache the
                # kernel sends its own with every truncate): the close scan reads the
                # file as the request left it, and the times' change, meeting the
                # truncate's intent still unclaimed, does not journal it again.
                await self.hooks.on_last_close(self.path_of(node), None, os.fstat(node.fd))

    async def _setattr_rest(self, node: Inode, attr: pyfuse3.EntryAttributes,
                            fields: pyfuse3.SetattrFields,
                            ctx: CallerLike) -> pyfuse3.EntryAttributes:
        """`setattr` after the size: owner, mode and times."""

        def change_metadata() -> os.stat_result:
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
            return os.fstat(node.fd)

        if not (fields.update_uid or fields.update_gid or fields.update_mode
                or fields.update_atime or fields.update_mtime):
            pass
        elif node.kind == stat.S_IFREG and not self.hooks.trivial \
                and (before := os.fstat(node.fd)).st_nlink > 0:
            # A new ctime is a new identity: the gate keeps the verdict or journals it.
            # (Not for a file with no name left: the kernel flushes an unlinked inode's
            # times as it evicts it, and a journal entry would only name "x (deleted)".)
            await self.hooks.on_metadata_change(self.path_of(node), before,
                                                request_ctx(ctx), change_metadata,
                                                writing=node.writers > 0)
        else:
            change_metadata()
        st = os.fstat(node.fd)
        if node.kind == stat.S_IFREG:
            # The kernel knows of this change: not one made behind our back (see open).
            node.stamp = stamp_of(st)
        return self._entry(node, st)

    async def _truncate(self, node: Inode, handle: FileHandle | None, size: int,
                        ctx: CallerLike) -> bool:
        """Truncate with its write intent first; True once done (the caller then runs
        the last close if no writer is left)."""
        hooks = self.hooks
        token = None
        if not hooks.trivial:
            token = await hooks.on_write_intent(self.path_of(node), os.fstat(node.fd),
                                                request_ctx(ctx))
        try:
            if handle is not None:
                os.ftruncate(handle.fd, size)
            else:
                os.truncate(proc_path(node.fd), size)
        except BaseException:
            hooks.release_intent(token)  # EFBIG, ENOSPC...: nothing changed
            raise
        return True

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
        hooks = self.hooks
        if not stat.S_ISREG(mode) or hooks.trivial:
            os.mknod(name, stat.S_IFMT(mode) | perm, rdev, dir_fd=parent.fd)
            return self._finish_new(parent, name, ctx, perm)
        path = self._child_path(parent, name)
        token = await hooks.on_write_intent(path, None, request_ctx(ctx))
        try:
            os.mknod(name, stat.S_IFMT(mode) | perm, rdev, dir_fd=parent.fd)
            entry = self._finish_new(parent, name, ctx, perm)
        except BaseException:
            hooks.release_intent(token)
            raise
        # No handle will be closed: the new file's last close is now. Its path again: a
        # directory above may have moved while its intent waited (passthrough.namelock).
        await hooks.on_last_close(self._child_path(parent, name), None,
                                  os.stat(name, dir_fd=parent.fd, follow_symlinks=False))
        return entry

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
        node, st = self._adopt(fd, parent, name)
        return self._entry(node, st)


    # -- files --------------------------------------------------------------

    @handler
    async def open(self, inode: int, flags: int, ctx: CallerLike) -> pyfuse3.FileInfo:
        node = self.table.get(inode)
        self._check_room()
        writing = perms.is_write_open(flags)
        hooks = self.hooks
        token = None
        # Without O_TRUNC the content changes only through this handle's WRITEs: the
        # intent is committed now and made durable before the first one (`write`).
        lazy = not flags & os.O_TRUNC
        if writing and not hooks.trivial:
            token = await hooks.on_write_intent(self.path_of(node), os.fstat(node.fd),
                                                request_ctx(ctx), lazy=lazy)
        try:
            fd, st = self._open_backing(node, flags)
        except BaseException:
            hooks.release_intent(token)
            raise
        try:
            # The warm path (a current clean verdict) skips `on_open` and the path it
            # needs (a readlink): one dict lookup in the gate.
            # Another writer's bytes may be in the kernel's page cache, not the source.
            unflushed = self.writeback and node.writers > 0
            if not hooks.trivial and stat.S_ISREG(st.st_mode) and (
                    unflushed or not hooks.allows_cached_nowait(st, flags)):
                await hooks.on_open(self.path_of(node), fd, st, flags, request_ctx(ctx),
                                    unflushed=unflushed)
            self.table.cache.pin(node)  # an open file keeps its inode's descriptor
        except BaseException:
            os.close(fd)
            hooks.release_intent(token)  # denied: no writer will close it
            raise
        stamp = stamp_of(st)
        # keep_cache=False makes the kernel invalidate the inode's page cache when
        # this open returns. With the writeback cache, an open racing a writer (a
        # reader opening while a truncating writer fills its pages) had the
        # writer's dirty pages dropped: its close() then wrote nothing back and
        # acknowledged data never reached the source (tests/t5_crash_test.py,
        # about 1 round in 70). So the cache is dropped only for a change made
        # behind our back: changes made through the mount (writes, truncate,
        # chmod, utimens, rename, link) refresh `node.stamp`, and while someone
        # writes through the mount the kernel's cache is the newest content.
        keep = node.stamp == stamp or (self.writeback and node.writers > 0)
        if node.stale and node.writers == 0:
            keep = node.stale = False  # a failed WRITE's pages (Inode.stale): dropped now
        node.stamp = stamp
        if writing:
            node.writers += 1
            if lazy and hooks.intent_pending(token):
                # Only those not yet durable: readers that open O_RDWR and never write
                # (SQLite) must not grow the list while one of them keeps it open.
                node.unsynced = [*(t for t in node.unsynced or () if hooks.intent_pending(t)),
                                 token]
        self._add_file(fd, node, writing)
        return pyfuse3.FileInfo(fh=fd, keep_cache=keep)

    def _open_backing(self, node: Inode, flags: int) -> tuple[int, os.stat_result]:
        """The daemon's descriptor for an open of `node`, and its stat."""
        if node.kind != stat.S_IFREG:
            # FIFOs and devices are opened by the kernel itself, never here.
            raise OSError(errno.EINVAL if node.kind != stat.S_IFDIR else errno.EISDIR, "open")
        attempts = perms.backing_open_attempts(flags, self.writeback)
        if not perms.is_write_open(flags) and (by_name := self._open_by_name(
                node, attempts[0])) is not None:
            return by_name
        path = proc_path(node.fd)
        *first, last = attempts
        for oflags in first:
            try:
                fd = os.open(path, oflags)
                break
            except PermissionError:
                continue  # an unprivileged daemon refused what the caller may do
        else:
            fd = os.open(path, last)
        try:
            return fd, os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise

    def _open_by_name(self, node: Inode, oflags: int) -> tuple[int, os.stat_result] | None:
        """A read-only open's fast path: openat of the name the kernel last reached the
        file by, relative to its parent's descriptor. A one-component lookup, where
        /proc/self/fd/N walks procfs and follows a magic link: 7 against 17 µs per
        open+close on this loaded 2-core machine (README, data path). None (the caller
        opens by /proc) unless what it opened is `node` itself: the name may name
        another file now, swapped behind our back (tests/t4_open_by_name_test.py).
        Read-only only: a write flag (O_TRUNC) would act on the wrong file before the
        check. O_NONBLOCK so that a FIFO swapped in cannot block the trio thread
        (as `_open_existing`), cleared again once the file is known to be ours;
        O_NOCTTY so that a terminal swapped in never becomes the daemon's."""
        name = node.name
        parent = self.table.find_ino(node.parent) if name is not None else None
        if parent is None or name is None:
            return None
        try:
            fd = os.open(name, oflags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY,
                         dir_fd=parent.fd)
        except (OSError, StaleInode):
            return None  # gone, a symlink now, a FIFO without writer, a stale parent...
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != node.key:
                os.close(fd)
                return None
            if not oflags & os.O_NONBLOCK:
                fcntl.fcntl(fd, fcntl.F_SETFL, oflags)  # the caller's status flags, exactly
        except BaseException:
            os.close(fd)
            raise
        return fd, st

    @handler
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: CallerLike) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        parent = self.table.get(parent_inode)
        check_name(name)
        self._check_room()
        hooks = self.hooks
        token = None
        if not hooks.trivial:
            token = await hooks.on_write_intent(self._child_path(parent, name), None,
                                                request_ctx(ctx))
        perm = perms.creation_mode(mode, ctx.umask)
        oflags = perms.backing_open_flags(flags, self.writeback) | os.O_NOFOLLOW
        try:
            try:
                fd = os.open(name, oflags | os.O_CREAT | os.O_EXCL, perm, dir_fd=parent.fd)
                created = True
            except FileExistsError:
                if flags & os.O_EXCL:
                    raise
                # Lost a race: a plain open, truncated below once its intent is fsynced.
                fd = self._open_existing(parent, name, oflags & ~os.O_TRUNC)
                created = False
        except BaseException:
            hooks.release_intent(token)
            raise
        try:
            if created:
                self._give_to_caller(fd, parent, ctx, perm)
            else:
                token = await self._existing_after_all(parent, name, fd, token, ctx)
                if oflags & os.O_TRUNC:
                    os.ftruncate(fd, 0)
            # Not O_NOFOLLOW: that would open the /proc magic link itself.
            path_fd = os.open(proc_path(fd), os.O_PATH | os.O_CLOEXEC)
        except BaseException:
            os.close(fd)
            hooks.release_intent(token)
            raise
        node, st = self._adopt(path_fd, parent, name)
        self.table.cache.pin(node)
        node.stamp = stamp_of(st)
        node.writers += 1  # a new file is new content: its close is a last close
        self._add_file(fd, node, True)
        # Another writer already holds it (lost a create race): keep its pages (see open).
        keep = self.writeback and node.writers > 1
        return pyfuse3.FileInfo(fh=fd, keep_cache=keep), self._entry(node, st)

    async def _existing_after_all(self, parent: Inode, name: bytes, fd: int, token: object,
                                  ctx: CallerLike) -> object:
        """A create that opened an existing file: its intent must be fsynced (tier 1),
        not only covered by the watermark, which vouches for new files alone."""
        if self.hooks.trivial:
            return token
        try:
            return await self.hooks.on_write_intent(self._child_path(parent, name),
                                                    os.fstat(fd), request_ctx(ctx))
        finally:
            self.hooks.release_intent(token)

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
        try:
            if h.node.unsynced:
                await self._intents_durable(h.node)
            return await self.data.write(h.fd, h.node.key[0], off, buf)
        except BaseException:
            # Its bytes stay in the kernel's cache, which would serve them to the next
            # reader under the source's clean verdict (tests/t5_attack21_lazy_test.py).
            h.node.stale = True
            raise

    async def _intents_durable(self, node: Inode) -> None:
        """Wait until every lazy intent of `node` is durable. Any writer's: with the
        writeback cache the kernel sends one handle's dirty pages through another."""
        while node.unsynced:
            token = node.unsynced[0]
            await self.hooks.intent_durable(token)
            if node.unsynced and node.unsynced[0] is token:
                node.unsynced = node.unsynced[1:] or None

    async def flush(self, fh: int) -> None:
        # We implement no lock operations (the kernel keeps POSIX locks locally),
        # so a flush has nothing to do here. Without the writeback cache: ENOSYS
        # once, and the kernel stops sending FLUSH on every close(2), one round
        # trip less per open+close (measured); every write was its own request.
        # With it, close(2) first writes the dirty pages back, and a writeback
        # that finds the connection broken (this server killed) is dropped
        # SILENTLY by the kernel (fs/fuse/file.c fuse_send_writepage: "Fails on
        # broken connection only", no mapping error). Only the FLUSH request that
        # follows then fails (ENOTCONN): without it close(2) returned 0 for bytes
        # that never reached the source (tests/t5_crash_test.py, 1 round in ~50).
        if not self.writeback:
            raise pyfuse3.FUSEError(errno.ENOSYS)

    @handler
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self.data.fsync(self._file(fh).fd, datasync)

    @handler
    async def release(self, fh: int) -> None:
        h = self._pop_file(fh)
        if h is None:
            raise StaleHandle(fh)
        node = h.node
        try:
            if h.writable:
                node.writers -= 1
                if node.writers == 0:
                    node.unsynced = None  # no handle left to write through
                    st = os.fstat(h.fd)
                    node.stamp = stamp_of(st)  # the kernel's cache holds what we wrote
                    if not self.hooks.trivial:
                        await self.hooks.on_last_close(self.path_of(node), h.fd, st)
        finally:
            os.close(h.fd)
            self.table.cache.unpin(node)
            self.table.maybe_drop(node)
