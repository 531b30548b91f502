"""Where a mount's journal lives by default: a state directory derived from the mountpoint.

Invariants:
- root: `/var/lib/vfile/<escaped mountpoint>`; others:
  `$XDG_STATE_HOME/vfile/<escaped>` (default `~/.local/state/vfile/<escaped>`).
- The escaping is systemd-style (`/srv/data` -> `srv-data`, `-` and other
  bytes outside [A-Za-z0-9_.:] as `\\xNN`), so it is injective: two different
  mountpoints never share a journal. The root directory `/` escapes to `-`.
- The directory is created with mode 0700 (it holds file names of the mount),
  its missing parents 0755, whatever the umask (the mount server's is 0: the
  state root /var/lib/vfile came out 0777, so any user could put a state
  directory of their own in place of a mount's, its verdicts trusted at the next
  start: x23, tests/t4_server_modes23_test.py). An existing one must be a real
  directory of ours (tightened to 0700); a parent others may write is warned
  about (vfile's own state root, which an older server made 0777, tightened).
- It is never the source or the mountpoint, nor below either (`below`): the
  journal does not live among the files it judges (x23).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import stat
from pathlib import Path

log = logging.getLogger(__name__)

ROOT_STATE = Path("/var/lib/vfile")
_SAFE = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:")


def escape_mountpoint(mountpoint: str | os.PathLike[str]) -> str:
    """A single path component naming the (absolute, normalised) mountpoint."""
    path = os.path.normpath(os.path.abspath(os.fspath(mountpoint)))
    trimmed = path.strip("/")
    if not trimmed:
        return "-"
    out = []
    for i, byte in enumerate(os.fsencode(trimmed)):
        if byte == ord("/"):
            out.append("-")
        elif byte in _SAFE and not (i == 0 and byte == ord(".")):
            out.append(chr(byte))
        else:
            out.append(f"\\x{byte:02x}")
    return "".join(out)


def state_root(uid: int | None = None) -> Path:
    uid = os.geteuid() if uid is None else uid
    if uid == 0:
        return ROOT_STATE
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".local" / "state"
    return base / "vfile"


def default_state_dir(mountpoint: str | os.PathLike[str], uid: int | None = None) -> Path:
    """The state directory of a mount (not created)."""
    return state_root(uid) / escape_mountpoint(mountpoint)


def below(path: str | os.PathLike[str], dirs: list[str | os.PathLike[str]]) -> bool:
    """Whether `path` (resolved; it need not exist yet) is one of the directories `dirs`
    or below one: by device and inode (a symlink to them counts), and by where each lies
    in its filesystem (`location`: a bind mount of one of their subdirectories elsewhere
    counts too, x24)."""
    resolved = Path(os.path.realpath(path))
    stats = []
    for d in dirs:
        with contextlib.suppress(OSError):
            stats.append(os.stat(d))
    keys = {(d.st_dev, d.st_ino) for d in stats}
    for candidate in (resolved, *resolved.parents):
        try:
            st = os.stat(candidate)
        except OSError:
            continue  # not created yet
        if (st.st_dev, st.st_ino) in keys:
            return True
    mounts = _mounts()
    dev, where = location(resolved, mounts)
    for d in dirs:
        ddev, dwhere = location(Path(os.path.realpath(d)), mounts)
        if dev == ddev and (where == dwhere or where.startswith(dwhere.rstrip("/") + "/")):
            return True
    return False


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo (octal)
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _mounts() -> list[tuple[str, str, str]]:
    """(mount point, device "major:minor", root of the mount within its filesystem), in
    /proc/self/mountinfo's order (a later mount on the same point covers an earlier)."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        fields = line.split(" ")
        if len(fields) >= 5:
            out.append((_unescape(fields[4]), fields[2], _unescape(fields[3])))
    return out


def location(resolved: Path, mounts: list[tuple[str, str, str]]) -> tuple[str, str]:
    """Where the resolved path lies whatever it is reached through: (the filesystem's
    device, its path from that filesystem's root). The mount whose point is the longest
    prefix of the path holds it (the last one listed on that point: it covers the
    others); a bind mount's root is the directory it shows."""
    text = str(resolved)
    best: tuple[str, str, str] | None = None
    for m in mounts:
        point = m[0]
        inside = text == point or text.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best[0])):
            best = m
    if best is None:
        return "", text
    point, dev, root = best
    rest = text[len(point.rstrip("/")):]
    return dev, os.path.normpath(root.rstrip("/") + rest) if rest else root


def ensure_state_dir(path: str | os.PathLike[str]) -> Path:
    """Create `path` (mode 0700, missing parents 0755) if missing; return it once it is
    a private directory of ours (module docstring); OSError says why it is not."""
    p = Path(path)
    uid = os.geteuid()
    for d in reversed([p, *p.parents]):
        try:
            os.mkdir(d, 0o700 if d == p else 0o755)
        except FileExistsError:
            continue
        os.chmod(d, 0o700 if d == p else 0o755)  # whatever the umask
    st = os.lstat(p)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid:
        raise OSError(errno.EPERM, f"not a private directory of ours (uid {st.st_uid}, "
                      f"mode {st.st_mode:o}); remove it or give another")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(p, 0o700)
    parent = os.lstat(p.parent)
    if parent.st_mode & 0o022 and not parent.st_mode & stat.S_ISVTX:
        if parent.st_uid == uid and p.parent == state_root(uid):
            # vfile's own state root, which an older server made 0777 (umask 0)
            log.warning("%s was writable by others (mode %04o): now without group and "
                        "other write", p.parent, stat.S_IMODE(parent.st_mode))
            os.chmod(p.parent, stat.S_IMODE(parent.st_mode) & ~0o022)
        else:
            log.warning("state directory %s: its parent may be written by other users, "
                        "who could put a state directory of their own in its place", p)
    return p


#: held (flock LOCK_EX) by the mount that uses the state directory, for its whole life,
#: and by an offline `vfile journal`/`quarantine` write while it writes
OWNER_FILE = "mount.lock"


class StateDirInUse(Exception):
    """Another process (a mount) holds the state directory's OWNER_FILE."""

    def __init__(self, state_dir: Path, pid: str) -> None:
        super().__init__(f"{state_dir}: in use by pid {pid}")
        self.pid = pid


def take_state_dir(state_dir: Path) -> int:
    """Take `state_dir`'s OWNER_FILE (no waiting) and write our pid in it; the returned
    descriptor holds it until closed. StateDirInUse names the holder's pid; OSError:
    the file cannot be opened, or is not a plain file of its own."""
    fd = os.open(state_dir / OWNER_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
                 | os.O_NONBLOCK, 0o600)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        # Truncated and rewritten below: never a FIFO or device (EINVAL: a traceback),
        # never a second name of another file (x22, tests/t5_attack22_lock_test.py).
        os.close(fd)
        raise OSError(errno.EINVAL, f"not a plain file of its own (mode {st.st_mode:o}, "
                      f"{st.st_nlink} links); remove it")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno != errno.EWOULDBLOCK:
            os.close(fd)
            raise
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise StateDirInUse(state_dir, holder) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
