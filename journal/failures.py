"""Journal write failures: what a failed transaction is called, and how it is logged.

Split from journal.commit (the group committer), which reports every failed
batch through these: a full map or disk is `JournalFull` (EIO from a short
write on a nearly full disk included), anything else a `JournalError` naming
the journal and the cause.
"""

from __future__ import annotations

import errno
import logging
import os

import lmdb

from vfile.journal.records import JournalError, JournalFull

log = logging.getLogger("vfile.journal.commit")


def translate(err: BaseException, where: str) -> JournalError:
    """A clear JournalError for an LMDB/OS failure in `where` (a path)."""
    if isinstance(err, JournalError):
        return type(err)(str(err))
    code = getattr(err, "errno", None)
    if isinstance(err, lmdb.MapFullError):
        return JournalFull(f"journal {where}: the map reached its maximum size; "
                           "nothing was written")
    if (isinstance(err, lmdb.DiskError) or code == errno.ENOSPC
            or "No space left" in str(err) or _short_write_on_full_disk(err, code, where)):
        return JournalFull(f"journal {where}: disk full (no space left on device); "
                           "nothing was written")
    return JournalError(f"journal {where}: write failed: {err}")


def log_failure(where: str, n: int, err: BaseException) -> None:
    # A full disk fails every transaction until it has room: its callers report it,
    # rate-limited (a line per transaction would be a line per open).
    level = logging.DEBUG if isinstance(translate(err, where), JournalFull) else logging.ERROR
    log.log(level, "journal %r: transaction of %d operations failed: %s", where, n, err)


#: Below this many free bytes, an EIO from LMDB is taken for a full disk.
_NEARLY_FULL = 64 << 10


def _short_write_on_full_disk(err: BaseException, code: object, where: str) -> bool:
    # LMDB reports a short pwrite (the disk filled up in the middle of it) as EIO,
    # not ENOSPC: then the file system's free space tells which it was.
    if code != errno.EIO and "Input/output error" not in str(err):
        return False
    try:
        st = os.statvfs(where)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < _NEARLY_FULL
