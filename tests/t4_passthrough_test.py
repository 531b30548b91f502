"""Every passthrough operation through a real FUSE mount (one mount per module,
a fresh subdirectory per test)."""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mounting import Server, mounted

from vfile.passthrough.syscalls import RENAME_EXCHANGE, RENAME_NOREPLACE, renameat2, utimens_empty

pytestmark = pytest.mark.mount

NOBODY = 65534
_counter = itertools.count()


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    # Not under pytest's tmp dir: that is 0700, and tests act as a second user.
    base = Path(tempfile.mkdtemp(prefix="vfile-t4-"))
    try:
        os.chmod(base, 0o755)
        (base / "src").mkdir()
        (base / "mnt").mkdir()
        os.chmod(base / "src", 0o777)
        with mounted(base / "src", base / "mnt", "-o", "allow_other") as srv:
            yield srv
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def dirs(server: Server) -> tuple[Path, Path]:
    """(directory in the source, the same directory through the mount)."""
    name = f"t{next(_counter)}"
    (server.mountpoint / name).mkdir()
    os.chmod(server.mountpoint / name, 0o777)
    return server.source / name, server.mountpoint / name


def as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                           "--clear-groups", *argv], capture_output=True, text=True,
                          check=False, timeout=30)


def test_root_is_inode_one_and_inode_numbers_are_our_own(server: Server) -> None:
    assert os.stat(server.mountpoint).st_ino == 1


def test_files_write_read_truncate_fsync(dirs: tuple[Path, Path]) -> None:
    src, mnt = dirs
    data = os.urandom(3 * 1024 * 1024 + 17)
    (mnt / "big").write_bytes(data)
    assert hashlib.sha256((src / "big").read_bytes()).digest() == hashlib.sha256(data).digest()
    assert (mnt / "big").read_bytes() == data
    with open(mnt / "f", "wb") as f:
        f.write(b"hello")
        f.flush()
        os.fsync(f.fileno())
        os.fdatasync(f.fileno())
    with open(mnt / "f", "ab") as f:
        f.write(b" world")
    assert (src / "f").read_bytes() == b"hello world"
    with open(mnt / "f", "r+b") as f:
        f.seek(20)
        f.write(b"!")
        f.truncate(8)
        os.pwrite(f.fileno(), b"W", 6)
    assert (src / "f").read_bytes() == b"hello Wo"
    os.truncate(mnt / "f", 2)
    assert (mnt / "f").read_bytes() == b"he"
    with open(mnt / "f", "wb"):  # O_TRUNC
        pass
    assert (src / "f").stat().st_size == 0


def test_directories_names_and_links(dirs: tuple[Path, Path]) -> None:
    src, mnt = dirs
    (mnt / "d" / "e").mkdir(parents=True)
    (mnt / "d" / "e" / "f").write_text("x")
    with pytest.raises(OSError) as info:
        (mnt / "d").rmdir()
    assert info.value.errno == errno.ENOTEMPTY
    os.rename(mnt / "d" / "e" / "f", mnt / "g")
    assert (src / "g").read_text() == "x" and not (src / "d" / "e" / "f").exists()
    os.link(mnt / "g", mnt / "h")
    assert os.stat(mnt / "g").st_ino == os.stat(mnt / "h").st_ino
    assert os.stat(mnt / "h").st_nlink == 2
    assert os.stat(src / "g").st_ino == os.stat(src / "h").st_ino
    os.symlink("g", mnt / "s")
    assert os.readlink(mnt / "s") == "g"
    assert (mnt / "s").read_text() == "x"  # the kernel follows it, inside the mount
    os.unlink(mnt / "h")
    assert os.stat(mnt / "g").st_nlink == 1
    (mnt / "d" / "e").rmdir()
    assert sorted(os.listdir(mnt)) == ["d", "g", "s"]
    assert sorted(os.listdir(mnt)) == sorted(os.listdir(src))


