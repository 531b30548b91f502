"""Opening what root believes (a configuration, a signature database, a cache key)
only where no other user could have written it.

vfile runs as root over other people's files; its configuration decides what is
scanned, and its signature database what is found. A `--config` or `--signatures`
that a local user can write (the file, or any directory on the way to it, which
lets them put another file in its place) lets that user turn scanning off or drop
a signature (s26, tests/t4_input26_test.py). So, as for the logs
(vfile/observe/private.py), with these differences (reading, not creating):

- every directory from `/` to the file is walked one component at a time
  (O_PATH|O_NOFOLLOW, relative to the one before: no component is looked up twice),
  and each must belong to root or to us and be writable by no other user (not by
  others, nor by a group other than root's) -- unless it is sticky (/tmp): there
  another user can add names but not rename or remove ours, and the next component
  (ours or root's, checked in turn) is the one we use;
- a symlink on the way is resolved by this same walk (its target read with
  readlink and walked component by component, at most 40 links), never by the
  kernel in one go, so every directory it leads through is checked too; the link
  itself sits in a directory already checked, so root or we made it;
- the file is opened O_NOFOLLOW relative to its directory's descriptor (a symlink
  there is walked as above), must be a regular file of root's or ours, writable by no
  other user; what is read is read from that descriptor (what was checked is read).

A refusal is an `UntrustedPath` (an OSError whose `strerror` says why) that callers
turn into their own clear error (exit 3 for configuration and signatures).
Leaf module: no vfile imports (scanner and config both use it).
"""

from __future__ import annotations

import errno
import os
import stat

#: symlinks followed in one walk at most, as the kernel's own limit (ELOOP)
MAX_LINKS = 40
_DIR = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UntrustedPath(OSError):
    """Why a path cannot be trusted (its `strerror` is the message)."""


def _writable_by_others(st: os.stat_result) -> bool:
    # Group write is fine for root's group (its members are root already), as for the
    # logs (vfile/observe/private.py).
    return bool(st.st_mode & 0o002 or (st.st_mode & 0o020 and st.st_gid != 0))


def _check_dir(fd: int, where: str) -> None:
    st = os.fstat(fd)
    if st.st_uid not in (0, os.geteuid()):
        raise UntrustedPath(errno.EPERM, f"directory {where!r} belongs to uid {st.st_uid}, "
                            "neither root nor us")
    if _writable_by_others(st) and not st.st_mode & stat.S_ISVTX:
        raise UntrustedPath(errno.EPERM, f"directory {where!r} is writable by other users "
                            f"(mode {stat.S_IMODE(st.st_mode):o})")


def _check_file(fd: int, where: str) -> None:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise UntrustedPath(errno.EINVAL, f"{where!r} is not a regular file")
    if st.st_uid not in (0, os.geteuid()):
        raise UntrustedPath(errno.EPERM, f"{where!r} belongs to uid {st.st_uid}, neither "
                            "root nor us")
    if _writable_by_others(st):
        raise UntrustedPath(errno.EPERM, f"{where!r} is writable by other users (mode "
                            f"{stat.S_IMODE(st.st_mode):o})")


def _absolute(path: str) -> str:
    # Not os.path.abspath: it drops "a/.." by the name, where the walk must go up from
    # where a symlink in `a` really led.
    if not path:  # ("" is no path: not the current directory, as a join would make it)
        raise OSError(errno.ENOENT, "an empty path")
    return path if path.startswith("/") else os.path.join(os.getcwd(), path)


def _parts(path: str) -> list[str]:
    return [p for p in path.split("/") if p and p != "."]


def open_trusted_dir(path: str) -> int:
    """An O_PATH descriptor of the directory `path`, every directory on the way checked
    (module doc); UntrustedPath or another OSError says why not."""
    path = _absolute(path)
    root = os.open("/", _DIR)
    stack: list[tuple[int, str]] = [(root, "/")]  # the walk so far: ".." pops
    try:
        _check_dir(root, "/")
        todo = _parts(path)
        links = 0
        while todo:
            part = todo.pop(0)
            dfd, where = stack[-1]
            if part == "..":
                if len(stack) > 1:
                    os.close(stack.pop()[0])
                continue
            here = os.path.join(where, part)
            try:
                fd = os.open(part, _DIR, dir_fd=dfd)
            except OSError as err:
                if err.errno not in (errno.ELOOP, errno.ENOTDIR) or not stat.S_ISLNK(
                        os.stat(part, dir_fd=dfd, follow_symlinks=False).st_mode):
                    raise
                links += 1
                if links > MAX_LINKS:
                    raise UntrustedPath(errno.ELOOP, f"too many symlinks resolving "
                                        f"{path!r}") from None
                target = os.readlink(part, dir_fd=dfd)
                if target.startswith("/"):
                    while len(stack) > 1:
                        os.close(stack.pop()[0])
                todo[:0] = _parts(target)
                continue
            stack.append((fd, here))
            _check_dir(fd, here)
        fd = stack.pop()[0] if len(stack) > 1 else os.dup(root)
        return fd
    finally:
        for fd, _ in stack:
            os.close(fd)


def _open_at(dfd: int, name: str, where: str) -> int:
    """The file `name` in the checked directory `dfd`: O_NOFOLLOW (ELOOP for a symlink),
    a regular file of root's or ours."""
    # O_NONBLOCK: a FIFO at the name must not hang the start (refused below).
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                 dir_fd=dfd)
    try:
        _check_file(fd, where)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_trusted_file(path: str) -> int:
    """An O_RDONLY descriptor of the file at `path`, if no other user could have written
    it (module doc); UntrustedPath or another OSError says why not."""
    path = _absolute(path)
    for _ in range(MAX_LINKS + 1):
        parent, name = os.path.split(path)
        dfd = open_trusted_dir(parent)
        try:
            return _open_at(dfd, name, path)
        except OSError as err:
            if err.errno != errno.ELOOP:
                raise
            # A symlink in a checked directory (root or we made it): walk its target.
            target = os.readlink(name, dir_fd=dfd)
        finally:
            os.close(dfd)
        path = os.path.join(parent, target)
    raise UntrustedPath(errno.ELOOP, f"too many symlinks resolving {path!r}")


def read_trusted(path: str) -> bytes:
    """The bytes of the file at `path`, if no other user could have written it (module
    doc); UntrustedPath or another OSError says why not."""
    with os.fdopen(open_trusted_file(path), "rb") as f:
        return f.read()
