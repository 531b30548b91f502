"""A FUSE filesystem that loses, on a "cut", every byte not fsynced: a simulated power loss.

    python tests/cutfs.py BACKING MOUNTPOINT

It serves the tree in BACKING (directories, regular files, symlinks) from
memory. Each regular file has two versions of its content: the current one
(what reads return, what writes change) and the durable one, the file in
BACKING, which `fsync`/`fdatasync` (FUSE_FSYNC) replace with the current one.
Names (create, mkdir, symlink, unlink, rename, chmod) reach BACKING at once,
as a journaling file system commits its metadata; a new file's content is
empty there until its first fsync.

A cut = kill this process, lazily unmount MOUNTPOINT, start it again on the
same BACKING: it then serves only what was fsynced. `tests/t5_powerloss_test.py`
keeps vfile's state directory (its LMDB journal) here. LMDB reads its data
file through a read-only shared mmap, which works on FUSE without direct_io;
entries and attributes are never cached (timeouts 0), so a restarted
instance is what the kernel asks.

No hard links, no extended attributes, no special files: what a state
directory needs, nothing more. While `fsync_fault(BACKING)` exists, fsync
fails with EIO (the content stays current, not durable). While `fsync_drops(BACKING)`
exists, fsync fails with EIO as Linux's does after a failed writeback: the 4 KiB
pages written since the last fsync are marked clean, not written, and a later fsync
does not write them either unless they are written again (fsyncgate). While
`fsync_hold(BACKING)` exists, fsync waits. While `write_fault(BACKING)` exists, every
write fails with ENOSPC and changes nothing (a full disk, for as long as a test likes:
LMDB reuses its free pages, so a filled tmpfs refuses only writes that grow the file).

While `fsync_tears(BACKING)` exists (its text: "SEED FRACTION"), the next fsync of
a file named `data.mdb` (LMDB's) is a power loss in the middle of its writeback:
of the 4 KiB pages written since the last completed fsync, the first two (LMDB's
meta pages) and a random FRACTION of the others (chosen by SEED) reach BACKING,
the rest do not (appended pages dropped read back as zeros, the file keeps its
new size: its inode reached the disk); that fsync never returns, and every later
fsync waits forever too (the power is gone). `torn_report(BACKING)` then says
which pages were kept and dropped. The cut (kill, restart) serves the torn file.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import stat
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyfuse3
import trio

log = logging.getLogger("cutfs")
PAGE = 4096


@dataclass
class Node:
    ino: int
    mode: int
    parent: int
    name: bytes
    uid: int = 0
    gid: int = 0
    data: bytearray = field(default_factory=bytearray)
    target: bytes = b""
    children: dict[bytes, int] = field(default_factory=dict)
    times: int = field(default_factory=time.time_ns)
    linked: bool = True
    #: pages written since the last fsync; pages a dropping fsync lost -> durable bytes
    dirty: set[int] = field(default_factory=set)
    lost: dict[int, bytes] = field(default_factory=dict)


def _err(code: int) -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(code)


class CutFS(pyfuse3.Operations):
    def __init__(self, backing: Path) -> None:
        super().__init__()
        self.backing = backing
        root = Node(pyfuse3.ROOT_INODE, stat.S_IFDIR | 0o755, pyfuse3.ROOT_INODE, b"")
        self.nodes: dict[int, Node] = {root.ino: root}
        self.next_ino = pyfuse3.ROOT_INODE + 1
        self._load(root, os.fsencode(backing))
        self.fsyncs = 0
        self.torn = False  # a torn fsync happened: the power is gone, nothing more persists

    # --- the tree ---------------------------------------------------------------------------

    def _new(self, mode: int, parent: Node, name: bytes) -> Node:
        node = Node(self.next_ino, mode, parent.ino, name)
        self.next_ino += 1
        self.nodes[node.ino] = node
        parent.children[name] = node.ino
        return node

    def _load(self, parent: Node, where: bytes) -> None:
        for entry in os.scandir(where):
            if entry.name.endswith(b".cutfs-tmp"):
                continue  # a cut in the middle of an fsync: that fsync never returned
            st = entry.stat(follow_symlinks=False)
            name = os.fsencode(entry.name)
            node = self._new(st.st_mode, parent, name)
            node.uid, node.gid = st.st_uid, st.st_gid
            if stat.S_ISDIR(st.st_mode):
                self._load(node, os.fsencode(entry.path))
            elif stat.S_ISLNK(st.st_mode):
                node.target = os.readlink(os.fsencode(entry.path))
            else:
                node.data = bytearray(Path(os.fsdecode(entry.path)).read_bytes())

    def _path(self, node: Node) -> bytes:
        parts = []
        while node.ino != pyfuse3.ROOT_INODE:
            parts.append(node.name)
            node = self.nodes[node.parent]
        return os.path.join(os.fsencode(self.backing), *reversed(parts))

    def _get(self, ino: int) -> Node:
        try:
            return self.nodes[ino]
        except KeyError:
            raise _err(errno.ENOENT) from None

    def _child(self, parent: Node, name: bytes) -> Node:
        ino = parent.children.get(name)
        if ino is None:
            raise _err(errno.ENOENT)
        return self.nodes[ino]

    def _attr(self, node: Node) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = node.ino
        e.st_mode = node.mode
        e.st_nlink = 2 if stat.S_ISDIR(node.mode) else int(node.linked)
        e.st_uid, e.st_gid = node.uid, node.gid
        e.st_size = len(node.target) if stat.S_ISLNK(node.mode) else len(node.data)
        e.st_blksize = 4096
        e.st_blocks = (e.st_size + 511) // 512
        e.st_atime_ns = e.st_mtime_ns = e.st_ctime_ns = node.times
        e.attr_timeout = e.entry_timeout = 0
        e.generation = 0
        return e

    # --- names --------------------------------------------------------------------------------

    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attr(self._child(self._get(parent_inode), name))

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attr(self._get(inode))

    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: int | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = self._get(inode)
        if fields.update_size:
            size = attr.st_size
            if size < len(node.data):
                del node.data[size:]
            else:
                node.data.extend(bytes(size - len(node.data)))
        if fields.update_mode:
            node.mode = stat.S_IFMT(node.mode) | stat.S_IMODE(attr.st_mode)
            if node.linked and not stat.S_ISLNK(node.mode):
                os.chmod(self._path(node), stat.S_IMODE(attr.st_mode))
        if fields.update_uid:
            node.uid = attr.st_uid
        if fields.update_gid:
            node.gid = attr.st_gid
        node.times = time.time_ns()
        return self._attr(node)

    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return self._get(inode).target

    def _check_free(self, parent: Node, name: bytes) -> None:
        if name in parent.children:
            raise _err(errno.EEXIST)

    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        parent = self._get(parent_inode)
        self._check_free(parent, name)
        node = self._new(stat.S_IFDIR | (mode & 0o7777 & ~ctx.umask), parent, name)
        node.uid, node.gid = ctx.uid, ctx.gid
        os.mkdir(self._path(node), stat.S_IMODE(node.mode))
        return self._attr(node)

    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        parent = self._get(parent_inode)
        self._check_free(parent, name)
        node = self._new(stat.S_IFLNK | 0o777, parent, name)
        node.target, node.uid, node.gid = target, ctx.uid, ctx.gid
        os.symlink(target, self._path(node))
        return self._attr(node)

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext
                     ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        parent = self._get(parent_inode)
        self._check_free(parent, name)
        node = self._new(stat.S_IFREG | (mode & 0o7777 & ~ctx.umask), parent, name)
        node.uid, node.gid = ctx.uid, ctx.gid
        # The name is durable at once; the content only once fsynced (empty until then).
        fd = os.open(self._path(node), os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                     stat.S_IMODE(node.mode))
        os.close(fd)
        return pyfuse3.FileInfo(fh=node.ino), self._attr(node)

    def _unlink(self, parent: Node, name: bytes) -> Node:
        node = self._child(parent, name)
        path = self._path(node)
        del parent.children[name]
        node.linked = False
        if stat.S_ISDIR(node.mode):
            os.rmdir(path)
        else:
            os.unlink(path)
        return node

    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        node = self._child(self._get(parent_inode), name)
        if stat.S_ISDIR(node.mode):
            raise _err(errno.EISDIR)
        self._unlink(self._get(parent_inode), name)

    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        node = self._child(self._get(parent_inode), name)
        if not stat.S_ISDIR(node.mode):
            raise _err(errno.ENOTDIR)
        if node.children:
            raise _err(errno.ENOTEMPTY)
        self._unlink(self._get(parent_inode), name)

    async def rename(self, parent_inode_old: int, name_old: bytes,  # noqa: PLR0917 - pyfuse3's
                     parent_inode_new: int, name_new: bytes, flags: int,
                     ctx: pyfuse3.RequestContext) -> None:
        if flags:
            raise _err(errno.EINVAL)
        old_parent, new_parent = self._get(parent_inode_old), self._get(parent_inode_new)
        node = self._child(old_parent, name_old)
        old_path = self._path(node)
        victim = new_parent.children.get(name_new)
        if victim is not None:
            target = self.nodes[victim]
            if stat.S_ISDIR(target.mode) and target.children:
                raise _err(errno.ENOTEMPTY)
            target.linked = False
        del old_parent.children[name_old]
        new_parent.children[name_new] = node.ino
        node.parent, node.name = new_parent.ino, name_new
        os.rename(old_path, self._path(node))
        node.times = time.time_ns()

    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        return True

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_blocks = s.f_bfree = s.f_bavail = 1 << 20
        s.f_files = s.f_ffree = s.f_favail = 1 << 20
        s.f_namemax = 255
        return s

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        raise _err(pyfuse3.ENOATTR)

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return []

    # --- directories ----------------------------------------------------------------------------

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        entries = sorted(self._get(fh).children.items())
        for i, (name, ino) in enumerate(entries):
            if i >= start_id and not pyfuse3.readdir_reply(token, name,
                                                           self._attr(self.nodes[ino]), i + 1):
                return

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        return None  # names are durable at once

    # --- content ----------------------------------------------------------------------------------

    async def open(self, inode: int, flags: int,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self._get(inode)
        if flags & os.O_TRUNC:
            node.data.clear()
        return pyfuse3.FileInfo(fh=inode)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        return bytes(self._get(fh).data[off:off + size])

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        if os.path.exists(write_fault(self.backing)):
            raise _err(errno.ENOSPC)  # a full disk: nothing written
        data = self._get(fh).data
        if off > len(data):
            data.extend(bytes(off - len(data)))
        data[off:off + len(buf)] = buf
        node = self.nodes[fh]
        for page in range(off // PAGE, (off + max(len(buf), 1) - 1) // PAGE + 1):
            node.dirty.add(page)
            node.lost.pop(page, None)  # written again: dirty again
        self.nodes[fh].times = time.time_ns()
        return len(buf)

    async def flush(self, fh: int) -> None:
        return None

    async def release(self, fh: int) -> None:
        return None

    async def fsync(self, fh: int, datasync: bool) -> None:
        while os.path.exists(fsync_hold(self.backing)):  # noqa: ASYNC110 (a file, polled)
            await trio.sleep(0.005)  # a slow disk: this fsync has not returned yet
        if os.path.exists(fsync_fault(self.backing)):
            raise _err(errno.EIO)  # a failing disk: the write went in, its flush did not
        node = self._get(fh)
        if self.torn:
            await trio.sleep_forever()  # the power is gone: no fsync returns
        if not node.linked:
            return
        if node.name == b"data.mdb" and os.path.exists(fsync_tears(self.backing)):
            self._tear(node)
            await trio.sleep_forever()
        if os.path.exists(fsync_drops(self.backing)):
            self._drop(node)
            raise _err(errno.EIO)
        node.dirty.clear()
        # The durable version becomes the current one (written whole: simple, and a
        # state directory's files are small).
        tmp = self._path(node) + b".cutfs-tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, stat.S_IMODE(node.mode))
        try:
            content = bytearray(node.data)
            for page, old in node.lost.items():  # never written: still the old bytes
                keep = old[:max(0, min(PAGE, len(content) - page * PAGE))]
                content[page * PAGE:page * PAGE + len(keep)] = keep
            os.write(fd, content)
        finally:
            os.close(fd)
        os.replace(tmp, self._path(node))
        self.fsyncs += 1


    def _drop(self, node: Node) -> None:
        """A failed writeback: the dirty pages are marked clean; durable, their old bytes."""
        try:
            durable = Path(os.fsdecode(self._path(node))).read_bytes()
        except FileNotFoundError:
            durable = b""
        for page in node.dirty:
            old = durable[page * PAGE:(page + 1) * PAGE]
            node.lost.setdefault(page, old + bytes(PAGE - len(old)))
        node.dirty.clear()


    def _tear(self, node: Node) -> None:
        """A power loss in the middle of this fsync's writeback (module doc)."""
        self.torn = True
        seed, fraction = fsync_tears(self.backing).read_text().split()
        path = os.fsdecode(self._path(node))
        try:
            durable = bytearray(Path(path).read_bytes())
        except FileNotFoundError:
            durable = bytearray()
        for page, old in node.lost.items():  # a dropping fsync's pages: still old there
            durable[page * PAGE:page * PAGE + len(old)] = old
        size = len(node.data)
        if len(durable) < size:
            durable.extend(bytes(size - len(durable)))  # unwritten extents read as zeros
        del durable[size:]
        rng = random.Random(int(seed))
        kept, dropped = [], []
        for page in sorted(node.dirty):
            if page * PAGE >= size:
                continue
            if page < 2 or rng.random() < float(fraction):
                durable[page * PAGE:(page + 1) * PAGE] = node.data[page * PAGE:(page + 1) * PAGE]
                kept.append(page)
            else:
                dropped.append(page)
        tmp = path + ".cutfs-tmp"
        Path(tmp).write_bytes(durable)
        os.replace(tmp, path)
        torn_report(self.backing).write_text(
            f"kept {' '.join(map(str, kept))}\ndropped {' '.join(map(str, dropped))}\n")
        log.info("torn fsync of %s: %d pages kept, %d dropped", path, len(kept), len(dropped))


