"""The core the Operations mixins share: the inode and handle tables, the
helpers that reach the source by descriptor, and the one errno mapping.

Invariants (see also vfile.passthrough.fs):
- Only `pyfuse3.FUSEError` leaves a handler: every handler is wrapped in
  `handler`, which maps anything else through `vfile.passthrough.errnos.errno_for`.
- No path is resolved from the source root: syscalls are relative to an
  O_PATH descriptor of a known directory, with AT_SYMLINK_NOFOLLOW /
  O_NOFOLLOW, or act on an inode's own descriptor (/proc/self/fd/N).
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import resource
import stat
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

import pyfuse3
import trio

from vfile.hooks import CallerLike, Denied, FileHooks, NoHooks
from vfile.passthrough import links, perms
from vfile.passthrough.datapath import DataPath
from vfile.passthrough.errnos import StaleHandle, StaleInode, errno_for
from vfile.passthrough.fdcache import FdCache, default_capacity, probe_handles
from vfile.passthrough.inodes import ROOT_INODE, Inode, InodeTable
from vfile.passthrough.namelock import NameLock
from vfile.passthrough.syscalls import fchown_empty, proc_path

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

#: Kernel cache lifetimes (seconds) for names and attributes. Non-zero is what
#: makes stat() and repeated opens cheap (see bench/passthrough.py); changes
#: made through the mount are seen at once (the kernel updates its cache),
#: changes made to the source behind vfile's back within this time.
ENTRY_TIMEOUT = 1.0
ATTR_TIMEOUT = 1.0

OPATH = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
#: Descriptors left to the rest of the server (journal, appliance and control
#: sockets, the metrics listener, log and state files) when the mount's open
#: files are counted against the limit: opens through the mount get EMFILE
#: first, so a flood of them cannot starve the server of its own descriptors.
HEADROOM_FDS = 64
#: threads asking the kernel to drop an entry (`forget_name`) at once, in a limiter of
#: their own: one abandoned by its caller's deadline (the kernel waits for the entry's
#: directory lock, held by a request stalled in this server) keeps its slot until the
#: kernel lets it go. In trio's default limiter (40, shared by every other
#: `to_thread.run_sync` of the server: `vfile status`, the survivor walks) enough of
#: them stalled all of those (r22). Full, a later invalidation waits for a slot within
#: its caller's deadline and is counted as not dropped (filter.actions).
INVALIDATE_THREADS = 4


def max_open_files(nofile: int, cache: int) -> int:
    """Open files and directories the mount serves at once (pure). Each open file
    costs its own descriptor and pins its inode's (so two)."""
    return max(16, (nofile - cache - HEADROOM_FDS) // 2)

#: what readlink(/proc/self/fd/N) appends to the name of an unlinked file
DELETED = b" (deleted)"


def handler(fn: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """The one errno mapping: anything but FUSEError becomes FUSEError here."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except Exception as exc:
            err, expected = errno_for(exc)
            if isinstance(exc, Denied):
                log.info("%s denied: %s", fn.__name__, exc)
            elif not expected:
                log.error("%s failed unexpectedly, answering %s", fn.__name__,
                          errno.errorcode.get(err, err), exc_info=True)
            raise pyfuse3.FUSEError(err) from None

    return wrapper


@dataclass(slots=True, eq=False)
class FileHandle:
    fd: int
    node: Inode
    writable: bool


@dataclass(slots=True, eq=False)
class DirHandle:
    node: Inode
    fd: int
    #: the listing served to this handle: offsets index into it, so they stay
    #: stable while the directory changes; refreshed when read again from 0.
    names: list[bytes] = field(default_factory=list)
    served: bool = False


def open_fd_cache(root_fd: int, capacity: int | None) -> FdCache:
    """The descriptor cache for a source root: file handles if the kernel lets us
    reopen by handle (root: CAP_DAC_READ_SEARCH), else one fd per known inode."""
    if capacity is None:
        capacity = default_capacity(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    mount_fd = os.open(proc_path(root_fd), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    why = probe_handles(root_fd, mount_fd)
    cache = FdCache(capacity, handles=why is None)
    if why is None:
        cache.add_mount(mount_fd)
        log.info("descriptor cache: %d O_PATH descriptors, reopened by file handle",
                 cache.capacity)
    else:
        os.close(mount_fd)
        log.warning("cannot reopen files by handle (%s; needs CAP_DAC_READ_SEARCH and a "
                    "filesystem that exports handles): one descriptor per inode the kernel "
                    "knows, so the descriptor limit bounds the files in use", why)
    return cache


class OpsCore(pyfuse3.Operations):
    """State and helpers; the handlers live in the mixins and in vfile.passthrough.fs."""

    supports_dot_lookup = False  # we are not NFS-exported; never resolve '..'

    def __init__(self, root_fd: int, root_path: bytes, hooks: FileHooks | None = None,
                 *, writeback: bool = True, xattr: bool = True,
                 fd_cache: int | None = None, cache_timeout: float | None = None) -> None:
        super().__init__()
        # How long the kernel keeps an entry and attributes (a negative entry keeps
        # ENTRY_TIMEOUT: a file made behind our back shows up within a second).
        self.entry_timeout = self.attr_timeout = (
            ENTRY_TIMEOUT if cache_timeout is None else cache_timeout)
        self.xattr = xattr
        # FUSE_POSIX_ACL: without it the kernel checks mode bits only, so an ACL entry
        # that denies a user (u:bob:--- on a 0644 file) would not stop bob through the
        # mount. With -o noxattr the kernel cannot read ACLs at all (see README).
        self.enable_acl = xattr
        self.enable_writeback_cache = writeback
        self.writeback = writeback
        self.root_path = os.path.realpath(root_path)
        self.hooks: FileHooks = hooks if hooks is not None else NoHooks()
        self.table = InodeTable(root_fd, os.fstat(root_fd), cache=open_fd_cache(root_fd, fd_cache))
        # Per-file state in the hooks (the gate's verdict cache) follows the inodes the
        # kernel knows, so it cannot grow with files long deleted.
        self.table.on_drop = self.hooks.forget_file
        self.hooks.bind_kernel(self.forget_name)
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.max_open = max_open_files(nofile, self.table.cache.capacity)
        self._refusals = 0
        self.files: dict[int, FileHandle] = {}
        #: inode number -> the descriptors of its open handles (getxattr reads by one)
        self.handle_fds: dict[int, list[int]] = {}
        self.dirs: dict[int, DirHandle] = {}
        self._next_dh = 1
        self.data = DataPath()
        self._invalidating = trio.CapacityLimiter(INVALIDATE_THREADS)  # (forget_name)
        #: name operations against a directory moved meanwhile (vfile.passthrough.namelock)
        self.names = NameLock()

    # -- helpers ------------------------------------------------------------

    def path_of(self, node: Inode) -> bytes:
        """Source-relative path of an inode, for hooks and logs (not for syscalls)."""
        if node.ino == ROOT_INODE:
            return b""
        target = os.readlink(proc_path(node.fd).encode())
        root = self.root_path
        if target.startswith(root + b"/"):
            rel = target[len(root) + 1:]
        elif node.name is not None and (parent := self.table.find_ino(node.parent)) is not None:
            # Reopened from its handle, the kernel may have no path for a file
            # (a disconnected dentry reads as "/"): where we last saw it.
            return self._child_path(parent, node.name)
        else:
            rel = target  # outside the source: moved out behind our back; say where
        if node.kind == stat.S_IFREG and target.endswith(DELETED):
            # The name the inode was first reached by is gone: a hard link may still
            # name it, and a journal entry under "x (deleted)" would be dropped by the
            # drain as gone, or answered by a decoy put at that name (issue 13).
            live = self.live_name(node, dead=rel)
            if live is not None:
                return live
        return rel

    def live_name(self, node: Inode, dead: bytes = b"") -> bytes | None:
        """A live source-relative name of a regular file other than `dead`, from the
        names the kernel reached it by, else by walking the source (a link made
        behind our back; O(tree), on this thread: only for an open of a file whose
        first name is gone while others were never seen); None once it has none."""
        known = self.known_live_name(node, dead)
        if known is not None or os.fstat(node.fd).st_nlink == 0:
            return known
        if dead.endswith(DELETED) and links.reaches(self.table.get(ROOT_INODE).fd, dead,
                                                     node.key):
            return dead  # a live file whose name really ends in " (deleted)"
        return links.find_name(self.table.get(ROOT_INODE).fd, node.key, exclude=dead)

    def known_live_name(self, node: Inode, dead: bytes = b"") -> bytes | None:
        """A live name of `node` other than `dead` among those the kernel reached it by."""
        for parent_ino, name in reversed(node.names or ()):
            try:
                parent = self.table.get(parent_ino)
            except StaleInode:
                continue
            if links.reaches(parent.fd, name, node.key):
                path = self._child_path(parent, name)
                if path != dead:
                    return path
        return None

    async def forget_name(self, path: bytes) -> None:
        """Make the kernel drop its entry for `path` (source-relative), a name the
        server itself removed from the source (the drain's infected actions): the
        kernel would otherwise resolve it to the moved file for `entry_timeout`."""
        head, _, name = path.rpartition(b"/")
        root = self.table.find_ino(ROOT_INODE)
        if root is None:
            return  # unmounting: the kernel forgot the root, and every entry with it
        try:
            st = os.stat(head or b".", dir_fd=root.fd)
        except OSError:
            return  # the directory went too: the kernel's entries under it go with it
        parent = self.table.find(st)
        if parent is None:
            return  # a directory the kernel never looked up holds no entry of it
        # The blocking call in a thread, not invalidate_entry_async: the caller learns
        # when the entry is gone (and sets the deadline: vfile.filter.actions), and one
        # stuck entry cannot hold up a queue of others. It waits only for requests on
        # that directory, which this loop goes on serving; its own limiter keeps an
        # abandoned one from taking the other thread calls' slots (INVALIDATE_THREADS).
        try:
            await trio.to_thread.run_sync(pyfuse3.invalidate_entry, parent.ino, name,
                                          abandon_on_cancel=True,
                                          limiter=self._invalidating)
        except OSError as err:
            if err.errno != errno.ENOENT:  # ENOENT: the kernel held no such entry
                log.warning("could not drop the kernel's entry for %r: %s", path, err)

    def _child_path(self, parent: Inode, name: bytes) -> bytes:
        base = self.path_of(parent)
        return base + b"/" + name if base else name

    def _entry(self, node: Inode, st: os.stat_result) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = node.ino
        e.generation = 0
        e.entry_timeout = self.entry_timeout
        e.attr_timeout = self.attr_timeout
        e.st_mode = st.st_mode
        e.st_nlink = st.st_nlink
        e.st_uid = st.st_uid
        e.st_gid = st.st_gid
        e.st_rdev = st.st_rdev
        e.st_size = st.st_size
        e.st_blksize = st.st_blksize
        e.st_blocks = st.st_blocks
        e.st_atime_ns = st.st_atime_ns
        e.st_mtime_ns = st.st_mtime_ns
        e.st_ctime_ns = st.st_ctime_ns
        return e

    def _known(self, parent: Inode, name: bytes,
               dir_fd: int | None = None) -> tuple[Inode, os.stat_result]:
        """The inode for `name` in `parent` (reached by `dir_fd` if given, else by
        the parent's own descriptor), registered but not yet referenced."""
        pfd = parent.fd if dir_fd is None else dir_fd
        st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        node = self.table.find(st)
        if node is None:
            if not self.table.cache.room_for_new():
                raise OSError(errno.EMFILE, "descriptor cache full of inodes it cannot evict")
            fd = os.open(name, OPATH, dir_fd=pfd)
            try:
                st = os.fstat(fd)  # what we opened, even if the name was swapped
                node = self.table.find(st)
            except BaseException:
                os.close(fd)
                raise
            if node is None:
                node = self.table.add(st, fd)
            else:
                os.close(fd)
        if node.kind != stat.S_IFDIR:
            node.seen_as(parent.ino, name)
        if st.st_nlink > 1 and stat.S_ISREG(st.st_mode):
            node.saw_name(parent.ino, name)  # another name of a hard-linked file
        return node, st

    def _adopt(self, fd: int, parent: Inode, name: bytes) -> tuple[Inode, os.stat_result]:
        """Register a new object `name` in `parent` from an O_PATH fd we own; one
        kernel reference."""
        st = os.fstat(fd)
        node = self.table.find(st)
        if node is None:
            node = self.table.add(st, fd)
        else:
            os.close(fd)
        if node.kind != stat.S_IFDIR:
            node.seen_as(parent.ino, name)
        node.lookups += 1
        return node, st

    def _give_to_caller(self, fd: int, parent: Inode, ctx: CallerLike,
                        mode: int | None = None) -> None:
        """chown a new object (by its fd) to the caller; restore set-id bits chown clears."""
        pst = os.fstat(parent.fd)
        uid, gid = perms.owner_for(pst.st_mode, pst.st_gid, ctx.uid, ctx.gid)
        st = os.fstat(fd)
        if (st.st_uid, st.st_gid) != (uid, gid):
            fchown_empty(fd, uid, gid)
            if mode is not None and mode & (stat.S_ISUID | stat.S_ISGID) \
                    and not stat.S_ISDIR(st.st_mode) and not stat.S_ISLNK(st.st_mode):
                os.chmod(proc_path(fd), mode)

    def _check_room(self) -> None:
        """EMFILE for one more open file or directory beyond `max_open`."""
        if len(self.files) + len(self.dirs) < self.max_open:
            return
        self._refusals += 1
        if self._refusals == 1 or self._refusals % 1000 == 0:
            log.warning("%d files and directories open through the mount, the most this "
                        "server's descriptor limit allows: opens get EMFILE (%d so far)",
                        self.max_open, self._refusals)
        raise OSError(errno.EMFILE, "too many files open through the mount")

    def _add_file(self, fd: int, node: Inode, writable: bool) -> None:
        self.files[fd] = FileHandle(fd, node, writable)
        self.handle_fds.setdefault(node.ino, []).append(fd)

    def _pop_file(self, fh: int) -> FileHandle | None:
        h = self.files.pop(fh, None)
        if h is not None:
            fds = self.handle_fds[h.node.ino]
            fds.remove(fh)
            if not fds:
                del self.handle_fds[h.node.ino]
        return h

    def _file(self, fh: int) -> FileHandle:
        try:
            return self.files[fh]
        except KeyError:
            raise StaleHandle(fh) from None

    def close(self) -> None:
        """After unmount: close every descriptor (the kernel sends no more forgets)."""
        self.handle_fds.clear()
        for fh in list(self.files):
            os.close(self.files.pop(fh).fd)
        for dh in list(self.dirs):
            os.close(self.dirs.pop(dh).fd)
        self.table.close_all()
