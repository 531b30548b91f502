"""The Operations called directly, without the kernel: handlers, hooks, errnos.

A fake request context is any object with uid/gid/pid/umask; the source is a
temp directory. Readdir needs a kernel token and is tested through a mount (t4).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pyfuse3
import pytest

from vfile.hooks import Denied, NoHooks, RequestCtx
from vfile.passthrough.fs import VFileOperations
from vfile.passthrough.inodes import ROOT_INODE


@dataclass
class Ctx:
    uid: int = 0
    gid: int = 0
    pid: int = os.getpid()
    umask: int = 0o022


@dataclass
class RecordingHooks:
    trivial: bool = False
    calls: list[tuple[str, object]] = field(default_factory=list)
    deny_open: bool = False
    explode: bool = False

    def allows_cached_nowait(self, st: os.stat_result, flags: int) -> bool:
        return False  # every open reaches on_open, so the test sees it

    def forget_file(self, key: tuple[int, int]) -> None:
        pass

    def bind_kernel(self, forget_name: Callable[[bytes], Awaitable[None]]) -> None:
        self.forget_name = forget_name

    async def on_open(self, path: bytes, fd: int, st: os.stat_result, flags: int,
                      ctx: RequestCtx, *, unflushed: bool = False) -> None:
        self.calls.append(("open", path))
        os.fstat(fd)  # the fd is live during the hook
        if self.explode:
            raise RuntimeError("a bug in a hook")
        if self.deny_open:
            raise Denied(errno.EACCES, "infected: Test-Signature")

    async def on_write_intent(self, path: bytes, st: os.stat_result | None,
                              ctx: RequestCtx, *, lazy: bool = False,
                              moved_from: bytes | None = None) -> object:
        self.calls.append(("intent", path))
        return None

    async def intent_durable(self, token: object) -> None:
        return None

    def intent_pending(self, token: object) -> bool:
        return False

    def release_intent(self, token: object) -> None:
        return None

    async def on_last_close(self, path: bytes, fd: int | None, st: os.stat_result) -> None:
        self.calls.append(("last_close", path))

    async def on_unlink(self, path: bytes, survivor: bytes | None = None,
                        gone: tuple[int, int] | None = None) -> None:
        self.calls.append(("unlink", path))

    def name_dropping(self, st: os.stat_result) -> object:
        return None

    async def on_name_dropped(self, survivor: bytes, before: os.stat_result,
                              noted: object = None) -> None:
        self.calls.append(("name_dropped", survivor))

    async def on_rename(self, old: bytes, new: bytes,
                        gone: tuple[int, int] | None = None) -> None:
        self.calls.append(("rename", (old, new)))

    async def on_exchange(self, a: bytes, b: bytes) -> None:
        self.calls.append(("exchange", (a, b)))

    async def on_metadata_change(self, path: bytes, st: os.stat_result, ctx: RequestCtx,
                                 change: Callable[[], os.stat_result], *,
                                 writing: bool) -> None:
        self.calls.append(("metadata", path))
        change()


@pytest.fixture
def src(tmp_path: Path) -> Path:
    (tmp_path / "src").mkdir()
    return tmp_path / "src"


def fields(**on: bool) -> SimpleNamespace:
    """A stand-in for pyfuse3.SetattrFields (whose attributes are read-only)."""
    names = ("atime", "mtime", "ctime", "mode", "uid", "gid", "size")
    return SimpleNamespace(**{f"update_{n}": on.get(n, False) for n in names})


def make_ops(src: Path, hooks: object = None) -> VFileOperations:
    fd = os.open(src, os.O_PATH | os.O_DIRECTORY)
    return VFileOperations(fd, os.fsencode(src), hooks or NoHooks())  # type: ignore[arg-type]


async def test_create_write_read_release(src: Path) -> None:
    ops = make_ops(src)
    fi, attr = await ops.create(ROOT_INODE, b"f", stat.S_IFREG | 0o666, os.O_RDWR, Ctx())
    assert stat.S_IMODE(attr.st_mode) == 0o644  # umask applied
    assert await ops.write(fi.fh, 0, b"hello world") == 11
    assert await ops.read(fi.fh, 6, 100) == b"world"
    # With the writeback cache (the default) FLUSH is answered: it is what makes
    # close(2) fail once the server is gone (tests/t5_crash_test.py).
    await ops.flush(fi.fh)
    await ops.fsync(fi.fh, True)
    await ops.release(fi.fh)
    assert (src / "f").read_bytes() == b"hello world"
    entry = await ops.lookup(ROOT_INODE, b"f", Ctx())
    assert entry.st_ino == attr.st_ino
    assert (await ops.getattr(entry.st_ino, Ctx())).st_size == 11
    ops.close()


async def test_flush_is_enosys_without_the_writeback_cache(src: Path) -> None:
    fd = os.open(src, os.O_PATH | os.O_DIRECTORY)
    ops = VFileOperations(fd, os.fsencode(src), NoHooks(), writeback=False)
    fi, _ = await ops.create(ROOT_INODE, b"f", stat.S_IFREG | 0o666, os.O_RDWR, Ctx())
    with pytest.raises(pyfuse3.FUSEError) as info:
        await ops.flush(fi.fh)  # ENOSYS: the kernel then stops sending FLUSH
    assert info.value.errno == errno.ENOSYS
    await ops.release(fi.fh)
    ops.close()


async def test_created_objects_belong_to_the_caller(src: Path) -> None:
    ops = make_ops(src)
    ctx = Ctx(uid=65534, gid=65534, umask=0o077)
    fi, _ = await ops.create(ROOT_INODE, b"f", stat.S_IFREG | 0o666, os.O_WRONLY, ctx)
    await ops.release(fi.fh)
    await ops.mkdir(ROOT_INODE, b"d", stat.S_IFDIR | 0o777, ctx)
    await ops.symlink(ROOT_INODE, b"l", b"f", ctx)
    await ops.mknod(ROOT_INODE, b"p", stat.S_IFIFO | 0o666, 0, ctx)
    for name, mode in [("f", 0o600), ("d", 0o700), ("p", 0o600)]:
        st = os.lstat(src / name)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (65534, 65534, mode), name
    assert os.lstat(src / "l").st_uid == 65534
    ops.close()


async def test_setgid_directory_gives_its_group(src: Path) -> None:
    os.chmod(src, 0o2777)
    os.chown(src, 0, 4242)
    ops = make_ops(src)
    await ops.mkdir(ROOT_INODE, b"d", 0o755, Ctx(uid=1000, gid=1000, umask=0))
    st = os.stat(src / "d")
    assert (st.st_uid, st.st_gid) == (1000, 4242)
    assert st.st_mode & stat.S_ISGID
    ops.close()


async def test_hooks_are_called_in_order(src: Path) -> None:
    hooks = RecordingHooks()
    ops = make_ops(src, hooks)
    fi, attr = await ops.create(ROOT_INODE, b"f", 0o644, os.O_WRONLY, Ctx())
    assert hooks.calls == [("intent", b"f")]
    await ops.write(fi.fh, 0, b"x")
    await ops.release(fi.fh)
    assert hooks.calls[-1] == ("last_close", b"f")
    hooks.calls.clear()
    fi = await ops.open(attr.st_ino, os.O_RDONLY, Ctx())
    await ops.release(fi.fh)
    assert hooks.calls == [("open", b"f")]  # a reader's close is not a last writer close
    hooks.calls.clear()
    sub = await ops.mkdir(ROOT_INODE, b"d", 0o755, Ctx())
    await ops.rename(ROOT_INODE, b"f", sub.st_ino, b"g", 0, Ctx())
    # an intent even with nothing overwritten: the move changes the file's ctime
    assert hooks.calls == [("intent", b"d/g"), ("rename", (b"f", b"d/g"))]
    hooks.calls.clear()
    await ops.unlink(sub.st_ino, b"g", Ctx())
    assert hooks.calls == [("unlink", b"d/g")]
    ops.close()


async def test_truncate_and_rename_onto_record_intent_first(src: Path) -> None:
    (src / "a").write_bytes(b"aaaa")
    (src / "b").write_bytes(b"bb")
    hooks = RecordingHooks()
    ops = make_ops(src, hooks)
    a = await ops.lookup(ROOT_INODE, b"a", Ctx())
    attr = pyfuse3.EntryAttributes()
    attr.st_size = 1
    await ops.setattr(a.st_ino, attr, fields(size=True), None, Ctx())
    assert (src / "a").read_bytes() == b"a"
    assert hooks.calls == [("intent", b"a"), ("last_close", b"a")]
    hooks.calls.clear()
    await ops.rename(ROOT_INODE, b"a", ROOT_INODE, b"b", 0, Ctx())
    assert hooks.calls == [("intent", b"b"), ("rename", (b"a", b"b"))]
    ops.close()


async def test_denied_open_maps_to_its_errno_and_closes_the_fd(src: Path) -> None:
    (src / "f").write_bytes(b"x")
    hooks = RecordingHooks(deny_open=True)
    ops = make_ops(src, hooks)
    entry = await ops.lookup(ROOT_INODE, b"f", Ctx())
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(pyfuse3.FUSEError) as info:
        await ops.open(entry.st_ino, os.O_RDONLY, Ctx())
    assert info.value.errno == errno.EACCES
    assert len(os.listdir("/proc/self/fd")) == before
    assert ops.files == {}
    ops.close()


async def test_a_bug_in_a_hook_is_eio(src: Path) -> None:
    (src / "f").write_bytes(b"x")
    ops = make_ops(src, RecordingHooks(explode=True))
    entry = await ops.lookup(ROOT_INODE, b"f", Ctx())
    with pytest.raises(pyfuse3.FUSEError) as info:
        await ops.open(entry.st_ino, os.O_RDONLY, Ctx())
    assert info.value.errno == errno.EIO
    ops.close()


@pytest.mark.parametrize("name", [b"..", b"a/b", b"../etc"])
async def test_hostile_names_never_reach_a_syscall(src: Path, name: bytes) -> None:
    ops = make_ops(src)
    for call in (ops.lookup(ROOT_INODE, name, Ctx()),
                 ops.mkdir(ROOT_INODE, name, 0o755, Ctx()),
                 ops.unlink(ROOT_INODE, name, Ctx())):
        with pytest.raises(pyfuse3.FUSEError) as info:
            await call
        assert info.value.errno == errno.EINVAL
    ops.close()


async def test_missing_name_is_a_cacheable_negative_entry(src: Path) -> None:
    ops = make_ops(src)
    entry = await ops.lookup(ROOT_INODE, b"nope", Ctx())
    assert entry.st_ino == 0 and entry.entry_timeout > 0
    with pytest.raises(pyfuse3.FUSEError) as info:
        await ops.unlink(ROOT_INODE, b"nope", Ctx())
    assert info.value.errno == errno.ENOENT
    ops.close()


async def test_symlinks_are_never_followed(src: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"outside")
    os.symlink(secret, src / "escape")
    os.symlink("/", src / "rootlink")
    ops = make_ops(src)
    entry = await ops.lookup(ROOT_INODE, b"escape", Ctx())
    assert stat.S_ISLNK(entry.st_mode)
    assert await ops.readlink(entry.st_ino, Ctx()) == os.fsencode(secret)
    with pytest.raises(pyfuse3.FUSEError):
        await ops.open(entry.st_ino, os.O_RDONLY, Ctx())
    attr = pyfuse3.EntryAttributes()
    attr.st_mode = 0o777
    with pytest.raises(pyfuse3.FUSEError):
        await ops.setattr(entry.st_ino, attr, fields(mode=True), None, Ctx())
    assert stat.S_IMODE(os.stat(secret).st_mode) != 0o777
    root_link = await ops.lookup(ROOT_INODE, b"rootlink", Ctx())
    with pytest.raises(pyfuse3.FUSEError):
        await ops.lookup(root_link.st_ino, b"etc", Ctx())  # not a directory to us
    ops.close()


async def test_hard_links_share_an_inode_and_forget_closes(src: Path) -> None:
    (src / "a").write_bytes(b"x")
    ops = make_ops(src)
    a = await ops.lookup(ROOT_INODE, b"a", Ctx())
    b = await ops.link(a.st_ino, ROOT_INODE, b"b", Ctx())
    assert a.st_ino == b.st_ino and b.st_nlink == 2
    assert len(ops.table) == 2
    await ops.forget([(a.st_ino, 2)])
    assert len(ops.table) == 1
    ops.close()


async def test_utimens_omit_and_chmod_chown(src: Path) -> None:
    (src / "f").write_bytes(b"x")
    os.utime(src / "f", ns=(5_000_000_000, 7_000_000_000))
    ops = make_ops(src)
    f = await ops.lookup(ROOT_INODE, b"f", Ctx())
    attr = pyfuse3.EntryAttributes()
    attr.st_mtime_ns = 9_000_000_123
    attr.st_mode = 0o640
    attr.st_uid, attr.st_gid = 123, 456
    out = await ops.setattr(f.st_ino, attr, fields(mtime=True, mode=True, uid=True), None,
                            Ctx())
    st = os.stat(src / "f")
    assert (st.st_atime_ns, st.st_mtime_ns) == (5_000_000_000, 9_000_000_123)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 123, 0)
    assert out.st_uid == 123
    ops.close()


async def test_rename_flags(src: Path) -> None:
    (src / "a").write_bytes(b"A")
    (src / "b").write_bytes(b"B")
    ops = make_ops(src)
    with pytest.raises(pyfuse3.FUSEError) as info:
        await ops.rename(ROOT_INODE, b"a", ROOT_INODE, b"b", pyfuse3.RENAME_NOREPLACE, Ctx())
    assert info.value.errno == errno.EEXIST
    await ops.rename(ROOT_INODE, b"a", ROOT_INODE, b"b", pyfuse3.RENAME_EXCHANGE, Ctx())
    assert (src / "a").read_bytes() == b"B" and (src / "b").read_bytes() == b"A"
    ops.close()


async def test_xattrs_statfs_access(src: Path) -> None:
    (src / "f").write_bytes(b"x")
    os.chmod(src / "f", 0o600)
    ops = make_ops(src)
    f = await ops.lookup(ROOT_INODE, b"f", Ctx())
    await ops.setxattr(f.st_ino, b"user.k", b"v", Ctx())
    assert await ops.getxattr(f.st_ino, b"user.k", Ctx()) == b"v"
    assert b"user.k" in await ops.listxattr(f.st_ino, Ctx())
    await ops.removexattr(f.st_ino, b"user.k", Ctx())
    with pytest.raises(pyfuse3.FUSEError) as info:
        await ops.getxattr(f.st_ino, b"user.k", Ctx())
    assert info.value.errno == pyfuse3.ENOATTR
    sv = await ops.statfs(Ctx())
    assert sv.f_bsize == os.statvfs(src).f_bsize
    assert await ops.access(f.st_ino, os.R_OK, Ctx()) is True
    assert await ops.access(f.st_ino, os.R_OK, Ctx(uid=65534, gid=65534)) is False
    ops.close()