def test_special_files(dirs: tuple[Path, Path]) -> None:
    src, mnt = dirs
    os.mkfifo(mnt / "fifo", 0o640)
    assert stat.S_ISFIFO(os.stat(src / "fifo").st_mode)
    os.mknod(mnt / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    st = os.stat(mnt / "null")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    assert os.stat(src / "null").st_rdev == os.makedev(1, 3)


def test_attributes(dirs: tuple[Path, Path]) -> None:
    src, mnt = dirs
    (mnt / "f").write_text("x")
    os.chmod(mnt / "f", 0o604)
    os.chown(mnt / "f", 123, 456)
    st = os.stat(src / "f")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o604, 123, 456)
    os.utime(mnt / "f", ns=(1_000_000_001, 2_000_000_002))
    assert os.stat(src / "f").st_mtime_ns == 2_000_000_002
    # UTIME_OMIT for mtime: only atime changes.
    fd = os.open(mnt / "f", os.O_PATH)
    try:
        utimens_empty(fd, 5_000_000_000, None)
    finally:
        os.close(fd)
    st = os.stat(src / "f")
    assert (st.st_atime_ns, st.st_mtime_ns) == (5_000_000_000, 2_000_000_002)
    before = time.time()
    os.utime(mnt / "f")  # UTIME_NOW
    assert os.stat(src / "f").st_mtime >= before - 2
    os.symlink("f", mnt / "l")
    os.chown(mnt / "l", 7, 7, follow_symlinks=False)
    assert os.lstat(src / "l").st_uid == 7 and os.stat(src / "f").st_uid == 123


def test_xattrs_and_statfs(dirs: tuple[Path, Path]) -> None:
    src, mnt = dirs
    (mnt / "f").write_text("x")
    os.setxattr(mnt / "f", "user.vfile", b"value")
    assert os.getxattr(src / "f", "user.vfile") == b"value"
    assert os.getxattr(mnt / "f", "user.vfile") == b"value"
    assert "user.vfile" in os.listxattr(mnt / "f")
    os.removexattr(mnt / "f", "user.vfile")
    with pytest.raises(OSError) as info:
        os.getxattr(mnt / "f", "user.vfile")
    assert info.value.errno == errno.ENODATA
    native, ours = os.statvfs(src), os.statvfs(mnt)
    assert (ours.f_bsize, ours.f_blocks, ours.f_files) == (native.f_bsize, native.f_blocks,
                                                           native.f_files)


def test_noxattr_turns_extended_attributes_off_and_leaves_data_alone(tmp_path: Path) -> None:
    """-o noxattr: the daemon answers ENOSYS once and the kernel stops sending xattr
    requests (so no security.capability round trip per write); callers get EOPNOTSUPP,
    the source's own xattrs are untouched, data I/O is unchanged."""
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    src.mkdir()
    mnt.mkdir()
    (src / "f").write_bytes(b"x")
    os.setxattr(src / "f", "user.kept", b"source value")
    with mounted(src, mnt, "--no-scan", "-o", "noxattr"):
        for call in (lambda: os.getxattr(mnt / "f", "user.kept"),
                     lambda: os.setxattr(mnt / "f", "user.new", b"v"),
                     lambda: os.listxattr(mnt / "f"),
                     lambda: os.getxattr(mnt / "f", "security.capability")):
            with pytest.raises(OSError) as info:
                call()
            assert info.value.errno == errno.EOPNOTSUPP
        with open(mnt / "f", "r+b") as f:
            for i in range(100):
                f.write(b"%04d" % i)
        assert (src / "f").read_bytes() == b"".join(b"%04d" % i for i in range(100))
    assert os.getxattr(src / "f", "user.kept") == b"source value"
    assert "user.new" not in os.listxattr(src / "f")


def test_rename_exchange_and_noreplace(dirs: tuple[Path, Path]) -> None:
    src, mnt = dirs
    (mnt / "a").write_text("A")
    (mnt / "b").write_text("B")
    fd = os.open(mnt, os.O_PATH | os.O_DIRECTORY)
    try:
        with pytest.raises(OSError) as info:
            renameat2(fd, b"a", fd, b"b", RENAME_NOREPLACE)
        assert info.value.errno == errno.EEXIST
        renameat2(fd, b"a", fd, b"c", RENAME_NOREPLACE)
        renameat2(fd, b"c", fd, b"b", RENAME_EXCHANGE)
    finally:
        os.close(fd)
    assert (src / "b").read_text() == "A" and (src / "c").read_text() == "B"
    assert (mnt / "b").read_text() == "A" and (mnt / "c").read_text() == "B"


