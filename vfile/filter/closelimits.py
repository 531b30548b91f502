"""The bounds of the close scans (vfile.filter.closing): how many at once, how many
waiting, how many a batch judges, how many descriptors they hold, and how long
changes may hold an unread one back. Pure constants and one pure function."""

from __future__ import annotations

from vfile.filter import racy
from vfile.filter.newfiles import UNRECORDED_S

#: background scans after a last close running at once (on-open scans do not wait for them)
CLOSE_SCANS = 4

#: close scans waiting for their intent's commit (a frozen state disk), each holding a
#: descriptor; beyond, a close leaves its file to the drain (t5_inflight_attack_test)
MAX_WAITING = 256

#: close scans the batch judges before it lets the requests go on (a checkpoint)
BATCH = 32

#: how long past its due time the batch task's timer judges a close scan no later close
#: judged (k27: one writer's next close does it, in its own trio step, without a wake-up)
LATE_NS = 2 * racy.TICK_NS

#: close scans holding a descriptor at once, at most; beyond, a close leaves its file to the
#: drain (a fast creator and a slow appliance took every descriptor: t5_attack22_closes)
HOLDING_MAX = 1024

#: how long past its first due time metadata changes and renames may hold back a close
#: scan that has not read its file (`CloseScans.unread`, rs24); after, a change waits for
#: it as before rs24. The sweeper's bound (filter.newfiles): a file touched in a loop held
#: its own scan, and every close queued after it, for as long as the loop ran (u26,
#: tests/t5_unread_cap26_test.py)
HELD_MAX_NS = int(UNRECORDED_S * 1e9)


def holding_max(nofile: int) -> int:
    """The bound on descriptors held by close scans under a descriptor limit (pure)."""
    return max(16, min(HOLDING_MAX, nofile // 8))


#: the furthest ahead a close scan's due time is ever set (a whole-second file's tick, or
#: `CloseScans.unread`'s tick); one further ahead was set before the wall clock stepped
#: back, and is due now: else the queue waited as long as the step (a28,
#: tests/t5_attack28_clock_test.py: an hour's step held every close scan an hour)
AHEAD_MAX_NS = racy.COARSE_FS_NS + racy.TICK_NS + 1


def is_due(due_ns: int, now_ns: int) -> bool:
    """A close scan due at `due_ns` is judged at `now_ns` (pure)."""
    return due_ns <= now_ns or due_ns - now_ns > AHEAD_MAX_NS


def timer_s(due_ns: int, now_ns: int) -> float:
    """The batch task's timer for a head close due at `due_ns` (pure): `LATE_NS` late."""
    return (min(max(0, due_ns - now_ns), AHEAD_MAX_NS) + LATE_NS) / 1e9
