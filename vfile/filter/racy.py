"""Same-tick rewrites: git's "racy clean" rule for verdicts.

A verdict is keyed by the file's identity (dev, ino, size, mtime, ctime). A
rewrite of the same size within one timestamp tick of the scan keeps all of
it, so it would inherit the verdict. As git does for its index, a clean
verdict on a file whose timestamps are not older than the scan's start by the
filesystem's timestamp granularity is not trusted: it answers the open that
asked for it, but it is neither cached nor stored, and the next open (or the
drain) scans again. An infected verdict is kept whatever the timestamps: a
racy rewrite cannot make keeping it unsafe.

The granularity: the kernel's coarse clock tick for filesystems that store
nanoseconds, and 2 s (FAT's, the coarsest in use) for a file whose mtime and
ctime are both whole seconds (ext2/ext3 with 128-byte inodes, FAT, some
network filesystems). Pure.
"""

from __future__ import annotations

import time

from vfile.journal.records import Identity

_COARSE = getattr(time, "CLOCK_REALTIME_COARSE", 5)  # 5 on Linux
#: the tick of the clock filesystems stamp files with (ns)
TICK_NS = max(int(time.clock_getres(_COARSE) * 1e9), 1_000_000)
#: granularity assumed for whole-second timestamps (ns)
COARSE_FS_NS = 2_000_000_000


def granularity_ns(identity: Identity) -> int:
    if identity.mtime_ns % 1_000_000_000 == 0 and identity.ctime_ns % 1_000_000_000 == 0:
        return COARSE_FS_NS
    return TICK_NS


def wait_s(identity: Identity, now_ns: int) -> float:
    """How long from `now_ns` until a scan of the file would not be racy (0 if now);
    at most one granularity (a timestamp set in the future stays racy)."""
    newest = max(identity.mtime_ns, identity.ctime_ns)
    gran = granularity_ns(identity)
    return min(max(0, newest + gran + 1 - now_ns), gran + 1) / 1e9


def is_racy(identity: Identity, scan_start_ns: int) -> bool:
    """True if the file may have been rewritten within the tick it was stamped in
    after the scan began (its timestamps are not older than the scan's start by
    the granularity): a clean verdict on it is not trusted."""
    newest = max(identity.mtime_ns, identity.ctime_ns)
    return newest > scan_start_ns - granularity_ns(identity)
