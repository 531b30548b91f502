"""Opening the journal's LMDB environment in its state directory: checking an
existing journal, creating a new one, placing the lock file, upgrading the
table layout. Used by `Journal.open` (store.py).

Invariants:
- A journal we refuse to open is never modified: an existing `data.mdb` is
  first checked through a read-only, lock-free environment (magic, format
  version); only then is it opened for writing. An unreadable, corrupted,
  foreign or newer journal raises a `JournalError` subclass naming the path.
- A new journal is created atomically: built and synced in a private
  sub-directory, then its `data.mdb` renamed into place. A crash during
  creation leaves either no journal or a complete one, never an LMDB
  environment without vfile's magic (which would then look foreign).
- A read never waits for the state disk: with `lock_dir` (a tmpfs such as
  /run), LMDB's lock file lives there (`lock.mdb` is a symlink to it). A read
  transaction stores into the lock file's mmap (its reader slot); on a frozen
  file system that store faults and blocks until thaw, holding the GIL, so the
  whole process would stop. Data pages are mapped read-only and are never
  written through the map, so reads of them do not block.
- The lock directory is ours alone before LMDB follows `lock.mdb` into it
  (`private_lock_dir`): a real directory of ours, mode 0700, in a parent no one
  else may write. A mount server runs with umask 0, and the parent (root's
  /run/vfile) was made 0777 as a side effect; a user could then plant a
  directory there whose lock file is a symlink to any file, and LMDB, as root,
  wrote its lock table into that file (x23, tests/t4_rundir_lock23_test.py).

The environment of a writable journal is opened with `sync=False` (LMDB's
MDB_NOSYNC, metasync off too): durability is decided per transaction by the
committer, with an explicit `env.sync(True)`. What the LMDB options trade:
- `sync`: fsync the data file at each commit. Off: a commit is only in the
  page cache; an OS crash or power loss can lose the last transactions (LMDB
  stays consistent, it rolls back to an older meta page). A process crash
  (SIGKILL) loses nothing either way: the pages are in the kernel.
- `metasync`: fsync again after writing the meta page. Off: the last commit
  can be lost on OS crash, but the database stays consistent.
- `map_async` (only with `writemap`): flush asynchronously; as `sync=False`
  for durability. Not used.
- `writemap`: write through a writable mmap instead of pwrite. Faster, but a
  stray pointer write in this process could corrupt the database, and the
  file is preallocated to the full map size. Not used.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import stat
from pathlib import Path

import lmdb
import xxhash

from vfile.journal import tables, taint
from vfile.journal.records import (
    JournalCorrupt,
    JournalForeign,
    JournalTooNew,
    JournalUnreadable,
)
from vfile.journal.tables import Txn

log = logging.getLogger(__name__)

DATA_FILE = "data.mdb"
LOCK_FILE = "lock.mdb"


def _check_meta(txn: Txn, env: lmdb.Environment, where: Path) -> None:
    try:
        meta = env.open_db(b"meta", txn=txn, create=False)
    except lmdb.NotFoundError:
        raise JournalForeign(f"{where}: an LMDB environment, but not a vfile journal") from None
    if txn.get(b"magic", db=meta) != tables.MAGIC:
        raise JournalForeign(f"{where}: an LMDB environment, but not a vfile journal")
    raw = txn.get(b"format", db=meta) or b""
    try:
        fmt = int(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise JournalCorrupt(f"{where}: journal format version {raw!r} is unreadable") from None
    if fmt > tables.JOURNAL_FORMAT:
        raise JournalTooNew(f"{where}: journal format {fmt} is newer than this vfile "
                            f"understands ({tables.JOURNAL_FORMAT}); upgrade vfile")


def probe(state_dir: Path) -> None:
    """Check an existing journal without changing a byte of it (no lock file either)."""
    data = state_dir / DATA_FILE
    try:
        fd = os.open(data, os.O_RDONLY)
        os.close(fd)
    except PermissionError:
        raise JournalUnreadable(f"{data}: permission denied") from None
    except OSError as err:
        raise JournalUnreadable(f"{data}: {err.strerror}") from None
    try:
        env = lmdb.open(str(state_dir), readonly=True, lock=False, create=False,
                        max_dbs=tables.MAX_DBS, subdir=True)
    except lmdb.Error as err:
        raise JournalCorrupt(f"{data}: not a readable LMDB environment ({err})") from None
    try:
        with env.begin() as txn:
            _check_meta(txn, env, state_dir)
    except lmdb.Error as err:
        raise JournalCorrupt(f"{data}: damaged LMDB environment ({err})") from None
    finally:
        env.close()


def lock_target(state_dir: Path, lock_dir: Path) -> Path:
    digest = xxhash.xxh3_64_hexdigest(os.fsencode(os.path.realpath(state_dir)))
    return lock_dir / f"journal-{digest}.lock"


def _make_dir(path: Path, mode: int) -> None:
    """`path` with exactly `mode` if it is missing (whatever the umask)."""
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        return
    os.chmod(path, mode)


def private_lock_dir(lock_dir: Path) -> bool:
    """Make `lock_dir` (and its parent) if missing; True once it is a real directory of
    ours, mode 0700, in a parent of ours (or root's) no one else may write. A parent of
    ours writable by others (made so by an older server's umask) is tightened; a lock
    directory not ours (planted, or a symlink) is moved aside and made again. False:
    the parent is not trustworthy (not a directory, another user's), so not used."""
    uid = os.geteuid()
    parent = lock_dir.parent
    # root's /run/vfile is 0755 (clients find the control sockets there); anyone else's
    # runtime directory 0700 (vfile.control.prepare_runtime_dir insists on it).
    _make_dir(parent, 0o755 if uid == 0 else 0o700)
    pst = os.lstat(parent)
    if not stat.S_ISDIR(pst.st_mode) or pst.st_uid not in (uid, 0):
        log.warning("journal lock directory %s: its parent is not a directory of ours; "
                    "not used", lock_dir)
        return False
    if pst.st_mode & 0o022:
        if pst.st_uid != uid:
            log.warning("journal lock directory %s: its parent is writable by others; "
                        "not used", lock_dir)
            return False
        log.warning("%s was writable by others (mode %04o): now 0755", parent,
                    stat.S_IMODE(pst.st_mode))
        os.chmod(parent, stat.S_IMODE(pst.st_mode) & ~0o022)
    _make_dir(lock_dir, 0o700)
    st = os.lstat(lock_dir)
    if stat.S_ISDIR(st.st_mode) and st.st_uid == uid and stat.S_IMODE(st.st_mode) == 0o700:
        return True
    aside = lock_dir.with_name(f"{lock_dir.name}.untrusted-{os.getpid()}")
    log.warning("journal lock directory %s is not ours (uid %d, mode %04o): moved aside "
                "to %s", lock_dir, st.st_uid, stat.S_IMODE(st.st_mode), aside)
    os.rename(lock_dir, aside)
    _make_dir(lock_dir, 0o700)
    st = os.lstat(lock_dir)
    return stat.S_ISDIR(st.st_mode) and st.st_uid == uid \
        and stat.S_IMODE(st.st_mode) == 0o700


def place_lock(state_dir: Path, lock_dir: Path) -> bool:
    """Make `state_dir/lock.mdb` a symlink into `lock_dir` (a tmpfs), so reads
    never store into a file on the state disk (module docstring). Returns False
    (and leaves the lock where it is) if another process uses the current one.

    LMDB keeps nothing in its lock file that must outlive the last process
    using the environment, so a lock file that vanished with /run is fine."""
    link = state_dir / LOCK_FILE
    target = lock_target(state_dir, lock_dir)
    if not private_lock_dir(lock_dir):
        # LMDB must not follow the link into it: the lock goes back to the state disk.
        if os.path.islink(link):
            os.unlink(link)
        return False
    try:
        if os.readlink(link) == str(target):
            return True
    except FileNotFoundError:
        pass
    except OSError as err:
        if err.errno != errno.EINVAL:  # EINVAL: a regular file
            raise
    # Nobody may be using the current lock file while we swap it: LMDB holds a
    # shared fcntl lock on its first byte in every process that has the env open.
    fd = -1
    if os.path.lexists(link):
        try:
            fd = os.open(link, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            fd = -1  # a dangling symlink (its tmpfs was emptied): nobody uses it
        if fd >= 0:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
            except OSError:
                os.close(fd)
                log.warning("journal %s: its lock file is in use by another process; "
                            "left on the state disk this time", state_dir)
                return False
    try:
        tmp = state_dir / f".lock-{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.symlink(target, tmp)
        os.replace(tmp, link)
    finally:
        if fd >= 0:
            os.close(fd)
    return True


def ensure_lock_dir(state_dir: Path) -> None:
    # `lock.mdb` points into the lock directory: ours alone before LMDB follows it
    # (module docstring), and made again if a tmpfs emptied since (a reboot) lost it,
    # so LMDB can create the lock file through the symlink.
    link = state_dir / LOCK_FILE
    try:
        target = Path(os.readlink(link))
    except OSError:
        return
    try:
        trusted = private_lock_dir(target.parent)
    except OSError as err:
        raise JournalUnreadable(f"{link}: its lock directory {target.parent}: "
                                f"{err.strerror or err}") from None
    if not trusted:
        raise JournalUnreadable(f"{link}: its lock directory {target.parent} is not "
                                "private to this user; not followed")


def _create(state_dir: Path, map_size: int) -> None:
    tmp = state_dir / f".init-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(mode=0o700)
    env = lmdb.open(str(tmp), map_size=map_size, max_dbs=tables.MAX_DBS, mode=0o600)
    try:
        with env.begin(write=True) as txn:
            t = tables.open_tables(env, txn)
            # Every table in this one transaction, so the new journal's clean marker
            # (init_meta) names its last transaction (journal.watermark, x24).
            env.open_db(taint.TABLE, txn=txn, create=True)
            tables.init_meta(txn, t)
        env.sync(True)
    finally:
        env.close()
    os.rename(tmp / DATA_FILE, state_dir / DATA_FILE)
    shutil.rmtree(tmp, ignore_errors=True)
    dfd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def open_env(where: Path, *, readonly: bool, map_size: int,
             lock_dir: Path | None) -> tuple[lmdb.Environment, tables.Tables]:
    """Check (or create, unless `readonly`) the journal in `where` and open its
    environment and tables; raises a `JournalError` subclass, `lmdb.Error` or
    `OSError` (which `Journal.open` names)."""
    if not where.exists():
        if readonly:
            raise JournalUnreadable(f"{where}: no journal here (directory missing)")
        where.mkdir(mode=0o700, parents=True)
    elif not where.is_dir():
        raise JournalUnreadable(f"{where}: not a directory")
    data = where / DATA_FILE
    # An empty data.mdb holds nothing to lose (a creation interrupted by a
    # crash before the atomic rename cannot produce it, but a manual `touch` can).
    if data.exists() and data.stat().st_size > 0:
        probe(where)
        if not readonly and not os.access(data, os.W_OK):
            raise JournalUnreadable(f"{data}: not writable")
    elif readonly:
        raise JournalUnreadable(f"{where}: no journal here")
    else:
        _create(where, map_size)
    if lock_dir is not None and not readonly:
        place_lock(where, lock_dir)
    else:
        ensure_lock_dir(where)
    # sync=False: the committer fsyncs explicitly, per durability tier (commit.py).
    env = lmdb.open(str(where), map_size=map_size, max_dbs=tables.MAX_DBS,
                    readonly=readonly, sync=False, metasync=False, mode=0o600,
                    create=False, max_spare_txns=4)
    try:
        with env.begin() as txn:
            _check_meta(txn, env, where)  # again: it could have changed since the probe
        t = tables.open_tables(env, None)
        if t.profiles is None and not readonly:
            # Format 1: build the profile index and counters once (tables.upgrade).
            with env.begin(write=True) as txn:
                t = tables.upgrade(env, txn, t)
            env.sync(True)
        with env.begin() as txn:
            t.seq.adopt(tables.stored_seq(txn, t))
    except BaseException:
        env.close()
        raise
    return env, t
