"""Scanning a file by its path through the pool (`Pool.scan_path`): open, check, scan.

Moved out of scanner/pool.py (module size): it needs nothing of the pool but
`scan_fd`. Errors opening the file are error verdicts, never exceptions.
"""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING

from vfile.scanner.verdict import Verdict

if TYPE_CHECKING:
    from vfile.scanner.pool import Pool


async def scan_path(pool: Pool, path: str, *, limit: int | None = None,
                    attempt_timeout: float | None = None,
                    retries: int | None = None) -> Verdict:
    """Open `path` (a regular file) and scan it; errors opening it are error verdicts."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as err:
        return Verdict.error(f"cannot open: {err.strerror or err}")
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return Verdict.error("not a regular file")
        return await pool.scan_fd(fd, size=st.st_size, limit=limit,
                                  attempt_timeout=attempt_timeout, retries=retries)
    finally:
        os.close(fd)
