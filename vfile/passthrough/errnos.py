"""The one mapping from exceptions inside a FUSE handler to an errno.

Only `FUSEError` may leave a pyfuse3 handler (anything else is logged by
pyfuse3 and the request gets no useful answer), so `vfile.passthrough.fs` funnels every
exception through `errno_for` here. This module is pure (no pyfuse3): the
choice of errno is table-tested in t0.

Choices:
- `OSError` from a syscall on the source: its own errno, so the caller sees
  exactly what the underlying filesystem said (the point of a passthrough).
  An OSError without an errno (raised by Python itself) is EIO.
- `Denied` from a hook: the errno the hook chose (EACCES for a verdict).
- `InvalidName`: EINVAL; the kernel never sends such names, so one that
  arrives is hostile or a bug, and must not reach a syscall.
- `StaleInode` / `StaleHandle`: ESTALE / EBADF — the kernel referred to an
  inode or handle we no longer know (a bug or a forget race).
- Anything else is a bug in vfile: EIO, and the caller logs it with traceback.
"""

from __future__ import annotations

import errno

from vfile.hooks import Denied


class InvalidName(ValueError):
    """A directory entry name from the kernel that must not reach a syscall."""


class StaleInode(LookupError):
    """A FUSE inode number that is not (or no longer) in the inode table."""


class StaleHandle(LookupError):
    """A file or directory handle that is not open."""


def errno_for(exc: BaseException) -> tuple[int, bool]:
    """Return (errno, expected) for an exception raised in a handler.

    `expected` is False for exceptions that reveal a bug; the caller logs
    those with a traceback, and only those.
    """
    if isinstance(exc, Denied):
        return exc.errno, True
    if isinstance(exc, OSError):
        return (exc.errno, True) if exc.errno else (errno.EIO, False)
    if isinstance(exc, InvalidName):
        return errno.EINVAL, True
    if isinstance(exc, StaleInode):
        return errno.ESTALE, False
    if isinstance(exc, StaleHandle):
        return errno.EBADF, False
    return errno.EIO, False


def check_name(name: bytes) -> bytes:
    """Return `name` if it is a single path component, else raise InvalidName."""
    if not name or b"/" in name or b"\0" in name or name in (b".", b".."):
        raise InvalidName(name)
    return name