def test_created_things_belong_to_the_caller(dirs: tuple[Path, Path]) -> None:
    src, mnt = dirs
    script = (f"import os; os.umask(0o027); p={str(mnt)!r}; "
              "open(p+'/f','w').write('x'); os.mkdir(p+'/d'); os.symlink('f', p+'/l'); "
              "os.mkfifo(p+'/p')")
    res = as_nobody("/usr/bin/python3", "-c", script)
    assert res.returncode == 0, res.stderr
    for name, mode in [("f", 0o640), ("d", 0o750), ("p", 0o640)]:
        st = os.lstat(src / name)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (NOBODY, NOBODY, mode), name
    assert os.lstat(src / "l").st_uid == NOBODY


def test_permissions_are_enforced_for_other_users(dirs: tuple[Path, Path]) -> None:
    src, mnt = dirs
    (mnt / "secret").write_text("s")
    os.chmod(mnt / "secret", 0o600)
    (mnt / "open").write_text("o")
    (mnt / "closed").mkdir(mode=0o755)
    res = as_nobody("cat", str(mnt / "open"))
    assert res.returncode == 0, res.stderr  # the user can get there at all
    res = as_nobody("cat", str(mnt / "secret"))
    assert res.returncode != 0 and "Permission denied" in res.stderr
    res = as_nobody("touch", str(mnt / "closed" / "new"))
    assert res.returncode != 0 and "Permission denied" in res.stderr
    res = as_nobody("chmod", "777", str(mnt / "secret"))
    assert res.returncode != 0
    assert not (src / "closed" / "new").exists()
    assert stat.S_IMODE(os.stat(src / "secret").st_mode) == 0o600


def test_symlink_out_of_the_source_is_a_symlink_not_a_door(dirs: tuple[Path, Path],
                                                           tmp_path: Path) -> None:
    src, mnt = dirs
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "file").write_text("outside")
    os.symlink(outside, src / "door")
    assert stat.S_ISLNK(os.lstat(mnt / "door").st_mode)
    assert os.readlink(mnt / "door") == str(outside)
    os.chown(mnt / "door", 9, 9, follow_symlinks=False)
    assert os.stat(outside).st_uid == 0  # the target was not touched
    # A relative link climbing out resolves in the *mount's* namespace.
    os.symlink("../../..", src / "up")
    assert os.readlink(mnt / "up") == "../../.."


def test_readdir_of_5000_entries_is_complete_and_stable(dirs: tuple[Path, Path]) -> None:
    src, mnt = dirs
    big = src / "big"
    big.mkdir()
    names = {f"entry-{i:05d}" for i in range(5000)}
    for n in names:
        (big / n).touch()
    assert set(os.listdir(mnt / "big")) == names
    # Change the directory while a listing is under way: no duplicates, and
    # every entry that stays is listed.
    seen: list[str] = []
    with os.scandir(mnt / "big") as it:
        for i, entry in enumerate(it):
            seen.append(entry.name)
            if i == 100:
                for j in range(200, 300):
                    os.unlink(big / f"entry-{j:05d}")
                for j in range(50):
                    (big / f"new-{j}").touch()
    assert len(seen) == len(set(seen))
    stayed = names - {f"entry-{j:05d}" for j in range(200, 300)}
    assert stayed <= set(seen)


def test_changes_behind_our_back_are_seen(dirs: tuple[Path, Path]) -> None:
    src, mnt = dirs
    (mnt / "f").write_text("old content")
    assert (mnt / "f").read_text() == "old content"  # now in the kernel's page cache
    (src / "f").write_text("new content")
    os.utime(src / "f", ns=(1, 10**18))
    time.sleep(1.2)  # the attribute timeout: not a timing assertion, a wait
    assert (mnt / "f").read_text() == "new content"


def test_fsyncdir_and_dot_entries(dirs: tuple[Path, Path]) -> None:
    _src, mnt = dirs
    (mnt / "sub").mkdir()
    fd = os.open(mnt / "sub", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    listing = subprocess.run(["ls", "-a", "-i", str(mnt / "sub")], capture_output=True,
                             text=True, check=True).stdout.split()
    inos = dict(zip(listing[1::2], listing[0::2], strict=True))
    assert set(inos) == {".", ".."}
    assert int(inos["."]) == os.stat(mnt / "sub").st_ino
    assert int(inos[".."]) == os.stat(mnt).st_ino


def test_server_survives_and_logs_nothing_unexpected(server: Server) -> None:
    assert server.proc.poll() is None
    log = server.log()
    assert "Traceback" not in log and "ERROR" not in log, log
