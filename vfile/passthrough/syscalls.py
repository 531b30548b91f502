"""The few syscalls Python's `os` module lacks, through ctypes.

- `renameat2` for RENAME_NOREPLACE / RENAME_EXCHANGE (os.rename has no flags);
- `fchownat` / `utimensat` with AT_EMPTY_PATH, to act on an O_PATH file
  descriptor itself — including a symlink, which must never be followed;
- `name_to_handle_at` / `open_by_handle_at`, so the inode table can close a
  descriptor and reopen the very same inode later (see vfile.passthrough.fdcache). A
  handle is only ever made here from a descriptor vfile itself holds; it never
  comes from, or goes to, a user.

`open_for_scan` opens what a scan reads with O_NOATIME: a scan is not an
access by a user, and must not change the atime that mail readers, backup
and tiering tools judge by (found by the O_NOATIME client in issue 18).

Every function raises OSError with the C errno on failure, like `os`.
Operations on O_PATH fds of non-symlinks can instead use the
/proc/self/fd/N magic link (`proc_path`), which resolves to the inode the fd
holds, not to a name that could have been swapped.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
AT_EMPTY_PATH = 0x1000
AT_SYMLINK_NOFOLLOW = 0x100
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_renameat2 = _libc.renameat2
_renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                       ctypes.c_uint]
_renameat2.restype = ctypes.c_int
_fchownat = _libc.fchownat
_fchownat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint, ctypes.c_uint, ctypes.c_int]
_fchownat.restype = ctypes.c_int


#: The kernel's MAX_HANDLE_SZ: the largest f_handle any filesystem encodes.
MAX_HANDLE_SZ = 128


class _FileHandle(ctypes.Structure):
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int),
                ("f_handle", ctypes.c_ubyte * MAX_HANDLE_SZ)]


_HEADER = ctypes.sizeof(ctypes.c_uint) + ctypes.sizeof(ctypes.c_int)
_name_to_handle_at = _libc.name_to_handle_at
_name_to_handle_at.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_FileHandle),
                               ctypes.POINTER(ctypes.c_int), ctypes.c_int]
_name_to_handle_at.restype = ctypes.c_int
_open_by_handle_at = _libc.open_by_handle_at
_open_by_handle_at.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
_open_by_handle_at.restype = ctypes.c_int


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_utimensat = _libc.utimensat
_utimensat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_Timespec), ctypes.c_int]
_utimensat.restype = ctypes.c_int


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def renameat2(old_dir: int, old: bytes, new_dir: int, new: bytes, flags: int) -> None:
    _check(_renameat2(old_dir, old, new_dir, new, flags), "renameat2")


def fchown_empty(fd: int, uid: int, gid: int) -> None:
    """chown the inode an (O_PATH) fd refers to, never following a symlink."""
    _check(_fchownat(fd, b"", uid & 0xFFFFFFFF, gid & 0xFFFFFFFF,
                     AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW), "fchownat")


def _ts(ns: int | None) -> _Timespec:
    if ns is None:
        return _Timespec(0, UTIME_OMIT)
    return _Timespec(ns // 1_000_000_000, ns % 1_000_000_000)


def utimens_empty(fd: int, atime_ns: int | None, mtime_ns: int | None) -> None:
    """Set times of the inode an (O_PATH) fd refers to; None leaves a time as is."""
    times = (_Timespec * 2)(_ts(atime_ns), _ts(mtime_ns))
    _check(_utimensat(fd, b"", times, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW), "utimensat")


def name_to_handle(fd: int) -> tuple[bytes, int]:
    """The file handle of the inode `fd` holds (AT_EMPTY_PATH: no name, no race)
    and the id of the mount it was reached through. The bytes are the kernel's
    `struct file_handle`, header included, ready for `open_by_handle`."""
    h = _FileHandle()
    h.handle_bytes = MAX_HANDLE_SZ
    mount_id = ctypes.c_int()
    _check(_name_to_handle_at(fd, b"", ctypes.byref(h), ctypes.byref(mount_id),
                              AT_EMPTY_PATH), "name_to_handle_at")
    return ctypes.string_at(ctypes.addressof(h), _HEADER + h.handle_bytes), mount_id.value


def open_by_handle(mount_fd: int, handle: bytes, flags: int) -> int:
    """Open the inode `handle` names on the filesystem of `mount_fd` (which must
    not be an O_PATH descriptor). Needs CAP_DAC_READ_SEARCH."""
    fd = _open_by_handle_at(mount_fd, handle, flags)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"open_by_handle_at: {os.strerror(err)}")
    return int(fd)


def proc_path(fd: int) -> str:
    """A path that resolves to exactly the inode `fd` holds (not for symlinks)."""
    return f"/proc/self/fd/{fd}"


_NOATIME = getattr(os, "O_NOATIME", 0)


def open_for_scan(path: str | bytes, flags: int, *, dir_fd: int | None = None) -> int:
    """os.open with O_NOATIME added, or without it where we may not use it (EPERM:
    an unprivileged daemon on a file it does not own)."""
    try:
        return os.open(path, flags | _NOATIME, dir_fd=dir_fd)
    except PermissionError:
        return os.open(path, flags, dir_fd=dir_fd)


def syncfs(dir_fd: int) -> None:
    """Flush the filesystem holding directory `dir_fd` (an O_PATH fd will do), not
    every filesystem as sync(2) would."""
    fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)
