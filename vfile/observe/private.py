"""Opening a log that names files, as root, at a path a caller chose: the audit log
and a background server's `--log-file`.

Invariants (x23 for the audit log, x24 for the server log,
tests/t4_server_modes23_test.py, tests/t4_log_file24_test.py):
- missing parents are made 0755 one by one, whatever the umask (the mount server's is 0);
- the directory holding the log is writable by no other user (not by others, sticky or
  not, nor by a group other than root's) and belongs to root or to us: in a shared
  directory a user can put a file or a hard link of their own at the name before we
  create it;
- the parent path is walked one component at a time from `/`, missing ones made there
  (never through a symlink the walk refuses): a symlink on the way is
  followed only if the directory holding it passes the rule above (root's /var/run ->
  /run); one in a shared directory (/tmp) is refused, as it would let its owner choose
  which of root's directories gets the log (r25, tests/t4_log_file24_test.py);
- the log itself is opened O_NOFOLLOW (a symlink at the name is refused, never
  followed to the file it points at), relative to that directory's descriptor (no
  component of the path is looked up twice), created 0600, must be a regular file of
  ours, and an older vfile's looser log (0644 by umask, 0666 by umask 0) is tightened.
"""

from __future__ import annotations

import errno
import os
import stat


class LogPathError(OSError):
    """Why a log cannot be opened there (its `strerror` is the message)."""


def _untrusted(st: os.stat_result, where: str) -> LogPathError | None:
    """Why the directory `st` (at `where`) may hold what another user put there."""
    if st.st_uid not in (0, os.geteuid()):
        return LogPathError(errno.EPERM, f"its directory {where!r} belongs to uid "
                            f"{st.st_uid}, neither root nor us")
    # Group write is fine for root's group (its members are root already), not for
    # another (Ubuntu's /var/log is root:syslog 0775: vfile's own /var/log/vfile is
    # made 0755 for it).
    if st.st_mode & 0o002 or (st.st_mode & 0o020 and st.st_gid != 0):
        return LogPathError(errno.EPERM, f"its directory {where!r} is writable by other "
                            f"users (mode {stat.S_IMODE(st.st_mode):o})")
    return None


def _make_dir(dfd: int, name: str) -> int:
    """The missing directory `name` in `dfd`, made 0755 whatever the umask (os.makedirs
    gives parents the umask's mode, the mount server's is 0); its O_PATH descriptor."""
    made = True
    try:
        os.mkdir(name, 0o755, dir_fd=dfd)
    except FileExistsError:
        made = False  # (made meanwhile: checked as any other)
    fd = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                 dir_fd=dfd)
    if made:
        try:
            os.chmod(f"/proc/self/fd/{fd}", 0o755)  # (the one we opened, not the name)
        except BaseException:
            os.close(fd)
            raise
    return fd


def _open_dir(parent: str) -> int:
    """A descriptor of the directory `parent` (absolute), walked from `/` (module doc)."""
    # O_PATH: search permission only on each directory, as the kernel's own lookup.
    dfd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    where = "/"
    try:
        for part in [p for p in parent.split("/") if p]:
            try:
                nfd = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW
                              | os.O_CLOEXEC, dir_fd=dfd)
            except FileNotFoundError:
                nfd = _make_dir(dfd, part)
            except OSError as err:
                if err.errno not in (errno.ELOOP, errno.ENOTDIR) or not stat.S_ISLNK(
                        os.stat(part, dir_fd=dfd, follow_symlinks=False).st_mode):
                    raise
                if (why := _untrusted(os.fstat(dfd), where)) is not None:
                    raise LogPathError(errno.ELOOP, f"{os.path.join(where, part)!r} is a "
                                       f"symlink in a directory others may change "
                                       f"({why.strerror})") from None
                nfd = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dfd)
            os.close(dfd)
            dfd, where = nfd, os.path.join(where, part)
    except BaseException:
        os.close(dfd)
        raise
    return dfd


def open_private_append(path: str) -> int:
    """An O_APPEND descriptor of the log at `path` (module invariants); OSError
    (LogPathError for a refused place) says why not."""
    path = os.path.abspath(path)
    parent, name = os.path.split(path)
    dfd = _open_dir(parent)
    try:
        if (why := _untrusted(os.fstat(dfd), parent)) is not None:
            raise why
        try:
            # O_NONBLOCK: a FIFO at the name must not hang the start (refused below).
            fd = os.open(name, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
                         | os.O_CLOEXEC | os.O_NONBLOCK, 0o600, dir_fd=dfd)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise LogPathError(errno.ELOOP, "it is a symlink (not followed)") from None
            raise
    finally:
        os.close(dfd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise LogPathError(errno.EINVAL, "not a regular file")
        if st.st_uid not in (0, os.geteuid()):
            raise LogPathError(errno.EPERM, f"it belongs to uid {st.st_uid}")
        if st.st_mode & 0o077:  # an older vfile's log: others could read (or write) it
            os.fchmod(fd, 0o600)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd
