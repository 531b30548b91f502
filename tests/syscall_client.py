"""A client program using the file API the way databases, editors and backup tools do.

    python tests/syscall_client.py DIR

Runs each check in DIR (which it fills) and prints one JSON object: check name
-> what it saw (values, digests, or the errno name a call failed with). The
same program runs in a native directory and through a mount, and
tests/t4_clients_syscalls_test.py compares the two objects. Locks are checked
against a second process (this file again, with `lock-probe`).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import mmap
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

PAGE = mmap.PAGESIZE
NF = os.O_NOFOLLOW | os.O_CLOEXEC


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def probe(path: Path, kind: str, start: int = 0, length: int = 0) -> str:
    """Ask a second process to take a lock without waiting: "ok" or the errno name."""
    res = subprocess.run([sys.executable, __file__, "lock-probe", str(path), kind, str(start),
                          str(length)], capture_output=True, text=True, timeout=60, check=True)
    return res.stdout.strip()


def lock_probe(path: str, kind: str, start: int, length: int) -> str:
    fd = os.open(path, os.O_RDWR | NF)
    try:
        if kind == "flock":
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, length, start)
        return "ok"
    except OSError as err:
        return errno.errorcode[err.errno or 0]
    finally:
        os.close(fd)


def check_nofollow(d: Path) -> Any:
    (d / "nf").write_bytes(b"regular")
    os.symlink("nf", d / "nf-link")
    fd = os.open(d / "nf", os.O_RDONLY | NF)
    try:
        data = os.read(fd, 100)
    finally:
        os.close(fd)
    return [data.decode(), outcome(lambda: os.open(d / "nf-link", os.O_RDONLY | NF))]


def check_noatime(d: Path) -> Any:
    f = d / "na"
    f.write_bytes(b"x" * 5000)
    os.utime(f, ns=(1_000_000_000, 2_000_000_000_000_000_000))
    fd = os.open(f, os.O_RDONLY | os.O_NOATIME | NF)
    try:
        n = len(os.read(fd, 10000))
    finally:
        os.close(fd)
    return [n, os.stat(f).st_atime_ns]


def check_direct(d: Path) -> Any:
    size = 16 * PAGE
    buf = mmap.mmap(-1, size)  # page-aligned, as O_DIRECT wants
    buf.write(bytes(range(256)) * (size // 256))
    fd = os.open(d / "direct", os.O_WRONLY | os.O_CREAT | os.O_DIRECT | NF, 0o644)
    try:
        written = os.writev(fd, [buf])
    finally:
        os.close(fd)
    back = mmap.mmap(-1, size)
    fd = os.open(d / "direct", os.O_RDONLY | os.O_DIRECT | NF)
    try:
        got = os.preadv(fd, [back], 0)
    finally:
        os.close(fd)
    return [written, got, back[:] == buf[:], digest((d / "direct").read_bytes())]


def check_append(d: Path) -> Any:
    f = d / "append"
    f.write_bytes(b"start|")
    a = os.open(f, os.O_WRONLY | os.O_APPEND | NF)
    b = os.open(f, os.O_RDWR | os.O_APPEND | NF)
    try:
        for i in range(5):
            os.write(a, f"a{i}|".encode())
            os.write(b, f"b{i}|".encode())
        os.pwrite(a, b"pw|", 0)  # Linux: O_APPEND wins over pwrite's offset
        os.lseek(b, 0, os.SEEK_SET)
        os.write(b, b"end")
        return [f.read_bytes().decode(), os.lseek(b, 0, os.SEEK_CUR)]
    finally:
        os.close(a)
        os.close(b)


def check_tmpfile(d: Path) -> Any:
    fd = os.open(d, os.O_TMPFILE | os.O_RDWR, 0o600)
    try:
        os.write(fd, b"anonymous")
        dfd = os.open(d, os.O_PATH | os.O_DIRECTORY)
        try:
            os.link(f"/proc/self/fd/{fd}", "named-tmp", dst_dir_fd=dfd, follow_symlinks=True)
        finally:
            os.close(dfd)
    finally:
        os.close(fd)
    return (d / "named-tmp").read_bytes().decode()


def check_flock(d: Path) -> Any:
    f = d / "flock"
    f.write_bytes(b"")
    fd = os.open(f, os.O_RDWR | NF)
    try:
        seen = [probe(f, "flock")]
        fcntl.flock(fd, fcntl.LOCK_EX)
        seen.append(probe(f, "flock"))
        fcntl.flock(fd, fcntl.LOCK_SH)  # downgrade: others still cannot take it exclusively
        seen.append(probe(f, "flock"))
        fcntl.flock(fd, fcntl.LOCK_UN)
        seen.append(probe(f, "flock"))
        return seen
    finally:
        os.close(fd)


def check_posix_locks(d: Path) -> Any:
    f = d / "posix"
    f.write_bytes(b"\0" * 100)
    fd = os.open(f, os.O_RDWR | NF)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX, 10, 0)  # bytes 0-9
        seen = [probe(f, "posix", 0, 10), probe(f, "posix", 5, 1), probe(f, "posix", 10, 10)]
        fcntl.lockf(fd, fcntl.LOCK_UN, 10, 0)
        seen.append(probe(f, "posix", 0, 10))
        if hasattr(fcntl, "F_OFD_SETLK"):
            # an open-file-description lock conflicts with the other process's too
            import struct
            lk = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 50, 10, 0)
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, lk)
            seen.append(probe(f, "posix", 55, 1))
        return seen
    finally:
        os.close(fd)


def check_mmap_write(d: Path) -> Any:
    f = d / "mapped"
    f.write_bytes(b"." * (3 * PAGE))
    fd = os.open(f, os.O_RDWR | NF)
    try:
        with mmap.mmap(fd, 3 * PAGE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE) as m:
            m[PAGE - 3:PAGE + 3] = b"<mmap>"
            m[-1:] = b"!"
            m.flush()
            via_read = os.pread(fd, 6, PAGE - 3)  # the same file through read(2)
        os.fsync(fd)
    finally:
        os.close(fd)
    data = f.read_bytes()
    return [via_read.decode(), data[-1:].decode(), digest(data)]


def check_fallocate(d: Path) -> Any:
    f = d / "falloc"
    f.write_bytes(b"keep")
    fd = os.open(f, os.O_RDWR | NF)
    try:
        os.posix_fallocate(fd, 0, 1 << 20)
        os.posix_fallocate(fd, (1 << 20) - 10, 100)
        size = os.fstat(fd).st_size
    finally:
        os.close(fd)
    data = f.read_bytes()
    return [size, data[:4].decode(), data[4:] == b"\0" * (size - 4)]


def check_copy_file_range(d: Path) -> Any:
    body = bytes((i * 7 + i // 251) % 256 for i in range(300_000))
    (d / "cfr-src").write_bytes(body)
    src = os.open(d / "cfr-src", os.O_RDONLY | NF)
    dst = os.open(d / "cfr-dst", os.O_RDWR | os.O_CREAT | NF, 0o644)
    try:
        done = 0
        while done < len(body):
            n = os.copy_file_range(src, dst, len(body) - done)
            if n == 0:
                break
            done += n
        os.copy_file_range(src, dst, 1000, 5000, 400_000)  # explicit offsets, past the end
        size = os.fstat(dst).st_size
    finally:
        os.close(src)
        os.close(dst)
    out = (d / "cfr-dst").read_bytes()
    return [done, size, out[:len(body)] == body, out[400_000:] == body[5000:6000]]


CHECKS: dict[str, Callable[[Path], Any]] = {
    name[len("check_"):]: fn for name, fn in globals().items() if name.startswith("check_")
}


def outcome(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except OSError as err:
        return errno.errorcode.get(err.errno or 0, str(err.errno))


def main(argv: list[str]) -> None:
    if argv[0] == "lock-probe":
        print(lock_probe(argv[1], argv[2], int(argv[3]), int(argv[4])))
        return
    d = Path(argv[0])
    print(json.dumps({name: outcome(lambda fn=fn: fn(d)) for name, fn in CHECKS.items()}))


if __name__ == "__main__":
    main(sys.argv[1:])