def fsync_tears(backing: Path) -> Path:
    """While this file (beside BACKING) exists, the next fsync of data.mdb tears (module doc)."""
    return backing.with_name(backing.name + ".fsync-tears")


def torn_report(backing: Path) -> Path:
    """Written by a torn fsync: the pages it kept and dropped."""
    return backing.with_name(backing.name + ".torn")


def fsync_drops(backing: Path) -> Path:
    """While this file (beside BACKING) exists, fsync fails and drops (module doc)."""
    return backing.with_name(backing.name + ".fsync-drops")


def fsync_fault(backing: Path) -> Path:
    """While this file (beside BACKING) exists, every fsync fails with EIO."""
    return backing.with_name(backing.name + ".fsync-fails")


def write_fault(backing: Path) -> Path:
    """While this file (beside BACKING) exists, every write fails with ENOSPC."""
    return backing.with_name(backing.name + ".write-fails")


def fsync_hold(backing: Path) -> Path:
    """While this file (beside BACKING) exists, every fsync waits (a slow disk)."""
    return backing.with_name(backing.name + ".fsync-holds")


def main() -> None:
    backing, mountpoint = Path(sys.argv[1]), sys.argv[2]
    logging.basicConfig(level=logging.INFO, format="cutfs: %(message)s")
    fs = CutFS(backing)
    pyfuse3.init(fs, mountpoint, {"fsname=cutfs", "subtype=cutfs"})
    log.info("serving %s on %s", backing, mountpoint)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    main()
