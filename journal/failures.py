"""What an LMDB or OS failure of a journal write means, as one `JournalError`.

A full disk or map is `JournalFull` (the callers answer ENOSPC and count it);
anything else is a plain `JournalError`. Moved out of journal.commit (which
raises them) to keep that module under the size limit.
"""

from __future__ import annotations

import errno
import os

import lmdb

from vfile.journal.records import JournalError, JournalFull


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
