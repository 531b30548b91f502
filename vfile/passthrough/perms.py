"""Pure rules about flags, modes and ownership (no I/O; table-tested in t0).

- `backing_open_flags`: the flags the daemon opens its own descriptor with.
  With the writeback cache the kernel may read pages of a file opened
  write-only (to fill partial pages) and implements O_APPEND itself, so the
  daemon opens O_RDWR without O_APPEND. O_DIRECT is never passed on: the
  daemon's buffers are not aligned, and the kernel already gave the caller
  direct-I/O semantics. Creation flags are the caller's business, not ours.
  Path-walk flags (O_NOFOLLOW, O_DIRECTORY) already acted in the kernel, on
  the caller's path: the daemon reopens through /proc/self/fd/N, a magic
  link, where O_NOFOLLOW would turn every open into ELOOP (issue 18). This
  is the ONE place a caller's open flags become the daemon's: every reopen
  of an inode goes through it.
- `backing_open_attempts`: those flags, then what to retry with when only
  the daemon (not the caller the kernel checked) is refused them.
- `owner_for`: who owns a new file: the caller, with the parent's group when
  the parent directory is set-group-ID (as ext4 does).
- `may_access`: the access(2) check on mode bits, for the `access` handler
  (with `default_permissions` the kernel normally does it itself).
"""

from __future__ import annotations

import functools
import os
import stat

#: Creation flags (the kernel or `create` handles them), O_DIRECT (see above),
#: and the path-walk flags that did their job on the caller's path. O_TMPFILE
#: includes O_DIRECTORY, and never reaches `open` (the kernel sends TMPFILE).
_STRIP = (os.O_CREAT | os.O_EXCL | os.O_NOCTTY | getattr(os, "O_DIRECT", 0)
          | os.O_NOFOLLOW | os.O_DIRECTORY | getattr(os, "O_PATH", 0))


def is_write_open(flags: int) -> bool:
    """Whether an open with these flags may change the file's content."""
    return (flags & os.O_ACCMODE) != os.O_RDONLY or bool(flags & os.O_TRUNC)


def backing_open_flags(flags: int, writeback: bool) -> int:
    out = (flags & ~_STRIP) | os.O_CLOEXEC
    if writeback:
        if out & os.O_ACCMODE == os.O_WRONLY:
            out = (out & ~os.O_ACCMODE) | os.O_RDWR
        out &= ~os.O_APPEND
    return out


@functools.cache
def backing_open_attempts(flags: int, writeback: bool) -> tuple[int, ...]:
    """Flags to open the daemon's descriptor with, in order, trying the next on EPERM/EACCES.

    The kernel checked the caller; an unprivileged daemon may still be refused
    what the caller was allowed: reading a write-only file (writeback's
    O_RDWR), or O_NOATIME on a file the daemon does not own. A root daemon
    always succeeds with the first. Cached: a pure function of a few flag
    combinations, computed on every open otherwise (bench/handlers.py).
    """
    noatime = getattr(os, "O_NOATIME", 0)
    out: list[int] = []
    for wb in (writeback, False):
        base = backing_open_flags(flags, wb)
        for cand in (base, base & ~noatime):
            if cand not in out:
                out.append(cand)
    return tuple(out)


def creation_mode(mode: int, umask: int) -> int:
    """Permission bits of a new object: the caller's mode less its umask."""
    return stat.S_IMODE(mode) & ~umask


def owner_for(parent_mode: int, parent_gid: int, uid: int, gid: int) -> tuple[int, int]:
    if parent_mode & stat.S_ISGID:
        return uid, parent_gid
    return uid, gid


def may_access(st_mode: int, st_uid: int, st_gid: int, *, uid: int, gids: set[int],
               want: int) -> bool:
    """access(2) on mode bits: `want` is a mask of os.R_OK / W_OK / X_OK."""
    if want == os.F_OK:
        return True
    if uid == 0:
        # root may read/write anything, and execute if anyone may (or a dir).
        if want & os.X_OK and not stat.S_ISDIR(st_mode):
            return bool(st_mode & 0o111)
        return True
    if uid == st_uid:
        bits = (st_mode >> 6) & 7
    elif st_gid in gids:
        bits = (st_mode >> 3) & 7
    else:
        bits = st_mode & 7
    return (bits & want) == want
